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

Why numba: this is the per-request hot path. Everything is a flat array and the loop
is compiled; the control plane (simtune.controller) calls `advance(t)` between its
events and reads the counters it needs (queued, per-replica running).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

# Request status codes in the result arrays.
PENDING = 0
RUNNING = 1
OK = 200
REJECTED = 503
TIMED_OUT = 408
FAILED = 500

# int state vector slots
A_PTR, Q_HEAD, Q_TAIL, R_PTR, N_ROUTABLE, HEAP_N, N_TASKS, N_INFLIGHT, CAP, MAX_QUEUED, N_IMMEDIATE, N_REQ = range(12)
N_STATE_I = 12
# float state vector slots
TIMEOUT, BO_INIT, BO_MULT, BO_MAX, SLOT_OVERHEAD, NOW = range(6)
N_STATE_F = 6

MAX_TASKS = 64  # >= Ray's max_num_routing_tasks_cap (50)
TASK_FREE, TASK_SLEEPING, TASK_WAITING, TASK_RUNNING = 0, 1, 2, 3


@nb.njit(cache=True)
def seed_kernel(seed: int) -> None:
    np.random.seed(seed)


@nb.njit(cache=True, inline="always")
def _heap_push(ht, hv, si, t, v):
    n = si[HEAP_N]
    ht[n] = t
    hv[n] = v
    si[HEAP_N] = n + 1
    while n > 0:
        p = (n - 1) >> 1
        if ht[p] < ht[n] or (ht[p] == ht[n] and hv[p] <= hv[n]):
            break
        ht[p], ht[n] = ht[n], ht[p]
        hv[p], hv[n] = hv[n], hv[p]
        n = p


@nb.njit(cache=True, inline="always")
def _heap_pop(ht, hv, si):
    n = si[HEAP_N] - 1
    t0 = ht[0]
    v0 = hv[0]
    ht[0] = ht[n]
    hv[0] = hv[n]
    si[HEAP_N] = n
    i = 0
    while True:
        left = 2 * i + 1
        if left >= n:
            break
        c = left
        right = left + 1
        if right < n and (ht[right] < ht[left] or (ht[right] == ht[left] and hv[right] < hv[left])):
            c = right
        if ht[i] < ht[c] or (ht[i] == ht[c] and hv[i] <= hv[c]):
            break
        ht[i], ht[c] = ht[c], ht[i]
        hv[i], hv[c] = hv[c], hv[i]
        i = c
    return t0, v0


@nb.njit(cache=True)
def _heapify(ht, hv, n):
    for start in range((n - 2) // 2, -1, -1):
        i = start
        while True:
            left = 2 * i + 1
            if left >= n:
                break
            c = left
            right = left + 1
            if right < n and (ht[right] < ht[left] or (ht[right] == ht[left] and hv[right] < hv[left])):
                c = right
            if ht[i] < ht[c] or (ht[i] == ht[c] and hv[i] <= hv[c]):
                break
            ht[i], ht[c] = ht[c], ht[i]
            hv[i], hv[c] = hv[c], hv[i]
            i = c


@nb.njit(cache=True, inline="always")
def _target_tasks(si):
    pending = si[Q_TAIL] - si[Q_HEAD]
    cap = min(50, 2 * si[N_ROUTABLE])
    return min(pending, cap)


@nb.njit(cache=True, inline="always")
def _sleep_before(si, sf, attempts_done):
    k = attempts_done - si[N_IMMEDIATE]
    if k < 0:
        return 0.0
    return min(sf[BO_INIT] * sf[BO_MULT] ** k, sf[BO_MAX])


@nb.njit(cache=True)
def _pick(si, routable, ongoing):
    """One power-of-two-choices attempt: a replica id below the cap, or -1."""
    n = si[N_ROUTABLE]
    if n == 0:
        return -1
    cap = si[CAP]
    if n == 1:
        r = routable[0]
        return r if ongoing[r] < cap else -1
    i = np.random.randint(0, n)
    j = np.random.randint(0, n - 1)
    if j >= i:
        j += 1
    a = routable[i]
    b = routable[j]
    best = -1
    if ongoing[a] < cap:
        best = a
    if ongoing[b] < cap and (best == -1 or ongoing[b] < ongoing[best]):
        best = b
    return best


@nb.njit(cache=True)
def _fulfil(t, r, si, sf, arr_t, svc, queue, start, end, status, replica, ongoing, sent, ever_sent, ht, hv):
    """Send the oldest pending request to replica r (FIFO fulfilment)."""
    q = si[Q_HEAD]
    i = queue[q]
    si[Q_HEAD] = q + 1
    if si[R_PTR] < q + 1:
        si[R_PTR] = q + 1
    start[i] = t
    replica[i] = r
    ongoing[r] += 1
    sent[r] += 1
    ever_sent[r] = 1
    si[N_INFLIGHT] += 1
    done = t + svc[i] + sf[SLOT_OVERHEAD]
    deadline = arr_t[i] + sf[TIMEOUT]
    if deadline < done:
        done = deadline
        status[i] = TIMED_OUT
    else:
        status[i] = RUNNING
    end[i] = done
    _heap_push(ht, hv, si, done, i * 2)


@nb.njit(cache=True)
def _run_task(k, t, si, sf, arr_t, svc, queue, start, end, status, replica, ongoing, sent, ever_sent,
              ht, hv, routable, task_state, task_own, task_tries):
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
            task_tries[k] = 0
        if si[N_ROUTABLE] == 0:
            task_state[k] = TASK_WAITING
            return
        r = _pick(si, routable, ongoing)
        task_tries[k] += 1
        if r >= 0:
            _fulfil(t, r, si, sf, arr_t, svc, queue, start, end, status, replica, ongoing, sent, ever_sent, ht, hv)
            if task_own[k] < si[Q_HEAD]:
                continue
        s = _sleep_before(si, sf, task_tries[k])
        if s > 0.0:
            task_state[k] = TASK_SLEEPING
            _heap_push(ht, hv, si, t + s, k * 2 + 1)
            return


@nb.njit(cache=True)
def _maybe_start_tasks(t, si, sf, arr_t, svc, queue, start, end, status, replica, ongoing, sent, ever_sent,
                       ht, hv, routable, task_state, task_own, task_tries):
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
                      ht, hv, routable, task_state, task_own, task_tries)
            want = _target_tasks(si) - si[N_TASKS]
        k += 1


@nb.njit(cache=True)
def advance_kernel(t_until, si, sf, arr_t, svc, queue, start, end, status, replica, ongoing, sent, ever_sent,
                   ht, hv, routable, task_state, task_own, task_tries):
    """Process every request event with time <= t_until, in time order.

    Order at equal times: queue-head expiry, then heap events (completions, task
    wake-ups), then arrivals.
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
            i = queue[si[Q_HEAD]]
            status[i] = TIMED_OUT
            end[i] = t_exp
            si[Q_HEAD] += 1
            if si[R_PTR] < si[Q_HEAD]:
                si[R_PTR] = si[Q_HEAD]
            continue
        if t_heap <= t_arr:
            tt, v = _heap_pop(ht, hv, si)
            idx = v >> 1
            if v & 1 == 0:
                r = replica[idx]
                if status[idx] == RUNNING:
                    status[idx] = OK
                ongoing[r] -= 1
                sent[r] -= 1
                si[N_INFLIGHT] -= 1
            else:
                task_state[idx] = TASK_RUNNING
                _run_task(idx, tt, si, sf, arr_t, svc, queue, start, end, status, replica, ongoing, sent,
                          ever_sent, ht, hv, routable, task_state, task_own, task_tries)
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
                           ht, hv, routable, task_state, task_own, task_tries)
    sf[NOW] = t_until


@nb.njit(cache=True)
def set_routable_kernel(t, rid, add, si, sf, arr_t, svc, queue, start, end, status, replica, ongoing, sent,
                        ever_sent, ht, hv, routable, task_state, task_own, task_tries):
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
                          ht, hv, routable, task_state, task_own, task_tries)
        _maybe_start_tasks(t, si, sf, arr_t, svc, queue, start, end, status, replica, ongoing, sent, ever_sent,
                           ht, hv, routable, task_state, task_own, task_tries)
    else:
        for j in range(n):
            if routable[j] == rid:
                routable[j] = routable[n - 1]
                si[N_ROUTABLE] = n - 1
                break


@nb.njit(cache=True)
def kill_kernel(t, rid, si, end, status, replica, ongoing, sent, ht, hv):
    """Force-kill replica rid: its in-flight requests fail now (HTTP 500, not retried)."""
    killed = 0
    for j in range(si[HEAP_N]):
        v = hv[j]
        if v & 1 == 0:
            i = v >> 1
            if replica[i] == rid and ht[j] > t:
                ht[j] = t
                status[i] = FAILED
                end[i] = t
                killed += 1
    _heapify(ht, hv, si[HEAP_N])
    return killed


class DataPlane:
    """Owns the request arrays and the compiled router/replica state for one handle."""

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
        slot_overhead_s: float = 0.0,
        seed: int = 0,
        replica_capacity: int = 64,
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
        self.si[N_REQ] = n
        self.sf[TIMEOUT] = float(request_timeout_s) if request_timeout_s and request_timeout_s > 0 else math.inf
        self.sf[BO_INIT], self.sf[BO_MULT], self.sf[BO_MAX] = backoff
        self.sf[SLOT_OVERHEAD] = float(slot_overhead_s)
        self.ht = np.zeros(max(n, 1) + MAX_TASKS + 8, dtype=np.float64)
        self.hv = np.zeros(max(n, 1) + MAX_TASKS + 8, dtype=np.int64)
        self.task_state = np.zeros(MAX_TASKS, dtype=np.int64)
        self.task_own = np.full(MAX_TASKS, -1, dtype=np.int64)
        self.task_tries = np.zeros(MAX_TASKS, dtype=np.int64)
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

    def ensure_replica(self, rid: int) -> None:
        if rid >= self.ongoing.shape[0]:
            self._alloc_replicas(max(rid + 1, 2 * self.ongoing.shape[0]))

    def _common(self):
        return (self.si, self.sf, self.arr_t, self.svc, self.queue, self.start, self.end, self.status,
                self.replica, self.ongoing, self.sent, self.ever_sent, self.ht, self.hv, self.routable,
                self.task_state, self.task_own, self.task_tries)

    def advance(self, t: float) -> None:
        advance_kernel(float(t), *self._common())

    def add_replica(self, t: float, rid: int) -> None:
        self.ensure_replica(rid)
        set_routable_kernel(float(t), int(rid), True, *self._common())

    def remove_replica(self, t: float, rid: int) -> None:
        set_routable_kernel(float(t), int(rid), False, *self._common())

    def kill_replica(self, t: float, rid: int) -> int:
        return int(kill_kernel(float(t), int(rid), self.si, self.end, self.status, self.replica, self.ongoing,
                               self.sent, self.ht, self.hv))

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
