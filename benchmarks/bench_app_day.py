"""Benchmark: a three-stage application (Ingest -> Model -> Respond, every deployment
autoscaling) under 24 h of Poisson arrivals at 100 req/s: 8.64 M requests, 25.9 M calls.

Prints simulated calls per wall-second and peak memory (ru_maxrss).
Run: python benchmarks/bench_app_day.py [--hours 24] [--rate 100]
"""

from __future__ import annotations

import argparse
import os
import resource
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from simtune.app import load_app, parse_topology, simulate_app  # noqa: E402
from simtune.params import SimParams  # noqa: E402
from simtune.trace import Trace  # noqa: E402


def _app():
    auto = lambda mo, t, mx: {"max_ongoing_requests": mo, "autoscaling_config": {  # noqa: E731
        "min_replicas": 1, "max_replicas": mx, "target_ongoing_requests": t}}
    cfg = {"applications": [{"name": "bench", "import_path": "x:y", "deployments": [
        {"name": "Ingest", **auto(100, 50, 20)}, {"name": "Model", **auto(8, 4, 200)},
        {"name": "Respond", **auto(100, 20, 20)}]}]}
    topo = parse_topology({"ingress": "Ingest", "deployments": {
        "Ingest": {"service_time": "const:0.002", "calls": ["Model"]},
        "Model": {"service_time": "lognormal:mean=0.1,p99=0.5", "calls": ["Respond"], "after_fraction": 0.1},
        "Respond": {"service_time": "exp:0.005"}}})
    return load_app(cfg, topo)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    duration = args.hours * 3600
    n = int(rng.poisson(args.rate * duration))
    trace = Trace(np.sort(rng.uniform(0, duration, n)), name="poisson")
    app = _app()
    simulate_app(Trace(trace.timestamps[:2000]), app, SimParams(seed=args.seed))  # warm the JIT
    t0 = time.perf_counter()
    res = simulate_app(trace, app, SimParams(seed=args.seed))
    wall = time.perf_counter() - t0
    s = res.summary()
    calls = res.calls.n_calls
    print(f"requests {n:,}  calls {calls:,}  wall {wall:.1f} s (kernel+control {res.wall_s:.1f} s)")
    print(f"calls/s {calls / wall:,.0f}  requests/s {n / wall:,.0f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
    print("replicas max " + ", ".join(f"{k} {v['replicas']['max']:.0f}" for k, v in s["deployments"].items()),
          f"| e2e p50 {s['latency_s']['p50']:.3f} s p99 {s['latency_s']['p99']:.3f} s")


if __name__ == "__main__":
    main()
