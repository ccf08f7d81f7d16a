"""Generators: statistics (not just shapes) within sampling error of what was asked."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from simtune.errors import InputError
from simtune.trace import generators as gen
from simtune.trace.attach import attach_service_time, attach_tokens, resample_columns
from simtune.trace.model import Trace
from simtune.trace.nhpp import sample_nhpp


def _z(observed, expected):
    observed, expected = np.asarray(observed, float), np.asarray(expected, float)
    return (observed - expected) / np.sqrt(expected)


def test_poisson_count_cv_and_gap_distribution():
    t = gen.poisson(50.0, 2_000.0, seed=7)
    assert abs(len(t) - 100_000) < 5 * np.sqrt(100_000)
    gaps = np.diff(t.timestamps)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.02)
    assert sps.kstest(gaps, "expon", args=(0, 1 / 50.0)).pvalue > 1e-3
    counts = np.bincount(t.timestamps.astype(int), minlength=2000)
    assert counts.var(ddof=1) / counts.mean() == pytest.approx(1.0, abs=0.15)  # sd ~ 0.03
    assert t.span == 2_000.0 and t.timestamps[-1] < 2_000.0 and t.meta["generator"] == "poisson"


def test_poisson_counts_are_poisson_across_seeds():
    n = np.array([len(gen.poisson(5.0, 100.0, seed=s)) for s in range(300)])
    assert abs(n.mean() - 500) < 5 * np.sqrt(500 / 300)
    assert 0.75 < n.var(ddof=1) / n.mean() < 1.3  # Poisson: variance = mean


def test_same_seed_same_trace_different_seed_different():
    a, b, c = (gen.poisson(3.0, 600.0, seed=s) for s in (1, 1, 2))
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    assert len(a) != len(c) or not np.array_equal(a.timestamps, c.timestamps)
    rng = np.random.default_rng(5)
    assert len(gen.poisson(3.0, 600.0, seed=rng)) > 0  # a Generator works as the seed too


def test_steps_rates_per_level():
    t = gen.steps([(0, 5), (100, 50), (200, 5)], 300.0, seed=3)
    per = np.histogram(t.timestamps, bins=[0, 100, 200, 300])[0]
    assert np.all(np.abs(_z(per, [500, 5000, 500])) < 5)


def _sinusoid_hour_means(mean, ratio, peak_at, hours):
    a = (ratio - 1) / (ratio + 1)
    w = 2 * np.pi / 86_400
    t0, t1 = hours * 3600.0, (hours + 1) * 3600.0
    return mean * 3600 + mean * a / w * (np.sin(w * (t1 - peak_at)) - np.sin(w * (t0 - peak_at)))


def test_diurnal_sinusoid_peak_to_trough_and_phase():
    peak_at = 14.5 * 3600  # mid-hour, so the busiest hour is 14:00-15:00
    t = gen.diurnal(10.0, 86_400.0, peak_to_trough=4.0, peak_at=peak_at, seed=11)
    hourly = np.bincount((t.timestamps // 3600).astype(int), minlength=24)
    expected = _sinusoid_hour_means(10.0, 4.0, peak_at, np.arange(24))
    assert np.all(np.abs(_z(hourly, expected)) < 5)
    # Hour means of a ratio-4 sinusoid peak at 3.98 (hour-averaging shaves 0.5 %); sampling sd ~1.5 %.
    assert expected.max() / expected.min() == pytest.approx(3.98, abs=0.005)
    assert hourly.max() / hourly.min() == pytest.approx(4.0, rel=0.07)
    assert int(np.argmax(hourly)) == 14 and int(np.argmin(hourly)) == 2
    assert len(t) == pytest.approx(864_000, abs=5 * np.sqrt(864_000))


EPA_LIKE = [0.2, 0.15, 0.1, 0.1, 0.1, 0.12, 0.2, 0.4, 0.8, 1.0, 1.1, 1.2,
            1.25, 1.3, 1.32, 1.25, 1.1, 0.9, 0.6, 0.5, 0.45, 0.4, 0.35, 0.3]


def test_hourly_profile_step_reproduces_profile_and_ratio():
    t = gen.hourly_profile(EPA_LIKE, 3 * 86_400.0, mean_rate=5.0, interpolation="step", seed=2)
    hourly = np.bincount((t.timestamps // 3600).astype(int), minlength=72).reshape(3, 24).sum(axis=0)
    prof = np.array(EPA_LIKE) * 5.0 / np.mean(EPA_LIKE)
    assert np.all(np.abs(_z(hourly, prof * 3600 * 3)) < 5)
    assert hourly.max() / hourly.min() == pytest.approx(max(EPA_LIKE) / min(EPA_LIKE), rel=0.08)
    assert len(t) / t.span == pytest.approx(5.0, rel=0.01)


def test_hourly_profile_linear_passes_through_the_profile():
    t = gen.hourly_profile(EPA_LIKE, 2 * 86_400.0, mean_rate=5.0, seed=4)
    # Counts in 20-min windows centred on hour midpoints ~ the profile value there.
    prof = np.array(EPA_LIKE) * 5.0 / np.mean(EPA_LIKE)
    centres = (np.arange(48) + 0.5) * 3600
    counts = np.array([np.count_nonzero(np.abs(t.timestamps - c) < 600) for c in centres]).reshape(2, 24).sum(0)
    # Curvature inside +-10 min is tiny compared with the sampling error here.
    assert np.all(np.abs(_z(counts, np.tile(prof, 1) * 1200 * 2)) < 5)


def test_spikes_add_the_requested_extra_load():
    spikes = [gen.Spike(1000, 10.0, 200), gen.Spike(2000, 5.0, 300, ramp=100)]
    t = gen.spikes(2.0, 3600.0, spikes, seed=8)
    in1 = np.count_nonzero((t.timestamps >= 1000) & (t.timestamps < 1200))
    in2 = np.count_nonzero((t.timestamps >= 2000) & (t.timestamps < 2300))
    outside = len(t) - in1 - in2
    assert abs(_z(in1, 20 * 200)) < 5
    assert abs(_z(in2, 2 * 300 + 2 * 4 * 200)) < 5  # trapezoid: extra = base*(f-1)*(dur-ramp)
    assert abs(_z(outside, 2 * 3100)) < 5
    # The ramp: the first 50 s of spike 2 carry ~ (2 + 2*4*0.25) req/s on average.
    ramp = np.count_nonzero((t.timestamps >= 2000) & (t.timestamps < 2050))
    assert abs(_z(ramp, 50 * (2 + 8 * 0.25))) < 5


def test_random_spikes_are_seeded_and_inside():
    a = gen.random_spikes(5, 3600, factor=4, spike_duration=60, seed=1)
    assert a == gen.random_spikes(5, 3600, factor=4, spike_duration=60, seed=1)
    assert all(0 <= s.at <= 3540 for s in a) and len(a) == 5


def test_mmpp_long_run_rate_and_burstiness_match_theory():
    r1, r2, m1, m2, T = 10.0, 1.0, 5.0, 20.0, 50_000.0
    t = gen.mmpp([r1, r2], [m1, m2], T, seed=5)
    p1, p2 = m1 / (m1 + m2), m2 / (m1 + m2)
    mean = r1 * p1 + r2 * p2  # 2.8 req/s
    gamma = 1 / m1 + 1 / m2
    idc_inf = 1 + 2 * (r1 - r2) ** 2 * p1 * p2 / (mean * gamma)  # ~38 for a 2-state MMPP
    sd = np.sqrt(idc_inf * mean * T)
    assert abs(len(t) - mean * T) < 5 * sd
    counts = np.bincount((t.timestamps // 600).astype(int), minlength=int(T // 600))[: int(T // 600)]
    idc = counts.var(ddof=1) / counts.mean()
    assert 0.5 * idc_inf < idc < 1.6 * idc_inf
    assert t.meta["switches"] > 1000


def test_replay_linear_ramp_is_exact_nhpp():
    t = gen.replay([0.0, 1000.0], [0.0, 20.0], seed=9)
    assert abs(_z(len(t), 10_000)) < 5
    # Arrival-time CDF of a linear ramp is (t/T)^2.
    assert sps.kstest(t.timestamps / 1000.0, lambda x: np.clip(x, 0, 1) ** 2).pvalue > 1e-3


def test_replay_step_curve_per_minute():
    rates = np.array([1.0, 4.0, 0.0, 8.0, 2.0])
    t = gen.replay(np.arange(6) * 60.0, np.append(rates, 0), interpolation="step", seed=1)
    per = np.bincount((t.timestamps // 60).astype(int), minlength=5)
    assert per[2] == 0
    nz = rates > 0
    assert np.all(np.abs(_z(per[nz], rates[nz] * 60)) < 5)


def test_nhpp_rejects_bad_curves_and_huge_outputs():
    with pytest.raises(InputError, match="negative rate"):
        sample_nhpp([0, 1], [1, -1])
    with pytest.raises(InputError, match="strictly increasing"):
        sample_nhpp([0, 0], [1, 1])
    with pytest.raises(InputError, match="over the limit"):
        gen.poisson(1e6, 1e3)
    with pytest.raises(InputError, match="24 values"):
        gen.hourly_profile([1, 2, 3], 3600)


def test_attach_service_time_and_tokens_from_distributions():
    t = gen.poisson(100.0, 200.0, seed=1)
    a = attach_service_time(t, "exp:0.05", seed=3)
    st = a.service_time
    assert st.mean() == pytest.approx(0.05, rel=5 / np.sqrt(len(t)))
    b = attach_tokens(t, input_tokens="lognormal:mean=2048,p99=7400", output_tokens="const:28", seed=3)
    inp = b.columns["input_tokens"]
    assert inp.dtype == np.int64 and inp.min() >= 1
    assert inp.mean() == pytest.approx(2048, rel=0.05) and np.percentile(inp, 99) == pytest.approx(7400, rel=0.1)
    assert np.all(b.columns["output_tokens"] == 28)
    with pytest.raises(InputError, match="--input-tokens"):
        attach_tokens(t, input_tokens="zipf:2")


def test_resample_columns_keeps_pairs_together():
    src = Trace(np.arange(5.0), {"input_tokens": np.array([10, 20, 30, 40, 50]),
                                 "output_tokens": np.array([1, 2, 3, 4, 5])}, "src")
    t = resample_columns(gen.poisson(10.0, 100.0, seed=2), src, seed=4)
    pairs = set(zip(t.columns["input_tokens"].tolist(), t.columns["output_tokens"].tolist()))
    assert pairs <= {(10, 1), (20, 2), (30, 3), (40, 4), (50, 5)} and len(pairs) == 5
    with pytest.raises(InputError, match="columns found"):
        resample_columns(t, Trace(np.arange(3.0), {}, "bare"))
