"""An application to simulate: its topology plus every deployment's Serve settings.

The settings come from the same Serve config / RayService file as for one deployment
(simtune.serve_config, validated by Ray's own schema classes); the topology says which
deployment calls which. Every deployment the topology names must be in the config's
application, and vice versa the config's other deployments are reported as unused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from simtune.app.topology import Topology, load_topology
from simtune.errors import InputError
from simtune.serve_config import (
    DeploymentSpec, _serve_config_deployments, _unwrap_rayservice, deployment_from_mapping, detect_kind,
    load_deployment, load_yaml_file,
)

log = logging.getLogger(__name__)


@dataclass
class AppSpec:
    topology: Topology
    specs: dict[str, DeploymentSpec]
    models: dict[str, Any] = field(default_factory=dict)  # name -> ServiceModel (None: fixed)
    app_name: str = "default"
    source: str = "<config>"

    @property
    def names(self) -> list[str]:
        return self.topology.order()

    @property
    def ingress(self) -> DeploymentSpec:
        return self.specs[self.topology.ingress]

    def with_specs(self, specs: dict[str, DeploymentSpec]) -> "AppSpec":
        return AppSpec(self.topology, {**self.specs, **specs}, self.models, self.app_name, self.source)


def _load_models(topo: Topology) -> dict[str, Any]:
    from simtune.service_models import load_service_model, parse_service_model

    out: dict[str, Any] = {}
    for name, node in topo.nodes.items():
        sm = node.service_model
        if sm is None:
            continue
        where = f"{topo.source}: deployments.{name}.service_model"
        out[name] = load_service_model(sm) if isinstance(sm, str) else parse_service_model(sm, where)
    return out


def app_deployment_options(doc: dict, source: str, app_name: Optional[str]) -> tuple[str, dict[str, dict], Any]:
    """(application name, {deployment name: options}, request_timeout_s) of one application."""
    kind = detect_kind(doc)
    if kind == "deployment":
        return "default", {doc.get("name", "default"): doc}, None
    serve_doc = _unwrap_rayservice(doc, source) if kind == "rayservice" else doc
    entries, timeout = _serve_config_deployments(serve_doc, source)
    apps = sorted({a.get("name", "default") for a in serve_doc.get("applications") or []})
    if app_name is None:
        if len(apps) != 1:
            raise InputError(f"{source}: several applications ({', '.join(apps)}); name one in the topology "
                             "(application: NAME)")
        app_name = apps[0]
    elif app_name not in apps:
        raise InputError(f"{source}: no application {app_name!r} (available: {', '.join(apps) or 'none'})")
    return app_name, {d.get("name"): d for a, d in entries if a == app_name}, timeout


def build_app_spec(doc: dict, topo: Topology, source: str = "<config>") -> AppSpec:
    app_name, options, timeout = app_deployment_options(doc, source, topo.application)
    for name, code in topo.code_options.items():  # decorator options, overridden by the config (as Serve does)
        options[name] = {**code, **options.get(name, {})}
    specs: dict[str, DeploymentSpec] = {}
    for name in topo.order():
        if name not in options:
            raise InputError(f"{topo.source}: deployment {name!r} is not in {source} application {app_name!r} "
                             f"(it has: {', '.join(sorted(options)) or 'none'})")
        spec = deployment_from_mapping(options[name], source=source, app_name=app_name, request_timeout_s=timeout)
        spec.document, spec.kind = doc, detect_kind(doc)
        specs[name] = spec
    unused = sorted(set(options) - set(specs))
    if unused:
        log.warning("%s: deployment(s) %s of application %r receive no calls in %s", source, ", ".join(unused),
                    app_name, topo.source)
    return AppSpec(topo, specs, _load_models(topo), app_name, source)


def load_app(config: str | Path | dict, topology: str | Path | Topology | None = None) -> AppSpec:
    """An AppSpec from a Serve config file and a topology YAML (or a Topology).

    Without a topology the config must hold exactly one deployment: an application of one.
    """
    if isinstance(config, dict):
        doc, source = config, "<config>"
    else:
        doc, source = load_yaml_file(config), str(config)
    if topology is None:
        spec = load_deployment(doc)
        topo = Topology.single(spec.name)
        return AppSpec(topo, {spec.name: spec}, {}, spec.app_name, source)
    topo = topology if isinstance(topology, Topology) else load_topology(topology)
    return build_app_spec(doc, topo, source)
