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

A prefill/decode application (`--pd-engine`, simtune.app.pd) is an application whose
AppSpec comes from load_pd_app instead of a topology file (PDTarget): the same
parameters, candidates and simulations; only where the output writes the settings
differs (each leg's LLMConfig deployment_config, simtune.tuner.output.render_pd) and
how it is read back (load_pd_app). Targets also render and verify their own output:

  render              a candidate -> (the YAML body, its parsed document)
  verify              the YAML reads back (Ray's schemas, simtune's loader) as simulated

Why the candidate of one deployment stays a bare entry: that is what the trials of
existing studies hold (user attr simtune:candidate), and what the report's Pareto
file lists; nothing about a single-deployment run changes.

An application's parameters are the tuned deployments' own spaces side by side, each
field named `DEPLOYMENT.FIELD` (simtune.tuner.space.PrefixedTrial); the deployments
that are not tuned keep the settings of the user's config. Every simulation is of the
whole application (simtune.app.simulate.simulate_app), judged end to end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from simtune.serve_config import DeploymentSpec
from simtune.tuner.candidate import Base, InvalidCandidate, build_entry, to_spec
from simtune.tuner.output import (pd_document, render_entries, render_pd, resolve_llm_config_paths, serve_part,
                                  verify_entries, verify_pd)
from simtune.tuner.space import DEPLOYMENT_FIELDS, Dim, PrefixedTrial, SearchSpace, split_param

STREAMING_KINDS = frozenset({"llm", "streaming"})  # service models whose results carry TTFT/TPOT


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

    # -- output --------------------------------------------------------------------------
    def render(self, candidate: dict) -> tuple[str, dict]:
        return render_entries(self.spec, {self.spec.name: candidate})

    def verify(self, text: str, candidate: dict) -> None:
        verify_entries(text, self.spec, {self.spec.name: (self.base, candidate)})

    # -- simulating ----------------------------------------------------------------------
    def streams(self, service_model) -> bool:
        """Whether the simulations carry TTFT/TPOT (an LLM or streaming service model)."""
        return getattr(service_model, "kind", None) in STREAMING_KINDS

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

    def roles(self) -> Optional[dict[str, str]]:
        """deployment -> the role shown before its name in tables (None: names only)."""
        return None

    # -- output --------------------------------------------------------------------------
    def kept_options(self) -> dict[str, dict]:
        return {n: self.app.specs[n].deployment_options for n in self.kept}

    def render(self, candidate: dict[str, dict]) -> tuple[str, dict]:
        return render_entries(self.spec, self.entries(candidate))

    def verify(self, text: str, candidate: dict[str, dict]) -> None:
        verify_entries(text, self.spec, {n: (self.bases[n], e) for n, e in self.entries(candidate).items()},
                       self.kept_options())

    # -- simulating ----------------------------------------------------------------------
    def streams(self, service_model=None) -> bool:
        """Whether the end-to-end results carry TTFT/TPOT: the topology streams from a
        deployment (streams_from), or the ingress itself runs an LLM/streaming model."""
        topo = self.app.topology
        if topo.streams_from is not None:
            return True
        return getattr(self.app.models.get(topo.ingress), "kind", None) in STREAMING_KINDS

    def simulate(self, problem, validated: dict[str, DeploymentSpec], trace, seed: int):
        from simtune.app.simulate import simulate_app

        return simulate_app(trace, self.app.with_specs(validated), problem.sim_params(seed), seed=seed)

    def views(self, res) -> list[tuple[Optional[str], Any]]:
        return [(n, res.deployments[n]) for n in self.app.names]


@dataclass(frozen=True)
class PDSource:
    """Where a prefill/decode application came from: what load_pd_app was given."""

    config: str  # the Serve config / RayService file
    engine: str  # the LLM engine model file both legs run
    kv_bytes_per_token: float
    kv_bandwidth_gbps: float
    kv_latency_s: float
    roles: dict  # role (ingress / prefill / decode) -> deployment name
    transform: Any  # simtune.app.pd.PDTraceTransform: applied to every trace
    application: Optional[str] = None  # the application's name
    engine_describe: str = ""

    @property
    def kv(self) -> dict[str, float]:
        return {"kv_bytes_per_token": self.kv_bytes_per_token, "kv_bandwidth_gbps": self.kv_bandwidth_gbps,
                "kv_latency_s": self.kv_latency_s}

    def load(self, config: Any):
        """The AppSpec of `config` (a file or a parsed document) with this engine and link."""
        from simtune.app.pd import load_pd_app

        return load_pd_app(config, self.engine, **self.kv, application=self.application)[0]


@dataclass
class PDTarget(AppTarget):
    """A `ray.serve.llm:build_pd_openai_app` application (--pd-engine): the prefill and
    decode deployments (and the ingress if asked) tuned jointly against end-to-end
    SLOs, TTFT/TPOT included. The output writes each tuned leg's settings into its
    LLMConfig's deployment_config (simtune.tuner.output.render_pd)."""

    pd: Optional[PDSource] = None
    # Proposals Ray rejects are drawn again, up to this many times per trial
    # (simtune.tuner.study.Search): two legs' independent ranges make most random
    # combinations hold one invalid pair.
    proposal_attempts = 32

    def describe(self) -> str:
        role = {v: k for k, v in self.pd.roles.items()}
        tuned = ", ".join(f"{role[n]} {n}" for n in self.tuned)
        kept = ", ".join(f"{role[n]} {n}" for n in self.kept)
        return (f"prefill/decode application {self.app.app_name} (tuned: {tuned}"
                + (f"; kept as configured: {kept}" if kept else "") + ")")

    def title(self) -> str:
        return f"prefill/decode application {self.app.app_name}"

    @property
    def stem(self) -> str:
        return f"{self.app.app_name}-pd"

    def roles(self) -> dict[str, str]:
        return {v: k for k, v in self.pd.roles.items()}

    def role_of(self, name: str) -> str:
        return self.roles()[name]

    # -- output --------------------------------------------------------------------------
    def writes(self, candidate: dict[str, dict]) -> dict[str, tuple[str, dict]]:
        """{deployment: (role, the options to write)}: the whole autoscaling_config (a
        config's autoscaling_config replaces Ray's as a whole) and each deployment option
        the search space sets (max_ongoing_requests, max_queued_requests)."""
        out = {}
        for n, entry in self.entries(candidate).items():
            updates = {"autoscaling_config": entry["autoscaling_config"]}
            dims = self.spaces[n].dims if n in self.spaces else {}
            for f in DEPLOYMENT_FIELDS:
                d = dims.get(f)
                if d is not None and d.kind != "exclude" and f in entry:
                    updates[f] = entry[f]
            out[n] = (self.role_of(n), updates)
        return out

    def document(self, candidate: dict[str, dict]) -> dict:
        """The user's document with the candidate written in (what would be deployed)."""
        spec = self.spec
        return pd_document(spec.document, spec.kind, self.app.app_name, self.writes(candidate))

    def render(self, candidate: dict[str, dict]) -> tuple[str, dict]:
        spec = self.spec
        return render_pd(spec.document, spec.kind, self.app.app_name, self.writes(candidate))

    def verify(self, text: str, candidate: dict[str, dict]) -> None:
        derived = self.validate(candidate, strict=False)
        verify_pd(text, self.spec.kind, self.app.app_name, self.pd.load,
                  {n: (self.bases[n], e) for n, e in self.entries(candidate).items()},
                  {n: derived[n].deployment_options for n in self.kept}, Path(self.pd.config).parent)

    # -- candidates ----------------------------------------------------------------------
    def validate(self, candidate: dict[str, dict], strict: bool = True) -> dict[str, DeploymentSpec]:
        """Each tuned entry checked as for any application (Ray's classes, and with `strict`
        what Ray only warns about), then the whole document re-built with the candidate
        written in and re-loaded as Ray would build it: the deployments that were not tuned
        follow (the ingress gets min_replicas 0 when decode's is 0), and what is simulated
        is what the printed YAML deploys. Returns every deployment's spec."""
        from simtune.errors import InputError

        super().validate(candidate, strict=strict)
        serve_doc = serve_part(self.document(candidate), self.spec.kind)
        try:
            app = self.pd.load(resolve_llm_config_paths(serve_doc, self.app.app_name, Path(self.pd.config).parent))
        except InputError as exc:
            raise InvalidCandidate(str(exc)) from None
        return dict(app.specs)

    def settings(self, candidates: dict[str, dict[str, dict]]) -> dict[str, dict[str, DeploymentSpec]]:
        return {label: self.validate(cand, strict=False) for label, cand in candidates.items()}


@dataclass
class FixedAppTarget:
    """An application simulated as configured (no parameters): the co-located baseline
    of a prefill/decode recommendation. `validate` and `simulate` only, for
    simtune.tuner.problem.evaluate."""

    app: Any  # simtune.app.spec.AppSpec
    kind = "application"

    def validate(self, candidate: Any = None, strict: bool = True) -> dict:
        return {}

    def simulate(self, problem, validated: dict, trace, seed: int):
        from simtune.app.simulate import simulate_app

        return simulate_app(trace, self.app, problem.sim_params(seed), seed=seed)

    def views(self, res) -> list[tuple[Optional[str], Any]]:
        return [(n, res.deployments[n]) for n in self.app.names]
