"""Compiled replica-side service models, called from the request path (simtune.dataplane).

Everything here is numba and flat arrays. The request path owns routing and the
`max_ongoing_requests` slots; a model owns what happens between a request entering a
replica (`model_admit`) and the replica finishing it (`_complete`). A request keeps its
slot until the model completes it (batch items too, reference section 7) or its
deadline cancels it (`model_cancel`, HTTP 408).

Heap values: v = id * 8 + kind, with kind
  EV_DONE     request `id` releases its slot (fixed model, or after slot_overhead_s);
  EV_TASK     routing task `id` wakes from a backoff sleep;
  EV_MODEL    replica `id`'s model has its next internal event (a processor-sharing
              departure, a batch timeout or batch end, an LLM engine step end);
              valid only while its time equals `mnext[id]` (older entries are stale);
  EV_DEADLINE request `id` reaches request_timeout_s while inside a model;
  EV_ADMIT    request `id` was accepted by a replica at this time: hand it to the model.
Why admit through the heap: the routing functions (called per request) then never carry
the model's arrays, so the fixed model's hot path is exactly what it was.

Model state (the tuple M, same types for every model so one compiled kernel serves all):
  M[0]  mnext  f8[R]      the valid EV_MODEL time per replica (inf: none)
  M[1]  rf     f8[R, 4]   per-replica floats (RF_*)
  M[2]  ri     i8[R, 8]   per-replica ints (RI_*)
  M[3]  sreq   i8[R, S]   per-replica slots: request id (PS, LLM) or running batch id
  M[4]  sf1    f8[R, S]   remaining work (PS) / batch end (batch) / tokens out (LLM)
  M[5]  sf2    f8[R, S]   context tokens (LLM)
  M[6]  mpos   i8[n]      -1 not in a model, else the slot (S: waiting, LLM; 0: batch)
  M[7]  nxt    i8[n]      linked lists: batch members, LLM waiting queue
  M[8]  first  f8[n]      time of the first token/chunk (LLM, streaming)
  M[9]  bsz    i8[n]      executed batch size (batch)
  M[10] x1     f8[n]      per-request input: input tokens (LLM), first-chunk time (streaming)
  M[11] x2     f8[n]      per-request input: output tokens (LLM)
  M[12] mp     f8[P]      model parameters (MP_* per model)
  M[13] tab    f8[T]      precomputed tables (rate by concurrency, latency by batch size, ...)
  M[14] bat_i  i8[NB, 5]  batches: head, tail, count, next, replica
  M[15] bat_f  f8[NB, 2]  batches: formation start, execution start
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

# Request status codes.
PENDING = 0
RUNNING = 1
OK = 200
REJECTED = 503
TIMED_OUT = 408
FAILED = 500
CANCELLED = 499  # a downstream call cancelled because its caller's request was (composed apps)

# int state vector slots (shared with simtune.dataplane)
(A_PTR, Q_HEAD, Q_TAIL, R_PTR, N_ROUTABLE, HEAP_N, N_TASKS, N_INFLIGHT, CAP, MAX_QUEUED, N_IMMEDIATE, N_REQ,
 MODEL, N_BATCH, N_MEV, BO_RESET, NOTIFY, MUX, CALLS_FIRST) = range(19)
# NOTIFY: a model's completion always goes through an EV_DONE event (composed apps);
# MUX: the deployment is multiplexed (simtune.multiplex);
# CALLS_FIRST: a composed deployment's service model runs after its downstream calls
N_STATE_I = 19
# float state vector slots
TIMEOUT, BO_INIT, BO_MULT, BO_MAX, SLOT_OVERHEAD, NOW, CALL_OVERHEAD = range(7)
N_STATE_F = 7  # CALL_OVERHEAD: composed apps, a DeploymentHandle call's round trip outside both handlers

# heap event kinds: value = id * N_EV + kind
EV_DONE, EV_TASK, EV_MODEL, EV_DEADLINE, EV_ADMIT, EV_ISSUE = 0, 1, 2, 3, 4, 5  # EV_ISSUE: composed apps
EV_BITS = 3
N_EV = 1 << EV_BITS
EV_MASK = N_EV - 1

# model kinds
MK_FIXED, MK_PS, MK_BATCH, MK_LLM, MK_STREAM = 0, 1, 2, 3, 4

# per-replica columns
N_RF, N_RI = 4, 8
RF_LAST, RF_FORM_DL, RF_STEP_END = 0, 1, 2
RI_N, RI_FORM, RI_WHEAD, RI_WTAIL, RI_RUN, RI_NWAIT, RI_STEP, RI_PREF = range(8)
# batches
B_HEAD, B_TAIL, B_COUNT, B_NEXT, B_REPLICA = range(5)
BF_T0, BF_START = 0, 1

# parameters
MPS_K = 0
MPB_SIZE, MPB_TIMEOUT, MPB_CONC = 0, 1, 2
(MPL_SEQS, MPL_BUDGET, MPL_P0, MPL_P1, MPL_P2, MPL_D2, MPL_NPTAB, MPL_PTAB_OFF, MPL_CHUNKED, MPL_KV) = range(10)

PS_EPS = 1e-9  # remaining work (s) under which a processor-sharing job is done


# ----------------------------------------------------------------------------- heap


@nb.njit(cache=True, _nrt=False, inline="always")
def heap_push(ht, hv, si, t, v):
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


@nb.njit(cache=True, _nrt=False, inline="always")
def heap_pop(ht, hv, si):
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


@nb.njit(cache=True, _nrt=False)
def heapify(ht, hv, n):
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


def mev_limit(replicas: int) -> int:
    """Model-event heap entries allowed before stale ones are compacted away."""
    return 2 * replicas + 1024


@nb.njit(cache=True, _nrt=False)
def _heap_compact(ht, hv, si, M):
    """Drop stale model events (time no longer equal to mnext of their replica)."""
    mnext = M[0]
    n = si[HEAP_N]
    w = 0
    mev = 0
    for j in range(n):
        v = hv[j]
        keep = True
        if v & EV_MASK == EV_MODEL:
            keep = ht[j] == mnext[v >> EV_BITS]
            if keep:
                mev += 1
        if keep:
            ht[w] = ht[j]
            hv[w] = hv[j]
            w += 1
    si[HEAP_N] = w
    si[N_MEV] = mev
    heapify(ht, hv, w)


@nb.njit(cache=True, _nrt=False)
def _msched(t, r, si, ht, hv, status, M):
    """Make t the next model event of replica r (inf: none); older entries go stale."""
    mnext = M[0]
    if t == mnext[r]:
        return
    mnext[r] = t
    if t < math.inf:
        if si[N_MEV] >= 2 * mnext.shape[0] + 1024:
            _heap_compact(ht, hv, si, M)
        si[N_MEV] += 1
        heap_push(ht, hv, si, t, r * N_EV + EV_MODEL)


# ----------------------------------------------------------------------------- common


@nb.njit(cache=True, _nrt=False)
def remove_queued_at(p, si, queue, task_own):
    """Take the pending request at queue position p (>= Q_HEAD) out of the handle's FIFO
    queue: later positions shift down, and so do the routing tasks' own positions (a task
    whose own request this was goes on with the next one)."""
    tail = si[Q_TAIL]
    for j in range(p, tail - 1):
        queue[j] = queue[j + 1]
    si[Q_TAIL] = tail - 1
    if si[R_PTR] > p:
        si[R_PTR] -= 1
    for k in range(task_own.shape[0]):
        o = task_own[k]
        if o == p:
            task_own[k] = -1
        elif o > p:
            task_own[k] = o - 1


@nb.njit(cache=True, _nrt=False)
def pow2_pick(cand, n, cap, ongoing):
    """Power of two choices among the n candidate replica ids in cand (pow_2_router.py:
    choose_replicas, then the lowest count below max_ongoing_requests): a replica, or -1."""
    if n == 0:
        return -1
    if n == 1:
        r = cand[0]
        return r if ongoing[r] < cap else -1
    i = np.random.randint(0, n)
    j = np.random.randint(0, n - 1)
    if j >= i:
        j += 1
    a = cand[i]
    b = cand[j]
    best = -1
    if ongoing[a] < cap:
        best = a
    if ongoing[b] < cap and (best == -1 or ongoing[b] < ongoing[best]):
        best = b
    return best


@nb.njit(cache=True, _nrt=False, inline="always")
def release_slot(r, si, ongoing, sent):
    ongoing[r] -= 1
    sent[r] -= 1
    si[N_INFLIGHT] -= 1


@nb.njit(cache=True, _nrt=False)
def _complete(t, i, r, si, sf, arr_t, status, end, ongoing, sent, ht, hv, M):
    """The model finished request i at time t: it leaves the replica (after slot_overhead_s)."""
    mpos = M[6]
    mpos[i] = -1
    if status[i] != RUNNING:
        return  # cancelled earlier (its slot is already free)
    ov = sf[SLOT_OVERHEAD]
    if ov > 0.0 or si[NOTIFY]:
        done = t + ov
        deadline = arr_t[i] + sf[TIMEOUT]
        if deadline < done:
            done = deadline
            status[i] = TIMED_OUT
        end[i] = done
        heap_push(ht, hv, si, done, i * N_EV + EV_DONE)
    else:
        status[i] = OK
        end[i] = t
        release_slot(r, si, ongoing, sent)


# ----------------------------------------------------------------------------- processor sharing
#
# Limited processor sharing: with n requests in the replica's model the total work rate
# is mu(n) = tab[n] (from the concurrency curve), shared equally by the oldest
# min(n, k) requests (k = mp[MPS_K]); the others wait FIFO (mpos = S) holding their slots.
# k >= max_ongoing_requests is plain (generalised) processor sharing, k = 1 is FCFS.


@nb.njit(cache=True, _nrt=False, inline="always")
def _ps_per(r, M):
    ri = M[2]
    mu = M[13]
    na = ri[r, RI_RUN]
    if na == 0:
        return 0.0
    return mu[ri[r, RI_N]] / na


@nb.njit(cache=True, _nrt=False, inline="always")
def _ps_update(t, r, M):
    rf = M[1]
    ri = M[2]
    sf1 = M[4]
    na = ri[r, RI_RUN]
    if na > 0:
        dt = t - rf[r, RF_LAST]
        if dt > 0.0:
            d = dt * _ps_per(r, M)
            for s in range(na):
                sf1[r, s] -= d
    rf[r, RF_LAST] = t


@nb.njit(cache=True, _nrt=False)
def _ps_next(r, M):
    rf = M[1]
    ri = M[2]
    sf1 = M[4]
    na = ri[r, RI_RUN]
    if na == 0:
        return math.inf
    m = sf1[r, 0]
    for s in range(1, na):
        if sf1[r, s] < m:
            m = sf1[r, s]
    if m < 0.0:
        m = 0.0
    return rf[r, RF_LAST] + m / _ps_per(r, M)


@nb.njit(cache=True, _nrt=False)
def _ps_start(r, i, w, M):
    """Request i starts sharing the replica with w seconds of work."""
    ri = M[2]
    sreq = M[3]
    sf1 = M[4]
    mpos = M[6]
    s = ri[r, RI_RUN]
    sreq[r, s] = i
    sf1[r, s] = w
    mpos[i] = s
    ri[r, RI_RUN] = s + 1


@nb.njit(cache=True, _nrt=False)
def _ps_remove(r, s, svc, M):
    """Running slot s leaves; the oldest waiting request (if any) starts."""
    ri = M[2]
    sreq = M[3]
    sf1 = M[4]
    mpos = M[6]
    nxt = M[7]
    last = ri[r, RI_RUN] - 1
    if s != last:
        j = sreq[r, last]
        sreq[r, s] = j
        sf1[r, s] = sf1[r, last]
        mpos[j] = s
    sreq[r, last] = -1
    ri[r, RI_RUN] = last
    ri[r, RI_N] -= 1
    if ri[r, RI_NWAIT] > 0:
        i = ri[r, RI_WHEAD]
        ri[r, RI_WHEAD] = nxt[i]
        ri[r, RI_NWAIT] -= 1
        if ri[r, RI_NWAIT] == 0:
            ri[r, RI_WTAIL] = -1
        _ps_start(r, i, svc[i], M)


@nb.njit(cache=True, _nrt=False)
def _unlink_waiting(r, i, M):
    """Remove request i from replica r's FIFO of waiting requests (mpos = S)."""
    ri = M[2]
    nxt = M[7]
    prev = -1
    j = ri[r, RI_WHEAD]
    while j >= 0 and j != i:
        prev = j
        j = nxt[j]
    if j == i:
        if prev < 0:
            ri[r, RI_WHEAD] = nxt[i]
        else:
            nxt[prev] = nxt[i]
        if ri[r, RI_WTAIL] == i:
            ri[r, RI_WTAIL] = prev
        ri[r, RI_NWAIT] -= 1


# ----------------------------------------------------------------------------- @serve.batch


@nb.njit(cache=True, _nrt=False)
def _batch_fire(r, b, M):
    """The forming batch b closes (membership fixed) and queues for a permit."""
    ri = M[2]
    bat_i = M[14]
    ri[r, RI_FORM] = -1
    bat_i[b, B_NEXT] = -1
    tail = ri[r, RI_WTAIL]
    if tail < 0:
        ri[r, RI_WHEAD] = b
    else:
        bat_i[tail, B_NEXT] = b
    ri[r, RI_WTAIL] = b


@nb.njit(cache=True, _nrt=False)
def _batch_start_waiting(t, r, status, M):
    """Closed batches acquire the max_concurrent_batches semaphore in FIFO order."""
    ri = M[2]
    sreq = M[3]
    sf1 = M[4]
    mpos = M[6]
    nxt = M[7]
    bsz = M[9]
    mp = M[12]
    tab = M[13]
    bat_i = M[14]
    bat_f = M[15]
    conc = int(mp[MPB_CONC])
    while ri[r, RI_RUN] < conc and ri[r, RI_WHEAD] >= 0:
        b = ri[r, RI_WHEAD]
        ri[r, RI_WHEAD] = bat_i[b, B_NEXT]
        if ri[r, RI_WHEAD] < 0:
            ri[r, RI_WTAIL] = -1
        # Cancelled items are removed just before execution (_process_batch_inner).
        live = 0
        i = bat_i[b, B_HEAD]
        while i >= 0:
            if status[i] == RUNNING and mpos[i] >= 0:
                live += 1
            i = nxt[i]
        if live == 0:
            continue
        i = bat_i[b, B_HEAD]
        while i >= 0:
            if status[i] == RUNNING and mpos[i] >= 0:
                bsz[i] = live
            i = nxt[i]
        k = 0
        while sreq[r, k] >= 0:
            k += 1
        sreq[r, k] = b
        sf1[r, k] = t + tab[live]
        bat_f[b, BF_START] = t
        ri[r, RI_RUN] += 1


@nb.njit(cache=True, _nrt=False)
def _batch_next(r, M):
    rf = M[1]
    ri = M[2]
    sreq = M[3]
    sf1 = M[4]
    mp = M[12]
    tn = math.inf
    if ri[r, RI_FORM] >= 0:
        tn = rf[r, RF_FORM_DL]
    if ri[r, RI_RUN] > 0:
        for k in range(int(mp[MPB_CONC])):
            if sreq[r, k] >= 0 and sf1[r, k] < tn:
                tn = sf1[r, k]
    return tn


# ----------------------------------------------------------------------------- LLM engine


@nb.njit(cache=True, _nrt=False)
def _llm_prefill_time(x, x2, mp, tab):
    """Prefill time of a step that prefills x tokens in total (x2: sum of squares)."""
    k = int(mp[MPL_NPTAB])
    if k == 0:
        return mp[MPL_P0] + mp[MPL_P1] * x + mp[MPL_P2] * x2
    off = int(mp[MPL_PTAB_OFF])
    xs = tab[off:off + k]
    ys = tab[off + k:off + 2 * k]
    if k == 1:
        return ys[0] * x / xs[0] if xs[0] > 0 else ys[0]
    j = 1
    while j < k - 1 and xs[j] < x:
        j += 1
    y = ys[j - 1] + (ys[j] - ys[j - 1]) * (x - xs[j - 1]) / (xs[j] - xs[j - 1])
    return y if y > 0.0 else 0.0


@nb.njit(cache=True, _nrt=False)
def _llm_schedule(t, r, si, ht, hv, x1, status, M):
    """Start the engine's next step on replica r at time t (vLLM-style continuous batching).

    prefill-first (vLLM v0 default): if requests wait and a sequence slot is free, the step
    prefills as many as fit (max_num_seqs, max_num_batched_tokens, KV cache); otherwise it
    decodes one token for every running sequence.
    chunked (vLLM v1 default): every step decodes all running sequences and fills the rest
    of the token budget with prompt chunks, oldest first.
    """
    rf = M[1]
    ri = M[2]
    sreq = M[3]
    sf1 = M[4]
    sf2 = M[5]
    mpos = M[6]
    nxt = M[7]
    mp = M[12]
    tab = M[13]
    seqs = int(mp[MPL_SEQS])
    budget = mp[MPL_BUDGET]
    kv = mp[MPL_KV]
    n = ri[r, RI_N]
    ctx = 0.0
    for s in range(n):
        ctx += sf2[r, s]
    chunked = mp[MPL_CHUNKED] > 0.0
    if not chunked:
        i = ri[r, RI_WHEAD]
        if ri[r, RI_NWAIT] > 0 and n < seqs and (n == 0 or ctx + x1[i] <= kv):
            x = 0.0
            xx = 0.0
            while ri[r, RI_NWAIT] > 0 and n < seqs:
                i = ri[r, RI_WHEAD]
                need = x1[i]
                if x > 0.0 and (x + need > budget or ctx + need > kv):
                    break
                ri[r, RI_WHEAD] = nxt[i]
                ri[r, RI_NWAIT] -= 1
                if ri[r, RI_NWAIT] == 0:
                    ri[r, RI_WTAIL] = -1
                sreq[r, n] = i
                sf1[r, n] = -1.0  # prefilling in this step
                sf2[r, n] = need
                mpos[i] = n
                n += 1
                x += need
                xx += need * need
                ctx += need
            ri[r, RI_N] = n
            ri[r, RI_STEP] = 1
            dur = _llm_prefill_time(x, xx, mp, tab)
        elif n > 0:
            ri[r, RI_STEP] = 2
            dur = tab[n] + mp[MPL_D2] * ctx
        else:
            ri[r, RI_STEP] = 0
            _msched(math.inf, r, si, ht, hv, status, M)
            return
    else:
        # Decode every sequence whose prompt is done; fill the budget with prompt chunks.
        ndec = 0
        dctx = 0.0
        for s in range(n):
            if sf1[r, s] >= 1.0:
                ndec += 1
                dctx += sf2[r, s]
        left = budget - ndec
        x = 0.0
        xx = 0.0
        # Continue partial prefills first (running, sf1 <= 0: -prefilled tokens so far).
        for s in range(n):
            if sf1[r, s] < 1.0 and left > 0.0:
                i = sreq[r, s]
                done = -sf1[r, s]
                c = min(x1[i] - done, left)
                # prefill chunk c on top of `done` cached tokens: attention ~ (done+c)^2 - done^2
                x += c
                xx += (done + c) * (done + c) - done * done
                left -= c
                sf2[r, s] = done + c  # tokens of prompt processed by the end of this step
        while ri[r, RI_NWAIT] > 0 and n < seqs and left > 0.0:
            i = ri[r, RI_WHEAD]
            if ctx + x1[i] > kv and n > 0:
                break
            ri[r, RI_WHEAD] = nxt[i]
            ri[r, RI_NWAIT] -= 1
            if ri[r, RI_NWAIT] == 0:
                ri[r, RI_WTAIL] = -1
            c = min(x1[i], left)
            sreq[r, n] = i
            sf1[r, n] = 0.0
            sf2[r, n] = c
            mpos[i] = n
            n += 1
            x += c
            xx += c * c
            left -= c
            ctx += x1[i]
        ri[r, RI_N] = n
        if n == 0:
            ri[r, RI_STEP] = 0
            _msched(math.inf, r, si, ht, hv, status, M)
            return
        ri[r, RI_STEP] = 3
        dur = 0.0
        if x > 0.0:
            dur += _llm_prefill_time(x, xx, mp, tab)
        if ndec > 0:
            dur += tab[ndec] + mp[MPL_D2] * dctx
            if x > 0.0:
                dur -= tab[0]  # the step's fixed cost is paid once
    rf[r, RF_STEP_END] = t + dur
    _msched(t + dur, r, si, ht, hv, status, M)


@nb.njit(cache=True, _nrt=False)
def _llm_step_end(t, r, si, sf, arr_t, status, end, ongoing, sent, ht, hv, M):
    ri = M[2]
    sreq = M[3]
    sf1 = M[4]
    sf2 = M[5]
    mpos = M[6]
    first = M[8]
    x1 = M[10]
    x2 = M[11]
    kind = ri[r, RI_STEP]
    s = 0
    while s < ri[r, RI_N]:
        i = sreq[r, s]
        g = sf1[r, s]
        if kind == 1:
            if g < 0.0:  # prefilled in this step: its first token
                sf1[r, s] = 1.0
                sf2[r, s] = x1[i] + 1.0
                first[i] = t
        elif kind == 2:
            sf1[r, s] = g + 1.0
            sf2[r, s] += 1.0
        else:  # chunked step
            if g >= 1.0:
                sf1[r, s] = g + 1.0
                sf2[r, s] += 1.0
            elif sf2[r, s] >= x1[i]:  # prompt complete: first token
                sf1[r, s] = 1.0
                sf2[r, s] = x1[i] + 1.0
                first[i] = t
            else:
                sf1[r, s] = -sf2[r, s]  # partially prefilled
                sf2[r, s] = x1[i]  # its KV reservation while waiting for the next chunk
        if sf1[r, s] >= 1.0 and sf1[r, s] >= x2[i]:
            _llm_remove(r, s, M)
            _complete(t, i, r, si, sf, arr_t, status, end, ongoing, sent, ht, hv, M)
            continue
        s += 1
    ri[r, RI_STEP] = 0
    _llm_schedule(t, r, si, ht, hv, x1, status, M)


@nb.njit(cache=True, _nrt=False)
def _llm_remove(r, s, M):
    ri = M[2]
    sreq = M[3]
    sf1 = M[4]
    sf2 = M[5]
    mpos = M[6]
    last = ri[r, RI_N] - 1
    # Keep slot order (= admission order) so chunked prefill stays FIFO.
    i = sreq[r, s]
    for k in range(s, last):
        sreq[r, k] = sreq[r, k + 1]
        sf1[r, k] = sf1[r, k + 1]
        sf2[r, k] = sf2[r, k + 1]
        mpos[sreq[r, k]] = k
    sreq[r, last] = -1
    ri[r, RI_N] = last
    mpos[i] = -1


# ----------------------------------------------------------------------------- dispatch


@nb.njit(cache=True, _nrt=False)
def model_admit(t, r, i, si, sf, arr_t, svc, status, end, ongoing, sent, ht, hv, M):
    """Request i was just accepted by replica r at time t (its slot is taken)."""
    deadline = arr_t[i] + sf[TIMEOUT]
    if deadline < math.inf:
        heap_push(ht, hv, si, deadline, i * N_EV + EV_DEADLINE)
    mk = si[MODEL]
    rf = M[1]
    ri = M[2]
    sreq = M[3]
    sf1 = M[4]
    mpos = M[6]
    nxt = M[7]
    if mk == MK_PS:
        _ps_update(t, r, M)
        ri[r, RI_N] += 1
        if ri[r, RI_RUN] < M[12][MPS_K]:
            _ps_start(r, i, svc[i], M)
        else:
            nxt[i] = -1
            tail = ri[r, RI_WTAIL]
            if tail < 0:
                ri[r, RI_WHEAD] = i
            else:
                nxt[tail] = i
            ri[r, RI_WTAIL] = i
            ri[r, RI_NWAIT] += 1
            mpos[i] = sreq.shape[1]
        _msched(_ps_next(r, M), r, si, ht, hv, status, M)
    elif mk == MK_BATCH:
        mp = M[12]
        bat_i = M[14]
        bat_f = M[15]
        b = ri[r, RI_FORM]
        if b < 0:
            b = si[N_BATCH]
            si[N_BATCH] = b + 1
            bat_i[b, B_HEAD] = i
            bat_i[b, B_TAIL] = i
            bat_i[b, B_COUNT] = 0
            bat_i[b, B_NEXT] = -1
            bat_i[b, B_REPLICA] = r
            bat_f[b, BF_T0] = t
            ri[r, RI_FORM] = b
            rf[r, RF_FORM_DL] = t + mp[MPB_TIMEOUT]
        else:
            nxt[bat_i[b, B_TAIL]] = i
            bat_i[b, B_TAIL] = i
        nxt[i] = -1
        mpos[i] = 0
        bat_i[b, B_COUNT] += 1
        if bat_i[b, B_COUNT] >= int(mp[MPB_SIZE]):
            _batch_fire(r, b, M)
            _batch_start_waiting(t, r, status, M)
        _msched(_batch_next(r, M), r, si, ht, hv, status, M)
    elif mk == MK_LLM:
        x1 = M[10]
        S = sreq.shape[1]
        nxt[i] = -1
        tail = ri[r, RI_WTAIL]
        if tail < 0:
            ri[r, RI_WHEAD] = i
        else:
            nxt[tail] = i
        ri[r, RI_WTAIL] = i
        ri[r, RI_NWAIT] += 1
        mpos[i] = S
        if ri[r, RI_STEP] == 0:
            _llm_schedule(t, r, si, ht, hv, x1, status, M)


@nb.njit(cache=True, _nrt=False)
def model_event(t, r, si, sf, arr_t, svc, status, end, ongoing, sent, ht, hv, M):
    """Replica r's model reaches its scheduled event time t."""
    mk = si[MODEL]
    ri = M[2]
    sreq = M[3]
    sf1 = M[4]
    if mk == MK_PS:
        _ps_update(t, r, M)
        s = 0
        while s < ri[r, RI_RUN]:
            if sf1[r, s] <= PS_EPS:
                i = sreq[r, s]
                _ps_remove(r, s, svc, M)
                _complete(t, i, r, si, sf, arr_t, status, end, ongoing, sent, ht, hv, M)
            else:
                s += 1
        _msched(_ps_next(r, M), r, si, ht, hv, status, M)
    elif mk == MK_BATCH:
        rf = M[1]
        nxt = M[7]
        mp = M[12]
        bat_i = M[14]
        mpos = M[6]
        for k in range(int(mp[MPB_CONC])):
            b = sreq[r, k]
            if b >= 0 and sf1[r, k] <= t:
                i = bat_i[b, B_HEAD]
                while i >= 0:
                    j = nxt[i]
                    if mpos[i] >= 0:
                        _complete(t, i, r, si, sf, arr_t, status, end, ongoing, sent, ht, hv, M)
                    i = j
                sreq[r, k] = -1
                ri[r, RI_RUN] -= 1
        b = ri[r, RI_FORM]
        if b >= 0 and rf[r, RF_FORM_DL] <= t:
            _batch_fire(r, b, M)
        _batch_start_waiting(t, r, status, M)
        _msched(_batch_next(r, M), r, si, ht, hv, status, M)
    elif mk == MK_LLM:
        _llm_step_end(t, r, si, sf, arr_t, status, end, ongoing, sent, ht, hv, M)


@nb.njit(cache=True, _nrt=False)
def model_cancel(t, r, i, si, svc, status, ht, hv, M):
    """Request i (inside replica r's model) is cancelled at t; the caller frees its slot."""
    mk = si[MODEL]
    ri = M[2]
    mpos = M[6]
    nxt = M[7]
    if mk == MK_PS:
        _ps_update(t, r, M)
        if mpos[i] == M[3].shape[1]:
            _unlink_waiting(r, i, M)
            ri[r, RI_N] -= 1
        else:
            _ps_remove(r, mpos[i], svc, M)
        mpos[i] = -1
        _msched(_ps_next(r, M), r, si, ht, hv, status, M)
    elif mk == MK_BATCH:
        # The item stays in its batch (it still counts towards max_batch_size while the
        # batch forms); it is dropped just before execution, or skipped at the end.
        mpos[i] = -1
    elif mk == MK_LLM:
        sreq = M[3]
        S = sreq.shape[1]
        if mpos[i] == S:  # waiting: unlink
            _unlink_waiting(r, i, M)
            mpos[i] = -1
        else:
            # Aborted in the engine; the running step still takes its time.
            _llm_remove(r, mpos[i], M)


@nb.njit(cache=True, _nrt=False)
def model_kill(t, rid, si, end, status, replica, ongoing, sent, M):
    """Force-kill: requests inside replica rid's model fail now (HTTP 500)."""
    mnext = M[0]
    rf = M[1]
    ri = M[2]
    sreq = M[3]
    mpos = M[6]
    killed = 0
    for i in range(si[A_PTR]):
        if replica[i] == rid and status[i] == RUNNING and mpos[i] >= 0:
            status[i] = FAILED
            end[i] = t
            mpos[i] = -1
            release_slot(rid, si, ongoing, sent)
            killed += 1
    mnext[rid] = math.inf
    for k in range(ri.shape[1]):
        ri[rid, k] = 0
    ri[rid, RI_FORM] = -1
    ri[rid, RI_WHEAD] = -1
    ri[rid, RI_WTAIL] = -1
    for k in range(rf.shape[1]):
        rf[rid, k] = 0.0
    for k in range(sreq.shape[1]):
        sreq[rid, k] = -1
    return killed
