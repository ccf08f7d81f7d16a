"""`simtune plan`: capacity planning on a node model.

For the current config at today's traffic: peak and mean nodes / GPUs / replicas, cost
per day, SLO attainment, and how much of the p99 comes from waiting for nodes (the same
run again with nodes that are ready the moment the autoscaler is asked: the difference
is what node provisioning costs the tail). Then what-if rows for traffic multipliers,
as-is (same config, same node limits) and re-tuned (warm-capacity search, below), and
the multiplier at which the SLO breaks (the listed multipliers, then bisection).

SLO: `pNN=BOUND` as in `recommend` (e.g. `p99=5`): met when at least NN % of all
requests (errors count as misses) end within BOUND seconds; attainment is that share.

Re-tuning (`retune`): unless a tuner is plugged in, a small exhaustive search over the
knobs that buy warm capacity: `min_replicas` (replicas - and so nodes - kept up through
idle gaps) x `downscale_delay_s` (how long capacity stays after a burst), with
`max_replicas` and the replica's worker group maxReplicas raised in proportion to the
traffic multiplier. The cheapest candidate that meets the SLO wins (cost per day of
the nodes); if none does, the one with the best attainment.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from simtune.cluster.manifest import ClusterSpec, ReplicaDemand, replica_demand
from simtune.cluster.model import DEFAULT_AUTOSCALER_INTERVAL_S
from simtune.cluster.run import simulate_on_cluster
from simtune.cost import PriceList, result_cost
from simtune.dataplane import OK
from simtune.errors import InputError
from simtune.params import SimParams
from simtune.serve_config import DeploymentSpec
from simtune.service_time import parse_service_time
from simtune.trace import Trace

DEFAULT_MULTIPLIERS = (1.0, 1.5, 2.0, 3.0)
DOWNSCALE_CHOICES = (600.0,)  # tried besides the current value
DEFAULT_POLICY = "ray.serve.autoscaling_policy:default_autoscaling_policy"


@dataclass(frozen=True)
class PlanSlo:
    percentile: float
    bound_s: float

    @property
    def target(self) -> float:
        return self.percentile / 100.0

    def __str__(self) -> str:
        return f"p{self.percentile:g} <= {self.bound_s:g} s"


def parse_plan_slo(text: str) -> PlanSlo:
    """`p99=5`, `p99.9=800ms`: recommend's --slo syntax (simtune.tuner.objective.parse_slo),
    latency only (a plan is about end-to-end latency and capacity)."""
    from simtune.tuner.objective import parse_slo

    slo = parse_slo(text)
    if slo.metric != "latency":
        raise InputError(f"--slo {text!r}: plan takes a latency SLO (pNN=SECONDS), not {slo.metric}")
    return PlanSlo(slo.percentile, slo.bound_s)


def parse_multipliers(text: Any) -> list[float]:
    if isinstance(text, (list, tuple)):
        vals = list(text)
    else:
        vals = [v for v in str(text).replace(" ", "").split(",") if v]
    out = []
    for v in vals:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise InputError(f"--multipliers: {v!r} is not a number (e.g. 1,1.5,2,3)") from None
        if not (f > 0 and math.isfinite(f)):
            raise InputError(f"--multipliers: {v!r} must be > 0")
        out.append(f)
    if not out:
        raise InputError("--multipliers: give at least one traffic multiplier, e.g. 1,1.5,2,3")
    return sorted(set(out))


def replicas_per_node(nt: Any, demand: ReplicaDemand) -> int:
    n = math.inf
    for k, v in demand.resources.items():
        if v > 0:
            n = min(n, math.floor(nt.resources.get(k, 0.0) / v + 1e-9))
    if demand.max_replicas_per_node is not None:
        n = min(n, demand.max_replicas_per_node)
    return int(n) if math.isfinite(n) else 10**6


def cluster_for(cspec: ClusterSpec, demand: ReplicaDemand, max_replicas: int) -> ClusterSpec:
    """A copy whose worker groups that fit a replica may grow to hold `max_replicas`."""
    out = copy.deepcopy(cspec)
    for nt in out.workers:
        per = replicas_per_node(nt, demand)
        if per >= 1 and out.autoscaling:
            nt.max_nodes = max(nt.max_nodes, math.ceil(max_replicas / per))
    return out


def _auto_dict(spec: DeploymentSpec) -> Optional[dict]:
    if spec.autoscaling is None:
        return None
    full = spec.autoscaling.model_dump(exclude_unset=False)
    keep = ("min_replicas", "max_replicas", "initial_replicas", "target_ongoing_requests", "upscale_delay_s",
            "downscale_delay_s", "downscale_to_zero_delay_s", "upscaling_factor", "downscaling_factor",
            "metrics_interval_s", "look_back_period_s", "aggregation_function", "upscale_smoothing_factor",
            "downscale_smoothing_factor", "smoothing_factor", "policy")
    out = {k: full[k] for k in keep if k in full and full[k] is not None}
    if "aggregation_function" in out:
        out["aggregation_function"] = str(getattr(out["aggregation_function"], "value", out["aggregation_function"]))
    pol = out.get("policy")
    if isinstance(pol, dict) and pol.get("policy_function") in (None, DEFAULT_POLICY) and not pol.get("policy_kwargs"):
        out.pop("policy")  # the default policy: leave it implicit
    if out.get("smoothing_factor") == 1.0:
        out.pop("smoothing_factor")  # deprecated field at its default
    return out


def knobs_of(spec: DeploymentSpec) -> dict:
    """The settings a reader of the report cares about."""
    a = _auto_dict(spec)
    if a is None:
        return {"num_replicas": spec.num_replicas, "max_ongoing_requests": spec.max_ongoing_requests}
    return {k: a.get(k) for k in ("min_replicas", "max_replicas", "target_ongoing_requests", "upscale_delay_s",
                                  "downscale_delay_s")} | {"max_ongoing_requests": spec.max_ongoing_requests}


class Planner:
    """Runs and caches the simulations a plan needs."""

    def __init__(self, trace: Trace, spec: DeploymentSpec, cluster: ClusterSpec, prices: PriceList, slo: PlanSlo, *,
                 service_time: Optional[str] = None, params: Optional[SimParams] = None,
                 provisioning: Any = 90.0, autoscaler_interval_s: float = DEFAULT_AUTOSCALER_INTERVAL_S,
                 scheduling: str = "spread", seed: int = 0, progress: Optional[Callable[[str], None]] = None) -> None:
        self.trace, self.spec, self.cluster, self.prices, self.slo = trace, spec, cluster, prices, slo
        self.params = params or SimParams()
        self.service_time_spec = service_time
        self.dist = parse_service_time(service_time) if service_time else None
        if self.dist is None and trace.service_time is None:
            raise InputError(f"trace {trace.name!r} has no service_time column; give --service-time "
                             "(e.g. lognormal:mean=1.0,p99=3)")
        from simtune.cluster.model import parse_delay

        parse_delay(provisioning)  # a bad --node-provisioning-s fails here, before any simulation
        if autoscaler_interval_s < 0:
            raise InputError(f"--autoscaler-interval-s {autoscaler_interval_s:g}: must be >= 0")
        if scheduling not in ("spread", "pack"):
            raise InputError(f"--scheduling {scheduling!r}: expected spread or pack")
        self.provisioning = provisioning
        self.autoscaler_interval_s = autoscaler_interval_s
        self.scheduling = scheduling
        self.seed = seed
        self.say = progress or (lambda msg: None)
        self.demand = replica_demand(spec)
        # Bad input fails here, before anything is simulated.
        from simtune.cluster.manifest import check_fits

        check_fits(cluster, self.demand, f"{spec.app_name}/{spec.name}")
        self.hourly = prices.check(cluster)
        self._traces: dict[float, Trace] = {}
        self._cache: dict[Any, dict] = {}
        self.results: dict[Any, Any] = {}
        self.as_is_points: dict[float, dict] = {}
        self.sims = 0
        self.sim_wall_s = 0.0

    # -- inputs at a multiplier ---------------------------------------------------------------
    def trace_at(self, m: float) -> Trace:
        if m not in self._traces:
            from simtune.trace.transforms import scale_rate

            self._traces[m] = self.trace if m == 1.0 else scale_rate(self.trace, m, seed=self.seed)
        return self._traces[m]

    def spec_with(self, autoscaling: Optional[dict]) -> DeploymentSpec:
        if autoscaling is None or self.spec.autoscaling is None:
            return self.spec
        return self.spec.with_options(autoscaling_config=autoscaling)

    # -- one simulation -> metrics -------------------------------------------------------------
    def evaluate(self, m: float, autoscaling: Optional[dict] = None, max_replicas: Optional[int] = None,
                 instant_nodes: bool = False, keep: bool = False) -> dict:
        auto = autoscaling if autoscaling is not None else _auto_dict(self.spec)
        key = (m, repr(sorted((auto or {}).items())), max_replicas, instant_nodes)
        if key in self._cache and (not keep or key in self.results):
            return self._cache[key]
        spec = self.spec_with(auto)
        cspec = self.cluster if max_replicas is None else cluster_for(self.cluster, self.demand, max_replicas)
        trace = self.trace_at(m)
        t0 = time.perf_counter()
        res = simulate_on_cluster(trace, spec, cspec, self.params, service_time=self.dist, seed=self.seed,
                                  provisioning=0.0 if instant_nodes else self.provisioning,
                                  autoscaler_interval_s=0.0 if instant_nodes else self.autoscaler_interval_s,
                                  scheduling=self.scheduling)
        self.sims += 1
        self.sim_wall_s += time.perf_counter() - t0
        out = self.metrics(res)
        out["multiplier"] = m
        out["config"] = knobs_of(spec)
        out["autoscaling"] = auto
        out["max_nodes"] = {nt.name: nt.max_nodes for nt in cspec.workers}
        self._cache[key] = out
        if autoscaling is None and max_replicas is None and not instant_nodes:
            self.as_is_points[m] = out  # the current config as traffic changes (what-if curve)
        if keep:
            self.results[key] = res
        return out

    def result(self, m: float, autoscaling: Optional[dict] = None, max_replicas: Optional[int] = None,
               instant_nodes: bool = False):
        auto = autoscaling if autoscaling is not None else _auto_dict(self.spec)
        key = (m, repr(sorted((auto or {}).items())), max_replicas, instant_nodes)
        if key not in self.results:
            self.evaluate(m, autoscaling, max_replicas, instant_nodes, keep=True)
        return self.results[key]

    def metrics(self, res) -> dict:
        n = int(res.status.shape[0])
        ok = res.status == OK
        lat = res.latency[ok]
        att = float((ok & (res.latency <= self.slo.bound_s)).sum() / n) if n else 1.0
        s = res.summary()
        cost = result_cost(res, self.prices)
        st = res.cluster.stats(0.0, res.horizon)
        q = lambda p: float(np.percentile(lat, p)) if lat.size else None  # noqa: E731
        return {
            "requests": n, "error_rate": float(1 - ok.sum() / n) if n else 0.0,
            "latency_s": {"p50": q(50), "p95": q(95), "p99": q(99), f"p{self.slo.percentile:g}": q(self.slo.percentile),
                          "max": float(lat.max()) if lat.size else None},
            "slo_attainment": att, "slo_met": att >= self.slo.target - 1e-12,
            "replicas": {"peak": s["replicas"]["max"], "mean": s["replicas"]["mean"]},
            "nodes": st["nodes"], "gpus": st["gpus"], "gpu_hours": st["gpu_hours"],
            "node_hours": st["node_hours_total"],
            "replica_node_wait_s": st["replica_node_wait_s"],
            "cost": {k: cost[k] for k in ("total", "per_hour", "per_day", "per_1000_requests", "per_group")},
            "duration_s": res.horizon,
        }

    # -- re-tuning ------------------------------------------------------------------------------
    def retune(self, m: float) -> dict:
        """Cheapest warm-capacity config meeting the SLO at multiplier m (see module docstring)."""
        base = _auto_dict(self.spec)
        if base is None:
            return self._retune_fixed(m)
        max_r = max(int(base["max_replicas"]), math.ceil(int(base["max_replicas"]) * m))
        downs = [float(base.get("downscale_delay_s", 600.0))] + [d for d in DOWNSCALE_CHOICES
                                                                 if d != float(base.get("downscale_delay_s", 600.0))]
        lo = int(base.get("min_replicas", 0))
        tried: list[dict] = []
        for down in downs:
            prev_cost = None
            met_seen = False
            for k in range(lo, max_r + 1):
                auto = dict(base, min_replicas=k, max_replicas=max_r, downscale_delay_s=down)
                if auto.get("initial_replicas") is not None:
                    auto["initial_replicas"] = max(k, min(int(auto["initial_replicas"]), max_r))
                r = self.evaluate(m, auto, max_replicas=max_r)
                tried.append(r)
                cost = r["cost"]["per_day"]
                if r["slo_met"]:
                    if met_seen and prev_cost is not None and cost > prev_cost:
                        break  # past the cheapest config that meets the SLO on this line
                    met_seen = True
                prev_cost = cost
        met = [r for r in tried if r["slo_met"]]
        best = min(met, key=lambda r: (r["cost"]["per_day"], -r["slo_attainment"])) if met else \
            max(tried, key=lambda r: (r["slo_attainment"], -r["cost"]["per_day"]))
        best = dict(best)
        best["candidates_tried"] = len(tried)
        best["max_replicas_searched"] = max_r
        return best

    def _retune_fixed(self, m: float) -> dict:
        raise InputError("re-tuning needs an autoscaling deployment (num_replicas is fixed); use --no-retune")

    # -- the SLO cliff ----------------------------------------------------------------------------
    def break_point(self, ok_at: Callable[[float], bool], listed: dict[float, bool], steps: int) -> dict:
        """Smallest multiplier at which the SLO is missed: listed points, then bisection.

        If even the smallest listed multiplier misses, look below it (down to a quarter of
        it) for the traffic the config still handles.
        """
        ms = sorted(listed)
        first_bad = next((m for m in ms if not listed[m]), None)
        if first_bad is None:
            return {"multiplier": None, "text": f"holds up to x{ms[-1]:g} (the largest tried)",
                    "bracket": [ms[-1], None]}
        good = [m for m in ms if m < first_bad and listed[m]]
        lo = good[-1] if good else None
        hi = first_bad
        if lo is None:
            floor = round(hi / 4, 2)
            if not ok_at(floor):
                return {"multiplier": floor, "text": f"misses already at x{floor:g} (a quarter of x{hi:g})",
                        "bracket": [None, floor]}
            lo = floor
        for _ in range(steps):
            mid = round((lo + hi) / 2, 2)
            if mid in (lo, hi):
                break
            if ok_at(mid):
                lo = mid
            else:
                hi = mid
        return {"multiplier": hi, "text": f"breaks at about x{hi:g} (holds at x{lo:g})", "bracket": [lo, hi]}


@dataclass
class PlanResult:
    inputs: dict
    baseline: dict
    instant_nodes: dict
    recommended: Optional[dict]
    what_if: list[dict]
    slo_break: dict
    planner: Planner
    wall_s: float = 0.0

    @property
    def node_wait_share_of_p99(self) -> Optional[float]:
        return self.baseline.get("node_wait", {}).get("share_of_p99")

    @property
    def as_is_curve(self) -> list[dict]:
        """Every multiplier the current config was simulated at (listed and bisection points)."""
        pts = self.planner.as_is_points
        return [{"multiplier": m, "slo_attainment": pts[m]["slo_attainment"], "cost_per_day": pts[m]["cost"]["per_day"],
                 "p99_s": pts[m]["latency_s"]["p99"]} for m in sorted(pts)]

    def to_dict(self) -> dict:
        return {"inputs": self.inputs, "baseline": self.baseline, "instant_nodes": self.instant_nodes,
                "recommended": self.recommended, "what_if": self.what_if, "slo_break": self.slo_break,
                "as_is_curve": self.as_is_curve,
                "wall_s": self.wall_s, "simulations": self.planner.sims}


def node_wait_attribution(base: dict, instant: dict) -> dict:
    p = base["latency_s"]["p99"]
    pi = instant["latency_s"]["p99"]
    share = None
    if p and pi is not None and p > 0:
        share = max(0.0, p - pi) / p
    return {"p99_s": p, "p99_instant_nodes_s": pi, "p99_from_node_waits_s": None if pi is None or p is None else
            max(0.0, p - pi), "share_of_p99": share,
            "attainment_instant_nodes": instant["slo_attainment"],
            "replica_waits": base["replica_node_wait_s"]}


def run_plan(planner: Planner, multipliers: Sequence[float] = DEFAULT_MULTIPLIERS, *, retune: bool = True,
             refine_steps: int = 4) -> PlanResult:
    """Everything the report shows (see the module docstring)."""
    t0 = time.perf_counter()
    say = planner.say
    ms = sorted(set(float(m) for m in multipliers) | {1.0})
    say("current config at today's traffic ...")
    base = planner.evaluate(1.0, keep=True)
    instant = planner.evaluate(1.0, instant_nodes=True, keep=True)
    base = dict(base, node_wait=node_wait_attribution(base, instant))
    rec = None
    if retune and planner.spec.autoscaling is not None:
        say("re-tuning at today's traffic (warm-capacity search) ...")
        rec = planner.retune(1.0)
        planner.result(1.0, rec["autoscaling"], rec["max_replicas_searched"])
        inst = planner.evaluate(1.0, rec["autoscaling"], rec["max_replicas_searched"], instant_nodes=True)
        rec = dict(rec, node_wait=node_wait_attribution(rec, inst))
        rec["vs_current"] = {
            "slo_attainment_delta": rec["slo_attainment"] - base["slo_attainment"],
            "p99_delta_s": (rec["latency_s"]["p99"] or 0) - (base["latency_s"]["p99"] or 0),
            "cost_per_day_delta": rec["cost"]["per_day"] - base["cost"]["per_day"],
            "cost_ratio": rec["cost"]["per_day"] / base["cost"]["per_day"] if base["cost"]["per_day"] else None,
        }
    rows = []
    as_is_ok: dict[float, bool] = {}
    re_ok: dict[float, bool] = {}
    retuned_at: dict[float, dict] = {}
    for m in ms:
        say(f"what-if x{m:g} ...")
        a = base if m == 1.0 else planner.evaluate(m)
        ai = instant if m == 1.0 else planner.evaluate(m, instant_nodes=True)
        row = {"multiplier": m, "requests": a["requests"], "as_is": dict(a, node_wait=node_wait_attribution(a, ai))}
        as_is_ok[m] = a["slo_met"]
        if retune and planner.spec.autoscaling is not None:
            r = rec if m == 1.0 and rec is not None else planner.retune(m)
            retuned_at[m] = r
            row["retuned"] = r
            re_ok[m] = r["slo_met"]
        rows.append(row)
    say("looking for the SLO cliff ...")
    brk = {"as_is": planner.break_point(lambda m: planner.evaluate(m)["slo_met"], as_is_ok, refine_steps)}
    if re_ok:
        brk["retuned"] = planner.break_point(lambda m: planner.retune(m)["slo_met"], re_ok, max(refine_steps - 1, 0))
    span = planner.trace.span
    inputs = {
        "trace": planner.trace.name, "requests": len(planner.trace), "span_s": span,
        "deployment": f"{planner.spec.app_name}/{planner.spec.name}", "config_source": planner.spec.source,
        "config": knobs_of(planner.spec), "cluster": planner.cluster.name, "cluster_source": planner.cluster.source,
        "node_groups": {nt.name: {"resources": nt.resources, "min": nt.min_nodes, "max": nt.max_nodes,
                                  "idle_timeout_s": nt.idle_timeout_s, "instance_type": nt.instance_type,
                                  "price_per_hour": planner.hourly.get(nt.name)}
                        for nt in planner.cluster.node_types.values()},
        "autoscaling_enabled": planner.cluster.autoscaling,
        "replica_resources": planner.demand.describe(), "prices_source": planner.prices.source,
        "currency": planner.prices.currency, "slo": str(planner.slo), "slo_percentile": planner.slo.percentile,
        "slo_bound_s": planner.slo.bound_s, "service_time": planner.service_time_spec or "trace column",
        "node_provisioning": str(planner.provisioning), "autoscaler_interval_s": planner.autoscaler_interval_s,
        "scheduling": planner.scheduling, "replica_startup": planner.params.startup.describe(),
        "multipliers": ms, "retune": bool(retune), "seed": planner.seed,
    }
    return PlanResult(inputs, base, instant, rec, rows, brk, planner, wall_s=time.perf_counter() - t0)
