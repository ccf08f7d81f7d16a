"""Reading a deployment's Serve settings from the files operators already have.

Accepted inputs (YAML or JSON):
  * a Serve config file (ServeConfigV2, what `serve deploy` takes): `applications[].deployments[]`;
  * a KubeRay RayService manifest: its `spec.serveConfigV2` string is parsed as above;
  * a bare deployment mapping: `name`, `num_replicas`, `max_ongoing_requests`, ...

Validation and defaults are Ray's own (`ray.serve.schema.ServeDeploySchema`,
`DeploymentSchema`, `ray.serve.config.AutoscalingConfig`,
`ray.serve._private.config.DeploymentConfig`), so error messages, defaults, `"auto"`
and deprecated fields behave exactly as in Ray. The `num_replicas: auto` expansion
mirrors serve/_private/application_state.py:override_deployment_info: the full dump of
`AutoscalingConfig.default()` updated with the file's `autoscaling_config`. The stand-in
code that simtune models sets no options of its own, so the file's values override
Ray's defaults one top-level option at a time (section 1.4 of the reference).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from simtune.errors import InputError


@dataclass
class DeploymentSpec:
    """One deployment's effective settings, plus where they came from.

    `autoscaling` is Ray's `AutoscalingConfig` (None for a fixed replica count).
    `document` is the parsed input document and `locator` says where the deployment
    entry lives in it, so the tuner can write the user's file back with only this
    deployment's settings replaced.
    """

    name: str
    app_name: str
    num_replicas: int
    max_ongoing_requests: int
    max_queued_requests: int
    graceful_shutdown_wait_loop_s: float
    graceful_shutdown_timeout_s: float
    autoscaling: Any = None  # ray.serve.config.AutoscalingConfig | None
    request_timeout_s: Optional[float] = None
    ray_actor_options: dict = field(default_factory=dict)
    # (initial_backoff_s, backoff_multiplier, max_backoff_s) from request_router_config
    # (2.60: RequestRouterConfig, whose defaults are the RAY_SERVE_ROUTER_RETRY_* env vars).
    router_backoff: Optional[tuple[float, float, float]] = None
    deployment_options: dict = field(default_factory=dict)
    document: Any = None
    kind: str = "deployment"  # "serve_config" | "rayservice" | "deployment"
    source: str = "<memory>"

    @property
    def autoscaling_enabled(self) -> bool:
        return self.autoscaling is not None

    @property
    def num_gpus(self) -> float:
        """GPUs one replica reserves: its placement-group bundles' GPUs when it has bundles
        (an LLM replica's engine workers hold them), else ray_actor_options.num_gpus."""
        bundles = (self.deployment_options or {}).get("placement_group_bundles") or []
        if bundles:
            return float(sum(float((b or {}).get("GPU", 0) or 0) for b in bundles))
        return float(self.ray_actor_options.get("num_gpus") or 0.0)

    def with_options(self, **options: Any) -> "DeploymentSpec":
        """A copy with deployment options replaced (validated by Ray again).

        `autoscaling_config` replaces the whole autoscaling config, as a Serve config
        file does; pass a dict of AutoscalingConfig fields.
        """
        merged = dict(self.deployment_options)
        merged.update(options)
        merged["name"] = self.name
        spec = deployment_from_mapping(merged, source=self.source, app_name=self.app_name,
                                       request_timeout_s=self.request_timeout_s)
        spec.document, spec.kind = self.document, self.kind
        return spec


def _format_validation_error(exc: Exception, where: str) -> InputError:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            loc = ".".join(str(p) for p in first.get("loc", ()) if p != "__root__")
            msg = first.get("msg", str(exc))
            return InputError(f"{where}: {loc + ': ' if loc else ''}{msg}")
        except Exception:  # pragma: no cover - defensive: fall through to str(exc)
            pass
    text = str(exc).strip().splitlines()
    return InputError(f"{where}: {text[0] if text else type(exc).__name__}")


def load_yaml_file(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file (expected YAML or JSON)") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise InputError(f"{path}:{line} invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: expected a mapping (Serve config, RayService or deployment), got {type(doc).__name__}")
    return doc


def deployment_from_mapping(
    options: dict,
    *,
    source: str = "<memory>",
    app_name: str = "default",
    request_timeout_s: Optional[float] = None,
) -> DeploymentSpec:
    """Build a DeploymentSpec from one deployment entry, validated by Ray's classes.

    Cached on the entry's content: Ray's DeploymentConfig.from_default costs ~20 ms (it
    pickles the router class), and the tuner validates hundreds of candidates.
    """
    try:
        key = json.dumps(options, sort_keys=True)
    except (TypeError, ValueError):
        return _build_deployment(options, source=source, app_name=app_name, request_timeout_s=request_timeout_s)
    spec = _cached_deployment(key, source, app_name, request_timeout_s)
    return dataclasses.replace(spec, deployment_options=copy.deepcopy(spec.deployment_options))


@functools.lru_cache(maxsize=4096)
def _cached_deployment(key: str, source: str, app_name: str, request_timeout_s: Optional[float]) -> DeploymentSpec:
    return _build_deployment(json.loads(key), source=source, app_name=app_name, request_timeout_s=request_timeout_s)


def _build_deployment(
    options: dict,
    *,
    source: str,
    app_name: str,
    request_timeout_s: Optional[float],
) -> DeploymentSpec:
    from ray.serve._private.config import DeploymentConfig
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import DeploymentSchema

    name = options.get("name", "<unnamed>")
    where = f"{source}: deployment {app_name}/{name}" if app_name else f"{source}: deployment {name}"
    opts = copy.deepcopy(options)
    if "name" not in opts:
        raise InputError(f"{source}: deployment entry has no 'name' field")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            schema = DeploymentSchema(**opts)
        except Exception as exc:  # pydantic.ValidationError or ValueError from Ray
            raise _format_validation_error(exc, where) from None
        set_fields = schema.model_dump(exclude_unset=True)
        set_fields.pop("name", None)
        auto_cfg: Optional[AutoscalingConfig] = None
        num_replicas_field = set_fields.get("num_replicas")
        try:
            if num_replicas_field == "auto":
                merged = AutoscalingConfig.default().model_dump()
                if set_fields.get("autoscaling_config"):
                    merged.update(set_fields["autoscaling_config"])
                auto_cfg = AutoscalingConfig(**merged)
            elif set_fields.get("autoscaling_config") is not None:
                auto_cfg = AutoscalingConfig(**set_fields["autoscaling_config"])
        except Exception as exc:
            raise _format_validation_error(exc, f"{where}: autoscaling_config") from None
        dc_kwargs = {
            k: set_fields[k]
            for k in (
                "max_ongoing_requests",
                "max_queued_requests",
                "graceful_shutdown_wait_loop_s",
                "graceful_shutdown_timeout_s",
                "health_check_period_s",
                "health_check_timeout_s",
            )
            if k in set_fields
        }
        if isinstance(num_replicas_field, int):
            dc_kwargs["num_replicas"] = num_replicas_field
        router_backoff = None
        if set_fields.get("request_router_config") is not None:
            try:
                from ray.serve.config import RequestRouterConfig

                rrc = RequestRouterConfig(**set_fields["request_router_config"])
            except Exception as exc:
                raise _format_validation_error(exc, f"{where}: request_router_config") from None
            router_backoff = (float(rrc.initial_backoff_s), float(rrc.backoff_multiplier), float(rrc.max_backoff_s))
            router_class = getattr(rrc, "request_router_class", None)
            default_class = RequestRouterConfig().request_router_class
            if router_class is not None and str(router_class) != str(default_class):
                import logging

                logging.getLogger(__name__).warning(
                    "%s: custom request_router_class %s is modelled as the default power-of-two router", where,
                    router_class)
        try:
            dc = DeploymentConfig.from_default(**dc_kwargs)
            if auto_cfg is not None:
                dc.autoscaling_config = auto_cfg
        except Exception as exc:
            raise _format_validation_error(exc, where) from None
    return DeploymentSpec(
        name=name,
        app_name=app_name,
        num_replicas=int(dc.num_replicas) if dc.num_replicas is not None else 1,
        max_ongoing_requests=int(dc.max_ongoing_requests),
        max_queued_requests=int(dc.max_queued_requests),
        graceful_shutdown_wait_loop_s=float(dc.graceful_shutdown_wait_loop_s),
        graceful_shutdown_timeout_s=float(dc.graceful_shutdown_timeout_s),
        autoscaling=auto_cfg,
        request_timeout_s=request_timeout_s,
        ray_actor_options=dict(set_fields.get("ray_actor_options") or {}),
        router_backoff=router_backoff,
        deployment_options=opts,
        source=source,
    )


def _serve_config_deployments(doc: dict, source: str) -> tuple[list[tuple[str, dict]], Optional[float]]:
    from ray.serve.schema import ServeDeploySchema

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ServeDeploySchema(**doc)
        except Exception as exc:
            raise _format_validation_error(exc, source) from None
    timeout = (doc.get("http_options") or {}).get("request_timeout_s")
    entries = []
    for app in doc.get("applications") or []:
        app_name = app.get("name", "default")
        for dep in app.get("deployments") or []:
            entries.append((app_name, dep))
    return entries, timeout


def list_deployments(doc: dict) -> list[str]:
    return [f"{a}/{d.get('name')}" for a, d in _serve_config_deployments(doc, "<doc>")[0]]


def _unwrap_rayservice(doc: dict, source: str) -> dict:
    spec = doc.get("spec") or {}
    inner = spec.get("serveConfigV2")
    if inner is None:
        raise InputError(f"{source}: RayService manifest has no spec.serveConfigV2")
    if isinstance(inner, str):
        try:
            inner = yaml.safe_load(inner)
        except yaml.YAMLError as exc:
            raise InputError(f"{source}: spec.serveConfigV2 is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(inner, dict):
        raise InputError(f"{source}: spec.serveConfigV2 must be a mapping")
    return inner


def detect_kind(doc: dict) -> str:
    if doc.get("kind") == "RayService" or "serveConfigV2" in (doc.get("spec") or {}):
        return "rayservice"
    if "applications" in doc:
        return "serve_config"
    return "deployment"


def load_deployment(path: str | Path | dict, deployment: Optional[str] = None) -> DeploymentSpec:
    """Load one deployment's settings from a file (or an already-parsed mapping).

    `deployment` is `APP/NAME` or `NAME`; required when the file has several deployments.
    """
    if isinstance(path, dict):
        doc, source = path, "<config>"
    else:
        doc, source = load_yaml_file(path), str(path)
    kind = detect_kind(doc)
    if kind == "deployment":
        if deployment and doc.get("name") and deployment.split("/")[-1] != doc.get("name"):
            raise InputError(f"{source}: unknown deployment {deployment!r} (the file defines {doc.get('name')!r})")
        spec = deployment_from_mapping(doc, source=source, app_name="default")
        spec.document, spec.kind = doc, kind
        return spec
    serve_doc = _unwrap_rayservice(doc, source) if kind == "rayservice" else doc
    entries, timeout = _serve_config_deployments(serve_doc, source)
    if not entries:
        raise InputError(f"{source}: no deployments listed under applications[].deployments")
    names = [f"{a}/{d.get('name')}" for a, d in entries]
    if deployment is None:
        if len(entries) > 1:
            raise InputError(f"{source}: several deployments ({', '.join(names)}); choose one with --deployment APP/NAME")
        chosen = entries[0]
    else:
        if "/" in deployment:
            matches = [e for e, n in zip(entries, names) if n == deployment]
        else:
            matches = [e for e in entries if e[1].get("name") == deployment]
        if not matches:
            raise InputError(f"{source}: unknown deployment {deployment!r} (available: {', '.join(names)})")
        if len(matches) > 1:
            raise InputError(f"{source}: deployment name {deployment!r} is ambiguous; use APP/NAME ({', '.join(names)})")
        chosen = matches[0]
    app_name, dep = chosen
    spec = deployment_from_mapping(dep, source=source, app_name=app_name, request_timeout_s=timeout)
    spec.document, spec.kind = doc, kind
    return spec


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)
