"""Synthetic arrival processes, for when there is no trace yet (a launch forecast).

Each generator builds a rate curve λ(t) and samples it exactly as a non-homogeneous
Poisson process (`simtune.trace.nhpp`), so the only randomness is the Poisson
sampling (plus the modulating chain for MMPP), all drawn from `seed`. Generated traces
start at t=0, cover [0, duration) (`meta['span_s']`), and record their parameters in
`meta` so an output file says how it was made.

- `poisson`: constant rate.
- `steps`: piecewise-constant rate, e.g. a load test ramp.
- `diurnal`: a sinusoid with a given peak-to-trough ratio, or a 24-point hourly profile.
- `spikes`: a base rate plus flash crowds (linear ramp up, hold, ramp down).
- `mmpp`: Markov-modulated Poisson process; two states give bursty on/off traffic.
- `replay`: a measured (time, rate) curve replayed as an NHPP.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np

from simtune.errors import InputError
from simtune.trace.counts import DEFAULT_MAX_ROWS
from simtune.trace.model import Trace
from simtune.trace.nhpp import check_curve, sample_nhpp

Seed = int | np.random.Generator


def _positive(value: float, what: str, allow_zero: bool = False) -> float:
    value = float(value)
    ok = value >= 0 if allow_zero else value > 0
    if not (ok and math.isfinite(value)):
        raise InputError(f"{what} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return value


def _trace(ts: np.ndarray, name: str, duration: float, **params) -> Trace:
    meta = {"generator": name, "span_s": duration, **params}
    return Trace(ts, {}, name, None, meta)


def from_rate_curve(
    times: Sequence[float],
    rates: Sequence[float],
    *,
    interpolation: str = "linear",
    seed: Seed = 0,
    max_rows: int = DEFAULT_MAX_ROWS,
    name: str = "replay",
    params: Optional[dict] = None,
) -> Trace:
    """Arrivals of an NHPP whose rate (req/s) follows the given knots; `params` go to meta."""
    times_a, rates_a = check_curve(np.asarray(times, float), np.asarray(rates, float))
    ts = sample_nhpp(times_a, rates_a, interpolation=interpolation, seed=seed, max_rows=max_rows) - times_a[0]
    meta = {"interpolation": interpolation, **(params or {}), "seed": _seed_meta(seed)}
    return _trace(ts, name, float(times_a[-1] - times_a[0]), **meta)


def poisson(rate: float, duration: float, *, seed: Seed = 0, max_rows: int = DEFAULT_MAX_ROWS) -> Trace:
    """Homogeneous Poisson arrivals: the memoryless baseline (inter-arrival CV = 1)."""
    rate, duration = _positive(rate, "rate", True), _positive(duration, "duration")
    return from_rate_curve([0, duration], [rate, rate], interpolation="step", seed=seed, max_rows=max_rows,
                           name="poisson", params=dict(rate=rate))


def steps(
    levels: Sequence[tuple[float, float]], duration: float, *, seed: Seed = 0, max_rows: int = DEFAULT_MAX_ROWS
) -> Trace:
    """Piecewise-constant rate: `levels` = [(start_s, rate), ...], first start 0."""
    duration = _positive(duration, "duration")
    if not levels:
        raise InputError("steps: give at least one (start, rate) level")
    starts = np.array([float(s) for s, _ in levels])
    rates = np.array([_positive(r, "step rate", True) for _, r in levels])
    if starts[0] != 0 or np.any(np.diff(starts) <= 0) or starts[-1] >= duration:
        raise InputError("steps: starts must begin at 0, increase, and lie before the duration")
    times = np.append(starts, duration)
    return from_rate_curve(times, np.append(rates, rates[-1]), interpolation="step", seed=seed, max_rows=max_rows,
                           name="steps", params=dict(levels=[[float(s), float(r)] for s, r in zip(starts, rates)]))


def diurnal(
    mean_rate: float,
    duration: float,
    *,
    peak_to_trough: float = 4.0,
    period: float = 86_400.0,
    peak_at: float = 14 * 3600.0,
    resolution: Optional[float] = None,
    seed: Seed = 0,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> Trace:
    """Sinusoidal day: rate(t) = mean * (1 + a*cos(2π(t - peak_at)/period)).

    a = (r-1)/(r+1) makes max/min = r = `peak_to_trough`. The sinusoid is sampled as
    a piecewise-linear curve with `resolution` (default period/2880, 30 s for a day),
    which is within 0.0001 % of the true curve.
    """
    mean_rate, duration = _positive(mean_rate, "mean rate"), _positive(duration, "duration")
    ratio = _positive(peak_to_trough, "peak-to-trough ratio")
    if ratio < 1:
        raise InputError(f"peak-to-trough ratio must be >= 1, got {ratio!r}")
    period = _positive(period, "period")
    amp = (ratio - 1.0) / (ratio + 1.0)
    step = resolution or period / 2880.0
    times = np.append(np.arange(0.0, duration, step), duration)
    rates = mean_rate * (1.0 + amp * np.cos(2 * np.pi * (times - peak_at) / period))
    return from_rate_curve(times, rates, seed=seed, max_rows=max_rows, name="diurnal",
                           params=dict(mean_rate=mean_rate, peak_to_trough=ratio, period=period, peak_at=peak_at))


def hourly_profile(
    profile: Sequence[float],
    duration: float,
    *,
    mean_rate: Optional[float] = None,
    interpolation: str = "linear",
    seed: Seed = 0,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> Trace:
    """A day shape from 24 hourly values, repeated every 24 h.

    Values are req/s, or relative weights when `mean_rate` is given (rescaled so the
    day's mean is `mean_rate`). `step` holds each value for its whole hour (hourly means
    equal the profile); `linear` puts each value at its hour's midpoint and joins them
    (smooth; the peak and trough of the curve equal the profile's).
    """
    prof = np.asarray(profile, dtype=np.float64)
    if prof.shape != (24,):
        raise InputError(f"hourly profile: need 24 values, got {prof.size}")
    if np.any(prof < 0) or not np.all(np.isfinite(prof)) or prof.sum() == 0:
        raise InputError("hourly profile: values must be finite, >= 0 and not all 0")
    duration = _positive(duration, "duration")
    if mean_rate is not None:
        prof = prof * (_positive(mean_rate, "mean rate") / prof.mean())
    days = int(math.ceil(duration / 86_400.0)) + 1
    if interpolation == "step":
        times = np.arange(24 * days + 1) * 3600.0
        rates = np.append(np.tile(prof, days), prof[0])
    else:
        times = np.concatenate(([0.0], (np.arange(24 * days) + 0.5) * 3600.0, [24 * days * 3600.0]))
        edge = 0.5 * (prof[0] + prof[-1])  # midnight: halfway between 23:30 and 00:30
        rates = np.concatenate(([edge], np.tile(prof, days), [edge]))
    keep = times < duration
    times_c = np.append(times[keep], duration)
    rates_c = np.append(rates[keep], np.interp(duration, times, rates) if interpolation == "linear"
                        else rates[np.searchsorted(times, duration, side="right") - 1])
    return from_rate_curve(times_c, rates_c, interpolation=interpolation, seed=seed, max_rows=max_rows,
                           name="hourly", params=dict(profile=[float(v) for v in prof]))


@dataclass(frozen=True)
class Spike:
    """A flash crowd: from `at` the rate ramps to base*`factor` over `ramp` s, holds
    until `at + duration - ramp`, and ramps back down by `at + duration`."""

    at: float
    factor: float
    duration: float
    ramp: float = 0.0


def random_spikes(
    n: int, duration: float, *, factor: float = 5.0, spike_duration: float = 60.0, ramp: float = 0.0, seed: Seed = 0
) -> list[Spike]:
    """`n` spikes at uniformly random times (seeded) inside [0, duration - spike_duration)."""
    if n < 0:
        raise InputError(f"number of spikes must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    ats = np.sort(rng.uniform(0.0, max(duration - spike_duration, 0.0), n))
    return [Spike(float(a), factor, spike_duration, ramp) for a in ats]


def spikes(
    base_rate: float,
    duration: float,
    spike_list: Sequence[Spike],
    *,
    seed: Seed = 0,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> Trace:
    """Constant base rate plus spikes; overlapping spikes add their extra rate."""
    base_rate, duration = _positive(base_rate, "base rate"), _positive(duration, "duration")
    knots = {0.0, duration}
    for s in spike_list:
        _positive(s.factor, "spike factor")
        _positive(s.duration, "spike duration")
        if not 0 <= s.ramp <= s.duration / 2:
            raise InputError(f"spike at {s.at:g}: ramp must be between 0 and half the spike's duration")
        eps = 1e-9 * max(duration, 1.0)
        up = s.ramp if s.ramp > 0 else eps  # a vertical edge as a near-vertical ramp
        knots.update({s.at, s.at + up, s.at + s.duration - up, s.at + s.duration})
    times = np.array(sorted(t for t in knots if 0.0 <= t <= duration))
    rates = np.full(times.size, base_rate)
    for s in spike_list:
        up = s.ramp if s.ramp > 0 else 1e-9 * max(duration, 1.0)
        shape = np.interp(times, [s.at, s.at + up, s.at + s.duration - up, s.at + s.duration], [0, 1, 1, 0],
                          left=0.0, right=0.0)
        rates += base_rate * (s.factor - 1.0) * shape
    return from_rate_curve(times, rates, seed=seed, max_rows=max_rows, name="spikes", params=dict(base_rate=base_rate,
                           spikes=[asdict(s) for s in spike_list]))


def mmpp(
    rates: Sequence[float],
    mean_sojourn: Sequence[float],
    duration: float,
    *,
    seed: Seed = 0,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> Trace:
    """Markov-modulated Poisson process: state i emits at rates[i] for an exponential
    time of mean mean_sojourn[i], then jumps to another state (with two states:
    on/off alternation; with more: uniformly to one of the others). The first state
    is drawn from the stationary distribution (time share ∝ mean sojourn), so the
    long-run rate is Σ rate_i·m_i / Σ m_i from t=0 (Fischer & Meier-Hellstern 1993).
    """
    r = np.array([_positive(x, "state rate", True) for x in rates])
    m = np.array([_positive(x, "mean sojourn") for x in mean_sojourn])
    if r.size < 2 or r.size != m.size:
        raise InputError("mmpp: need rates and mean sojourn times for at least two states, of equal length")
    duration = _positive(duration, "duration")
    rng = np.random.default_rng(seed)
    k = r.size
    state = int(rng.choice(k, p=m / m.sum()))
    batch = int(duration / m.min()) + 16  # usually one batch covers the duration
    starts: list[np.ndarray] = []
    states: list[np.ndarray] = []
    t = 0.0
    while t < duration:
        # Jumps of 1..k-1 (mod k) never return to the same state; with k=2 they alternate.
        jumps = rng.integers(1, k, size=batch - 1) if k > 2 else np.ones(batch - 1, dtype=np.int64)
        seq = (state + np.concatenate(([0], np.cumsum(jumps)))) % k
        ends = t + np.cumsum(rng.exponential(m[seq]))
        n = min(int(np.searchsorted(ends, duration, side="left")) + 1, batch)
        states.append(seq[:n])
        starts.append(np.concatenate(([t], ends[: n - 1])))
        t = float(ends[n - 1])
        state = int((seq[n - 1] + (rng.integers(1, k) if k > 2 else 1)) % k)
    times = np.append(np.concatenate(starts), duration)
    levels = r[np.concatenate(states)]
    levels = np.append(levels, levels[-1])
    trace = from_rate_curve(times, levels, interpolation="step", seed=rng, max_rows=max_rows, name="mmpp",
                            params=dict(rates=r.tolist(), mean_sojourn=m.tolist()))
    trace.meta["seed"] = _seed_meta(seed)
    trace.meta["switches"] = int(times.size - 2)
    return trace


def replay(
    times: Sequence[float],
    rates: Sequence[float],
    *,
    interpolation: str = "linear",
    rate_scale: float = 1.0,
    seed: Seed = 0,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> Trace:
    """A measured rate curve (e.g. requests/s per minute from a dashboard) as an NHPP."""
    scale = _positive(rate_scale, "rate scale")
    return from_rate_curve(np.asarray(times, float), np.asarray(rates, float) * scale, interpolation=interpolation,
                           seed=seed, max_rows=max_rows, name="replay", params=dict(rate_scale=scale))


def _seed_meta(seed: Seed) -> Optional[int]:
    return int(seed) if isinstance(seed, (int, np.integer)) else None
