"""Benchmark: 24 h of Poisson arrivals at 100 req/s (8.64 M requests), autoscaling on.

Prints simulated requests per wall-second and peak memory (ru_maxrss). The bar from
issue 2: >= 500,000 requests/s on one core and < 2 GiB peak memory.
Run: python benchmarks/bench_simulate_day.py [--hours 24] [--rate 100]
"""

from __future__ import annotations

import argparse
import os
import resource
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from simtune.params import SimParams  # noqa: E402
from simtune.serve_config import load_deployment  # noqa: E402
from simtune.service_time import parse_service_time  # noqa: E402
from simtune.simulate import simulate  # noqa: E402
from simtune.trace import Trace  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    duration = args.hours * 3600
    n = int(rng.poisson(args.rate * duration))
    arrivals = np.sort(rng.uniform(0, duration, n))
    trace = Trace(arrivals, name="poisson")
    spec = load_deployment({"name": "bench", "max_ongoing_requests": 8, "autoscaling_config": {
        "min_replicas": 1, "max_replicas": 100, "target_ongoing_requests": 4}})
    dist = parse_service_time("lognormal:mean=0.1,p99=0.5")
    # Warm the JIT on a small slice so compile time is not counted.
    simulate(trace.take(slice(0, 2000)), spec, SimParams(seed=1), service_time=dist)
    t0 = time.perf_counter()
    res = simulate(trace, spec, SimParams(seed=args.seed), service_time=dist)
    wall = time.perf_counter() - t0
    s = res.summary()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"requests            {n:,}")
    print(f"wall                {wall:.2f} s")
    print(f"requests per second {n / wall:,.0f}")
    print(f"peak memory         {peak_mib:,.0f} MiB")
    print(f"controller ticks    {res.ticks_executed:,} executed of {int(duration / 0.1):,}")
    print(f"replicas            min {s['replicas']['min']:.0f} mean {s['replicas']['mean']:.1f} max {s['replicas']['max']:.0f}")
    print(f"latency p50/p99     {s['latency_s']['p50']:.3f} / {s['latency_s']['p99']:.3f} s")


if __name__ == "__main__":
    main()
