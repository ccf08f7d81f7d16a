"""Demo deployments that `simtune profile` (and its tests) can deploy and measure.

CpuBound: a sync handler that burns CPU in pure Python for `?st=SECONDS` (calibrated
  at startup). Serve 2.60 runs sync methods in a thread pool with max_ongoing_requests
  threads (RAY_SERVE_RUN_SYNC_IN_THREADPOOL=1), so concurrent requests share the GIL:
  latency grows with the requests in flight, as a concurrency curve models.
BatchSleep: an async `@serve.batch` handler whose batch takes base_s + per_item_s x n
  (asyncio.sleep, so the event loop keeps forming batches while one runs, reference
  section 7). Each item's response carries its batch size.

Every response is JSON with `t_start`/`t_end` (handler wall times) and `replica`, which
lets the profiler separate the replica's time from the proxy's. This module imports
nothing from simtune (it may be pickled by value to a remote cluster).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

WORK_PARAM = "st"  # same query parameter as the validate stand-in


def _replica_id() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # pragma: no cover - outside a replica
        return "local"


def _spin(n: int) -> int:
    x = 0
    for i in range(n):
        x += i * i % 7
    return x


class CpuBound:
    def __init__(self, calibrate_s: float = 0.3) -> None:
        # Loops per second of this interpreter on this machine (best of 3 short runs).
        best = 0.0
        for _ in range(3):
            n = 20_000
            t0 = time.perf_counter()
            _spin(n)
            best = max(best, n / max(time.perf_counter() - t0, 1e-9))
        self.loops_per_s = best
        self.replica = _replica_id()

    def __call__(self, request: Any) -> dict:
        try:
            work = float(request.query_params.get(WORK_PARAM, "0.05"))
        except ValueError:
            work = 0.05
        start = time.time()
        _spin(int(max(work, 0.0) * self.loops_per_s))
        return {"replica": self.replica, "t_start": start, "t_end": time.time()}


class BatchSleep:
    def __init__(self, base_s: float = 0.02, per_item_s: float = 0.005) -> None:
        self.base_s = float(base_s)
        self.per_item_s = float(per_item_s)
        self.replica = _replica_id()

    async def handle_batch(self, items: list) -> list:
        start = time.time()
        await asyncio.sleep(self.base_s + self.per_item_s * len(items))
        end = time.time()
        return [{"replica": self.replica, "batch_size": len(items), "batch_start": start, "batch_end": end,
                 "t_start": t, "t_end": end} for t in items]

    async def __call__(self, request: Any) -> dict:
        return await self.handle_batch(time.time())


def batch_sleep_deployment(max_batch_size: int = 8, batch_wait_timeout_s: float = 0.02,
                           max_concurrent_batches: int = 1) -> type:
    """BatchSleep with `handle_batch` wrapped in @serve.batch with these settings."""
    from ray import serve

    class BatchSleepDeployment(BatchSleep):
        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s,
                     max_concurrent_batches=max_concurrent_batches)
        async def handle_batch(self, items: list) -> list:
            return await BatchSleep.handle_batch(self, items)

    return BatchSleepDeployment


class Noop:
    """Answers at once: its latency is the request path's own overhead."""

    async def __call__(self, request: Any) -> dict:
        t = time.time()
        return {"replica": "noop", "t_start": t, "t_end": t}
