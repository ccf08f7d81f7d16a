"""The compiled request path of a whole application: several deployments, one clock.

Each deployment keeps exactly the single-deployment state of simtune.dataplane (its
row of SI/SF, its segment of the shared queue array, its replicas, routing tasks, heap
and service-model arrays), and the very same routing and replica functions run on it.
What this module adds is the composition (reference section 6: a downstream call goes
from the calling replica's handle to the next deployment):

  * a call's own work is split into a part before its downstream calls and a part
    after (`post`); while it awaits them it keeps its `max_ongoing_requests` slot
    (serve/_private/replica.py: the handler is one task; the slot is freed when it
    returns), so a slow downstream stage fills the upstream replicas too;
  * calls are made one after another (`await a; await b`) or all at once
    (`asyncio.gather`), chosen per deployment;
  * a downstream `BackPressureError` (max_queued_requests) fails the caller (HTTP 500
    at the ingress); failed siblings are not cancelled (gather does not cancel them);
  * the proxy's request_timeout_s cancels the ingress request and, with it, every
    call it is awaiting, recursively (Serve propagates cancellation to awaited
    DeploymentResponses): queued calls leave their queue, running ones free their
    slots at once (status CANCELLED = 499);
  * a force-killed replica fails the calls it was running, including those awaiting
    downstream calls (their callers fail in turn).

Calls are numbered globally: the trace's requests are calls 0..n-1 of the ingress;
every downstream call was drawn up front (simtune.app.calls) with its parent, so the
only thing decided here is *when* each happens. Events of all deployments are merged
in time order (ties: the lower deployment index first).

Simplification (stated in simtune.app.simulate): each deployment has one router that
all its callers share; Serve gives every calling replica its own handle router. The
autoscaling metric is the same (Serve sums the handles' reports); routing at saturation
can differ.
"""

from __future__ import annotations

import math

import numba as nb

from simtune.dataplane import (
    _maybe_start_tasks, _model_heap_event, _run_task, expire_queue_head, kill_kernel,
)
from simtune.service_models.kernels import (
    A_PTR, CALL_OVERHEAD, CALLS_FIRST, CANCELLED, EV_ADMIT, EV_BITS, EV_DEADLINE, EV_DONE, EV_ISSUE, EV_MASK,
    EV_TASK, FAILED, HEAP_N, MAX_QUEUED, MK_FIXED, MODEL, N_EV, N_INFLIGHT, N_REQ, OK, PENDING, Q_HEAD, Q_TAIL,
    REJECTED, RUNNING, TIMED_OUT,
    TIMEOUT, heap_push, heap_pop, heapify, model_cancel, release_slot, remove_queued_at,
)

MODE_SEQUENTIAL, MODE_PARALLEL = 0, 1
# call phases: own work (or, with CALLS_FIRST, nothing yet), awaiting downstream calls,
# post-work, and the service model after the calls (CALLS_FIRST: e.g. Ray 2.60's PD decode
# server calls prefill, then runs its own engine)
PH_OWN, PH_AWAIT, PH_POST, PH_ENGINE = 0, 1, 2, 3


@nb.njit(cache=True, _nrt=False)
def _issue(t, k, SI, SF, arr_t, svc, queue, start, end, status, replica, ONG, SENT, EVER, HT, HV, ROUT, TS,
           TO, TT, dep, Xs):
    """Downstream call k is made at time t. With a call overhead (the handle call's round
    trip outside both handlers, SimParams.call_overhead_s) it reaches the callee's handle
    that much later (EV_ISSUE); the caller's slot is held meanwhile.

    Returns False when the handle rejects it at once (max_queued_requests)."""
    e = dep[k]
    ov = SF[e, CALL_OVERHEAD]
    if ov > 0.0:
        arr_t[k] = t + ov
        heap_push(HT[e], HV[e], SI[e], t + ov, k * N_EV + EV_ISSUE)
        return True
    return _enqueue(t, k, SI, SF, arr_t, svc, queue, start, end, status, replica, ONG, SENT, EVER, HT, HV, ROUT,
                    TS, TO, TT, dep, Xs)


@nb.njit(cache=True, _nrt=False)
def _enqueue(t, k, SI, SF, arr_t, svc, queue, start, end, status, replica, ONG, SENT, EVER, HT, HV, ROUT, TS,
             TO, TT, dep, Xs):
    """Call k reaches its deployment's handle at t: queued, or rejected (503)."""
    e = dep[k]
    si = SI[e]
    arr_t[k] = t
    mq = si[MAX_QUEUED]
    if mq >= 0 and si[Q_TAIL] - si[Q_HEAD] >= mq:
        status[k] = REJECTED
        start[k] = t
        end[k] = t
        return False
    queue[si[Q_TAIL]] = k
    si[Q_TAIL] += 1
    _maybe_start_tasks(t, si, SF[e], arr_t, svc, queue, start, end, status, replica, ONG[e], SENT[e], EVER[e],
                       HT[e], HV[e], ROUT[e], TS[e], TO[e], TT[e], Xs[e])
    return True


@nb.njit(cache=True, _nrt=False)
def _dequeue(k, si, queue, task_own):
    """Remove pending call k from its deployment's queue (a cancelled request)."""
    for p in range(si[Q_HEAD], si[Q_TAIL]):
        if queue[p] == k:
            remove_queued_at(p, si, queue, task_own)
            return


@nb.njit(cache=True, _nrt=False)
def _expedite(t, k, ht, hv, si):
    """Call k's pending completion (or model admission) happens at t instead: its slot
    is freed when that EV_DONE pops, since its status is no longer RUNNING."""
    for j in range(si[HEAP_N]):
        v = hv[j]
        if v == k * N_EV + EV_DONE or v == k * N_EV + EV_ADMIT:
            ht[j] = t
            hv[j] = k * N_EV + EV_DONE
            heapify(ht, hv, si[HEAP_N])
            return True
    return False


@nb.njit(cache=True, _nrt=False)
def _cancel_tree(t, root, code, SI, SF, arr_t, svc, queue, start, end, status, replica, ONG, SENT, HT, HV, TO,
                 Ms, dep, cptr, clist, phase, nissued, stack):
    """Cancel call `root` (status `code`) and every call it is awaiting, recursively."""
    top = 0
    stack[top] = root
    top += 1
    first = True
    while top > 0:
        top -= 1
        k = stack[top]
        e = dep[k]
        si = SI[e]
        c = code if first else CANCELLED
        first = False
        if status[k] == PENDING:
            _dequeue(k, si, queue, TO[e])
            status[k] = c
            end[k] = t
            continue
        if status[k] != RUNNING:
            continue
        status[k] = c
        end[k] = t
        ph = phase[k]
        if ph == PH_AWAIT:
            release_slot(replica[k], si, ONG[e], SENT[e])
            for j in range(cptr[k], cptr[k] + nissued[k]):
                stack[top] = clist[j]
                top += 1
        elif si[MODEL] != MK_FIXED and (ph == PH_OWN or ph == PH_ENGINE) and Ms[e][6][k] >= 0:
            # inside a service model: it leaves the model and frees its slot now
            model_cancel(t, replica[k], k, si, svc, status, HT[e], HV[e], Ms[e])
            Ms[e][6][k] = -1
            release_slot(replica[k], si, ONG[e], SENT[e])
        else:
            # own work, post-work or admission pending as a heap event: free the slot now
            _expedite(t, k, HT[e], HV[e], si)


@nb.njit(cache=True, _nrt=False)
def _await_done(t, c, ok, SI, SF, arr_t, svc, queue, start, end, status, replica, ONG, SENT, EVER, HT, HV, ROUT,
                TS, TO, TT, dep, parent, post, cptr, clist, phase, nissued, nleft, dmode, Xs):
    """Call c finished (ok) or failed; walk up: the caller continues, finishes or fails."""
    while True:
        p = parent[c]
        if p < 0:
            return
        if status[p] != RUNNING or phase[p] != PH_AWAIT:
            return  # the caller already failed or was cancelled: the result is dropped
        d = dep[p]
        if not ok:
            status[p] = FAILED
            end[p] = t
            release_slot(replica[p], SI[d], ONG[d], SENT[d])
            c = p
            continue
        nleft[p] -= 1
        if dmode[d] == MODE_SEQUENTIAL and nissued[p] < cptr[p + 1] - cptr[p]:
            k = clist[cptr[p] + nissued[p]]
            nissued[p] += 1
            if _issue(t, k, SI, SF, arr_t, svc, queue, start, end, status, replica, ONG, SENT, EVER, HT, HV, ROUT,
                      TS, TO, TT, dep, Xs):
                return
            ok = False
            c = k
            continue
        if nleft[p] > 0:
            return
        if SI[d, CALLS_FIRST]:
            _enter_engine(t, p, SI[d], HT[d], HV[d], svc, phase)
            return
        if post[p] > 0.0:
            phase[p] = PH_POST
            heap_push(HT[d], HV[d], SI[d], t + post[p], p * N_EV + EV_DONE)
            return
        status[p] = OK
        end[p] = t
        release_slot(replica[p], SI[d], ONG[d], SENT[d])
        c = p


@nb.njit(cache=True, _nrt=False)
def _enter_engine(t, c, si, ht, hv, svc, phase):
    """CALLS_FIRST: call c's downstream calls are done; its service model takes it after
    svc[c] (for the LLM engine: the KV-cache transfer), still holding its slot."""
    phase[c] = PH_ENGINE
    heap_push(ht, hv, si, t + svc[c], c * N_EV + EV_ADMIT)


@nb.njit(cache=True, _nrt=False)
def _own_work_done(t, d, c, SI, SF, arr_t, svc, queue, start, end, status, replica, ONG, SENT, EVER, HT, HV, ROUT,
                   TS, TO, TT, dep, parent, post, cptr, clist, phase, nissued, nleft, dmode, ingress, Xs):
    """Call c's EV_DONE: its own work (or post-work) ended at t."""
    si = SI[d]
    r = replica[c]
    if status[c] != RUNNING:
        release_slot(r, si, ONG[d], SENT[d])  # timed out, killed or cancelled earlier
        return
    nc = cptr[c + 1] - cptr[c]
    if si[CALLS_FIRST] and phase[c] == PH_OWN and nc == 0:
        _enter_engine(t, c, si, HT[d], HV[d], svc, phase)  # no downstream call drawn for it
        return
    if phase[c] == PH_OWN and nc > 0:
        phase[c] = PH_AWAIT
        if d == ingress and (si[MODEL] == MK_FIXED or si[CALLS_FIRST]):
            deadline = arr_t[c] + SF[d][TIMEOUT]
            if deadline < math.inf:
                heap_push(HT[d], HV[d], si, deadline, c * N_EV + EV_DEADLINE)
        if dmode[d] == MODE_SEQUENTIAL:
            nleft[c] = nc
            nissued[c] = 1
            k = clist[cptr[c]]
            if not _issue(t, k, SI, SF, arr_t, svc, queue, start, end, status, replica, ONG, SENT, EVER, HT, HV,
                          ROUT, TS, TO, TT, dep, Xs):
                status[c] = FAILED
                end[c] = t
                release_slot(r, si, ONG[d], SENT[d])
                _await_done(t, c, False, SI, SF, arr_t, svc, queue, start, end, status, replica, ONG, SENT, EVER,
                            HT, HV, ROUT, TS, TO, TT, dep, parent, post, cptr, clist, phase, nissued, nleft, dmode, Xs)
            return
        nleft[c] = nc
        nissued[c] = nc
        failed = False
        for j in range(cptr[c], cptr[c + 1]):
            if not _issue(t, clist[j], SI, SF, arr_t, svc, queue, start, end, status, replica, ONG, SENT, EVER,
                          HT, HV, ROUT, TS, TO, TT, dep, Xs):
                failed = True
        if failed:  # gather raises the first error at once; the accepted calls keep running
            status[c] = FAILED
            end[c] = t
            release_slot(r, si, ONG[d], SENT[d])
            _await_done(t, c, False, SI, SF, arr_t, svc, queue, start, end, status, replica, ONG, SENT, EVER, HT,
                        HV, ROUT, TS, TO, TT, dep, parent, post, cptr, clist, phase, nissued, nleft, dmode, Xs)
        return
    status[c] = OK
    end[c] = t
    release_slot(r, si, ONG[d], SENT[d])
    _await_done(t, c, True, SI, SF, arr_t, svc, queue, start, end, status, replica, ONG, SENT, EVER, HT, HV, ROUT,
                TS, TO, TT, dep, parent, post, cptr, clist, phase, nissued, nleft, dmode, Xs)


@nb.njit(cache=True, _nrt=False)
def app_advance(t_until, ingress, SI, SF, arr_t, svc, queue, start, end, status, replica, ONG, SENT, EVER, HT, HV,
                ROUT, TS, TO, TT, Ms, dep, parent, post, cptr, clist, phase, nissued, nleft, dmode, Xs, stack):
    """Process every event of every deployment with time <= t_until, in time order.

    Order at equal times: the ingress queue-head expiry, then heap events (by time,
    deployment, value), then ingress arrivals, as in simtune.dataplane.advance_kernel.
    """
    D = SI.shape[0]
    si0 = SI[ingress]
    n = si0[N_REQ]
    timeout = SF[ingress][TIMEOUT]
    inf = math.inf
    # the ingress's rows, made once (arrivals are the most frequent event)
    sf0, ong0, sent0, ever0, ht0, hv0 = SF[ingress], ONG[ingress], SENT[ingress], EVER[ingress], HT[ingress], HV[ingress]
    rout0, ts0, to0, tt0, x0 = ROUT[ingress], TS[ingress], TO[ingress], TT[ingress], Xs[ingress]
    while True:
        a = si0[A_PTR]
        t_arr = arr_t[a] if a < n else inf
        t_heap = inf
        d = -1
        for x in range(D):
            if SI[x, HEAP_N] > 0 and HT[x, 0] < t_heap:
                t_heap = HT[x, 0]
                d = x
        t_exp = inf
        if si0[Q_HEAD] < si0[Q_TAIL]:
            t_exp = arr_t[queue[si0[Q_HEAD]]] + timeout
        t = min(t_arr, t_heap, t_exp)
        if t > t_until:
            break
        if t_exp <= t_heap and t_exp <= t_arr:
            expire_queue_head(t_exp, si0, queue, status, end)
            continue
        if t_heap <= t_arr:
            si = SI[d]
            tt, v = heap_pop(HT[d], HV[d], si)
            idx = v >> EV_BITS
            kind = v & EV_MASK
            if kind == EV_DONE and status[idx] == RUNNING and cptr[idx + 1] == cptr[idx] and si[CALLS_FIRST] == 0:
                # the common case, inline: a call without downstream calls finishes
                status[idx] = OK
                end[idx] = tt
                r = replica[idx]
                ONG[d, r] -= 1
                SENT[d, r] -= 1
                si[N_INFLIGHT] -= 1
                if parent[idx] >= 0:
                    _await_done(tt, idx, True, SI, SF, arr_t, svc, queue, start, end, status, replica, ONG, SENT,
                                EVER, HT, HV, ROUT, TS, TO, TT, dep, parent, post, cptr, clist, phase, nissued,
                                nleft, dmode, Xs)
            elif kind == EV_DONE:
                _own_work_done(tt, d, idx, SI, SF, arr_t, svc, queue, start, end, status, replica, ONG, SENT, EVER,
                               HT, HV, ROUT, TS, TO, TT, dep, parent, post, cptr, clist, phase, nissued, nleft,
                               dmode, ingress, Xs)
            elif kind == EV_TASK:
                TS[d, idx] = 3  # TASK_RUNNING
                _run_task(idx, tt, si, SF[d], arr_t, svc, queue, start, end, status, replica, ONG[d], SENT[d],
                          EVER[d], HT[d], HV[d], ROUT[d], TS[d], TO[d], TT[d], Xs[d])
            elif kind == EV_ISSUE:
                if status[idx] == PENDING and not _enqueue(tt, idx, SI, SF, arr_t, svc, queue, start, end, status,
                                                           replica, ONG, SENT, EVER, HT, HV, ROUT, TS, TO, TT, dep,
                                                           Xs):
                    _await_done(tt, idx, False, SI, SF, arr_t, svc, queue, start, end, status, replica, ONG, SENT,
                                EVER, HT, HV, ROUT, TS, TO, TT, dep, parent, post, cptr, clist, phase, nissued,
                                nleft, dmode, Xs)
            elif kind == EV_DEADLINE and (phase[idx] == PH_AWAIT or phase[idx] == PH_POST):
                if status[idx] == RUNNING:
                    _cancel_tree(tt, idx, TIMED_OUT, SI, SF, arr_t, svc, queue, start, end, status, replica, ONG,
                                 SENT, HT, HV, TO, Ms, dep, cptr, clist, phase, nissued, stack)
            else:
                _model_heap_event(tt, idx, kind, si, SF[d], arr_t, svc, end, status, replica, ONG[d], SENT[d],
                                  HT[d], HV[d], Ms[d])
            continue
        si0[A_PTR] = a + 1
        mq = si0[MAX_QUEUED]
        if mq >= 0 and si0[Q_TAIL] - si0[Q_HEAD] >= mq:
            status[a] = REJECTED
            start[a] = t_arr
            end[a] = t_arr
            continue
        queue[si0[Q_TAIL]] = a
        si0[Q_TAIL] += 1
        _maybe_start_tasks(t_arr, si0, sf0, arr_t, svc, queue, start, end, status, replica, ong0, sent0, ever0,
                           ht0, hv0, rout0, ts0, to0, tt0, x0)


@nb.njit(cache=True, _nrt=False)
def app_kill(t, d, rid, SI, SF, arr_t, svc, queue, start, end, status, replica, ONG, SENT, EVER, HT, HV, ROUT, TS,
             TO, TT, Ms, dep, parent, post, cptr, clist, phase, nissued, nleft, dmode, Xs):
    """Force-kill replica rid of deployment d: everything it runs fails now (HTTP 500),
    as in simtune.dataplane.kill_kernel, and the callers of those calls fail in turn."""
    si = SI[d]
    C = dep.shape[0]
    a = si[A_PTR]
    si[A_PTR] = C  # model_kill scans calls below A_PTR; here every call may be on rid
    killed = kill_kernel(t, rid, si, end, status, replica, ONG[d], SENT[d], HT[d], HV[d], Ms[d])
    si[A_PTR] = a
    # Calls awaiting downstream calls hold a slot but no event; every failed call's caller
    # learns of the failure now.
    for c in range(C):
        if dep[c] != d or replica[c] != rid:
            continue
        if status[c] == RUNNING and phase[c] == PH_AWAIT:
            status[c] = FAILED
            end[c] = t
            release_slot(rid, si, ONG[d], SENT[d])
            killed += 1
        if status[c] == FAILED and end[c] == t:
            _await_done(t, c, False, SI, SF, arr_t, svc, queue, start, end, status, replica, ONG, SENT, EVER, HT,
                        HV, ROUT, TS, TO, TT, dep, parent, post, cptr, clist, phase, nissued, nleft, dmode, Xs)
    return killed
