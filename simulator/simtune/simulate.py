"""One simulation: trace + deployment config + model parameters -> SimResult.

Data flows one way: the trace's arrays feed the compiled request path
(simtune.dataplane), the simpy control plane (simtune.controller) drives it between
its events, and the arrays it filled become the result (simtune.results).
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np
import simpy

from simtune.cluster_base import Cluster
from simtune.controller import Controller
from simtune.dataplane import DataPlane
from simtune.errors import InputError
from simtune.params import SimParams
from simtune.ray_knobs import RayKnobs, ray_knobs
from simtune.results import SimResult
from simtune.serve_config import DeploymentSpec
from simtune.service_time import ServiceTimeDist
from simtune.trace.model import Trace

__all__ = ["simulate", "SimParams"]


def service_times_for(trace: Trace, service_time: Optional[ServiceTimeDist], seed: int) -> np.ndarray:
    """The trace's own service times, or draws from `service_time` (seeded)."""
    if service_time is not None:
        return service_time.sample(np.random.default_rng([seed, 1]), len(trace))
    own = trace.service_time
    if own is None:
        raise InputError(
            f"trace {trace.name!r} has no service_time column; give a distribution with --service-time "
            "(e.g. const:0.05, exp:0.05, lognormal:mean=0.05,p99=0.4)"
        )
    return own


def sim_start_time(trace: Trace, spec: DeploymentSpec) -> float:
    """When the simulated clock starts: a warm-up before the first request (look-back plus
    two pushes) so the metrics pipeline is in its steady state when traffic begins."""
    cfg = spec.autoscaling
    warmup = float(cfg.look_back_period_s) + 2 * float(cfg.metrics_interval_s) if cfg is not None else 1.0
    return float(trace.timestamps[0]) - warmup


def run_until_drained(env: simpy.Environment, dp, last: float, params: SimParams) -> float:
    """Run past the last arrival until every request has ended (up to drain_limit_s), then
    `tail_s` more; returns the horizon. `dp`: a DataPlane or simtune.app's AppDataPlane."""
    env.run(until=last + 1e-9)
    limit = last + params.drain_limit_s
    step = 1.0
    while not dp.idle() and env.now < limit:
        env.run(until=min(env.now + step, limit))
        step = min(step * 2, 60.0)
    dp.advance(env.now)
    ended = dp.end[np.isfinite(dp.end)]
    horizon = max(last, float(ended.max()) if ended.size else last)
    if params.tail_s > 0:
        horizon += params.tail_s
        if horizon > env.now:
            env.run(until=horizon)
    return horizon


def simulate(
    trace: Trace,
    spec: DeploymentSpec,
    params: Optional[SimParams] = None,
    *,
    service_time: Optional[ServiceTimeDist] = None,
    seed: Optional[int] = None,
    knobs: Optional[RayKnobs] = None,
    cluster: Optional[Cluster] = None,
    service_model=None,
) -> SimResult:
    """Replay `trace` through a model of Serve running `spec`; deterministic given the seed."""
    params = params or SimParams()
    seed = params.seed if seed is None else int(seed)
    knobs = knobs or ray_knobs()
    if len(trace) == 0:
        raise InputError(f"trace {trace.name!r} has no requests")
    svc = (service_times_for(trace, service_time, seed) if service_model is None
           else service_model.service_times(trace, service_time, seed))
    wall0 = time.perf_counter()
    cfg = spec.autoscaling
    t_start = sim_start_time(trace, spec)
    env = simpy.Environment(initial_time=t_start)
    backoff = spec.router_backoff or (knobs.router_initial_backoff_s, knobs.router_backoff_multiplier,
                                      knobs.router_max_backoff_s)
    dp = DataPlane(
        trace.timestamps, svc,
        max_ongoing_requests=spec.max_ongoing_requests, max_queued_requests=spec.max_queued_requests,
        request_timeout_s=spec.request_timeout_s, backoff=backoff, immediate_attempts=params.immediate_attempts,
        backoff_resets=params.router_backoff_resets,
        slot_overhead_s=params.slot_overhead_s, seed=seed,
        replica_capacity=max(64, 2 * (cfg.max_replicas if cfg is not None else spec.num_replicas)),
        service_model=service_model, columns=trace.columns,
    )
    rng = np.random.default_rng([seed, 2])
    ctrl = Controller(env, spec, knobs, params, dp, rng, t_start, cluster=cluster)
    last = float(trace.timestamps[-1])
    horizon = run_until_drained(env, dp, last, params)
    if cluster is not None:
        cluster.finish(horizon)
    wall = time.perf_counter() - wall0
    return SimResult(
        arrival=dp.arr_t, start=dp.start, end=dp.end, status=dp.status, replica=dp.replica, service_time=svc,
        proxy_overhead_s=params.proxy_overhead_s, timeline=ctrl.timeline, decisions_list=ctrl.decisions,
        replica_records=ctrl.replicas + ctrl.stopped, horizon=horizon, wall_s=wall,
        ticks_executed=ctrl.ticks_executed, num_gpus=spec.num_gpus,
        cluster=cluster,
        meta={"deployment": f"{spec.app_name}/{spec.name}", "ray_version": knobs.ray_version, "seed": seed,
              "startup_model": params.startup.describe(),
              **({"service_model": service_model.describe()} if service_model is not None else {})},
        **dp.model_outputs(params.proxy_overhead_s),
    )
