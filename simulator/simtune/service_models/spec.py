"""The service-model YAML file (`--service-model model.yaml`): parse and validate.

Every problem is one `InputError` line naming the file and the field, e.g.
  model.yaml: latency_s must not decrease with concurrency (0.2 at 4 < 0.3 at 2)

Formats (see traces/model_*.yaml):

  kind: fixed                      # each request's own service_time (default behaviour)

  kind: streaming                  # fixed + time to first chunk
  first_chunk_s: 0.05              # or first_chunk_fraction: 0.1, or first_chunk_column: COL

  kind: concurrency                # latency vs requests in flight on the replica
  concurrency: [1, 2, 4, 8]
  latency_s: [0.05, 0.1, 0.2, 0.4] # or throughput_rps: [...] (completions/s at that concurrency)
  parallelism: 4                   # optional: only the oldest 4 share the replica, the rest wait FIFO
  service_time: const              # when the trace has none: const|exp (mean latency_s[0]) or a spec

  kind: batch                      # @serve.batch
  max_batch_size: 8
  batch_wait_timeout_s: 0.01
  max_concurrent_batches: 1
  batch_latency: {base_s: 0.02, per_item_s: 0.005}   # or {batch_size: [...], latency_s: [...]}

  kind: llm
  scheduler: prefill_first         # or chunked
  max_num_seqs: 256
  max_num_batched_tokens: 8192     # optional
  kv_cache_tokens: 400000          # optional
  prefill: {base_s: 0.01, per_token_s: 1.0e-4, per_token2_s: 0}   # or {tokens: [...], latency_s: [...]}
  decode: {base_s: 0.02, per_seq_s: 1.0e-4, per_context_token_s: 1.0e-7}
                                   # or {seqs: [...], step_s: [...], per_context_token_s: ...}

Any model may carry `meta:` (free-form provenance, e.g. what `simtune profile` measured).
A top-level `service_model:` mapping is accepted too.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import yaml

from simtune.errors import InputError
from simtune.service_models.models import (
    MODELS, BatchModel, ConcurrencyCurveModel, FixedModel, LLMModel, ServiceModel, StreamingModel,
)


class _Fields:
    """Reads fields from one mapping and raises one-line errors naming them."""

    def __init__(self, data: dict, where: str, prefix: str = "") -> None:
        self.data = data
        self.where = where
        self.prefix = prefix
        self.used: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def fail(self, key: str, msg: str) -> None:
        raise InputError(f"{self.where}: {self.name(key)} {msg}")

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def number(self, key: str, default: Any = None, *, minimum: float = 0.0, strict: bool = False,
               integer: bool = False, required: bool = False) -> Any:
        self.used.add(key)
        if not self.has(key):
            if required:
                self.fail(key, "is missing")
            return default
        v = self.data[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.fail(key, f"must be a number, got {v!r}")
        if not math.isfinite(float(v)):
            self.fail(key, f"must be finite, got {v!r}")
        if integer and float(v) != int(v):
            self.fail(key, f"must be an integer, got {v!r}")
        if strict and not v > minimum:
            self.fail(key, f"must be > {minimum:g}, got {v!r}")
        if not strict and v < minimum:
            why = " (a time cannot be negative)" if key.endswith("_s") and minimum == 0 else ""
            self.fail(key, f"must be >= {minimum:g}{why}, got {v!r}")
        return int(v) if integer else float(v)

    def string(self, key: str, default: Optional[str] = None, choices: Optional[tuple] = None) -> Optional[str]:
        self.used.add(key)
        if not self.has(key):
            return default
        v = self.data[key]
        if not isinstance(v, str):
            self.fail(key, f"must be a string, got {v!r}")
        if choices and v not in choices:
            self.fail(key, f"must be one of {', '.join(choices)}, got {v!r}")
        return v

    def table(self, xkey: str, ykey: str, *, x_integer: bool = False, x_min: float = 0.0, y_positive: bool = False,
              y_monotone: str = "non-decreasing", required: bool = True) -> Optional[tuple[list, list]]:
        """Two equal-length lists: x strictly increasing, y >= 0 and (optionally) monotone."""
        self.used.update((xkey, ykey))
        if not self.has(xkey) and not self.has(ykey):
            if required:
                self.fail(xkey, f"is missing (a table needs {self.name(xkey)} and {self.name(ykey)})")
            return None
        for key in (xkey, ykey):
            if not self.has(key):
                self.fail(key, f"is missing (a table needs {self.name(xkey)} and {self.name(ykey)})")
            if not isinstance(self.data[key], (list, tuple)) or not self.data[key]:
                self.fail(key, "must be a non-empty list of numbers")
            for v in self.data[key]:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                    self.fail(key, f"must hold finite numbers, got {v!r}")
        xs, ys = [float(v) for v in self.data[xkey]], [float(v) for v in self.data[ykey]]
        if len(xs) != len(ys):
            self.fail(ykey, f"has {len(ys)} values but {self.name(xkey)} has {len(xs)}")
        for k, x in enumerate(xs):
            if x_integer and x != int(x):
                self.fail(xkey, f"must hold integers, got {x!r}")
            if x < x_min:
                self.fail(xkey, f"must be >= {x_min:g}, got {x!r}")
            if k and x <= xs[k - 1]:
                self.fail(xkey, f"must be strictly increasing ({x:g} after {xs[k - 1]:g})")
        for k, y in enumerate(ys):
            if y < 0 or (y_positive and y == 0):
                self.fail(ykey, f"must be {'> 0' if y_positive else '>= 0'} (times cannot be negative), got {y!r}")
            if k and y_monotone == "non-decreasing" and y < ys[k - 1]:
                self.fail(ykey, f"must not decrease with {xkey} ({y:g} at {xs[k]:g} < {ys[k - 1]:g} at "
                                f"{xs[k - 1]:g})")
        return xs, ys

    def mapping(self, key: str, required: bool = True) -> Optional["_Fields"]:
        self.used.add(key)
        if not self.has(key):
            if required:
                self.fail(key, "is missing")
            return None
        v = self.data[key]
        if not isinstance(v, dict):
            self.fail(key, f"must be a mapping, got {v!r}")
        return _Fields(v, self.where, f"{self.name(key)}.")

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise InputError(f"{self.where}: unknown field {self.name(unknown[0])!r}"
                             + (f" (known here: {', '.join(sorted(self.used))})" if self.used else ""))


def parse_service_model(data: Any, where: str = "<service model>") -> ServiceModel:
    """A ServiceModel from a mapping (the YAML file's contents)."""
    if isinstance(data, ServiceModel):
        return data
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping with a `kind` field, got {type(data).__name__}")
    if set(data) == {"service_model"} and isinstance(data["service_model"], dict):
        data = data["service_model"]
    f = _Fields(data, where)
    kind = data.get("kind")
    f.used.update(("kind", "meta"))
    if kind is None:
        raise InputError(f"{where}: kind is missing (one of {', '.join(MODELS)})")
    if not isinstance(kind, str) or kind not in MODELS:
        raise InputError(f"{where}: kind {kind!r} is unknown (one of {', '.join(MODELS)})")
    meta = data.get("meta") or {}
    if not isinstance(meta, dict):
        raise InputError(f"{where}: meta must be a mapping")
    model: ServiceModel
    if kind == "fixed":
        model = FixedModel(meta=meta)
    elif kind == "streaming":
        fc = f.number("first_chunk_s")
        fr = f.number("first_chunk_fraction")
        col = f.string("first_chunk_column")
        given = [k for k, v in (("first_chunk_s", fc), ("first_chunk_fraction", fr), ("first_chunk_column", col))
                 if v is not None]
        if not given:
            raise InputError(f"{where}: first_chunk_s is missing (or give first_chunk_fraction or first_chunk_column)")
        if len(given) > 1:
            raise InputError(f"{where}: {given[1]} conflicts with {given[0]} (give one)")
        if fr is not None and fr > 1:
            f.fail("first_chunk_fraction", f"must be <= 1, got {fr!r}")
        model = StreamingModel(first_chunk_s=fc, first_chunk_fraction=fr, first_chunk_column=col, meta=meta)
    elif kind == "concurrency":
        if f.has("throughput_rps") and f.has("latency_s"):
            raise InputError(f"{where}: throughput_rps conflicts with latency_s (give one)")
        if f.has("throughput_rps"):
            xs, tp = f.table("concurrency", "throughput_rps", x_integer=True, x_min=1, y_positive=True,
                             y_monotone="none")
            lat = [x / y for x, y in zip(xs, tp)]
            for k in range(1, len(lat)):
                if lat[k] < lat[k - 1]:
                    f.fail("throughput_rps", f"grows faster than concurrency ({tp[k]:g} at {xs[k]:g}): latency "
                                             "would decrease with concurrency")
        else:
            xs, lat = f.table("concurrency", "latency_s", x_integer=True, x_min=1, y_positive=True)
        st = f.string("service_time")
        if st is not None and st not in ("const", "exp"):
            from simtune.service_time import parse_service_time

            try:
                parse_service_time(st)
            except InputError as exc:
                raise InputError(f"{where}: service_time: {exc}") from None
        k = f.number("parallelism", None, minimum=1, integer=True)
        model = ConcurrencyCurveModel(concurrency=[int(x) for x in xs], latency_s=lat, service_time=st,
                                      parallelism=k, meta=meta)
    elif kind == "batch":
        mbs = f.number("max_batch_size", 10, minimum=1, integer=True)
        timeout = f.number("batch_wait_timeout_s", 0.01)
        conc = f.number("max_concurrent_batches", 1, minimum=1, integer=True)
        bl = f.mapping("batch_latency")
        if bl.has("batch_size") or bl.has("latency_s"):
            xs, ys = bl.table("batch_size", "latency_s", x_integer=True, x_min=1)
            if bl.has("base_s") or bl.has("per_item_s"):
                bl.fail("base_s", "conflicts with the batch_size/latency_s table (give one)")
            bl.done()
            model = BatchModel(max_batch_size=mbs, batch_wait_timeout_s=timeout, max_concurrent_batches=conc,
                               batch_size=[int(x) for x in xs], latency_s=ys, meta=meta)
        else:
            base = bl.number("base_s", required=True)
            per = bl.number("per_item_s", 0.0)
            bl.done()
            model = BatchModel(max_batch_size=mbs, batch_wait_timeout_s=timeout, max_concurrent_batches=conc,
                               base_s=base, per_item_s=per, meta=meta)
    else:  # llm
        sched = f.string("scheduler", "prefill_first", ("prefill_first", "chunked"))
        seqs = f.number("max_num_seqs", 256, minimum=1, integer=True)
        budget = f.number("max_num_batched_tokens", None, minimum=1, integer=True)
        kv = f.number("kv_cache_tokens", None, minimum=1)
        pre = f.mapping("prefill")
        kw: dict = {}
        if pre.has("tokens") or pre.has("latency_s"):
            xs, ys = pre.table("tokens", "latency_s", x_min=0)
            if len(xs) < 2:
                pre.fail("tokens", "needs at least 2 points")
            kw.update(prefill_tokens=xs, prefill_latency_s=ys)
        else:
            kw.update(prefill_base_s=pre.number("base_s", 0.0), prefill_per_token_s=pre.number("per_token_s", 0.0),
                      prefill_per_token2_s=pre.number("per_token2_s", 0.0))
            if not any(pre.has(k) for k in ("base_s", "per_token_s", "per_token2_s")):
                pre.fail("per_token_s", "is missing (give base_s/per_token_s/per_token2_s or tokens/latency_s)")
        pre.done()
        dec = f.mapping("decode")
        kw["decode_per_context_token_s"] = dec.number("per_context_token_s", 0.0)
        if dec.has("seqs") or dec.has("step_s"):
            xs, ys = dec.table("seqs", "step_s", x_integer=True, x_min=1, y_positive=True)
            kw.update(decode_seqs=[int(x) for x in xs], decode_step_s=ys)
        else:
            kw.update(decode_base_s=dec.number("base_s", 0.0), decode_per_seq_s=dec.number("per_seq_s", 0.0))
            if not (dec.has("base_s") or dec.has("per_seq_s")):
                dec.fail("base_s", "is missing (give base_s/per_seq_s or seqs/step_s)")
            if kw["decode_base_s"] + kw["decode_per_seq_s"] <= 0:
                dec.fail("base_s", "and per_seq_s give a zero-length decode step")
        dec.done()
        model = LLMModel(scheduler=sched, max_num_seqs=seqs, max_num_batched_tokens=budget, kv_cache_tokens=kv,
                         input_tokens_column=f.string("input_tokens_column", "input_tokens"),
                         output_tokens_column=f.string("output_tokens_column", "output_tokens"), meta=meta, **kw)
    f.done()
    return model


def load_service_model(path: str | Path) -> ServiceModel:
    """Read and validate a service-model YAML file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise InputError(f"{path}: invalid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        raise InputError(f"{path}: empty file (expected a mapping with a `kind` field)")
    return parse_service_model(data, str(path))


def save_service_model(model: ServiceModel, path: str | Path, header: Optional[str] = None) -> Path:
    path = Path(path)
    text = yaml.safe_dump(model.to_dict(), sort_keys=False, default_flow_style=None)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    path.write_text(text)
    return path
