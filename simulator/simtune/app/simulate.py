"""One simulation of a whole application: trace + AppSpec + parameters -> AppResult.

Each deployment has its own controller state, autoscaler, handle metrics and replicas
(simtune.controller.Controller, the same code as for one deployment); they share one
controller tick grid, as Serve's single controller process runs every deployment's
update in the same loop (serve/_private/controller.py:run_control_loop). The request
path of all deployments is one compiled loop (simtune.app.kernel).

Modelling choices a reader should know:
  * One router per deployment: the proxy's for the ingress, and one shared by all the
    callers of a downstream deployment (Serve has one per calling replica). The
    autoscaling metric is the sum either way; routing under saturation can differ.
  * Downstream calls have no timeout of their own; the proxy's request_timeout_s
    cancels the whole call tree.
  * A downstream deployment scaled to zero learns of demand at its handle's next
    metrics push (the scale-from-zero push of the proxy handle is modelled at the
    ingress only).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional

import numpy as np
import simpy

from simtune.app.calls import CallTable, draw_calls, multiplex_arrays, own_times
from simtune.app.plane import AppDataPlane
from simtune.app.result import AppResult
from simtune.app.spec import AppSpec
from simtune.controller import Controller
from simtune.errors import InputError
from simtune.params import SimParams
from simtune.ray_knobs import RayKnobs, ray_knobs
from simtune.results import SimResult
from simtune.simulate import run_until_drained, sim_start_time
from simtune.trace.model import Trace


def simulate_app(trace: Trace, app: AppSpec, params: Optional[SimParams] = None, *, seed: Optional[int] = None,
                 knobs: Optional[RayKnobs] = None) -> AppResult:
    """Replay `trace` into the application's ingress; deterministic given the seed."""
    params = params or SimParams()
    seed = params.seed if seed is None else int(seed)
    knobs = knobs or ray_knobs()
    if len(trace) == 0:
        raise InputError(f"trace {trace.name!r} has no requests")
    topo = app.topology
    table = draw_calls(topo, len(trace), seed)
    names = table.names
    specs = [app.specs[n] for n in names]
    models = [app.models.get(n) for n in names]
    before, after = own_times(topo, table, trace, seed, app.models)
    wall0 = time.perf_counter()
    t_start = min(sim_start_time(trace, s) for s in specs)
    env = simpy.Environment(initial_time=t_start)
    backoffs = [s.router_backoff or (knobs.router_initial_backoff_s, knobs.router_backoff_multiplier,
                                     knobs.router_max_backoff_s) for s in specs]
    cap = max(64, 2 * max((s.autoscaling.max_replicas if s.autoscaling is not None else s.num_replicas)
                          for s in specs))
    view_delay = (params.multiplex_view_delay_s if params.multiplex_view_delay_s is not None
                  else knobs.multiplex_push_interval_s)
    mux = multiplex_arrays(topo, table, trace, seed, cap, knobs.multiplex_matching_timeout_s, view_delay,
                           [int(s.max_ongoing_requests) for s in specs])
    plane = AppDataPlane(trace.timestamps, table, before, after, specs, backoffs=backoffs,
                         immediate_attempts=params.immediate_attempts, backoff_resets=params.router_backoff_resets,
                         slot_overhead_s=params.slot_overhead_s, seed=seed, replica_capacity=cap, models=models,
                         columns=trace.columns, multiplex=mux,
                         calls_first=[topo.nodes[n].model_after_calls for n in names],
                         call_overhead_s=params.call_overhead_s)
    rng = np.random.default_rng([seed, 2])
    # One controller loop for every deployment: a shared tick phase.
    period = knobs.control_loop_interval_s + params.controller_step_s
    phase = params.tick_phase_s if params.tick_phase_s is not None else float(rng.uniform(0, period))
    ctrl_params = dataclasses.replace(params, tick_phase_s=phase)
    # The ingress's controller continues `rng` exactly as simtune.simulate does, so an
    # application of one deployment is the single-deployment simulation, bit for bit.
    controllers = [Controller(env, spec, knobs, ctrl_params, plane.views[d],
                              rng if d == 0 else np.random.default_rng([seed, 2, d]), t_start)
                   for d, spec in enumerate(specs)]
    for c in controllers:
        c.peers = controllers
    horizon = run_until_drained(env, plane, float(trace.timestamps[-1]), params)
    wall = time.perf_counter() - wall0
    results: dict[str, SimResult] = {}
    for d, (name, spec, ctrl) in enumerate(zip(names, specs, controllers)):
        calls = table.calls_of(d)
        results[name] = SimResult(
            arrival=plane.arr_t[calls], start=plane.start[calls], end=plane.end[calls],
            status=plane.status[calls], replica=plane.replica[calls],
            service_time=before[calls] + after[calls],
            proxy_overhead_s=params.proxy_overhead_s if d == 0 else 0.0,
            timeline=ctrl.timeline, decisions_list=ctrl.decisions, replica_records=ctrl.replicas + ctrl.stopped,
            horizon=horizon, wall_s=wall, ticks_executed=ctrl.ticks_executed, num_gpus=spec.num_gpus,
            meta={"deployment": f"{spec.app_name}/{name}", "ray_version": knobs.ray_version, "seed": seed,
                  "startup_model": params.startup.describe(),
                  **({"service_model": models[d].describe()} if models[d] is not None else {})},
            **plane.model_outputs(d, calls, params.proxy_overhead_s if d == 0 else 0.0),
        )
        if mux[d] is not None:
            # a hit: its own work began as soon as it reached the replica (no load, no lock wait)
            r = results[name]
            work = r.end - r.start - (before[calls] + after[calls]) - params.slot_overhead_s
            r.model_hit = (r.status == 200) & (work < 1e-9)
    if topo.streams_from is not None and topo.streams_from != names[0]:
        _stream_end_to_end(results[names[0]], results[topo.streams_from], table, names.index(topo.streams_from))
    return AppResult(results, names[0], table, wall,
                     meta={"application": app.app_name, "ingress": names[0], "seed": seed,
                           "ray_version": knobs.ray_version, "deployments_order": names})


def _stream_end_to_end(ingress: SimResult, source: SimResult, table: CallTable, d: int) -> None:
    """The client's TTFT/TPOT are those of the streaming deployment's call, measured
    from the request's arrival at the ingress (NaN unless the request succeeded)."""
    calls = table.calls_of(d)
    roots = table.root[calls]
    n = ingress.arrival.shape[0]
    for name in ("ttft", "tpot"):
        v = getattr(source, name)
        if v is None:
            continue
        out = np.full(n, np.nan)
        if name == "ttft":
            out[roots] = v + (source.arrival - ingress.arrival[roots])
        else:
            out[roots] = v
        out[ingress.status != 200] = np.nan
        setattr(ingress, name, out)
