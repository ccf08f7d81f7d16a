"""Model ids per request, for Ray Serve model multiplexing (`@serve.multiplexed`).

Why: with multiplexing every request names the model it needs; a replica that already
holds it answers at once, any other replica first loads it (and may evict another). How
often that happens depends on how skewed the model popularity is, so a synthetic trace
needs a model id per request. Real popularity is usually heavy-tailed; a truncated Zipf
law P(k) ∝ 1/(k+1)^s over k = 0..n_models-1 (model 0 the most popular) is the standard
stand-in: s = 0 is uniform, s ≈ 1 is typical, larger s is more skewed.

- `zipf_probabilities(n_models, s)`: the probability vector.
- `assign_model_ids(trace, n_models, zipf_s, seed)`: a new Trace with an int64 column of
  i.i.d. Zipf draws, seeded (`numpy.random.default_rng([seed, _STREAM])`), so the same
  seed gives the same ids whatever else is drawn from `seed` for the same trace.
- `model_id_codes(trace, column)`: a trace read from a file may carry model ids as text
  (object arrays, see `simtune.trace.readers.column_to_numpy`) or as numbers; this maps
  any column to dense int64 codes 0..m-1 (in order of first appearance) plus the names.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from simtune.errors import InputError
from simtune.trace.model import Trace

# Second word of the RNG seed: keeps the model-id stream independent of other draws
# (arrivals, service times) that use `default_rng(seed)` with the same integer seed.
_STREAM = 0x6D6F64656C  # "model"


def _check(n_models, s) -> tuple[int, float]:
    try:
        n_ok = int(n_models) == n_models and int(n_models) >= 1
    except (TypeError, ValueError, OverflowError):
        n_ok = False
    if not n_ok:
        raise InputError(f"n_models must be an integer >= 1, got {n_models!r}")
    try:
        s_f = float(s)
    except (TypeError, ValueError):
        s_f = float("nan")
    if not (math.isfinite(s_f) and s_f >= 0):
        raise InputError(f"zipf_s must be a finite number >= 0, got {s!r}")
    return int(n_models), s_f


def zipf_probabilities(n_models: int, s: float = 1.0) -> np.ndarray:
    """P(k) = (k+1)^-s / sum_j (j+1)^-s for k = 0..n_models-1 (float64, sums to 1)."""
    n, s_f = _check(n_models, s)
    w = np.arange(1, n + 1, dtype=np.float64) ** (-s_f)
    return w / w.sum()


def assign_model_ids(
    trace: Trace,
    n_models: int,
    zipf_s: float = 1.0,
    seed: int = 0,
    column: str = "model_id",
) -> Trace:
    """A copy of `trace` with `column` = i.i.d. truncated-Zipf model ids (int64, 0..n-1).

    The draw is `default_rng([seed, _STREAM]).choice(n, size=len(trace), p=...)`, so it is
    reproducible from `seed` alone. The parameters are recorded in `meta['model_ids']`.
    """
    p = zipf_probabilities(n_models, zipf_s)
    try:
        seed_i = int(seed)
    except (TypeError, ValueError):
        raise InputError(f"seed must be an integer, got {seed!r}") from None
    if seed_i < 0:
        raise InputError(f"seed must be >= 0, got {seed!r}")
    rng = np.random.default_rng([seed_i, _STREAM])
    ids = rng.choice(p.size, size=len(trace), p=p).astype(np.int64)
    out = trace.with_column(column, ids)
    out.meta["model_ids"] = {"column": column, "n_models": int(p.size), "zipf_s": float(zipf_s), "seed": seed_i}
    return out


def model_id_codes(trace: Trace, column: str = "model_id") -> tuple[np.ndarray, list]:
    """Dense int64 codes (0..m-1, first appearance order) and the original names.

    Works for text (object) and numeric columns alike (`pandas.factorize`). Missing values
    (None/NaN) are an error: a multiplexed request always names a model.
    """
    if column not in trace.columns:
        have = ", ".join(sorted(trace.columns)) or "none"
        raise InputError(f"trace {trace.name!r} has no {column!r} column (columns: {have})")
    codes, uniques = pd.factorize(pd.Series(trace.columns[column]), sort=False, use_na_sentinel=True)
    codes = np.asarray(codes, dtype=np.int64)
    if codes.size and codes.min() < 0:
        row = int(np.argmax(codes < 0)) + 1
        raise InputError(f"trace {trace.name!r}: column {column!r}: row {row}: missing model id")
    return codes, list(np.asarray(uniques).tolist())
