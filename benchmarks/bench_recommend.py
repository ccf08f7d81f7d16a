"""Benchmark: `simtune recommend` trials per minute.

200 trials on a one-hour synthetic trace at about 20 req/s (a diurnal-shaped NHPP,
72k requests, lognormal service time mean 0.1 s), --n-jobs 2, the command's defaults
otherwise (2 simulator seeds per trial, 25 % holdout, batches of 8, SQLite storage).
The issue's target: 200 trials in under 2 minutes on the 2-core dev machine.

    .venv/bin/python benchmarks/bench_recommend.py [--trials 200] [--n-jobs 2]

Prints the wall time of the search alone (first to last trial, from the progress
callback) and of the whole command (worker start-up, search, holdout and baseline
simulations, YAML), and trials per minute for both.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import optuna


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--duration", type=float, default=3600.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    from simtune.trace import save_trace
    from simtune.trace.generators import diurnal
    from simtune.tuner import RecommendOptions, recommend

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trace = diurnal(args.rate, args.duration, peak_to_trough=4.0, period=args.duration, seed=1)
        save_trace(trace, tmp / "hour.parquet")
        opts = RecommendOptions(traces=[str(tmp / "hour.parquet")], slos=["p99=1.0"],
                                service_time="lognormal:mean=0.1,p99=0.5", trials=args.trials, n_jobs=args.n_jobs,
                                storage=f"sqlite:///{tmp / 'study.db'}")
        marks: list[float] = []

        def progress(done: int, total: int, best) -> None:
            marks.append(time.perf_counter())

        t0 = time.perf_counter()
        rec = recommend(opts, progress=progress)
        total = time.perf_counter() - t0
    search = marks[-1] - marks[0] if len(marks) > 1 else total
    n = len(rec.trials)
    print(f"trace: {len(trace):,} requests over {args.duration:.0f} s ({len(trace) / args.duration:.1f} req/s)")
    simulated = sum(t.state.name == "COMPLETE" for t in rec.trials)
    print(f"{n} trials ({simulated} simulated, {n - simulated} pruned as invalid), --n-jobs {args.n_jobs}: "
          f"search {search:.1f} s, whole command {total:.1f} s")
    print(f"trials/minute: {60 * n / search:.0f} (search), {60 * n / total:.0f} (whole command)")
    print(f"under 2 minutes: {'yes' if total < 120 else 'NO'}")


if __name__ == "__main__":
    main()
