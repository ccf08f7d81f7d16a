"""Fit service models from measured requests.

Concurrency curve. The model says: while n requests are in flight on a replica, each
progresses at rate r(n) = L(1)/L(n) through its work S (its latency alone). So for every
measured request i, with tau[i, n] the time it spent while exactly n requests were in
flight on its replica (from handler start/end times),

    sum_n tau[i, n] r(n) = S_i.

With S_i known (a validate log: the trace's service_time) this is linear in r; with
every request doing the same unknown work S (a profile run), fix r(1) = 1 and solve for
r(2..N) and S. Least squares over all requests, then L(n) = S / r(n). Concurrency levels
observed for less than `min_time_s` in total are left out (interpolated by the model).

Batch latency: every item reports its batch's size and start/end; one row per batch,
then a least-squares affine fit duration = base_s + per_item_s x size (and the mean
duration per size, as a table).

Overhead: the client-side latency minus the handler's time at concurrency 1 is the
request path's own time (proxy + router + network): SimParams.proxy_overhead_s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pandas as pd

from simtune.errors import InputError
from simtune.service_models import BatchModel, ConcurrencyCurveModel


@dataclass
class CurveFit:
    model: ConcurrencyCurveModel
    time_at: dict[int, float]  # seconds observed at each concurrency
    rate: dict[int, float]  # fitted r(n)
    work_s: float  # S (constant work) or the mean alone-latency of the S_i
    residual_rel: float  # RMS of (fitted S_i - S_i) / S_i
    n_requests: int
    info: dict = field(default_factory=dict)


def concurrency_exposure(start: np.ndarray, end: np.ndarray, group: Optional[np.ndarray] = None) -> np.ndarray:
    """tau[i, n]: seconds request i spent while n requests (of its group) were in flight."""
    start = np.asarray(start, float)
    end = np.asarray(end, float)
    n = start.size
    group = np.zeros(n, dtype=np.int64) if group is None else pd.factorize(np.asarray(group))[0]
    cols: list[dict[int, float]] = [dict() for _ in range(n)]
    nmax = 1
    for g in np.unique(group):
        idx = np.flatnonzero(group == g)
        times = np.concatenate([start[idx], end[idx]])
        kinds = np.concatenate([np.ones(idx.size, dtype=np.int8), -np.ones(idx.size, dtype=np.int8)])
        who = np.concatenate([idx, idx])
        # ends before starts at equal times
        order = np.lexsort((kinds, times))
        active: set[int] = set()
        last = None
        for k in order:
            t = times[k]
            if last is not None and active and t > last:
                dt = t - last
                c = len(active)
                nmax = max(nmax, c)
                for i in active:
                    cols[i][c] = cols[i].get(c, 0.0) + dt
            last = t
            if kinds[k] > 0:
                active.add(int(who[k]))
            else:
                active.discard(int(who[k]))
    tau = np.zeros((n, nmax + 1))
    for i, d in enumerate(cols):
        for c, v in d.items():
            tau[i, c] = v
    return tau


def _monotone_latency(ns: list[int], lat: list[float]) -> list[float]:
    """Non-decreasing latency (cumulative max), as the model file requires."""
    out, m = [], 0.0
    for v in lat:
        m = max(m, v)
        out.append(m)
    return out


def fit_concurrency(start: np.ndarray, end: np.ndarray, *, group: Optional[np.ndarray] = None,
                    work: Optional[np.ndarray] = None, use: Optional[np.ndarray] = None,
                    min_time_s: float = 1.0, meta: Optional[dict] = None) -> CurveFit:
    """Fit a ConcurrencyCurveModel from handler intervals (see the module docstring).

    start/end: handler start/end per request (seconds); group: replica per request;
    work: each request's work S_i (None: all equal and unknown); use: mask of requests
    whose equations enter the fit (all of them still count for the concurrency)."""
    start = np.asarray(start, float)
    end = np.asarray(end, float)
    ok = np.isfinite(start) & np.isfinite(end) & (end >= start)
    if ok.sum() < 5:
        raise InputError(f"need handler start/end times for at least 5 requests to fit a curve, got {int(ok.sum())}")
    grp = None if group is None else np.asarray(group)[ok]
    tau = concurrency_exposure(start[ok], end[ok], grp)
    use = np.ones(start.size, bool) if use is None else np.asarray(use, bool)
    rows = use[ok]
    tau_u = tau[rows]
    time_at = tau_u.sum(axis=0)  # request-seconds at each n
    # seconds of wall time at n = request-seconds / n
    wall_at = {n: float(time_at[n] / n) for n in range(1, tau.shape[1]) if time_at[n] > 0}
    keep = [n for n, t in wall_at.items() if t >= min_time_s]
    if 1 not in keep:
        keep = [1] + keep
    nmax = tau.shape[1] - 1
    # Concurrency levels left out: their exposure goes to the nearest kept level.
    col_of = np.array([min(keep, key=lambda k: (abs(k - n), k)) for n in range(nmax + 1)])
    A = np.zeros((tau_u.shape[0], len(keep)))
    for n in range(1, nmax + 1):
        A[:, keep.index(col_of[n])] += tau_u[:, n]
    if work is None:
        # r(1) = 1, unknowns: r(keep[1:]) and S.  A[:,0] + A[:,1:] r = S
        M = np.hstack([A[:, 1:], -np.ones((A.shape[0], 1))])
        sol, *_ = np.linalg.lstsq(M, -A[:, 0], rcond=None)
        r = np.concatenate([[1.0], sol[:-1]])
        S = float(sol[-1])
        pred = A @ r
        target = np.full(A.shape[0], S)
        work_s = S
        scale = 1.0
    else:
        w = np.asarray(work, float)[ok][rows]
        r, *_ = np.linalg.lstsq(A, w, rcond=None)
        pred, target = A @ r, w
        scale = 1.0 / r[0] if r[0] > 0 else 1.0  # alone latency / service_time
        r = r / r[0]
        work_s = float(np.mean(w)) * scale
    if np.any(r <= 0):
        raise InputError("fit failed: a fitted rate is not positive (too few requests at some concurrency; "
                         "measure longer)")
    resid = float(np.sqrt(np.mean(((pred - target) / np.maximum(target, 1e-12)) ** 2)))
    lat = [float(work_s) / float(x) for x in r]
    lat = _monotone_latency(keep, lat)
    info = {"fit": "handler intervals, least squares on sum_n tau[i,n] r(n) = S_i",
            "requests": int(rows.sum()), "rms_rel_residual": round(resid, 4),
            "seconds_at_concurrency": {int(k): round(v, 2) for k, v in wall_at.items()},
            "rate": {int(k): round(float(x), 4) for k, x in zip(keep, r)}}
    if work is not None:
        info["work_scale"] = round(float(scale), 4)
    model = ConcurrencyCurveModel(concurrency=[int(k) for k in keep], latency_s=[round(x, 6) for x in lat],
                                  meta={**(meta or {}), **info})
    return CurveFit(model, {int(k): v for k, v in wall_at.items()}, {int(k): float(x) for k, x in zip(keep, r)},
                    float(work_s), resid, int(rows.sum()), info)


def fit_concurrency_client_side(levels: np.ndarray, latency: np.ndarray, overhead_s: float = 0.0,
                                meta: Optional[dict] = None) -> ConcurrencyCurveModel:
    """Without handler times: L(c) = mean client latency at closed-loop level c - overhead."""
    df = pd.DataFrame({"c": levels, "lat": latency})
    g = df.groupby("c")["lat"].mean().sort_index()
    ns = [int(c) for c in g.index]
    lat = _monotone_latency(ns, [max(float(v) - overhead_s, 1e-6) for v in g.values])
    lat = [float(x) for x in lat]
    return ConcurrencyCurveModel(concurrency=ns, latency_s=[round(x, 6) for x in lat],
                                 meta={**(meta or {}), "fit": "client-side mean latency per level minus overhead",
                                       "overhead_s": overhead_s})


def time_at_concurrency(start: np.ndarray, end: np.ndarray, t0: float, t1: float) -> np.ndarray:
    """Seconds in [t0, t1] during which exactly n of the intervals [start, end) were open."""
    start = np.asarray(start, float)
    end = np.asarray(end, float)
    m = np.isfinite(start) & np.isfinite(end) & (end > t0) & (start < t1)
    s, e = np.clip(start[m], t0, t1), np.clip(end[m], t0, t1)
    times = np.concatenate([[t0], s, e, [t1]])
    steps = np.concatenate([[0], np.ones(s.size, int), -np.ones(e.size, int), [0]])
    order = np.lexsort((steps, times))
    times, steps = times[order], steps[order]
    level = np.cumsum(steps)
    dt = np.diff(times)
    return np.bincount(level[:-1], weights=dt, minlength=1)


def estimate_parallelism(df: pd.DataFrame, quantile: float = 0.95) -> Optional[int]:
    """How many handlers really run at once at the highest closed-loop level: the
    `quantile` of the time-weighted number of open handler intervals. None if it reaches
    the level itself (everything in flight runs: processor sharing)."""
    d = df[(df["status"] == 200) & df["t_start"].notna()]
    if d.empty or "level" not in d or (d["level"] > 0).sum() == 0:
        return None
    top = int(d["level"].max())
    w = d[d["level"] == top]
    t0, t1 = float(w["sent"].min()), float(w["done"].max())
    occ = time_at_concurrency(d["t_start"].to_numpy(), d["t_end"].to_numpy(), t0, t1)
    if occ.sum() <= 0:
        return None
    k = int(np.searchsorted(np.cumsum(occ) / occ.sum(), quantile))
    return None if k >= top else max(k, 1)


def overhead_from(df: pd.DataFrame) -> Optional[float]:
    """Median client latency minus handler time, for requests alone on the replica."""
    if not {"t_start", "t_end", "sent", "done"} <= set(df.columns):
        return None
    d = df[(df["status"] == 200) & df["t_start"].notna()]
    if "level" in d and (d["level"] == 1).any():
        d = d[d["level"] == 1]
    if d.empty:
        return None
    return float(np.median((d["done"] - d["sent"]) - (d["t_end"] - d["t_start"])))


@dataclass
class BatchFit:
    model: BatchModel
    batches: pd.DataFrame  # one row per batch: size, duration
    info: dict = field(default_factory=dict)


def fit_batch(df: pd.DataFrame, *, max_batch_size: int, batch_wait_timeout_s: float, max_concurrent_batches: int,
              table: bool = False, meta: Optional[dict] = None) -> BatchFit:
    """Batch latency vs size from items' batch_size/batch_start/batch_end."""
    need = {"batch_size", "batch_start", "batch_end"}
    if not need <= set(df.columns) or df["batch_size"].notna().sum() == 0:
        raise InputError("the responses carry no batch_size/batch_start/batch_end: cannot fit a batch model "
                         "(return them from the batch handler, as simtune.profile.demo.BatchSleep does)")
    d = df[df["batch_size"].notna() & (df["status"] == 200)]
    key = ["replica", "batch_start"] if "replica" in d else ["batch_start"]
    b = d.groupby(key, dropna=False).agg(size=("batch_size", "first"), start=("batch_start", "first"),
                                         end=("batch_end", "first")).reset_index(drop=True)
    b["duration"] = b["end"] - b["start"]
    X = np.vstack([np.ones(len(b)), b["size"].to_numpy(float)]).T
    (base, per), *_ = np.linalg.lstsq(X, b["duration"].to_numpy(float), rcond=None)
    base, per = max(float(base), 0.0), max(float(per), 0.0)
    info = {"fit": "least squares duration = base_s + per_item_s x size over batches", "batches": int(len(b)),
            "sizes_seen": {int(k): int(v) for k, v in b["size"].value_counts().sort_index().items()}}
    if table:
        g = b.groupby("size")["duration"].mean().sort_index()
        lat = [float(x) for x in _monotone_latency(list(g.index), list(g.values))]
        model = BatchModel(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s,
                           max_concurrent_batches=max_concurrent_batches, batch_size=[int(x) for x in g.index],
                           latency_s=[round(x, 6) for x in lat], meta={**(meta or {}), **info})
    else:
        model = BatchModel(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s,
                           max_concurrent_batches=max_concurrent_batches, base_s=round(base, 6),
                           per_item_s=round(per, 6), meta={**(meta or {}), **info})
    return BatchFit(model, b, info)


def load_request_log(path: Any) -> pd.DataFrame:
    """Per-request log: a Parquet/CSV with handler_start/handler_end (or t_start/t_end),
    replica and optionally service_time, or a `simtune validate` fidelity.json."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        real = data.get("real") or data
        req = real.get("requests") if isinstance(real, dict) else None
        if req is None:
            raise InputError(f"{path}: no real.requests records (expected a simtune validate fidelity.json)")
        df = pd.DataFrame(req)
    elif path.suffix in (".parquet", ".pq"):
        df = pd.read_parquet(path)
    else:
        df = pd.read_csv(path)
    df = df.rename(columns={"handler_start": "t_start", "handler_end": "t_end"})
    if not {"t_start", "t_end"} <= set(df.columns):
        raise InputError(f"{path}: needs handler_start/handler_end (or t_start/t_end) columns; "
                         f"found {', '.join(map(str, df.columns))}")
    return df


def fit_from_log(df: pd.DataFrame, min_time_s: float = 1.0, meta: Optional[dict] = None) -> CurveFit:
    ok = df["t_start"].notna() & df["t_end"].notna()
    if "status" in df:
        ok &= df["status"] == 200
    d = df[ok]
    work = d["service_time"].to_numpy(float) if "service_time" in d else None
    group = d["replica"].astype(str).to_numpy() if "replica" in d else None
    return fit_concurrency(d["t_start"].to_numpy(float), d["t_end"].to_numpy(float), group=group, work=work,
                           min_time_s=min_time_s, meta=meta)
