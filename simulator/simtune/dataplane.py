"""The request path: one handle's FIFO queue, power-of-two-choices routing, replicas.

Mirrors (Ray 2.60):
  serve/_private/router.py:AsyncioRouter.assign_request and
    RouterMetricsManager.wrap_request_assignment (max_queued_requests -> 503 at once);
  serve/_private/request_router/request_router.py: _maybe_start_routing_tasks
    (tasks = min(#pending, min(50, 2 x #replicas))), _fulfill_pending_requests (a task
    routes its own request but fulfils the oldest pending one, FIFO, and retires when
    #tasks > target), _choose_replicas_with_backoff (locality attempt, then a first
    all-replica attempt with no sleep, then sleeps min(0.025 * 2^i, 0.5) s; a sleeping
    task is not woken when a slot frees), LocalityMixin.apply_locality_routing;
  serve/_private/request_router/pow_2_router.py:choose_replicas (2 distinct replicas
    uniformly at random) and request_router.py:_select_from_candidate_replicas (the
    lowest count below max_ongoing_requests; 2.60's queue-length cache is decremented
    on completion, so one handle's cache equals the true count);
  serve/_private/replica.py (the max_ongoing_requests semaphore);
  serve/_private/proxy_response_generator.py (request_timeout_s is end to end: a
    waiting request leaves the queue, a running one is cancelled -> 408).
Reference: section 6 of ray-serve-autoscaling.md.

Replica side: by default a request holds its slot for its own service time (the fixed
model). With a service model (simtune.service_models: concurrency curve, @serve.batch,
LLM engine; `DataPlane(service_model=...)`), an accepted request is handed to the model
through an EV_ADMIT heap event and keeps its slot until the model completes it or its
deadline cancels it inside the model (408). Heap values are id * 8 + kind (see
simtune.service_models.kernels); the routing functions never carry the model's arrays,
so the fixed model's hot path is unchanged.

Why `_nrt=False` on every compiled function here (and in simtune.service_models.kernels,
simtune.multiplex, simtune.app.kernel): they never allocate, and without numba's
reference counting an array argument costs nothing to pass; with it every call paid an
atomic incref/decref per array (the application kernel passes ~30), which made a
downstream call cost ~5 us instead of ~1 us.

Why numba: this is the per-request hot path. Everything is a flat array and the loop
is compiled; the control plane (simtune.controller) calls `advance(t)` between its
events and reads the counters it needs (queued, per-replica running).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from simtune.multiplex import empty_mux_arrays, grow_mux, mux_pick, mux_replica, mux_take
from simtune.service_models.kernels import (  # noqa: F401  (constants re-exported)
    A_PTR, BO_INIT, BO_MAX, BO_MULT, CAP, EV_ADMIT, EV_BITS, EV_DEADLINE, EV_DONE, EV_MASK, EV_MODEL, EV_TASK,
    BO_RESET, FAILED, HEAP_N, MAX_QUEUED, MK_FIXED, MODEL, N_BATCH, N_EV, N_IMMEDIATE, N_INFLIGHT, N_MEV, N_REQ,
    N_ROUTABLE, N_STATE_F, N_STATE_I, N_TASKS, NOW, OK, PENDING, Q_HEAD, Q_TAIL, R_PTR, REJECTED, RUNNING,
    SLOT_OVERHEAD, TIMED_OUT, TIMEOUT, heap_pop as _heap_pop, heap_push as _heap_push, heapify as _heapify,
    CALLS_FIRST, MK_LLM, MK_STREAM, MUX, mev_limit, model_admit, model_cancel, model_event, model_kill, pow2_pick,
    release_slot,
)

MAX_TASKS = 64  # >= Ray's max_num_routing_tasks_cap (50)
TASK_FREE, TASK_SLEEPING, TASK_WAITING, TASK_RUNNING = 0, 1, 2, 3


@nb.njit(cache=True, _nrt=False)
def seed_kernel(seed: int) -> None:
    np.random.seed(seed)


@nb.njit(cache=True, _nrt=False, inline="always")
def _target_tasks(si):
    pending = si[Q_TAIL] - si[Q_HEAD]
    cap = min(50, 2 * si[N_ROUTABLE])
    return min(pending, cap)


@nb.njit(cache=True, _nrt=False, inline="always")
def _sleep_before(si, sf, attempts_done):
    k = attempts_done - si[N_IMMEDIATE]
    if k < 0:
        return 0.0
    return min(sf[BO_INIT] * sf[BO_MULT] ** k, sf[BO_MAX])


@nb.njit(cache=True, _nrt=False, inline="always")
def expire_queue_head(t, si, queue, status, end):
    """The oldest queued request reached request_timeout_s at t while still queued: 408."""
    i = queue[si[Q_HEAD]]
    status[i] = TIMED_OUT
    end[i] = t
    si[Q_HEAD] += 1
    if si[R_PTR] < si[Q_HEAD]:
        si[R_PTR] = si[Q_HEAD]


@nb.njit(cache=True, _nrt=False, inline="always")
def _pick(si, routable, ongoing):
    """One power-of-two-choices attempt over every routable replica: a replica id, or -1."""
    return pow2_pick(routable, si[N_ROUTABLE], si[CAP], ongoing)


@nb.njit(cache=True, _nrt=False)
def _fulfil(t, r, si, sf, arr_t, svc, queue, start, end, status, replica, ongoing, sent, ever_sent, ht, hv):
    """Send the oldest pending request to replica r (FIFO fulfilment)."""
    q = si[Q_HEAD]
    i = queue[q]
    si[Q_HEAD] = q + 1
    if si[R_PTR] < q + 1:
        si[R_PTR] = q + 1
    _start(t, t, r, i, si, sf, arr_t, svc, start, end, status, replica, ongoing, sent, ever_sent, ht, hv)


@nb.njit(cache=True, _nrt=False)
def _start(t, t_work, r, i, si, sf, arr_t, svc, start, end, status, replica, ongoing, sent, ever_sent, ht, hv):
    """Request i takes a slot of replica r at t; its own work starts at t_work (>= t: a
    multiplexed model being loaded first)."""
    start[i] = t
    replica[i] = r
    ongoing[r] += 1
    sent[r] += 1
    ever_sent[r] = 1
    si[N_INFLIGHT] += 1
    if si[CALLS_FIRST]:
        # composed apps: the downstream calls come first, the model after (simtune.app.kernel)
        status[i] = RUNNING
        _heap_push(ht, hv, si, t_work, i * N_EV + EV_DONE)
        return
    if si[MODEL] != MK_FIXED:
        # A service model decides when it finishes: hand it over (EV_ADMIT, processed next
        # at this same time by advance_kernel, which holds the model's arrays).
        # The LLM engine ignores service times (tokens decide); there svc[i] is how long the
        # request waits in the replica before the engine sees it: the KV-cache transfer of a
        # disaggregated decode deployment (simtune.app.pd), 0 otherwise.
        status[i] = RUNNING
        _heap_push(ht, hv, si, t + svc[i] if si[MODEL] == MK_LLM else t, i * N_EV + EV_ADMIT)
        return
    done = t_work + svc[i] + sf[SLOT_OVERHEAD]
    deadline = arr_t[i] + sf[TIMEOUT]
    if deadline < done:
        done = deadline
        status[i] = TIMED_OUT
    else:
        status[i] = RUNNING
    end[i] = done
    _heap_push(ht, hv, si, done, i * N_EV + EV_DONE)


@nb.njit(cache=True, _nrt=False)
def _run_task(k, t, si, sf, arr_t, svc, queue, start, end, status, replica, ongoing, sent, ever_sent,
              ht, hv, routable, task_state, task_own, task_tries, X):
    """Run routing task k at time t until it sleeps, waits for replicas or retires."""
    while True:
        own = task_own[k]
        if own < 0 or own < si[Q_HEAD]:
            # Outer loop of _fulfill_pending_requests: retire or take the next request.
            if si[N_TASKS] > _target_tasks(si):
                task_state[k] = TASK_FREE
                si[N_TASKS] -= 1
                return
            rp = max(si[R_PTR], si[Q_HEAD])
            if rp >= si[Q_TAIL]:
                task_state[k] = TASK_FREE
                si[N_TASKS] -= 1
                return
            task_own[k] = rp
            si[R_PTR] = rp + 1
            if si[BO_RESET]:
                task_tries[k] = 0
        if si[N_ROUTABLE] == 0:
            task_state[k] = TASK_WAITING
            return
        if si[MUX]:
            own_call = queue[task_own[k]]
            r = mux_pick(t, own_call, si, routable, ongoing, X)
        else:
            r = _pick(si, routable, ongoing)
        task_tries[k] += 1
        if r >= 0:
            if si[MUX]:
                i = mux_take(X[0][own_call], si, queue, task_own, X[0])
                _start(t, mux_replica(t, r, i, X), r, i, si, sf, arr_t, svc, start, end, status, replica, ongoing,
                       sent, ever_sent, ht, hv)
            else:
                _fulfil(t, r, si, sf, arr_t, svc, queue, start, end, status, replica, ongoing, sent, ever_sent, ht,
                        hv)
            if task_own[k] < si[Q_HEAD]:
                continue
        s = _sleep_before(si, sf, task_tries[k])
        if s > 0.0:
            task_state[k] = TASK_SLEEPING
            _heap_push(ht, hv, si, t + s, k * N_EV + EV_TASK)
            return


@nb.njit(cache=True, _nrt=False)
def _maybe_start_tasks(t, si, sf, arr_t, svc, queue, start, end, status, replica, ongoing, sent, ever_sent,
                       ht, hv, routable, task_state, task_own, task_tries, X):
    want = _target_tasks(si) - si[N_TASKS]
    k = 0
    while want > 0 and k < MAX_TASKS:
        if task_state[k] == TASK_FREE:
            task_state[k] = TASK_RUNNING
            task_own[k] = -1
            task_tries[k] = 0
            si[N_TASKS] += 1
            want -= 1
            _run_task(k, t, si, sf, arr_t, svc, queue, start, end, status, replica, ongoing, sent, ever_sent,
                      ht, hv, routable, task_state, task_own, task_tries, X)
            want = _target_tasks(si) - si[N_TASKS]
        k += 1


@nb.njit(cache=True, _nrt=False)
def _model_heap_event(tt, idx, kind, si, sf, arr_t, svc, end, status, replica, ongoing, sent, ht, hv, M):
    """A heap event that belongs to a service model (admit, model event, deadline)."""
    if kind == EV_ADMIT:
        if status[idx] == RUNNING:
            model_admit(tt, replica[idx], idx, si, sf, arr_t, svc, status, end, ongoing, sent, ht, hv, M)
    elif kind == EV_MODEL:
        mnext = M[0]
        si[N_MEV] -= 1
        if tt == mnext[idx]:
            mnext[idx] = math.inf
            model_event(tt, idx, si, sf, arr_t, svc, status, end, ongoing, sent, ht, hv, M)
    else:  # EV_DEADLINE: request_timeout_s cancels a request inside a model -> 408
        mpos = M[6]
        if status[idx] == RUNNING and mpos[idx] >= 0:
            r = replica[idx]
            model_cancel(tt, r, idx, si, svc, status, ht, hv, M)
            mpos[idx] = -1
            status[idx] = TIMED_OUT
            end[idx] = tt
            release_slot(r, si, ongoing, sent)


@nb.njit(cache=True, _nrt=False)
def advance_kernel(t_until, si, sf, arr_t, svc, queue, start, end, status, replica, ongoing, sent, ever_sent,
                   ht, hv, routable, task_state, task_own, task_tries, M, X):
    """Process every request event with time <= t_until, in time order.

    Order at equal times: queue-head expiry, then heap events (completions, task
    wake-ups, model events; by (time, value)), then arrivals.
    """
    n = si[N_REQ]
    timeout = sf[TIMEOUT]
    inf = math.inf
    while True:
        a = si[A_PTR]
        t_arr = arr_t[a] if a < n else inf
        t_heap = ht[0] if si[HEAP_N] > 0 else inf
        t_exp = inf
        if si[Q_HEAD] < si[Q_TAIL]:
            t_exp = arr_t[queue[si[Q_HEAD]]] + timeout
        t = min(t_arr, t_heap, t_exp)
        if t > t_until:
            break
        if t_exp <= t_heap and t_exp <= t_arr:
            expire_queue_head(t_exp, si, queue, status, end)
            continue
        if t_heap <= t_arr:
            tt, v = _heap_pop(ht, hv, si)
            idx = v >> EV_BITS
            kind = v & EV_MASK
            if kind == EV_DONE:
                r = replica[idx]
                if status[idx] == RUNNING:
                    status[idx] = OK
                release_slot(r, si, ongoing, sent)
            elif kind == EV_TASK:
                task_state[idx] = TASK_RUNNING
                _run_task(idx, tt, si, sf, arr_t, svc, queue, start, end, status, replica, ongoing, sent,
                          ever_sent, ht, hv, routable, task_state, task_own, task_tries, X)
            else:
                _model_heap_event(tt, idx, kind, si, sf, arr_t, svc, end, status, replica, ongoing, sent, ht, hv, M)
            continue
        # Arrival.
        si[A_PTR] = a + 1
        mq = si[MAX_QUEUED]
        if mq >= 0 and si[Q_TAIL] - si[Q_HEAD] >= mq:
            status[a] = REJECTED
            start[a] = t_arr
            end[a] = t_arr
            continue
        queue[si[Q_TAIL]] = a
        si[Q_TAIL] += 1
        _maybe_start_tasks(t_arr, si, sf, arr_t, svc, queue, start, end, status, replica, ongoing, sent, ever_sent,
                           ht, hv, routable, task_state, task_own, task_tries, X)
    sf[NOW] = t_until


@nb.njit(cache=True, _nrt=False)
def set_routable_kernel(t, rid, add, si, sf, arr_t, svc, queue, start, end, status, replica, ongoing, sent,
                        ever_sent, ht, hv, routable, task_state, task_own, task_tries, X):
    """The router's replica set changed (long-poll update): add or drop `rid`."""
    n = si[N_ROUTABLE]
    if add:
        routable[n] = rid
        si[N_ROUTABLE] = n + 1
        # update_replicas wakes tasks waiting for replicas and starts new ones.
        for k in range(MAX_TASKS):
            if task_state[k] == TASK_WAITING:
                task_state[k] = TASK_RUNNING
                _run_task(k, t, si, sf, arr_t, svc, queue, start, end, status, replica, ongoing, sent, ever_sent,
                          ht, hv, routable, task_state, task_own, task_tries, X)
        _maybe_start_tasks(t, si, sf, arr_t, svc, queue, start, end, status, replica, ongoing, sent, ever_sent,
                           ht, hv, routable, task_state, task_own, task_tries, X)
    else:
        for j in range(n):
            if routable[j] == rid:
                routable[j] = routable[n - 1]
                si[N_ROUTABLE] = n - 1
                break


@nb.njit(cache=True, _nrt=False)
def kill_kernel(t, rid, si, end, status, replica, ongoing, sent, ht, hv, M):
    """Force-kill replica rid: its in-flight requests fail now (HTTP 500, not retried)."""
    killed = 0
    for j in range(si[HEAP_N]):
        v = hv[j]
        kind = v & EV_MASK
        i = v >> EV_BITS
        if kind == EV_DONE:
            if replica[i] == rid and ht[j] > t:
                ht[j] = t
                status[i] = FAILED
                end[i] = t
                killed += 1
        elif kind == EV_ADMIT and replica[i] == rid and status[i] == RUNNING:
            # accepted but not yet inside the model: fails now, its slot is freed at the pop
            ht[j] = t
            hv[j] = i * N_EV + EV_DONE
            status[i] = FAILED
            end[i] = t
            killed += 1
    _heapify(ht, hv, si[HEAP_N])
    if si[MODEL] != MK_FIXED:
        killed += model_kill(t, rid, si, end, status, replica, ongoing, sent, M)
    return killed


def _empty_model_arrays() -> tuple:
    """Placeholders with the model arrays' types, for the fixed model (one compiled kernel)."""
    f1, i1 = np.zeros(1), np.zeros(1, dtype=np.int64)
    return (np.full(1, np.inf), np.zeros((1, 4)), np.zeros((1, 8), dtype=np.int64),
            np.full((1, 1), -1, dtype=np.int64), np.zeros((1, 1)), np.zeros((1, 1)),
            i1.copy(), i1.copy(), f1.copy(), i1.copy(), f1.copy(), f1.copy(), f1.copy(), f1.copy(),
            np.zeros((1, 5), dtype=np.int64), np.zeros((1, 2)))


class DataPlane:
    """Owns the request arrays and the compiled router/replica state for one handle.

    `service_model` (simtune.service_models; None = fixed service times) decides when a
    request that a replica accepted finishes; `columns` are the trace's per-request
    columns it may read (e.g. input_tokens/output_tokens for the LLM model).
    """

    def __init__(
        self,
        arrivals: np.ndarray,
        service_times: np.ndarray,
        *,
        max_ongoing_requests: int,
        max_queued_requests: int,
        request_timeout_s: float | None,
        backoff: tuple[float, float, float],
        immediate_attempts: int = 3,
        backoff_resets: bool = False,
        slot_overhead_s: float = 0.0,
        seed: int = 0,
        replica_capacity: int = 64,
        service_model=None,
        columns: dict | None = None,
        multiplex: tuple | None = None,
    ) -> None:
        n = int(arrivals.shape[0])
        self.n = n
        self.arr_t = np.ascontiguousarray(arrivals, dtype=np.float64)
        self.svc = np.ascontiguousarray(service_times, dtype=np.float64)
        self.queue = np.zeros(max(n, 1), dtype=np.int64)
        self.start = np.full(n, np.nan)
        self.end = np.full(n, np.nan)
        self.status = np.zeros(n, dtype=np.int16)
        self.replica = np.full(n, -1, dtype=np.int32)
        self.si = np.zeros(N_STATE_I, dtype=np.int64)
        self.sf = np.zeros(N_STATE_F, dtype=np.float64)
        self.si[CAP] = int(max_ongoing_requests)
        self.si[MAX_QUEUED] = int(max_queued_requests) if max_queued_requests not in (None, -1) else -1
        self.si[N_IMMEDIATE] = int(immediate_attempts)
        self.si[BO_RESET] = int(bool(backoff_resets))
        self.si[N_REQ] = n
        self.sf[TIMEOUT] = float(request_timeout_s) if request_timeout_s and request_timeout_s > 0 else math.inf
        self.sf[BO_INIT], self.sf[BO_MULT], self.sf[BO_MAX] = backoff
        self.sf[SLOT_OVERHEAD] = float(slot_overhead_s)
        self.task_state = np.zeros(MAX_TASKS, dtype=np.int64)
        self.task_own = np.full(MAX_TASKS, -1, dtype=np.int64)
        self.task_tries = np.zeros(MAX_TASKS, dtype=np.int64)
        self.service_model = service_model
        self.kernel_model = None
        self._heap_extra = 0
        if service_model is not None and service_model.code != MK_FIXED:
            self.kernel_model = service_model.build(n, columns or {}, int(max_ongoing_requests), self.svc)
            if self.kernel_model.code != MK_STREAM:  # streaming runs as fixed; its first chunk is computed after
                self.si[MODEL] = self.kernel_model.code
                # admits, deadlines and post-overhead completions: at most one each per request
                self._heap_extra = 2 * max(n, 1)
        self.M = self.kernel_model.arrays if self.kernel_model is not None else _empty_model_arrays()
        # Multiplexing (simtune.multiplex.mux_arrays): routing by model id, per-replica LRU.
        self.X = multiplex if multiplex is not None else empty_mux_arrays()
        if multiplex is not None:
            self.si[MUX] = 1
            self.si[N_IMMEDIATE] = 2  # should_backoff: two attempts, then backoff sleeps
        self.ht = np.zeros(0)
        self.hv = np.zeros(0, dtype=np.int64)
        self._alloc_replicas(replica_capacity)
        seed_kernel(int(seed) % (2**32))

    def _alloc_replicas(self, cap: int) -> None:
        """(Re)allocate the per-replica arrays, keeping what is there (ids only grow)."""
        for name, dtype in (("ongoing", np.int64), ("sent", np.int64), ("ever_sent", np.int8), ("routable", np.int64)):
            new = np.zeros(cap, dtype=dtype)
            old = getattr(self, name, None)
            if old is not None:
                new[: old.shape[0]] = old
            setattr(self, name, new)
        heap_cap = max(self.n, 1) + MAX_TASKS + 8
        if self.si[MUX]:
            self.X = grow_mux(self.X, cap)
        if self.si[MODEL] != MK_FIXED:
            self.M = self.kernel_model.grow(self.M, cap)
            # model events: at most one valid per replica; stale ones are compacted beyond 2 x cap + 1024
            heap_cap += self._heap_extra + mev_limit(cap) + 8
        if self.ht.shape[0] < heap_cap:
            k = int(self.si[HEAP_N])
            ht, hv = np.zeros(heap_cap), np.zeros(heap_cap, dtype=np.int64)
            ht[:k], hv[:k] = self.ht[:k], self.hv[:k]
            self.ht, self.hv = ht, hv

    def ensure_replica(self, rid: int) -> None:
        if rid >= self.ongoing.shape[0]:
            self._alloc_replicas(max(rid + 1, 2 * self.ongoing.shape[0]))

    def _common(self):
        return (self.si, self.sf, self.arr_t, self.svc, self.queue, self.start, self.end, self.status,
                self.replica, self.ongoing, self.sent, self.ever_sent, self.ht, self.hv, self.routable,
                self.task_state, self.task_own, self.task_tries)

    def advance(self, t: float) -> None:
        advance_kernel(float(t), *self._common(), self.M, self.X)

    def add_replica(self, t: float, rid: int) -> None:
        self.ensure_replica(rid)
        set_routable_kernel(float(t), int(rid), True, *self._common(), self.X)

    def remove_replica(self, t: float, rid: int) -> None:
        set_routable_kernel(float(t), int(rid), False, *self._common(), self.X)

    def kill_replica(self, t: float, rid: int) -> int:
        return int(kill_kernel(float(t), int(rid), self.si, self.end, self.status, self.replica, self.ongoing,
                               self.sent, self.ht, self.hv, self.M))

    # -- what the model produced per request ----------------------------------------------
    def model_outputs(self, proxy_overhead_s: float = 0.0) -> dict:
        """Per-request model outputs for SimResult: ttft/tpot (LLM, streaming), batch_size."""
        if self.kernel_model is None:
            return {}
        return self.kernel_model.outputs(self, proxy_overhead_s)

    # -- counters the control plane reads -------------------------------------------
    @property
    def queued(self) -> int:
        return int(self.si[Q_TAIL] - self.si[Q_HEAD])

    @property
    def inflight(self) -> int:
        return int(self.si[N_INFLIGHT])

    @property
    def arrivals_left(self) -> int:
        return int(self.n - self.si[A_PTR])

    def idle(self) -> bool:
        return self.arrivals_left == 0 and self.queued == 0 and self.inflight == 0
