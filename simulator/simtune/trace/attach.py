"""Per-request attributes for arrivals that have none: service times and token counts.

Two sources, both seeded:
- a distribution spec, the same mini-language as `--service-time`
  (`const:0.05`, `exp:0.05`, `lognormal:mean=0.05,p99=0.4`, `empirical:FILE[:COLUMN]`;
  see `simtune.service_time`); token counts are rounded to whole tokens, at least 1;
- `resample_columns`: rows drawn with replacement from a real trace, *jointly*, so
  correlated columns (a request's input and output tokens, its service time) keep their
  joint distribution.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from simtune.errors import InputError
from simtune.service_time import parse_service_time
from simtune.trace.model import Trace

Seed = int | np.random.Generator


def _dist(spec: str, option: str):
    try:
        return parse_service_time(spec)
    except InputError as exc:
        raise InputError(str(exc).replace("--service-time", option)) from None


def attach_service_time(trace: Trace, spec: str, *, seed: Seed = 0) -> Trace:
    """Add a `service_time` column (seconds) drawn from `spec`."""
    rng = np.random.default_rng(seed)
    return trace.with_column("service_time", _dist(spec, "--service-time").sample(rng, len(trace)))


def attach_tokens(
    trace: Trace, *, input_tokens: Optional[str] = None, output_tokens: Optional[str] = None, seed: Seed = 0
) -> Trace:
    """Add `input_tokens` / `output_tokens` columns drawn from distribution specs
    (values are token counts, e.g. `lognormal:mean=2048,p99=7400`)."""
    rng = np.random.default_rng(seed)
    for column, spec in (("input_tokens", input_tokens), ("output_tokens", output_tokens)):
        if spec is None:
            continue
        values = _dist(spec, f"--{column.replace('_', '-')}").sample(rng, len(trace))
        trace = trace.with_column(column, np.maximum(np.rint(values), 1).astype(np.int64))
    return trace


def resample_columns(
    trace: Trace, source: Trace, columns: Optional[Sequence[str]] = None, *, seed: Seed = 0
) -> Trace:
    """Copy `columns` (default: service_time and token columns the source has) from rows
    of `source` drawn uniformly with replacement, the same row for every column."""
    if len(source) == 0:
        raise InputError(f"{source.name}: no rows to resample from")
    if columns is None:
        columns = [c for c in ("service_time", "input_tokens", "output_tokens") if c in source.columns]
        if not columns:
            raise InputError(
                f"{source.name}: nothing to resample (no service_time, input_tokens or output_tokens column; "
                f"columns found: {', '.join(source.columns) or 'none'})"
            )
    missing = [c for c in columns if c not in source.columns]
    if missing:
        raise InputError(
            f"{source.name}: missing column {missing[0]!r} (columns found: {', '.join(source.columns) or 'none'})"
        )
    rows = np.random.default_rng(seed).integers(0, len(source), len(trace))
    for column in columns:
        trace = trace.with_column(column, source.columns[column][rows])
    return trace
