"""The YAML `recommend` prints: a comment header with the evidence, then either the
deployment's entry or the user's whole file with that entry replaced (for an
application: with every tuned deployment's entry replaced, all others as they were).

Why the whole entry: a config file's autoscaling_config replaces the code's as a whole
(reference 1.4), so the printed entry carries every tuned field plus every field the
user had set; it is the exact mapping that was simulated. Why round-trip it: the
output is re-parsed with Ray's ServeDeploySchema/DeploymentSchema and re-loaded by
simtune's own parser before it is printed; if the effective config read back differs
from the simulated one, that is a bug and nothing is printed.

Comments of the user's file are not kept (PyYAML drops them); keys keep their order.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any, Optional, Sequence

import yaml

from simtune.serve_config import DeploymentSpec, load_deployment
from simtune.tuner.candidate import Base, to_spec


class _Literal(str):
    """A multi-line string written as a YAML block (`serveConfigV2: |`)."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Literal, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|"))


def dump(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


def render_document(spec: DeploymentSpec, entry: dict) -> tuple[str, dict]:
    """(YAML body, parsed document): `entry` alone, or the user's document with the
    tuned deployment's entry replaced and everything else preserved."""
    return render_entries(spec, {spec.name: entry})


def render_entries(spec: DeploymentSpec, entries: dict[str, dict]) -> tuple[str, dict]:
    """`render_document` for several deployments of `spec`'s application: the user's
    document with each named deployment's entry replaced (a bare deployment file: the
    one entry alone)."""
    if spec.document is None or spec.kind == "deployment":
        (entry,) = entries.values()
        return dump(entry), entry
    doc = copy.deepcopy(spec.document)
    if spec.kind == "serve_config":
        for name, entry in entries.items():
            _replace(doc, spec.app_name, name, entry)
        return dump(doc), doc
    inner_raw = doc["spec"]["serveConfigV2"]
    inner = yaml.safe_load(inner_raw) if isinstance(inner_raw, str) else copy.deepcopy(inner_raw)
    for name, entry in entries.items():
        _replace(inner, spec.app_name, name, entry)
    doc["spec"]["serveConfigV2"] = _Literal(dump(inner)) if isinstance(inner_raw, str) else inner
    return dump(doc), doc


def _replace(serve_doc: dict, app_name: str, name: str, entry: dict) -> None:
    for app in serve_doc.get("applications") or []:
        if app.get("name", "default") != app_name:
            continue
        for i, dep in enumerate(app.get("deployments") or []):
            if dep.get("name") == name:
                app["deployments"][i] = entry
                return
    raise RuntimeError(f"deployment {app_name}/{name} not found in the document")  # pragma: no cover


def verify(text: str, spec: DeploymentSpec, base: Base, entry: dict) -> None:
    """Re-read the printed YAML with Ray's schemas and simtune's parser; the effective
    settings must equal those that were simulated."""
    verify_entries(text, spec, {spec.name: (base, entry)})


def verify_entries(text: str, spec: DeploymentSpec, tuned: dict[str, tuple[Base, dict]],
                   kept: Optional[dict[str, dict]] = None) -> None:
    """`verify` for several deployments of `spec`'s application: each tuned one reads
    back as simulated, each of `kept` ({name: the user's options}) exactly as it was."""
    from ray.serve.schema import DeploymentSchema, ServeDeploySchema

    doc = yaml.safe_load(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if spec.kind == "rayservice":
            inner = doc["spec"]["serveConfigV2"]
            ServeDeploySchema(**(yaml.safe_load(inner) if isinstance(inner, str) else inner))
        elif spec.kind == "serve_config" and spec.document is not None:
            ServeDeploySchema(**doc)
        else:
            DeploymentSchema(**doc)
    by_name = spec.kind != "deployment" and spec.document is not None

    def read_back(name: str) -> DeploymentSpec:
        return load_deployment(doc, f"{spec.app_name}/{name}" if by_name else None)

    for name, (base, entry) in tuned.items():
        back = read_back(name)
        want = to_spec(base, entry, strict=False)
        got_cfg = back.autoscaling.model_dump() if back.autoscaling else None
        want_cfg = want.autoscaling.model_dump() if want.autoscaling else None
        if (got_cfg, back.max_ongoing_requests, back.max_queued_requests) != (
                want_cfg, want.max_ongoing_requests, want.max_queued_requests):
            raise RuntimeError(f"internal error: the printed YAML does not read back as the simulated config "
                               f"(deployment {name})")
    for name, options in (kept or {}).items():
        if read_back(name).deployment_options != options:
            raise RuntimeError(f"internal error: deployment {name} was not tuned but changed in the printed YAML")


# -- the comment header ------------------------------------------------------------------------


def _fmt(key: str, value: Any, unit: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if key == "cost":
        return f"{value:,.0f}" if unit == "replica-s" else f"{value:,.2f}"
    if key.startswith("attainment"):
        return f"{100 * value:.2f}%"
    if key == "error_rate":
        return f"{value:.4f}"
    if key == "mean_replicas":
        return f"{value:.2f}"
    if isinstance(value, float) and value >= 1e8:
        return "none ok"
    return f"{value:.3f}"


def metrics_table(columns: Sequence[tuple[str, dict[str, Optional[dict]]]], objective, unit: str) -> list[str]:
    """Rows of `part metric` x columns; `columns` = [(label, {"search": agg, "holdout": agg})]."""
    keys = [("cost", f"cost {unit}"), ("mean_replicas", "mean replicas (worst case)")]
    keys += [(s.name, f"{s.name} s (SLO {s.bound_s:g})") for s in objective.slos]
    keys += [("error_rate", f"error rate (max {objective.max_error_rate:g})")]
    keys += [(f"attainment_{objective.primary.name}", f"within {objective.primary.bound_s:g} s")]
    keys += [("meets", "meets SLO")]
    parts = [p for p in ("search", "holdout") if any(c[1].get(p) for c in columns)]
    width = max(len(label) for label, _ in columns)
    width = max(width, 12)
    lines = [" " * 36 + "".join(f"{label:>{width + 2}}" for label, _ in columns)]
    for part in parts:
        for key, label in keys:
            cells = []
            for _, data in columns:
                agg = data.get(part)
                if agg is None:
                    cells.append("-")
                elif key == "meets":
                    cells.append(_fmt(key, objective.meets(agg), unit))
                else:
                    cells.append(_fmt(key, agg.get(key), unit))
            lines.append(f"{part:<8} {label:<27}" + "".join(f"{c:>{width + 2}}" for c in cells))
    return lines


def header(lines: Sequence[str]) -> str:
    return "".join(f"# {line}".rstrip() + "\n" for line in lines)


def finite(x: Optional[float]) -> bool:
    return x is not None and math.isfinite(x)


def settings_row(spec: DeploymentSpec) -> dict[str, str]:
    """A deployment's effective scaling settings, as the per-deployment table shows them."""
    cfg = spec.autoscaling
    if cfg is None:
        replicas, target = f"{spec.num_replicas} fixed", "-"
    else:
        replicas = f"{cfg.min_replicas}-{cfg.max_replicas}"
        target = f"{cfg.get_target_ongoing_requests():g}"
    return {"replicas": replicas, "target": target, "max_ongoing_requests": str(spec.max_ongoing_requests)}


def deployments_table(columns: Sequence[tuple[str, dict[str, Optional[dict]]]],
                      settings: dict[str, dict[str, DeploymentSpec]], tuned: Sequence[str], objective,
                      unit: str) -> list[str]:
    """Per deployment of an application, rows of its settings and its share of the
    worst-case metrics x columns. `columns` as for `metrics_table` (each agg holding
    `deployments`); `settings`: label -> {deployment: effective spec}."""
    p = objective.primary.name
    parts = [part for part in ("search", "holdout") if any(c[1].get(part) for c in columns)]
    width = max(12, max(len(label) for label, _ in columns))
    lines = [" " * 36 + "".join(f"{label:>{width + 2}}" for label, _ in columns)]
    names = list(next(iter(settings.values())))

    def row(label: str, cells: list[str]) -> str:
        return f"  {label:<34}" + "".join(f"{c:>{width + 2}}" for c in cells)

    for name in names:
        lines.append(f"{name}{' (tuned)' if name in tuned else ' (kept as configured)'}")
        rows = {label: settings_row(settings[label][name]) if name in settings.get(label, {}) else None
                for label, _ in columns}
        for key, text in (("replicas", "replicas (min-max)"), ("target", "target_ongoing_requests"),
                          ("max_ongoing_requests", "max_ongoing_requests")):
            lines.append(row(text, [rows[label][key] if rows[label] else "-" for label, _ in columns]))
        for part in parts:
            for key, text in (("mean_replicas", "mean replicas"), ("cost", f"cost {unit}"),
                              (p, f"{p} s of its calls")):
                cells = []
                for _, data in columns:
                    agg = data.get(part)
                    dep = (agg or {}).get("deployments", {}).get(name)
                    cells.append("-" if dep is None else _fmt(key, dep.get(key), unit))
                lines.append(row(f"{part:<8} {text}", cells))
    return lines
