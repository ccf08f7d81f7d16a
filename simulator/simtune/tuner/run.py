"""`recommend`: load the inputs, search, judge the winner on unseen traffic, print it.

The order is what makes the recommendation honest:
  1. split every trace by time; the search never simulates the held-out tail;
  2. search (simtune.tuner.study) for the cheapest config that meets the SLOs in the
     worst case over traces, simulator seeds and traffic multipliers;
  3. only then simulate the winner, the user's current config and Ray's defaults on the
     held-out tail, and print those numbers next to each other, whatever they say.

With --topology the same steps tune deployments of a composed application jointly
(simtune.tuner.target.AppTarget): every simulation is of the whole application, the
SLOs are end to end, the cost is summed over all its deployments, and the printed YAML
is the user's config with every tuned deployment replaced.

With --pd-engine the application is a prefill/decode one (ray.serve.llm:
build_pd_openai_app, loaded by simtune.app.pd.load_pd_app; simtune.tuner.target.PDTarget):
its trace transform (KV transfer time per request) is applied to every trace, search
and holdout alike; the prefill and decode deployments are tuned (the ingress too if
named in --tune); TTFT/TPOT SLOs are end to end; the printed YAML has each leg's
settings in its LLMConfig's deployment_config. --compare-colocated then simulates the
non-disaggregated baseline (simtune.app.pd.colocated_app: one LLMServer deployment of
the decode leg's engine) with the largest fixed replica count whose GPUs do not exceed
the recommendation's mean GPU use, on the same traffic, and reports it beside the
recommendation.
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
from simtune.tuner.output import deployments_table, equal_cost_table, header, metrics_table
from simtune.tuner.problem import (Problem, app_traffic_stats, build_scenarios, file_digest, load_traces,
                                   slot_time_probe, traffic_stats)
from simtune.tuner.space import CONCURRENCY_AWARE, apply_app_space_file, apply_space_file, default_space
from simtune.tuner.study import (METRICS, SLOT, Search, SearchSettings, open_storage, open_study,
                                 trial_entry, trial_metrics)
from simtune.tuner.target import AppTarget, DeploymentTarget, FixedAppTarget, PDSource, PDTarget

log = logging.getLogger(__name__)


@dataclass
class RecommendOptions:
    """Everything `simtune recommend` takes (see its --help for each option)."""

    traces: Sequence[str]
    slos: Sequence[str]
    config: Optional[str] = None
    deployment: Optional[str] = None
    topology: Optional[str] = None  # an application topology YAML: tune its deployments jointly
    tune: Sequence[str] = ()  # with topology: the deployments to tune (default: every autoscaled one)
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
    rate_scale: float = 1.0  # thin (<1) or superpose (>1) every trace's traffic
    time_window: Optional[str] = None  # START:END seconds of every trace
    # a prefill/decode application (build_pd_openai_app): the engine model and the KV link
    pd_engine: Optional[str] = None
    kv_bytes_per_token: Optional[float] = None
    kv_bandwidth_gbps: Optional[float] = None
    kv_latency_s: Optional[float] = None
    compare_colocated: bool = False


@dataclass
class Recommendation:
    text: str  # the YAML printed on stdout, header included
    entry: Any  # the recommended entry; with --topology {tuned deployment: entry}
    best: FrozenTrial
    trials: list[FrozenTrial]
    front: list[FrozenTrial]
    # label -> {"search": worst-case metrics, "holdout": ..., "holdout_runs": [...]}
    compare: dict[str, dict[str, Any]]
    study_name: str
    storage: str
    inputs: dict = field(default_factory=dict)
    # --compare-colocated: the baseline's label (its metrics are compare[label]), replicas, gpus_per_replica,
    # gpus, reference_gpus (the recommendation's mean GPU use on `part`), part, within (gpus <= reference_gpus),
    # deployment, ingress, config, engine
    colocated: Optional[dict] = None


@dataclass
class Setup:
    """The loaded inputs: what a search and its report need."""

    opts: RecommendOptions
    target: Any  # DeploymentTarget | AppTarget (simtune.tuner.target)
    objective: Objective
    problem: Problem
    inputs: dict
    fingerprint: str
    study_name: str
    storage_desc: str
    seed_params: list[dict]
    labels: dict[str, Any] = field(default_factory=dict)  # baseline label -> candidate

    @property
    def spec(self) -> DeploymentSpec:
        """The deployment (an application: its ingress), which holds the user's document."""
        return self.target.spec


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
    if not (isinstance(o.rate_scale, (int, float)) and o.rate_scale > 0 and math.isfinite(o.rate_scale)):
        raise InputError(f"--rate-scale {o.rate_scale!r}: must be a positive traffic multiplier, e.g. 0.5")
    _check_pd_options(o)


_KV_FLAGS = (("kv_bytes_per_token", "--kv-bytes-per-token", "KV cache bytes per prompt token, e.g. 327680 for "
              "Llama-2-70B fp16"),
             ("kv_bandwidth_gbps", "--kv-bandwidth-gbps", "the prefill -> decode link in Gbit/s, e.g. 400"))


def _check_pd_options(o: RecommendOptions) -> None:
    """The prefill/decode flags: all or nothing, and not with the other application modes."""
    given = [flag for attr, flag in (("kv_bytes_per_token", "--kv-bytes-per-token"),
                                     ("kv_bandwidth_gbps", "--kv-bandwidth-gbps"), ("kv_latency_s", "--kv-latency-s"))
             if getattr(o, attr) is not None]
    if not o.pd_engine:
        if given:
            raise InputError(f"{given[0]} needs --pd-engine (the LLM engine model of a prefill/decode application)")
        if o.compare_colocated:
            raise InputError("--compare-colocated needs --pd-engine (it compares a prefill/decode recommendation "
                             "with a co-located deployment of the same engine)")
        return
    for attr, flag, what in _KV_FLAGS:
        if getattr(o, attr) is None:
            raise InputError(f"--pd-engine needs {flag} ({what})")
    for attr, flag, what in (*_KV_FLAGS, ("kv_latency_s", "--kv-latency-s", "")):
        v = getattr(o, attr)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (
                v == 0 and attr != "kv_latency_s"):
            raise InputError(f"{flag} {v!r}: must be {'>= 0' if attr == 'kv_latency_s' else '> 0'}")
    if o.topology:
        raise InputError("--pd-engine cannot be combined with --topology: a prefill/decode application's topology "
                         "comes from its build_pd_openai_app config (OpenAiIngress -> Decode -> Prefill)")
    if o.service_time or o.service_model:
        flag = "--service-time" if o.service_time else "--service-model"
        raise InputError(f"{flag} cannot be combined with --pd-engine: both legs run the --pd-engine model")
    if o.deployment:
        raise InputError("--deployment cannot be combined with --pd-engine; choose the deployments to tune with "
                         "--tune prefill,decode[,ingress]")
    if not o.config:
        raise InputError("--pd-engine needs --config: the Serve config (or RayService) with the "
                         "ray.serve.llm:build_pd_openai_app application")


def load_setup(o: RecommendOptions) -> Setup:
    """Read and check every input before any simulation runs."""
    from simtune.api import build_params
    from simtune.service_time import parse_service_time

    _check_options(o)
    objective_slos = tuple(parse_slo(s) for s in o.slos)
    names = [s.name for s in objective_slos]
    if len(set(names)) != len(names):
        raise InputError(f"--slo: {', '.join(sorted(n for n in set(names) if names.count(n) > 1))} given twice")
    if o.pd_engine:
        target = _pd_target(o)
        num_gpus = 0.0
        if o.cost_per_gpu_hour is not None and not any(s.num_gpus for s in target.specs.values()):
            raise InputError("--cost-per-gpu-hour: no deployment of the application holds GPUs (set the engine's "
                             "tensor_parallel_size / accelerator, or use --cost-per-replica-hour)")
    elif o.topology:
        target = _app_target(o)
        num_gpus = 0.0  # an application's deployments are costed at their own num_gpus
        if o.cost_per_gpu_hour is not None and not any(s.num_gpus for s in target.specs.values()):
            raise InputError("--cost-per-gpu-hour: no deployment of the application has ray_actor_options.num_gpus "
                             "(give it in --config, or use --cost-per-replica-hour)")
    else:
        if o.tune:
            raise InputError("--tune needs --topology or --pd-engine (without them the one deployment of --config "
                             "is tuned)")
        if o.config:
            spec = load_deployment(o.config, o.deployment)
        else:
            name = (o.deployment or "app").split("/")[-1]
            spec = deployment_from_mapping({"name": name, "num_replicas": "auto"}, source="<no --config>")
        if o.cost_per_gpu_hour is not None and spec.num_gpus == 0:
            raise InputError("--cost-per-gpu-hour: the deployment has no ray_actor_options.num_gpus "
                             "(give it in --config, or use --cost-per-replica-hour)")
        target = DeploymentTarget(spec, Base.from_spec(spec))
        num_gpus = spec.num_gpus
    cost = CostModel(o.cost_per_replica_hour, o.cost_per_gpu_hour, num_gpus)
    objective = Objective(objective_slos, float(o.max_error_rate), cost, bool(o.pareto))
    if o.service_time:
        parse_service_time(o.service_time)
    params = build_params(o.replica_startup_s, o.params_file, o.seed)

    model = None
    if o.service_model:
        from simtune.service_models import load_service_model

        model = load_service_model(o.service_model)
    streaming = [s for s in objective_slos if s.metric != "latency"]
    if streaming and not target.streams(model):
        where = ("the application's end-to-end results have none: its topology must stream from a deployment "
                 "(streams_from) with an LLM or streaming service model" if isinstance(target, AppTarget) else
                 "it needs a --service-model of kind llm or streaming")
        raise InputError(f"--slo {streaming[0].name}={streaming[0].bound_s:g}: {streaming[0].metric.upper()} is "
                         f"measured on streamed replies; {where}")

    from simtune.api import parse_window

    start, end = parse_window(o.time_window)
    traces = load_traces(o.traces, rate_scale=float(o.rate_scale), start=start, end=end, seed=o.seed)
    if isinstance(target, PDTarget):
        traces = [target.pd.transform(tr) for tr in traces]
    headrooms = tuple(sorted({1.0, *(float(h) for h in o.headroom)}))
    search, hold = build_scenarios(traces, o.holdout, headrooms, o.seed)
    problem = Problem(target=target, objective=objective, service_time=o.service_time, params=params.to_dict(),
                      sim_seeds=tuple(o.seed + i for i in range(o.sim_seeds)), search=search, holdout=hold,
                      service_model=model)
    bases = target.bases
    currents = {n: effective_values(target.specs[n]) for n in target.names}
    if isinstance(target, AppTarget):
        stats = app_traffic_stats(problem, {n: target.specs[n] for n in target.names})
        spaces = {}
        for n in target.names:
            sp = target.specs[n]
            mi = float(sp.autoscaling.metrics_interval_s) if sp.autoscaling is not None else 10.0
            aware = getattr(target.app.models.get(n), "kind", "fixed") in CONCURRENCY_AWARE
            # a prefill/decode leg's LLM replica serves ~target_ongoing_requests at once
            slots = float(currents[n]["target_ongoing_requests"] or 1.0) if aware and isinstance(
                target, PDTarget) else 1.0
            spaces[n] = default_space(stats[n], currents[n], sp.max_ongoing_requests, mi, concurrency_aware=aware,
                                      slots_per_replica=slots)
        if o.space:
            spaces = apply_app_space_file(spaces, o.space, target.app.names)
        target.spaces = spaces
    else:
        spec = target.spec
        stats = traffic_stats(search, o.service_time, slot_time_probe(problem, spec) if model is not None else None)
        mi = float(spec.autoscaling.metrics_interval_s) if spec.autoscaling is not None else 10.0
        space = default_space(stats, currents[spec.name], spec.max_ongoing_requests, mi,
                              concurrency_aware=getattr(model, "kind", "fixed") in CONCURRENCY_AWARE)
        if o.space:
            space = apply_space_file(space, o.space)
        target.space = space
    if not target.searched():
        raise InputError(f"{o.space}: every field is fixed or excluded; nothing to search")
    inputs = {
        "traces": {tr.name: file_digest(p) for tr, p in zip(traces, o.traces)},
        **({"trace_window": [start, end]} if o.time_window else {}),
        **({"rate_scale": float(o.rate_scale)} if o.rate_scale != 1.0 else {}),
        **_target_inputs(o, target, model),
        "params": params.to_dict(),
        "slos": [str(s) for s in objective_slos],
        "max_error_rate": objective.max_error_rate,
        "cost": asdict(cost),
        "pareto": objective.pareto,
        "space": target.space_dict(),
        "sim_seeds": list(problem.sim_seeds),
        "headroom": list(headrooms),
        "holdout": o.holdout,
        "seed": o.seed,
        "batch_size": o.batch_size,
    }
    inputs = json.loads(json.dumps(inputs, default=str))
    fingerprint = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    study_name = o.study_name or f"recommend-{target.stem}-{fingerprint}"

    seeds = []
    if o.config:
        seeds.append(target.project(currents))
    dflt = {n: default_entry(bases[n]) for n in target.names}
    seeds.append(target.project({n: effective_values(to_spec(bases[n], dflt[n], strict=False))
                                 for n in target.names}))
    seeds = [p for i, p in enumerate(seeds) if p not in seeds[:i]]
    labels = {} if isinstance(target, PDTarget) else {"ray-defaults": target.from_entries(dflt)}
    if isinstance(target, PDTarget):
        # Ray's LLM defaults (target_ongoing_requests 1e9) never scale: no "ray-defaults" seed or baseline
        seeds = seeds[:1]
    if o.config:
        labels = {"current": target.from_entries({n: bases[n].entry for n in target.names}), **labels}
    storage_desc = o.storage or str(_default_db(o))
    return Setup(o, target, objective, problem, inputs, fingerprint, study_name, storage_desc, seeds, labels)


def _target_inputs(o: RecommendOptions, target, model) -> dict:
    """The inputs that say what is tuned (part of the study's fingerprint)."""
    if isinstance(target, DeploymentTarget):
        return {
            "deployment": f"{target.spec.app_name}/{target.spec.name}",
            "entry": target.base.entry,
            "request_timeout_s": target.base.request_timeout_s,
            "service_time": o.service_time,
            "service_model": ({"file": file_digest(o.service_model), "model": model.describe()}
                              if model is not None else None),
        }
    app = target.app
    if isinstance(target, PDTarget):
        pd = target.pd
        return {
            "application": app.app_name,
            "tuned": list(target.tuned),
            "entries": {n: app.specs[n].deployment_options for n in app.names},
            "request_timeout_s": target.spec.request_timeout_s,
            "prefill_decode": {"config": file_digest(pd.config), "engine": file_digest(pd.engine),
                               "engine_model": pd.engine_describe, "roles": pd.roles, **pd.kv,
                               "service_models": {n: m.describe() for n, m in sorted(app.models.items())
                                                  if m is not None}},
        }
    return {
        "application": app.app_name,
        "tuned": list(target.tuned),
        "entries": {n: app.specs[n].deployment_options for n in app.names},
        "request_timeout_s": target.spec.request_timeout_s,
        "topology": {"file": file_digest(o.topology),
                     "service_models": {n: m.describe() for n, m in sorted(app.models.items()) if m is not None},
                     "service_model_files": {n: file_digest(node.service_model)
                                             for n, node in sorted(app.topology.nodes.items())
                                             if isinstance(node.service_model, str)}},
    }


def _app_target(o: RecommendOptions) -> AppTarget:
    """The application of --config + --topology and which of its deployments are tuned."""
    from simtune.app.spec import load_app

    if not o.config:
        raise InputError("--topology needs --config: the Serve config holding every deployment of the application")
    if o.deployment:
        raise InputError("--deployment cannot be combined with --topology; choose the deployments to tune with "
                         "--tune A,B")
    if o.service_time or o.service_model:
        flag = "--service-time" if o.service_time else "--service-model"
        raise InputError(f"{flag} cannot be combined with --topology: each deployment's service time and model "
                         "come from the topology (deployments.NAME.service_time / service_model)")
    app = load_app(o.config, o.topology)
    names = app.names
    if o.tune:
        wanted = _tune_names(o.tune, "deployment names, e.g. --tune Model,Postprocess")
        unknown = [t for t in wanted if t not in names]
        if unknown:
            raise InputError(f"--tune {unknown[0]!r}: no such deployment in application {app.app_name!r} of "
                             f"{o.topology} (deployments: {', '.join(names)})")
        tuned = [n for n in names if n in wanted]
    else:
        tuned = [n for n in names if app.specs[n].autoscaling is not None]
        if not tuned:
            raise InputError(f"{o.config}: no deployment of application {app.app_name!r} has autoscaling_config "
                             f"(or num_replicas: auto); name the ones to tune with --tune (deployments: "
                             f"{', '.join(names)})")
    return AppTarget(app, tuned, {n: Base.from_spec(app.specs[n]) for n in tuned})


def _tune_names(tune: Sequence[str], what: str) -> list[str]:
    """--tune values: repeated and/or comma-separated names."""
    wanted = [t.strip() for item in tune for t in str(item).split(",") if t.strip()]
    if not wanted:
        raise InputError(f"--tune: give {what}")
    return wanted


def _pd_target(o: RecommendOptions) -> PDTarget:
    """The prefill/decode application of --config + --pd-engine and the deployments tuned:
    prefill and decode by default; --tune takes roles (prefill, decode, ingress) or names."""
    from simtune.app.pd import load_pd_app, pd_roles
    from simtune.service_models import load_service_model

    kv = {"kv_bytes_per_token": float(o.kv_bytes_per_token), "kv_bandwidth_gbps": float(o.kv_bandwidth_gbps),
          "kv_latency_s": float(o.kv_latency_s or 0.0)}
    app, transform = load_pd_app(o.config, o.pd_engine, **kv)
    roles = pd_roles(app)
    by_role = {**{n: n for n in app.names}, **roles}
    if o.tune:
        wanted = _tune_names(o.tune, "roles or deployment names, e.g. --tune prefill,decode,ingress")
        unknown = [t for t in wanted if t not in by_role]
        if unknown:
            raise InputError(f"--tune {unknown[0]!r}: not a role (prefill, decode, ingress) or deployment of "
                             f"application {app.app_name!r} (deployments: {', '.join(app.names)})")
        chosen = {by_role[t] for t in wanted}
        tuned = [n for n in app.names if n in chosen]
    else:
        tuned = [n for n in app.names if n in (roles["prefill"], roles["decode"])]
    source = PDSource(config=str(o.config), engine=str(o.pd_engine), roles=roles, transform=transform,
                      application=app.app_name, engine_describe=load_service_model(o.pd_engine).describe(), **kv)
    return PDTarget(app, tuned, {n: Base.from_spec(app.specs[n]) for n in tuned}, pd=source)


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
    settings = setup.target.short(trial_entry(closest))
    lat = "none ok" if m[p] >= 1e8 else f"{m[p]:.3g} s"
    return (f"no configuration in the search space meets {objective.describe()} (worst case) over {where}; "
            f"best achievable {p} = {lat} with error rate {m['error_rate']:.4g}"
            f"{'' if ok_err else ' (no trial met the error-rate cap)'}; closest overall: {p} "
            f"{mc[p]:.3g} s, error rate {mc['error_rate']:.4g} ({settings}). Relax the SLO or widen --space")


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
        search = Search(study, setup.target, setup.objective, executor, settings, setup.seed_params, progress)
        trials = search.run()
        best = choose(trials, setup.objective)
        front = pareto_front(trials, setup.objective)
        entries = dict(setup.labels)
        if best is not None:
            entries = {"recommended": trial_entry(best), **entries}
        compare = _compare(executor, setup, entries, best)
    finally:
        executor.close()
    colocated = None
    if o.compare_colocated and best is not None:
        got = compare_colocated(setup, compare)
        if got is not None:
            label, metrics, colocated = got
            compare[label] = metrics
    if best is None:
        msg = infeasible_message(trials, setup.objective, setup)
        if o.report:
            from simtune.tuner.report import write_report

            write_report(Path(o.report), setup, study, trials, None, front, compare, None, msg)
        raise InfeasibleError(msg)
    entry = trial_entry(best)
    text = build_text(setup, trials, best, front, compare, entry, study.study_name, colocated)
    rec = Recommendation(text=text, entry=entry, best=best, trials=trials, front=front, compare=compare,
                         study_name=study.study_name, storage=setup.storage_desc, inputs=setup.inputs,
                         colocated=colocated)
    if o.report:
        from simtune.tuner.report import write_report

        write_report(Path(o.report), setup, study, trials, best, front, compare, rec, None)
    return rec


def _compare(executor, setup: Setup, entries: dict[str, Any], best: Optional[FrozenTrial]) -> dict[str, dict]:
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
               compare: dict, entry: Any, study_name: str, colocated: Optional[dict] = None) -> str:
    """The printed YAML: evidence header, then the document."""
    import ray

    import simtune

    o, obj, prob, target = setup.opts, setup.objective, setup.problem, setup.target
    body, _doc = target.render(entry)
    target.verify(body, entry)
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
    app = isinstance(target, AppTarget)
    pd = isinstance(target, PDTarget)
    if pd:
        roles = target.pd.roles
        where = [f"  the prefill/decode application of {o.config} (ray.serve.llm:build_pd_openai_app: "
                 f"{roles['ingress']} -> {roles['decode']} -> {roles['prefill']}), engine {o.pd_engine} "
                 f"({target.pd.engine_describe}),",
                 f"  KV transfer {target.pd.kv_latency_s:g} s + {target.pd.kv_bytes_per_token:,.0f} B/token at "
                 f"{target.pd.kv_bandwidth_gbps:g} Gbit/s: latency, TTFT and TPOT end to end, cost summed over its "
                 "deployments;"]
    elif app:
        where = [f"  the application of {o.topology} (ingress {target.app.topology.ingress}, deployments "
                 f"{', '.join(target.app.names)}): latency end to end, cost summed over its deployments;"]
    else:
        where = []
    window = ""
    if o.time_window or o.rate_scale != 1.0:
        window = (f" [{'window ' + o.time_window + ' s' if o.time_window else ''}"
                  f"{', ' if o.time_window and o.rate_scale != 1.0 else ''}"
                  f"{f'traffic x{o.rate_scale:g}' if o.rate_scale != 1.0 else ''}]")
    lines = [
        f"simtune {simtune.__version__} recommend (Ray {ray.__version__}): {target.describe()}, "
        f"trial {best.user_attrs[SLOT]} of study {study_name}",
        f"goal: least cost ({obj.cost.unit}) subject to {obj.describe()}, worst case over",
        *([f"  service model {prob.service_model.describe()};"] if prob.service_model is not None else []),
        *where,
        f"  traces {', '.join(spans)}{window};",
        f"  simulator seeds {', '.join(map(str, prob.sim_seeds))}; traffic x{', x'.join(f'{h:g}' for h in headrooms)}"
        + (f"; holdout = last {o.holdout:.0%} of each trace, never seen by the search" if prob.holdout
           else "; no holdout"),
        f"search: {len(trials)} trials ({n_complete} simulated, {n_pruned} pruned as invalid by Ray"
        f"{f', {n_failed} failed' if n_failed else ''}), TPE seed {o.seed}, batches of {o.batch_size}"
        + (f"; stopped by --timeout before {o.trials}" if len(trials) < o.trials else ""),
        ("predicted end to end (cost summed over deployments and traces; latency and error rate: the worst "
         "scenario):" if app else "predicted (cost summed over traces; latency and error rate: the worst scenario):"),
        *("  " + line for line in metrics_table(cols, obj, obj.cost.unit)),
    ]
    if app:
        lines.append("per deployment (cost: each trace's costliest scenario, summed; latency of the calls it "
                     "receives: the worst scenario):")
        own = [c for c in cols if c[0] == "recommended" or c[0] in setup.labels]
        lines += ["  " + line for line in deployments_table(own, target.settings(_candidates(setup, compare, entry)),
                                                             target.tuned, obj, obj.cost.unit, target.roles())]
    if colocated is not None:
        part = colocated["part"]
        lines += [f"co-located baseline (--compare-colocated): {colocated['label']} = simtune.app.pd.colocated_app: "
                  f"{colocated['ingress']} -> {colocated['deployment']}, the decode leg's LLMConfig running prefill "
                  f"and decode on one engine,",
                  f"  num_replicas {colocated['replicas']} fixed x {colocated['gpus_per_replica']:g} GPUs = "
                  f"{colocated['gpus']:g} GPUs: the most whole replicas within the recommendation's mean GPU use "
                  f"on the {part} ({colocated['reference_gpus']:.2f})"
                  + ("" if colocated["within"] else " (one replica already exceeds it)") + ";",
                  f"at equal cost, {part} (worst case over seeds and multipliers):"]
        lines += ["  " + line for line in equal_cost_table(
            [(label, compare[label].get(part)) for label in compare], obj)]
    if o.pareto and front:
        p = obj.primary.name
        lines.append(f"Pareto front, cost vs {p} (trials meeting the error-rate cap):")
        for t in front[:12]:
            m = trial_metrics(t)
            mark = " <- recommended" if t.user_attrs[SLOT] == best.user_attrs[SLOT] else ""
            lines.append(f"  {m['cost']:>12,.2f} {obj.cost.unit}  {p} {m[p]:8.3f} s  trial {t.user_attrs[SLOT]}: "
                         f"{target.short(trial_entry(t))}{mark}")
    if setup.spec.kind == "deployment" or setup.spec.document is None:
        lines.append("paste under applications[].deployments[] of a Serve config (or serveConfigV2)")
    return header(lines) + body


def _candidates(setup: Setup, compare: dict, best_entry: Any) -> dict[str, Any]:
    """label -> candidate for the compared configs of the target (not the co-located baseline)."""
    return {label: best_entry if label == "recommended" else setup.labels[label] for label in compare
            if label == "recommended" or label in setup.labels}


# -- the co-located baseline (--compare-colocated) -------------------------------------------


def compare_colocated(setup: Setup, compare: dict) -> Optional[tuple[str, dict, dict]]:
    """(label, {part: worst case, part_runs: runs}, info) of the non-disaggregated
    baseline at equal cost: simtune.app.pd.colocated_app with the largest fixed
    num_replicas whose GPUs do not exceed the recommendation's mean GPU use on the
    holdout (the search part without one), simulated on the same scenarios and seeds."""
    import dataclasses

    from simtune.app.pd import colocated_app
    from simtune.tuner.problem import evaluate

    o, prob = setup.opts, setup.problem
    part = "holdout" if prob.holdout else "search"
    rec = compare.get("recommended", {}).get(part)
    if rec is None:
        log.warning("--compare-colocated: the recommendation has no %s metrics; no co-located baseline", part)
        return None
    probe = colocated_app(o.config, o.pd_engine, deployment_config={"num_replicas": 1})
    name = probe.topology.streams_from
    per = probe.specs[name].num_gpus or 1.0
    reference = float(rec.get("mean_gpus") or 0.0)
    n = int(math.floor(reference / per + 1e-9))
    within = n >= 1
    n = max(n, 1)
    app = colocated_app(o.config, o.pd_engine, deployment_config={"num_replicas": n})
    fixed = dataclasses.replace(prob, target=FixedAppTarget(app), _cache={})
    out: dict[str, Any] = {}
    for p in ("search", "holdout") if prob.holdout else ("search",):
        r = evaluate(fixed, None, p, strict=False)
        out[p], out[f"{p}_runs"] = r["worst"], r["runs"]
    label = f"co-located x{n}"
    info = {"label": label, "replicas": n, "gpus_per_replica": per, "gpus": n * per, "reference_gpus": reference,
            "part": part, "within": within, "deployment": name, "ingress": app.topology.ingress,
            "config": str(o.config), "engine": str(o.pd_engine)}
    return label, out, info
