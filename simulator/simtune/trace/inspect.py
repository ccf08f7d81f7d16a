"""What a trace's traffic looks like, in numbers: the summary behind `simtune trace inspect`.

Conventions (the same as `shared/traces/README.md`, so figures can be compared):
- mean rate = rows / span (the observed period from t=0);
- window statistics use bins aligned at t=0; the peak is the busiest bin;
- index of dispersion = sample variance (ddof=1) / mean of the per-bin counts (1 for Poisson, larger
  for bursty traffic), over all bins from t=0 to the span, empty ones included;
- inter-arrival CV = std / mean of the gaps between consecutive requests (1 for Poisson).

Why the same statistics at 1 s, 10 s and 1 min: autoscalers react on these time
scales (metrics push interval, look-back window, upscale delay), and burstiness that
shows at one scale may vanish at another. For count traces only the source's own bin
is known; finer figures are reported as unknown rather than invented.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional, Union

import numpy as np

from simtune.trace.counts import CountTrace
from simtune.trace.model import Trace

DEFAULT_WINDOWS = (1.0, 10.0, 60.0)
SUMMARY_COLUMNS = ("service_time", "input_tokens", "output_tokens")


@dataclass
class WindowStats:
    window_s: float
    peak_count: int
    peak_rate: float
    peak_at_s: float
    index_of_dispersion: float
    empty_fraction: float


@dataclass
class ColumnSummary:
    mean: float
    p50: float
    p90: float
    p99: float
    max: float
    missing: int = 0


@dataclass
class TraceStats:
    name: str
    kind: str  # "requests" or "counts"
    rows: int
    span_s: float
    mean_rate: float
    windows: list[WindowStats]
    interarrival_cv: Optional[float]
    longest_gap_s: Optional[float]
    longest_gap_at_s: Optional[float]
    columns: dict[str, ColumnSummary] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def bin_counts(timestamps: np.ndarray, window: float, span: float) -> np.ndarray:
    """Requests per `window`-s bin aligned at 0, covering [0, span]."""
    n_bins = max(int(math.ceil(span / window)), 1)
    idx = np.minimum((timestamps // window).astype(np.int64), n_bins - 1) if timestamps.size else timestamps
    return np.bincount(idx.astype(np.int64), minlength=n_bins)


def _window_stats(counts: np.ndarray, window: float) -> WindowStats:
    peak = int(np.argmax(counts)) if counts.size else 0
    mean = float(counts.mean()) if counts.size else 0.0
    idc = float(counts.var(ddof=1) / mean) if mean > 0 and counts.size > 1 else math.nan
    return WindowStats(
        window_s=float(window),
        peak_count=int(counts[peak]) if counts.size else 0,
        peak_rate=float(counts[peak] / window) if counts.size else 0.0,
        peak_at_s=float(peak * window),
        index_of_dispersion=idc,
        empty_fraction=float(np.mean(counts == 0)) if counts.size else 1.0,
    )


def summarize_column(values: np.ndarray) -> Optional[ColumnSummary]:
    """mean/p50/p90/p99/max of a numeric column, ignoring missing values."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    ok = np.isfinite(arr)
    if not ok.any():
        return None
    v = arr[ok]
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return ColumnSummary(float(v.mean()), float(p50), float(p90), float(p99), float(v.max()), int((~ok).sum()))


def _numeric_columns(columns: dict[str, np.ndarray]) -> dict[str, ColumnSummary]:
    out: dict[str, ColumnSummary] = {}
    ordered = [c for c in SUMMARY_COLUMNS if c in columns] + [c for c in columns if c not in SUMMARY_COLUMNS]
    for name in ordered:
        col = columns[name]
        if col.dtype.kind in "iuf":
            summary = summarize_column(col)
            if summary is not None:
                out[name] = summary
    return out


def trace_stats(trace: Trace, windows: tuple[float, ...] = DEFAULT_WINDOWS) -> TraceStats:
    """Statistics of a per-request trace (see the module docstring for definitions)."""
    ts = trace.timestamps
    span = trace.span
    n = len(trace)
    notes: list[str] = []
    gaps = np.diff(ts)
    cv = float(gaps.std() / gaps.mean()) if gaps.size and gaps.mean() > 0 else None
    longest = int(np.argmax(gaps)) if gaps.size else None
    bin_w = trace.meta.get("bin_width_s")
    if trace.meta.get("expanded_from") == "counts":
        notes.append(
            f"arrivals expanded from {bin_w:g}-s counts ({trace.meta.get('expand_method')}, "
            f"seed {trace.meta.get('seed')}): statistics finer than {bin_w:g} s describe the expansion, not the source"
        )
    if trace.meta.get("generator"):
        notes.append(f"synthetic: {trace.meta['generator']} (seed {trace.meta.get('seed')})")
    return TraceStats(
        name=trace.name,
        kind="requests",
        rows=n,
        span_s=span,
        mean_rate=n / span if span > 0 else math.nan,
        windows=[_window_stats(bin_counts(ts, w, span), w) for w in windows],
        interarrival_cv=cv,
        longest_gap_s=float(gaps[longest]) if longest is not None else None,
        longest_gap_at_s=float(ts[longest]) if longest is not None else None,
        columns=_numeric_columns(trace.columns),
        meta=dict(trace.meta),
        notes=notes,
    )


def count_stats(ct: CountTrace) -> TraceStats:
    """Statistics of a count trace at its own resolution (no expansion)."""
    starts, widths, counts = ct.binned()
    width = float(np.median(widths)) if widths.size else 0.0
    span = ct.span
    # Put the source's bins on a regular grid so empty bins count (zero rows are omitted
    # in sparse files such as the per-function Azure file).
    grid = np.zeros(max(int(math.ceil(span / width)), 1), dtype=np.int64) if width > 0 else counts
    if width > 0:
        np.add.at(grid, np.minimum((starts // width).astype(np.int64), grid.size - 1), counts)
    total = int(counts.sum())
    notes = [f"count trace: {width:g}-s bins; arrival times within a bin are unknown (expand to simulate)"]
    per_row = {k: v for k, v in ct.columns.items() if v.dtype.kind in "iuf"}
    weighted = {}
    for name, col in per_row.items():  # weight per-row attributes by how many requests they stand for
        s = summarize_column(np.repeat(col, ct.counts)) if total <= 50_000_000 else None
        if s is not None:
            weighted[name] = s
    return TraceStats(
        name=ct.name,
        kind="counts",
        rows=total,
        span_s=span,
        mean_rate=total / span if span > 0 else math.nan,
        windows=[_window_stats(grid, width)] if width > 0 else [],
        interarrival_cv=None,
        longest_gap_s=None,
        longest_gap_at_s=None,
        columns=weighted,
        meta=dict(ct.meta),
        notes=notes,
    )


def stats(trace: Union[Trace, CountTrace], windows: tuple[float, ...] = DEFAULT_WINDOWS) -> TraceStats:
    return count_stats(trace) if isinstance(trace, CountTrace) else trace_stats(trace, windows)


def _fmt_duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds:,.0f} s ({seconds / 86400:.1f} d)"
    if seconds >= 2 * 3600:
        return f"{seconds:,.0f} s ({seconds / 3600:.1f} h)"
    if seconds >= 120:
        return f"{seconds:,.0f} s ({seconds / 60:.0f} min)"
    return f"{seconds:,.3g} s"


def _fmt_window(w: float) -> str:
    if w >= 3600 and w % 3600 == 0:
        return f"{w / 3600:g} h"
    if w >= 60 and w % 60 == 0:
        return f"{w / 60:g} min"
    return f"{w:g} s"


def format_stats(st: TraceStats) -> str:
    """Plain-text report (what `simtune trace inspect` prints)."""
    lines = [
        f"trace        {st.name} ({st.kind})",
        f"requests     {st.rows:,}",
        f"span         {_fmt_duration(st.span_s)}",
        f"mean rate    {st.mean_rate:.4g} req/s ({st.mean_rate * 60:,.4g} req/min)",
    ]
    if st.windows:
        lines.append("window       peak req   peak req/s   at t (s)   index of dispersion   empty bins")
        for w in st.windows:
            lines.append(
                f"  {_fmt_window(w.window_s):<10} {w.peak_count:>8,}   {w.peak_rate:>10.4g}   {w.peak_at_s:>8,.0f}"
                f"   {w.index_of_dispersion:>19.3g}   {w.empty_fraction:>9.0%}"
            )
    if st.kind == "counts":
        lines.append("  finer windows: unknown at this resolution")
    if st.interarrival_cv is not None:
        lines.append(f"inter-arrival CV     {st.interarrival_cv:.3g}")
    if st.longest_gap_s is not None:
        lines.append(f"longest idle gap     {st.longest_gap_s:,.4g} s (from t = {st.longest_gap_at_s:,.1f} s)")
    if st.columns:
        lines.append("column               mean        p50        p90        p99        max")
        for name, c in st.columns.items():
            lines.append(
                f"  {name:<18} {c.mean:>9.4g} {c.p50:>10.4g} {c.p90:>10.4g} {c.p99:>10.4g} {c.max:>10.4g}"
                + (f"   ({c.missing:,} missing)" if c.missing else "")
            )
    lines += [f"note: {n}" for n in st.notes]
    return "\n".join(lines)
