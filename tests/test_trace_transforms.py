"""Transforms: rate scaling keeps the shape (1-min curves), windows and time warps add up."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import TRACES
from simtune.errors import InputError
from simtune.trace import load_trace
from simtune.trace import generators as gen
from simtune.trace.model import Trace
from simtune.trace.transforms import compress, concat, merge, scale_rate, shift, slice_window, split, time_scale


@pytest.fixture(scope="module")
def epa() -> Trace:
    return load_trace(TRACES / "epa_http_1995.csv")


@pytest.fixture(scope="module")
def azure() -> Trace:
    return load_trace(TRACES / "azure_llm_2023_code.csv")


def _per_minute(trace: Trace, span: float) -> np.ndarray:
    return np.bincount((trace.timestamps // 60).astype(int), minlength=int(np.ceil(span / 60)))


def test_thinning_halves_the_rate_and_keeps_the_shape(epa):
    half = scale_rate(epa, 0.5, seed=1)
    n = len(epa)
    assert abs(len(half) - n / 2) < 5 * np.sqrt(n * 0.25)
    assert half.span == epa.span and half.meta["rate_scale_method"] == "thin"
    orig, new = _per_minute(epa, epa.span), _per_minute(half, epa.span)
    # Each minute is Binomial(c, 0.5): standardised residuals ~ N(0, 1).
    busy = orig >= 20
    z = (new[busy] - orig[busy] / 2) / np.sqrt(orig[busy] / 4)
    assert abs(z.mean()) < 0.15 and 0.85 < z.std() < 1.15
    assert np.corrcoef(orig, new)[0, 1] > 0.9
    hourly = lambda c: c[: 1440].reshape(24, 60).sum(axis=1)  # noqa: E731
    np.testing.assert_allclose(hourly(new) / hourly(orig), 0.5, atol=0.1)


def test_superposition_doubles_the_rate_and_keeps_the_shape(epa):
    double = scale_rate(epa, 2.0, seed=1)
    assert len(double) == 2 * len(epa) and double.meta["rate_scale_method"] == "superpose"
    orig, new = _per_minute(epa, epa.span), _per_minute(double, epa.span)
    # Copies move by < 1 s, so only requests within a second of a minute edge change minute.
    assert np.abs(new - 2 * orig).sum() < 0.05 * new.sum()
    assert np.corrcoef(orig, new)[0, 1] > 0.99
    assert np.all(np.diff(double.timestamps) >= 0)


def test_superposition_carries_columns_with_requests(azure):
    double = scale_rate(azure, 2.0, seed=2)
    np.testing.assert_array_equal(np.sort(double.columns["input_tokens"]),
                                  np.sort(np.tile(azure.columns["input_tokens"], 2)))
    frac = scale_rate(azure, 2.5, seed=3)
    assert abs(len(frac) - 2.5 * len(azure)) < 5 * np.sqrt(len(azure) * 0.25)
    low = scale_rate(azure, 0.3, seed=3, method="superpose")  # a single thinned, shifted copy
    assert abs(len(low) - 0.3 * len(azure)) < 5 * np.sqrt(len(azure) * 0.21)


def test_nhpp_rescaling_keeps_the_minute_curve(epa):
    double = scale_rate(epa, 2.0, seed=4, method="nhpp")
    orig, new = _per_minute(epa, epa.span), _per_minute(double, epa.span)
    busy = orig >= 20
    z = (new[busy] - 2 * orig[busy]) / np.sqrt(2 * orig[busy])
    assert abs(z.mean()) < 0.15 and 0.85 < z.std() < 1.15
    assert set(np.unique(double.columns["method"])) <= {"GET", "POST", "HEAD"}


def test_scale_rate_rejects_bad_factors(epa):
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(InputError):
            scale_rate(epa, bad)
    with pytest.raises(InputError, match="thinning can only lower"):
        scale_rate(epa, 2.0, method="thin")
    assert scale_rate(epa, 1.0) is epa


def test_slice_window_rebases_and_keeps_origin_consistent():
    t = Trace(np.array([0.0, 1.0, 5.0, 9.0, 10.0]), {"x": np.arange(5)}, "t",
              pd.Timestamp("2024-01-01"), {"span_s": 12.0})
    part = slice_window(t, 1.0, 9.0)
    np.testing.assert_array_equal(part.timestamps, [0.0, 4.0])
    assert part.columns["x"].tolist() == [1, 2] and part.span == 8.0
    assert part.origin == pd.Timestamp("2024-01-01 00:00:01")
    kept = slice_window(t, 5.0, rebase=False)
    np.testing.assert_array_equal(kept.timestamps, [5.0, 9.0, 10.0])
    with pytest.raises(InputError, match="empty time window"):
        slice_window(t, 5.0, 5.0)


def test_time_scale_and_compress(azure):
    fast = compress(azure, 2.0)
    assert len(fast) == len(azure) and fast.span == pytest.approx(azure.span / 2)
    np.testing.assert_allclose(fast.timestamps, azure.timestamps / 2)
    slow = time_scale(azure, 3.0)
    assert slow.duration == pytest.approx(3 * azure.duration)
    np.testing.assert_array_equal(slow.columns["output_tokens"], azure.columns["output_tokens"])


def test_shift_concat_merge_split():
    a = gen.poisson(2.0, 100.0, seed=1)
    b = gen.poisson(5.0, 50.0, seed=2)
    a.name, b.name = "a", "b"
    s = shift(a, 10.0)
    assert s.span == 110.0 and s.timestamps[0] == a.timestamps[0] + 10
    with pytest.raises(InputError):
        shift(a, -1000.0)
    c = concat([a, b], gap=5.0)
    assert len(c) == len(a) + len(b) and c.span == 155.0
    np.testing.assert_array_equal(c.timestamps[len(a):], b.timestamps + 105.0)
    m = merge([a, b])
    assert len(m) == len(a) + len(b) and np.all(np.diff(m.timestamps) >= 0) and m.span == 100.0
    assert (m.columns["source"] == "a").sum() == len(a) and (m.columns["source"] == "b").sum() == len(b)
    train, test = split(a, fraction=0.75)
    assert len(train) + len(test) == len(a) and train.span == 75.0 and test.span == 25.0
    assert train.timestamps.max() < 75.0 and test.timestamps.min() >= 0.0
    np.testing.assert_allclose(np.concatenate([train.timestamps, test.timestamps + 75.0]), a.timestamps)
    with pytest.raises(InputError, match="exactly one"):
        split(a)
