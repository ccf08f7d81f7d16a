"""Trace transforms: windows, rate scaling, time warps, concatenation, merging, splits.

All keep every per-request column with its request and return new `Trace`s; all random
choices come from `seed`. Times are on the trace's clock (t=0 at its start), and
`Trace.span` (the observed period) is carried along so rates stay honest.

Rate scaling (`scale_rate`) — which method and why:
- factor < 1, `thin` (default): keep each request independently with probability
  `factor` (independent thinning). The expected rate curve is scaled exactly at every
  time scale and a Poisson process stays Poisson.
- factor > 1, `superpose` (default): floor(factor) copies of the trace plus one copy
  thinned to the fractional part, each copy after the first shifted by a random offset
  in [0, `max_shift`) s (wrapping around the span). The rate curve at scales above
  `max_shift` is scaled exactly and the within-burst structure is kept ("k times as many
  users behaving the same way"); note that bursts get k times taller, so the index of
  dispersion grows about k-fold at windows longer than `max_shift`.
- `nhpp`: estimate the rate in `bin_s` bins, multiply it, and draw a fresh Poisson
  process per bin (columns resampled from requests of the same bin). Keeps the shape at
  `bin_s` and coarser; erases burstiness finer than `bin_s`.
To raise the rate by squeezing time instead (shorter trace, same count) use `compress`.
"""

from __future__ import annotations

import logging
import math
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from simtune.errors import InputError
from simtune.trace.model import Trace

log = logging.getLogger(__name__)

Seed = int | np.random.Generator
SCALE_METHODS = ("auto", "thin", "superpose", "nhpp")


def _with(trace: Trace, ts: np.ndarray, columns: dict, span: float, origin=None, **meta) -> Trace:
    new_meta = {**trace.meta, **meta, "span_s": float(span)}
    return Trace(ts, columns, trace.name, trace.origin if origin is None else origin, new_meta)


def _shift_origin(trace: Trace, seconds: float):
    return None if trace.origin is None else trace.origin + pd.Timedelta(seconds=float(seconds))


def slice_window(
    trace: Trace, start: float = 0.0, end: Optional[float] = None, *, rebase: bool = True, where: str = ""
) -> Trace:
    """Requests with start <= t < end; with `rebase`, the window restarts at t=0."""
    end = trace.span if end is None else float(end)
    start = float(start)
    if not end > start:
        raise InputError(f"{where or trace.name}: empty time window [{start:g}, {end:g}) s (the trace spans 0..{trace.span:g} s)")
    lo, hi = np.searchsorted(trace.timestamps, [start, end], side="left")
    if end >= trace.span and hi < len(trace):  # include arrivals exactly at the end of the span
        hi = len(trace)
    part = trace.take(slice(lo, hi))
    offset = start if rebase else 0.0
    origin = _shift_origin(trace, offset) if rebase else trace.origin
    window = [start, end] if "window_s" not in trace.meta else [trace.meta["window_s"][0] + start, trace.meta["window_s"][0] + end]
    return _with(part, part.timestamps - offset, part.columns, (end - start) if rebase else end, origin, window_s=window)


def time_scale(trace: Trace, factor: float) -> Trace:
    """Multiply every time by `factor` (> 1 stretches: lower rate; < 1 compresses).

    Service times are left alone: this changes how fast requests arrive, not how long
    each takes.
    """
    if not (factor > 0 and math.isfinite(factor)):
        raise InputError(f"time scale factor must be > 0, got {factor!r}")
    return _with(trace, trace.timestamps * factor, trace.columns, trace.span * factor,
                 time_scale=float(factor) * float(trace.meta.get("time_scale", 1.0)))


def compress(trace: Trace, speedup: float) -> Trace:
    """Replay `speedup` times faster: the same requests in 1/speedup of the time."""
    if not (speedup > 0 and math.isfinite(speedup)):
        raise InputError(f"speed-up must be > 0, got {speedup!r}")
    return time_scale(trace, 1.0 / speedup)


def shift(trace: Trace, offset: float) -> Trace:
    """Move every request by `offset` seconds (the result must not start before 0)."""
    if len(trace) and trace.timestamps[0] + offset < 0:
        raise InputError(f"shift {offset:g} s would move the first request before t=0")
    return _with(trace, trace.timestamps + offset, trace.columns, max(trace.span + offset, 0.0))


def _common_columns(traces: Sequence[Trace]) -> list[str]:
    names = [c for c in traces[0].columns if all(c in t.columns for t in traces[1:])]
    dropped = sorted({c for t in traces for c in t.columns} - set(names))
    if dropped:
        log.warning("columns not in every trace were dropped: %s", ", ".join(dropped))
    return names


def _stack(traces: Sequence[Trace], offsets: Sequence[float], label_column: Optional[str]) -> tuple[np.ndarray, dict]:
    cols = _common_columns(traces)
    ts = np.concatenate([t.timestamps + o for t, o in zip(traces, offsets)])
    columns = {c: np.concatenate([t.columns[c] for t in traces]) for c in cols}
    if label_column:
        columns[label_column] = np.repeat(np.array([t.name for t in traces], dtype=object), [len(t) for t in traces])
    return ts, columns


def concat(traces: Sequence[Trace], *, gap: float = 0.0) -> Trace:
    """One after another: each trace starts `gap` s after the previous one's span ends."""
    if not traces:
        raise InputError("concat: no traces given")
    offsets = np.concatenate(([0.0], np.cumsum([t.span + gap for t in traces[:-1]])))
    ts, columns = _stack(traces, offsets, None)
    out = Trace(ts, columns, "+".join(t.name for t in traces), traces[0].origin, {"concat_of": [t.name for t in traces]})
    out.meta["span_s"] = float(offsets[-1] + traces[-1].span)
    return out


def merge(traces: Sequence[Trace], *, label_column: Optional[str] = "source") -> Trace:
    """Superpose traces on one clock (e.g. several deployments' traffic); ties keep input
    order. `label_column` records which trace each request came from."""
    if not traces:
        raise InputError("merge: no traces given")
    ts, columns = _stack(traces, [0.0] * len(traces), label_column)
    order = np.argsort(ts, kind="stable")
    out = Trace(ts[order], {k: v[order] for k, v in columns.items()}, "|".join(t.name for t in traces),
                traces[0].origin, {"merge_of": [t.name for t in traces]})
    out.meta["span_s"] = float(max(t.span for t in traces))
    return out


def split(
    trace: Trace, *, at: Optional[float] = None, fraction: Optional[float] = None, rebase_test: bool = True
) -> tuple[Trace, Trace]:
    """Train/test split by time (never by shuffling rows: traffic is autocorrelated).

    Give `at` (s) or `fraction` of the span. The test part restarts at t=0 unless
    `rebase_test` is False.
    """
    if (at is None) == (fraction is None):
        raise InputError("split: give exactly one of a time (at) or a fraction")
    if fraction is not None:
        if not 0 < fraction < 1:
            raise InputError(f"split: fraction must be between 0 and 1, got {fraction!r}")
        at = trace.span * fraction
    assert at is not None
    if not 0 < at < trace.span:
        raise InputError(f"split: time {at:g} s is outside the trace (0..{trace.span:g} s)")
    train = slice_window(trace, 0.0, at)
    test = slice_window(trace, at, trace.span, rebase=rebase_test)
    return train, test


def scale_rate(
    trace: Trace,
    factor: float,
    *,
    seed: Seed = 0,
    method: str = "auto",
    max_shift: float = 1.0,
    bin_s: float = 60.0,
) -> Trace:
    """Scale the request rate by `factor`, keeping the span (see the module docstring)."""
    if not (factor > 0 and math.isfinite(factor)):
        raise InputError(f"rate scale factor must be > 0, got {factor!r}")
    if method not in SCALE_METHODS:
        raise InputError(f"unknown rate-scaling method {method!r} (expected one of {', '.join(SCALE_METHODS)})")
    if method == "auto":
        method = "thin" if factor < 1 else "superpose"
        if factor == 1:
            return trace
    if method == "thin" and factor > 1:
        raise InputError("thinning can only lower the rate (factor < 1); use superpose or nhpp to raise it")
    rng = np.random.default_rng(seed)
    if method == "thin":
        out = trace.take(rng.random(len(trace)) < factor)
    elif method == "superpose":
        out = _superpose(trace, factor, max_shift, rng)
    else:
        out = _nhpp_rescale(trace, factor, bin_s, rng)
    prev = float(trace.meta.get("rate_scale", 1.0))
    return _with(out, out.timestamps, out.columns, trace.span, rate_scale=prev * factor, rate_scale_method=method)


def _superpose(trace: Trace, factor: float, max_shift: float, rng: np.random.Generator) -> Trace:
    span = trace.span
    n = len(trace)
    copies = int(math.floor(factor))
    frac = factor - copies
    index_parts: list[np.ndarray] = []
    ts_parts: list[np.ndarray] = []
    for j in range(copies + (1 if frac > 0 else 0)):
        rows = np.arange(n) if j < copies else np.flatnonzero(rng.random(n) < frac)
        t = trace.timestamps[rows]
        if j > 0:  # the first copy stays where it was
            t = t + rng.uniform(0.0, max_shift)
            if span > 0:
                t = np.where(t >= span, t - span, t)
        index_parts.append(rows)
        ts_parts.append(t)
    rows = np.concatenate(index_parts)
    ts = np.concatenate(ts_parts)
    order = np.argsort(ts, kind="stable")
    rows = rows[order]
    return Trace(ts[order], {k: v[rows] for k, v in trace.columns.items()}, trace.name, trace.origin, dict(trace.meta))


def _nhpp_rescale(trace: Trace, factor: float, bin_s: float, rng: np.random.Generator) -> Trace:
    span = max(trace.span, bin_s)
    n_bins = int(math.ceil(span / bin_s))
    edges = np.arange(n_bins + 1) * bin_s
    first = np.searchsorted(trace.timestamps, edges[:-1], side="left")
    last = np.searchsorted(trace.timestamps, edges[1:], side="left")
    last[-1] = len(trace)
    counts = last - first
    new_counts = rng.poisson(counts * factor)
    bin_of = np.repeat(np.arange(n_bins), new_counts)
    ts = np.sort(edges[bin_of] + rng.random(bin_of.size) * bin_s)
    bin_of = np.minimum((ts // bin_s).astype(np.int64), n_bins - 1)
    # Bins with new arrivals had old ones (Poisson(0) = 0), so this index is valid.
    rows = first[bin_of] + (rng.random(bin_of.size) * counts[bin_of]).astype(np.int64)
    return Trace(ts, {k: v[rows] for k, v in trace.columns.items()}, trace.name, trace.origin, dict(trace.meta))
