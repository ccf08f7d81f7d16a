"""What `recommend` tunes: one deployment, or several deployments of a composed application.

The search loop (simtune.tuner.study), the simulation of a candidate
(simtune.tuner.problem.evaluate), the baselines, the YAML and the report all go through
a target, so a single deployment and an application share one code path:

  suggest / project   optuna parameters: a trial's, or a known config's (seed trials)
  candidate           parameters -> a candidate: a deployment entry (one deployment) or
                      {deployment name: entry} (an application; tuned deployments only)
  validate            Ray's validation of each entry (InvalidCandidate: the trial is pruned)
  simulate            one simulation of a validated candidate: a SimResult or an AppResult
  entries             the {deployment name: entry} view of a candidate, for the output

Why the candidate of one deployment stays a bare entry: that is what the trials of
existing studies hold (user attr simtune:candidate), and what the report's Pareto
file lists; nothing about a single-deployment run changes.

An application's parameters are the tuned deployments' own spaces side by side, each
field named `DEPLOYMENT.FIELD` (simtune.tuner.space.PrefixedTrial); the deployments
that are not tuned keep the settings of the user's config. Every simulation is of the
whole application (simtune.app.simulate.simulate_app), judged end to end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from simtune.serve_config import DeploymentSpec
from simtune.tuner.candidate import Base, InvalidCandidate, build_entry, to_spec
from simtune.tuner.space import Dim, PrefixedTrial, SearchSpace, split_param


def short_settings(entry: dict) -> str:
    """`min_replicas=1, max_replicas=6, target_ongoing_requests=2.0[, max_ongoing_requests=8]`."""
    auto = entry.get("autoscaling_config") or {}
    keys = ("min_replicas", "max_replicas", "target_ongoing_requests")
    parts = [f"{k}={auto[k]}" for k in keys if k in auto]
    if "max_ongoing_requests" in entry:
        parts.append(f"max_ongoing_requests={entry['max_ongoing_requests']}")
    return ", ".join(parts)


@dataclass
class DeploymentTarget:
    """One deployment (no --topology): the candidate is its entry."""

    spec: DeploymentSpec
    base: Base
    space: Optional[SearchSpace] = None  # set once the traffic is known

    kind = "deployment"

    @property
    def names(self) -> list[str]:
        return [self.spec.name]

    @property
    def bases(self) -> dict[str, Base]:
        return {self.spec.name: self.base}

    @property
    def specs(self) -> dict[str, DeploymentSpec]:
        return {self.spec.name: self.spec}

    def describe(self) -> str:
        return f"deployment {self.spec.app_name}/{self.spec.name}"

    def title(self) -> str:
        return f"{self.spec.app_name}/{self.spec.name}"

    @property
    def stem(self) -> str:
        """The default study name's middle part."""
        return f"{self.spec.app_name}-{self.spec.name}"

    # -- parameters ----------------------------------------------------------------------
    def searched(self) -> list[Dim]:
        return self.space.searched()

    def space_dict(self) -> dict[str, Any]:
        return self.space.to_dict()

    def suggest(self, trial) -> dict[str, Any]:
        return self.space.suggest(trial)

    def project(self, currents: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return self.space.project(currents[self.spec.name])

    # -- candidates ----------------------------------------------------------------------
    def candidate(self, params: dict[str, Any]) -> dict:
        return build_entry(self.base, self.space.values(params))

    def entries(self, candidate: dict) -> dict[str, dict]:
        return {self.spec.name: candidate}

    def from_entries(self, entries: dict[str, dict]) -> dict:
        return entries[self.spec.name]

    def validate(self, candidate: dict, strict: bool = True) -> DeploymentSpec:
        return to_spec(self.base, candidate, strict=strict)

    def short(self, candidate: dict) -> str:
        return short_settings(candidate)

    # -- simulating ----------------------------------------------------------------------
    def simulate(self, problem, validated: DeploymentSpec, trace, seed: int):
        from simtune.simulate import simulate

        return simulate(trace, validated, problem.sim_params(seed), service_time=problem.service_dist(), seed=seed,
                        service_model=problem.service_model)

    def views(self, res) -> list[tuple[Optional[str], Any]]:
        """(deployment name or None, SimResult) pairs to plot."""
        return [(None, res)]


@dataclass
class AppTarget:
    """Deployments of a composed application (--topology), tuned jointly against
    end-to-end SLOs; the candidate is {tuned deployment name: entry}."""

    app: Any  # simtune.app.spec.AppSpec
    tuned: list[str]
    bases: dict[str, Base]
    spaces: dict[str, SearchSpace] = field(default_factory=dict)  # set once the traffic is known

    kind = "application"

    @property
    def names(self) -> list[str]:
        return list(self.tuned)

    @property
    def spec(self) -> DeploymentSpec:
        """The ingress's spec: it carries the document, its kind and the application name."""
        return self.app.ingress

    @property
    def specs(self) -> dict[str, DeploymentSpec]:
        return dict(self.app.specs)

    @property
    def kept(self) -> list[str]:
        return [n for n in self.app.names if n not in self.tuned]

    def describe(self) -> str:
        kept = f"; kept as configured: {', '.join(self.kept)}" if self.kept else ""
        return f"application {self.app.app_name} (tuned: {', '.join(self.tuned)}{kept})"

    def title(self) -> str:
        return f"application {self.app.app_name}"

    @property
    def stem(self) -> str:
        return f"{self.app.app_name}-app"

    # -- parameters ----------------------------------------------------------------------
    def searched(self) -> list[Dim]:
        return [d for n in self.tuned for d in self.spaces[n].searched()]

    def space_dict(self) -> dict[str, Any]:
        return {f"{n}.{k}": v for n in self.tuned for k, v in self.spaces[n].to_dict().items()}

    def suggest(self, trial) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for n in self.tuned:
            out.update({f"{n}.{k}": v for k, v in self.spaces[n].suggest(PrefixedTrial(trial, n)).items()})
        return out

    def project(self, currents: dict[str, dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for n in self.tuned:
            out.update({f"{n}.{k}": v for k, v in self.spaces[n].project(currents[n]).items()})
        return out

    def split(self, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Prefixed optuna parameters -> {deployment: its own parameters}."""
        out: dict[str, dict[str, Any]] = {n: {} for n in self.tuned}
        for key, value in params.items():
            dep, name = split_param(key)
            out[dep][name] = value
        return out

    # -- candidates ----------------------------------------------------------------------
    def candidate(self, params: dict[str, Any]) -> dict[str, dict]:
        own = self.split(params)
        return {n: build_entry(self.bases[n], self.spaces[n].values(own[n])) for n in self.tuned}

    def entries(self, candidate: dict[str, dict]) -> dict[str, dict]:
        return dict(candidate)

    def from_entries(self, entries: dict[str, dict]) -> dict[str, dict]:
        return {n: entries[n] for n in self.tuned}

    def validate(self, candidate: dict[str, dict], strict: bool = True) -> dict[str, DeploymentSpec]:
        out = {}
        for n in self.tuned:
            try:
                out[n] = to_spec(self.bases[n], candidate[n], strict=strict)
            except InvalidCandidate as exc:
                raise InvalidCandidate(f"{n}: {exc}") from None
        return out

    def short(self, candidate: dict[str, dict]) -> str:
        return "; ".join(f"{n}: {short_settings(candidate[n])}" for n in self.tuned)

    def settings(self, candidates: dict[str, dict[str, dict]]) -> dict[str, dict[str, DeploymentSpec]]:
        """label -> {every deployment: its effective spec} for labelled candidates."""
        return {label: {n: to_spec(self.bases[n], cand[n], strict=False) if n in cand else self.app.specs[n]
                        for n in self.app.names}
                for label, cand in candidates.items()}

    # -- simulating ----------------------------------------------------------------------
    def simulate(self, problem, validated: dict[str, DeploymentSpec], trace, seed: int):
        from simtune.app.simulate import simulate_app

        return simulate_app(trace, self.app.with_specs(validated), problem.sim_params(seed), seed=seed)

    def views(self, res) -> list[tuple[Optional[str], Any]]:
        return [(n, res.deployments[n]) for n in self.app.names]
