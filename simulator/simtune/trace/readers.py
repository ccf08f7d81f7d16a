"""Trace formats: what the columns of a file mean, and auto-detection.

Supported formats (`--trace-format`), with the column layouts they expect:

- `requests`: one row per request; a `timestamp` column (numbers in `time_unit`, or
  ISO-8601 datetimes), optional `service_time` (seconds unless `service_time_unit`),
  `input_tokens`, `output_tokens`, anything else carried along. This is also simtune's
  canonical Parquet (see `save_trace`) and the layout of the per-request files in
  `shared/traces/`.
- `azure-llm-2023`: Azure LLM inference trace 2023 (`TIMESTAMP, ContextTokens,
  GeneratedTokens`; datetimes with 100-ns digits). Source: github.com/Azure/
  AzurePublicDataset, `AzureLLMInferenceDataset2023.md` (Patel et al., Splitwise, ISCA'24).
- `mooncake`: Mooncake/Kimi JSON lines (`timestamp` in ms, `input_length`,
  `output_length`, `hash_ids` list). Source: github.com/kvcache-ai/Mooncake,
  `FAST25-release/traces/*.jsonl` (Qin et al., FAST'25).
- `azure-functions`: Azure Functions 2019 per-minute invocation counts, either the
  dataset's wide layout (`HashOwner, HashApp, HashFunction, Trigger, 1 .. 1440`, one
  column per minute of the day; github.com/Azure/AzurePublicDataset,
  `AzureFunctionsDataset2019.md`, Shahrad et al., ATC'20) or the long layout of the shared
  slices (`minute, count[, function, trigger, fn_avg_duration_ms ...]`). A count trace.
- `servegen`: ServeGen-style windows (`window_start_s, window_s, count`), as in the shared
  aggregate of github.com/alibaba/ServeGen `data/language/m-large` (Xiang et al.,
  arXiv:2505.09999). A count trace.
- `counts`: any count trace: `bin_start` (numbers in `time_unit` or datetimes) and
  `count` columns (rename with `columns`), bin width from a `bin_width` column, the
  `bin_width` argument, or the most common spacing of the bins.

`auto` picks a format from the column names when exactly one fits (see `detect_format`).
Count traces are expanded into arrivals by `simtune.trace.counts.expand_counts`.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from simtune.errors import InputError
from simtune.trace.containers import read_table
from simtune.trace.counts import CountTrace, validate_counts
from simtune.trace.model import Trace
from simtune.trace.timeparse import TIME_UNITS, first_bad_row, numeric_column, to_seconds

log = logging.getLogger(__name__)

AnyTrace = Union[Trace, CountTrace]


@dataclass
class ReadOptions:
    """How to interpret a file's columns.

    `columns` maps simtune's names to the file's (`{"timestamp": "TIMESTAMP"}`);
    `time_unit` is for the time column (`auto` = the format's default);
    `bin_width` (s) is for `counts` files without a width column.
    """

    columns: dict[str, str] = field(default_factory=dict)
    time_unit: str = "auto"
    service_time_unit: str = "s"
    bin_width: Optional[float] = None


# --------------------------------------------------------------------------- helpers


def _names(table: pa.Table) -> str:
    return ", ".join(table.column_names) or "none"


def _apply_mapping(table: pa.Table, mapping: dict[str, str], where: str) -> pa.Table:
    """Rename source columns to simtune's names; a missing source column is an error."""
    if not mapping:
        return table
    missing = [src for src in mapping.values() if src not in table.column_names]
    if missing:
        raise InputError(f"{where}: missing column {missing[0]!r} (columns found: {_names(table)})")
    rename = {src: dst for dst, src in mapping.items()}
    names = [rename.get(n, n) for n in table.column_names]
    # A renamed column replaces any existing column of the target name.
    keep = [i for i, n in enumerate(table.column_names) if n in rename or names[i] not in rename.values()]
    table = table.select(keep)
    return table.rename_columns([rename.get(n, n) for n in table.column_names])


def _require(table: pa.Table, needed: tuple[str, ...], where: str, fmt: str) -> None:
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise InputError(
            f"{where}: missing column{'s' if len(missing) > 1 else ''} {', '.join(repr(c) for c in missing)} "
            f"for format {fmt!r} (columns found: {_names(table)})"
        )


def column_to_numpy(col: pa.ChunkedArray) -> np.ndarray:
    """A column as one numpy array: zero-copy for numbers without nulls, NaN for null
    numbers, object arrays for text (kept only because sources carry labels)."""
    typ = col.type
    if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ):
        if col.null_count == 0:
            return col.to_numpy()
        return pc.cast(col, pa.float64()).to_numpy()
    return col.to_numpy(zero_copy_only=False)


def _token_column(col: pa.ChunkedArray, where: str, what: str) -> np.ndarray:
    values = numeric_column(col, where, what, keep_int=True)
    if values.size and values.min() < 0:
        row = first_bad_row(values < 0)
        raise InputError(f"{where}: row {row}: negative {what} {values[row - 1]:g}")
    if values.dtype.kind == "f" and np.array_equal(values, np.floor(values)):
        return values.astype(np.int64)
    return values


def _finish(ts: np.ndarray, columns: dict[str, np.ndarray], name: str, origin, where: str, meta: dict) -> Trace:
    """Sort (stably, warning how many rows were out of order) and shift t=0 to the first row."""
    sorted_ = ts.size < 2 or bool(np.all(ts[1:] >= ts[:-1]))
    if not sorted_:
        # Rows earlier than some row above them: the ones a stable sort has to move.
        out_of_order = int(np.count_nonzero(ts < np.maximum.accumulate(ts)))
        log.warning("%s: %d row%s out of order; sorted by timestamp", where, out_of_order,
                    " was" if out_of_order == 1 else "s were")
        order = np.argsort(ts, kind="stable")
        ts = ts[order]
        columns = {k: v[order] for k, v in columns.items()}
    if ts.size and ts[0] != 0:
        shift = ts[0]
        ts = ts - shift
        if origin is not None:
            import pandas as pd

            origin = origin + pd.Timedelta(seconds=float(shift))
    return Trace(ts, columns, name, origin, meta)


# --------------------------------------------------------------------------- formats


def read_requests(table: pa.Table, opts: ReadOptions, where: str, name: str, fmt: str = "requests") -> Trace:
    """Generic per-request rows (see the module docstring)."""
    table = _apply_mapping(table, opts.columns, where)
    _require(table, ("timestamp",), where, fmt)
    if table.num_rows == 0:
        raise InputError(f"{where}: the trace has no rows")
    unit = opts.time_unit
    ts, origin = to_seconds(table.column("timestamp"), unit, f"{where}: column 'timestamp'")
    columns: dict[str, np.ndarray] = {}
    for col_name in table.column_names:
        if col_name == "timestamp":
            continue
        col = table.column(col_name)
        col_where = f"{where}: column {col_name!r}"
        if col_name == "service_time":
            from simtune.trace.io import validate_service_times

            factor = TIME_UNITS.get(opts.service_time_unit)
            if factor is None:
                raise InputError(f"{where}: unknown service-time unit {opts.service_time_unit!r} (use s, ms, us or ns)")
            values = validate_service_times(col, col_where)
            columns["service_time"] = values * factor if factor != 1.0 else values
        elif col_name in ("input_tokens", "output_tokens"):
            columns[col_name] = _token_column(col, col_where, col_name.replace("_", " "))
        else:
            columns[col_name] = column_to_numpy(col)
    meta = {"source_format": fmt}
    return _finish(ts, columns, name, origin, where, meta)


def read_azure_llm_2023(table: pa.Table, opts: ReadOptions, where: str, name: str) -> Trace:
    mapping = {"timestamp": "TIMESTAMP", "input_tokens": "ContextTokens", "output_tokens": "GeneratedTokens"}
    _require(table, tuple(v for k, v in mapping.items() if k not in opts.columns), where, "azure-llm-2023")
    unit = "iso" if opts.time_unit == "auto" else opts.time_unit
    o = ReadOptions({**mapping, **opts.columns}, unit, opts.service_time_unit)
    return read_requests(table, o, where, name, "azure-llm-2023")


def read_mooncake(table: pa.Table, opts: ReadOptions, where: str, name: str) -> Trace:
    mapping = {"timestamp": "timestamp", "input_tokens": "input_length", "output_tokens": "output_length"}
    _require(table, tuple(v for k, v in mapping.items() if k not in opts.columns), where, "mooncake")
    unit = "ms" if opts.time_unit == "auto" else opts.time_unit
    o = ReadOptions({**mapping, **opts.columns}, unit, opts.service_time_unit)
    return read_requests(table, o, where, name, "mooncake")


_MINUTE_LABEL = re.compile(r"^\d+$")


def read_azure_functions(table: pa.Table, opts: ReadOptions, where: str, name: str) -> CountTrace:
    """Per-minute counts, wide (one column per minute) or long (`minute`, `count`)."""
    table = _apply_mapping(table, opts.columns, where)
    minute_cols = [c for c in table.column_names if _MINUTE_LABEL.match(c)]
    if minute_cols and "count" not in table.column_names:
        return _azure_functions_wide(table, minute_cols, where, name)
    _require(table, ("minute", "count"), where, "azure-functions")
    minute = numeric_column(table.column("minute"), f"{where}: column 'minute'", "minute")
    counts = validate_counts(numeric_column(table.column("count"), f"{where}: column 'count'", "count"), f"{where}: column 'count'")
    extra = {
        c: column_to_numpy(table.column(c))
        for c in table.column_names
        if c not in ("minute", "count", "minute_of_day", "active_functions")
    }
    first = float(minute.min()) if minute.size else 0.0
    meta = {"source_format": "azure-functions", "bin_width_s": 60.0}
    if "minute_of_day" in table.column_names and table.num_rows:
        meta["first_minute_of_day"] = int(numeric_column(table.column("minute_of_day"), where, "minute_of_day").min())
    return CountTrace((minute - first) * 60.0, 60.0, counts, extra, name, None, meta)


def _azure_functions_wide(table: pa.Table, minute_cols: list[str], where: str, name: str) -> CountTrace:
    """The dataset's own layout: one row per function, one column per minute label."""
    if table.num_rows == 0:
        raise InputError(f"{where}: the trace has no rows")
    labels = np.array([int(c) for c in minute_cols])
    matrix = np.column_stack(
        [
            validate_counts(numeric_column(table.column(c), f"{where}: column {c!r}", "count"), f"{where}: column {c!r}")
            for c in minute_cols
        ]
    )
    func_row, minute_idx = np.nonzero(matrix)
    counts = matrix[func_row, minute_idx]
    order = np.lexsort((func_row, labels[minute_idx]))
    func_row, minute_idx, counts = func_row[order], minute_idx[order], counts[order]
    renames = {"HashFunction": "function", "HashApp": "app", "HashOwner": "owner", "Trigger": "trigger"}
    extra = {
        renames.get(c, c): column_to_numpy(table.column(c))[func_row]
        for c in table.column_names
        if c not in minute_cols
    }
    first = int(labels.min())
    meta = {
        "source_format": "azure-functions",
        "bin_width_s": 60.0,
        "first_minute_of_day": first,
        "span_s": float((labels.max() - first + 1) * 60),
    }
    return CountTrace((labels[minute_idx] - first) * 60.0, 60.0, counts, extra, name, None, meta)


def read_servegen(table: pa.Table, opts: ReadOptions, where: str, name: str) -> CountTrace:
    table = _apply_mapping(table, opts.columns, where)
    _require(table, ("window_start_s", "count"), where, "servegen")
    o = ReadOptions({"bin_start": "window_start_s"}, "s" if opts.time_unit == "auto" else opts.time_unit, bin_width=opts.bin_width)
    if "window_s" in table.column_names:
        o.columns["bin_width"] = "window_s"
    ct = read_counts(table, o, where, name, "servegen")
    return ct


def read_counts(table: pa.Table, opts: ReadOptions, where: str, name: str, fmt: str = "counts") -> CountTrace:
    """Generic count trace: `bin_start`, `count`, optional `bin_width` (see module doc)."""
    table = _apply_mapping(table, opts.columns, where)
    _require(table, ("bin_start", "count"), where, fmt)
    if table.num_rows == 0:
        raise InputError(f"{where}: the trace has no rows")
    starts, origin = to_seconds(table.column("bin_start"), opts.time_unit, f"{where}: column 'bin_start'", "bin start")
    counts = validate_counts(
        numeric_column(table.column("count"), f"{where}: column 'count'", "count"), f"{where}: column 'count'"
    )
    if "bin_width" in table.column_names:
        widths = numeric_column(table.column("bin_width"), f"{where}: column 'bin_width'", "bin width")
        factor = TIME_UNITS.get(opts.time_unit, 1.0)
        widths = widths * factor
    elif opts.bin_width is not None:
        widths = np.full(starts.size, float(opts.bin_width))
    else:
        steps = np.diff(np.unique(starts))
        if steps.size == 0:
            raise InputError(f"{where}: cannot infer the bin width from one bin; give it explicitly")
        vals, freq = np.unique(np.round(steps, 9), return_counts=True)
        widths = np.full(starts.size, float(vals[np.argmax(freq)]))
    bad = ~(widths > 0)
    if bad.any():
        raise InputError(f"{where}: row {first_bad_row(bad)}: bin width must be > 0")
    drop = {"bin_start", "count", "bin_width", "active_clients", "active_functions"}
    extra = {c: column_to_numpy(table.column(c)) for c in table.column_names if c not in drop}
    order = np.argsort(starts, kind="stable")
    if np.any(np.diff(order) < 0):
        starts, widths, counts = starts[order], widths[order], counts[order]
        extra = {k: v[order] for k, v in extra.items()}
    meta = {"source_format": fmt, "bin_width_s": float(np.median(widths))}
    return CountTrace(starts, widths, counts, extra, name, origin, meta)


Reader = Callable[[pa.Table, ReadOptions, str, str], AnyTrace]

FORMATS: dict[str, tuple[Reader, str]] = {
    "requests": (read_requests, "one row per request with a timestamp column (also simtune's canonical Parquet)"),
    "azure-llm-2023": (read_azure_llm_2023, "Azure LLM inference 2023: TIMESTAMP, ContextTokens, GeneratedTokens"),
    "mooncake": (read_mooncake, "Mooncake JSON lines: timestamp (ms), input_length, output_length"),
    "azure-functions": (read_azure_functions, "Azure Functions 2019 per-minute counts (wide or long)"),
    "servegen": (read_servegen, "ServeGen-style windows: window_start_s, window_s, count"),
    "counts": (read_counts, "generic count trace: bin_start, count[, bin_width]"),
}
FORMAT_NAMES = ("auto", *FORMATS)


def detect_format(names: list[str], mapping: Optional[dict[str, str]] = None) -> Optional[str]:
    """The one format whose signature columns are present, or None.

    Order matters where signatures overlap: Mooncake's `timestamp` + `input_length`
    is more specific than a generic `timestamp` column; a `count` column without
    `timestamp` marks a count trace.
    """
    cols = set(names)
    mapping = mapping or {}
    if {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} <= cols:
        return "azure-llm-2023"
    if {"timestamp", "input_length", "output_length"} <= cols:
        return "mooncake"
    if "timestamp" in cols or "timestamp" in mapping:
        return "requests"
    if {"window_start_s", "count"} <= cols:
        return "servegen"
    if {"minute", "count"} <= cols or ({"HashFunction", "Trigger"} <= cols and any(_MINUTE_LABEL.match(c) for c in cols)):
        return "azure-functions"
    if ("bin_start" in cols or "bin_start" in mapping) and ("count" in cols or "count" in mapping):
        return "counts"
    return None


def read_trace(
    path: str | Path,
    *,
    format: str = "auto",
    columns: Optional[dict[str, str]] = None,
    time_unit: str = "auto",
    service_time_unit: str = "s",
    bin_width: Optional[float] = None,
    container: Optional[str] = None,
) -> AnyTrace:
    """Read a file as a per-request `Trace` or a `CountTrace` (not expanded)."""
    path = Path(path)
    where = str(path)
    if format not in FORMAT_NAMES:
        raise InputError(f"{where}: unknown trace format {format!r} (expected one of {', '.join(FORMAT_NAMES)})")
    table = read_table(path, container)
    opts = ReadOptions(dict(columns or {}), time_unit, service_time_unit, bin_width)
    if format == "auto":
        format = detect_format(table.column_names, opts.columns) or ""
        if not format:
            raise InputError(
                f"{where}: cannot tell the trace format (columns found: {_names(table)}); "
                f"pass a format ({', '.join(FORMATS)}) or map a column, e.g. timestamp=NAME"
            )
    reader = FORMATS[format][0]
    name = path.name.split(".")[0] or path.stem
    trace = reader(table, opts, where, name)
    _restore_parquet_meta(table, trace)
    trace.meta.setdefault("source", where)  # the first file it came from, kept through conversions
    trace.meta["path"] = where
    return trace


def _restore_parquet_meta(table: pa.Table, trace: AnyTrace) -> None:
    """Origin and provenance written by `save_trace` into the Parquet schema metadata."""
    meta = table.schema.metadata or {}
    if b"simtune.meta" in meta:
        try:
            saved = json.loads(meta[b"simtune.meta"].decode())
        except (ValueError, UnicodeDecodeError):
            saved = {}
        trace.meta = {**saved, **{k: v for k, v in trace.meta.items() if k != "source_format"}}
    if b"simtune.origin" in meta and trace.origin is None:
        import pandas as pd

        try:
            trace.origin = pd.Timestamp(meta[b"simtune.origin"].decode())
        except ValueError:
            pass
    if b"simtune.name" in meta:
        trace.name = meta[b"simtune.name"].decode()
    first = trace.meta.pop("first_arrival_s", 0.0) if isinstance(trace, Trace) else 0.0
    if first:
        # save_trace keeps the clock of traces whose first request is not at t=0
        # (count expansions, generators, windows); put it back.
        trace.timestamps = trace.timestamps + float(first)
