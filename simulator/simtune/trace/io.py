"""Loading and saving traces: the entry points the rest of simtune calls.

`load_trace(path)` reads any supported format (see `simtune.trace.readers`), expands
count traces into arrivals (see `simtune.trace.counts`), and optionally keeps a time
window or rescales the rate. `save_trace` writes simtune's canonical Parquet: a
`timestamp` column (float64 s) plus one column per per-request attribute, with the
trace's name, origin and provenance in the schema metadata.

Why pyarrow: CSV and Parquet are read column-wise straight into numpy, which keeps a
10 M-row trace within seconds and without per-row Python objects. Every bad value is
reported with the file, the column and the 1-based data row, as one line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from simtune.errors import InputError
from simtune.trace.containers import read_table
from simtune.trace.counts import DEFAULT_MAX_ROWS, CountTrace, expand_counts
from simtune.trace.model import Trace
from simtune.trace.timeparse import first_bad_row, numeric_column, to_seconds


def _read_table(path: Path) -> pa.Table:
    """Kept for callers of the first version (service-time `empirical:FILE`)."""
    return read_table(path)


def parse_timestamps(col: pa.ChunkedArray | pa.Array, where: str) -> tuple[np.ndarray, Optional[pd.Timestamp]]:
    """Seconds from the earliest value, plus the absolute origin for datetime input."""
    return to_seconds(col, "auto", where)


def validate_service_times(col, where: str) -> np.ndarray:
    """Finite, non-negative float seconds, or an InputError naming the first bad row."""
    if isinstance(col, pa.Array):
        col = pa.chunked_array([col])
    if isinstance(col, pa.ChunkedArray):
        values = numeric_column(col, where, "service time")
    else:
        values = np.asarray(col, dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            raise InputError(f"{where}: row {first_bad_row(bad)}: service time is NaN or infinite")
    if values.size and values.min() < 0:
        row = first_bad_row(values < 0)
        raise InputError(f"{where}: row {row}: negative service time {values[row - 1]!r}")
    return values


def load_trace(
    path: str | os.PathLike,
    *,
    timestamp_column: Optional[str] = None,
    service_time_column: Optional[str] = None,
    format: str = "auto",
    columns: Optional[dict[str, str]] = None,
    time_unit: str = "auto",
    service_time_unit: str = "s",
    bin_width: Optional[float] = None,
    expand: str = "uniform",
    seed: int | np.random.Generator = 0,
    rate_scale: float = 1.0,
    start: Optional[float] = None,
    end: Optional[float] = None,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> Trace:
    """Load any supported trace as per-request arrivals.

    Per-request files: times are shifted so the first arrival is at 0; out-of-order
    rows are sorted (stably) with a warning. Count traces are expanded with `expand`
    (`uniform`, `poisson` or `even`, seeded by `seed`) and keep their bin clock.
    `start`/`end` (s, on that clock) keep a window and restart it at 0; `rate_scale`
    thins (<1) or superposes copies (>1) for per-request traces
    (`simtune.trace.transforms.scale_rate`), or scales the expected bin counts for count
    traces, where it is applied before expansion so huge sources stay small.
    """
    from simtune.trace.readers import read_trace
    from simtune.trace.transforms import scale_rate, slice_window

    mapping = dict(columns or {})
    if timestamp_column and timestamp_column != "timestamp":
        mapping.setdefault("timestamp", timestamp_column)
    if service_time_column and service_time_column != "service_time":
        mapping.setdefault("service_time", service_time_column)
    trace = read_trace(
        path,
        format=format,
        columns=mapping,
        time_unit=time_unit,
        service_time_unit=service_time_unit,
        bin_width=bin_width,
    )
    if isinstance(trace, CountTrace):
        return expand_counts(
            trace,
            method=expand,
            seed=seed,
            rate_scale=rate_scale,
            start=start,
            end=end,
            max_rows=max_rows,
            where=str(path),
        )
    if start is not None or end is not None:
        trace = slice_window(trace, start or 0.0, end, where=str(path))
    if rate_scale != 1.0:
        trace = scale_rate(trace, rate_scale, seed=seed)
    if len(trace) > max_rows:
        raise InputError(
            f"{path}: {len(trace):,} requests, over the limit of {max_rows:,}; "
            "keep a shorter time window (start/end) or thin it (rate scale < 1)"
        )
    return trace


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)


def save_trace(trace: Trace, path: str | os.PathLike) -> None:
    """Write the canonical Parquet form (atomically: a temp file then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"timestamp": pa.array(trace.timestamps, pa.float64())}
    for name, values in trace.columns.items():
        try:
            data[name] = pa.array(values, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            data[name] = pa.array(np.asarray(values).astype(str))
    table = pa.table(data)
    meta_dict = dict(trace.meta)
    if len(trace) and trace.timestamps[0] != 0:
        meta_dict["first_arrival_s"] = float(trace.timestamps[0])
    meta = {b"simtune.meta": json.dumps(meta_dict, default=_json_default).encode(), b"simtune.name": trace.name.encode()}
    if trace.origin is not None:
        meta[b"simtune.origin"] = str(trace.origin).encode()
    table = table.replace_schema_metadata(meta)
    tmp = path.with_name(path.name + ".tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"{path}: cannot write: {exc.strerror or exc}") from None
