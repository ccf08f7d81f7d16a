"""Parsing the small strings users type for traces: durations, column maps, lists.

Why here and not in the CLI: the same strings appear in config files and notebooks,
and every parse error must be the same one-line InputError wherever it comes from.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from simtune.errors import InputError
from simtune.trace.generators import Spike

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*(ms|s|m|min|h|d)?\s*$", re.IGNORECASE)
_UNIT_S = {None: 1.0, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | float, what: str = "duration") -> float:
    """Seconds from `90`, `90s`, `15m`, `1.5h`, `14d`, `250ms`."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = _DURATION.match(str(text))
        if not m:
            raise InputError(f"{what} {text!r}: expected a number of seconds or e.g. 90s, 15m, 2h, 3d")
        value = float(m.group(1)) * _UNIT_S[m.group(2).lower() if m.group(2) else None]
    if not math.isfinite(value) or value < 0:
        raise InputError(f"{what} {text!r}: must be >= 0")
    return value


def parse_mapping(items: Optional[Iterable[str]], what: str = "--column") -> dict[str, str]:
    """`["timestamp=TIMESTAMP", "input_tokens=ContextTokens"]` -> dict."""
    out: dict[str, str] = {}
    for item in items or ():
        for part in filter(None, (p.strip() for p in item.split(","))):
            key, sep, value = part.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise InputError(f"{what} {part!r}: expected NAME=SOURCE_COLUMN, e.g. timestamp=TIMESTAMP")
            out[key.strip()] = value.strip()
    return out


def parse_floats(text: str, what: str, n: Optional[int] = None) -> list[float]:
    """Comma/space separated numbers, or a file with one number per line or comma separated."""
    body = Path(text).read_text() if Path(text).is_file() else text
    parts = [p for p in re.split(r"[,\s]+", body.strip()) if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise InputError(f"{what}: expected numbers separated by commas, got {text!r}") from None
    if n is not None and len(values) != n:
        raise InputError(f"{what}: expected {n} values, got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"{what}: values must be finite")
    return values


def parse_step(text: str) -> tuple[float, float]:
    """`START:RATE`, e.g. `10m:50` (from minute 10, 50 req/s)."""
    start, sep, rate = text.partition(":")
    if not sep:
        raise InputError(f"--step {text!r}: expected START:RATE, e.g. 10m:50")
    try:
        return parse_duration(start, "--step start"), float(rate)
    except ValueError:
        raise InputError(f"--step {text!r}: rate must be a number") from None


def parse_spike(text: str) -> Spike:
    """`AT:FACTOR:DURATION[:RAMP]`, e.g. `30m:10:2m:20s` (10x for 2 min, 20-s ramps)."""
    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise InputError(f"--spike {text!r}: expected AT:FACTOR:DURATION[:RAMP], e.g. 30m:10:2m")
    try:
        factor = float(parts[1])
    except ValueError:
        raise InputError(f"--spike {text!r}: factor must be a number") from None
    ramp = parse_duration(parts[3], "--spike ramp") if len(parts) == 4 else 0.0
    return Spike(parse_duration(parts[0], "--spike time"), factor, parse_duration(parts[2], "--spike duration"), ramp)


def read_rate_curve(path: str | Path, columns: Optional[dict[str, str]] = None) -> tuple[np.ndarray, np.ndarray]:
    """(time s, rate req/s) from a CSV/Parquet/JSON-lines file with `time` and `rate`
    columns (rename with `columns`, e.g. {"time": "minute_start"}); times may be
    datetimes, and are measured from the first row."""
    from simtune.trace.containers import read_table
    from simtune.trace.readers import _apply_mapping, _require
    from simtune.trace.timeparse import numeric_column, to_seconds

    where = str(path)
    table = _apply_mapping(read_table(path), dict(columns or {}), where)
    _require(table, ("time", "rate"), where, "rate curve")
    times, _ = to_seconds(table.column("time"), "auto", f"{where}: column 'time'", "time")
    rates = numeric_column(table.column("rate"), f"{where}: column 'rate'", "rate")
    order = np.argsort(times, kind="stable")
    return times[order], rates[order]
