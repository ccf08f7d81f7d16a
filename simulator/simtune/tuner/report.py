"""`--report DIR`: the evidence behind a recommendation, as PNGs and a short Markdown.

Files: summary.md, recommendation.yaml, trials.csv, pareto_front.png,
optimization_history.png, param_importances.png (optuna's own matplotlib
visualisations), timeline_<trace>.png (replicas and latency of the recommendation
against the current config and Ray's defaults over the whole trace, holdout included),
and pareto.yaml (the front's configs) with --pareto. For an application (--topology)
the parameters are named DEPLOYMENT.FIELD and there is one timeline per deployment,
timeline_<trace>_<deployment>.png (the ingress's latency is the end-to-end latency).

Why the optuna plots are drawn from an in-memory copy of the trials in slot order:
the storage numbers trials in the order they finished, which differs between runs;
slot order is the search's own order. The Pareto plot needs two objectives, so the
copy carries (cost, primary-SLO latency) as values and the error-rate cap (and any
other SLO) as its constraint, whatever the study optimised.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Optional, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from simtune.tuner.output import deployments_table, dump, equal_cost_table, metrics_table
from simtune.tuner.study import CANDIDATE, METRICS, PRUNED_REASON, SLOT, trial_entry, trial_metrics

log = logging.getLogger(__name__)


def _copy(trials: Sequence[FrozenTrial], directions: list[str], values_of=None, constraints_of=None) -> optuna.Study:
    study = optuna.create_study(directions=directions)
    for t in sorted(trials, key=lambda t: t.user_attrs[SLOT]):
        if t.state == TrialState.FAIL:
            continue
        values = values_of(t) if values_of and t.state == TrialState.COMPLETE else (
            t.values if t.state == TrialState.COMPLETE else None)
        system = dict(t.system_attrs)
        if constraints_of is not None and t.state == TrialState.COMPLETE:
            system = {k: v for k, v in system.items() if not k.startswith("constraints")}
            system.update({f"constraints:{k}": v for k, v in constraints_of(t).items()})
        user = {k: v for k, v in t.user_attrs.items() if k not in (METRICS, CANDIDATE)}
        study.add_trial(optuna.trial.create_trial(state=t.state, params=t.params, distributions=t.distributions,
                                                  values=values, user_attrs=user, system_attrs=system))
    return study


def _save(ax, path: Path) -> None:
    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    fig.set_size_inches(9, 5.5)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)


def plots(out: Path, setup, trials: Sequence[FrozenTrial]) -> list[str]:
    """optuna's visualisations; returns the files written (a plot that optuna cannot
    draw, e.g. importances from fewer than two complete trials, is skipped)."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as ovm

    obj = setup.objective
    p = obj.primary
    written = []
    cost_name = f"cost ({obj.cost.unit})"

    def metric(t, key):
        return trial_metrics(t)[key]

    def pareto_constraints(t):
        m = trial_metrics(t)
        c = {"error_rate": m["error_rate"] - obj.max_error_rate}
        c.update({s.name: m[s.name] / s.bound_s - 1.0 for s in obj.slos[1:]})
        return c

    jobs = [
        ("pareto_front.png", lambda: ovm.plot_pareto_front(
            _copy(trials, ["minimize", "minimize"], lambda t: [metric(t, "cost"), metric(t, p.name)],
                  pareto_constraints), target_names=[cost_name, f"{p.name} latency (s)"])),
        ("optimization_history.png", lambda: ovm.plot_optimization_history(
            _copy(trials, ["minimize"], lambda t: [metric(t, "cost")]), target_name=cost_name)),
        ("param_importances.png", lambda: ovm.plot_param_importances(
            _copy(trials, ["minimize"], lambda t: [metric(t, "cost")]), target_name=cost_name)),
        (f"param_importances_{p.name}.png", lambda: ovm.plot_param_importances(
            _copy(trials, ["minimize"], lambda t: [metric(t, p.name)]), target_name=f"{p.name} latency (s)")),
    ]
    for name, draw in jobs:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = draw()
            if name.startswith("pareto"):
                ax.axhline(p.bound_s, color="tab:red", lw=0.8, ls=":")
                ax.set_yscale("log")
            _save(ax, out / name)
            written.append(name)
        except Exception as exc:  # optuna refuses some plots on tiny studies
            log.info("report: %s skipped: %s", name, exc)
    return written


def timelines(out: Path, setup, entries: dict) -> list[str]:
    """Replica/latency timeline per trace (whole trace, nominal traffic, first seed); for
    an application one per trace and deployment."""
    from simtune.plots import plot_timeline
    from simtune.tuner.candidate import InvalidCandidate

    prob, target = setup.problem, setup.target
    seed = prob.sim_seeds[0]
    written = []
    scenarios = prob.holdout or prob.search
    for sc in scenarios:
        if sc.headroom != 1.0:
            continue
        results = []
        for label, entry in entries.items():
            try:
                spec = target.validate(entry, strict=False)
            except InvalidCandidate:
                continue
            results.append((label, dict(target.views(target.simulate(prob, spec, sc.trace, seed)))))
        if not results:
            continue
        for dep in results[0][1]:
            name = f"timeline_{_safe(sc.trace_name)}.png" if dep is None else \
                f"timeline_{_safe(sc.trace_name)}_{_safe(dep)}.png"
            where = sc.trace_name if dep is None else (
                f"{sc.trace_name}, {dep}" + (" (ingress: end to end)" if dep == target.app.topology.ingress else ""))
            title = f"{where}: {results[0][0]} (blue)"
            if sc.t0 > 0:
                title += f"; holdout from {sc.t0:.0f} s"
            plot_timeline(results[0][1][dep], out / name, slo_latency_s=_latency_bound(setup.objective),
                          others=[(label, views[dep]) for label, views in results[1:]], title=title)
            written.append(name)
    return written


def _latency_bound(objective) -> Optional[float]:
    """The first latency SLO's bound (drawn on the latency panel); None without one."""
    return next((s.bound_s for s in objective.slos if s.metric == "latency"), None)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def write_report(out: Path, setup, study, trials: Sequence[FrozenTrial], best: Optional[FrozenTrial],
                 front: Sequence[FrozenTrial], compare: dict, rec, failure: Optional[str]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    pngs = plots(out, setup, trials)
    entries = {label: e for label, e in setup.labels.items()}
    if best is not None:
        entries = {"recommended": trial_entry(best), **entries}
    pngs += timelines(out, setup, entries)
    _copy(trials, ["minimize"], lambda t: [trial_metrics(t)["cost"]]).trials_dataframe(
        attrs=("number", "params", "state", "values", "user_attrs")).to_csv(out / "trials.csv", index=False)
    if rec is not None:
        (out / "recommendation.yaml").write_text(rec.text)
    if setup.opts.pareto and front:
        (out / "pareto.yaml").write_text(dump([_pareto_row(setup.target, t) for t in front]))
    colocated = getattr(rec, "colocated", None)
    (out / "summary.md").write_text(_markdown(setup, study, trials, best, front, compare, pngs, failure, colocated))
    return out


def _pareto_row(target, t: FrozenTrial) -> dict:
    if target.kind == "deployment":
        return {"trial": t.user_attrs[SLOT], **trial_metrics(t), "deployment": trial_entry(t)}
    m = dict(trial_metrics(t))
    per = m.pop("deployments", None)
    return {"trial": t.user_attrs[SLOT], **m, "per_deployment": per,
            "deployments": list(target.entries(trial_entry(t)).values())}


def _markdown(setup, study, trials, best, front, compare, pngs: list[str], failure: Optional[str],
              colocated: Optional[dict] = None) -> str:
    o, obj, prob, target = setup.opts, setup.objective, setup.problem, setup.target
    p = obj.primary.name
    app = target.kind != "deployment"
    states = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    lines = [f"# simtune recommend: {target.title()}", ""]
    pd = getattr(target, "pd", None)
    if pd is not None:
        lines += [f"- Application: {target.describe()}; Serve config `{o.config}` (ray.serve.llm:build_pd_openai_app: "
                  f"{pd.roles['ingress']} -> {pd.roles['decode']} -> {pd.roles['prefill']}); engine `{pd.engine}` "
                  f"({pd.engine_describe}); KV transfer {pd.kv_latency_s:g} s + {pd.kv_bytes_per_token:,.0f} B/token "
                  f"at {pd.kv_bandwidth_gbps:g} Gbit/s. SLOs (latency, TTFT, TPOT) are end to end, cost is summed "
                  "over every deployment; parameters are named DEPLOYMENT.FIELD; the recommended settings are "
                  "written into each leg's `args.<prefill|decode>_config.deployment_config`."]
    elif app:
        lines += [f"- Application: {target.describe()}; topology `{o.topology}` (ingress "
                  f"{target.app.topology.ingress}); SLOs are end to end, cost is summed over every deployment; "
                  f"parameters are named DEPLOYMENT.FIELD."]
    lines += [f"- Goal: least cost ({obj.cost.unit}) subject to {obj.describe()}, worst case over "
              f"traces x simulator seeds {list(prob.sim_seeds)} x traffic multipliers "
              f"{sorted({sc.headroom for sc in prob.search})}.",
              f"- Traces: {', '.join(sorted(setup.inputs['traces']))}"
              + (f" (window {o.time_window} s)" if o.time_window else "")
              + (f" (traffic x{o.rate_scale:g})" if o.rate_scale != 1.0 else "")
              + f"; holdout: last {o.holdout:.0%} of each, not simulated during the search.",
              f"- Search: {len(trials)} trials ({states[TrialState.COMPLETE]} simulated, "
              f"{states[TrialState.PRUNED]} pruned as invalid by Ray, {states[TrialState.FAIL]} failed); "
              f"seed {o.seed}; study `{study.study_name}` in `{setup.storage_desc}`.", ""]
    if failure:
        lines += ["## No recommendation", "", failure, ""]
    cols = [(label, {"search": compare[label].get("search"), "holdout": compare[label].get("holdout")})
            for label in compare]
    lines += ["## Predicted metrics (worst case)", "", "```", *metrics_table(cols, obj, obj.cost.unit), "```", ""]
    if colocated is not None:
        part = colocated["part"]
        lines += ["## Prefill/decode vs co-located at equal cost", "",
                  f"The co-located baseline `{colocated['label']}` is `simtune.app.pd.colocated_app` on the same "
                  f"Serve config: {colocated['ingress']} -> {colocated['deployment']}, one deployment running the "
                  f"decode leg's LLMConfig (prefill and decode on the same engine), with num_replicas "
                  f"{colocated['replicas']} fixed x {colocated['gpus_per_replica']:g} GPUs = {colocated['gpus']:g} "
                  f"GPUs: the most whole replicas within the recommendation's mean GPU use on the {part} "
                  f"({colocated['reference_gpus']:.2f})" + ("" if colocated["within"] else
                                                              " (one replica already exceeds it)")
                  + f". Same traffic, simulator seeds and multipliers; worst case on the {part}.", "",
                  *equal_cost_table([(label, compare[label].get(part)) for label in compare], obj, markdown=True),
                  ""]
    if app:
        cands = {label: trial_entry(best) if label == "recommended" else setup.labels[label] for label in compare
                 if label in setup.labels or (label == "recommended" and best is not None)}
        own = [c for c in cols if c[0] in cands]
        lines += ["## Per deployment", "", "Cost: each trace's costliest scenario, summed over traces; latency: of "
                  "the calls the deployment receives (its own work plus the calls it awaits), worst scenario.", "",
                  "```", *deployments_table(own, target.settings(cands), target.tuned, obj, obj.cost.unit,
                                            target.roles()),
                  "```", ""]
    if prob.holdout:
        lines += ["## Holdout, per trace (worst over seeds and multipliers)", "",
                  f"| trace | config | cost ({obj.cost.unit}) | {p} s | error rate | within {obj.primary.bound_s:g} s |",
                  "|---|---|---:|---:|---:|---:|"]
        for name in sorted({sc.trace_name for sc in prob.holdout}):
            for label in compare:
                runs = [r for r in compare[label].get("holdout_runs") or [] if r["trace"] == name]
                if not runs:
                    continue
                w = obj.worst((r["trace"], r) for r in runs)
                lines.append(f"| {name} | {label} | {w['cost']:,.1f} | {w[p]:.3f} | {w['error_rate']:.4f} | "
                             f"{100 * w[f'attainment_{p}']:.2f}% |")
        lines.append("")
    if best is not None and pd is not None:
        writes = {n: {"role": role, **updates} for n, (role, updates) in target.writes(trial_entry(best)).items()}
        lines += ["## Recommended settings (written into each leg's LLMConfig deployment_config; see "
                  "recommendation.yaml)", "", "```yaml", dump(writes).rstrip(), "```", ""]
    elif best is not None and app:
        lines += ["## Recommended deployment entries (tuned deployments)", "", "```yaml",
                  dump(list(target.entries(trial_entry(best)).values())).rstrip(), "```", ""]
    elif best is not None:
        lines += ["## Recommended deployment entry", "", "```yaml", dump(trial_entry(best)).rstrip(), "```", ""]
    if front:
        lines += [f"## Pareto front (cost vs {p}; trials within the error-rate cap)", "",
                  f"| trial | cost | {p} s | settings |", "|---:|---:|---:|---|"]
        for t in front[:20]:
            m = trial_metrics(t)
            if app:
                short = target.short(trial_entry(t))
            else:
                auto = trial_entry(t).get("autoscaling_config", {})
                short = ", ".join(f"{k}={auto[k]}" for k in ("min_replicas", "max_replicas", "target_ongoing_requests")
                                  if k in auto)
            lines.append(f"| {t.user_attrs[SLOT]} | {m['cost']:,.1f} | {m[p]:.3f} | {short} |")
        lines.append("")
    pruned = [t.user_attrs.get(PRUNED_REASON) for t in trials if t.state == TrialState.PRUNED]
    if pruned:
        import re
        from collections import Counter

        lines += ["## Pruned by Ray's validation", ""]
        kinds = Counter(re.sub(r"\d+(\.\d+)?", "N", r)[:160] for r in pruned if r)
        for reason, n in kinds.most_common(5):
            lines.append(f"- {n} x {reason}")
        lines.append("")
    if pngs:
        lines += ["## Plots", ""] + [f"![{name}]({name})" for name in pngs] + [""]
    return "\n".join(lines)
