"""Prefill/decode disaggregation: `ray.serve.llm:build_pd_openai_app` applications.

    app, prepare = load_pd_app("traces/pd_serve.yaml", "traces/pd_engine.yaml",
                               kv_bytes_per_token=327_680, kv_bandwidth_gbps=400)
    result = simulate_app(prepare(trace), app)       # TTFT/TPOT end to end, per request
    base = colocated_app("traces/pd_serve.yaml", "traces/pd_engine.yaml",
                         deployment_config={"num_replicas": 4})
    result0 = simulate_app(trace, base)

What Ray builds (Ray 2.60, read from the installed package):
  * ray/llm/_internal/serve/serving_patterns/prefill_decode/builder.py
    `PDServingArgs` (prefill_config, decode_config: LLMConfig or mapping or YAML path;
    ingress_cls_config; ingress_deployment_config) and its validators: equal model ids
    (`ValueError("P/D model id mismatch")`), LoRA on both legs or neither and with the
    same dynamic_lora_loading_path, and `engine_kwargs.kv_transfer_config` set on both
    ("kv_transfer_config is required for P/D disaggregation"). `build_pd_openai_app`
    builds three deployments: `Prefill:<name>` (PDPrefillServer), `Decode:<name>`
    (PDDecodeServer, bound to the prefill handle) and the ingress `OpenAiIngress`, bound
    to decode only. With `RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING=1` decode is itself the
    ingress (not modelled here).
  * ray/llm/_internal/serve/core/server/builder.py `build_llm_deployment`: the options are
    `LLMServer.get_deployment_options(llm_config)` (core/server/llm_server.py: a copy of
    `LLMConfig.deployment_config` plus placement_group_bundles = the engine's bundles,
    one {GPU: 1, accelerator_type:X: 0.001} per tensor x pipeline parallel rank, the
    first merged with the replica actor's {CPU: 1}), the name `deployment_config.name`
    or the model id with "/" -> "--" and "." -> "_", prefixed "Prefill:" / "Decode:",
    then `maybe_apply_llm_deployment_config_defaults(DEFAULT_DEPLOYMENT_OPTIONS, ...)`
    (common/dict_utils.py): max_ongoing_requests 1e9, health checks 10 s and
    autoscaling_config.target_ongoing_requests 1e9 (RAY_SERVE_LLM_DEFAULT_* in
    serve/constants.py), deep-merged under the user's values; a user `num_replicas`
    drops the default autoscaling_config. So an LLMConfig whose autoscaling_config
    omits target_ongoing_requests never scales above min_replicas: simtune reproduces it.
  * core/ingress/ingress.py `OpenAiIngress.get_deployment_options([decode_config])`:
    DEFAULT_INGRESS_OPTIONS (max_ongoing_requests 1e9, target_ongoing_requests 1e9;
    min_replicas 0 when decode's is 0), merged with `ingress_deployment_config`.
  * pd_server.py `PDOrchestratorMixin._pd_handle_request`: the prefill request is the
    client's request clamped to one non-streaming token (kv_transfer/base.py
    `clamp_request_to_single_token`); with NixlConnector (sequential handoff) decode
    waits for prefill's response, then runs the request on its own engine with the
    returned kv_transfer_params and streams the tokens.
  * Ray's docs (doc/source/serve/doc_code/pd_dissagregation/nixl_example.yaml) show the
    Serve config form: `applications[].args.prefill_config / decode_config` and
    `import_path: ray.serve.llm:build_pd_openai_app`.

Ray's `PDServingArgs` cannot be imported without vLLM (builder.py imports the OpenAI
protocol models), so its rules are re-checked here; each LLMConfig *is* validated by
Ray's own `LLMConfig` class, which imports without vLLM.

How it is simulated (topology, simtune.app):

    OpenAiIngress (own time 0) --> Decode:<name> --> Prefill:<name>
    streams_from: Decode:<name>

  As in Ray 2.60 (pd_server.py): the ingress calls decode only; the decode replica takes
  the request (its slot and its autoscaling count from then on), calls prefill with
  max_tokens=1 and awaits it, then runs the request on its own engine
  (`model_after_calls: true`).

  * Prefill:<name> runs the engine model on the prompt and produces ONE token (column
    `pd_prefill_output_tokens`, all ones, added by the returned trace transform).
  * Decode:<name> runs the engine with prefill compute replaced by one decode step: the
    prompt's KV arrives by transfer and the first decode step produces the first token
    (prefill base = the decode step of one sequence, per-token cost = the decode context
    cost per token, no quadratic term, no token budget). Before the engine sees the
    request the replica waits for the KV transfer (`service_time: column:pd_kv_transfer_s`,
    slot held): kv_latency_s + input_tokens x kv_bytes_per_token / (Gbit/s x 1e9 / 8).
  * TTFT end to end = arrival -> first token of the decode call = prefill (queue + step)
    + transfer + decode queue + first decode step; TPOT is the decode call's.

Known differences from Ray 2.60 (see the report notes):
  * In Ray 2.60 the decode replica is the orchestrator: the ingress routes to a decode
    replica, which then awaits prefill while *holding its decode slot*; its ongoing
    requests (the autoscaling signal) include requests still in prefill. Here the
    ingress orchestrates, so decode's slot and metric start at the handoff. Exact
    modelling needs an engine that runs *after* the downstream calls (kernel change).
  * The transfer is not overlapped with prefill (layer-wise push), the prefill side's
    KV blocks are freed at once, and prefix caching (Mooncake's hash_ids) is ignored.
  * MoRIIO WRITE mode (concurrent handoff) and data-parallel (DP > 1) deployments are
    simulated as the sequential, per-replica case (a warning is logged).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from contextlib import contextmanager
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np

from simtune.app.spec import AppSpec
from simtune.app.topology import Call, Node, Topology, check_graph
from simtune.errors import InputError
from simtune.serve_config import (
    DeploymentSpec, _format_validation_error, _serve_config_deployments, _unwrap_rayservice,
    deployment_from_mapping, detect_kind, load_yaml_file,
)
from simtune.trace.model import Trace

log = logging.getLogger(__name__)

PD_BUILDER = "build_pd_openai_app"
OPENAI_BUILDER = "build_openai_app"
PREFILL_OUTPUT_COLUMN = "pd_prefill_output_tokens"
KV_TRANSFER_COLUMN = "pd_kv_transfer_s"
DEFAULT_INGRESS = "OpenAiIngress"
PD_ARGS = ("prefill_config", "decode_config", "ingress_cls_config", "ingress_deployment_config")

# ray/llm/_internal/serve/constants.py (RAY_SERVE_LLM_DEFAULT_* env vars), read at call time.


def _llm_constants() -> dict:
    from ray.llm._internal.serve import constants as C

    return {"max_ongoing": C.DEFAULT_MAX_ONGOING_REQUESTS, "target": C.DEFAULT_MAX_TARGET_ONGOING_REQUESTS,
            "hc_period": C.DEFAULT_HEALTH_CHECK_PERIOD_S, "hc_timeout": C.DEFAULT_HEALTH_CHECK_TIMEOUT_S}


def _default_deployment_options() -> dict:
    """core/server/builder.py DEFAULT_DEPLOYMENT_OPTIONS (not importable without vLLM)."""
    c = _llm_constants()
    return {"max_ongoing_requests": c["max_ongoing"], "health_check_period_s": c["hc_period"],
            "health_check_timeout_s": c["hc_timeout"], "autoscaling_config": {"target_ongoing_requests": c["target"]}}


def _default_ingress_options() -> dict:
    """core/ingress/ingress.py DEFAULT_INGRESS_OPTIONS."""
    c = _llm_constants()
    return {"max_ongoing_requests": c["max_ongoing"], "autoscaling_config": {"target_ongoing_requests": c["target"]}}


def _apply_llm_defaults(defaults: dict, user: Optional[dict]) -> dict:
    from ray.llm._internal.common.dict_utils import maybe_apply_llm_deployment_config_defaults

    return maybe_apply_llm_deployment_config_defaults(copy.deepcopy(defaults), copy.deepcopy(user or {}))


@contextmanager
def root_logging_kept():
    """Importing ray.llm (load_pd_app does, to validate each LLMConfig) reconfigures the
    root logger: INFO level and a JSON formatter on its handlers. Keep the logging as it
    was (the CLI's, or a worker's)."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    state = [(h, h.formatter, list(h.filters)) for h in handlers]
    try:
        yield
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers
        for h, formatter, filters in state:
            h.setFormatter(formatter)
            h.filters[:] = filters


def _llm_config_class() -> Any:
    # Importing ray.llm logs "Could not import torch/transformers" warnings: not ours to show.
    quiet = logging.getLogger("ray.llm._internal.common.utils.import_utils")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        from ray.llm._internal.serve.core.configs.llm_config import LLMConfig
    finally:
        quiet.setLevel(level)
    return LLMConfig


# ----------------------------------------------------------------------------- inputs


def _read_doc(config: Union[str, Path, dict]) -> tuple[dict, str, Path]:
    if isinstance(config, dict):
        return config, "<config>", Path(".")
    path = Path(config)
    return load_yaml_file(path), str(path), path.parent


def _serve_doc(doc: dict, source: str) -> tuple[dict, Optional[float]]:
    kind = detect_kind(doc)
    if kind == "deployment":
        raise InputError(f"{source}: expected a Serve config (applications: [...]) or a RayService manifest "
                         f"with an application whose import_path is ray.serve.llm:{PD_BUILDER}")
    serve_doc = _unwrap_rayservice(doc, source) if kind == "rayservice" else doc
    _, timeout = _serve_config_deployments(serve_doc, source)  # Ray's ServeDeploySchema validates the file
    return serve_doc, timeout


def _builder_of(app: dict) -> str:
    ip = str(app.get("import_path") or "")
    return ip.replace(":", ".").rsplit(".", 1)[-1]


def _find_application(serve_doc: dict, source: str, builders: tuple[str, ...], application: Optional[str]
                      ) -> tuple[int, dict]:
    apps = serve_doc.get("applications") or []
    listing = ", ".join(f"{a.get('name', 'default')} ({a.get('import_path')})" for a in apps) or "none"
    wanted = " or ".join(f"ray.serve.llm:{b}" for b in builders)
    if application is not None:
        for i, a in enumerate(apps):
            if a.get("name", "default") == application:
                if _builder_of(a) not in builders:
                    raise InputError(f"{source}: applications[{i}] ({application}).import_path is "
                                     f"{a.get('import_path')!r}, not {wanted}")
                return i, a
        raise InputError(f"{source}: no application {application!r} (applications: {listing})")
    found = [(i, a) for i, a in enumerate(apps) if _builder_of(a) in builders]
    if not found:
        raise InputError(f"{source}: no application with import_path {wanted} (applications: {listing})")
    if len(found) > 1:
        names = ", ".join(a.get("name", "default") for _, a in found)
        raise InputError(f"{source}: several applications with import_path {wanted} ({names}); name one "
                         "(application=NAME)")
    return found[0]


def _llm_config(value: Any, where: str, base: Path) -> Any:
    """Ray's LLMConfig from a mapping, an LLMConfig or a YAML path (as PDServingArgs does)."""
    LLMConfig = _llm_config_class()
    if isinstance(value, LLMConfig):
        return value
    if isinstance(value, (str, Path)):
        p = Path(value)
        if not p.is_absolute() and (base / p).exists():
            p = base / p
        data = load_yaml_file(p)
        where = f"{where} ({p})"
        value = data
    if not isinstance(value, dict):
        raise InputError(f"{where}: must be an LLMConfig mapping (model_loading_config, deployment_config, "
                         f"engine_kwargs, ...) or a YAML file path, got {type(value).__name__}")
    try:
        return LLMConfig.model_validate(value)
    except Exception as exc:  # pydantic.ValidationError
        dc = value.get("deployment_config")
        if isinstance(dc, dict):  # Ray's message hides the cause ("Invalid deployment config: {...}")
            from ray.serve._private.config import DeploymentConfig

            try:
                DeploymentConfig(**{k: v for k, v in dc.items() if k != "num_replicas" or v != "auto"})
            except Exception as inner:
                raise _format_validation_error(inner, f"{where}: deployment_config") from None
        raise _format_validation_error(exc, where) from None


def _num_devices(cfg: Any) -> int:
    ek = cfg.engine_kwargs or {}
    return int(ek.get("tensor_parallel_size", 1) or 1) * int(ek.get("pipeline_parallel_size", 1) or 1)


def _placement_bundles(cfg: Any, where: str) -> tuple[list[dict], str]:
    """The engine's placement bundles, the first merged with the replica actor's resources
    (core/server/llm_server.py get_deployment_options, engines/vllm/vllm_models.py
    placement_bundles, core/configs/accelerators.py GPU default_bundles)."""
    n = _num_devices(cfg)
    acc = f"accelerator_type:{cfg.accelerator_type}" if cfg.accelerator_type else None
    pgc = getattr(cfg, "placement_group_config", None) or {}
    if pgc.get("bundle_per_worker") is not None:
        bundles = [dict(pgc["bundle_per_worker"]) for _ in range(n)]
    elif pgc.get("bundles"):
        bundles = [dict(b) for b in pgc["bundles"]]
    else:
        bundles = [{"GPU": 1} for _ in range(n)]
    if acc:
        for b in bundles:
            b.setdefault(acc, 0.001)
    rao = (cfg.deployment_config or {}).get("ray_actor_options") or {}
    actor = {"CPU": rao.get("num_cpus", 1), "GPU": rao.get("num_gpus", 0), **(rao.get("resources") or {})}
    if "memory" in rao:
        actor["memory"] = rao["memory"]
    first = bundles[0] if bundles else {}
    bundles = [{k: first.get(k, 0) + actor.get(k, 0) for k in set(first) | set(actor)}] + bundles[1:]
    return bundles, str(pgc.get("strategy", "PACK"))


def _deployment_name(cfg: Any) -> str:
    """core/server/builder.py _get_deployment_name (unless deployment_config names it)."""
    return (cfg.deployment_config or {}).get("name") or cfg.model_id.replace("/", "--").replace(".", "_")


def _llm_deployment_options(cfg: Any, prefix: str, where: str,
                            override: Optional[dict] = None) -> dict:
    """What build_llm_deployment passes to serve.deployment(...) for this LLMConfig."""
    dc = copy.deepcopy(cfg.deployment_config or {})
    if override:
        dc.update(copy.deepcopy(override))
        if "num_replicas" in override and "autoscaling_config" not in override:
            dc.pop("autoscaling_config", None)
    if "placement_group_bundles" in dc or "placement_group_strategy" in dc:
        raise InputError(f"{where}.deployment_config: placement_group_bundles and placement_group_strategy must "
                         "not be specified (Ray sets them from the engine; use placement_group_config)")
    bundles, strategy = _placement_bundles(cfg, where)
    dc["placement_group_bundles"] = bundles
    dc["placement_group_strategy"] = strategy
    dc["name"] = prefix + _deployment_name(cfg)
    return _apply_llm_defaults(_default_deployment_options(), dc)


def replica_gpus(spec: DeploymentSpec) -> float:
    """GPUs one replica reserves (DeploymentSpec.num_gpus: bundles, else num_gpus)."""
    return spec.num_gpus


def _engine(engine: Any, where: str) -> Any:
    from simtune.service_models import LLMModel, ServiceModel, load_service_model, parse_service_model

    if isinstance(engine, ServiceModel):
        model = engine
    elif isinstance(engine, (str, Path)):
        model = load_service_model(engine)
        where = str(engine)
    elif isinstance(engine, Mapping):
        model = parse_service_model(dict(engine), where)
    else:
        raise InputError(f"{where}: must be an LLM service-model file, mapping or LLMModel, "
                         f"got {type(engine).__name__}")
    if not isinstance(model, LLMModel):
        raise InputError(f"{where}: kind is {model.kind!r}; prefill/decode needs an LLM engine model (kind: llm)")
    return model


ENGINE_KWARGS = ("max_num_seqs", "max_num_batched_tokens")


def engine_for(engine: Any, llm_config: Any = None, where: str = "engine_kwargs") -> Any:
    """The engine model with the LLMConfig's vLLM scheduler limits (engine_kwargs
    max_num_seqs / max_num_batched_tokens) where it sets them: those, not the model
    file's, are what the deployment's vLLM engine runs with."""
    if llm_config is None:
        return engine
    ek = llm_config.engine_kwargs or {}
    changes = {}
    for key in ENGINE_KWARGS:
        if ek.get(key) is not None:
            v = ek[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{where}.engine_kwargs.{key} must be an integer >= 1, got {v!r}")
            changes[key] = int(v)
    return dataclasses.replace(engine, **changes) if changes else engine


def prefill_engine(engine: Any) -> Any:
    """The engine as the prefill deployment runs it: the request is clamped to one token."""
    return dataclasses.replace(engine, output_tokens_column=PREFILL_OUTPUT_COLUMN,
                               meta={**engine.meta, "pd_role": "prefill (max_tokens=1)"})


def decode_engine(engine: Any) -> Any:
    """The engine as the decode deployment runs it: the prompt's KV cache arrives by
    transfer, so a request's "prefill" is its first decode step (one sequence, attending
    to its prompt: decode_step_time(1, input_tokens)), with no prefill compute and no
    token budget. With the chunked scheduler that step is merged into the running
    decode batch (its fixed cost paid once), as vLLM v1 adds the request to the batch."""
    return dataclasses.replace(
        engine, prefill_tokens=None, prefill_latency_s=None,
        prefill_base_s=engine.decode_step_time(1, 0.0), prefill_per_token_s=engine.decode_per_context_token_s,
        prefill_per_token2_s=0.0, max_num_batched_tokens=None,
        meta={**engine.meta, "pd_role": "decode (KV from prefill; first token = one decode step)"})


def _positive(value: Any, name: str, where: str, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise InputError(f"{where}: {name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise InputError(f"{where}: {name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


class PDTraceTransform:
    """Adds the columns the PD application reads: the prefill leg's one output token
    (`pd_prefill_output_tokens`) and each request's KV transfer time (`pd_kv_transfer_s`,
    kv_latency_s + input_tokens x kv_bytes_per_token / (kv_bandwidth_gbps x 1e9 / 8))."""

    def __init__(self, input_tokens_column: str, kv_bytes_per_token: float, kv_bandwidth_gbps: float,
                 kv_latency_s: float) -> None:
        self.input_tokens_column = input_tokens_column
        self.kv_bytes_per_token = kv_bytes_per_token
        self.kv_bandwidth_gbps = kv_bandwidth_gbps
        self.kv_latency_s = kv_latency_s

    def transfer_time(self, input_tokens: Any) -> np.ndarray:
        bytes_per_s = self.kv_bandwidth_gbps * 1e9 / 8.0
        return self.kv_latency_s + np.asarray(input_tokens, dtype=float) * self.kv_bytes_per_token / bytes_per_s

    def __call__(self, trace: Trace) -> Trace:
        col = self.input_tokens_column
        if col not in trace.columns:
            raise InputError(f"trace {trace.name!r}: no column {col!r} (the KV transfer time needs each request's "
                             f"prompt tokens); columns: {', '.join(sorted(trace.columns)) or 'none'}")
        try:
            x = np.asarray(trace.columns[col], dtype=float)
        except (TypeError, ValueError):
            raise InputError(f"trace {trace.name!r}: column {col!r} is not numeric (token counts)") from None
        if x.size and (not np.all(np.isfinite(x)) or x.min() < 0):
            raise InputError(f"trace {trace.name!r}: column {col!r} must hold token counts >= 0")
        cols = dict(trace.columns)
        cols[PREFILL_OUTPUT_COLUMN] = np.ones(len(trace))
        cols[KV_TRANSFER_COLUMN] = self.transfer_time(x)
        return Trace(trace.timestamps, cols, trace.name, trace.origin, dict(trace.meta))

    def __repr__(self) -> str:
        return (f"PDTraceTransform(kv_bytes_per_token={self.kv_bytes_per_token:g}, "
                f"kv_bandwidth_gbps={self.kv_bandwidth_gbps:g}, kv_latency_s={self.kv_latency_s:g})")


def _pd_args(app: dict, i: int, source: str, base: Path) -> tuple[Any, Any, dict, str]:
    """(prefill LLMConfig, decode LLMConfig, ingress options, ingress name), checked as
    PDServingArgs (prefill_decode/builder.py) checks them."""
    where = f"{source}: applications[{i}] ({app.get('name', 'default')})"
    args = app.get("args")
    if args is None:
        raise InputError(f"{where}: args is missing (build_pd_openai_app needs args.prefill_config and "
                         "args.decode_config)")
    if not isinstance(args, dict):
        raise InputError(f"{where}: args must be a mapping with prefill_config and decode_config")
    unknown = sorted(set(args) - set(PD_ARGS))
    if unknown:
        raise InputError(f"{where}: args.{unknown[0]} is not a PDServingArgs field (known: {', '.join(PD_ARGS)})")
    for key in ("prefill_config", "decode_config"):
        if args.get(key) is None:
            raise InputError(f"{where}: args.{key} is missing (build_pd_openai_app needs args.prefill_config and "
                             "args.decode_config)")
    pre = _llm_config(args["prefill_config"], f"{where}: args.prefill_config", base)
    dec = _llm_config(args["decode_config"], f"{where}: args.decode_config", base)
    if pre.model_id != dec.model_id:
        raise InputError(f"{where}: P/D model id mismatch: args.prefill_config.model_loading_config.model_id is "
                         f"{pre.model_id!r} but args.decode_config.model_loading_config.model_id is {dec.model_id!r} "
                         "(Ray's PDServingArgs requires them equal)")
    pl, dl = pre.lora_config, dec.lora_config
    if (pl is None) != (dl is None):
        raise InputError(f"{where}: args.{'decode' if pl is not None else 'prefill'}_config.lora_config is missing "
                         "(P/D LoRA must be configured on both prefill and decode)")
    if pl is not None and pl.dynamic_lora_loading_path != dl.dynamic_lora_loading_path:
        raise InputError(f"{where}: args.prefill_config.lora_config.dynamic_lora_loading_path "
                         f"{pl.dynamic_lora_loading_path!r} differs from decode's {dl.dynamic_lora_loading_path!r} "
                         "(P/D prefill and decode LoRA loading paths must be the same)")
    for key, cfg in (("prefill_config", pre), ("decode_config", dec)):
        ktc = (cfg.engine_kwargs or {}).get("kv_transfer_config")
        if ktc is None:
            raise InputError(f"{where}: args.{key}.engine_kwargs.kv_transfer_config is missing (required for P/D "
                             "disaggregation, e.g. {kv_connector: NixlConnector, kv_role: kv_both})")
        if isinstance(ktc, dict) and ktc.get("kv_connector") == "MoRIIOConnector":
            log.warning("%s: MoRIIOConnector may hand off concurrently (WRITE mode); simulated as sequential "
                        "prefill -> transfer -> decode", where)
        if int((cfg.engine_kwargs or {}).get("data_parallel_size", 1) or 1) > 1:
            log.warning("%s: args.%s data_parallel_size > 1: each DP rank is simulated as an independent replica",
                        where, key)
    ingress_opts, ingress_name = _ingress(args, dec, where)
    return pre, dec, ingress_opts, ingress_name


def _ingress(args: dict, cfg: Any, where: str) -> tuple[dict, str]:
    """The ingress deployment's options and name: OpenAiIngress.get_deployment_options
    (core/ingress/ingress.py; min_replicas 0 when the model's is 0) merged with
    args.ingress_deployment_config; the name is the ingress class's."""
    icc = args.get("ingress_cls_config") or {}
    if not isinstance(icc, dict):
        raise InputError(f"{where}: args.ingress_cls_config must be a mapping (ingress_cls, ingress_extra_kwargs)")
    cls = icc.get("ingress_cls") or DEFAULT_INGRESS
    name = str(cls).replace(":", ".").rsplit(".", 1)[-1]
    idc = args.get("ingress_deployment_config") or {}
    if not isinstance(idc, dict):
        raise InputError(f"{where}: args.ingress_deployment_config must be a mapping of deployment options")
    defaults = _default_ingress_options()
    auto = (cfg.deployment_config or {}).get("autoscaling_config") if cfg is not None else None
    if isinstance(auto, dict) and auto.get("min_replicas") == 0:
        defaults["autoscaling_config"]["min_replicas"] = 0
    opts = _apply_llm_defaults(defaults, idc)
    return opts, opts.pop("name", None) or name


def _override(options: dict[str, dict], app: dict, i: int, source: str) -> dict[str, dict]:
    """The application's `deployments:` entries override the code-built options, one
    top-level option at a time (serve/_private/application_state.py override_deployment_info)."""
    out = {k: copy.deepcopy(v) for k, v in options.items()}
    for k, entry in enumerate(app.get("deployments") or []):
        name = entry.get("name")
        if name not in out:
            raise InputError(f"{source}: applications[{i}].deployments[{k}].name: deployment {name!r} does not "
                             f"exist (available: {', '.join(out)})")
        for key, value in entry.items():
            if key != "name":
                out[name][key] = copy.deepcopy(value)
    return out


def _specs(options: dict[str, dict], source: str, app_name: str, timeout: Optional[float], doc: dict
           ) -> dict[str, DeploymentSpec]:
    specs = {}
    for name, opts in options.items():
        spec = deployment_from_mapping(opts, source=source, app_name=app_name, request_timeout_s=timeout)
        spec.document, spec.kind = doc, detect_kind(doc)
        specs[name] = spec
    return specs


# ----------------------------------------------------------------------------- public


@root_logging_kept()  # ray.llm, imported on the way, reconfigures the root logger
def load_pd_app(config: Union[str, Path, dict], engine: Any, *, kv_bytes_per_token: float,
                kv_bandwidth_gbps: float, kv_latency_s: float = 0.0, application: Optional[str] = None,
                ingress_time: str = "const:0") -> tuple[AppSpec, Callable[[Trace], Trace]]:
    """The AppSpec of a build_pd_openai_app application and the trace transform it needs.

    config: a Serve config / RayService file (or its parsed mapping) with an application
    whose import_path is ray.serve.llm:build_pd_openai_app; engine: the LLM service
    model (file, mapping or LLMModel) both legs run; kv_bytes_per_token: KV cache bytes
    per prompt token (e.g. Llama-2-70B fp16: 2 x 80 layers x 8 KV heads x 128 x 2 B =
    327,680); kv_bandwidth_gbps: prefill -> decode link, Gbit/s; kv_latency_s: fixed cost
    per transfer. Simulate `simulate_app(transform(trace), app)`.
    """
    doc, source, base = _read_doc(config)
    where = f"{source}"
    kvb = _positive(kv_bytes_per_token, "kv_bytes_per_token", where)
    bw = _positive(kv_bandwidth_gbps, "kv_bandwidth_gbps", where)
    lat = _positive(kv_latency_s, "kv_latency_s", where, allow_zero=True)
    model = _engine(engine, "engine")
    serve_doc, timeout = _serve_doc(doc, source)
    i, app = _find_application(serve_doc, source, (PD_BUILDER,), application)
    app_name = app.get("name", "default")
    pre, dec, ingress_opts, ingress = _pd_args(app, i, source, base)
    aw = f"{source}: applications[{i}] ({app_name}): args"
    popts = _llm_deployment_options(pre, "Prefill:", f"{aw}.prefill_config")
    dopts = _llm_deployment_options(dec, "Decode:", f"{aw}.decode_config")
    prefill, decode = popts["name"], dopts["name"]
    ingress_opts["name"] = ingress
    options = _override({ingress: ingress_opts, decode: dopts, prefill: popts}, app, i, source)
    specs = _specs(options, source, app_name, timeout, doc)
    topo = Topology(
        ingress=ingress,
        nodes={
            ingress: Node(ingress, service_time=ingress_time, calls=[Call(decode)]),
            decode: Node(decode, service_time=f"column:{KV_TRANSFER_COLUMN}", calls=[Call(prefill)],
                         service_model=decode_engine(engine_for(model, dec, f"{aw}.decode_config")),
                         model_after_calls=True),
            prefill: Node(prefill, service_time="const:0",
                          service_model=prefill_engine(engine_for(model, pre, f"{aw}.prefill_config"))),
        },
        application=app_name, source=f"{source} ({PD_BUILDER})", streams_from=decode)
    check_graph(topo)
    models = {prefill: topo.nodes[prefill].service_model, decode: topo.nodes[decode].service_model}
    spec = AppSpec(topo, specs, models, app_name, source)
    return spec, PDTraceTransform(model.input_tokens_column, kvb, bw, lat)


def pd_roles(app: AppSpec) -> dict[str, str]:
    """{"ingress": ..., "prefill": ..., "decode": ...} deployment names of a PD AppSpec."""
    topo = app.topology
    dec = topo.streams_from
    if dec is None or not topo.nodes[dec].model_after_calls or len(topo.nodes[dec].calls) != 1:
        raise InputError(f"{app.source}: not a prefill/decode application")
    return {"ingress": topo.ingress, "prefill": topo.nodes[dec].calls[0].to, "decode": dec}


@root_logging_kept()  # ray.llm, imported on the way, reconfigures the root logger
def colocated_app(config: Union[str, Path, dict], engine: Any, *, application: Optional[str] = None,
                  deployment_config: Optional[dict] = None, ingress_time: str = "const:0") -> AppSpec:
    """The non-disaggregated baseline: OpenAiIngress -> one LLMServer deployment running
    the full engine (what build_openai_app builds for one LLMConfig).

    config: a Serve config with a build_pd_openai_app application (its decode_config is
    the base: same model, engine_kwargs and so GPUs per replica), or one with a
    build_openai_app application (args.llm_configs, exactly one), or an LLMConfig
    mapping (model_loading_config, ...), or bare deployment options (taken as the
    LLMConfig's deployment_config of a one-GPU model "model"). deployment_config:
    top-level keys replacing the base's (e.g. {"num_replicas": 4} for an equal-GPU
    comparison; a num_replicas without autoscaling_config drops the autoscaling).
    """
    model = _engine(engine, "engine")
    timeout = None
    doc: dict = {}
    app: dict = {}
    i = 0
    if isinstance(config, (str, Path)) or (isinstance(config, dict) and ("applications" in config
                                                                          or detect_kind(config) == "rayservice")):
        doc, source, base = _read_doc(config)
        serve_doc, timeout = _serve_doc(doc, source)
        i, app = _find_application(serve_doc, source, (PD_BUILDER, OPENAI_BUILDER), application)
        app_name = app.get("name", "default")
        aw = f"{source}: applications[{i}] ({app_name}): args"
        if _builder_of(app) == PD_BUILDER:
            _, cfg, ingress_opts, ingress = _pd_args(app, i, source, base)
            cfg_where = f"{aw}.decode_config"
        elif _builder_of(app) == OPENAI_BUILDER:
            args = app.get("args") or {}
            llm_configs = args.get("llm_configs") if isinstance(args, dict) else None
            if not isinstance(llm_configs, list) or len(llm_configs) != 1:
                raise InputError(f"{aw}.llm_configs must list exactly one LLMConfig for a co-located baseline")
            cfg = _llm_config(llm_configs[0], f"{aw}.llm_configs[0]", base)
            cfg_where = f"{aw}.llm_configs[0]"
            ingress_opts, ingress = _ingress(args, cfg, aw[:-len(": args")])
    elif isinstance(config, dict):
        source, app_name = "<config>", "default"
        if "model_loading_config" in config:
            cfg = _llm_config(config, "<LLMConfig>", Path("."))
            cfg_where = "<LLMConfig>"
        else:
            opts = {k: v for k, v in config.items() if k != "name"}
            cfg = _llm_config({"model_loading_config": {"model_id": str(config.get("name") or "model")},
                               "deployment_config": opts}, "<deployment options>", Path("."))
            cfg_where = "<deployment options>"
        ingress_opts, ingress = _ingress({}, cfg, source)
    else:
        raise InputError(f"colocated_app: config must be a file path or a mapping, got {type(config).__name__}")
    opts = _llm_deployment_options(cfg, "LLMServer:", cfg_where, override=deployment_config)
    engine = engine_for(model, cfg, cfg_where)
    name = opts["name"]
    ingress_opts["name"] = ingress
    options = {ingress: ingress_opts, name: opts}
    if _builder_of(app) == OPENAI_BUILDER:
        options = _override(options, app, i, source)
    specs = _specs(options, source, app_name, timeout, doc)
    topo = Topology(ingress=ingress,
                    nodes={ingress: Node(ingress, service_time=ingress_time, calls=[Call(name)]),
                           name: Node(name, service_time="const:0", service_model=engine)},
                    application=app_name, source=f"{source} (co-located)", streams_from=name)
    check_graph(topo)
    return AppSpec(topo, specs, {name: engine}, app_name, source)
