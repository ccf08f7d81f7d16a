"""Count traces (requests per time bin) and their expansion into arrival times.

Sources such as the Azure Functions 2019 dataset (per-minute invocation counts) and
ServeGen (per-client request rates per 10-minute window) record how many requests
fell in each bin, not when. The simulator needs arrival times, so a count trace is
expanded inside each bin by one of three documented rules:

- `uniform` (default): exactly the recorded count, each arrival placed independently
  and uniformly in its bin. This is a Poisson process *conditioned on the observed
  count*, so bin totals match the source exactly and within-bin timing is as random
  as a Poisson process.
- `poisson`: a homogeneous Poisson process at the bin's rate (count / width); the
  per-bin totals vary around the source's counts (Poisson noise).
- `even`: the count spread evenly over the bin (deterministic; the smoothest
  traffic consistent with the counts, a lower bound on burstiness).

`rate_scale` multiplies the expected count of every bin (for `uniform`/`even` by
stochastic rounding of count*scale, for `poisson` by the Poisson mean), and `start`/
`end` keep a time window, so huge sources such as ServeGen (236 M requests in 14 days)
can be replayed without materialising every request. Expansion refuses to exceed
`max_rows` and says how to get under it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pandas as pd

from simtune.errors import InputError
from simtune.trace.model import Trace

EXPAND_METHODS = ("uniform", "poisson", "even")
DEFAULT_MAX_ROWS = 20_000_000


@dataclass
class CountTrace:
    """Per-row bins: `bin_start` (s from the first bin), `bin_width` (s), `counts`.

    Several rows may share a bin (e.g. one row per function per minute); `columns`
    carries their per-row attributes (function, trigger, ...) onto every arrival
    expanded from that row.
    """

    bin_start: np.ndarray
    bin_width: np.ndarray
    counts: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    name: str = "trace"
    origin: Optional[pd.Timestamp] = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bin_start = np.ascontiguousarray(self.bin_start, dtype=np.float64)
        self.bin_width = np.ascontiguousarray(np.broadcast_to(self.bin_width, self.bin_start.shape), dtype=np.float64)
        self.counts = np.ascontiguousarray(self.counts, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.bin_start.shape[0])

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def span(self) -> float:
        """End of the observed period: `meta['span_s']` if known, else of the last bin."""
        if "span_s" in self.meta:
            return float(self.meta["span_s"])
        return float((self.bin_start + self.bin_width).max()) if len(self) else 0.0

    def binned(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(start, width, count) per distinct bin, summed over rows that share it."""
        starts, inverse = np.unique(self.bin_start, return_inverse=True)
        counts = np.bincount(inverse, weights=self.counts, minlength=starts.size).astype(np.int64)
        widths = np.zeros(starts.size)
        np.maximum.at(widths, inverse, self.bin_width)
        return starts, widths, counts


def validate_counts(values: np.ndarray, where: str) -> np.ndarray:
    """Whole, non-negative counts (float input allowed when integral, e.g. rate*600)."""
    neg = values < 0
    if neg.any():
        row = int(np.flatnonzero(neg)[0]) + 1
        raise InputError(f"{where}: row {row}: negative count {values[row - 1]:g}")
    rounded = np.rint(values)
    frac = np.abs(values - rounded) > 1e-6 * np.maximum(1.0, np.abs(values))
    if frac.any():
        row = int(np.flatnonzero(frac)[0]) + 1
        raise InputError(f"{where}: row {row}: count {values[row - 1]!r} is not a whole number")
    return rounded.astype(np.int64)


def _scaled_counts(counts: np.ndarray, scale: float, method: str, rng: np.random.Generator) -> np.ndarray:
    if method == "poisson":
        return rng.poisson(counts * scale)
    if scale == 1.0:
        return counts
    expected = counts * scale
    base = np.floor(expected)
    return (base + (rng.random(counts.size) < expected - base)).astype(np.int64)


def expand_counts(
    ct: CountTrace,
    *,
    method: str = "uniform",
    seed: int | np.random.Generator = 0,
    rate_scale: float = 1.0,
    start: Optional[float] = None,
    end: Optional[float] = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    where: str = "",
) -> Trace:
    """Arrival times from a count trace (see the module docstring for the rules).

    The result keeps the count trace's clock: t=0 is the start of the first bin (or
    `start` when a window is given), not the first arrival, so minute bins stay aligned.
    """
    where = where or ct.meta.get("path") or ct.name
    if method not in EXPAND_METHODS:
        raise InputError(f"{where}: unknown expansion {method!r} (expected one of {', '.join(EXPAND_METHODS)})")
    if not (rate_scale > 0 and math.isfinite(rate_scale)):
        raise InputError(f"{where}: rate scale must be > 0, got {rate_scale!r}")
    lo = 0.0 if start is None else float(start)
    hi = ct.span if end is None else float(end)
    if not hi > lo:
        raise InputError(f"{where}: empty time window [{lo:g}, {hi:g}) s (the trace spans 0..{ct.span:g} s)")
    keep = (ct.bin_start < hi) & (ct.bin_start + ct.bin_width > lo)
    starts, widths, counts = ct.bin_start[keep], ct.bin_width[keep], ct.counts[keep]
    # Partial bins at the window's edges contribute only their overlapping fraction.
    overlap = (np.minimum(starts + widths, hi) - np.maximum(starts, lo)) / widths
    expected = float(np.dot(counts, overlap)) * rate_scale
    if expected > max_rows:
        need = rate_scale * max_rows / expected
        raise InputError(
            f"{where}: expanding would make ~{expected:,.0f} arrivals, over the limit of {max_rows:,}; "
            f"use a rate scale <= {need:.3g} (--rate-scale) or a shorter time window (--start/--end), "
            "or raise the limit (--max-rows)"
        )
    rng = np.random.default_rng(seed)
    n = _scaled_counts(counts, rate_scale, method, rng)
    total = int(n.sum())
    row_of = np.repeat(np.arange(n.size), n)
    if method == "even":
        first = np.repeat(np.cumsum(n) - n, n)
        frac = (np.arange(total) - first + 0.5) / np.repeat(np.maximum(n, 1), n)
    else:
        frac = rng.random(total)
    ts = starts[row_of] + frac * widths[row_of]
    order = np.argsort(ts, kind="stable")
    ts = ts[order]
    row_of = row_of[order]
    inside = (ts >= lo) & (ts < hi)
    if not inside.all():
        ts, row_of = ts[inside], row_of[inside]
    rows_kept = np.flatnonzero(keep)[row_of]
    columns = {k: v[rows_kept] for k, v in ct.columns.items()}
    meta = dict(ct.meta)
    meta.update(
        expanded_from="counts",
        expand_method=method,
        seed=seed if isinstance(seed, int) else None,
        rate_scale=rate_scale,
        bin_width_s=float(np.median(ct.bin_width)) if len(ct) else None,
        window_s=[lo, hi],
        span_s=hi - lo,
    )
    origin = None if ct.origin is None else ct.origin + pd.Timedelta(seconds=lo)
    return Trace(ts - lo, columns, ct.name, origin, meta)
