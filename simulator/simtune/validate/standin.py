"""The stand-in deployment deployed by `simtune validate`.

Why a stand-in: to measure the *autoscaler and request path* of Ray Serve, not a model,
every request holds its replica for exactly the `service_time` the trace gives it, and
the constructor takes the configured startup time, so the real run and the simulator
see the same demand. The handler is `async` so up to `max_ongoing_requests` requests
interleave on one replica, as the simulator assumes (serve/_private/replica.py:
UserCallableWrapper runs async methods on the user event loop, concurrently).

The response carries the replica id and the handler's own start/end wall times, so the
comparison can split a request's latency into queueing + overhead + service.

This module is pickled *by value* when deploying to a remote cluster (`--address`), so
it must import nothing from simtune at module level: the cluster need not have simtune.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Optional

#: Query parameter carrying the request's service time in seconds.
SERVICE_TIME_PARAM = "st"


class StandIn:
    """Sleeps (or keeps the GPU busy) for each request's service time."""

    def __init__(self, startup_s: float = 0.0, gpu_work: bool = False) -> None:
        t0 = time.time()
        self._gpu = None
        if gpu_work:
            self._gpu = _GpuWork()
        # A blocking sleep, like a model load: the replica is not ready until it ends
        # (serve/_private/replica.py:Replica.initialize runs the constructor first).
        remaining = float(startup_s) - (time.time() - t0)
        if remaining > 0:
            time.sleep(remaining)
        try:
            from ray import serve

            self._replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # pragma: no cover - outside a replica (unit use)
            self._replica = "local"

    async def __call__(self, request: Any) -> dict:
        service_time = _parse_service_time(request.query_params.get(SERVICE_TIME_PARAM))
        start = time.time()
        if self._gpu is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._gpu.busy_for, service_time)
        elif service_time > 0:
            await asyncio.sleep(service_time)
        return {"replica": self._replica, "t_start": start, "t_end": time.time()}


def _parse_service_time(raw: Optional[str]) -> float:
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        return 0.0
    return value if value > 0 else 0.0


class _GpuWork:
    """Occupies the replica's GPU with real matmul kernels for a given wall time.

    Why: with `--gpu-work` the replica's accelerator is really busy, so GPU contention
    between concurrent requests on one replica shows up in the measured latency.
    """

    def __init__(self, size: int = 2048) -> None:
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            raise RuntimeError(
                "--gpu-work needs torch installed in the replica's environment "
                f"(import torch failed: {exc})"
            ) from None
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("--gpu-work: torch sees no CUDA device in this replica (set num_gpus in ray_actor_options)")
        self._torch = torch
        self._a = torch.randn(size, size, device="cuda")
        self._b = torch.randn(size, size, device="cuda")
        torch.cuda.synchronize()

    def busy_for(self, seconds: float) -> None:
        torch = self._torch
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            # One kernel is ~ms on a modern GPU; synchronize so the loop tracks wall time.
            torch.matmul(self._a, self._b)
            torch.cuda.synchronize()
