"""Service models: what a replica does with the requests it accepted.

A model is a small parameter object. `build()` turns it into flat arrays for the
compiled request path (simtune.service_models.kernels), `service_times()` says what
each request's own service time is (if the model uses one), and `outputs()` reads the
per-request results the model produced (TTFT, TPOT, batch sizes).

  FixedModel             each request holds its slot for its own service_time (the default)
  StreamingModel         fixed, plus a time to first chunk per request
  ConcurrencyCurveModel  latency as a function of requests in flight on the replica
                         (generalised processor sharing; a linear curve is plain PS)
  BatchModel             @serve.batch exactly as serve/batching.py forms and runs batches
  LLMModel               a vLLM-style engine: prefill, per-step decode, max_num_seqs,
                         continuous batching; TTFT, TPOT and end-to-end latency
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import numpy as np

from simtune.errors import InputError
from simtune.service_models import kernels as K


# ----------------------------------------------------------------------------- tables


def interp_extrap(xs: np.ndarray, ys: np.ndarray, x: np.ndarray, *, beyond: str = "linear") -> np.ndarray:
    """Piecewise-linear interpolation; beyond the last point extrapolate the last segment
    (`linear`) or keep y/x constant (`proportional`, i.e. throughput held)."""
    xs = np.asarray(xs, dtype=float)
    ys = np.asarray(ys, dtype=float)
    x = np.asarray(x, dtype=float)
    y = np.interp(x, xs, ys)
    if xs.size >= 2:
        hi = x > xs[-1]
        if beyond == "proportional":
            y[hi] = ys[-1] * x[hi] / xs[-1]
        else:
            slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
            y[hi] = ys[-1] + slope * (x[hi] - xs[-1])
        lo = x < xs[0]
        slope0 = (ys[1] - ys[0]) / (xs[1] - xs[0])
        y[lo] = ys[0] + slope0 * (x[lo] - xs[0])
    elif xs.size == 1 and beyond == "proportional":
        y = ys[0] * x / xs[0]
    return y


# ----------------------------------------------------------------------------- kernel side


@dataclass
class KernelModel:
    """The arrays one model hands to the compiled request path."""

    code: int
    arrays: tuple
    per_replica: bool
    slots: int
    model: Any

    def grow(self, M: tuple, cap: int) -> tuple:
        """Per-replica arrays enlarged to `cap` replicas, keeping their contents."""
        out = list(M)
        fills = (np.inf, 0.0, 0, -1, 0.0, 0.0)
        for j, fill in enumerate(fills):
            old = M[j]
            if old.shape[0] >= cap:
                continue
            new = np.full((cap,) + old.shape[1:], fill, dtype=old.dtype)
            new[: old.shape[0]] = old
            if j == 2:  # ri: list heads/tails and the forming batch start at -1
                new[old.shape[0]:, K.RI_FORM] = -1
                new[old.shape[0]:, K.RI_WHEAD] = -1
                new[old.shape[0]:, K.RI_WTAIL] = -1
            out[j] = new
        return tuple(out)

    def outputs(self, dp: Any, proxy_overhead_s: float) -> dict:
        return self.model.outputs(dp, self, proxy_overhead_s)


def _arrays(n: int, replicas: int, slots: int, *, first: bool = False, bsz: bool = False,
            x1: Optional[np.ndarray] = None, x2: Optional[np.ndarray] = None,
            mp: Optional[np.ndarray] = None, tab: Optional[np.ndarray] = None, batches: int = 1) -> tuple:
    R = max(int(replicas), 1)
    S = max(int(slots), 1)
    N = max(n, 1)
    ri = np.zeros((R, K.N_RI), dtype=np.int64)
    ri[:, K.RI_FORM] = -1
    ri[:, K.RI_WHEAD] = -1
    ri[:, K.RI_WTAIL] = -1
    f64 = lambda a: np.ascontiguousarray(a, dtype=np.float64) if a is not None else np.zeros(1)  # noqa: E731
    return (
        np.full(R, np.inf),
        np.zeros((R, K.N_RF)),
        ri,
        np.full((R, S), -1, dtype=np.int64),
        np.zeros((R, S)),
        np.zeros((R, S)),
        np.full(N, -1, dtype=np.int64),
        np.full(N, -1, dtype=np.int64),
        np.full(N if first else 1, np.nan),
        np.zeros(N if bsz else 1, dtype=np.int64),
        f64(x1),
        f64(x2),
        f64(mp),
        f64(tab),
        np.zeros((max(batches, 1), 5), dtype=np.int64),
        np.zeros((max(batches, 1), 2)),
    )


def _ok_view(dp: Any, arr: np.ndarray) -> np.ndarray:
    out = np.asarray(arr, dtype=float).copy()
    out[dp.status != K.OK] = np.nan
    return out


# ----------------------------------------------------------------------------- models


@dataclass
class ServiceModel:
    """Base: the fixed/trace model (each request's own service_time)."""

    kind: ClassVar[str] = "fixed"
    code: ClassVar[int] = K.MK_FIXED
    meta: dict = field(default_factory=dict, kw_only=True)

    def service_times(self, trace: Any, service_time: Any = None, seed: int = 0) -> np.ndarray:
        from simtune.simulate import service_times_for

        return service_times_for(trace, service_time, seed)

    def build(self, n: int, columns: dict, max_ongoing_requests: int, svc: np.ndarray) -> Optional[KernelModel]:
        return None

    def outputs(self, dp: Any, km: KernelModel, proxy_overhead_s: float) -> dict:
        return {}

    def params(self) -> dict:
        return {}

    def to_dict(self) -> dict:
        out = {"kind": self.kind, **self.params()}
        if self.meta:
            out["meta"] = self.meta
        return out

    def describe(self) -> str:
        p = self.params()
        return self.kind + ("(" + ", ".join(f"{k}={v}" for k, v in p.items() if not isinstance(v, (list, dict))) + ")"
                            if p else "")


@dataclass
class FixedModel(ServiceModel):
    kind: ClassVar[str] = "fixed"
    code: ClassVar[int] = K.MK_FIXED


@dataclass
class StreamingModel(ServiceModel):
    """A streaming handler: the slot is held for the service time; the first chunk leaves
    `first_chunk_s` after the start (or `first_chunk_fraction` x service time, or a trace
    column), never later than the end."""

    kind: ClassVar[str] = "streaming"
    code: ClassVar[int] = K.MK_STREAM
    first_chunk_s: Optional[float] = None
    first_chunk_fraction: Optional[float] = None
    first_chunk_column: Optional[str] = None

    def params(self) -> dict:
        return {k: v for k, v in (("first_chunk_s", self.first_chunk_s),
                                  ("first_chunk_fraction", self.first_chunk_fraction),
                                  ("first_chunk_column", self.first_chunk_column)) if v is not None}

    def build(self, n, columns, max_ongoing_requests, svc):
        if self.first_chunk_column is not None:
            if self.first_chunk_column not in columns:
                raise InputError(f"service model streaming: the trace has no column {self.first_chunk_column!r} "
                                 f"(first_chunk_column)")
            x1 = np.asarray(columns[self.first_chunk_column], dtype=float)
        elif self.first_chunk_fraction is not None:
            x1 = svc * float(self.first_chunk_fraction)
        else:
            x1 = np.full(n, float(self.first_chunk_s or 0.0))
        if x1.size and (not np.all(np.isfinite(x1)) or x1.min() < 0):
            raise InputError("service model streaming: first-chunk times must be finite and >= 0")
        # Runs as the fixed model in the kernel; the first chunk is start + min(first, service time).
        return KernelModel(self.code, _arrays(n, 1, 1, x1=x1), False, 1, self)

    def outputs(self, dp, km, proxy_overhead_s):
        first = dp.start + np.minimum(km.arrays[10], dp.svc)
        return {"ttft": _ok_view(dp, first - dp.arr_t + proxy_overhead_s)}


@dataclass
class ConcurrencyCurveModel(ServiceModel):
    """Latency of a request as a function of the requests in flight on its replica.

    The curve L(n) (a table, interpolated linearly; beyond its last point the throughput
    n/L(n) is held) gives the replica's total work rate with n requests in it,
    mu(n) = n L(1)/L(n) (in requests' seconds-alone per second). `parallelism` k says how
    that rate is shared: the oldest min(n, k) requests share it equally, the others wait
    FIFO inside the replica (holding their max_ongoing_requests slots). k unset: all n
    share it (generalised processor sharing; a linear L(n) = n L(1) is M/M/1-PS); k = 1:
    first come, first served. A request's work s is its latency alone: the trace's
    service_time (or --service-time), else `service_time` here (default const at L(1)).
    In closed loop at n in flight, every k gives the same mean latency L(n).
    """

    kind: ClassVar[str] = "concurrency"
    code: ClassVar[int] = K.MK_PS
    concurrency: list = field(default_factory=lambda: [1])
    latency_s: list = field(default_factory=lambda: [0.05])
    service_time: Optional[str] = None
    parallelism: Optional[int] = None

    def params(self) -> dict:
        out = {"concurrency": [int(c) for c in self.concurrency], "latency_s": [float(x) for x in self.latency_s]}
        if self.parallelism is not None:
            out["parallelism"] = int(self.parallelism)
        if self.service_time is not None:
            out["service_time"] = self.service_time
        return out

    def latency_at(self, n: np.ndarray) -> np.ndarray:
        return interp_extrap(np.asarray(self.concurrency, float), np.asarray(self.latency_s, float),
                             np.asarray(n, float), beyond="proportional")

    def rate_table(self, upto: int) -> np.ndarray:
        ns = np.arange(upto + 1, dtype=float)
        lat = self.latency_at(np.maximum(ns, 1))
        base = float(self.latency_at(np.array([1.0]))[0])
        rate = base / lat
        rate[0] = 1.0
        return rate

    def service_times(self, trace, service_time=None, seed=0):
        if service_time is not None or trace.service_time is not None:
            return super().service_times(trace, service_time, seed)
        from simtune.service_time import parse_service_time

        base = float(self.latency_at(np.array([1.0]))[0])
        spec = self.service_time or "const"
        if spec in ("const", "exp"):
            spec = f"{spec}:{base!r}"
        dist = parse_service_time(spec)
        return dist.sample(np.random.default_rng([seed, 1]), len(trace))

    def build(self, n, columns, max_ongoing_requests, svc):
        S = max(int(max_ongoing_requests), 1)
        mu = self.rate_table(S) * np.arange(S + 1)  # total work rate with n in the replica
        mp = np.array([float(self.parallelism) if self.parallelism else math.inf])
        return KernelModel(self.code, _arrays(n, 64, S, mp=mp, tab=mu), True, S, self)


@dataclass
class BatchModel(ServiceModel):
    """`@serve.batch` (serve/batching.py), async handler.

    A batch starts forming when its first item arrives (t0) and closes at
    t0 + batch_wait_timeout_s or when it reaches max_batch_size; it then queues (FIFO,
    membership fixed) for one of max_concurrent_batches permits while the next batch
    forms. It runs for latency(live items) (cancelled items are dropped just before it
    runs); every item holds its max_ongoing_requests slot from acceptance to the batch's
    end. latency: a table over batch size (interpolated) or base_s + per_item_s x size.
    """

    kind: ClassVar[str] = "batch"
    code: ClassVar[int] = K.MK_BATCH
    max_batch_size: int = 10
    batch_wait_timeout_s: float = 0.01
    max_concurrent_batches: int = 1
    batch_size: Optional[list] = None
    latency_s: Optional[list] = None
    base_s: Optional[float] = None
    per_item_s: Optional[float] = None

    def params(self) -> dict:
        out: dict = {"max_batch_size": int(self.max_batch_size), "batch_wait_timeout_s": float(self.batch_wait_timeout_s),
                     "max_concurrent_batches": int(self.max_concurrent_batches)}
        if self.batch_size is not None:
            out["batch_latency"] = {"batch_size": [int(b) for b in self.batch_size],
                                    "latency_s": [float(x) for x in self.latency_s]}
        else:
            out["batch_latency"] = {"base_s": float(self.base_s or 0.0), "per_item_s": float(self.per_item_s or 0.0)}
        return out

    def latency(self, size: np.ndarray) -> np.ndarray:
        size = np.asarray(size, dtype=float)
        if self.batch_size is not None:
            return np.maximum(interp_extrap(np.asarray(self.batch_size, float), np.asarray(self.latency_s, float),
                                            size), 0.0)
        return float(self.base_s or 0.0) + float(self.per_item_s or 0.0) * size

    def service_times(self, trace, service_time=None, seed=0):
        return np.zeros(len(trace))

    def build(self, n, columns, max_ongoing_requests, svc):
        mbs = int(self.max_batch_size)
        tab = self.latency(np.arange(mbs + 1))
        tab[0] = 0.0
        mp = np.zeros(4)
        mp[K.MPB_SIZE] = mbs
        mp[K.MPB_TIMEOUT] = float(self.batch_wait_timeout_s)
        mp[K.MPB_CONC] = int(self.max_concurrent_batches)
        S = max(int(self.max_concurrent_batches), 1)
        arrays = _arrays(n, 64, S, bsz=True, mp=mp, tab=tab, batches=n)
        return KernelModel(self.code, arrays, True, S, self)

    def outputs(self, dp, km, proxy_overhead_s):
        return {"batch_size": km.arrays[9].copy()}


@dataclass
class LLMModel(ServiceModel):
    """A vLLM-style engine per replica (continuous batching).

    prefill time of a step prefilling prompts x_1..x_k: base_s + per_token_s sum(x) +
      per_token2_s sum(x^2) (attention), or a table over total tokens;
    decode step time with n running sequences holding c context tokens in total:
      d(n) + per_context_token_s c, with d(n) = base_s + per_seq_s n or a table over n.
    scheduler `prefill_first` (vLLM v0): a step either prefills waiting prompts (up to
      max_num_seqs sequences, max_num_batched_tokens tokens, kv_cache_tokens) or decodes
      one token of every running sequence; prefills go first.
    scheduler `chunked` (vLLM v1): every step decodes all running sequences and spends
      the rest of max_num_batched_tokens on prompt chunks, oldest first.
    A request's first token comes at the end of the step that completes its prompt
    (TTFT); it finishes when it has output_tokens tokens. Tokens per request come from
    the trace's input_tokens/output_tokens columns.
    """

    kind: ClassVar[str] = "llm"
    code: ClassVar[int] = K.MK_LLM
    scheduler: str = "prefill_first"
    max_num_seqs: int = 256
    max_num_batched_tokens: Optional[int] = None
    kv_cache_tokens: Optional[float] = None
    prefill_base_s: float = 0.0
    prefill_per_token_s: float = 0.0
    prefill_per_token2_s: float = 0.0
    prefill_tokens: Optional[list] = None
    prefill_latency_s: Optional[list] = None
    decode_base_s: float = 0.0
    decode_per_seq_s: float = 0.0
    decode_per_context_token_s: float = 0.0
    decode_seqs: Optional[list] = None
    decode_step_s: Optional[list] = None
    input_tokens_column: str = "input_tokens"
    output_tokens_column: str = "output_tokens"

    def params(self) -> dict:
        if self.prefill_tokens is not None:
            prefill: dict = {"tokens": [float(x) for x in self.prefill_tokens],
                             "latency_s": [float(x) for x in self.prefill_latency_s]}
        else:
            prefill = {"base_s": self.prefill_base_s, "per_token_s": self.prefill_per_token_s,
                       "per_token2_s": self.prefill_per_token2_s}
        if self.decode_seqs is not None:
            decode: dict = {"seqs": [int(x) for x in self.decode_seqs], "step_s": [float(x) for x in self.decode_step_s],
                            "per_context_token_s": self.decode_per_context_token_s}
        else:
            decode = {"base_s": self.decode_base_s, "per_seq_s": self.decode_per_seq_s,
                      "per_context_token_s": self.decode_per_context_token_s}
        out = {"scheduler": self.scheduler, "max_num_seqs": int(self.max_num_seqs), "prefill": prefill,
               "decode": decode}
        if self.max_num_batched_tokens is not None:
            out["max_num_batched_tokens"] = int(self.max_num_batched_tokens)
        if self.kv_cache_tokens is not None:
            out["kv_cache_tokens"] = float(self.kv_cache_tokens)
        if self.input_tokens_column != "input_tokens":
            out["input_tokens_column"] = self.input_tokens_column
        if self.output_tokens_column != "output_tokens":
            out["output_tokens_column"] = self.output_tokens_column
        return out

    # Closed forms the tests (and users) can check against.
    def prefill_time(self, tokens: float) -> float:
        if self.prefill_tokens is not None:
            return float(max(interp_extrap(np.asarray(self.prefill_tokens, float),
                                           np.asarray(self.prefill_latency_s, float), np.array([tokens]))[0], 0.0))
        return self.prefill_base_s + self.prefill_per_token_s * tokens + self.prefill_per_token2_s * tokens * tokens

    def decode_step_time(self, seqs: int, context_tokens: float) -> float:
        return float(self._decode_table(max(seqs, 1))[seqs]) + self.decode_per_context_token_s * context_tokens

    def _decode_table(self, upto: int) -> np.ndarray:
        ns = np.arange(upto + 1, dtype=float)
        if self.decode_seqs is not None:
            return np.maximum(interp_extrap(np.asarray(self.decode_seqs, float), np.asarray(self.decode_step_s, float),
                                            ns), 0.0)
        return self.decode_base_s + self.decode_per_seq_s * ns

    def service_times(self, trace, service_time=None, seed=0):
        return np.zeros(len(trace))

    def tokens(self, columns: dict, n: int) -> tuple[np.ndarray, np.ndarray]:
        out = []
        for col, what in ((self.input_tokens_column, "input_tokens_column"),
                          (self.output_tokens_column, "output_tokens_column")):
            if col not in columns:
                raise InputError(f"service model llm: the trace has no column {col!r} ({what}); "
                                 f"columns: {sorted(columns) or 'none'}")
            v = np.asarray(columns[col], dtype=float)
            if v.size and (not np.all(np.isfinite(v)) or v.min() < 0):
                raise InputError(f"service model llm: column {col!r} must hold token counts >= 0")
            out.append(v)
        return out[0], np.maximum(out[1], 1.0)

    def build(self, n, columns, max_ongoing_requests, svc):
        x1, x2 = self.tokens(columns, n)
        seqs = int(self.max_num_seqs)
        S = max(1, min(seqs, int(max_ongoing_requests)))
        dec = self._decode_table(S)
        ptab = np.zeros(0)
        if self.prefill_tokens is not None:
            ptab = np.concatenate([np.asarray(self.prefill_tokens, float), np.asarray(self.prefill_latency_s, float)])
        tab = np.concatenate([dec, ptab])
        mp = np.zeros(12)
        mp[K.MPL_SEQS] = seqs
        mp[K.MPL_BUDGET] = float(self.max_num_batched_tokens) if self.max_num_batched_tokens else math.inf
        mp[K.MPL_P0] = self.prefill_base_s
        mp[K.MPL_P1] = self.prefill_per_token_s
        mp[K.MPL_P2] = self.prefill_per_token2_s
        mp[K.MPL_D2] = self.decode_per_context_token_s
        mp[K.MPL_NPTAB] = 0 if self.prefill_tokens is None else len(self.prefill_tokens)
        mp[K.MPL_PTAB_OFF] = dec.size
        mp[K.MPL_CHUNKED] = 1.0 if self.scheduler == "chunked" else 0.0
        mp[K.MPL_KV] = float(self.kv_cache_tokens) if self.kv_cache_tokens else math.inf
        arrays = _arrays(n, 64, S, first=True, x1=x1, x2=x2, mp=mp, tab=tab)
        return KernelModel(self.code, arrays, True, S, self)

    def outputs(self, dp, km, proxy_overhead_s):
        first = km.arrays[8]
        out_tok = km.arrays[11]
        ttft = _ok_view(dp, first - dp.arr_t + proxy_overhead_s)
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot = np.where(out_tok > 1, (dp.end - first) / (out_tok - 1), np.nan)
        return {"ttft": ttft, "tpot": _ok_view(dp, tpot)}


MODELS: dict[str, type] = {m.kind: m for m in (FixedModel, StreamingModel, ConcurrencyCurveModel, BatchModel,
                                               LLMModel)}
