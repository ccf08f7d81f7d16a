"""Every call a trace will make through an application, drawn up front (seeded).

Which downstream calls a request makes (a branch taken with a probability, a fan-out)
does not depend on timing, so it is decided before the simulation: the compiled
request path (simtune.app.kernel) then only decides *when* each call happens. Calls
are numbered globally; the trace's requests are calls 0..n-1 of the ingress. Children
are stored CSR-style (`cptr`, `clist`) in the order the caller makes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from simtune.app.topology import Topology
from simtune.errors import InputError
from simtune.service_time import parse_service_time
from simtune.trace.model import Trace


@dataclass
class CallTable:
    names: list[str]  # deployment index -> name (ingress first)
    dep: np.ndarray  # i8[C] deployment index of each call
    parent: np.ndarray  # i8[C] the calling call, -1 for the trace's requests
    root: np.ndarray  # i8[C] the trace request each call belongs to
    cptr: np.ndarray  # i8[C+1] children of call c are clist[cptr[c]:cptr[c+1]]
    clist: np.ndarray  # i8[...]
    mode: np.ndarray  # i8[D] 0 sequential, 1 parallel

    @property
    def n_calls(self) -> int:
        return int(self.dep.shape[0])

    def calls_of(self, d: int) -> np.ndarray:
        return np.flatnonzero(self.dep == d)


def topological_names(topo: Topology) -> list[str]:
    """Reachable deployments, every caller before its callees, ingress first (Kahn)."""
    reach = topo.order()
    indeg = {n: 0 for n in reach}
    for n in reach:
        for c in topo.nodes[n].calls:
            indeg[c.to] += 1
    out: list[str] = []
    ready = [topo.ingress]
    while ready:
        n = ready.pop(0)
        out.append(n)
        for c in topo.nodes[n].calls:
            indeg[c.to] -= 1
            if indeg[c.to] == 0 and c.to not in out and c.to not in ready:
                ready.append(c.to)
    return out


def draw_calls(topo: Topology, n_requests: int, seed: int) -> CallTable:
    names = topological_names(topo)
    index = {n: i for i, n in enumerate(names)}
    rng = np.random.default_rng([seed, 31])
    ids: dict[str, list[np.ndarray]] = {n: [] for n in names}
    roots: dict[str, list[np.ndarray]] = {n: [] for n in names}
    ids[topo.ingress].append(np.arange(n_requests, dtype=np.int64))
    roots[topo.ingress].append(np.arange(n_requests, dtype=np.int64))
    parents_all = [np.full(n_requests, -1, dtype=np.int64)]
    child_all = [np.arange(n_requests, dtype=np.int64)]
    root_all = [np.arange(n_requests, dtype=np.int64)]
    dep_all = [np.full(n_requests, index[topo.ingress], dtype=np.int64)]
    edge_par, edge_child = [], []
    next_id = n_requests
    for u in names:
        node = topo.nodes[u]
        if not node.calls:
            continue
        uid = np.concatenate(ids[u]) if ids[u] else np.zeros(0, dtype=np.int64)
        uroot = np.concatenate(roots[u]) if roots[u] else np.zeros(0, dtype=np.int64)
        for e, call in enumerate(node.calls):
            for rep in range(call.count):
                if call.probability >= 1.0:
                    mask = slice(None)
                else:
                    mask = rng.random(uid.shape[0]) < call.probability
                par, rt = uid[mask], uroot[mask]
                m = int(par.shape[0])
                child = np.arange(next_id, next_id + m, dtype=np.int64)
                next_id += m
                ids[call.to].append(child)
                roots[call.to].append(rt)
                parents_all.append(par)
                child_all.append(child)
                root_all.append(rt)
                dep_all.append(np.full(m, index[call.to], dtype=np.int64))
                edge_par.append(par)
                edge_child.append(child)
    C = next_id
    order = np.concatenate(child_all)
    dep = np.empty(C, dtype=np.int64)
    parent = np.empty(C, dtype=np.int64)
    root = np.empty(C, dtype=np.int64)
    dep[order] = np.concatenate(dep_all)
    parent[order] = np.concatenate(parents_all)
    root[order] = np.concatenate(root_all)
    if edge_par:
        ep, ec = np.concatenate(edge_par), np.concatenate(edge_child)
        # Edges were appended per caller deployment in (call, repeat) order, and each run of
        # parents is ascending: a stable sort by parent keeps every caller's calls in order
        # (timsort merges the few sorted runs quickly).
        o = np.argsort(ep, kind="stable")
        ep, ec = ep[o], ec[o]
        counts = np.bincount(ep, minlength=C)
        clist = ec
    else:
        counts = np.zeros(C, dtype=np.int64)
        clist = np.zeros(0, dtype=np.int64)
    cptr = np.zeros(C + 1, dtype=np.int64)
    np.cumsum(counts, out=cptr[1:])
    mode = np.array([1 if topo.nodes[n].mode == "parallel" else 0 for n in names], dtype=np.int64)
    return CallTable(names, dep, parent, root, cptr, np.ascontiguousarray(clist, dtype=np.int64), mode)


def own_times(topo: Topology, table: CallTable, trace: Trace, seed: int,
              models: Optional[dict[str, Any]] = None) -> tuple[np.ndarray, np.ndarray]:
    """(before, after): each call's own work before its downstream calls and after them.

    A call without downstream calls does all its work in one piece. With a service
    model the model decides the own work; it all happens before the downstream calls.
    """
    models = models or {}
    C = table.n_calls
    total = np.zeros(C)
    for d, name in enumerate(table.names):
        node = topo.nodes[name]
        calls = table.calls_of(d)
        if calls.size == 0:
            continue
        spec = node.service_time
        where = f"{topo.source}: deployments.{name}.service_time"
        model = models.get(name)
        if model is not None and not spec.startswith("column:"):
            # The service model decides (e.g. a concurrency curve's own times); for the LLM
            # engine, which ignores them, a column gives the wait before the engine
            # (the KV transfer of a disaggregated decode deployment).
            sub = subtrace(trace, table.root[calls], name)
            dist = None if spec == "trace" else parse_service_time(spec)
            try:
                total[calls] = model.service_times(sub, dist, seed + 7919 * d)
            except InputError as exc:
                raise InputError(f"{where}: {exc}") from None
        elif spec == "trace":
            st = trace.service_time
            if st is None:
                raise InputError(f"{where}: the trace has no service_time column; give a distribution "
                                 "(e.g. const:0.05) or column:NAME")
            total[calls] = st[table.root[calls]]
        elif spec.startswith("column:"):
            col = spec[len("column:"):]
            if col not in trace.columns:
                raise InputError(f"{where}: the trace has no column {col!r} (it has: "
                                 f"{', '.join(sorted(trace.columns)) or 'none'})")
            try:
                total[calls] = np.asarray(trace.columns[col], dtype=np.float64)[table.root[calls]]
            except (TypeError, ValueError):
                raise InputError(f"{where}: column {col!r} is not numeric (seconds)") from None
        else:
            total[calls] = parse_service_time(spec).sample(np.random.default_rng([seed, 101, d]), calls.size)
    if not np.all(np.isfinite(total)) or np.any(total < 0):
        bad = int(np.flatnonzero(~np.isfinite(total) | (total < 0))[0])
        raise InputError(f"{topo.source}: deployment {table.names[table.dep[bad]]!r}: own time of request "
                         f"{int(table.root[bad])} is {total[bad]!r} (must be a number >= 0)")
    has_children = table.cptr[1:] > table.cptr[:-1]
    frac = np.array([0.0 if table.names[d] in models else topo.nodes[table.names[d]].after_fraction
                     for d in range(len(table.names))])[table.dep]
    after = np.where(has_children, total * frac, 0.0)
    return np.ascontiguousarray(total - after), np.ascontiguousarray(after)


def subtrace(trace: Trace, rows: np.ndarray, name: str) -> Trace:
    """The trace's columns for the given calls (one row per call, by its request)."""
    return Trace(timestamps=trace.timestamps[rows], columns={k: np.asarray(v)[rows] for k, v in trace.columns.items()},
                 name=f"{trace.name}:{name}", origin=trace.origin, meta=dict(trace.meta))


def multiplex_arrays(topo: Topology, table: CallTable, trace: Trace, seed: int, replicas: int,
                     timeout_s: float, view_delay_s: float, max_ongoing: list[int]) -> list:
    """Per deployment: simtune.multiplex state over all calls, or None if not multiplexed.

    Model ids come from the trace's column (any type: factorised to dense ints); a miss
    loads the model for `load_time` (a service-time spec, drawn per call, seeded)."""
    import pandas as pd

    from simtune.multiplex import mux_arrays

    out: list = []
    for d, name in enumerate(table.names):
        mx = topo.nodes[name].multiplex
        if mx is None:
            out.append(None)
            continue
        where = f"{topo.source}: deployments.{name}.multiplex"
        if topo.nodes[name].service_model is not None:
            raise InputError(f"{where}: multiplexing is modelled with fixed service times only "
                             "(remove service_model or multiplex)")
        col = trace.columns.get(mx.model_id_column)
        if col is None:
            raise InputError(f"{where}.model_id_column: the trace has no column {mx.model_id_column!r} (it has: "
                             f"{', '.join(sorted(trace.columns)) or 'none'})")
        codes, _ = pd.factorize(pd.Series(np.asarray(col)), sort=True)
        if (codes < 0).any():
            row = int(np.flatnonzero(codes < 0)[0])
            raise InputError(f"{where}.model_id_column: request {row} has no model id")
        mids = np.full(table.n_calls, -1, dtype=np.int64)
        calls = table.calls_of(d)
        mids[calls] = codes[table.root[calls]]
        load = parse_service_time(mx.load_time).sample(np.random.default_rng([seed, 211, d]), table.n_calls)
        out.append(mux_arrays(mids, load, mx.max_num_models_per_replica, timeout_s, view_delay_s, replicas,
                              max_ongoing[d]))
    return out
