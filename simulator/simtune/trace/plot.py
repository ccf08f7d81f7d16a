"""A PNG of a trace's traffic: rate over time at two resolutions, plus burstiness.

Why two panels: the top one (rate over time, fine and coarse bins, mean line) is
what an operator compares with their dashboard; the bottom one shows what the mean
hides: for per-request traces the distribution of inter-arrival gaps against a
Poisson process of the same rate (a heavier tail = burstier = harder to autoscale),
for count traces the distribution of per-bin rates.

Uses matplotlib's object API with the Agg canvas (no pyplot global state, no
display needed), so it is safe in tests, threads and headless CI.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from simtune.errors import InputError
from simtune.trace.counts import CountTrace
from simtune.trace.inspect import TraceStats, bin_counts, stats
from simtune.trace.model import Trace

_BIN_CHOICES = (0.1, 1.0, 3.0, 10.0, 60.0, 300.0, 600.0, 3600.0, 6 * 3600.0, 86400.0)


def _time_axis(span: float) -> tuple[float, str]:
    if span > 4 * 86400:
        return 86400.0, "days"
    if span > 4 * 3600:
        return 3600.0, "hours"
    if span > 20 * 60:
        return 60.0, "minutes"
    return 1.0, "seconds"


def _bins(span: float, floor: float = 0.0) -> tuple[float, float]:
    """A fine bin giving <= ~1500 points and a coarse one about 10x wider."""
    fine = next((b for b in _BIN_CHOICES if b >= floor and span / b <= 1500), _BIN_CHOICES[-1])
    coarse = next((b for b in _BIN_CHOICES if b >= 8 * fine and span / b >= 8), fine)
    return fine, coarse


def _label(w: float) -> str:
    if w >= 3600:
        return f"{w / 3600:g} h"
    if w >= 60:
        return f"{w / 60:g} min"
    return f"{w:g} s"


def _step(ax, edges_s: np.ndarray, rate: np.ndarray, unit: float, **kw) -> None:
    ax.stairs(rate, edges_s / unit, baseline=None, **kw)


def plot_trace(trace: Union[Trace, CountTrace], path: str | Path, st: TraceStats | None = None) -> Path:
    """Write the PNG and return its path."""
    path = Path(path)
    st = st or stats(trace)
    fig = Figure(figsize=(11, 6.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, height_ratios=[2.2, 1])
    span = st.span_s
    unit, unit_name = _time_axis(span)
    if isinstance(trace, CountTrace):
        _plot_counts(trace, top, bottom, unit)
    else:
        _plot_requests(trace, top, bottom, span, unit)
    top.axhline(st.mean_rate, color="black", lw=0.8, ls="--", label=f"mean {st.mean_rate:.3g} req/s")
    top.set_xlim(0, span / unit)
    top.set_ylim(bottom=0)
    top.set_xlabel(f"time since start ({unit_name})")
    top.set_ylabel("request rate (req/s)")
    top.legend(loc="best", fontsize=8, framealpha=0.9)
    top.grid(alpha=0.3)
    bottom.grid(alpha=0.3)
    extra = ""
    if st.interarrival_cv is not None:
        extra = f", inter-arrival CV {st.interarrival_cv:.2g}"
    top.set_title(f"{st.name}: {st.rows:,} requests over {span / unit:.3g} {unit_name}, "
                  f"mean {st.mean_rate:.3g} req/s{extra}", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot write the plot: {exc.strerror or exc}") from None
    return path


def _plot_requests(trace: Trace, top, bottom, span: float, unit: float) -> None:
    fine, coarse = _bins(span)
    for w, kw in ((fine, dict(color="tab:blue", lw=0.6, alpha=0.7)), (coarse, dict(color="tab:red", lw=1.6))):
        counts = bin_counts(trace.timestamps, w, span)
        edges = np.arange(counts.size + 1) * w
        _step(top, edges, counts / w, unit, label=f"{_label(w)} bins", **kw)
    gaps = np.diff(trace.timestamps)
    if gaps.size == 0:
        bottom.text(0.5, 0.5, "fewer than two requests", ha="center", transform=bottom.transAxes)
        return
    # Complementary CDF of gaps vs the exponential a Poisson process of this rate would give.
    g = np.sort(gaps)
    ccdf = 1.0 - np.arange(g.size) / g.size
    pick = np.unique(np.r_[0 : g.size : max(g.size // 4000, 1), g.size - 1])  # thin the points, not the data
    bottom.plot(g[pick], ccdf[pick], color="tab:blue", lw=1.4, label="this trace")
    mean_gap = float(gaps.mean())
    x = np.linspace(0, g[-1], 400)
    bottom.plot(x, np.exp(-x / mean_gap), color="gray", ls="--", lw=1, label="Poisson, same rate")
    bottom.set_yscale("log")
    bottom.set_ylim(max(1.0 / g.size, 1e-6), 1.05)
    bottom.set_xlim(0, float(g[-1]) * 1.02 if g[-1] > 0 else 1)
    zero = float(np.mean(gaps == 0))
    note = f" ({zero:.0%} of gaps are 0)" if zero >= 0.01 else ""
    bottom.set_xlabel(f"inter-arrival gap (s){note}")
    bottom.set_ylabel("P(gap > x)")
    bottom.legend(loc="upper right", fontsize=8)


def _plot_counts(ct: CountTrace, top, bottom, unit: float) -> None:
    starts, widths, counts = ct.binned()
    width = float(np.median(widths))
    n = max(int(math.ceil(ct.span / width)), 1)
    grid = np.zeros(n)
    np.add.at(grid, np.minimum((starts // width).astype(np.int64), n - 1), counts)
    rate = grid / width
    edges = np.arange(n + 1) * width
    _step(top, edges, rate, unit, color="tab:blue", lw=0.7, alpha=0.8, label=f"{_label(width)} bins (source)")
    _, coarse = _bins(ct.span, floor=width)
    k = int(round(coarse / width))
    if k > 1 and n >= 2 * k:
        m = (n // k) * k
        _step(top, edges[: m + 1 : k], rate[:m].reshape(-1, k).mean(axis=1), unit, color="tab:red", lw=1.6,
              label=f"{_label(coarse)} mean")
    bottom.hist(rate, bins=min(60, max(10, n // 10)), color="tab:blue", alpha=0.8)
    bottom.set_xlabel(f"request rate per {_label(width)} bin (req/s); finer timing unknown in a count trace")
    bottom.set_ylabel("bins")
