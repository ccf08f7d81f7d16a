"""Inspect statistics on hand-computable traces, and the PNG."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from simtune.trace import generators as gen
from simtune.trace.counts import CountTrace
from simtune.trace.inspect import count_stats, format_stats, trace_stats
from simtune.trace.model import Trace
from simtune.trace.plot import plot_trace


def test_hand_computed_statistics():
    ts = np.array([0.0, 0.1, 0.2, 5.0, 5.5, 12.0])
    t = Trace(ts, {"service_time": np.array([0.1, 0.2, 0.3, 0.4, 0.5, 1.0])}, "hand", None, {"span_s": 15.0})
    st = trace_stats(t)
    assert st.rows == 6 and st.span_s == 15.0 and st.mean_rate == pytest.approx(0.4)
    w1 = st.windows[0]
    counts = np.array([3, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 1, 0, 0])
    assert (w1.peak_count, w1.peak_at_s) == (3, 0.0)
    assert w1.index_of_dispersion == pytest.approx(counts.var(ddof=1) / counts.mean())
    assert w1.empty_fraction == pytest.approx(12 / 15)
    w10 = st.windows[1]
    assert (w10.peak_count, w10.peak_rate) == (5, 0.5)
    gaps = np.diff(ts)
    assert st.interarrival_cv == pytest.approx(gaps.std() / gaps.mean())
    assert (st.longest_gap_s, st.longest_gap_at_s) == (6.5, 5.5)
    s = st.columns["service_time"]
    assert s.max == 1.0 and s.p50 == pytest.approx(0.35)
    text = format_stats(st)
    assert "requests     6" in text and "longest idle gap" in text


def test_poisson_statistics_are_poisson():
    st = trace_stats(gen.poisson(20.0, 3600.0, seed=1))
    assert st.interarrival_cv == pytest.approx(1.0, abs=0.03)
    for w in st.windows:  # index of dispersion ~1 at every scale
        assert w.index_of_dispersion == pytest.approx(1.0, abs=0.4)


def test_count_stats_fill_empty_bins_and_say_finer_is_unknown():
    ct = CountTrace(np.array([0.0, 60.0, 60.0, 240.0]), 60.0, np.array([5, 3, 4, 1]),
                    {"fn_ms": np.array([100.0, 200.0, 300.0, 400.0])}, "c", None, {"span_s": 300.0})
    st = count_stats(ct)
    assert st.rows == 13 and st.kind == "counts" and len(st.windows) == 1
    grid = np.array([5, 7, 0, 0, 1])
    w = st.windows[0]
    assert (w.peak_count, w.peak_at_s) == (7, 60.0)
    assert w.index_of_dispersion == pytest.approx(grid.var(ddof=1) / grid.mean())
    assert st.columns["fn_ms"].mean == pytest.approx((5 * 100 + 3 * 200 + 4 * 300 + 400) / 13)
    assert "unknown" in format_stats(st)


@pytest.mark.parametrize("kind", ["requests", "counts"])
def test_plot_writes_a_readable_png(tmp_path, kind):
    if kind == "requests":
        trace = gen.diurnal(2.0, 86_400.0, seed=1)
    else:
        trace = CountTrace(np.arange(144) * 600.0, 600.0, np.arange(144) % 24 + 1, name="c")
    out = plot_trace(trace, tmp_path / "sub" / "p.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(out)
    assert img.shape[0] > 500 and img.shape[1] > 1000
    assert img[..., :3].std() > 0.05  # not a blank canvas
