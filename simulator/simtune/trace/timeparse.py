"""Time columns to float64 seconds: numbers in s/ms/us/ns, or ISO-8601 datetimes.

Why integers are rebased before the float conversion: epoch nanoseconds (~1.7e18)
do not fit a float64's 53-bit mantissa, so `float(ns) * 1e-9` would lose sub-µs
precision; subtracting the first value in int64 first keeps it exact.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from simtune.errors import InputError

TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "min": 60.0, "h": 3600.0}
DATETIME_UNITS = ("iso", "datetime")
ALL_TIME_UNITS = ("auto", *TIME_UNITS, *DATETIME_UNITS)


def first_bad_row(mask: np.ndarray) -> int:
    """1-based data row of the first True in `mask`."""
    return int(np.flatnonzero(mask)[0]) + 1


def _is_numeric(typ: pa.DataType) -> bool:
    return pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ)


def _is_text(typ: pa.DataType) -> bool:
    return pa.types.is_string(typ) or pa.types.is_large_string(typ)


def _check_nulls(col: pa.ChunkedArray, where: str, what: str) -> None:
    if col.null_count:
        mask = np.asarray(pc.is_null(col).to_numpy(zero_copy_only=False))
        raise InputError(f"{where}: row {first_bad_row(mask)}: missing {what}")


def numeric_column(col: pa.ChunkedArray, where: str, what: str, keep_int: bool = False) -> np.ndarray:
    """Finite float64 values of a numeric (or numeric-text) column, else an InputError.

    With `keep_int`, integer columns come back as they are (zero-copy where Arrow
    allows). Validity is checked with min/max reductions first, so the common clean
    case allocates no masks; the mask is built only to name the first bad row.
    """
    _check_nulls(col, where, what)
    if pa.types.is_integer(col.type):
        values = col.to_numpy()
        return values if keep_int else values.astype(np.float64)
    if _is_numeric(col.type):
        values = np.asarray(col.to_numpy(), dtype=np.float64)
    elif _is_text(col.type):
        raw = pd.Series(col.to_pandas())
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        bad = np.isnan(values)
        if bad.any():
            row = first_bad_row(bad)
            raise InputError(f"{where}: row {row}: {what} {raw.iloc[row - 1]!r} is not a number")
    else:
        raise InputError(f"{where}: {what} column has type {col.type}, expected numbers")
    if values.size and not (np.isfinite(values.min()) and np.isfinite(values.max())):
        raise InputError(f"{where}: row {first_bad_row(~np.isfinite(values))}: {what} is NaN or infinite")
    return values


def to_seconds(
    col: pa.ChunkedArray, unit: str, where: str, what: str = "timestamp"
) -> tuple[np.ndarray, Optional[pd.Timestamp]]:
    """Seconds relative to the smallest value, plus the absolute origin for datetimes.

    `unit`: `s`, `ms`, `us`, `ns`, `min`, `h` for numbers; `iso`/`datetime` for
    datetimes (typed or ISO-8601 text); `auto` takes numbers as seconds and anything
    else as datetimes.
    """
    if unit not in ALL_TIME_UNITS:
        raise InputError(f"{where}: unknown time unit {unit!r} (expected one of {', '.join(ALL_TIME_UNITS)})")
    if isinstance(col, pa.Array):
        col = pa.chunked_array([col])
    if len(col) == 0:
        return np.empty(0, dtype=np.float64), None
    typ = col.type
    is_dt = pa.types.is_timestamp(typ) or pa.types.is_date(typ)
    if unit in TIME_UNITS:
        if is_dt:
            raise InputError(f"{where}: {what} holds datetimes but the unit is {unit!r}; use unit 'iso'")
        if pa.types.is_integer(typ):
            _check_nulls(col, where, what)
            ints = np.asarray(col.to_numpy(), dtype=np.int64)
            return (ints - ints.min()).astype(np.float64) * TIME_UNITS[unit], None
        try:
            values = numeric_column(col, where, what)
        except InputError as exc:
            if _is_text(typ):
                raise InputError(f"{exc} (unit {unit!r}; use unit 'iso' for datetimes)") from None
            raise
        lo = values.min()
        if values.flags.writeable:  # a fresh copy (e.g. from several Arrow chunks): reuse it
            values -= lo
        else:  # a read-only zero-copy view of Arrow memory
            values = values - lo
        if TIME_UNITS[unit] != 1.0:
            values *= TIME_UNITS[unit]
        return values, None
    if unit == "auto" and (_is_numeric(typ) or (_is_text(typ) and _all_numeric_text(col))):
        return to_seconds(col, "s", where, what)
    if unit == "auto" and _is_text(typ):
        _reject_mostly_numeric_text(col, where, what)
    return _datetimes_to_seconds(col, where, what)


def _reject_mostly_numeric_text(col: pa.ChunkedArray, where: str, what: str) -> None:
    """A column of mostly numbers with a few bad cells: name the first bad row, not row 1."""
    raw = pd.Series(col.to_pandas())
    numeric = pd.to_numeric(raw, errors="coerce")
    if numeric.notna().sum() * 2 >= len(raw):
        row = first_bad_row(numeric.isna().to_numpy())
        raise InputError(f"{where}: row {row}: {what} {raw.iloc[row - 1]!r} is not a number")


def _all_numeric_text(col: pa.ChunkedArray) -> bool:
    if col.null_count:
        return False
    return bool(pd.to_numeric(pd.Series(col.to_pandas()), errors="coerce").notna().all())


def _datetimes_to_seconds(col: pa.ChunkedArray, where: str, what: str) -> tuple[np.ndarray, pd.Timestamp]:
    typ = col.type
    _check_nulls(col, where, what)
    if pa.types.is_date(typ):
        series = pd.Series(pc.cast(col, pa.timestamp("ns")).to_pandas())
    elif pa.types.is_timestamp(typ):
        series = pd.Series(col.to_pandas())
    elif _is_text(typ):
        raw = pd.Series(col.to_pandas())
        try:
            series = pd.to_datetime(raw, errors="coerce", format="ISO8601")
        except (ValueError, TypeError):  # mixed time zones: put everything on UTC
            series = pd.to_datetime(raw, errors="coerce", format="ISO8601", utc=True)
        bad = series.isna().to_numpy()
        if bad.any():
            row = first_bad_row(bad)
            raise InputError(
                f"{where}: row {row}: cannot parse {what} {raw.iloc[row - 1]!r} "
                "(expected ISO-8601 like 2023-11-16 18:15:46.68, or numbers with a unit)"
            )
    else:
        raise InputError(f"{where}: {what} column has type {typ}, expected numbers or ISO-8601 datetimes")
    tz = series.dt.tz
    naive = series.dt.tz_convert("UTC").dt.tz_localize(None) if tz is not None else series
    ints = naive.dt.as_unit("ns").to_numpy().view(np.int64)
    first = int(ints.min())
    origin = pd.Timestamp(first, unit="ns")
    if tz is not None:
        origin = origin.tz_localize("UTC").tz_convert(tz)
    return (ints - first).astype(np.float64) * 1e-9, origin
