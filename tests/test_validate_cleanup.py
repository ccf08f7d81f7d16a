"""`simtune validate --address`: nothing of ours is left on the cluster, whatever happens.

A stand-in "existing cluster" is started by a helper process (its own `ray.init` head +
Serve, plus a bystander application that must survive). Then `simtune validate
--address` runs three times as a separate process: to the end, interrupted with
SIGINT (Ctrl-C) or SIGTERM mid-replay, and crashing mid-replay (test hook
SIMTUNE_VALIDATE_CRASH_AFTER_S). After each, the cluster must list no
`simtune-validate-*` application and still list the bystander.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

HELPER = textwrap.dedent("""
    import signal, sys, time, ray
    from ray import serve
    from simtune.validate.harness import free_port
    ray.init(address="local", include_dashboard=False, log_to_driver=False, num_cpus=2)
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    def bystander(request):
        return "still here"

    serve.run(bystander.bind(), name="bystander", route_prefix="/bystander")
    print(ray.get_runtime_context().gcs_address, flush=True)
    stop = False
    def on_term(*_):
        global stop
        stop = True
    signal.signal(signal.SIGTERM, on_term)
    while not stop and sys.stdin.readline():
        pass
    serve.shutdown()
    ray.shutdown()
""")

CONFIG = textwrap.dedent("""
    name: standin
    max_ongoing_requests: 4
    graceful_shutdown_wait_loop_s: 0.5
    ray_actor_options: {num_cpus: 0}
    autoscaling_config: {min_replicas: 1, max_replicas: 2, metrics_interval_s: 1, look_back_period_s: 5,
                         upscale_delay_s: 2, downscale_delay_s: 5}
""")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    proc = subprocess.Popen([sys.executable, "-c", HELPER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=tmp)
    address = proc.stdout.readline().strip()
    assert address, "helper cluster did not start"
    import ray

    # Ray 2.60 local clusters use token auth (~/.ray/auth_token); a second driver must
    # opt in explicitly to present the token. The env var reaches the CLI processes; this
    # process already imported ray, so its cached config is refreshed too.
    old_mode = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "token"
    try:
        from ray._private.authentication.authentication_token_setup import _enable_token_auth

        _enable_token_auth()
    except ImportError:
        pass
    ray.init(address=address, log_to_driver=False)
    try:
        yield address
    finally:
        ray.shutdown()
        if old_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = old_mode
        proc.stdin.close()  # the helper shuts its cluster down and exits
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def _apps() -> list[str]:
    from ray import serve

    return list(serve.status().applications)


def _ours(apps: list[str]) -> list[str]:
    return [a for a in apps if a.startswith("simtune-validate-")]


def _files(tmp: Path) -> tuple[Path, Path]:
    cfg = tmp / "config.yaml"
    cfg.write_text(CONFIG)
    trace = tmp / "trace.csv"
    lines = ["timestamp,service_time"] + [f"{i * 0.1:.3f},0.05" for i in range(150)]  # 15 s at 10 req/s
    trace.write_text("\n".join(lines) + "\n")
    return cfg, trace


def _cli(address: str, tmp: Path, out: str, env: dict | None = None) -> subprocess.Popen:
    cfg, trace = _files(tmp)
    cmd = [sys.executable, "-c", "from simtune.cli.validate_cmd import main; main()", "--config", str(cfg), "--trace", str(trace),
           "--address", address, "--tail-s", "1", "--out", str(tmp / out)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def _wait_for_our_app(proc: subprocess.Popen, timeout_s: float = 90) -> str:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        ours = _ours(_apps())
        if ours:
            return ours[0]
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.5)
    raise AssertionError("our application never appeared")


def test_normal_run_leaves_nothing(cluster, tmp_path):
    proc = _cli(cluster, tmp_path, "out")
    _, err = proc.communicate(timeout=240)
    assert proc.returncode in (0, 1), err[-3000:]  # 1 only if the run was judged invalid
    assert (tmp_path / "out" / "fidelity.json").exists()
    apps = _apps()
    assert _ours(apps) == [] and "bystander" in apps


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_mid_run_leaves_nothing(cluster, tmp_path, sig):
    proc = _cli(cluster, tmp_path, "out")
    _wait_for_our_app(proc)
    time.sleep(7)  # deployed, replay under way
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    apps = _apps()
    assert _ours(apps) == [] and "bystander" in apps
    assert not (tmp_path / "out").exists()  # nothing half-written
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_crash_mid_run_leaves_nothing(cluster, tmp_path):
    proc = _cli(cluster, tmp_path, "out", env={"SIMTUNE_VALIDATE_CRASH_AFTER_S": "3"})
    _, err = proc.communicate(timeout=180)
    assert proc.returncode != 0 and "simulated crash" in err, err[-3000:]
    apps = _apps()
    assert _ours(apps) == [] and "bystander" in apps
    assert not (tmp_path / "out").exists()
