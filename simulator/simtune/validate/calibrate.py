"""`--calibrate`: fit the model's free parameters from a real run.

Ray does not expose how long a replica takes to start or what the proxy/router path
costs per request (reference 5.1 and 6); they must be measured on the target cluster.
From one real run this fits:
  * `startup`: the replica startup model (simtune.startup.StartupModel), from each
    replica's controller creation stamp to RUNNING. If replicas started with different
    numbers of others starting alongside, a `linear` model (base + per × others
    starting) is fitted by least squares, because startup grows with the number of
    replicas starting at once; otherwise the measured values are resampled
    (`empirical`).
  * `proxy_overhead_s`: client latency minus time in the handler, median over requests
    sent when their replica had a free slot (so router queueing is not counted).
  * `slot_overhead_s`: handler time beyond the request's service time (slot held).
The result is a `SimParams` YAML (simtune.params.SimParams.save), the file that
`simtune run`/`recommend --params FILE` read.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd

MIN_SAMPLES_FOR_LINEAR = 3


def concurrency_at_creation(replicas: pd.DataFrame) -> np.ndarray:
    """For each replica: how many replicas were starting when it was created, itself included."""
    created = replicas["created"].to_numpy(dtype=float)
    running = replicas["running"].to_numpy(dtype=float)
    running = np.where(np.isfinite(running), running, np.inf)
    out = np.zeros(len(created), dtype=np.int64)
    for i, c in enumerate(created):
        out[i] = int(np.sum((created <= c + 0.05) & (running > c)))
    return np.maximum(out, 1)


def fit_startup(replicas: pd.DataFrame) -> dict:
    """Fit the startup model from replica lifecycles (observe.replica_lifecycles)."""
    if replicas is None or replicas.empty:
        return {"kind": "none", "values": [], "reason": "no replica started during the run"}
    df = replicas[~replicas["initial"].astype(bool)].copy()
    df = df[np.isfinite(df["startup_s"]) & (df["startup_s"] >= 0)]
    if df.empty:
        return {"kind": "none", "values": [], "reason": "no replica started during the run"}
    full = replicas.copy()
    full["concurrent"] = concurrency_at_creation(full)
    df = df.join(full["concurrent"])
    values = df["startup_s"].to_numpy(dtype=float)
    k = df["concurrent"].to_numpy(dtype=float) - 1.0
    out: dict[str, Any] = {"values": [round(float(v), 4) for v in values],
                           "concurrent": [int(c) for c in df["concurrent"]],
                           "mean_s": float(values.mean()), "p50_s": float(np.median(values)),
                           "max_s": float(values.max())}
    if len(values) >= MIN_SAMPLES_FOR_LINEAR and np.unique(k).size >= 2:
        a = np.vstack([np.ones_like(k), k]).T
        (base, per), *_ = np.linalg.lstsq(a, values, rcond=None)
        if per < 0:  # no growth with concurrency: a constant fits as well
            base, per = float(values.mean()), 0.0
        resid = values - (base + per * k)
        out.update({"kind": "linear", "base_s": float(max(base, 0.0)), "per_extra_s": float(max(per, 0.0)),
                    "rmse_s": float(np.sqrt(np.mean(resid ** 2)))})
    else:
        out["kind"] = "empirical"
    return out


def _in_flight_at(replica: np.ndarray, start: np.ndarray, end: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Requests executing on the same replica at time `at[i]` (from handler intervals)."""
    out = np.zeros(len(at), dtype=np.int64)
    frame = pd.DataFrame({"r": replica, "s": start, "e": end})
    for _, g in frame.groupby("r", sort=False):
        s = np.sort(g["s"].to_numpy())
        e = np.sort(g["e"].to_numpy())
        idx = g.index.to_numpy()
        t = at[idx]
        out[idx] = np.searchsorted(s, t, side="right") - np.searchsorted(e, t, side="right")
    return out


def fit_overheads(requests: pd.DataFrame, max_ongoing_requests: int) -> dict:
    """Per-request overheads from the stand-in's handler timestamps."""
    ok = requests[(requests["status"] == 200) & requests["handler_start"].notna() & requests["handler_end"].notna()]
    if ok.empty:
        return {"proxy_overhead_s": None, "slot_overhead_s": None, "samples": 0}
    ok = ok.reset_index(drop=True)
    handler = (ok["handler_end"] - ok["handler_start"]).to_numpy(dtype=float)
    lat = ok["latency"].to_numpy(dtype=float)
    outside = lat - handler
    busy = _in_flight_at(ok["replica"].astype(str).to_numpy(), ok["handler_start"].to_numpy(dtype=float),
                         ok["handler_end"].to_numpy(dtype=float), ok["sent"].to_numpy(dtype=float))
    free = busy < max_ongoing_requests
    sel = outside[free] if free.sum() >= 10 else outside
    out = {
        "proxy_overhead_s": float(np.median(sel)),
        "proxy_overhead_p90_s": float(np.percentile(sel, 90)),
        "samples": int(sel.size),
        "samples_total": int(outside.size),
    }
    if "service_time" in ok:
        extra = handler - ok["service_time"].to_numpy(dtype=float)
        out["slot_overhead_s"] = float(max(np.median(extra), 0.0))
    else:
        out["slot_overhead_s"] = None
    return out


def calibrate(run: Any, max_ongoing_requests: int, seed: int = 0) -> tuple[Any, dict]:
    """(SimParams, diagnostics) fitted from a real run."""
    from simtune.params import SimParams
    from simtune.startup import StartupModel

    startup = fit_startup(run.replicas)
    over = fit_overheads(run.requests, max_ongoing_requests)
    params = SimParams(seed=seed)
    if startup["kind"] == "linear":
        params.startup = StartupModel.linear(startup["base_s"], startup["per_extra_s"])
    elif startup["kind"] == "empirical":
        params.startup = StartupModel.empirical(startup["values"])
    if over.get("proxy_overhead_s") is not None:
        params.proxy_overhead_s = round(max(over["proxy_overhead_s"], 0.0), 5)
    if over.get("slot_overhead_s") is not None:
        params.slot_overhead_s = round(over["slot_overhead_s"], 5)
    return params, {"startup": startup, "overheads": over}


def measured_params(run: Any, max_ongoing_requests: int, seed: int = 0, base: Optional[Any] = None,
                    startup: str = "fitted") -> tuple[Any, dict]:
    """The parameters the comparison gives the simulator, all measured in `run`.

    `startup="fitted"`: the startup model fitted to the run's measured startup times
    (linear in the number starting together when the run had several levels; else the
    measured values resampled). `startup="empirical"`: always resample the measured
    values, ignoring how many replicas started together. Fields not measured here
    (controller step, push/broadcast delays, ...) come from `base` or the defaults.
    """
    import dataclasses

    from simtune.startup import StartupModel

    params, diag = calibrate(run, max_ongoing_requests, seed)
    if base is not None:
        params = dataclasses.replace(base, startup=params.startup, proxy_overhead_s=params.proxy_overhead_s,
                                     slot_overhead_s=params.slot_overhead_s, seed=seed)
    values = diag["startup"].get("values") or []
    if startup == "empirical" and values:
        params = dataclasses.replace(params, startup=StartupModel.empirical(values))
    return params, diag
