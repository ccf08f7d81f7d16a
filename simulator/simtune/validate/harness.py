"""Orchestrating one real run: cluster, deploy, observe, replay, clean up.

Why so careful about cleanup: `--address` points at someone's real cluster. The harness
deploys exactly one application with a unique name and route prefix
(`simtune-validate-<hex>`), touches nothing else, and deletes that application on every
exit path: normal end, exception, Ctrl-C (SIGINT) and SIGTERM. While cleaning up, further
Ctrl-C is ignored so a double Ctrl-C cannot leave the app behind. A local cluster
(`ray.init(address="local")`, never attaching to another cluster found on the host) is
shut down entirely at the end.

Timing: every real record is in seconds from `t0`, the wall time at which trace time 0
is replayed, so the real run and the simulator share one time axis.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pandas as pd

from simtune.errors import InputError, SimtuneError
from simtune.validate import observe
from simtune.validate.loadgen import DEFAULT_MAX_LAG_S, DEFAULT_MAX_P99_LAG_S, LagVerdict, judge_lag

log = logging.getLogger(__name__)

APP_PREFIX = "simtune-validate-"

# Deployment.options() keywords a Serve config entry may carry (serve/deployment.py:
# Deployment.options). `name` is set separately.
_OPTION_KEYS = {
    "num_replicas", "ray_actor_options", "placement_group_bundles", "placement_group_strategy",
    "max_replicas_per_node", "user_config", "max_ongoing_requests", "max_queued_requests",
    "autoscaling_config", "graceful_shutdown_wait_loop_s", "graceful_shutdown_timeout_s",
    "health_check_period_s", "health_check_timeout_s", "logging_config", "request_router_config",
    "backpressure_config", "placement_group_bundle_label_selector",
}


class RealRunError(SimtuneError):
    """The real run could not be carried out (cluster, deploy, load generator)."""

    exit_code = 1


@dataclass
class RealRunOptions:
    """What to deploy and how to drive it. Mirrors the CLI options."""

    startup_s: float = 0.0
    gpu_work: bool = False
    address: Optional[str] = None
    proxy_url: Optional[str] = None
    num_cpus: Optional[int] = None
    num_gpus: Optional[int] = None
    http_port: Optional[int] = None
    tail_s: float = 15.0
    poll_interval_s: float = observe.POLL_INTERVAL_S
    max_p99_lag_s: float = DEFAULT_MAX_P99_LAG_S
    max_lag_s: float = DEFAULT_MAX_LAG_S
    drain_timeout_s: float = 60.0
    ready_timeout_s: float = 180.0
    import_path: Optional[str] = None
    request_template: Optional[dict] = None
    worker_niceness: int = 0
    # Test hook: raise after this many seconds of replay (proves cleanup on a crash).
    crash_after_s: Optional[float] = None


@dataclass
class RealRun:
    """Everything observed in one real run, on the trace's time axis."""

    t0: float
    app_name: str
    requests: pd.DataFrame
    timeline: pd.DataFrame
    decisions: pd.DataFrame
    replicas: pd.DataFrame
    lag: LagVerdict
    end_s: float
    env: dict = field(default_factory=dict)
    observation: Optional[observe.Observation] = None

    @property
    def startup_samples(self) -> list[float]:
        """Measured replica startup times (actor creation -> RUNNING), initial ones excluded."""
        df = self.replicas
        if df.empty:
            return []
        s = df.loc[~df["initial"].astype(bool), "startup_s"].dropna()
        return [float(x) for x in s if x >= 0]

    def raw_records(self) -> dict:
        """JSON-ready raw records for fidelity.json."""
        def frame(df: pd.DataFrame) -> dict:
            return {c: [None if (isinstance(v, float) and not np.isfinite(v)) else v
                        for v in df[c].tolist()] for c in df.columns}

        obs = self.observation
        return {
            "t0_wall": self.t0,
            "app_name": self.app_name,
            "end_s": self.end_s,
            "requests": frame(self.requests),
            "timeline": frame(self.timeline),
            "decisions": frame(self.decisions),
            "replicas": frame(self.replicas),
            "polls": obs.polls if obs else [],
            "replica_states": [list(r) for r in obs.replicas] if obs else [],
            "observer_errors": obs.errors if obs else [],
            "load_generator": self.lag.to_dict(),
            "env": self.env,
        }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- cluster


@contextlib.contextmanager
def ray_cluster(opts: RealRunOptions) -> Iterator[dict]:
    """Start a private local Ray + Serve (default) or connect to `opts.address`.

    Yields facts about the cluster (`http_url`, `local`). Local: `address="local"` so we
    never attach to another engineer's cluster on this host; dashboard off to spare CPU.
    """
    import ray
    from ray import serve

    for name in ("ray", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)
    local = opts.address is None
    try:
        if local:
            kwargs: dict[str, Any] = dict(address="local", include_dashboard=False,
                                          log_to_driver=False, logging_level=logging.WARNING)
            if opts.num_cpus is not None:
                kwargs["num_cpus"] = opts.num_cpus
            if opts.num_gpus is not None:
                kwargs["num_gpus"] = opts.num_gpus
            # Ray starts worker processes (the Serve controller, proxy and replicas) at
            # niceness 15 (raylet config `worker_niceness`, env RAY_worker_niceness). On a
            # dedicated node that is harmless; on a shared machine it lets every other
            # job starve Serve and the run measures the neighbours. Our private local
            # cluster runs them at normal priority, as on a dedicated node.
            with _env(RAY_worker_niceness=str(opts.worker_niceness)):
                ray.init(**kwargs)
            port = opts.http_port or free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
        else:
            ray.init(address=opts.address, log_to_driver=False, logging_level=logging.WARNING)
    except BaseException as exc:
        with _no_interrupts():
            if local:
                with contextlib.suppress(Exception):
                    serve.shutdown()
            with contextlib.suppress(Exception):
                ray.shutdown()
        if not isinstance(exc, Exception):
            raise
        where = "a local Ray cluster" if local else f"Ray at {opts.address}"
        hint = ""
        if not local and not os.environ.get("RAY_AUTH_MODE"):
            hint = " (if the cluster uses token authentication, set RAY_AUTH_MODE=token and its token)"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RealRunError(f"cannot start/connect to {where}: {first}{hint}") from None
    try:
        yield {"local": local, "http_url": opts.proxy_url or _proxy_url(), "ray_version": ray.__version__}
    finally:
        with _no_interrupts():
            if local:
                with contextlib.suppress(Exception):
                    serve.shutdown()
            with contextlib.suppress(Exception):
                ray.shutdown()


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    """Set environment variables for the block (inherited by the processes it starts)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _proxy_url() -> str:
    """The Serve HTTP proxy's base URL from the controller's config (HTTPOptions)."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        cfg = ray.get(controller.get_http_config.remote(), timeout=30)
        host = cfg.host if cfg.host not in (None, "", "0.0.0.0", "::") else "127.0.0.1"
        return f"http://{host}:{cfg.port}"
    except Exception:
        return "http://127.0.0.1:8000"


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM while cleaning up (main thread only)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, signal.SIG_IGN)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so `finally` blocks run (main thread only)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# --------------------------------------------------------------------------- deploy


def build_application(spec: Any, opts: RealRunOptions) -> Any:
    """The Serve application to deploy: the stand-in, or the user's app with our options."""
    from ray import serve
    from ray.serve.deployment import Application, Deployment

    options = {k: v for k, v in (spec.deployment_options or {}).items() if k in _OPTION_KEYS}
    if opts.import_path:
        from ray._common.utils import import_attr

        try:
            target = import_attr(opts.import_path)
        except Exception as exc:
            raise InputError(f"--import-path {opts.import_path}: cannot import: {exc}") from None
        if isinstance(target, Deployment):
            return target.options(name=spec.name, **options).bind()
        if isinstance(target, Application):
            dep = target._bound_deployment
            if dep.name != spec.name:
                raise InputError(f"--import-path {opts.import_path}: ingress deployment is {dep.name!r}, "
                                 f"but the config under test is for {spec.name!r}")
            return Application(dep.options(**options))
        raise InputError(f"--import-path {opts.import_path}: expected a Serve Application or Deployment, got {type(target).__name__}")

    from simtune.validate import standin

    dep = serve.deployment(standin.StandIn, name=spec.name).options(**options)
    return dep.bind(startup_s=float(opts.startup_s), gpu_work=bool(opts.gpu_work))


@contextlib.contextmanager
def deployed(spec: Any, opts: RealRunOptions, local: bool) -> Iterator[str]:
    """Deploy under a unique app name and route prefix; always delete it afterwards."""
    by_value: tuple = ()
    if not local and not opts.import_path:
        # The cluster need not have simtune installed: ship the stand-in's code by value.
        from simtune.validate import standin

        by_value = (standin,)
    with deployed_application(lambda: build_application(spec, opts), repr(spec.name), by_value) as app_name:
        yield app_name


@contextlib.contextmanager
def deployed_application(build: Any, what: str, by_value: tuple = ()) -> Iterator[str]:
    """Deploy `build()` (a Serve Application) under a unique app name and route prefix
    (`simtune-validate-<hex>`); always delete it afterwards. `by_value`: modules whose
    code is shipped to the cluster by value (a cluster without simtune installed)."""
    import ray
    from ray import serve

    app_name = f"{APP_PREFIX}{uuid.uuid4().hex[:8]}"
    for module in by_value:
        ray.cloudpickle.register_pickle_by_value(module)
    try:
        try:
            serve.run(build(), name=app_name, route_prefix=f"/{app_name}")
        except SimtuneError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RealRunError(f"deploying {what} failed: {first}") from None
        yield app_name
    finally:
        with _no_interrupts():
            delete_app(app_name)


def delete_app(app_name: str, timeout_s: float = 60.0) -> None:
    """Delete our app and wait until the controller no longer lists it."""
    from ray import serve

    try:
        serve.delete(app_name, _blocking=False)
    except Exception as exc:
        log.warning("deleting %s failed: %s", app_name, exc)
        return
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if app_name not in serve.status().applications:
                return
        except Exception:
            return
        time.sleep(0.25)
    log.warning("app %s still listed %.0f s after delete", app_name, timeout_s)


def wait_steady(fetch: Any, timeout_s: float) -> dict:
    """Wait until running == target and nothing is starting or stopping."""
    deadline = time.time() + timeout_s
    last = None
    while time.time() < deadline:
        d = fetch()
        if d is not None:
            states = [str(getattr(r.state, "value", r.state)) for r in d.replicas]
            last = {"target": d.target_num_replicas, "states": states}
            if states.count("RUNNING") == d.target_num_replicas and len(states) == d.target_num_replicas:
                return last
        time.sleep(0.25)
    raise RealRunError(f"deployment did not settle within {timeout_s:.0f} s (last seen: {last})")


# --------------------------------------------------------------------------- load


def _start_loadgen(url: str, trace: Any, workdir: Path, opts: RealRunOptions,
                   request_timeout_s: Optional[float], duration_s: float,
                   values: Optional[np.ndarray] = None) -> subprocess.Popen:
    """Start the load generator. `values`: the per-request numbers it sends (the `st`
    query parameter, or `{service_time}` in a request template); default the trace's
    service times."""
    st = trace.service_time if values is None else np.asarray(values, dtype=np.float64)
    if st is None:
        raise InputError("the trace has no service_time column; the stand-in needs one per request")
    np.savez(workdir / "trace.npz", timestamps=trace.timestamps, service_time=st)
    cmd = [sys.executable, "-m", "simtune.validate.loadgen", "--url", url,
           "--trace", str(workdir / "trace.npz"), "--out", str(workdir / "requests.parquet"),
           "--request-timeout-s", str(request_timeout_s or 0.0),
           "--client-timeout-s", str(max(600.0, duration_s + 120.0)),
           "--drain-timeout-s", str(opts.drain_timeout_s)]
    if opts.request_template is not None:
        (workdir / "template.json").write_text(json.dumps(opts.request_template))
        cmd += ["--template", str(workdir / "template.json")]
    # Own process group: a Ctrl-C on the terminal reaches us, and we end the child ourselves.
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _stop_child(proc: Optional[subprocess.Popen]) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(Exception):
        proc.terminate()
        proc.wait(timeout=5)
    if proc.poll() is None:
        with contextlib.suppress(Exception):
            proc.kill()
            proc.wait(timeout=5)


def _requests_frame(raw: pd.DataFrame) -> pd.DataFrame:
    df = raw.copy()
    df["latency"] = df["done"] - df["sent"]
    df["lag"] = df["sent"] - df["scheduled"]
    return df


def replay_observed(url: str, trace: Any, workdir: Path, opts: RealRunOptions, request_timeout_s: Optional[float],
                    duration: float, observers: list, values: Optional[np.ndarray] = None) -> tuple[float, float, tuple]:
    """Replay the trace open-loop through the load generator while `observers` poll.

    Returns (t0, end_s, load average at the start); the records are in
    `workdir/requests.parquet` (+ `.json` sidecar). The observers are stopped and the
    generator ended on every exit path.
    """
    proc = None
    started: list = []
    try:
        proc = _start_loadgen(url, trace, workdir, opts, request_timeout_s, duration, values=values)
        ready = proc.stdout.readline().strip() if proc.stdout else ""
        if ready != "READY":
            err = proc.stderr.read() if proc.stderr else ""
            raise RealRunError(f"load generator failed to start: {(err.strip().splitlines() or ['?'])[-1]}")
        for o in observers:
            o.start()
            started.append(o)
        load_start = os.getloadavg()
        t0 = time.time() + 1.0
        proc.stdin.write(f"{t0!r}\n")
        proc.stdin.flush()
        limit = t0 + duration + opts.drain_timeout_s + 60.0
        while proc.poll() is None:
            if opts.crash_after_s is not None and time.time() - t0 > opts.crash_after_s:
                raise RuntimeError("simulated crash (crash_after_s test hook)")
            if time.time() > limit:
                raise RealRunError("load generator did not finish in time")
            time.sleep(0.1)
        out, err = proc.communicate(timeout=10)
        if proc.returncode != 0 or not (workdir / "requests.parquet").exists():
            raise RealRunError(f"load generator failed (rc={proc.returncode}): "
                               f"{(err.strip().splitlines() or ['?'])[-1]}")
        end_s = max(duration + opts.tail_s, time.time() - t0)
        while time.time() - t0 < end_s:
            time.sleep(0.1)
        return t0, end_s, load_start
    finally:
        _stop_child(proc)
        for o in started:
            o.stop()


def run_env(cluster: dict, opts: RealRunOptions, initial: Any, load_start: Any, polls: pd.DataFrame,
            side: dict) -> dict:
    """What the run's machine and settings were (kept in fidelity.json): load, Ray version,
    the load generator's CPU and errors."""
    return {
        "cluster": "local" if cluster["local"] else f"address {opts.address}",
        "ray_version": cluster["ray_version"],
        "initial_state": initial,
        "loadavg_1min_start": load_start[0],
        "loadavg_1min_max": float(polls["loadavg1"].max()) if not polls.empty else None,
        "loadavg_1min_end": os.getloadavg()[0],
        "load_generator_cpu_s": side.get("cpu_s"),
        "load_generator_errors": side.get("errors", {}),
        "poll_interval_s": opts.poll_interval_s,
        "cpu_count": os.cpu_count(),
        "startup_s_configured": opts.startup_s,
        "ray_worker_niceness": opts.worker_niceness if cluster["local"] else "cluster's own",
    }


def run_real(spec: Any, trace: Any, opts: RealRunOptions) -> RealRun:
    """One complete real run. Raises RealRunError/InputError; KeyboardInterrupt passes."""
    if trace.service_time is None and not opts.import_path:
        raise InputError("the trace has no service_time column; the stand-in needs one per request")
    if opts.gpu_work and spec.num_gpus <= 0:
        raise InputError("--gpu-work needs ray_actor_options.num_gpus > 0 in the config under test")
    duration = float(trace.timestamps[-1]) if len(trace) else 0.0
    # SIGTERM -> KeyboardInterrupt is installed *after* ray.init, which installs its own
    # fatal-signal handler for SIGTERM (the core worker's), so that ours wins while our
    # application exists; Ray's is restored when we leave.
    with tempfile.TemporaryDirectory(prefix="simtune-validate-") as tmp, ray_cluster(opts) as cluster, \
            _sigterm_as_interrupt(), deployed(spec, opts, cluster["local"]) as app_name:
        workdir = Path(tmp)
        fetch = observe.controller_details_fetcher(app_name, spec.name)
        initial = wait_steady(fetch, opts.ready_timeout_s)
        url = f"{cluster['http_url'].rstrip('/')}/{app_name}"
        observer = observe.Observer(fetch, opts.poll_interval_s)
        t0, end_s, load_start = replay_observed(url, trace, workdir, opts, spec.request_timeout_s, duration,
                                                [observer])
        obs = observer.obs
        raw = pd.read_parquet(workdir / "requests.parquet")
        side = json.loads((workdir / "requests.parquet.json").read_text())
        log_lines = observe.local_controller_log_lines() if cluster["local"] else None
    requests = _requests_frame(raw)
    if trace.service_time is not None and len(requests) == len(trace):
        requests["service_time"] = trace.service_time
    verdict = judge_lag(requests["lag"].to_numpy(), opts.max_p99_lag_s, opts.max_lag_s)
    polled = observe.decisions_from_polls(obs, t0)
    logged = observe.parse_controller_log(log_lines, app_name, spec.name, t0) if log_lines else None
    decisions = observe.merge_decisions(polled, logged)
    decisions = decisions[(decisions["time"] >= -0.5) & (decisions["time"] <= end_s)].reset_index(drop=True)
    tl = observe.timeline(obs, t0)
    reps = observe.replica_lifecycles(obs, t0, decisions)
    polls = obs.polls_frame()
    env = run_env(cluster, opts, initial, load_start, polls, side)
    env.update({
        "poll_rpc_p99_s": float(polls["rpc_s"].quantile(0.99)) if not polls.empty else None,
        "poll_gap_max_s": float(np.diff(polls["t"]).max()) if len(polls) > 1 else None,
        "decision_source": "controller log + polls" if logged is not None and not logged.empty else "polls",
    })
    return RealRun(t0=t0, app_name=app_name, requests=requests, timeline=tl, decisions=decisions,
                   replicas=reps, lag=verdict, end_s=end_s, env=env, observation=obs)
