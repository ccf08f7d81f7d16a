"""From field values to a deployment entry that Serve would accept, and back.

A candidate is a deployment entry (the mapping under `applications[].deployments[]`):
the user's own entry with `autoscaling_config` (and any tuned deployment option)
replaced. Why the user's entry as the base: a config file's `autoscaling_config`
REPLACES the code's as a whole (reference 1.4), so the entry we simulate and the one we
print must carry every tuned field plus every field the user had set; building both
from the same function guarantees that what was simulated is what is printed.

Validity is Ray's: `deployment_from_mapping` runs DeploymentSchema, AutoscalingConfig
and DeploymentConfig; on top of that two things Ray only warns about are treated as
invalid, so a recommendation never draws a warning from Ray:
  * look_back_period_s <= metrics_interval_s (a FutureWarning in 2.60: "will raise an
    exception in a future release");
  * max_ongoing_requests < target_ongoing_requests ("Autoscaling will never happen",
    logged by serve/_private/application_state.py for config files).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, Optional

from simtune.errors import InputError
from simtune.serve_config import DeploymentSpec, deployment_from_mapping
from simtune.tuner.space import AUTOSCALING_FIELDS, DEPLOYMENT_FIELDS


@dataclass(frozen=True)
class Base:
    """The deployment being tuned: the user's entry and where it lives."""

    entry: dict
    app_name: str
    source: str
    request_timeout_s: Optional[float]

    @classmethod
    def from_spec(cls, spec: DeploymentSpec) -> "Base":
        return cls(entry=copy.deepcopy(spec.deployment_options), app_name=spec.app_name, source=spec.source,
                   request_timeout_s=spec.request_timeout_s)


class InvalidCandidate(Exception):
    """Ray rejects (or warns about) this combination: the trial is pruned."""


def build_entry(base: Base, values: dict[str, Any]) -> dict:
    """The user's entry with `values` written in (None removes an optional field)."""
    entry = copy.deepcopy(base.entry)
    auto = dict(entry.get("autoscaling_config") or {})
    for name, value in values.items():
        if name in DEPLOYMENT_FIELDS:
            entry[name] = value
        elif name in AUTOSCALING_FIELDS:
            if value is None:
                auto.pop(name, None)
            else:
                auto[name] = value
    entry["autoscaling_config"] = {k: auto[k] for k in _ordered(auto)}
    if not isinstance(entry.get("num_replicas"), str):
        # An integer num_replicas together with autoscaling_config is rejected by Ray.
        entry.pop("num_replicas", None)
    return entry


def _ordered(auto: dict) -> list[str]:
    known = [k for k in AUTOSCALING_FIELDS if k in auto]
    return known + sorted(k for k in auto if k not in AUTOSCALING_FIELDS)


def default_entry(base: Base) -> dict:
    """Ray's defaults for this deployment: `num_replicas: auto` and no autoscaling_config
    (AutoscalingConfig.default()); the user's other options (max_ongoing_requests,
    ray_actor_options, ...) stay, so the comparison is about autoscaling only."""
    entry = copy.deepcopy(base.entry)
    entry.pop("autoscaling_config", None)
    entry["num_replicas"] = "auto"
    return entry


def to_spec(base: Base, entry: dict, *, strict: bool = True) -> DeploymentSpec:
    """Validate `entry` with Ray's classes and build the spec. Raises InvalidCandidate;
    `strict` also rejects the two combinations Ray only warns about (module docstring).
    Baselines (the user's config, Ray's defaults) are simulated as they are: strict=False."""
    try:
        spec = deployment_from_mapping(entry, source=base.source, app_name=base.app_name,
                                       request_timeout_s=base.request_timeout_s)
    except InputError as exc:
        prefix = f"{base.source}: deployment {base.app_name}/{entry.get('name')}: "
        msg = str(exc)
        msg = (msg[len(prefix):] if msg.startswith(prefix) else msg).replace("Value error, ", "")
        raise InvalidCandidate(msg) from None
    cfg = spec.autoscaling
    if not strict or cfg is None:
        return spec
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            type(cfg)(**cfg.model_dump(exclude_unset=True))
        except FutureWarning as w:
            raise InvalidCandidate(f"Ray warns: {w}") from None
    tor = cfg.get_target_ongoing_requests()
    if spec.max_ongoing_requests < tor:
        raise InvalidCandidate(
            f"max_ongoing_requests ({spec.max_ongoing_requests}) < target_ongoing_requests ({tor:g}): "
            "Ray warns 'Autoscaling will never happen'")
    return spec


def effective_values(spec: DeploymentSpec) -> dict[str, Any]:
    """Every searchable field's effective value for a spec (Ray defaults included)."""
    from ray.serve.config import AutoscalingConfig

    cfg = spec.autoscaling if spec.autoscaling is not None else AutoscalingConfig()
    out: dict[str, Any] = {}
    for name in AUTOSCALING_FIELDS:
        value = getattr(cfg, name)
        out[name] = getattr(value, "value", value)
    # Unset fields that fall back on others: their effective values (reference 1.1).
    out["upscaling_factor"] = float(cfg.get_upscaling_factor())
    out["downscaling_factor"] = float(cfg.get_downscaling_factor())
    if out["downscale_to_zero_delay_s"] is None:
        out["downscale_to_zero_delay_s"] = float(cfg.downscale_delay_s)
    if spec.autoscaling is None:
        # Fixed replicas: the closest autoscaling config holds that count.
        out["min_replicas"] = out["max_replicas"] = int(spec.num_replicas)
    out["max_ongoing_requests"] = spec.max_ongoing_requests
    out["max_queued_requests"] = spec.max_queued_requests
    return out
