"""Service-time distributions for traces that carry no `service_time` column.

Spec strings (the `--service-time` option):
  const:0.05                      every request takes 50 ms
  exp:0.05  (or exponential:mean=0.05)
  lognormal:mean=0.05,p99=0.4     lognormal fitted to a mean and a 99th percentile
  empirical:FILE[:COLUMN]         resample (with replacement) a column of a CSV/Parquet
                                  file (default column `service_time`)
All draws come from a numpy Generator seeded by the caller, so runs are reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.stats import norm

from simtune.errors import InputError

_Z99 = float(norm.ppf(0.99))


@dataclass(frozen=True)
class ServiceTimeDist:
    """A named distribution that draws n service times from a Generator."""

    spec: str
    mean: float
    _draw: Callable[[np.random.Generator, int], np.ndarray]

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.ascontiguousarray(self._draw(rng, n), dtype=np.float64)


def _kv(body: str, spec: str, positional: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in body.split(","))):
        key, sep, val = part.partition("=")
        if not sep:
            key, val = positional, part
        try:
            out[key.strip()] = float(val)
        except ValueError:
            raise InputError(f"--service-time {spec!r}: {key.strip()} must be a number, got {val!r}") from None
    return out


def parse_service_time(spec: str) -> ServiceTimeDist:
    """Parse a `--service-time` spec; raises InputError naming what is wrong."""
    kind, _, body = spec.partition(":")
    kind = kind.strip().lower()
    if kind in ("const", "constant", "fixed"):
        v = _kv(body, spec, "value").get("value")
        if v is None or not math.isfinite(v) or v < 0:
            raise InputError(f"--service-time {spec!r}: constant needs a value >= 0, e.g. const:0.05")
        return ServiceTimeDist(spec, v, lambda rng, n: np.full(n, v))
    if kind in ("exp", "exponential"):
        mean = _kv(body, spec, "mean").get("mean")
        if mean is None or not mean > 0:
            raise InputError(f"--service-time {spec!r}: exponential needs mean > 0, e.g. exp:0.05")
        return ServiceTimeDist(spec, mean, lambda rng, n: rng.exponential(mean, n))
    if kind in ("lognormal", "lognorm"):
        kv = _kv(body, spec, "mean")
        mean, p99 = kv.get("mean"), kv.get("p99")
        if mean is None or p99 is None or not mean > 0 or not p99 > 0:
            raise InputError(f"--service-time {spec!r}: lognormal needs mean>0 and p99>0, e.g. lognormal:mean=0.05,p99=0.4")
        ratio = math.log(p99 / mean)
        disc = _Z99 * _Z99 - 2.0 * ratio
        if ratio <= 0 or disc < 0:
            raise InputError(
                f"--service-time {spec!r}: no lognormal has that mean and p99 "
                f"(need mean < p99 <= {math.exp(_Z99 * _Z99 / 2):.1f} x mean)"
            )
        sigma = _Z99 - math.sqrt(disc)
        mu = math.log(mean) - sigma * sigma / 2.0
        return ServiceTimeDist(spec, mean, lambda rng, n: rng.lognormal(mu, sigma, n))
    if kind == "empirical":
        file, _, column = body.partition(":") if not Path(body).exists() else (body, "", "")
        column = column or "service_time"
        from simtune.trace.io import _read_table, validate_service_times

        table = _read_table(Path(file))
        if column not in table.column_names:
            raise InputError(f"{file}: missing column {column!r} (columns found: {', '.join(table.column_names)})")
        values = validate_service_times(table.column(column), f"{file}: column {column!r}")
        if values.size == 0:
            raise InputError(f"{file}: no service times to resample")
        return ServiceTimeDist(spec, float(values.mean()), lambda rng, n: rng.choice(values, n, replace=True))
    raise InputError(
        f"--service-time {spec!r}: unknown distribution {kind!r} (use const, exp, lognormal or empirical)"
    )
