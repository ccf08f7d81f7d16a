"""Reading and writing traces (CSV and Parquet; canonical form: Parquet).

Why pyarrow: CSV and Parquet are read column-wise straight into numpy, which keeps a
10 M-row trace within seconds and without per-row Python objects. Every bad value is
reported with the file, the column and the 1-based data row, as one line.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from simtune.errors import InputError
from simtune.trace.model import Trace

log = logging.getLogger(__name__)


def _read_table(path: Path) -> pa.Table:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a trace file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty (0 bytes)")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pq.read_table(path)
        if suffix in (".csv", ".txt", ".gz") or suffix == "":
            return pacsv.read_csv(path)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: cannot read as {suffix or 'csv'}: {first}") from None
    raise InputError(f"{path}: unknown trace format {suffix!r} (expected .csv or .parquet)")


def _first_bad_row(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0]) + 1


def parse_timestamps(col: pa.ChunkedArray | pa.Array, where: str) -> tuple[np.ndarray, Optional[pd.Timestamp]]:
    """Seconds from the first arrival, plus the absolute origin for datetime input.

    Accepts numeric seconds (any origin) or ISO-8601 / datetime values.
    """
    typ = col.type
    if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ):
        if col.null_count:
            mask = np.asarray(pc.is_null(col).to_numpy(zero_copy_only=False))
            raise InputError(f"{where}: row {_first_bad_row(mask)}: missing timestamp")
        values = np.asarray(col.to_numpy(), dtype=np.float64) if hasattr(col, "to_numpy") else None
        nan = ~np.isfinite(values)
        if nan.any():
            raise InputError(f"{where}: row {_first_bad_row(nan)}: timestamp is NaN or infinite")
        return values, None
    if pa.types.is_timestamp(typ) or pa.types.is_date(typ):
        series = pd.Series(col.to_pandas())
    elif pa.types.is_string(typ) or pa.types.is_large_string(typ):
        raw = pd.Series(col.to_pandas())
        if raw.isna().any():
            raise InputError(f"{where}: row {_first_bad_row(raw.isna().to_numpy())}: missing timestamp")
        numeric = pd.to_numeric(raw, errors="coerce")
        if numeric.notna().all():
            return numeric.to_numpy(dtype=np.float64), None
        if numeric.notna().sum() * 2 > len(raw):
            # Mostly numbers: the odd ones out are the bad rows.
            row = _first_bad_row(numeric.isna().to_numpy())
            raise InputError(f"{where}: row {row}: timestamp {raw.iloc[row - 1]!r} is not a number")
        series = pd.to_datetime(raw, errors="coerce", utc=True, format="ISO8601")
        bad = series.isna().to_numpy()
        if bad.any():
            row = _first_bad_row(bad)
            raise InputError(f"{where}: row {row}: cannot parse timestamp {raw.iloc[row - 1]!r} (expected seconds or ISO-8601)")
    else:
        raise InputError(f"{where}: timestamp column has type {typ}, expected numbers or ISO-8601 datetimes")
    if series.isna().any():
        raise InputError(f"{where}: row {_first_bad_row(series.isna().to_numpy())}: missing timestamp")
    if series.dt.tz is None:
        series = series.dt.tz_localize("UTC")
    origin = series.min()
    seconds = (series - origin).dt.total_seconds().to_numpy(dtype=np.float64)
    return seconds, origin


def load_trace(
    path: str | os.PathLike,
    *,
    timestamp_column: str = "timestamp",
    service_time_column: str = "service_time",
) -> Trace:
    """Load a per-request trace from CSV or Parquet.

    Required: a `timestamp` column (seconds, any origin, or ISO-8601 datetimes).
    Optional: `service_time` (seconds, finite and >= 0). Every other column is
    carried along. Out-of-order rows are sorted (stably) with a warning that says
    how many were out of order. Times are shifted so the first arrival is at 0.
    """
    path = Path(path)
    table = _read_table(path)
    where = str(path)
    names = table.column_names
    if timestamp_column not in names:
        raise InputError(f"{where}: missing column {timestamp_column!r} (columns found: {', '.join(names) or 'none'})")
    if table.num_rows == 0:
        raise InputError(f"{where}: the trace has no rows")
    ts, origin = parse_timestamps(table.column(timestamp_column), f"{where}: column {timestamp_column!r}")
    columns: dict[str, np.ndarray] = {}
    for name in names:
        if name == timestamp_column:
            continue
        col = table.column(name)
        if name == service_time_column:
            columns["service_time"] = validate_service_times(col, f"{where}: column {name!r}")
        else:
            columns[name] = col.to_numpy(zero_copy_only=False) if col.null_count == 0 else col.to_pandas().to_numpy()
    return _finish(ts, columns, path.stem, origin, where)


def validate_service_times(col, where: str) -> np.ndarray:
    """Finite, non-negative float seconds, or an InputError naming the first bad row."""
    if isinstance(col, (pa.ChunkedArray, pa.Array)):
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_decimal(col.type)):
            numeric = pd.to_numeric(pd.Series(col.to_pandas()), errors="coerce")
            bad = numeric.isna().to_numpy()
            if bad.any():
                row = _first_bad_row(bad)
                raise InputError(f"{where}: row {row}: service time {col.to_pandas().iloc[row - 1]!r} is not a number")
            values = numeric.to_numpy(dtype=np.float64)
        else:
            if col.null_count:
                mask = np.asarray(pc.is_null(col).to_numpy(zero_copy_only=False))
                raise InputError(f"{where}: row {_first_bad_row(mask)}: missing service time")
            values = np.asarray(col.to_numpy(), dtype=np.float64)
    else:
        values = np.asarray(col, dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        raise InputError(f"{where}: row {_first_bad_row(bad)}: service time is NaN or infinite")
    neg = values < 0
    if neg.any():
        row = _first_bad_row(neg)
        raise InputError(f"{where}: row {row}: negative service time {values[row - 1]!r}")
    return values


def _finish(ts: np.ndarray, columns: dict[str, np.ndarray], name: str, origin, where: str) -> Trace:
    out_of_order = int(np.count_nonzero(np.diff(ts) < 0)) if ts.size > 1 else 0
    if out_of_order:
        log.warning("%s: %d rows were out of order; sorted by timestamp", where, out_of_order)
        order = np.argsort(ts, kind="stable")
        ts = ts[order]
        columns = {k: v[order] for k, v in columns.items()}
    if ts.size:
        ts = ts - ts[0]
    return Trace(ts, columns, name, origin)


def save_trace(trace: Trace, path: str | os.PathLike) -> None:
    """Write the canonical Parquet form (atomically: a temp file then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(trace.to_pandas(), preserve_index=False)
    meta = dict(table.schema.metadata or {})
    if trace.origin is not None:
        meta[b"simtune.origin"] = str(trace.origin).encode()
    table = table.replace_schema_metadata(meta)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
