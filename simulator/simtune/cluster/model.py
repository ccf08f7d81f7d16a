"""A node-level cluster: replicas wait for nodes, Ray's autoscaler adds and removes them.

Implements the controller's Cluster protocol (simtune.cluster_base):
  * `request(t, rid)`: a new replica asks for its resources (PENDING_ALLOCATION, reference
    5.1). It gets them at once on a running node with room; or at the time a node that is
    already being provisioned becomes ready; or the autoscaler launches a node for it (at
    its next update, every `autoscaler_interval_s` = AUTOSCALER_UPDATE_INTERVAL_S, 5 s) and
    it gets the node when provisioning ends (`provisioning` distribution: pod scheduling,
    the cloud's node autoscaler, image pull, `ray start`). If every group that fits it is
    at maxReplicas it waits (None) until another replica's release frees room.
  * `release(t, rid)`: a replica stopped (or was cancelled while waiting). Its room goes to
    waiting replicas first (FIFO), then to replicas waiting for a node still being
    provisioned (Ray schedules the pending actor wherever room appears first).
  * A worker node with no replicas is removed once it has been idle `idleTimeoutSeconds`
    (at the autoscaler update after that), never below the group's minReplicas. Removals
    are applied lazily: nothing can change while no request or release happens.
Which node gets a replica: Serve's default SPREAD (fewest replicas of the deployment
first) or PACK (most used first; RAY_SERVE_USE_PACK_SCHEDULING_STRATEGY=1). Which group
the autoscaler launches: Ray's own `_resource_based_utilization_scorer` (no GPU nodes for
CPU-only replicas, most matching resource types, best utilization). Billing of a node
runs from its launch to its removal (the cloud bills a VM while it boots).

Modelled for one deployment: other applications' use of the cluster is not simulated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np
import pandas as pd

from simtune.cluster.manifest import ClusterSpec, NodeType, ReplicaDemand, check_fits, fits
from simtune.errors import InputError
from simtune.service_time import ServiceTimeDist, parse_service_time

DEFAULT_AUTOSCALER_INTERVAL_S = 5.0  # ray/autoscaler/_private/constants.py AUTOSCALER_UPDATE_INTERVAL_S


def parse_delay(spec: Union[str, float, int, ServiceTimeDist, None], option: str = "--node-provisioning-s") -> ServiceTimeDist:
    """A delay distribution: seconds (`90`), or a spec (`lognormal:mean=90,p99=240`, `exp:60`...)."""
    if isinstance(spec, ServiceTimeDist):
        return spec
    if spec is None:
        spec = 0.0
    if isinstance(spec, (int, float)):
        if not math.isfinite(float(spec)) or spec < 0:
            raise InputError(f"{option} {spec!r}: must be >= 0 seconds")
        spec = f"const:{float(spec):g}"
    text = str(spec).strip()
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is not None:
        return parse_delay(value, option)
    try:
        return parse_service_time(text)
    except InputError as exc:
        raise InputError(str(exc).replace("--service-time", option)) from None


@dataclass
class Node:
    nid: int
    type: NodeType
    launch_t: float  # the autoscaler asked for it (billing starts)
    ready_t: float  # Ray can place replicas on it
    initial: bool = False
    removed_t: float = math.inf
    used: dict[str, float] = field(default_factory=dict)
    replicas: set[int] = field(default_factory=set)
    idle_since: Optional[float] = None  # set while it holds no replicas
    cancelled: bool = False  # its demand went away before the autoscaler's update

    def alive_at(self, t: float) -> bool:
        return self.launch_t <= t < self.removed_t


@dataclass
class Grant:
    rid: int
    requested_t: float
    granted_t: Optional[float] = None
    node: Optional[int] = None
    how: str = "waiting"  # free | provisioning | launched | released | warm | waiting
    released_t: Optional[float] = None
    initial: bool = False

    @property
    def node_wait_s(self) -> Optional[float]:
        return None if self.granted_t is None else self.granted_t - self.requested_t


class NodeCluster:
    """Nodes of a RayService's groups under Ray's autoscaler; see the module docstring."""

    def __init__(self, spec: ClusterSpec, demand: ReplicaDemand, *,
                 provisioning: Union[str, float, ServiceTimeDist, None] = 90.0,
                 autoscaler_interval_s: float = DEFAULT_AUTOSCALER_INTERVAL_S,
                 scheduling: str = "spread", warm_start: bool = True, start_t: Optional[float] = None,
                 seed: int = 0, deployment: str = "the deployment") -> None:
        if scheduling not in ("spread", "pack"):
            raise InputError(f"scheduling {scheduling!r}: expected spread or pack")
        if autoscaler_interval_s < 0:
            raise InputError("autoscaler interval must be >= 0")
        self.spec, self.demand = spec, demand
        self.feasible = check_fits(spec, demand, deployment)  # raises before any simulation
        self.provisioning = parse_delay(provisioning)
        self.autoscaler_interval_s = float(autoscaler_interval_s)
        self.scheduling = scheduling
        self.warm_start = warm_start
        self.start_t = start_t
        self.seed = seed
        self._rng = np.random.default_rng([int(seed), 7])
        self._phase = float(self._rng.uniform(0, self.autoscaler_interval_s)) if self.autoscaler_interval_s else 0.0
        self.nodes: list[Node] = []
        self.grants: dict[int, Grant] = {}
        self.waiting: list[int] = []  # FIFO of rids with no room anywhere
        self._future: set[int] = set()  # rids granted a node that is still being provisioned
        self._origin: Optional[float] = None
        self._released_any = False
        self.end_t: Optional[float] = None
        self.launches = 0

    # -- time helpers ----------------------------------------------------------------------
    def _next_update(self, t: float) -> float:
        """The autoscaler's first update at or after t."""
        p = self.autoscaler_interval_s
        if p <= 0:
            return t
        k = math.ceil((t - self._phase) / p - 1e-12)
        return self._phase + k * p

    def _alive(self) -> list[Node]:
        return [n for n in self.nodes if math.isinf(n.removed_t)]  # up, or being provisioned

    def _count(self, nt: NodeType) -> int:
        return sum(1 for n in self._alive() if n.type is nt)

    def _new_node(self, nt: NodeType, launch_t: float, ready_t: float, initial: bool = False) -> Node:
        node = Node(len(self.nodes), nt, launch_t, ready_t, initial=initial, idle_since=ready_t)
        self.nodes.append(node)
        return node

    def _start(self, t: float) -> None:
        """The cluster as it stands when the simulation starts: head + each group's pods."""
        self._origin = t if self.start_t is None else min(self.start_t, t)
        for nt in self.spec.node_types.values():
            for _ in range(nt.initial_nodes if not nt.is_head else 1):
                self._new_node(nt, self._origin, self._origin, initial=True)

    # -- idle removal ---------------------------------------------------------------------------
    def _removal_time(self, n: Node) -> float:
        if n.type.is_head or n.replicas or n.idle_since is None or not math.isinf(n.removed_t):
            return math.inf
        if not self.spec.autoscaling:
            return math.inf
        return self._next_update(max(n.idle_since, n.ready_t) + n.type.idle_timeout_s)

    def _advance(self, t: float) -> None:
        """Remove every node whose idle timeout ran out by t, in time order."""
        while True:
            cands = [(self._removal_time(n), n.nid) for n in self._alive()]
            cands = [(rt, nid) for rt, nid in cands if rt <= t]
            if not cands:
                return
            removed = False
            for rt, nid in sorted(cands):
                n = self.nodes[nid]
                if self._count(n.type) > n.type.min_nodes:
                    n.removed_t = rt
                    removed = True
                    break
            if not removed:
                return

    # -- placement --------------------------------------------------------------------------
    def _room(self, n: Node) -> bool:
        if self.demand.max_replicas_per_node is not None and len(n.replicas) >= self.demand.max_replicas_per_node:
            return False
        return fits(n.type.resources, n.used, self.demand.resources)

    def _pick(self, nodes: list[Node]) -> Node:
        if self.scheduling == "pack":
            return min(nodes, key=lambda n: (-len(n.replicas), n.type.is_head, n.nid))
        return min(nodes, key=lambda n: (len(n.replicas), n.nid))

    def _assign(self, g: Grant, n: Node, at: float, how: str) -> float:
        for k, v in self.demand.resources.items():
            n.used[k] = n.used.get(k, 0.0) + v
        n.replicas.add(g.rid)
        n.idle_since = None
        g.node, g.granted_t, g.how = n.nid, at, how
        if at > g.requested_t and how in ("launched", "provisioning"):
            self._future.add(g.rid)
        else:
            self._future.discard(g.rid)
        return at

    def _unassign(self, g: Grant, t: float) -> Node:
        n = self.nodes[g.node]
        for k, v in self.demand.resources.items():
            n.used[k] = n.used.get(k, 0.0) - v
        n.replicas.discard(g.rid)
        if not n.replicas:
            n.idle_since = max(t, n.ready_t)
        return n

    def _launch_type(self) -> Optional[NodeType]:
        """The group Ray's autoscaler would launch for one replica, or None if all are full."""
        if not self.spec.autoscaling:
            return None
        from ray.autoscaler._private.resource_demand_scheduler import _resource_based_utilization_scorer

        best, best_score = None, None
        for nt in self.feasible:
            if nt.is_head or self._count(nt) >= nt.max_nodes:
                continue
            score = _resource_based_utilization_scorer(
                {k: v for k, v in nt.resources.items()}, [dict(self.demand.resources)], node_availability_summary=None)
            if score is None:
                continue
            if best_score is None or score > best_score:
                best, best_score = nt, score
        return best

    def _place(self, g: Grant, t: float, allow_launch: bool = True) -> Optional[float]:
        alive = self._alive()
        ready = [n for n in alive if n.ready_t <= t and self._room(n)]
        if ready:
            return self._assign(g, self._pick(ready), t, "free")
        pending = [n for n in alive if n.ready_t > t and self._room(n)]
        if pending:
            n = min(pending, key=lambda n: (n.ready_t, n.nid))
            return self._assign(g, n, n.ready_t, "provisioning")
        if not allow_launch:
            return None
        nt = self._launch_type()
        if nt is None:
            return None
        launch = self._next_update(t)
        ready_t = launch + float(self.provisioning.sample(self._rng, 1)[0])
        self.launches += 1
        n = self._new_node(nt, launch, ready_t)
        return self._assign(g, n, ready_t, "launched")

    def _place_warm(self, g: Grant, t: float) -> Optional[float]:
        """An initial replica of a warm start: its node is already up."""
        ready = [n for n in self._alive() if self._room(n)]
        if ready:
            return self._assign(g, self._pick(ready), t, "warm")
        for nt in sorted(self.feasible, key=lambda nt: nt.is_head):
            if not nt.is_head and self._count(nt) < nt.max_nodes:
                n = self._new_node(nt, self._origin, self._origin, initial=True)
                return self._assign(g, n, t, "warm")
        return None

    # -- the Cluster protocol -----------------------------------------------------------------
    def request(self, t: float, rid: int) -> Optional[float]:
        if self._origin is None:
            self._start(t)
        self._advance(t)
        initial = self.warm_start and not self._released_any and t <= self._origin + 1e-9
        g = Grant(rid, t, initial=initial)
        self.grants[rid] = g
        granted = self._place_warm(g, t) if initial else self._place(g, t)
        if granted is None:
            self.waiting.append(rid)
        return granted

    def release(self, t: float, rid: int) -> list[tuple[int, float]]:
        self._advance(t)
        self._released_any = True
        g = self.grants.get(rid)
        if g is None:
            return []
        g.released_t = t
        self._future.discard(rid)
        if rid in self.waiting:
            self.waiting.remove(rid)
            g.how = "cancelled"
            return []
        if g.node is None:
            return []
        node = self._unassign(g, t)
        if node.launch_t > t and not node.replicas:
            node.removed_t = node.launch_t  # the autoscaler had not acted yet: never launched
            node.cancelled = True
        out: list[tuple[int, float]] = []
        # Waiting replicas first (FIFO), then those waiting for a node still provisioning.
        still = []
        for w in self.waiting:
            got = self._place(self.grants[w], t)
            if got is None:
                still.append(w)
            else:
                out.append((w, got))
        self.waiting = still
        self._future = {r for r in self._future if self.grants[r].granted_t > t}
        movers = sorted((self.grants[r] for r in self._future), key=lambda x: (x.requested_t, x.rid))
        for x in movers:
            ready = [n for n in self._alive() if n.ready_t <= t and self._room(n)]
            if not ready:
                break
            self._unassign(x, t)
            self._assign(x, self._pick(ready), t, "released")
            out.append((x.rid, t))
        return out

    def finish(self, t: float) -> None:
        self._advance(t)
        self.end_t = t

    # -- what happened ---------------------------------------------------------------------
    def node_records(self) -> pd.DataFrame:
        """One row per node: group, launch/ready/removed times (removed inf = still up)."""
        rows = [{"node": n.nid, "group": n.type.name, "instance_type": n.type.instance_type,
                 "gpus": n.type.gpus, "cpus": n.type.cpus, "initial": n.initial, "launch_t": n.launch_t,
                 "ready_t": n.ready_t, "removed_t": n.removed_t, "cancelled": n.cancelled} for n in self.nodes]
        return pd.DataFrame(rows, columns=["node", "group", "instance_type", "gpus", "cpus", "initial", "launch_t",
                                           "ready_t", "removed_t", "cancelled"])

    def replica_waits(self) -> pd.DataFrame:
        """One row per replica: when it asked, when it got resources, how, on which node."""
        rows = [{"replica": g.rid, "requested_t": g.requested_t, "granted_t": g.granted_t,
                 "node_wait_s": g.node_wait_s, "how": g.how, "node": g.node, "initial": g.initial,
                 "released_t": g.released_t} for g in self.grants.values()]
        return pd.DataFrame(rows, columns=["replica", "requested_t", "granted_t", "node_wait_s", "how", "node",
                                           "initial", "released_t"])

    def timeline(self, start: float = 0.0, end: Optional[float] = None) -> pd.DataFrame:
        """Node counts at every change in [start, end]: alive (billed), ready, GPUs, per group."""
        end = self.end_t if end is None else end
        if end is None:
            raise ValueError("timeline(): the simulation has not finished; pass end")
        groups = list(self.spec.node_types)
        # (time, d_alive, d_ready, gpus, cpus, group); a node removed before it was ready never counts as ready.
        events = []
        for n in self.nodes:
            if n.removed_t <= n.launch_t:
                continue
            g, gpu, cpu = n.type.name, n.type.gpus, n.type.cpus
            events.append((n.launch_t, 1, 0, gpu, cpu, g))
            if n.ready_t < n.removed_t:
                events.append((n.ready_t, 0, 1, gpu, cpu, g))
                events.append((n.removed_t, -1, -1, -gpu, -cpu, g))
            else:
                events.append((n.removed_t, -1, 0, -gpu, -cpu, g))
        events.sort(key=lambda e: e[0])
        state = {"nodes": 0, "ready": 0, "gpus": 0.0, "gpus_ready": 0.0, "cpus": 0.0}
        per = {g: 0 for g in groups}
        rows: list[dict] = []

        def snapshot(t: float) -> None:
            row = {"time": t, "nodes": state["nodes"], "ready": state["ready"],
                   "provisioning": state["nodes"] - state["ready"], "gpus": state["gpus"],
                   "gpus_ready": state["gpus_ready"], "cpus": state["cpus"]}
            row.update({f"nodes[{g}]": per[g] for g in groups})
            if rows and rows[-1]["time"] == t:
                rows[-1] = row
            else:
                rows.append(row)

        i = 0
        while i < len(events) and events[i][0] <= start:
            t, da, dr, gpu, cpu, g = events[i]
            state["nodes"] += da
            state["ready"] += dr
            state["gpus"] += gpu if da else 0.0
            state["gpus_ready"] += gpu if dr else 0.0
            state["cpus"] += cpu if da else 0.0
            per[g] += da
            i += 1
        snapshot(start)
        while i < len(events) and events[i][0] <= end:
            t, da, dr, gpu, cpu, g = events[i]
            state["nodes"] += da
            state["ready"] += dr
            state["gpus"] += gpu if da else 0.0
            state["gpus_ready"] += gpu if dr else 0.0
            state["cpus"] += cpu if da else 0.0
            per[g] += da
            snapshot(t)
            i += 1
        return pd.DataFrame(rows)

    def node_seconds(self, start: float = 0.0, end: Optional[float] = None) -> dict[str, float]:
        """Billed seconds per group over [start, end]."""
        end = self.end_t if end is None else end
        out = {name: 0.0 for name in self.spec.node_types}
        for n in self.nodes:
            a, b = max(n.launch_t, start), min(n.removed_t, end)
            if b > a:
                out[n.type.name] += b - a
        return out

    def stats(self, start: float = 0.0, end: Optional[float] = None) -> dict[str, Any]:
        """Peak / time-weighted mean of nodes and GPUs, node-hours, GPU-hours, node waits."""
        end = self.end_t if end is None else end
        tl = self.timeline(start, end)
        t = np.append(tl.time.to_numpy(), end)
        dur = np.diff(t)
        span = max(end - start, 1e-12)

        def peak_mean(col: str) -> tuple[float, float]:
            v = tl[col].to_numpy(dtype=float)
            seen = v[dur > 0] if np.any(dur > 0) else v[-1:]
            return float(seen.max()), float(np.dot(v, dur) / span)

        ns = self.node_seconds(start, end)
        gpu_s = sum(ns[name] * self.spec.node_types[name].gpus for name in ns)
        waits = self.replica_waits()
        later = waits[~waits.initial.astype(bool)]
        granted = later.granted_t.to_numpy(dtype=float)
        released = later.released_t.to_numpy(dtype=float)
        got = np.isfinite(granted) & ~(np.isfinite(released) & (released < granted))
        w = (granted - later.requested_t.to_numpy(dtype=float))[got]
        waited = w[w > 1e-9]
        launched = [n for n in self.nodes if not n.initial and not n.cancelled]
        prov = np.array([n.ready_t - n.launch_t for n in launched]) if launched else np.zeros(0)
        pk_n, mean_n = peak_mean("nodes")
        pk_g, mean_g = peak_mean("gpus")
        pk_r, mean_r = peak_mean("ready")
        return {
            "nodes": {"peak": pk_n, "mean": mean_n, "peak_ready": pk_r, "mean_ready": mean_r,
                      "launched": len(launched), "removed": sum(1 for n in self.nodes if n.removed_t <= end and not n.cancelled),
                      "cancelled": sum(1 for n in self.nodes if n.cancelled)},
            "gpus": {"peak": pk_g, "mean": mean_g},
            "node_hours": {k: v / 3600.0 for k, v in ns.items()},
            "node_hours_total": sum(ns.values()) / 3600.0,
            "gpu_hours": gpu_s / 3600.0,
            "replica_node_wait_s": {
                "replicas_started": int(got.sum()),  # got their resources (initial replicas excluded)
                "waited": int(waited.size),  # ... of which after a wait
                "cancelled_while_waiting": int((~got).sum()),  # stopped before resources came
                "mean": float(w.mean()) if w.size else 0.0,  # over every start (0 for no wait)
                "mean_of_waited": float(waited.mean()) if waited.size else 0.0,
                "p50": float(np.percentile(w, 50)) if w.size else 0.0,
                "max": float(w.max()) if w.size else 0.0,
            },
            "provisioning_s": {"mean": float(prov.mean()) if prov.size else None,
                               "max": float(prov.max()) if prov.size else None},
            "still_waiting": len(self.waiting),
        }

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.spec.name, "autoscaling": self.spec.autoscaling,
            "groups": {nt.name: {"resources": nt.resources, "min": nt.min_nodes, "max": nt.max_nodes,
                                 "initial": nt.initial_nodes, "idle_timeout_s": nt.idle_timeout_s,
                                 "instance_type": nt.instance_type}
                       for nt in self.spec.node_types.values()},
            "replica": self.demand.describe(), "provisioning": self.provisioning.spec,
            "autoscaler_interval_s": self.autoscaler_interval_s, "scheduling": self.scheduling,
        }
