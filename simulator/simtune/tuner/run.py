"""`recommend`: load the inputs, search, judge the winner on unseen traffic, print it.

The order is what makes the recommendation honest:
  1. split every trace by time; the search never simulates the held-out tail;
  2. search (simtune.tuner.study) for the cheapest config that meets the SLOs in the
     worst case over traces, simulator seeds and traffic multipliers;
  3. only then simulate the winner, the user's current config and Ray's defaults on the
     held-out tail, and print those numbers next to each other, whatever they say.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from optuna.trial import FrozenTrial, TrialState

from simtune.errors import InfeasibleError, InputError
from simtune.serve_config import DeploymentSpec, deployment_from_mapping, load_deployment
from simtune.tuner.candidate import Base, default_entry, effective_values, to_spec
from simtune.tuner.executor import Job, make_executor
from simtune.tuner.objective import CostModel, Objective, parse_slo
from simtune.tuner.output import header, metrics_table, render_document, verify
from simtune.tuner.problem import (Problem, build_scenarios, file_digest, load_traces, slot_time_probe,
                                   traffic_stats)
from simtune.tuner.space import CONCURRENCY_AWARE, SearchSpace, apply_space_file, default_space
from simtune.tuner.study import (METRICS, SLOT, Search, SearchSettings, open_storage, open_study,
                                 trial_entry, trial_metrics)

log = logging.getLogger(__name__)


@dataclass
class RecommendOptions:
    """Everything `simtune recommend` takes (see its --help for each option)."""

    traces: Sequence[str]
    slos: Sequence[str]
    config: Optional[str] = None
    deployment: Optional[str] = None
    service_time: Optional[str] = None
    service_model: Optional[str] = None
    replica_startup_s: Optional[str] = None
    params_file: Optional[str] = None
    max_error_rate: float = 0.001
    cost_per_replica_hour: Optional[float] = None
    cost_per_gpu_hour: Optional[float] = None
    pareto: bool = False
    space: Optional[str] = None
    trials: int = 100
    timeout_s: Optional[float] = None
    seed: int = 0
    sim_seeds: int = 2
    headroom: Sequence[float] = ()
    holdout: float = 0.25
    storage: Optional[str] = None
    study_name: Optional[str] = None
    resume: bool = False
    n_jobs: int = 1
    ray_address: Optional[str] = None
    batch_size: int = 8
    report: Optional[str] = None


@dataclass
class Recommendation:
    text: str  # the YAML printed on stdout, header included
    entry: dict
    best: FrozenTrial
    trials: list[FrozenTrial]
    front: list[FrozenTrial]
    # label -> {"search": worst-case metrics, "holdout": ..., "holdout_runs": [...]}
    compare: dict[str, dict[str, Any]]
    study_name: str
    storage: str
    inputs: dict = field(default_factory=dict)


@dataclass
class Setup:
    """The loaded inputs: what a search and its report need."""

    opts: RecommendOptions
    spec: DeploymentSpec
    base: Base
    objective: Objective
    problem: Problem
    space: SearchSpace
    inputs: dict
    fingerprint: str
    study_name: str
    storage_desc: str
    seed_params: list[dict]
    labels: dict[str, dict] = field(default_factory=dict)  # baseline label -> entry


def _check_options(o: RecommendOptions) -> None:
    if o.trials < 1:
        raise InputError(f"--trials {o.trials}: must be >= 1")
    if o.batch_size < 1:
        raise InputError(f"--batch-size {o.batch_size}: must be >= 1")
    if o.sim_seeds < 1:
        raise InputError(f"--sim-seeds {o.sim_seeds}: must be >= 1")
    if o.seed < 0:
        raise InputError(f"--seed {o.seed}: must be >= 0")
    if not 0 <= o.holdout <= 0.9:
        raise InputError(f"--holdout {o.holdout:g}: must be between 0 (none) and 0.9")
    for h in o.headroom:
        if not (h > 0 and math.isfinite(h)):
            raise InputError(f"--headroom {h!r}: must be a positive traffic multiplier, e.g. 1.2")
    if o.timeout_s is not None and o.timeout_s <= 0:
        raise InputError(f"--timeout {o.timeout_s:g}: must be > 0 seconds")
    for name in ("cost_per_replica_hour", "cost_per_gpu_hour"):
        v = getattr(o, name)
        if v is not None and not (v >= 0 and math.isfinite(v)):
            raise InputError(f"--{name.replace('_', '-')} {v!r}: must be >= 0")


def load_setup(o: RecommendOptions) -> Setup:
    """Read and check every input before any simulation runs."""
    from simtune.api import build_params
    from simtune.service_time import parse_service_time

    _check_options(o)
    objective_slos = tuple(parse_slo(s) for s in o.slos)
    names = [s.name for s in objective_slos]
    if len(set(names)) != len(names):
        raise InputError(f"--slo: percentile given twice ({', '.join(sorted(n for n in set(names) if names.count(n) > 1))})")
    if o.config:
        spec = load_deployment(o.config, o.deployment)
    else:
        name = (o.deployment or "app").split("/")[-1]
        spec = deployment_from_mapping({"name": name, "num_replicas": "auto"}, source="<no --config>")
    if o.cost_per_gpu_hour is not None and spec.num_gpus == 0:
        raise InputError("--cost-per-gpu-hour: the deployment has no ray_actor_options.num_gpus "
                         "(give it in --config, or use --cost-per-replica-hour)")
    base = Base.from_spec(spec)
    cost = CostModel(o.cost_per_replica_hour, o.cost_per_gpu_hour, spec.num_gpus)
    objective = Objective(objective_slos, float(o.max_error_rate), cost, bool(o.pareto))
    if o.service_time:
        parse_service_time(o.service_time)
    params = build_params(o.replica_startup_s, o.params_file, o.seed)

    model = None
    if o.service_model:
        from simtune.service_models import load_service_model

        model = load_service_model(o.service_model)

    traces = load_traces(o.traces)
    headrooms = tuple(sorted({1.0, *(float(h) for h in o.headroom)}))
    search, hold = build_scenarios(traces, o.holdout, headrooms, o.seed)
    problem = Problem(base=base, objective=objective, service_time=o.service_time, params=params.to_dict(),
                      sim_seeds=tuple(o.seed + i for i in range(o.sim_seeds)), search=search, holdout=hold,
                      service_model=model)
    stats = traffic_stats(search, o.service_time, slot_time_probe(problem, spec) if model is not None else None)

    current = effective_values(spec)
    mi = float(spec.autoscaling.metrics_interval_s) if spec.autoscaling is not None else 10.0
    space = default_space(stats, current, spec.max_ongoing_requests, mi,
                          concurrency_aware=getattr(model, "kind", "fixed") in CONCURRENCY_AWARE)
    if o.space:
        space = apply_space_file(space, o.space)
    if not space.searched():
        raise InputError(f"{o.space}: every field is fixed or excluded; nothing to search")
    inputs = {
        "traces": {tr.name: file_digest(p) for tr, p in zip(traces, o.traces)},
        "deployment": f"{spec.app_name}/{spec.name}",
        "entry": base.entry,
        "request_timeout_s": base.request_timeout_s,
        "service_time": o.service_time,
        "service_model": ({"file": file_digest(o.service_model), "model": model.describe()} if model is not None
                          else None),
        "params": params.to_dict(),
        "slos": [str(s) for s in objective_slos],
        "max_error_rate": objective.max_error_rate,
        "cost": asdict(cost),
        "pareto": objective.pareto,
        "space": space.to_dict(),
        "sim_seeds": list(problem.sim_seeds),
        "headroom": list(headrooms),
        "holdout": o.holdout,
        "seed": o.seed,
        "batch_size": o.batch_size,
    }
    inputs = json.loads(json.dumps(inputs, default=str))
    fingerprint = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    study_name = o.study_name or f"recommend-{spec.app_name}-{spec.name}-{fingerprint}"

    seeds = []
    if o.config:
        seeds.append(space.project(current))
    dflt = default_entry(base)
    seeds.append(space.project(effective_values(to_spec(base, dflt, strict=False))))
    seeds = [p for i, p in enumerate(seeds) if p not in seeds[:i]]
    labels = {"ray-defaults": dflt}
    if o.config:
        labels = {"current": base.entry, **labels}
    storage_desc = o.storage or str(_default_db(o))
    return Setup(o, spec, base, objective, problem, space, inputs, fingerprint, study_name, storage_desc, seeds,
                 labels)


def _default_db(o: RecommendOptions) -> Path:
    return Path(o.report) / "study.db" if o.report else Path("simtune-recommend.db")


# -- choosing ------------------------------------------------------------------------------


def choose(trials: Sequence[FrozenTrial], objective: Objective) -> Optional[FrozenTrial]:
    """The cheapest trial that meets every SLO and the error-rate cap; ties go to the
    lower latency, then the lower slot (never to storage order)."""
    ok = [t for t in trials if t.state == TrialState.COMPLETE and objective.meets(trial_metrics(t))]
    if not ok:
        return None
    p = objective.primary.name
    return min(ok, key=lambda t: (trial_metrics(t)["cost"], trial_metrics(t)[p], t.user_attrs[SLOT]))


def pareto_front(trials: Sequence[FrozenTrial], objective: Objective) -> list[FrozenTrial]:
    """Non-dominated (cost, primary-SLO latency) among complete trials that meet the
    error-rate cap and any other SLO; sorted by cost."""
    p = objective.primary.name
    pts = []
    for t in trials:
        m = trial_metrics(t)
        if t.state != TrialState.COMPLETE or m is None:
            continue
        if m["error_rate"] > objective.max_error_rate:
            continue
        if any(m[s.name] > s.bound_s for s in objective.slos[1:]):
            continue
        pts.append((m["cost"], m[p], t.user_attrs[SLOT], t))
    pts.sort(key=lambda x: (x[0], x[1], x[2]))
    front, best_lat = [], math.inf
    for cost, lat, _, t in pts:
        if lat < best_lat:
            front.append(t)
            best_lat = lat
    return front


def infeasible_message(trials: Sequence[FrozenTrial], objective: Objective, setup: Setup) -> str:
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    p = objective.primary.name
    where = f"{len(trials)} trials ({len(complete)} simulated, {pruned} pruned as invalid)"
    if not complete:
        return f"no configuration could be simulated: {where}; check the search space"
    ok_err = [t for t in complete if trial_metrics(t)["error_rate"] <= objective.max_error_rate]
    pool = ok_err or complete
    best = min(pool, key=lambda t: (trial_metrics(t)[p], t.user_attrs[SLOT]))
    m = trial_metrics(best)
    closest = min(complete, key=lambda t: (objective.violation(trial_metrics(t)), t.user_attrs[SLOT]))
    mc = trial_metrics(closest)
    settings = _short_settings(trial_entry(closest))
    lat = "none ok" if m[p] >= 1e8 else f"{m[p]:.3g} s"
    return (f"no configuration in the search space meets {objective.describe()} (worst case) over {where}; "
            f"best achievable {p} = {lat} with error rate {m['error_rate']:.4g}"
            f"{'' if ok_err else ' (no trial met the error-rate cap)'}; closest overall: {p} "
            f"{mc[p]:.3g} s, error rate {mc['error_rate']:.4g} ({settings}). Relax the SLO or widen --space")


def _short_settings(entry: dict) -> str:
    auto = entry.get("autoscaling_config") or {}
    keys = ("min_replicas", "max_replicas", "target_ongoing_requests")
    parts = [f"{k}={auto[k]}" for k in keys if k in auto]
    if "max_ongoing_requests" in entry:
        parts.append(f"max_ongoing_requests={entry['max_ongoing_requests']}")
    return ", ".join(parts)


# -- the whole command ---------------------------------------------------------------------


def recommend(opts: RecommendOptions, progress: Optional[Callable[[int, int, Optional[float]], None]] = None,
              setup: Optional[Setup] = None) -> Recommendation:
    """Search, compare, and build the YAML (see the module docstring). Raises
    InputError for bad input and InfeasibleError (exit 3) when nothing meets the SLO;
    with a report folder, the report is written in both cases."""
    setup = setup or load_setup(opts)
    o = setup.opts
    storage = open_storage(o.storage, _default_db(o))
    study = open_study(storage, setup.study_name, setup.objective.directions, setup.fingerprint, setup.inputs,
                       o.resume)
    log.info("study %s in %s (%d trials wanted)", setup.study_name, setup.storage_desc, o.trials)
    executor = make_executor(setup.problem, o.n_jobs, o.ray_address)
    try:
        settings = SearchSettings(n_trials=o.trials, batch_size=o.batch_size, seed=o.seed, timeout_s=o.timeout_s)
        search = Search(study, setup.space, setup.objective, setup.base, executor, settings, setup.seed_params,
                        progress)
        trials = search.run()
        best = choose(trials, setup.objective)
        front = pareto_front(trials, setup.objective)
        entries = dict(setup.labels)
        if best is not None:
            entries = {"recommended": trial_entry(best), **entries}
        compare = _compare(executor, setup, entries, best)
    finally:
        executor.close()
    if best is None:
        msg = infeasible_message(trials, setup.objective, setup)
        if o.report:
            from simtune.tuner.report import write_report

            write_report(Path(o.report), setup, study, trials, None, front, compare, None, msg)
        raise InfeasibleError(msg)
    entry = trial_entry(best)
    text = build_text(setup, trials, best, front, compare, entry, study.study_name)
    rec = Recommendation(text=text, entry=entry, best=best, trials=trials, front=front, compare=compare,
                         study_name=study.study_name, storage=setup.storage_desc, inputs=setup.inputs)
    if o.report:
        from simtune.tuner.report import write_report

        write_report(Path(o.report), setup, study, trials, best, front, compare, rec, None)
    return rec


def _compare(executor, setup: Setup, entries: dict[str, dict], best: Optional[FrozenTrial]) -> dict[str, dict]:
    """Worst-case metrics of each labelled config on the search and holdout parts
    (the recommendation's search numbers are its trial's)."""
    jobs = []
    for label, entry in entries.items():
        if not (label == "recommended" and best is not None):
            jobs.append(Job((label, "search"), entry, "search", strict=False))
        if setup.problem.holdout:
            jobs.append(Job((label, "holdout"), entry, "holdout", strict=False))
    out: dict[str, dict] = {label: {} for label in entries}
    if best is not None:
        out["recommended"]["search"] = trial_metrics(best)
        out["recommended"]["search_runs"] = best.user_attrs[METRICS]["runs"]
    for (label, part), (status, payload) in executor.run(jobs):
        if status == "ok":
            out[label][part] = payload["worst"]
            out[label][f"{part}_runs"] = payload["runs"]
        else:
            log.warning("%s config could not be simulated on the %s part: %s", label, part,
                        str(payload).strip().splitlines()[-1])
            out[label][part] = None
    return out


def build_text(setup: Setup, trials: Sequence[FrozenTrial], best: FrozenTrial, front: Sequence[FrozenTrial],
               compare: dict, entry: dict, study_name: str) -> str:
    """The printed YAML: evidence header, then the document."""
    import ray

    import simtune

    o, obj, prob = setup.opts, setup.objective, setup.problem
    body, _doc = render_document(setup.spec, entry)
    verify(body, setup.spec, setup.base, entry)
    n_complete = sum(t.state == TrialState.COMPLETE for t in trials)
    n_pruned = sum(t.state == TrialState.PRUNED for t in trials)
    n_failed = sum(t.state == TrialState.FAIL for t in trials)
    traces = sorted({sc.trace_name for sc in prob.search})
    spans = []
    for name in traces:
        tr = next(sc for sc in prob.search if sc.trace_name == name and sc.headroom == 1.0).trace
        if prob.holdout:
            spans.append(f"{name} (search 0-{tr.span:.0f} s, holdout after)")
        else:
            spans.append(f"{name} (0-{tr.span:.0f} s)")
    headrooms = sorted({sc.headroom for sc in prob.search})
    cols = [(label, {"search": compare[label].get("search"), "holdout": compare[label].get("holdout")})
            for label in compare]
    lines = [
        f"simtune {simtune.__version__} recommend (Ray {ray.__version__}): deployment "
        f"{setup.spec.app_name}/{setup.spec.name}, trial {best.user_attrs[SLOT]} of study {study_name}",
        f"goal: least cost ({obj.cost.unit}) subject to {obj.describe()}, worst case over",
        *([f"  service model {prob.service_model.describe()};"] if prob.service_model is not None else []),
        f"  traces {', '.join(spans)};",
        f"  simulator seeds {', '.join(map(str, prob.sim_seeds))}; traffic x{', x'.join(f'{h:g}' for h in headrooms)}"
        + (f"; holdout = last {o.holdout:.0%} of each trace, never seen by the search" if prob.holdout
           else "; no holdout"),
        f"search: {len(trials)} trials ({n_complete} simulated, {n_pruned} pruned as invalid by Ray"
        f"{f', {n_failed} failed' if n_failed else ''}), TPE seed {o.seed}, batches of {o.batch_size}"
        + (f"; stopped by --timeout before {o.trials}" if len(trials) < o.trials else ""),
        "predicted (cost summed over traces; latency and error rate: the worst scenario):",
        *("  " + line for line in metrics_table(cols, obj, obj.cost.unit)),
    ]
    if o.pareto and front:
        p = obj.primary.name
        lines.append(f"Pareto front, cost vs {p} (trials meeting the error-rate cap):")
        for t in front[:12]:
            m = trial_metrics(t)
            mark = " <- recommended" if t.user_attrs[SLOT] == best.user_attrs[SLOT] else ""
            lines.append(f"  {m['cost']:>12,.2f} {obj.cost.unit}  {p} {m[p]:8.3f} s  trial {t.user_attrs[SLOT]}: "
                         f"{_short_settings(trial_entry(t))}{mark}")
    if setup.spec.kind == "deployment" or setup.spec.document is None:
        lines.append("paste under applications[].deployments[] of a Serve config (or serveConfigV2)")
    return header(lines) + body
