"""The application's request-path state, and one view of it per deployment.

`AppDataPlane` owns the arrays of simtune.app.kernel: per-deployment rows (state,
replicas, routing tasks, heap, service-model arrays) and per-call columns. Each
deployment's controller (simtune.controller.Controller, unchanged) drives it through a
`DeploymentView`, which offers exactly what a single-deployment DataPlane offers, so the
control plane is the same code for one deployment or many.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from simtune.app.calls import CallTable
from simtune.app.kernel import app_advance, app_kill
from simtune.dataplane import MAX_TASKS, _empty_model_arrays, seed_kernel, set_routable_kernel
from simtune.multiplex import empty_mux_arrays, grow_mux
from simtune.service_models.kernels import (
    A_PTR, CALL_OVERHEAD, CALLS_FIRST, BO_INIT, BO_MAX, BO_MULT, BO_RESET, CAP, MAX_QUEUED, MK_FIXED, MK_STREAM, MODEL, MUX, N_IMMEDIATE,
    N_INFLIGHT,
    N_REQ, N_STATE_F, N_STATE_I, NOTIFY, Q_HEAD, Q_TAIL, R_PTR, SLOT_OVERHEAD, TIMEOUT, HEAP_N, mev_limit,
)


class AppDataPlane:
    def __init__(self, arrivals: np.ndarray, table: CallTable, before: np.ndarray, after: np.ndarray,
                 specs: list[Any], *, backoffs: list[tuple[float, float, float]], immediate_attempts: int,
                 backoff_resets: bool, slot_overhead_s: float, seed: int, replica_capacity: int,
                 models: list[Any], columns: dict[str, np.ndarray], multiplex: Optional[list] = None,
                 calls_first: Optional[list[bool]] = None, call_overhead_s: float = 0.0) -> None:
        n = int(arrivals.shape[0])
        C = table.n_calls
        D = len(table.names)
        self.n, self.C, self.D, self.table = n, C, D, table
        self.arr_t = np.full(C, np.nan)
        self.arr_t[:n] = arrivals
        self.svc = np.ascontiguousarray(before, dtype=np.float64)
        self.post = np.ascontiguousarray(after, dtype=np.float64)
        self.start = np.full(C, np.nan)
        self.end = np.full(C, np.nan)
        self.status = np.zeros(C, dtype=np.int16)
        self.replica = np.full(C, -1, dtype=np.int32)
        self.dep = table.dep
        self.parent = table.parent
        self.cptr = table.cptr
        self.clist = table.clist
        self.dmode = table.mode
        self.phase = np.zeros(C, dtype=np.int8)
        self.nissued = np.zeros(C, dtype=np.int64)
        self.nleft = np.zeros(C, dtype=np.int64)
        self.stack = np.zeros(max(C, 1), dtype=np.int64)
        counts = np.bincount(table.dep, minlength=D)
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.queue = np.zeros(max(C, 1), dtype=np.int64)
        self.SI = np.zeros((D, N_STATE_I), dtype=np.int64)
        self.SF = np.zeros((D, N_STATE_F), dtype=np.float64)
        for d, spec in enumerate(specs):
            si, sf = self.SI[d], self.SF[d]
            si[CAP] = int(spec.max_ongoing_requests)
            mq = spec.max_queued_requests
            si[MAX_QUEUED] = int(mq) if mq not in (None, -1) else -1
            si[N_IMMEDIATE] = int(immediate_attempts)
            si[BO_RESET] = int(bool(backoff_resets))
            si[Q_HEAD] = si[Q_TAIL] = si[R_PTR] = int(offsets[d])
            si[N_REQ] = n if d == 0 else 0
            si[NOTIFY] = 1
            timeout = spec.request_timeout_s if d == 0 else None  # the proxy's timeout: ingress only
            sf[TIMEOUT] = float(timeout) if timeout and timeout > 0 else math.inf
            sf[BO_INIT], sf[BO_MULT], sf[BO_MAX] = backoffs[d]
            sf[SLOT_OVERHEAD] = float(slot_overhead_s)
            sf[CALL_OVERHEAD] = float(call_overhead_s) if d > 0 else 0.0  # calls into d (the ingress has none)
        self.TS = np.zeros((D, MAX_TASKS), dtype=np.int64)
        self.TO = np.full((D, MAX_TASKS), -1, dtype=np.int64)
        self.TT = np.zeros((D, MAX_TASKS), dtype=np.int64)
        # Service models: built over all calls (their per-call arrays are indexed by call id).
        self.kernel_models: list[Any] = []
        cols = {k: np.asarray(v)[table.root] for k, v in columns.items()} if columns else {}
        for d, (spec, model) in enumerate(zip(specs, models)):
            km = None
            if model is not None and model.code != MK_FIXED:
                km = model.build(C, cols, int(spec.max_ongoing_requests), self.svc)
                if km.code == MK_STREAM:
                    km = None  # streaming runs as fixed (its first chunk is computed after)
                else:
                    self.SI[d, MODEL] = km.code
                    if calls_first and calls_first[d]:
                        self.SI[d, CALLS_FIRST] = 1
            self.kernel_models.append(km)
        self.models = models
        self.counts = counts
        self.R = 0
        self.Ms: tuple = ()
        self.ONG = np.zeros((D, 0), dtype=np.int64)
        self.SENT = np.zeros((D, 0), dtype=np.int64)
        self.EVER = np.zeros((D, 0), dtype=np.int8)
        self.ROUT = np.zeros((D, 0), dtype=np.int64)
        self.HT = np.zeros((D, 0))
        self.HV = np.zeros((D, 0), dtype=np.int64)
        self._M = [km.arrays if km is not None else _empty_model_arrays() for km in self.kernel_models]
        # Multiplexing per deployment (simtune.multiplex.mux_arrays over all calls, or None).
        self._X = [x if x is not None else empty_mux_arrays() for x in (multiplex or [None] * D)]
        for d, x in enumerate(multiplex or []):
            if x is not None:
                self.SI[d, MUX] = 1
                self.SI[d, N_IMMEDIATE] = 2  # should_backoff: two attempts, then backoff sleeps
        self.Xs: tuple = tuple(self._X)
        self._alloc(replica_capacity)
        seed_kernel(int(seed) % (2**32))
        self.views = [DeploymentView(self, d) for d in range(D)]

    # -- allocation --------------------------------------------------------------------
    def _alloc(self, cap: int) -> None:
        """(Re)allocate the per-replica arrays (ids only grow) and the heaps to fit."""
        D = self.D
        for name, dtype in (("ONG", np.int64), ("SENT", np.int64), ("EVER", np.int8), ("ROUT", np.int64)):
            old = getattr(self, name)
            new = np.zeros((D, cap), dtype=dtype)
            new[:, : old.shape[1]] = old
            setattr(self, name, new)
        heap_cap = 8
        for d in range(D):
            h = 3 * int(self.counts[d]) + MAX_TASKS + 8  # per call: done/admit, deadline, issue
            km = self.kernel_models[d]
            if km is not None:
                self._M[d] = km.grow(self._M[d], cap)
                h += 2 * int(self.counts[d]) + mev_limit(cap) + 8
            heap_cap = max(heap_cap, h)
        if self.HT.shape[1] < heap_cap:
            ht = np.zeros((D, heap_cap))
            hv = np.zeros((D, heap_cap), dtype=np.int64)
            for d in range(D):
                k = int(self.SI[d, HEAP_N])
                ht[d, :k], hv[d, :k] = self.HT[d, :k], self.HV[d, :k]
            self.HT, self.HV = ht, hv
        self.Ms = tuple(self._M)
        self._X = [grow_mux(x, cap) if self.SI[d, MUX] else x for d, x in enumerate(self._X)]
        self.Xs = tuple(self._X)
        self.R = cap

    def ensure_replica(self, rid: int) -> None:
        if rid >= self.R:
            self._alloc(max(rid + 1, 2 * self.R))

    def _row(self, d: int) -> tuple:
        return (self.SI[d], self.SF[d], self.arr_t, self.svc, self.queue, self.start, self.end, self.status,
                self.replica, self.ONG[d], self.SENT[d], self.EVER[d], self.HT[d], self.HV[d], self.ROUT[d],
                self.TS[d], self.TO[d], self.TT[d], self.Xs[d])

    def _all(self) -> tuple:
        return (self.SI, self.SF, self.arr_t, self.svc, self.queue, self.start, self.end, self.status,
                self.replica, self.ONG, self.SENT, self.EVER, self.HT, self.HV, self.ROUT, self.TS, self.TO,
                self.TT, self.Ms, self.dep, self.parent, self.post, self.cptr, self.clist, self.phase,
                self.nissued, self.nleft, self.dmode, self.Xs)

    # -- driving it ----------------------------------------------------------------------
    def advance(self, t: float) -> None:
        app_advance(float(t), 0, *self._all(), self.stack)

    def add_replica(self, d: int, t: float, rid: int) -> None:
        self.ensure_replica(rid)
        set_routable_kernel(float(t), int(rid), True, *self._row(d))

    def remove_replica(self, d: int, t: float, rid: int) -> None:
        set_routable_kernel(float(t), int(rid), False, *self._row(d))

    def kill_replica(self, d: int, t: float, rid: int) -> int:
        return int(app_kill(float(t), int(d), int(rid), *self._all()))

    def idle(self) -> bool:
        return bool(self.SI[0, A_PTR] >= self.n and all(v.queued == 0 and v.inflight == 0 for v in self.views))

    def model_outputs(self, d: int, calls: np.ndarray, proxy_overhead_s: float) -> dict:
        km = self.kernel_models[d]
        if km is None:
            return {}
        out = km.outputs(_ModelOutputsView(self, d), proxy_overhead_s)
        return {k: (None if v is None else np.asarray(v)[calls]) for k, v in out.items()}


class DeploymentView:
    """What simtune.controller.Controller reads and calls, for deployment d."""

    def __init__(self, plane: AppDataPlane, d: int) -> None:
        self.plane, self.d = plane, d

    @property
    def si(self) -> np.ndarray:
        return self.plane.SI[self.d]

    @property
    def arr_t(self) -> np.ndarray:
        return self.plane.arr_t

    @property
    def routable(self) -> np.ndarray:
        return self.plane.ROUT[self.d]

    @property
    def ongoing(self) -> np.ndarray:
        return self.plane.ONG[self.d]

    @property
    def sent(self) -> np.ndarray:
        return self.plane.SENT[self.d]

    @property
    def ever_sent(self) -> np.ndarray:
        return self.plane.EVER[self.d]

    @property
    def queued(self) -> int:
        si = self.plane.SI[self.d]
        return int(si[Q_TAIL] - si[Q_HEAD])

    @property
    def inflight(self) -> int:
        return int(self.plane.SI[self.d, N_INFLIGHT])

    @property
    def arrivals_left(self) -> int:
        """Known future arrivals: the trace's, at the ingress; downstream calls are made
        as the simulation goes, so none are known in advance there."""
        return int(self.plane.n - self.plane.SI[0, A_PTR]) if self.d == 0 else 0

    def idle(self) -> bool:
        return self.plane.idle()

    def advance(self, t: float) -> None:
        self.plane.advance(t)

    def ensure_replica(self, rid: int) -> None:
        self.plane.ensure_replica(rid)

    def add_replica(self, t: float, rid: int) -> None:
        self.plane.add_replica(self.d, t, rid)

    def remove_replica(self, t: float, rid: int) -> None:
        self.plane.remove_replica(self.d, t, rid)

    def kill_replica(self, t: float, rid: int) -> int:
        return self.plane.kill_replica(self.d, t, rid)


class _ModelOutputsView:
    """The attributes a KernelModel.outputs() reads from a DataPlane, for deployment d."""

    def __init__(self, plane: AppDataPlane, d: int) -> None:
        self.M = plane.Ms[d]
        self.arr_t, self.start, self.end, self.status = plane.arr_t, plane.start, plane.end, plane.status
        self.svc, self.replica, self.n = plane.svc, plane.replica, plane.C
        self.kernel_model = plane.kernel_models[d]
