"""The search space of `simtune recommend`: which Serve fields are searched, over what.

Why the replica ranges follow the data: a fixed range is either too small for a
500 req/s service or spends most trials on absurd configs for a 2 req/s one, so
`default_space` scales min/max_replicas with the training traffic's busy slots
(peak 10-s arrival rate x mean service time). The user's current values are always
inside the default ranges, so the search can at least find the current config.

Why three fields are excluded (kept at the user's value) by default:
  * `max_ongoing_requests`: with fixed service times (no --service-model, or a `fixed`
    or `streaming` one) a request's time does not depend on how many requests its
    replica runs at once, so raising it would look like free capacity. With a
    concurrency, batch or LLM service model it has a price and is searched.
  * `max_queued_requests`: load shedding trades errors for latency; open it when some
    rejections are acceptable (`--max-error-rate` then bounds them).
  * `initial_replicas`: it acts only at (re)deploy, i.e. at the recording's first
    seconds, so tuning it fits the trace's start rather than the service.

Impossible combinations (min > max, initial outside [min, max], look_back_period_s <=
metrics_interval_s, which Ray 2.60 warns will become an error) are not avoided by
construction: Ray's own validation rejects them and the trial is pruned
(`simtune.tuner.candidate`).

A space file (`--space space.yaml`) is a mapping from field name to:
    a scalar (or null)          fix the field to that value (null: leave it unset)
    exclude                     do not search it; keep the user's value or Ray's default
    [a, b, c]  / {choices: [..]} search among these values
    {low: 1, high: 8, log: true, step: 1}   search a range (ints for int fields)
    {value: 3}  / {exclude: true}           the long forms of the first two

Application runs (`--topology`) search every tuned deployment's fields at once; the
optuna parameter of field F of deployment D is named `D.F` (e.g.
`Model.target_ongoing_requests`). In their space file a key `D.F` addresses that
deployment only, an unprefixed key `F` every tuned deployment; a `D.F` key wins over
an `F` key whatever their order.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from simtune.errors import InputError

# Search order matters: min_replicas before downscale_to_zero_delay_s (conditional on it).
AUTOSCALING_FIELDS: tuple[str, ...] = (
    "target_ongoing_requests", "min_replicas", "max_replicas", "initial_replicas", "upscale_delay_s",
    "downscale_delay_s", "downscale_to_zero_delay_s", "look_back_period_s", "upscaling_factor",
    "downscaling_factor", "aggregation_function",
)
DEPLOYMENT_FIELDS: tuple[str, ...] = ("max_ongoing_requests", "max_queued_requests")
FIELDS: tuple[str, ...] = AUTOSCALING_FIELDS + DEPLOYMENT_FIELDS
INT_FIELDS = frozenset({"min_replicas", "max_replicas", "initial_replicas", "max_ongoing_requests",
                        "max_queued_requests"})
CATEGORICAL_FIELDS = frozenset({"aggregation_function"})
# Fields whose None means "unset" (Ray then falls back to another field or a default).
OPTIONAL_FIELDS = frozenset({"initial_replicas", "downscale_to_zero_delay_s", "upscaling_factor",
                             "downscaling_factor"})
KINDS = ("int", "float", "categorical", "fixed", "exclude")
# Service models (simtune.service_models) whose latency depends on the requests in flight
# on a replica: with them, max_ongoing_requests has a price and is searched by default.
CONCURRENCY_AWARE = frozenset({"concurrency", "batch", "llm"})


@dataclass(frozen=True)
class Dim:
    """How one field is treated: searched (int/float/categorical), fixed, or excluded."""

    name: str
    kind: str
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: tuple = ()
    value: Any = None

    @property
    def searched(self) -> bool:
        return self.kind in ("int", "float", "categorical")

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "exclude":
            return {"exclude": True}
        if self.kind == "fixed":
            return {"value": self.value}
        if self.kind == "categorical":
            return {"choices": list(self.choices)}
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out

    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return value in self.choices
        if self.kind in ("int", "float"):
            return value is not None and self.low <= value <= self.high
        if self.kind == "fixed":
            return value == self.value
        return True

    def widened(self, value: Any) -> "Dim":
        """This range stretched to include `value` (the user's current setting)."""
        if value is None or self.kind not in ("int", "float"):
            return self
        return replace(self, low=min(self.low, value), high=max(self.high, value))

    def clip(self, value: Any) -> Any:
        """`value` moved into the range (seed trials from configs outside it)."""
        if self.kind in ("int", "float") and value is not None:
            v = min(max(value, self.low), self.high)
            return int(round(v)) if self.kind == "int" else float(v)
        if self.kind == "categorical" and value not in self.choices:
            return self.choices[0]
        return value


@dataclass
class SearchSpace:
    dims: dict[str, Dim] = field(default_factory=dict)
    # Effective min_replicas of the base config, for the downscale-to-zero condition.
    base_min_replicas: int = 1

    def searched(self) -> list[Dim]:
        return [d for d in self.dims.values() if d.searched]

    def to_dict(self) -> dict[str, Any]:
        return {name: self.dims[name].to_dict() for name in FIELDS if name in self.dims}

    def may_scale_to_zero(self) -> bool:
        d = self.dims.get("min_replicas")
        if d is None or d.kind == "exclude":
            return self.base_min_replicas == 0
        if d.kind == "fixed":
            return d.value == 0
        if d.kind == "categorical":
            return 0 in d.choices
        return d.low <= 0

    def suggest(self, trial) -> dict[str, Any]:
        """Ask an optuna trial for every searched field (define-by-run, so the
        downscale-to-zero delay is only asked for when min_replicas came out 0)."""
        out: dict[str, Any] = {}
        for name in FIELDS:
            d = self.dims.get(name)
            if d is None or not d.searched:
                continue
            if name == "downscale_to_zero_delay_s" and self._min_replicas(out) != 0:
                continue
            if d.kind == "int":
                out[name] = trial.suggest_int(name, int(d.low), int(d.high), log=d.log, step=int(d.step or 1))
            elif d.kind == "float":
                out[name] = trial.suggest_float(name, float(d.low), float(d.high), log=d.log, step=d.step)
            else:
                out[name] = trial.suggest_categorical(name, list(d.choices))
        return out

    def _min_replicas(self, params: dict[str, Any]) -> int:
        if "min_replicas" in params:
            return params["min_replicas"]
        d = self.dims.get("min_replicas")
        if d is not None and d.kind == "fixed":
            return d.value
        return self.base_min_replicas

    def values(self, params: dict[str, Any]) -> dict[str, Any]:
        """Field values of one candidate: the searched params (floats rounded to 3
        significant digits, so the YAML stays readable and is exactly what was
        simulated) plus the fixed fields. Excluded fields are absent."""
        out: dict[str, Any] = {}
        for name in FIELDS:
            d = self.dims.get(name)
            if d is None or d.kind == "exclude":
                continue
            if d.kind == "fixed":
                out[name] = d.value
            elif name in params:
                out[name] = _tidy(params[name])
        if "downscale_to_zero_delay_s" in out and self._min_replicas(params) != 0:
            del out["downscale_to_zero_delay_s"]
        return out

    def project(self, current: dict[str, Any]) -> dict[str, Any]:
        """Optuna params for a known config (seed trials): each searched field's value
        from `current`, moved into its range; conditional fields only when active."""
        params: dict[str, Any] = {}
        for name in FIELDS:
            d = self.dims.get(name)
            if d is None or not d.searched:
                continue
            if name == "downscale_to_zero_delay_s" and self._min_replicas(params) != 0:
                continue
            value = current.get(name)
            if value is None:
                value = d.low if d.kind in ("int", "float") else d.choices[0]
            if hasattr(value, "value"):  # enums (aggregation_function)
                value = value.value
            params[name] = d.clip(value)
        return params


def _tidy(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.3g}")
    return value


# -- Ray's validation of single values ---------------------------------------------------


def ray_value_error(name: str, value: Any) -> Optional[str]:
    """Ray's complaint about `name: value` on its own, or None when Ray accepts it."""
    from ray.serve._private.config import DeploymentConfig
    from ray.serve.config import AutoscalingConfig

    if value is None:
        return None if name in OPTIONAL_FIELDS else "null is not allowed"
    if name in INT_FIELDS and (isinstance(value, bool) or not isinstance(value, int)):
        return f"expected an integer, got {value!r}"
    if name not in CATEGORICAL_FIELDS and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return f"expected a number, got {value!r}"
    if name == "aggregation_function" and str(value).lower() not in ("mean", "max", "min"):
        return f"expected mean, max or min, got {value!r}"
    kwargs: dict[str, Any] = {name: value}
    if name == "min_replicas":
        kwargs["max_replicas"] = max(int(value), 1)
    elif name == "initial_replicas":
        kwargs.update(min_replicas=0, max_replicas=max(int(value), 1))
    elif name == "max_replicas":
        kwargs["min_replicas"] = 0
    elif name == "look_back_period_s":
        kwargs["metrics_interval_s"] = min(float(value) / 2, 10.0) if value > 0 else 10.0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if name in DEPLOYMENT_FIELDS:
                DeploymentConfig.from_default(**kwargs)
            else:
                AutoscalingConfig(**kwargs)
    except Exception as exc:  # pydantic.ValidationError / ValueError from Ray's validators
        return _first_error(exc)
    return None


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            msg = str(errors()[0].get("msg", exc))
            return msg.removeprefix("Value error, ")
        except Exception:  # pragma: no cover - defensive
            pass
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# -- defaults ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrafficStats:
    """What the default ranges need from the training traffic."""

    peak_rate_10s: float  # req/s, the busiest 10-s bin over all traces and headrooms
    mean_service_s: float

    @property
    def busy_slots(self) -> float:
        return self.peak_rate_10s * self.mean_service_s


def default_space(stats: TrafficStats, current: dict[str, Any], max_ongoing_requests: int,
                  metrics_interval_s: float, concurrency_aware: bool = False,
                  slots_per_replica: float = 1.0) -> SearchSpace:
    """Ranges that make sense for this traffic; `current` holds the user's effective
    field values (Ray defaults where they set nothing) and is always inside.
    `concurrency_aware`: the service model prices concurrency, so max_ongoing_requests
    is searched too (from a quarter to 4x the current value). `slots_per_replica`: how
    many busy slots one replica absorbs (1: one request per replica; a prefill/decode
    leg's LLM replica runs about its target_ongoing_requests at once), dividing the
    replica ranges' scale."""
    busy = max(stats.busy_slots, 0.0) / max(float(slots_per_replica), 1.0)
    mor_dim = Dim("max_ongoing_requests", "exclude")
    if concurrency_aware:
        mor_dim = Dim("max_ongoing_requests", "int", max(1, max_ongoing_requests // 4),
                      max(16, 4 * max_ongoing_requests), log=True)
        max_ongoing_requests = int(mor_dim.high)
    min_hi = max(2, math.ceil(busy))
    max_hi = max(8, math.ceil(4 * busy), min_hi)
    dims = {
        "target_ongoing_requests": Dim("target_ongoing_requests", "float", 0.5,
                                       float(max(1.0, max_ongoing_requests)), log=True),
        "min_replicas": Dim("min_replicas", "int", 0, min_hi),
        "max_replicas": Dim("max_replicas", "int", 1, max_hi, log=True),
        "initial_replicas": Dim("initial_replicas", "exclude"),
        "upscale_delay_s": Dim("upscale_delay_s", "float", 0.0, 120.0),
        "downscale_delay_s": Dim("downscale_delay_s", "float", 0.0, 1200.0),
        "downscale_to_zero_delay_s": Dim("downscale_to_zero_delay_s", "float", 0.0, 1200.0),
        "look_back_period_s": Dim("look_back_period_s", "float", max(5.0, metrics_interval_s + 1.0),
                                  max(120.0, metrics_interval_s + 10.0), log=True),
        "upscaling_factor": Dim("upscaling_factor", "float", 0.5, 3.0, log=True),
        "downscaling_factor": Dim("downscaling_factor", "float", 0.1, 2.0, log=True),
        "aggregation_function": Dim("aggregation_function", "categorical", choices=("mean", "max", "min")),
        "max_ongoing_requests": mor_dim,
        "max_queued_requests": Dim("max_queued_requests", "exclude"),
    }
    for name, d in dims.items():
        value = current.get(name)
        if name == "max_replicas" and value is not None and value > 4 * max_hi:
            continue  # e.g. num_replicas: auto's 100 on a 1-replica service: not worth the range
        if name == "look_back_period_s":
            continue  # its low bound is Ray's validity limit
        dims[name] = d.widened(value)
    return SearchSpace(dims=dims, base_min_replicas=int(current.get("min_replicas") or 0))


# -- space files ---------------------------------------------------------------------------


def _read_space_file(path: Path) -> Optional[dict]:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise InputError(f"{path}:{line} invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if doc is not None and not isinstance(doc, dict):
        raise InputError(f"{path}: expected a mapping from field name to a value, range or choices")
    return doc


def apply_space_file(space: SearchSpace, path: str | Path) -> SearchSpace:
    """`space` with the fields named in a space file replaced (see the module docstring).

    Every error names the file and the field."""
    path = Path(path)
    doc = _read_space_file(path)
    if doc is None:
        return space
    dims = dict(space.dims)
    for name, spec in doc.items():
        where = f"{path}: field {name!r}"
        if name not in FIELDS:
            raise InputError(f"{where}: unknown field (known: {', '.join(FIELDS)})")
        dims[name] = parse_dim(name, spec, where)
    return SearchSpace(dims=dims, base_min_replicas=space.base_min_replicas)


def apply_app_space_file(spaces: dict[str, SearchSpace], path: str | Path,
                         deployments: Sequence[str] = ()) -> dict[str, SearchSpace]:
    """The tuned deployments' spaces (`spaces`, by deployment name) with a space file's
    entries applied: `D.F` to deployment D, `F` to every one (module docstring).
    `deployments`: every deployment of the application, for a clearer error when a key
    names one that is not tuned."""
    path = Path(path)
    doc = _read_space_file(path)
    if doc is None:
        return dict(spaces)
    common: dict[str, Dim] = {}
    own: dict[str, dict[str, Dim]] = {name: {} for name in spaces}
    for key, spec in doc.items():
        where = f"{path}: field {key!r}"
        key_s = str(key)
        dep, _, name = key_s.rpartition(".") if "." in key_s else ("", "", key_s)
        if name not in FIELDS:
            example = f"{next(iter(spaces), 'Model')}.{FIELDS[0]}"
            raise InputError(f"{where}: unknown field {name!r} (known: {', '.join(FIELDS)}; prefix one with a "
                             f"deployment name, e.g. {example}, for that deployment only)")
        if dep and dep not in spaces:
            if dep in deployments:
                raise InputError(f"{where}: deployment {dep!r} is not tuned (tuned: {', '.join(spaces)}; "
                                 "name it in --tune)")
            raise InputError(f"{where}: no deployment {dep!r} in the application (tuned: {', '.join(spaces)})")
        dim = parse_dim(name, spec, where)
        if dep:
            own[dep][name] = dim
        else:
            common[name] = dim
    out = {}
    for dep, space in spaces.items():
        dims = {**space.dims, **common, **own[dep]}
        out[dep] = SearchSpace(dims=dims, base_min_replicas=space.base_min_replicas)
    return out


class PrefixedTrial:
    """An optuna trial (or FixedTrial) seen through one deployment's parameter prefix:
    `suggest_int("min_replicas", ...)` asks the trial for `"<prefix>.min_replicas"`."""

    def __init__(self, trial, prefix: str) -> None:
        self.trial = trial
        self.prefix = prefix

    def suggest_int(self, name: str, *args, **kwargs):
        return self.trial.suggest_int(f"{self.prefix}.{name}", *args, **kwargs)

    def suggest_float(self, name: str, *args, **kwargs):
        return self.trial.suggest_float(f"{self.prefix}.{name}", *args, **kwargs)

    def suggest_categorical(self, name: str, *args, **kwargs):
        return self.trial.suggest_categorical(f"{self.prefix}.{name}", *args, **kwargs)


def split_param(key: str) -> tuple[str, str]:
    """`"Model.min_replicas"` -> `("Model", "min_replicas")` (deployment names may hold dots)."""
    dep, _, name = key.rpartition(".")
    return dep, name


def parse_dim(name: str, spec: Any, where: str) -> Dim:
    """One field's entry of a space file, checked with Ray's own field validation."""
    if isinstance(spec, str) and spec.strip().lower() == "exclude":
        return Dim(name, "exclude")
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        _check(name, spec, where, "value")
        return Dim(name, "fixed", value=_canon(name, spec))
    keys = set(spec)
    allowed = [{"exclude"}, {"value"}, {"choices"}]
    if keys in allowed:
        if "exclude" in keys:
            if spec["exclude"] is not True:
                raise InputError(f"{where}: exclude must be true")
            return Dim(name, "exclude")
        if "value" in keys:
            _check(name, spec["value"], where, "value")
            return Dim(name, "fixed", value=_canon(name, spec["value"]))
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise InputError(f"{where}: choices must be a non-empty list")
        for c in choices:
            _check(name, c, where, "choice")
        canon = tuple(dict.fromkeys(_canon(name, c) for c in choices))
        if len(canon) == 1:
            return Dim(name, "fixed", value=canon[0])
        return Dim(name, "categorical", choices=canon)
    unknown = keys - {"low", "high", "log", "step"}
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                         "(expected low/high/log/step, choices, value or exclude)")
    if name in CATEGORICAL_FIELDS:
        raise InputError(f"{where}: not numeric; give choices, e.g. [mean, max]")
    if "low" not in keys or "high" not in keys:
        raise InputError(f"{where}: a range needs both low and high")
    low, high = spec["low"], spec["high"]
    _check(name, low, where, "low")
    _check(name, high, where, "high")
    if low is None or high is None:
        raise InputError(f"{where}: low and high must be numbers")
    if low > high:
        raise InputError(f"{where}: low ({low}) is greater than high ({high})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise InputError(f"{where}: log must be true or false")
    step = spec.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise InputError(f"{where}: step must be a positive number")
    if log and low <= 0:
        raise InputError(f"{where}: a log range needs low > 0")
    if log and step is not None and name not in INT_FIELDS:
        raise InputError(f"{where}: log and step cannot be combined for a float field")
    if name in INT_FIELDS and step is not None and not isinstance(step, int):
        raise InputError(f"{where}: step must be an integer for an integer field")
    if low == high:
        return Dim(name, "fixed", value=low)
    kind = "int" if name in INT_FIELDS else "float"
    return Dim(name, kind, low=low if kind == "int" else float(low), high=high if kind == "int" else float(high),
               log=log, step=step)


def _check(name: str, value: Any, where: str, what: str) -> None:
    err = ray_value_error(name, value)
    if err is not None:
        raise InputError(f"{where}: {what} {value!r} rejected by Ray: {err}")


def _canon(name: str, value: Any) -> Any:
    if name == "aggregation_function" and value is not None:
        return str(value).lower()
    if name not in INT_FIELDS and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
