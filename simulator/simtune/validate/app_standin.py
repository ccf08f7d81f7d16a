"""The stand-in *application* deployed by `simtune validate --topology`.

One Serve deployment per topology node, all from the class `StageStandIn` below, bound
into the call graph the topology describes (`Ingest.bind(handles={"Model":
Model.bind(...)})`; serve/_private/build_app.py replaces the bound children with
DeploymentHandles). Each deployment gets the options of its DeploymentSpec (the Serve
config under test: autoscaling_config, max_ongoing_requests, ...), and its replicas
reserve no CPU unless the config says otherwise (`num_cpus: 0`: they only sleep).

Same work as the simulator, call for call: the driver draws the application's call
plan with simtune's own code (`simtune.app.calls.draw_calls` + `own_times`, the same
seed as the simulation), so every call's own work before/after its downstream calls,
which probability branches are taken and the fan-out are *identical* on both sides.
Each deployment receives its own part of the plan in its constructor
(`{call id: (before_s, after_s, ((child deployment, child call id), ...))}`); the load
generator sends request i as `GET /<app>?call=i` (calls 0..n-1 are the trace's
requests), and a replica passes the child call ids down through its handles. A handler
sleeps `before` (asyncio, so up to max_ongoing_requests calls interleave per replica),
awaits its downstream calls in order (`sequential`) or together (`parallel`:
asyncio.gather), sleeps `after`, and returns. It holds its max_ongoing_requests slot
throughout, as a real composed application does (serve/_private/replica.py runs the
handler as one task).

Each response carries the replica id and the handler's wall start/end, like the
single-deployment stand-in (simtune.validate.standin), so the load generator records
them for the ingress. With `record_dir` (local clusters: the replicas share this
host), every replica also appends one JSON line per call it served: its handler
start/end and, for each downstream call, the caller-side send/return times and the
callee's handler times, from which the per-hop cost of a DeploymentHandle call is
measured (simtune.validate.app_real.call_records).

Like standin.py this module is pickled *by value* for a remote cluster (`--address`):
nothing from simtune is imported at module level, and the driver-side helpers at the
bottom import it inside the functions.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any, Optional

#: Query parameter carrying the request's call id (its row in the trace).
CALL_PARAM = "call"

#: Request template for the load generator: `{service_time}` is replaced by the value the
#: harness passes per request, here the request index (harness.replay_observed(values=)).
REQUEST_TEMPLATE = {"method": "GET", "path": "?" + CALL_PARAM + "={service_time}"}


class StageStandIn:
    """One deployment of the stand-in application."""

    def __init__(self, name: str, plan: dict, mode: str = "sequential", handles: Optional[dict] = None,
                 record_dir: Optional[str] = None, startup_s: float = 0.0) -> None:
        t0 = time.time()
        self._name = name
        self._plan = plan
        self._parallel = mode == "parallel"
        self._handles = dict(handles or {})
        try:
            from ray import serve

            self._replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # pragma: no cover - outside a replica (unit use)
            self._replica = "local"
        self._records = None
        if record_dir:
            try:
                os.makedirs(record_dir, exist_ok=True)
                path = os.path.join(record_dir, f"{name}-{self._replica}.jsonl")
                self._records = open(path, "a", buffering=1)  # line-buffered: survives a stop
            except OSError:
                self._records = None
        remaining = float(startup_s) - (time.time() - t0)
        if remaining > 0:
            time.sleep(remaining)  # a blocking constructor, like a model load

    async def __call__(self, request: Any) -> dict:
        start = time.time()
        call = request if isinstance(request, int) else _parse_call(request)
        before, after, children = self._plan.get(call, (0.0, 0.0, ()))
        hops: list = []
        ok = False
        try:
            if before > 0:
                await asyncio.sleep(before)
            if children:
                if self._parallel:
                    await asyncio.gather(*(self._call(dep, c, hops) for dep, c in children))
                else:
                    for dep, c in children:
                        await self._call(dep, c, hops)
            if after > 0:
                await asyncio.sleep(after)
            ok = True
        finally:
            end = time.time()
            if self._records is not None:
                try:
                    self._records.write(json.dumps({"dep": self._name, "call": call, "replica": self._replica,
                                                    "t_start": start, "t_end": end, "ok": ok, "hops": hops}) + "\n")
                except (OSError, ValueError):
                    pass
        return {"replica": self._replica, "t_start": start, "t_end": end, "call": call}

    async def _call(self, dep: str, child: int, hops: list) -> None:
        """One downstream call; records [dep, call, sent, returned, callee start, callee end, ok]."""
        sent = time.time()
        try:
            out = await self._handles[dep].remote(child)
        except BaseException:
            hops.append([dep, child, sent, time.time(), None, None, False])
            raise
        hops.append([dep, child, sent, time.time(), out.get("t_start"), out.get("t_end"), True])

    def __del__(self) -> None:  # pragma: no cover - best effort
        if self._records is not None:
            try:
                self._records.close()
            except Exception:
                pass


def _parse_call(request: Any) -> Optional[int]:
    try:
        raw = request.query_params.get(CALL_PARAM)
        return int(float(raw)) if raw is not None else None
    except (AttributeError, TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- driver side


class CallPlan:
    """Every call the trace makes through the application, with its own work.

    `table` is simtune.app.calls.CallTable (drawn with `seed`, as simulate_app does),
    `before`/`after` each call's own work (simtune.app.calls.own_times). `per_deployment`
    is what each deployment's replicas receive.
    """

    def __init__(self, table: Any, before: Any, after: Any, seed: int) -> None:
        self.table, self.before, self.after, self.seed = table, before, after, int(seed)
        names, cptr, clist, dep = table.names, table.cptr, table.clist, table.dep
        self.per_deployment: dict[str, dict] = {n: {} for n in names}
        for c in range(table.n_calls):
            kids = tuple((names[int(dep[k])], int(k)) for k in clist[cptr[c]:cptr[c + 1]])
            self.per_deployment[names[int(dep[c])]][c] = (float(before[c]), float(after[c]), kids)

    @property
    def n_calls(self) -> int:
        return int(self.table.n_calls)


def call_plan(app: Any, trace: Any, seed: int) -> CallPlan:
    """The plan simulate_app(trace, app, seed=seed) simulates, for the real run."""
    from simtune.app.calls import draw_calls, own_times

    table = draw_calls(app.topology, len(trace), seed)
    before, after = own_times(app.topology, table, trace, seed, app.models)
    return CallPlan(table, before, after, seed)


def stand_in_options(spec: Any) -> dict:
    """Deployment.options() keywords from a DeploymentSpec; replicas reserve no CPU
    unless the config asks for some (the stand-in only sleeps)."""
    from simtune.validate.harness import _OPTION_KEYS

    options = {k: v for k, v in (spec.deployment_options or {}).items() if k in _OPTION_KEYS}
    actor = dict(options.get("ray_actor_options") or {})
    actor.setdefault("num_cpus", 0)
    options["ray_actor_options"] = actor
    return options


def build_app_standin(app: Any, plan: CallPlan, *, record_dir: Optional[str] = None,
                      startup_s: float = 0.0) -> Any:
    """The Serve application: one StageStandIn deployment per topology node, bound
    children first, each with its DeploymentSpec's options and its part of the plan."""
    from ray import serve

    from simtune.errors import InputError

    topo = app.topology
    unsupported = [n for n in topo.order() if app.models.get(n) is not None or topo.nodes[n].multiplex is not None]
    if unsupported:
        raise InputError(f"{topo.source}: the stand-in application sleeps fixed own times; deployment(s) "
                         f"{', '.join(unsupported)} use a service model or multiplexing, which it does not "
                         "reproduce")
    bound: dict[str, Any] = {}

    def bind(name: str) -> Any:
        if name in bound:
            return bound[name]
        node = topo.nodes[name]
        handles = {}
        for c in node.calls:
            if c.to not in handles:
                handles[c.to] = bind(c.to)
        dep = serve.deployment(StageStandIn, name=name).options(**stand_in_options(app.specs[name]))
        bound[name] = dep.bind(name=name, plan=plan.per_deployment.get(name, {}), mode=node.mode,
                               handles=handles, record_dir=record_dir, startup_s=float(startup_s))
        return bound[name]

    return bind(topo.ingress)
