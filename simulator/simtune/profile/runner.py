"""`simtune profile`: deploy a target on Ray Serve, drive it, fit a service model.

A private local Ray (never another engineer's cluster on this host) unless `address` is
given; the target is deployed as one uniquely named application (`simtune-profile-<hex>`)
with one replica, and deleted on every exit path (simtune.validate.harness does the same).

  profile_concurrency  closed loop at increasing concurrency; fit the concurrency curve from
                       handler start/end times when the responses carry them (t_start,
                       t_end), else from client latencies minus the measured overhead;
  profile_batch        closed loop at increasing concurrency against an @serve.batch
                       handler whose responses carry batch_size/batch_start/batch_end;
  replay               open-loop replay of a trace (for comparing with the simulator).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pandas as pd

from simtune.errors import InputError
from simtune.profile import fit as F
from simtune.validate.harness import RealRunError, RealRunOptions, delete_app, ray_cluster

APP_PREFIX = "simtune-profile-"
DEMOS = ("cpu", "batch", "noop")


@dataclass
class ProfileOptions:
    address: Optional[str] = None
    num_cpus: Optional[int] = None
    http_port: Optional[int] = None
    proxy_url: Optional[str] = None
    levels: list = field(default_factory=lambda: [1, 2, 3, 4, 6, 8])
    duration_s: float = 5.0
    warmup_s: float = 1.0
    work: float = 0.05  # {service_time} sent with every profiling request
    request_template: Optional[dict] = None
    max_ongoing_requests: Optional[int] = None
    min_time_s: float = 1.0


@contextlib.contextmanager
def cluster(opts: ProfileOptions) -> Iterator[dict]:
    with ray_cluster(RealRunOptions(address=opts.address, num_cpus=opts.num_cpus, http_port=opts.http_port,
                                    proxy_url=opts.proxy_url)) as info:
        yield info


def build_target(target: str, *, max_ongoing_requests: int, demo_kwargs: Optional[dict] = None,
                 batch: Optional[dict] = None) -> Any:
    """The Serve application to profile: a demo (`cpu`, `batch`, `noop`) or module:app."""
    from ray import serve
    from ray.serve.deployment import Application, Deployment

    opts = {"num_replicas": 1, "max_ongoing_requests": int(max_ongoing_requests)}
    if target in DEMOS:
        from simtune.profile import demo

        cls = {"cpu": demo.CpuBound, "noop": demo.Noop}.get(target)
        if target == "batch":
            cls = demo.batch_sleep_deployment(**(batch or {}))
        dep = serve.deployment(cls, name=f"profile_{target}", ray_actor_options={"num_cpus": 0}).options(**opts)
        return dep.bind(**(demo_kwargs or {}))
    from ray._common.utils import import_attr

    try:
        obj = import_attr(target)
    except Exception as exc:
        raise InputError(f"--import-path {target}: cannot import: {exc}") from None
    if isinstance(obj, Deployment):
        return obj.options(**opts).bind()
    if isinstance(obj, Application):
        return Application(obj._bound_deployment.options(**opts))
    raise InputError(f"--import-path {target}: expected a Serve Application or Deployment, got {type(obj).__name__}")


@contextlib.contextmanager
def deployed(app: Any, http_url: str) -> Iterator[str]:
    """Deploy under a unique name and route prefix; yield its URL; always delete it."""
    from ray import serve

    name = f"{APP_PREFIX}{uuid.uuid4().hex[:8]}"
    try:
        try:
            serve.run(app, name=name, route_prefix=f"/{name}")
        except InputError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RealRunError(f"deploying the profile target failed: {first}") from None
        yield f"{http_url.rstrip('/')}/{name}"
    finally:
        delete_app(name)


def _driver(url: str, workdir: Path, args: list[str], template: Optional[dict], timeout_s: float) -> pd.DataFrame:
    out = workdir / f"driver-{uuid.uuid4().hex[:6]}.parquet"
    cmd = [sys.executable, "-m", "simtune.profile.driver", "--url", url, "--out", str(out), *args]
    if template is not None:
        (workdir / "template.json").write_text(json.dumps(template))
        cmd += ["--template", str(workdir / "template.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0 or not out.exists():
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise RealRunError(f"profile load driver failed: {last}")
    df = pd.read_parquet(out)
    df["latency"] = df["done"] - df["sent"]
    return df


def closed_loop(url: str, opts: ProfileOptions, workdir: Path) -> pd.DataFrame:
    levels = ",".join(str(int(c)) for c in opts.levels)
    budget = len(opts.levels) * (opts.duration_s + opts.warmup_s) + 120
    return _driver(url, workdir, ["--levels", levels, "--duration-s", str(opts.duration_s), "--warmup-s",
                                  str(opts.warmup_s), "--work", str(opts.work)], opts.request_template, budget)


def replay(url: str, timestamps: np.ndarray, work: np.ndarray, workdir: Path,
           template: Optional[dict] = None) -> pd.DataFrame:
    """Open-loop replay; times in the result are seconds on the trace's axis."""
    np.savez(workdir / "trace.npz", timestamps=np.asarray(timestamps, float), service_time=np.asarray(work, float))
    df = _driver(url, workdir, ["--trace", str(workdir / "trace.npz")], template, float(timestamps[-1]) + 180)
    return df.sort_values("scheduled").reset_index(drop=True)


@dataclass
class ConcurrencyProfile:
    fit: Optional[F.CurveFit]
    model: Any
    overhead_s: Optional[float]
    requests: pd.DataFrame
    levels: pd.DataFrame  # per closed-loop level: requests, mean/p50/p99 latency, handler time


def summarize_levels(df: pd.DataFrame) -> pd.DataFrame:
    d = df[(df["level"] > 0) & (df["status"] == 200)].copy()
    d["handler"] = d["t_end"] - d["t_start"]
    g = d.groupby("level")
    return pd.DataFrame({
        "requests": g.size(),
        "throughput_rps": g.size() / g.apply(lambda x: x["done"].max() - x["sent"].min(), include_groups=False),
        "latency_mean_s": g["latency"].mean(), "latency_p50_s": g["latency"].median(),
        "latency_p99_s": g["latency"].quantile(0.99), "handler_mean_s": g["handler"].mean(),
    })


def overhead_samples(http_url: str, workdir: Path, duration_s: float = 3.0) -> np.ndarray:
    """Latencies of a no-op deployment, closed loop, one client: the request path's own
    time (proxy, router, network, a replica doing nothing)."""
    app = build_target("noop", max_ongoing_requests=4)
    with deployed(app, http_url) as url:
        df = closed_loop(url, ProfileOptions(levels=[1], duration_s=duration_s, warmup_s=0.5), workdir)
    ok = df[(df["status"] == 200) & (df["level"] > 0)]
    if ok.empty:
        raise RealRunError("no successful responses from the no-op deployment (overhead measurement)")
    return ok["latency"].to_numpy(float)


def measure_overhead(http_url: str, workdir: Path, duration_s: float = 3.0) -> float:
    """Median no-op latency (SimParams.proxy_overhead_s)."""
    return float(np.median(overhead_samples(http_url, workdir, duration_s)))


def with_overhead(latency_without: np.ndarray, samples: np.ndarray, seed: int = 0) -> np.ndarray:
    """Simulated latencies (run with proxy_overhead_s = 0) plus the request path's own time
    drawn from its measured distribution. Why: SimParams.proxy_overhead_s is a constant,
    while on a busy host the path's jitter dominates the tail of short requests."""
    rng = np.random.default_rng([seed, 7])
    return np.asarray(latency_without, float) + rng.choice(np.asarray(samples, float), len(latency_without))


def profile_concurrency(url: str, opts: ProfileOptions, workdir: Path, *, overhead_s: Optional[float] = None,
                        fit: str = "client", parallelism: Any = "auto") -> ConcurrencyProfile:
    """Closed loop at each level; fit the concurrency curve.

    fit="client" (default): L(c) = mean client latency at level c minus `overhead_s` (the
      no-op latency). Right whenever the replica holds the slot longer than the handler
      runs, e.g. a CPU-bound Python handler starves the replica's own event loop (GIL), so
      requests wait inside the replica before the handler starts.
    fit="handler": least squares on handler start/end intervals (needs t_start/t_end in the
      responses); right when handler time is slot time (sleeps, GPU work).
    parallelism="auto": with handler times, the p95 of handlers running at once at the top
      level (simtune.profile.fit.estimate_parallelism); an int sets it; None: sharing.
    """
    if fit not in ("client", "handler"):
        raise InputError(f"--fit {fit!r}: expected client or handler")
    df = closed_loop(url, opts, workdir)
    ok = df[df["status"] == 200]
    if ok.empty:
        raise RealRunError(f"no successful responses from {url} (HTTP statuses: "
                           f"{sorted(set(df['status'].tolist()))})")
    measured = ok[ok["level"] > 0]
    meta = {"source": "simtune profile concurrency", "levels": [int(c) for c in opts.levels],
            "duration_s_per_level": opts.duration_s, "work": opts.work}
    if overhead_s is None:
        overhead_s = F.overhead_from(df) or 0.0
    meta["proxy_overhead_s"] = round(float(overhead_s), 6)
    has_handler = ok["t_start"].notna().mean() > 0.9
    curve = None
    if has_handler:
        use = np.isin(ok.index, measured.index)
        try:
            curve = F.fit_concurrency(ok["t_start"].to_numpy(float), ok["t_end"].to_numpy(float),
                                      group=ok["replica"].astype(str).to_numpy(), use=use,
                                      min_time_s=opts.min_time_s, meta=dict(meta))
        except InputError:
            curve = None
    if fit == "handler":
        if curve is None:
            raise InputError("--fit handler: the responses carry no usable t_start/t_end handler times")
        model = curve.model
    else:
        model = F.fit_concurrency_client_side(measured["level"].to_numpy(), measured["latency"].to_numpy(),
                                              float(overhead_s), meta=meta)
        if curve is not None:
            model.meta["handler_fit"] = {"concurrency": curve.model.concurrency, "latency_s": curve.model.latency_s}
    if parallelism == "auto" and has_handler:
        model.parallelism = F.estimate_parallelism(df)
        model.meta["parallelism_from"] = ("p95 of handlers running at once at the top level"
                                          if model.parallelism else "handlers keep up with the level: sharing")
    elif isinstance(parallelism, int):
        model.parallelism = parallelism
    return ConcurrencyProfile(curve, model, float(overhead_s), df, summarize_levels(df))


@dataclass
class BatchProfile:
    fit: F.BatchFit
    model: Any
    overhead_s: Optional[float]
    overhead_samples: np.ndarray
    requests: pd.DataFrame


def profile_batch(url: str, opts: ProfileOptions, workdir: Path, *, max_batch_size: int,
                  batch_wait_timeout_s: float, max_concurrent_batches: int, table: bool = False) -> BatchProfile:
    """Closed loop at each level against an @serve.batch handler.

    Fits batch latency vs size (every batch seen), and from level 1 (one item per batch,
    the previous batch always done): the effective batch wait (configured timeout plus the
    event loop's lag, written as the model's batch_wait_timeout_s) and the request path's
    own time (client latency minus enqueue-to-batch-end) for SimParams.proxy_overhead_s.
    """
    if 1 not in opts.levels:
        raise InputError("--levels must include 1 (it measures the effective batch wait and the overhead)")
    df = closed_loop(url, opts, workdir)
    meta = {"source": "simtune profile batch", "levels": [int(c) for c in opts.levels],
            "configured_batch_wait_timeout_s": batch_wait_timeout_s}
    ok = df[(df["status"] == 200) & df["batch_size"].notna()]
    one = ok[(ok["level"] == 1) & (ok["batch_size"] == 1)]
    eff = batch_wait_timeout_s
    samples = np.array([])
    if len(one) >= 5:
        eff = max(batch_wait_timeout_s, float(np.median(one["batch_start"] - one["t_start"])))
        samples = (one["latency"] - (one["batch_end"] - one["t_start"])).to_numpy(float)
        meta["effective_batch_wait_s"] = round(eff, 6)
    fit = F.fit_batch(df[df["level"] != 0], max_batch_size=max_batch_size, batch_wait_timeout_s=round(eff, 6),
                      max_concurrent_batches=max_concurrent_batches, table=table, meta=meta)
    over = float(np.median(samples)) if samples.size else None
    if over is not None:
        fit.model.meta["proxy_overhead_s"] = round(over, 6)
    return BatchProfile(fit, fit.model, over, samples, df)


def workdir() -> contextlib.AbstractContextManager:
    return tempfile.TemporaryDirectory(prefix="simtune-profile-")
