"""What `recommend` minimises and what it must not violate, computed from simulations.

Objective: cost (replica-seconds by default, or money from --cost-per-replica-hour /
--cost-per-gpu-hour). Constraints: each latency SLO (`p99=2.0`: the 99th percentile of
successful requests' latency <= 2 s) and the error rate (rejected + timed out + failed
+ never finished, over all requests) <= --max-error-rate.

Robustness is a worst case, taken the same way everywhere (search, baselines, holdout):
latency percentiles and the error rate are the maximum over every scenario (trace x
simulator seed x traffic multiplier); cost is, per trace, the maximum over its seeds
and multipliers, summed over traces (the bill for serving all these workloads with
the traffic at its worst). Constraint values are relative (p/bound - 1), so optuna
sees one scale whatever the SLO's unit; <= 0 means met.

A composed application (simtune.app) is scored the same way on its end-to-end view:
the latency and errors of the trace's requests as the client sees them (the ingress's
calls), and the cost of every deployment added up, each at its own num_gpus. Its
metrics also carry `deployments`: each deployment's replica-seconds, mean replicas and
cost, and the latency of the calls it received (the primary SLO's percentile). In the
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


@dataclass(frozen=True)
class Slo:
    """A latency SLO: the `percentile`-th percentile of successful latencies <= `bound_s`."""

    percentile: float
    bound_s: float

    @property
    def name(self) -> str:
        return f"p{self.percentile:g}"

    def __str__(self) -> str:
        return f"{self.name} <= {self.bound_s:g} s"


_SLO_RE = re.compile(r"^\s*p(\d+(?:\.\d+)?)\s*[=:<]=?\s*([0-9.eE+-]+)\s*(ms|s)?\s*$")


def parse_slo(text: str) -> Slo:
    """`p99=2.0`, `p99.9=0.8`, `p50=200ms`."""
    m = _SLO_RE.match(str(text))
    if not m:
        raise InputError(f"--slo {text!r}: expected pNN=SECONDS, e.g. p99=2.0 or p99.9=500ms")
    q = float(m.group(1))
    try:
        bound = float(m.group(2))
    except ValueError:
        raise InputError(f"--slo {text!r}: {m.group(2)!r} is not a number") from None
    if m.group(3) == "ms":
        bound /= 1000.0
    if not 0 < q < 100:
        raise InputError(f"--slo {text!r}: percentile must be between 0 and 100 (exclusive)")
    if not (bound > 0 and math.isfinite(bound)):
        raise InputError(f"--slo {text!r}: the latency bound must be a positive number of seconds")
    return Slo(q, bound)


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
            raise InputError("give at least one latency SLO, e.g. --slo p99=2.0")
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
        lat = e2e.latency[m][ok]
        out: dict[str, Any] = {"requests": n, "error_rate": float(1.0 - ok.sum() / n) if n else 0.0}
        for slo in self.slos:
            out[slo.name] = float(np.percentile(lat, slo.percentile)) if lat.size else INFEASIBLE
            out[f"attainment_{slo.name}"] = float((lat <= slo.bound_s).sum() / n) if n else 1.0
        if per is None:
            rs = replica_seconds(res.timeline, t0, res.horizon)
            out["replica_seconds"] = rs
            out["mean_replicas"] = rs / (res.horizon - t0) if res.horizon > t0 else 0.0
            out["cost"] = self.cost(rs)
            return out
        deps = {name: self._deployment(r, t0) for name, r in per.items()}
        rs = sum(d["replica_seconds"] for d in deps.values())
        out["replica_seconds"] = rs
        out["mean_replicas"] = rs / (e2e.horizon - t0) if e2e.horizon > t0 else 0.0
        out["cost"] = sum(d["cost"] for d in deps.values())
        out["deployments"] = deps
        return out

    def _deployment(self, res, t0: float) -> dict[str, Any]:
        """One deployment of an application: its cost and the latency of its calls."""
        rs = replica_seconds(res.timeline, t0, res.horizon)
        m = res.arrival >= t0
        lat = res.latency[m][res.status[m] == OK]
        p = self.primary
        return {"calls": int(m.sum()), "replica_seconds": rs,
                "mean_replicas": rs / (res.horizon - t0) if res.horizon > t0 else 0.0,
                "cost": self.cost(rs, res.num_gpus),
                p.name: float(np.percentile(lat, p.percentile)) if lat.size else INFEASIBLE}

    # -- many simulations -> one worst case ---------------------------------------------
    def worst(self, runs: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        """Worst case over (trace name, metrics) pairs (see the module docstring)."""
        runs = list(runs)
        out: dict[str, Any] = {"error_rate": max(m["error_rate"] for _, m in runs)}
        for slo in self.slos:
            out[slo.name] = max(m[slo.name] for _, m in runs)
            out[f"attainment_{slo.name}"] = min(m[f"attainment_{slo.name}"] for _, m in runs)
        per_trace: dict[str, dict[str, float]] = {}
        for name, m in runs:
            t = per_trace.setdefault(name, {"cost": -math.inf, "replica_seconds": -math.inf, "mean_replicas": 0.0})
            for key in t:
                t[key] = max(t[key], m[key])
        out["cost"] = sum(t["cost"] for t in per_trace.values())
        out["replica_seconds"] = sum(t["replica_seconds"] for t in per_trace.values())
        out["mean_replicas"] = max(t["mean_replicas"] for t in per_trace.values())
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
        p = self.primary.name
        out: dict[str, dict[str, Any]] = {}
        for dep in runs[0][1]["deployments"]:
            rows = [m["deployments"][dep] for m in costliest.values()]
            out[dep] = {"calls": sum(m["deployments"][dep]["calls"] for _, m in runs),
                        "replica_seconds": sum(r["replica_seconds"] for r in rows),
                        "mean_replicas": max(r["mean_replicas"] for r in rows),
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


def replica_seconds(timeline: list, t0: float, horizon: float) -> float:
    """Integral of starting + running + stopping replicas over [t0, horizon]."""
    if not timeline or horizon <= t0:
        return 0.0
    arr = np.asarray(timeline, dtype=float)
    t = np.clip(np.append(arr[:, 0], horizon), t0, horizon)
    total = arr[:, 1] + arr[:, 2] + arr[:, 3]
    return float(np.dot(total, np.diff(t)))
