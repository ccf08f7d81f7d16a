"""What `recommend` minimises and what it must not violate, computed from simulations.

Objective: cost (replica-seconds by default, or money from --cost-per-replica-hour /
--cost-per-gpu-hour). Constraints: each SLO and the error rate (rejected + timed out +
failed + never finished, over all requests) <= --max-error-rate. An SLO bounds a
percentile of successful requests' latency (`p99=2.0`), time to first token
(`ttft_p99=10`) or time per output token after the first (`tpot_p99=100ms`); TTFT and
TPOT are those the client sees (an LLM or streaming service model, or an application
that streams from one of its deployments, e.g. prefill/decode), and a request without
a TPOT (a one-token reply) never fails a TPOT bound. Attainment is the share of all
requests that succeed within a bound (`attainment_<slo>`), and within every bound at
once (`attainment`). Whatever the SLOs, the TTFT/TPOT p50 and p99 (`ttft_p50` ...) and
the mean GPUs held (`mean_gpus`, from each deployment's num_gpus, placement-group
bundles included) are reported when the simulation has them.

Robustness is a worst case, taken the same way everywhere (search, baselines, holdout):
latency percentiles and the error rate are the maximum over every scenario (trace x
simulator seed x traffic multiplier); cost is, per trace, the maximum over its seeds
and multipliers, summed over traces (the bill for serving all these workloads with
the traffic at its worst). Constraint values are relative (p/bound - 1), so optuna
sees one scale whatever the SLO's unit; <= 0 means met.

A composed application (simtune.app) is scored the same way on its end-to-end view:
the latency and errors of the trace's requests as the client sees them (the ingress's
calls), and the cost of every deployment added up, each at its own num_gpus. Its
metrics also carry `deployments`: each deployment's replica-seconds, mean replicas,
mean GPUs and cost, and the latency of the calls it received (at the primary SLO's
percentile, under the key `pNN`, whatever the primary SLO's metric). In the
worst case each deployment's cost figures are those of the scenario that costs the
application most on each trace (so they add up to the total), its latency the worst
over every scenario.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import numpy as np

from simtune.dataplane import OK
from simtune.errors import InputError

INFEASIBLE = 1e9  # stands in for "no successful request at all" (optuna rejects NaN)


METRICS = ("latency", "ttft", "tpot")
_METRIC_WORDS = {"latency": "latency", "ttft": "TTFT", "tpot": "TPOT"}
INFO_PERCENTILES = (50.0, 99.0)  # TTFT/TPOT percentiles reported whatever the SLOs


@dataclass(frozen=True)
class Slo:
    """An SLO: the `percentile`-th percentile of successful requests' `metric`
    (latency, ttft or tpot) <= `bound_s`."""

    percentile: float
    bound_s: float
    metric: str = "latency"

    @property
    def name(self) -> str:
        """`p99` for latency (the historical name), `ttft_p99` / `tpot_p99` otherwise."""
        q = f"p{self.percentile:g}"
        return q if self.metric == "latency" else f"{self.metric}_{q}"

    @property
    def label(self) -> str:
        """`p99` / `TTFT p99` / `TPOT p99`, for tables."""
        q = f"p{self.percentile:g}"
        return q if self.metric == "latency" else f"{_METRIC_WORDS[self.metric]} {q}"

    def __str__(self) -> str:
        return f"{self.name} <= {self.bound_s:g} s"


_SLO_RE = re.compile(r"^\s*(?:([A-Za-z][A-Za-z0-9]*)_)?p(\d+(?:\.\d+)?)\s*[=:<]=?\s*([0-9.eE+-]+)\s*(ms|s)?\s*$")
_SLO_FORMS = "[METRIC_]pNN=SECONDS with METRIC latency (the default), ttft or tpot, e.g. p99=2.0, ttft_p99=10, " \
             "tpot_p99=100ms"


def parse_slo(text: str) -> Slo:
    """`p99=2.0`, `p99.9=0.8`, `p50=200ms` (latency); `ttft_p99=10`, `tpot_p99=100ms`;
    `latency_p99=2` is `p99=2`."""
    m = _SLO_RE.match(str(text))
    if not m:
        raise InputError(f"--slo {text!r}: expected {_SLO_FORMS}")
    metric = (m.group(1) or "latency").lower()
    if metric not in METRICS:
        raise InputError(f"--slo {text!r}: unknown metric {m.group(1)!r} (known: latency as pNN or latency_pNN, "
                         "ttft_pNN, tpot_pNN)")
    q = float(m.group(2))
    try:
        bound = float(m.group(3))
    except ValueError:
        raise InputError(f"--slo {text!r}: {m.group(3)!r} is not a number") from None
    if m.group(4) == "ms":
        bound /= 1000.0
    if not 0 < q < 100:
        raise InputError(f"--slo {text!r}: percentile must be between 0 and 100 (exclusive)")
    if not (bound > 0 and math.isfinite(bound)):
        raise InputError(f"--slo {text!r}: the {_METRIC_WORDS[metric]} bound must be a positive number of seconds")
    return Slo(q, bound, metric)


@dataclass(frozen=True)
class CostModel:
    """Replica-seconds, or money per replica-hour and per GPU-hour."""

    per_replica_hour: Optional[float] = None
    per_gpu_hour: Optional[float] = None
    num_gpus: float = 0.0

    @property
    def unit(self) -> str:
        return "replica-s" if self.per_replica_hour is None and self.per_gpu_hour is None else "$"

    def __call__(self, replica_seconds: float, num_gpus: Optional[float] = None) -> float:
        """Cost of `replica_seconds` of a deployment with `num_gpus` per replica
        (default: this model's own, the single deployment's)."""
        if self.unit == "replica-s":
            return replica_seconds
        gpus = self.num_gpus if num_gpus is None else num_gpus
        hours = replica_seconds / 3600.0
        return hours * (self.per_replica_hour or 0.0) + hours * gpus * (self.per_gpu_hour or 0.0)


@dataclass(frozen=True)
class Objective:
    slos: tuple[Slo, ...]
    max_error_rate: float
    cost: CostModel
    pareto: bool = False

    def __post_init__(self) -> None:
        if not self.slos:
            raise InputError("give at least one SLO, e.g. --slo p99=2.0 (or ttft_p99=10, tpot_p99=0.1)")
        if not 0 <= self.max_error_rate < 1:
            raise InputError(f"--max-error-rate {self.max_error_rate!r}: must be in [0, 1)")

    @property
    def primary(self) -> Slo:
        return self.slos[0]

    @property
    def directions(self) -> list[str]:
        return ["minimize", "minimize"] if self.pareto else ["minimize"]

    # -- one simulation ------------------------------------------------------------------
    def score(self, res, t0: float = 0.0) -> dict[str, Any]:
        """Metrics of the requests arriving at or after `t0` and the replica-seconds
        from `t0` to the end of the run (`t0` > 0: a holdout window of a longer run).
        `res`: a SimResult, or an AppResult (end to end, cost over every deployment)."""
        per = getattr(res, "deployments", None)
        e2e = res.end_to_end if per is not None else res
        m = e2e.arrival >= t0
        n = int(m.sum())
        ok = e2e.status[m] == OK
        out: dict[str, Any] = {"requests": n, "error_rate": float(1.0 - ok.sum() / n) if n else 0.0}
        met_all = ok.copy()
        for slo in self.slos:
            values, met = _metric(e2e, slo.metric, m, ok, slo.bound_s)
            out[slo.name] = float(np.percentile(values, slo.percentile)) if values.size else (
                0.0 if ok.any() else INFEASIBLE)
            out[f"attainment_{slo.name}"] = float(met.sum() / n) if n else 1.0
            met_all &= met
        out["attainment"] = float(met_all.sum() / n) if n else 1.0
        for metric in ("ttft", "tpot"):
            if getattr(e2e, metric, None) is None:
                continue
            values, _ = _metric(e2e, metric, m, ok, math.inf)
            for q in INFO_PERCENTILES:
                out.setdefault(f"{metric}_p{q:g}", float(np.percentile(values, q)) if values.size else (
                    0.0 if ok.any() else INFEASIBLE))
        if per is None:
            rs = replica_seconds(res.timeline, t0, res.horizon)
            span = res.horizon - t0
            out["replica_seconds"] = rs
            out["mean_replicas"] = rs / span if span > 0 else 0.0
            out["gpu_seconds"] = rs * float(getattr(res, "num_gpus", 0.0) or 0.0)
            out["mean_gpus"] = out["gpu_seconds"] / span if span > 0 else 0.0
            out["cost"] = self.cost(rs)
            return out
        deps = {name: self._deployment(r, t0) for name, r in per.items()}
        rs = sum(d["replica_seconds"] for d in deps.values())
        span = e2e.horizon - t0
        out["replica_seconds"] = rs
        out["mean_replicas"] = rs / span if span > 0 else 0.0
        out["gpu_seconds"] = sum(d["gpu_seconds"] for d in deps.values())
        out["mean_gpus"] = out["gpu_seconds"] / span if span > 0 else 0.0
        out["cost"] = sum(d["cost"] for d in deps.values())
        out["deployments"] = deps
        return out

    @property
    def call_latency_key(self) -> str:
        """The key of a deployment's call latency in `deployments` (the primary SLO's
        percentile of latency, whatever the primary SLO's metric)."""
        return f"p{self.primary.percentile:g}"

    def _deployment(self, res, t0: float) -> dict[str, Any]:
        """One deployment of an application: its cost and the latency of its calls."""
        rs = replica_seconds(res.timeline, t0, res.horizon)
        m = res.arrival >= t0
        lat = res.latency[m][res.status[m] == OK]
        p = self.primary
        span = res.horizon - t0
        gpus = float(res.num_gpus or 0.0)
        return {"calls": int(m.sum()), "replica_seconds": rs,
                "mean_replicas": rs / span if span > 0 else 0.0,
                "gpus_per_replica": gpus, "gpu_seconds": rs * gpus,
                "mean_gpus": rs * gpus / span if span > 0 else 0.0,
                "cost": self.cost(rs, res.num_gpus),
                self.call_latency_key: float(np.percentile(lat, p.percentile)) if lat.size else INFEASIBLE}

    # -- many simulations -> one worst case ---------------------------------------------
    def worst(self, runs: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        """Worst case over (trace name, metrics) pairs (see the module docstring)."""
        runs = list(runs)
        out: dict[str, Any] = {"error_rate": max(m["error_rate"] for _, m in runs)}
        for slo in self.slos:
            out[slo.name] = max(m[slo.name] for _, m in runs)
            out[f"attainment_{slo.name}"] = min(m[f"attainment_{slo.name}"] for _, m in runs)
        if all("attainment" in m for _, m in runs):
            out["attainment"] = min(m["attainment"] for _, m in runs)
        for metric in ("ttft", "tpot"):
            for q in INFO_PERCENTILES:
                key = f"{metric}_p{q:g}"
                if key not in out and all(key in m for _, m in runs):
                    out[key] = max(m[key] for _, m in runs)
        per_trace: dict[str, dict[str, float]] = {}
        for name, m in runs:
            t = per_trace.setdefault(name, {"cost": -math.inf, "replica_seconds": -math.inf, "mean_replicas": 0.0,
                                            "gpu_seconds": 0.0, "mean_gpus": 0.0})
            for key in t:
                t[key] = max(t[key], m.get(key, 0.0))
        out["cost"] = sum(t["cost"] for t in per_trace.values())
        out["replica_seconds"] = sum(t["replica_seconds"] for t in per_trace.values())
        out["mean_replicas"] = max(t["mean_replicas"] for t in per_trace.values())
        out["gpu_seconds"] = sum(t["gpu_seconds"] for t in per_trace.values())
        out["mean_gpus"] = max(t["mean_gpus"] for t in per_trace.values())
        out["requests"] = sum(m["requests"] for _, m in runs)
        if any("deployments" in m for _, m in runs):
            out["deployments"] = self._worst_deployments(runs)
        return out

    def _worst_deployments(self, runs: list[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
        """Per deployment: cost figures of each trace's costliest scenario (summed over
        traces, like the total), latency the worst over every scenario."""
        costliest: dict[str, dict[str, Any]] = {}
        for name, m in runs:
            if name not in costliest or m["cost"] > costliest[name]["cost"]:
                costliest[name] = m
        p = self.call_latency_key
        out: dict[str, dict[str, Any]] = {}
        for dep in runs[0][1]["deployments"]:
            rows = [m["deployments"][dep] for m in costliest.values()]
            out[dep] = {"calls": sum(m["deployments"][dep]["calls"] for _, m in runs),
                        "replica_seconds": sum(r["replica_seconds"] for r in rows),
                        "mean_replicas": max(r["mean_replicas"] for r in rows),
                        "gpus_per_replica": max(r.get("gpus_per_replica", 0.0) for r in rows),
                        "gpu_seconds": sum(r.get("gpu_seconds", 0.0) for r in rows),
                        "mean_gpus": max(r.get("mean_gpus", 0.0) for r in rows),
                        "cost": sum(r["cost"] for r in rows),
                        p: max(m["deployments"][dep][p] for _, m in runs)}
        return out

    def constraints(self, agg: dict[str, Any]) -> dict[str, float]:
        """optuna constraint values (<= 0: met). In Pareto mode the primary SLO is an
        objective, not a constraint, so the front spans latencies on both sides of it."""
        out = {}
        slos = self.slos[1:] if self.pareto else self.slos
        for slo in slos:
            out[slo.name] = min(agg[slo.name] / slo.bound_s - 1.0, INFEASIBLE)
        out["error_rate"] = (agg["error_rate"] - self.max_error_rate) / max(self.max_error_rate, 1e-4)
        return out

    def values(self, agg: dict[str, Any]) -> list[float]:
        if self.pareto:
            return [agg["cost"], agg[self.primary.name]]
        return [agg["cost"]]

    def violation(self, agg: dict[str, Any]) -> float:
        """How far from meeting every requirement (0: met); ranks infeasible configs."""
        c = [agg[s.name] / s.bound_s - 1.0 for s in self.slos]
        c.append((agg["error_rate"] - self.max_error_rate) / max(self.max_error_rate, 1e-4))
        return float(sum(max(0.0, x) for x in c))

    def meets(self, agg: dict[str, Any]) -> bool:
        return self.violation(agg) <= 0.0

    def describe(self) -> str:
        slos = ", ".join(str(s) for s in self.slos)
        return f"{slos}, error rate <= {self.max_error_rate:g}"


def _metric(res, metric: str, scored: np.ndarray, ok: np.ndarray, bound: float) -> tuple[np.ndarray, np.ndarray]:
    """(the successful scored requests' values of `metric`, finite ones only; for each
    scored request whether it succeeded within `bound`). A NaN TTFT/TPOT of a
    successful request (e.g. the TPOT of a one-token reply) meets any bound."""
    if metric == "latency":
        lat = res.latency[scored][ok]
        met = ok.copy()
        met[ok] = lat <= bound
        return lat, met
    arr = getattr(res, metric, None)
    if arr is None:
        raise ValueError(f"the simulation has no {metric.upper()} (needs an LLM or streaming service model)")
    v = np.asarray(arr, dtype=float)[scored]
    met = ok & ~(v > bound)
    vals = v[ok]
    return vals[np.isfinite(vals)], met


def replica_seconds(timeline: list, t0: float, horizon: float) -> float:
    """Integral of starting + running + stopping replicas over [t0, horizon]."""
    if not timeline or horizon <= t0:
        return 0.0
    arr = np.asarray(timeline, dtype=float)
    t = np.clip(np.append(arr[:, 0], horizon), t0, horizon)
    total = arr[:, 1] + arr[:, 2] + arr[:, 3]
    return float(np.dot(total, np.diff(t)))
