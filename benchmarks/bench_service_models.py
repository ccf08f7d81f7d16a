"""Benchmark: simulated requests per second for each service model.

Same setting as bench_simulate_day (Poisson arrivals, lognormal service times mean 0.1 s,
autoscaling 1..100 replicas, max_ongoing_requests 8), for `--hours` of traffic at
`--rate` req/s, with each model in turn; the LLM model replays Poisson arrivals carrying
the Azure code trace's token pairs at --llm-rate req/s. Prints requests per CPU-second
(process time: stable on a shared machine) and per wall-second.
Run: python benchmarks/bench_service_models.py [--hours 1] [--rate 100]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from simtune.params import SimParams  # noqa: E402
from simtune.serve_config import load_deployment  # noqa: E402
from simtune.service_models import (  # noqa: E402
    BatchModel, ConcurrencyCurveModel, StreamingModel, load_service_model,
)
from simtune.service_time import parse_service_time  # noqa: E402
from simtune.simulate import simulate  # noqa: E402
from simtune.trace import Trace  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _time(trace, spec, model, dist, seed):
    # Warm the JIT on a small slice so compile time is not counted.
    simulate(trace.take(slice(0, 2000)), spec, SimParams(seed=1), service_time=dist, service_model=model)
    c0, w0 = time.process_time(), time.perf_counter()
    res = simulate(trace, spec, SimParams(seed=seed), service_time=dist, service_model=model)
    return res, time.process_time() - c0, time.perf_counter() - w0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--llm-rate", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    duration = args.hours * 3600
    n = int(rng.poisson(args.rate * duration))
    trace = Trace(np.sort(rng.uniform(0, duration, n)), name="poisson")
    spec = load_deployment({"name": "bench", "max_ongoing_requests": 8, "autoscaling_config": {
        "min_replicas": 1, "max_replicas": 100, "target_ongoing_requests": 4}})
    dist = parse_service_time("lognormal:mean=0.1,p99=0.5")
    models = {
        "fixed": None,
        "streaming": StreamingModel(first_chunk_fraction=0.1),
        "concurrency (PS)": ConcurrencyCurveModel(concurrency=[1, 2, 4, 8], latency_s=[0.1, 0.15, 0.28, 0.55]),
        "concurrency (parallelism 2)": ConcurrencyCurveModel(concurrency=[1, 2, 4, 8],
                                                             latency_s=[0.1, 0.15, 0.28, 0.55], parallelism=2),
        "batch": BatchModel(max_batch_size=8, batch_wait_timeout_s=0.01, max_concurrent_batches=2, base_s=0.05,
                            per_item_s=0.01),
    }
    print(f"{'model':30s} {'requests':>10s} {'req/cpu-s':>12s} {'req/wall-s':>12s} {'p99 latency':>12s}")
    for name, model in models.items():
        res, cpu, wall = _time(trace, spec, model, dist, args.seed)
        p99 = res.summary()["latency_s"]["p99"]
        print(f"{name:30s} {n:>10,d} {n / cpu:>12,.0f} {n / wall:>12,.0f} {p99:>11.3f}s", flush=True)

    from simtune.trace import load_trace

    src = load_trace(REPO.parent / "shared" / "traces" / "azure_llm_2023_code.csv")
    m = int(rng.poisson(args.llm_rate * duration))
    idx = rng.integers(0, len(src), m)
    llm_trace = Trace(np.sort(rng.uniform(0, duration, m)), {k: src.columns[k][idx] for k in ("input_tokens",
                                                                                              "output_tokens")})
    llm_spec = load_deployment({"name": "llm", "max_ongoing_requests": 64, "autoscaling_config": {
        "min_replicas": 1, "max_replicas": 64, "target_ongoing_requests": 8}})
    model = load_service_model(REPO / "traces" / "model_llm.yaml")
    res, cpu, wall = _time(llm_trace, llm_spec, model, None, args.seed)
    s = res.summary()
    steps = "LLM: one event per engine step"
    print(f"{'llm (Llama2-70B/H100)':30s} {m:>10,d} {m / cpu:>12,.0f} {m / wall:>12,.0f} {s['latency_s']['p99']:>11.3f}s"
          f"   ({steps}; TTFT p99 {s['ttft_s']['p99']:.2f}s)")


if __name__ == "__main__":
    main()
