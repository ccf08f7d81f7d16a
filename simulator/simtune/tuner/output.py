"""The YAML `recommend` prints: a comment header with the evidence, then either the
deployment's entry or the user's whole file with that entry replaced (for an
application: with every tuned deployment's entry replaced, all others as they were).

Why the whole entry: a config file's autoscaling_config replaces the code's as a whole
(reference 1.4), so the printed entry carries every tuned field plus every field the
user had set; it is the exact mapping that was simulated. Why round-trip it: the
output is re-parsed with Ray's ServeDeploySchema/DeploymentSchema and re-loaded by
simtune's own parser before it is printed; if the effective config read back differs
from the simulated one, that is a bug and nothing is printed.

A prefill/decode application (ray.serve.llm:build_pd_openai_app, `--pd-engine`) has no
`deployments:` entries for its legs: Ray builds each leg's options from its LLMConfig,
so the tuned settings are written into `args.prefill_config.deployment_config` /
`args.decode_config.deployment_config` (the ingress: `args.ingress_deployment_config`),
unless the user's file already overrides that deployment under `deployments:` (which
Serve applies on top, so it is updated there) or gives the LLMConfig as a file path
(then a `deployments:` override entry is added). The result is re-loaded with
simtune.app.pd.load_pd_app and validated with Ray's ServeDeploySchema.

Comments of the user's file are not kept (PyYAML drops them); keys keep their order.
"""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path
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


# -- prefill/decode applications ------------------------------------------------------------------

PD_ROLE_ARGS = {"prefill": "prefill_config", "decode": "decode_config", "ingress": "ingress_deployment_config"}


def _pd_application(serve_doc: dict, app_name: str) -> dict:
    for app in serve_doc.get("applications") or []:
        if app.get("name", "default") == app_name:
            return app
    raise RuntimeError(f"application {app_name!r} not found in the document")  # pragma: no cover


def _drop_fixed_count(options: dict) -> None:
    """An integer num_replicas next to an autoscaling_config is rejected by Ray."""
    if options is not None and not isinstance(options.get("num_replicas"), str):
        options.pop("num_replicas", None)


def apply_pd_settings(serve_doc: dict, app_name: str, role: str, name: str, updates: dict) -> str:
    """Write `updates` (top-level deployment options) where Ray reads deployment `name`
    (of role prefill / decode / ingress) in `serve_doc`, in place; returns where."""
    app = _pd_application(serve_doc, app_name)
    args = app.setdefault("args", {})
    key = PD_ROLE_ARGS[role]
    if role != "ingress" and isinstance(args.get(key), dict):
        _drop_fixed_count(args[key].get("deployment_config"))
    target, where = None, None
    for k, entry in enumerate(app.get("deployments") or []):
        if entry.get("name") == name:
            target, where = entry, f"deployments[{k}] ({name})"
            break
    if target is None:
        if role == "ingress":
            if not isinstance(args.get(key), dict):
                args[key] = {}
            target, where = args[key], f"args.{key}"
        elif isinstance(args.get(key), dict):
            if not isinstance(args[key].get("deployment_config"), dict):
                args[key]["deployment_config"] = {}
            target, where = args[key]["deployment_config"], f"args.{key}.deployment_config"
        else:  # the LLMConfig is a file: override the built deployment instead
            app.setdefault("deployments", []).append({"name": name})
            target, where = app["deployments"][-1], f"deployments[{len(app['deployments']) - 1}] ({name})"
    _drop_fixed_count(target)
    for k, v in updates.items():
        target[k] = copy.deepcopy(v)
    return where


def pd_document(document: dict, kind: str, app_name: str, writes: dict[str, tuple[str, dict]]) -> dict:
    """The user's document (a Serve config or a RayService) with each tuned deployment's
    settings written where Ray reads them; `writes` = {deployment: (role, {option: value})}."""
    doc = copy.deepcopy(document)
    if kind == "rayservice":
        inner_raw = doc["spec"]["serveConfigV2"]
        inner = yaml.safe_load(inner_raw) if isinstance(inner_raw, str) else inner_raw
    else:
        inner = doc
    for name, (role, updates) in writes.items():
        apply_pd_settings(inner, app_name, role, name, updates)
    if kind == "rayservice" and isinstance(doc["spec"]["serveConfigV2"], str):
        doc["spec"]["serveConfigV2"] = _Literal(dump(inner))
    return doc


def render_pd(document: dict, kind: str, app_name: str, writes: dict[str, tuple[str, dict]]) -> tuple[str, dict]:
    """(YAML body, parsed document) of `pd_document`."""
    doc = pd_document(document, kind, app_name, writes)
    return dump(doc), doc


def serve_part(doc: dict, kind: str) -> dict:
    """The Serve config of a document (a RayService's serveConfigV2, parsed)."""
    if kind != "rayservice":
        return doc
    raw = doc["spec"]["serveConfigV2"]
    return yaml.safe_load(raw) if isinstance(raw, str) else raw


def resolve_llm_config_paths(serve_doc: dict, app_name: str, base_dir: Optional[Path]) -> dict:
    """A copy of `serve_doc` whose LLMConfig file paths (args.prefill_config / decode_config
    given as paths, relative to the user's config folder `base_dir`) are absolute, so the
    parsed document loads the same from anywhere."""
    out = copy.deepcopy(serve_doc)
    if base_dir is None:
        return out
    args = _pd_application(out, app_name).get("args") or {}
    for key in ("prefill_config", "decode_config"):
        v = args.get(key)
        if isinstance(v, str) and not Path(v).is_absolute() and (base_dir / v).exists():
            args[key] = str(base_dir / v)
    return out


def verify_pd(text: str, kind: str, app_name: str, load: Any, tuned: dict[str, tuple[Base, dict]],
              kept: dict[str, dict], base_dir: Optional[Path] = None) -> None:
    """Re-read the printed prefill/decode YAML with Ray's ServeDeploySchema and with
    `load` (a Serve config -> AppSpec: simtune.app.pd.load_pd_app with the same engine
    and KV link); each tuned deployment must read back as simulated, each other one
    with the options it was simulated with (`kept`: {name: options}; the ingress's
    follow decode's, e.g. min_replicas 0). `base_dir`: the user's config folder
    (LLMConfig file paths are relative to it)."""
    from ray.serve.schema import ServeDeploySchema

    inner = serve_part(yaml.safe_load(text), kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ServeDeploySchema(**inner)
    back = load(resolve_llm_config_paths(inner, app_name, base_dir))
    for name, (base, entry) in tuned.items():
        got, want = back.specs[name], to_spec(base, entry, strict=False)
        got_cfg = got.autoscaling.model_dump() if got.autoscaling else None
        want_cfg = want.autoscaling.model_dump() if want.autoscaling else None
        if (got_cfg, got.max_ongoing_requests, got.max_queued_requests) != (
                want_cfg, want.max_ongoing_requests, want.max_queued_requests):
            raise RuntimeError(f"internal error: the printed YAML does not read back as the simulated config "
                               f"(deployment {name})")
    for name, options in kept.items():
        if back.specs[name].deployment_options != options:
            raise RuntimeError(f"internal error: deployment {name} does not read back from the printed YAML as "
                               "it was simulated")


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
    if key in ("mean_replicas", "mean_gpus"):
        return f"{value:.2f}"
    if isinstance(value, float) and value >= 1e8:
        return "none ok"
    return f"{value:.3f}"


INFO_KEYS = ("ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99")  # reported whatever the SLOs (LLM results)


def metrics_table(columns: Sequence[tuple[str, dict[str, Optional[dict]]]], objective, unit: str) -> list[str]:
    """Rows of `part metric` x columns; `columns` = [(label, {"search": agg, "holdout": agg})]."""
    parts = [p for p in ("search", "holdout") if any(c[1].get(p) for c in columns)]
    aggs = [c[1].get(p) for c in columns for p in parts if c[1].get(p)]
    keys = [("cost", f"cost {unit}"), ("mean_replicas", "mean replicas (worst case)")]
    if any((a.get("mean_gpus") or 0) > 0 for a in aggs):
        keys += [("mean_gpus", "mean GPUs (worst case)")]
    keys += [(s.name, f"{s.label} s (SLO {s.bound_s:g})") for s in objective.slos]
    names = {s.name for s in objective.slos}
    keys += [(k, f"{k.split('_')[0].upper()} {k.split('_')[1]} s") for k in INFO_KEYS
             if k not in names and any(k in a for a in aggs)]
    keys += [("error_rate", f"error rate (max {objective.max_error_rate:g})")]
    keys += [(f"attainment_{s.name}", ("" if s.metric == "latency" else f"{s.label.split()[0]} ")
              + f"within {s.bound_s:g} s") for s in objective.slos]
    if len(objective.slos) > 1:
        keys += [("attainment", "within every SLO")]
    keys += [("meets", "meets SLO")]
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


def equal_cost_table(rows: Sequence[tuple[str, Optional[dict]]], objective, markdown: bool = False) -> list[str]:
    """Configs side by side on what a prefill/decode comparison is about: mean GPUs,
    TTFT/TPOT p50 and p99, the share of requests within every SLO, errors, verdict.
    `rows` = [(label, worst-case metrics or None)]."""
    slos = " & ".join(f"{s.label} <= {s.bound_s:g} s" for s in objective.slos)
    head = ["config", "mean GPUs", "TTFT p50 / p99 s", "TPOT p50 / p99 ms", f"within {slos}", "error rate",
            "meets SLO"]

    def pair(agg: dict, key: str, scale: float, fmt: str) -> str:
        a, b = agg.get(f"{key}_p50"), agg.get(f"{key}_p99")
        if a is None or b is None:
            return "-"
        return " / ".join("none ok" if v >= 1e8 else format(v * scale, fmt) for v in (a, b))

    body = []
    for label, agg in rows:
        if agg is None:
            body.append([label] + ["-"] * (len(head) - 1))
            continue
        att = agg.get("attainment", agg.get(f"attainment_{objective.primary.name}"))
        body.append([label, f"{agg.get('mean_gpus', 0.0):.1f}", pair(agg, "ttft", 1.0, ".2f"),
                     pair(agg, "tpot", 1000.0, ".0f"), "-" if att is None else f"{100 * att:.2f}%",
                     f"{agg['error_rate']:.4f}", "yes" if objective.meets(agg) else "NO"])
    if markdown:
        return ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 2) + "---|",
                *("| " + " | ".join(r) + " |" for r in body)]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))  # noqa
    return [fmt(head), *(fmt(r) for r in body)]


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
                      unit: str, roles: Optional[dict[str, str]] = None) -> list[str]:
    """Per deployment of an application, rows of its settings and its share of the
    worst-case metrics x columns. `columns` as for `metrics_table` (each agg holding
    `deployments`); `settings`: label -> {deployment: effective spec}; `roles`:
    deployment -> role shown before its name (prefill/decode)."""
    p = objective.call_latency_key
    parts = [part for part in ("search", "holdout") if any(c[1].get(part) for c in columns)]
    width = max(12, max(len(label) for label, _ in columns))
    lines = [" " * 36 + "".join(f"{label:>{width + 2}}" for label, _ in columns)]
    names = list(next(iter(settings.values())))

    def row(label: str, cells: list[str]) -> str:
        return f"  {label:<34}" + "".join(f"{c:>{width + 2}}" for c in cells)

    gpus = any(spec.num_gpus > 0 for by_name in settings.values() for spec in by_name.values())
    for name in names:
        role = f"{roles[name]}: " if roles and name in roles else ""
        lines.append(f"{role}{name}{' (tuned)' if name in tuned else ' (kept as configured)'}")
        rows = {label: settings_row(settings[label][name]) if name in settings.get(label, {}) else None
                for label, _ in columns}
        for key, text in (("replicas", "replicas (min-max)"), ("target", "target_ongoing_requests"),
                          ("max_ongoing_requests", "max_ongoing_requests")):
            lines.append(row(text, [rows[label][key] if rows[label] else "-" for label, _ in columns]))
        if gpus:
            lines.append(row("GPUs per replica", [f"{settings[label][name].num_gpus:g}"
                                                  if name in settings.get(label, {}) else "-" for label, _ in columns]))
        stats = [("mean_replicas", "mean replicas")] + ([("mean_gpus", "mean GPUs")] if gpus else [])
        stats += [("cost", f"cost {unit}"), (p, f"{p} s of its calls")]
        for part in parts:
            for key, text in stats:
                cells = []
                for _, data in columns:
                    agg = data.get(part)
                    dep = (agg or {}).get("deployments", {}).get(name)
                    cells.append("-" if dep is None else _fmt(key, dep.get(key), unit))
                lines.append(row(f"{part:<8} {text}", cells))
    return lines
