"""Real Ray Serve model multiplexing, measured: ground truth for the simulator.

`run_real_multiplex(...)` starts a private local Ray + Serve, deploys a stand-in with a
FIXED number of replicas (no autoscaling, `num_cpus: 0`) whose
`@serve.multiplexed(max_num_models_per_replica=k)` loader sleeps `load_time_s`
(asyncio.sleep) and whose handler sleeps `service_time_s` after
`await self.get_model(serve.get_multiplexed_model_id())`, drives it open-loop from this
driver through a DeploymentHandle (`handle.options(multiplexed_model_id=str(mid))`, each
request fired at its arrival time without waiting for earlier ones), and returns one row
per request. Serve and Ray are always shut down at the end (try/finally; SIGINT/SIGTERM
ignored while cleaning up).

Columns (times in seconds from t0 = the wall time of arrival 0; driver and replicas share
the host clock):
- arrival_s (scheduled), sent_s (`.remote()` called), start_s (handler start on the
  replica), ready_s (get_model returned), end_s (response received by the driver),
  latency_s = end_s - arrival_s (NaN if it failed or timed out);
- model_id, replica_id (Serve's unique id), replica_idx (0.. in first-use order);
- hit: the model was fully loaded on that replica when the request entered the handler
  (i.e. in `_ModelMultiplexWrapper.models`); a request that waits for a load started by
  another request for the same model is *not* a hit;
- load_s = ready_s - start_s (time inside get_model: 0 for hits; queueing for the
  replica's model-cache lock plus the load for misses);
- did_load: this request's get_model called the loader; evicted: the model id it evicted
  (-1 if none); n_loaded: models resident after get_model; error: text or "".

Also `df.attrs["router_view"]`: every update of the driver-side router's view of which
replica holds which model (`MultiplexMixin._update_multiplexed_model_ids_with_replicas`,
called from the long-poll update), as rows (t_s, replica_id, model_ids) so the delay
between a replica starting a load and the router routing on it can be measured
(`router_learn_delays`). `df.attrs["meta"]` holds the parameters and run facts.

Notes: the router's pow-2 choice uses Python's `random` in the driver; we seed it with
`seed` (global side effect) but thread timing still makes runs differ slightly. A
`python -m simtune.validate.multiplex_real [OUT_DIR]` run regenerates the reference
measurements in reports/examples/multiplex_real (see `write_reference_runs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import pandas as pd

from simtune.errors import InputError
from simtune.validate.harness import _no_interrupts, delete_app as _delete_app, free_port as _free_port

log = logging.getLogger(__name__)

APP_PREFIX = "simtune-mplx-"
DEPLOYMENT_NAME = "MultiplexStandIn"


# --------------------------------------------------------------------------- deployment


def _make_standin_class(max_num_models_per_replica: int) -> type:
    """The stand-in class, with the multiplexed loader decorated for this k.

    Built in a function because `serve.multiplexed`'s argument is fixed at decoration
    time; cloudpickle ships a locally defined class by value.
    """
    from ray import serve

    class MultiplexStandIn:
        def __init__(self, service_time_s: float, load_time_s: float) -> None:
            self._service_time_s = float(service_time_s)
            self._load_time_s = float(load_time_s)
            # Which request is calling the loader (set per request; the loader runs in the
            # caller's task, so it sees the caller's value). Created here, on the replica.
            self._request_token = contextvars.ContextVar("simtune_request_token", default=None)
            # Models resident right after the previous load: loads are serialised by the
            # multiplexer's cache lock and eviction happens just before a load, so the
            # difference to the set the loader sees is what this load evicted.
            self._after_last_load: list = []
            try:
                self._replica = serve.get_replica_context().replica_id.unique_id
            except Exception:  # pragma: no cover - outside a replica
                self._replica = "local"

        @serve.multiplexed(max_num_models_per_replica=max_num_models_per_replica)
        async def get_model(self, model_id: str) -> dict:
            t = time.time()
            resident = self._resident()  # after the multiplexer's LRU eviction
            evicted = [m for m in self._after_last_load if m not in resident]
            self._after_last_load = resident + [model_id]
            token = self._request_token.get()
            if self._load_time_s > 0:
                await asyncio.sleep(self._load_time_s)
            return {"model_id": model_id, "token": token, "evicted": evicted[0] if evicted else "",
                    "load_start": t, "load_end": time.time()}

        def _resident(self) -> list:
            wrapper = getattr(self, "__serve_multiplex_wrapper", None)
            return list(wrapper.models.keys()) if wrapper is not None else []

        async def __call__(self) -> dict:
            start = time.time()
            model_id = serve.get_multiplexed_model_id()
            if not model_id:  # warm-up ping: no model
                return {"replica": self._replica, "ping": True, "t_start": start, "t_end": time.time()}
            token = object()
            self._request_token.set(token)
            hit = model_id in self._resident()
            model = await self.get_model(model_id)
            ready = time.time()
            did_load = model["token"] is token
            n_loaded = len(self._resident())
            if self._service_time_s > 0:
                await asyncio.sleep(self._service_time_s)
            return {
                "replica": self._replica, "ping": False, "hit": hit, "did_load": bool(did_load),
                "evicted": model["evicted"] if did_load else "", "n_loaded": n_loaded,
                "t_start": start, "t_ready": ready, "t_end": time.time(),
            }

    return MultiplexStandIn


# --------------------------------------------------------------------------- cluster


@contextlib.contextmanager
def local_serve(num_cpus: Optional[int] = None) -> Iterator[dict]:
    """A private local Ray (`address="local"`, never someone else's cluster) + Serve.

    Worker processes run at normal priority (RAY_worker_niceness=0), as on a dedicated
    node, like `simtune.validate.harness.ray_cluster`. Always shut down on exit.
    """
    import ray
    from ray import serve

    for name in ("ray", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)
    kwargs: dict[str, Any] = dict(address="local", include_dashboard=False, log_to_driver=False,
                                  logging_level=logging.WARNING)
    if num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    old_nice = os.environ.get("RAY_worker_niceness")
    os.environ["RAY_worker_niceness"] = "0"
    try:
        ray.init(**kwargs)
        serve.start(http_options={"host": "127.0.0.1", "port": _free_port()})
        yield {"ray_version": ray.__version__}
    finally:
        with _no_interrupts():
            with contextlib.suppress(Exception):
                serve.shutdown()
            with contextlib.suppress(Exception):
                ray.shutdown()
            if old_nice is None:
                os.environ.pop("RAY_worker_niceness", None)
            else:
                os.environ["RAY_worker_niceness"] = old_nice


# --------------------------------------------------------------------------- router view


class _RouterViewRecorder:
    """Logs every update of the router's model -> replicas map (on the router's thread)."""

    def __init__(self, t0_ref: list) -> None:
        self.events: list[tuple[float, str, str]] = []
        self._t0_ref = t0_ref
        self.installed = False

    def install(self, handle: Any) -> None:
        try:
            rr = handle._router._asyncio_router.request_router
            orig = rr._update_multiplexed_model_ids_with_replicas
        except Exception as exc:  # internal layout changed: measure without it
            log.warning("cannot observe the router's multiplexed view: %s", exc)
            return

        def hooked(replicas: Sequence[Any]) -> None:
            now = time.time()
            for r in replicas:
                ids = sorted(str(m) for m in r.multiplexed_model_ids)
                self.events.append((now, r.replica_id.unique_id, " ".join(ids)))
            return orig(replicas)

        rr._update_multiplexed_model_ids_with_replicas = hooked
        self.installed = True

    def frame(self, t0: float) -> pd.DataFrame:
        df = pd.DataFrame(self.events, columns=["t_wall", "replica_id", "model_ids"])
        df.insert(0, "t_s", df.pop("t_wall") - t0)
        return df


def router_learn_delays(requests: pd.DataFrame, view: pd.DataFrame) -> pd.Series:
    """For each request that loaded a model: seconds from its handler start (when the
    replica flags the model as loading) until the driver's router first lists that model
    on that replica afterwards. NaN if never seen (e.g. evicted before a push)."""
    out = {}
    if view is None or view.empty:
        return pd.Series(out, dtype=float)
    per_replica = {rid: g for rid, g in view.groupby("replica_id")}
    for idx, row in requests[requests["did_load"]].iterrows():
        g = per_replica.get(row["replica_id"])
        if g is None:
            out[idx] = np.nan
            continue
        later = g[g["t_s"] >= row["start_s"]]
        mid = str(row["model_id"])
        has = later["model_ids"].map(lambda s: mid in s.split())
        out[idx] = float(later.loc[has, "t_s"].iloc[0] - row["start_s"]) if has.any() else np.nan
    return pd.Series(out, dtype=float)


# --------------------------------------------------------------------------- one run


def _check_args(arrivals, model_ids, service_time_s, load_time_s, k, num_replicas, max_ongoing):
    arrivals = np.asarray(arrivals, dtype=np.float64)
    model_ids = np.asarray(model_ids)
    if arrivals.ndim != 1 or model_ids.shape != arrivals.shape:
        raise InputError(f"arrivals and model_ids must be 1-D of equal length, got {arrivals.shape} and {model_ids.shape}")
    if arrivals.size and (not np.all(np.isfinite(arrivals)) or arrivals.min() < 0 or np.any(np.diff(arrivals) < 0)):
        raise InputError("arrivals must be finite, >= 0 and sorted")
    if model_ids.size and (model_ids.dtype.kind not in "iu" or model_ids.min() < 0):
        raise InputError("model_ids must be non-negative integers")
    for what, v in (("service_time_s", service_time_s), ("load_time_s", load_time_s)):
        if not (np.isfinite(v) and v >= 0):
            raise InputError(f"{what} must be >= 0, got {v!r}")
    if not (int(k) == k and (k >= 1 or k == -1)):
        raise InputError(f"max_num_models_per_replica must be >= 1 (or -1), got {k!r}")
    for what, v in (("num_replicas", num_replicas), ("max_ongoing_requests", max_ongoing)):
        if not (int(v) == v and v >= 1):
            raise InputError(f"{what} must be an integer >= 1, got {v!r}")
    return arrivals, model_ids.astype(np.int64)


def _run_on_cluster(arrivals, model_ids, service_time_s, load_time_s, k, num_replicas, max_ongoing,
                    seed, drain_timeout_s, warmup_pings) -> pd.DataFrame:
    from ray import serve

    cls = _make_standin_class(int(k))
    app_name = f"{APP_PREFIX}{uuid.uuid4().hex[:8]}"
    dep = serve.deployment(cls, name=DEPLOYMENT_NAME).options(
        num_replicas=int(num_replicas), max_ongoing_requests=int(max_ongoing),
        ray_actor_options={"num_cpus": 0},
    )
    t0_ref: list = []
    recorder = _RouterViewRecorder(t0_ref)
    try:
        t_deploy = time.time()
        handle = serve.run(dep.bind(service_time_s, load_time_s), name=app_name, route_prefix=None)
        deploy_s = time.time() - t_deploy
        random.seed(int(seed))
        results = asyncio.run(_drive(handle, recorder, arrivals, model_ids, drain_timeout_s, warmup_pings))
    finally:
        with _no_interrupts():
            _delete_app(app_name)
    t0, rows, warm = results
    df = pd.DataFrame(rows)
    df["replica_idx"] = pd.factorize(df["replica_id"].where(df["replica_id"] != "", None))[0]
    df["latency_s"] = df["end_s"] - df["arrival_s"]
    cols = ["arrival_s", "sent_s", "start_s", "ready_s", "end_s", "latency_s", "model_id", "replica_id",
            "replica_idx", "hit", "load_s", "did_load", "evicted", "n_loaded", "error"]
    df = df[cols]
    view = recorder.frame(t0)
    lag = (df["sent_s"] - df["arrival_s"]).to_numpy()
    df.attrs["router_view"] = view
    df.attrs["meta"] = {
        "n_requests": int(len(df)), "service_time_s": float(service_time_s), "load_time_s": float(load_time_s),
        "max_num_models_per_replica": int(k), "num_replicas": int(num_replicas),
        "max_ongoing_requests": int(max_ongoing), "seed": int(seed), "deploy_s": deploy_s,
        "send_lag_p99_s": float(np.quantile(lag, 0.99)) if lag.size else None,
        "send_lag_max_s": float(lag.max()) if lag.size else None,
        "warmup_replicas_seen": sorted(warm), "router_view_observed": recorder.installed,
        "errors": int((df["error"] != "").sum()),
    }
    return df


async def _drive(handle, recorder, arrivals, model_ids, drain_timeout_s, warmup_pings):
    # Warm the handle's router (it is created lazily on the first call) and the replicas'
    # request path with model-less pings, sequentially so no model is loaded.
    warm = set()
    for _ in range(warmup_pings):
        r = await handle.remote()
        warm.add(r["replica"])
    recorder.install(handle)
    handles = {m: handle.options(multiplexed_model_id=str(m)) for m in np.unique(model_ids).tolist()}
    n = len(arrivals)
    rows: list[dict] = [dict() for _ in range(n)]
    t0 = time.time() + 0.5

    async def one(i: int) -> None:
        mid = int(model_ids[i])
        row = rows[i]
        row.update(arrival_s=float(arrivals[i]), model_id=mid, replica_id="", hit=False, did_load=False,
                   evicted=-1, n_loaded=-1, start_s=np.nan, ready_s=np.nan, end_s=np.nan, load_s=np.nan,
                   error="")
        row["sent_s"] = time.time() - t0
        try:
            r = await handles[mid].remote()
            row["end_s"] = time.time() - t0
            row.update(replica_id=r["replica"], hit=bool(r["hit"]), did_load=bool(r["did_load"]),
                       evicted=int(r["evicted"]) if r["evicted"] != "" else -1, n_loaded=int(r["n_loaded"]),
                       start_s=r["t_start"] - t0, ready_s=r["t_ready"] - t0, load_s=r["t_ready"] - r["t_start"])
        except asyncio.CancelledError:
            row["error"] = "not finished within the drain timeout"
        except Exception as exc:  # record, keep going
            row["error"] = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]

    tasks = []
    for i in range(n):
        delay = t0 + arrivals[i] - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    if tasks:
        done, pending = await asyncio.wait(tasks, timeout=drain_timeout_s)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    return t0, rows, warm


def run_real_multiplex(
    arrivals: np.ndarray,
    model_ids: np.ndarray,
    service_time_s: float,
    load_time_s: float,
    max_num_models_per_replica: int,
    num_replicas: int,
    max_ongoing_requests: int,
    seed: int = 0,
    *,
    drain_timeout_s: float = 120.0,
    warmup_pings: int = 6,
    num_cpus: Optional[int] = None,
) -> pd.DataFrame:
    """One real run on a fresh local Ray Serve; one row per request (see module doc).

    Every replica starts with an empty model cache. `drain_timeout_s`: after the last
    arrival is fired, requests still unfinished this long are cancelled (error column).
    """
    arrivals, model_ids = _check_args(arrivals, model_ids, service_time_s, load_time_s,
                                      max_num_models_per_replica, num_replicas, max_ongoing_requests)
    with local_serve(num_cpus) as cluster:
        df = _run_on_cluster(arrivals, model_ids, service_time_s, load_time_s, max_num_models_per_replica,
                             num_replicas, max_ongoing_requests, seed, drain_timeout_s, warmup_pings)
    df.attrs["meta"]["ray_version"] = cluster["ray_version"]
    return df


def run_real_multiplex_many(
    arrivals: np.ndarray, model_ids: np.ndarray, service_time_s: float, load_time_s: float,
    ks: Sequence[int], num_replicas: int, max_ongoing_requests: int, seed: int = 0, *,
    drain_timeout_s: float = 120.0, warmup_pings: int = 6, num_cpus: Optional[int] = None,
) -> dict[int, pd.DataFrame]:
    """`run_real_multiplex` for several k on one local cluster (a fresh app, hence fresh
    replicas with empty caches and a fresh driver router, per k). Saves Ray start-up time."""
    checked = [_check_args(arrivals, model_ids, service_time_s, load_time_s, k, num_replicas,
                           max_ongoing_requests) for k in ks]
    out = {}
    with local_serve(num_cpus) as cluster:
        for k, (arr, mids) in zip(ks, checked):
            df = _run_on_cluster(arr, mids, service_time_s, load_time_s, k, num_replicas, max_ongoing_requests,
                                 seed, drain_timeout_s, warmup_pings)
            df.attrs["meta"]["ray_version"] = cluster["ray_version"]
            out[int(k)] = df
    return out


# --------------------------------------------------------------------------- summaries


def summarize(df: pd.DataFrame) -> dict:
    """Hit rate and latency percentiles of one run (finished requests only)."""
    ok = df[df["error"] == ""]
    lat = ok["latency_s"].to_numpy()
    view = df.attrs.get("router_view")
    delays = router_learn_delays(ok, view).dropna() if view is not None else pd.Series(dtype=float)
    q = (lambda a, p: float(np.quantile(a, p)) if len(a) else float("nan"))
    return {
        "n": int(len(df)), "failed": int(len(df) - len(ok)),
        "hit_rate": float(ok["hit"].mean()) if len(ok) else float("nan"),
        "loads": int(ok["did_load"].sum()),
        "p50_s": q(lat, 0.5), "p95_s": q(lat, 0.95), "p99_s": q(lat, 0.99), "mean_s": float(lat.mean()) if len(lat) else float("nan"),
        "hit_p50_s": q(ok.loc[ok["hit"], "latency_s"].to_numpy(), 0.5),
        "miss_p50_s": q(ok.loc[~ok["hit"], "latency_s"].to_numpy(), 0.5),
        "learn_delay_p50_s": q(delays.to_numpy(), 0.5), "learn_delay_max_s": float(delays.max()) if len(delays) else float("nan"),
    }


# Reference setting measured into reports/examples/multiplex_real (the simulator's ground truth).
REFERENCE = dict(rate=8.0, duration_s=60.0, n_models=12, zipf_s=1.1, service_time_s=0.1, load_time_s=1.0,
                 num_replicas=3, max_ongoing_requests=8, ks=(1, 2, 4, 8), seed=0)


def reference_workload(rate: float, duration_s: float, n_models: int, zipf_s: float, seed: int):
    """Poisson arrivals (`generators.poisson(rate, duration, seed=seed)`) and Zipf model ids
    (`assign_model_ids(..., seed=seed)`): reproducible from `seed`."""
    from simtune.trace import generators
    from simtune.trace.model_ids import assign_model_ids

    tr = assign_model_ids(generators.poisson(rate, duration_s, seed=seed), n_models, zipf_s, seed=seed)
    return tr.timestamps, tr.columns["model_id"]


def write_reference_runs(out_dir: str | os.PathLike, **overrides: Any) -> pd.DataFrame:
    """Run REFERENCE (with overrides) and write real_k{k}.csv, router_view_k{k}.csv and summary.md."""
    p = {**REFERENCE, **overrides}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrivals, mids = reference_workload(p["rate"], p["duration_s"], p["n_models"], p["zipf_s"], p["seed"])
    load0 = os.getloadavg()[0]
    t_start = time.time()
    runs = run_real_multiplex_many(arrivals, mids, p["service_time_s"], p["load_time_s"], p["ks"],
                                   p["num_replicas"], p["max_ongoing_requests"], seed=p["seed"])
    rows = []
    for k, df in runs.items():
        df.to_csv(out / f"real_k{k}.csv", index=False, float_format="%.6f")
        df.attrs["router_view"].to_csv(out / f"router_view_k{k}.csv", index=False, float_format="%.6f")
        rows.append({"k": k, **summarize(df), "send_lag_max_s": df.attrs["meta"]["send_lag_max_s"]})
    table = pd.DataFrame(rows)
    _write_summary(out / "summary.md", p, table, runs, load0, time.time() - t_start)
    return table


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it lies below it (portable in reports)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _write_summary(path: Path, p: dict, table: pd.DataFrame, runs: dict, load0: float, wall_s: float) -> None:
    meta = next(iter(runs.values())).attrs["meta"]
    lines = [
        "# Real Ray Serve multiplexing: reference measurements",
        "",
        f"Ray {meta.get('ray_version')}, one local node ({os.cpu_count()} cores, shared; 1-min loadavg at start "
        f"{load0:.2f}), stand-in deployment from `simtune.validate.multiplex_real` driven open-loop through a "
        "DeploymentHandle from the driver. Fixed replicas, `num_cpus: 0`, every replica starts with an empty "
        "model cache; a fresh app (replicas and driver router) per k, one Ray cluster for all k. "
        f"Total wall time {wall_s:.0f} s.",
        "",
        "## Parameters",
        "",
        f"- arrivals: `simtune.trace.generators.poisson(rate={p['rate']}, duration={p['duration_s']}, seed={p['seed']})` "
        f"({meta['n_requests']} requests)",
        f"- model ids: `simtune.trace.model_ids.assign_model_ids(trace, n_models={p['n_models']}, zipf_s={p['zipf_s']}, "
        f"seed={p['seed']})`, sent as `handle.options(multiplexed_model_id=str(model_id))`",
        f"- service_time_s={p['service_time_s']} (asyncio.sleep after get_model), load_time_s={p['load_time_s']} "
        "(asyncio.sleep in the `@serve.multiplexed` loader), unload instant (model has no `__del__`)",
        f"- num_replicas={p['num_replicas']}, max_ongoing_requests={p['max_ongoing_requests']}, "
        f"max_num_models_per_replica in {list(p['ks'])}",
        f"- driver `random.seed({p['seed']})` before each run (pow-2 picks); Serve defaults otherwise "
        "(RAY_SERVE_MULTIPLEXED_MODEL_ID_MATCHING_TIMEOUT_S=1.0)",
        f"- regenerate: `python -m simtune.validate.multiplex_real {_shown(path.parent)}` (from the repo root)",
        "",
        "## Results",
        "",
        "hit = model fully loaded on the chosen replica when the request entered the handler. Latency = "
        "response received at the driver - scheduled arrival. learn delay = from a loading request's handler "
        "start to the driver router's first view listing that model on that replica.",
        "",
        "| k | requests | failed | hit rate | loads | p50 s | p95 s | p99 s | mean s | hit p50 s | miss p50 s | learn delay p50 / max s | max send lag s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table.itertuples():
        lines.append(f"| {r.k} | {r.n} | {r.failed} | {r.hit_rate:.3f} | {r.loads} | {r.p50_s:.3f} | {r.p95_s:.3f} | "
                     f"{r.p99_s:.3f} | {r.mean_s:.3f} | {r.hit_p50_s:.3f} | {r.miss_p50_s:.3f} | "
                     f"{r.learn_delay_p50_s:.3f} / {r.learn_delay_max_s:.3f} | {r.send_lag_max_s:.4f} |")
    lines += [
        "",
        "## Files",
        "",
        "- `real_k{k}.csv`: one row per request (columns documented in `simtune/validate/multiplex_real.py`).",
        "- `router_view_k{k}.csv`: each update of the driver router's multiplexed view "
        "(t_s, replica_id, space-separated model ids it believes the replica holds or is loading).",
        "",
    ]
    path.write_text("\n".join(lines))


if __name__ == "__main__":  # pragma: no cover - manual regeneration of the reference runs
    import sys

    target = sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parents[3] / "reports" / "examples" / "multiplex_real")
    print(write_reference_runs(target).to_string())
