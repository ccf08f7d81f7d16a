"""Model multiplexing (`@serve.multiplexed`): routing by model id, per-replica LRU caches.

Mirrors (Ray 2.60):
  serve/_private/request_router/request_router.py:MultiplexMixin.apply_multiplex_routing
    -- while the request has been matching for less than a timeout drawn
    U(T, 2T) (RAY_SERVE_MULTIPLEXED_MODEL_ID_MATCHING_TIMEOUT_S = T) at every attempt:
    the first attempt tries the replicas the router believes hold the model; if none
    does (and the model is not already in the fallback set), or on any later attempt,
    the replicas with the fewest models; after the timeout, once more the fewest, then
    every replica. A model with no holder that *is* in the fallback set gets no
    candidates on its first attempt. `should_backoff` is set, so multiplexed requests
    make two attempts without sleeping, then back off (_choose_replicas_with_backoff);
  pow_2_router.py:choose_replicas (2 distinct candidates at random, no locality step);
  request_router.py:_fulfill_next_pending_request -- the replica found goes to the
    oldest pending request with the same model id, else the oldest pending request;
  serve/multiplex.py:_ModelMultiplexWrapper.load_model -- a loaded model is used at
    once (moved to the LRU end); otherwise the request takes the replica's single
    `_model_cache_lock` (loads are serialised, FIFO), re-checks, evicts the least
    recently used model when max_num_models_per_replica are loaded, then loads. The
    slot is held all the while. The replica reports loaded + loading model ids every
    PUSH_MULTIPLEXED_MODEL_IDS_INTERVAL_S (0.1 s) to the controller, which broadcasts
    them to routers: routers learn of a model `view_delay_s` after its load began.

State tuple X (same types for every deployment so one compiled kernel serves all):
  X[0] mid    i8[C]    model id of each request (-1: not multiplexed)
  X[1] cache  i8[R, E] per replica: model of each entry (loaded, loading or queued for the
                       lock, or evicted not long ago; -1: free), E = K + max_ongoing + 8
  X[2] last   f8[R, E] last use (LRU order)
  X[3] ready  f8[R, E] when the load finishes
  X[4] seen   f8[R, E] when routers learn of the entry
  X[5] t0     f8[C]    when the request started matching (NaN: not yet)
  X[6] flag   i8[C]    bit 0 tried the model's holders, bit 1 tried the fewest-models set
  X[7] fb     i8[M]    model ids in the router's fallback set
  X[8] load   f8[C]    load time of the request's model, should it miss
  X[9] mp     f8[4]    T (matching timeout), view delay, K, unused
  X[10] lock  f8[R]    when each replica's model lock is free
  X[11] cand  i8[R]    scratch: candidate replica ids
  X[12] gone  f8[R, E] when the entry was evicted (inf: not evicted)

Why entries with times instead of a plain cache: loads are serialised behind the lock, so
when a request reaches a replica the cache it will find depends on the loads queued
before it. The request path works out, at the moment a request is sent, when it gets
the lock and what is loaded then; a request arriving meanwhile sees each entry as it is
at its own time (loaded once `ready` passed, gone once evicted).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from simtune.service_models.kernels import CAP, N_ROUTABLE, Q_HEAD, Q_TAIL, R_PTR, pow2_pick, remove_queued_at

MX_TIMEOUT, MX_VIEW_DELAY, MX_K = 0, 1, 2


def empty_mux_arrays() -> tuple:
    """Placeholders with X's types, for deployments that are not multiplexed."""
    i1, f1 = np.zeros(1, dtype=np.int64), np.zeros(1)
    return (np.full(1, -1, dtype=np.int64), np.full((1, 1), -1, dtype=np.int64), np.zeros((1, 1)),
            np.zeros((1, 1)), np.zeros((1, 1)), f1.copy(), i1.copy(), i1.copy(), f1.copy(), np.zeros(4),
            f1.copy(), i1.copy(), np.zeros((1, 1)))


def mux_arrays(model_ids: np.ndarray, load_times: np.ndarray, k: int, timeout_s: float, view_delay_s: float,
               replicas: int, max_ongoing_requests: int) -> tuple:
    n = int(model_ids.shape[0])
    mids = np.ascontiguousarray(model_ids, dtype=np.int64)
    m = int(mids.max()) + 1 if n else 1
    R = max(int(replicas), 1)
    mp = np.zeros(4)
    mp[MX_TIMEOUT], mp[MX_VIEW_DELAY], mp[MX_K] = timeout_s, view_delay_s, k
    E = k + int(max_ongoing_requests) + 8
    return (mids, np.full((R, E), -1, dtype=np.int64), np.zeros((R, E)), np.zeros((R, E)), np.zeros((R, E)),
            np.full(max(n, 1), np.nan), np.zeros(max(n, 1), dtype=np.int64), np.zeros(max(m, 1), dtype=np.int64),
            np.ascontiguousarray(load_times, dtype=np.float64), mp, np.zeros(R), np.zeros(R, dtype=np.int64),
            np.full((R, E), np.inf))


def grow_mux(X: tuple, cap: int) -> tuple:
    """Per-replica arrays enlarged to `cap` replicas, keeping their contents."""
    if X[1].shape[0] >= cap or X[9][MX_K] == 0:
        return X
    out = list(X)
    for j, fill in ((1, -1), (2, 0.0), (3, 0.0), (4, 0.0), (12, np.inf)):
        old = X[j]
        new = np.full((cap, old.shape[1]), fill, dtype=old.dtype)
        new[: old.shape[0]] = old
        out[j] = new
    lock = np.zeros(cap)
    lock[: X[10].shape[0]] = X[10]
    out[10] = lock
    out[11] = np.zeros(cap, dtype=np.int64)
    return tuple(out)


@nb.njit(cache=True, _nrt=False, inline="always")
def _known(r, j, t, cache, seen, gone, delay):
    """Whether routers list entry j of replica r at t (reported from when its load was
    requested until a report after its eviction)."""
    return cache[r, j] >= 0 and seen[r, j] <= t and gone[r, j] + delay > t


@nb.njit(cache=True, _nrt=False)
def _visible(r, t, cache, seen, gone, delay, m):
    for j in range(cache.shape[1]):
        if cache[r, j] == m and _known(r, j, t, cache, seen, gone, delay):
            return True
    return False


@nb.njit(cache=True, _nrt=False)
def _fewest(t, si, routable, cache, seen, gone, delay, cand):
    n = si[N_ROUTABLE]
    best = 1 << 30
    c = 0
    for a in range(n):
        r = routable[a]
        cnt = 0
        for j in range(cache.shape[1]):
            if _known(r, j, t, cache, seen, gone, delay):
                cnt += 1
        if cnt < best:
            best = cnt
            c = 0
        if cnt == best:
            cand[c] = r
            c += 1
    return c


@nb.njit(cache=True, _nrt=False)
def mux_pick(t, call, si, routable, ongoing, X):
    """One multiplexed routing attempt for `call` (apply_multiplex_routing + pow-2): a
    replica id below max_ongoing_requests, or -1."""
    mid, cache, seen, t0, flag, fb, mp, cand, gone = X[0], X[1], X[4], X[5], X[6], X[7], X[9], X[11], X[12]
    delay = mp[MX_VIEW_DELAY]
    m = mid[call]
    n_all = si[N_ROUTABLE]
    if n_all == 0:
        return -1
    if math.isnan(t0[call]):
        t0[call] = t
    timeout = mp[MX_TIMEOUT] * (1.0 + np.random.random())
    c = 0
    if t - t0[call] < timeout:
        for a in range(n_all):
            r = routable[a]
            if _visible(r, t, cache, seen, gone, delay, m):
                cand[c] = r
                c += 1
        if (c == 0 and fb[m] == 0) or (flag[call] & 1):
            c = _fewest(t, si, routable, cache, seen, gone, delay, cand)
            fb[m] = 1
        elif c > 0:
            fb[m] = 0
        flag[call] |= 1
    elif (flag[call] & 2) == 0:
        c = _fewest(t, si, routable, cache, seen, gone, delay, cand)
        flag[call] |= 2
    else:
        for a in range(n_all):
            cand[a] = routable[a]
        c = n_all
    return pow2_pick(cand, c, si[CAP], ongoing)


@nb.njit(cache=True, _nrt=False)
def mux_take(m, si, queue, task_own, mid):
    """Remove and return the oldest pending request for model m (else the oldest one):
    _fulfill_next_pending_request's matching. Queue positions after it shift down."""
    h = si[Q_HEAD]
    tail = si[Q_TAIL]
    p = h
    for j in range(h, tail):
        if mid[queue[j]] == m:
            p = j
            break
    i = queue[p]
    if p == h:
        si[Q_HEAD] = h + 1
        if si[R_PTR] < h + 1:
            si[R_PTR] = h + 1
        return i
    remove_queued_at(p, si, queue, task_own)
    return i


@nb.njit(cache=True, _nrt=False)
def mux_replica(t, r, i, X):
    """Request i starts on replica r at t: when its handler gets its model. A loaded model
    is used at once (and becomes the most recently used); otherwise the handler waits
    for the replica's lock behind the loads queued before it, finds the model loaded by
    then (a load of the same model ahead of it), or evicts the least recently used of
    the K loaded models and loads. Returns that time."""
    mid, cache, last, ready, seen, load, mp, lock, gone = X[0], X[1], X[2], X[3], X[4], X[8], X[9], X[10], X[12]
    m = mid[i]
    E = cache.shape[1]
    K = int(mp[MX_K])
    delay = mp[MX_VIEW_DELAY]
    for j in range(E):
        if cache[r, j] == m and ready[r, j] <= t < gone[r, j]:
            last[r, j] = t
            return t
    at = max(t, lock[r])
    for j in range(E):
        if cache[r, j] == m and ready[r, j] <= at < gone[r, j]:
            return at  # loaded by a request ahead of it on the lock; recency unchanged
    # evict the least recently used model loaded at `at` if K are loaded
    n_loaded = 0
    v = -1
    for j in range(E):
        if cache[r, j] >= 0 and ready[r, j] <= at < gone[r, j]:
            n_loaded += 1
            if v < 0 or last[r, j] < last[r, v]:
                v = j
    if n_loaded >= K:
        gone[r, v] = at
    # a free entry: never used, or evicted long enough ago that no router lists it
    f = -1
    for j in range(E):
        if cache[r, j] < 0 or gone[r, j] + delay <= t:
            f = j
            break
    if f < 0:  # cannot happen while E > K + max_ongoing_requests; keep going regardless
        f = v if v >= 0 else 0
    done = at + load[i]
    cache[r, f] = m
    ready[r, f] = done
    last[r, f] = done
    seen[r, f] = t + delay
    gone[r, f] = np.inf
    lock[r] = done
    return done
