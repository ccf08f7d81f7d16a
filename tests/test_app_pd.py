"""Prefill/decode disaggregation (simtune.app.pd): build_pd_openai_app configs, the
PD request path (prefill -> KV transfer -> decode), TTFT/TPOT end to end, and the
co-located baseline.

Closed forms for one request with x prompt tokens and y output tokens, alone in the
system (engine E, transfer T = kv_latency_s + x * kv_bytes_per_token / (Gbit/s * 1e9/8)):
  TTFT = E.prefill_time(x) + T + E.decode_step_time(1, x)
  TPOT = E.decode_step_time(1, 0) + per_context_token_s * (x + y/2)
(the decode engine's k-th step after the first token attends to x + k tokens).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import yaml

from simtune.app.pd import (
    KV_TRANSFER_COLUMN, PREFILL_OUTPUT_COLUMN, colocated_app, load_pd_app, pd_roles, replica_gpus,
)
from simtune.app.simulate import simulate_app
from simtune.errors import InputError
from simtune.params import SimParams
from simtune.service_models import load_service_model
from simtune.trace.io import load_trace
from simtune.trace.model import Trace

from conftest import REPO

SERVE = REPO / "traces" / "pd_serve.yaml"
ENGINE = REPO / "traces" / "pd_engine.yaml"
MODEL_ID = "meta-llama/Llama-2-70b-chat-hf"
PREFILL = "Prefill:meta-llama--Llama-2-70b-chat-hf"
DECODE = "Decode:meta-llama--Llama-2-70b-chat-hf"
KVB = 327_680.0
BW = 400.0


def _doc() -> dict:
    return yaml.safe_load(SERVE.read_text())


def _write(tmp_path, doc: dict, name: str = "serve.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


def _args(doc: dict) -> dict:
    return doc["applications"][0]["args"]


def _one(x: int, y: int, t: float = 0.0) -> Trace:
    return Trace(np.array([t]), {"input_tokens": np.array([x]), "output_tokens": np.array([y])})


# ----------------------------------------------------------------------------- parsing


def test_deployments_are_named_and_configured_as_ray_builds_them():
    app, prepare = load_pd_app(SERVE, ENGINE, kv_bytes_per_token=KVB, kv_bandwidth_gbps=BW)
    assert pd_roles(app) == {"ingress": "OpenAiIngress", "prefill": PREFILL, "decode": DECODE}
    assert app.app_name == "pd-llama70b"
    topo = app.topology
    # Ray 2.60's layout: the ingress calls decode; decode calls prefill, then runs its engine
    assert [c.to for c in topo.nodes["OpenAiIngress"].calls] == [DECODE]
    assert [c.to for c in topo.nodes[DECODE].calls] == [PREFILL]
    assert topo.nodes[DECODE].model_after_calls and not topo.nodes[PREFILL].calls
    assert topo.streams_from == DECODE
    assert topo.nodes[DECODE].service_time == f"column:{KV_TRANSFER_COLUMN}"
    # each leg's autoscaling and max_ongoing_requests come from its LLMConfig.deployment_config
    p, d = app.specs[PREFILL], app.specs[DECODE]
    assert (p.autoscaling.min_replicas, p.autoscaling.max_replicas, p.autoscaling.target_ongoing_requests) == (1, 8, 2)
    assert (d.autoscaling.min_replicas, d.autoscaling.max_replicas, d.autoscaling.target_ongoing_requests) == (1, 4, 64)
    assert (p.max_ongoing_requests, d.max_ongoing_requests) == (16, 256)
    assert p.autoscaling.upscale_delay_s == 30 and d.autoscaling.downscale_delay_s == 300
    # tensor_parallel_size 8: eight one-GPU bundles, the first merged with the replica actor's CPU
    bundles = p.deployment_options["placement_group_bundles"]
    assert len(bundles) == 8 and bundles[0]["CPU"] == 1 and bundles[0]["GPU"] == 1
    assert bundles[1] == {"GPU": 1, "accelerator_type:H100": 0.001}
    assert replica_gpus(p) == replica_gpus(d) == 8.0
    # the ingress: Ray's LLM ingress defaults (one replica, no backpressure), no GPU
    ing = app.specs["OpenAiIngress"]
    assert ing.max_ongoing_requests == int(1e9) and ing.autoscaling.max_replicas == 1 and replica_gpus(ing) == 0
    # the engines: prefill yields one token; decode's "prefill" is one decode step
    pm, dm = app.models[PREFILL], app.models[DECODE]
    assert pm.output_tokens_column == PREFILL_OUTPUT_COLUMN and pm.max_num_batched_tokens == 8192
    assert dm.prefill_tokens is None and dm.max_num_batched_tokens is None
    assert dm.prefill_time(5000) == pytest.approx(dm.decode_step_time(1, 5000))


def test_llm_defaults_apply_under_the_users_deployment_config(tmp_path):
    doc = _doc()
    a = _args(doc)
    # no target_ongoing_requests: Ray's LLM default (1e9) is deep-merged in
    del a["prefill_config"]["deployment_config"]["autoscaling_config"]["target_ongoing_requests"]
    del a["prefill_config"]["deployment_config"]["max_ongoing_requests"]
    # num_replicas: the default autoscaling_config is dropped (maybe_apply_llm_deployment_config_defaults)
    a["decode_config"]["deployment_config"] = {"num_replicas": 3, "name": "dec"}
    a["decode_config"]["engine_kwargs"]["tensor_parallel_size"] = 4
    a["decode_config"]["engine_kwargs"]["max_num_seqs"] = 64
    app, _ = load_pd_app(_write(tmp_path, doc), ENGINE, kv_bytes_per_token=KVB, kv_bandwidth_gbps=BW)
    p = app.specs[PREFILL]
    assert p.autoscaling.target_ongoing_requests == 1e9 and p.max_ongoing_requests == int(1e9)
    d = app.specs["Decode:dec"]
    assert d.autoscaling is None and d.num_replicas == 3 and replica_gpus(d) == 4.0
    assert app.models["Decode:dec"].max_num_seqs == 64


def test_serve_config_deployment_overrides_and_rayservice(tmp_path):
    doc = _doc()
    doc["applications"][0]["deployments"] = [{"name": DECODE, "num_replicas": 2, "autoscaling_config": None}]
    app, _ = load_pd_app(_write(tmp_path, doc), ENGINE, kv_bytes_per_token=KVB, kv_bandwidth_gbps=BW)
    assert app.specs[DECODE].autoscaling is None and app.specs[DECODE].num_replicas == 2
    rs = {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "pd"},
          "spec": {"serveConfigV2": yaml.safe_dump(_doc())}}
    app2, _ = load_pd_app(rs, ENGINE, kv_bytes_per_token=KVB, kv_bandwidth_gbps=BW)
    assert pd_roles(app2)["decode"] == DECODE


def test_application_is_chosen_by_import_path_or_name(tmp_path):
    doc = _doc()
    doc["applications"].insert(0, {"name": "other", "import_path": "mod:app", "route_prefix": "/other",
                                   "deployments": [{"name": "X", "num_replicas": 1}]})
    p = _write(tmp_path, doc)
    assert load_pd_app(p, ENGINE, kv_bytes_per_token=KVB, kv_bandwidth_gbps=BW)[0].app_name == "pd-llama70b"
    with pytest.raises(InputError, match=r"applications\[0\] \(other\)\.import_path is 'mod:app'"):
        load_pd_app(p, ENGINE, kv_bytes_per_token=KVB, kv_bandwidth_gbps=BW, application="other")
    with pytest.raises(InputError, match=r"no application 'nope' \(applications: other \(mod:app\), pd-llama70b"):
        load_pd_app(p, ENGINE, kv_bytes_per_token=KVB, kv_bandwidth_gbps=BW, application="nope")
    doc["applications"].pop(1)
    with pytest.raises(InputError, match=r"serve\.yaml: no application with import_path "
                                         r"ray\.serve\.llm:build_pd_openai_app"):
        load_pd_app(_write(tmp_path, doc), ENGINE, kv_bytes_per_token=KVB, kv_bandwidth_gbps=BW)


# ----------------------------------------------------------------------------- bad input


def _bad(tmp_path, edit) -> str:
    doc = _doc()
    edit(_args(doc))
    with pytest.raises(InputError) as err:
        load_pd_app(_write(tmp_path, doc), ENGINE, kv_bytes_per_token=KVB, kv_bandwidth_gbps=BW)
    msg = str(err.value)
    assert "\n" not in msg and "serve.yaml" in msg
    return msg


def test_model_id_mismatch_names_both_ids(tmp_path):
    msg = _bad(tmp_path, lambda a: a["decode_config"]["model_loading_config"].update(model_id="Qwen/Qwen2.5-72B"))
    assert "P/D model id mismatch" in msg
    assert f"args.prefill_config.model_loading_config.model_id is '{MODEL_ID}'" in msg
    assert "args.decode_config.model_loading_config.model_id is 'Qwen/Qwen2.5-72B'" in msg


@pytest.mark.parametrize("key", ["prefill_config", "decode_config"])
def test_missing_leg(tmp_path, key):
    msg = _bad(tmp_path, lambda a: a.pop(key))
    assert f"args.{key} is missing" in msg


def test_other_pd_rules(tmp_path):
    assert "args.decode_config.engine_kwargs.kv_transfer_config is missing" in _bad(
        tmp_path, lambda a: a["decode_config"]["engine_kwargs"].pop("kv_transfer_config"))
    assert "args.llm_configs is not a PDServingArgs field" in _bad(tmp_path, lambda a: a.update(llm_configs=[]))
    assert "args.prefill_config: deployment_config: max_ongoing_requests" in _bad(
        tmp_path, lambda a: a["prefill_config"].update(deployment_config={"max_ongoing_requests": -1}))
    assert "lora_config is missing" in _bad(tmp_path, lambda a: a["prefill_config"].update(
        lora_config={"dynamic_lora_loading_path": "s3://bucket/loras"}))


@pytest.mark.parametrize("kw, message", [
    ({"kv_bandwidth_gbps": 0}, "kv_bandwidth_gbps must be > 0, got 0"),
    ({"kv_bandwidth_gbps": -10}, "kv_bandwidth_gbps must be > 0"),
    ({"kv_bytes_per_token": 0}, "kv_bytes_per_token must be > 0"),
    ({"kv_bytes_per_token": math.nan}, "kv_bytes_per_token must be a finite number"),
    ({"kv_bandwidth_gbps": True}, "kv_bandwidth_gbps must be a finite number"),
    ({"kv_latency_s": -0.001}, "kv_latency_s must be >= 0"),
])
def test_bad_kv_parameters(kw, message):
    args = {"kv_bytes_per_token": KVB, "kv_bandwidth_gbps": BW, **kw}
    with pytest.raises(InputError, match=rf"pd_serve\.yaml: {message}"):
        load_pd_app(SERVE, ENGINE, **args)


def test_engine_must_be_an_llm_model():
    with pytest.raises(InputError, match="kind is 'concurrency'; prefill/decode needs an LLM engine"):
        load_pd_app(SERVE, REPO / "traces" / "model_concurrency.yaml", kv_bytes_per_token=KVB, kv_bandwidth_gbps=BW)


def test_transform_adds_the_transfer_time_and_needs_prompt_tokens():
    _, prepare = load_pd_app(SERVE, ENGINE, kv_bytes_per_token=KVB, kv_bandwidth_gbps=BW, kv_latency_s=0.003)
    tr = prepare(Trace(np.array([0.0, 1.0]), {"input_tokens": np.array([0, 10_000]),
                                               "output_tokens": np.array([5, 5])}))
    assert np.array_equal(tr.columns[PREFILL_OUTPUT_COLUMN], [1, 1])
    # 10k tokens x 320 KiB at 400 Gbit/s = 3.2768 GB / 50 GB/s
    assert np.allclose(tr.columns[KV_TRANSFER_COLUMN], [0.003, 0.003 + 10_000 * KVB / 50e9])
    with pytest.raises(InputError, match="no column 'input_tokens'"):
        prepare(Trace(np.array([0.0])))


# ----------------------------------------------------------------------------- simulation


@pytest.mark.parametrize("scheduler", ["chunked", "prefill_first"])
def test_single_request_ttft_is_prefill_plus_transfer_plus_first_decode_step(scheduler):
    engine = yaml.safe_load(ENGINE.read_text())
    engine["scheduler"] = scheduler
    lat = 0.002
    app, prepare = load_pd_app(SERVE, engine, kv_bytes_per_token=KVB, kv_bandwidth_gbps=BW, kv_latency_s=lat)
    base = load_service_model(ENGINE)
    x, y = 4000, 100
    res = simulate_app(prepare(_one(x, y, t=5.0)), app, SimParams(), seed=1)
    T = lat + x * KVB / (BW * 1e9 / 8)
    ttft = base.prefill_time(x) + T + base.decode_step_time(1, x)
    tpot = base.decode_step_time(1, 0) + base.decode_per_context_token_s * (x + y / 2)
    e2e = res.end_to_end
    assert e2e.status[0] == 200
    assert e2e.ttft[0] == pytest.approx(ttft, rel=1e-9)
    assert e2e.tpot[0] == pytest.approx(tpot, rel=1e-9)
    assert e2e.latency[0] == pytest.approx(ttft + (y - 1) * tpot, rel=1e-9)
    # the prefill leg is one prompt step; the decode leg holds its slot from before prefill
    # (it makes the prefill call) through the transfer to its last token
    assert res.deployments[PREFILL].latency[0] == pytest.approx(base.prefill_time(x), rel=1e-9)
    dec = res.deployments[DECODE]
    assert dec.arrival[0] == pytest.approx(5.0) and dec.ttft[0] == pytest.approx(ttft, rel=1e-9)
    assert dec.end[0] == pytest.approx(e2e.end[0])
    # the transfer scales with bandwidth: a 10x slower link adds 9T to TTFT
    slow, prep2 = load_pd_app(SERVE, engine, kv_bytes_per_token=KVB, kv_bandwidth_gbps=BW / 10, kv_latency_s=lat)
    res2 = simulate_app(prep2(_one(x, y, t=5.0)), slow, SimParams(), seed=1)
    assert res2.end_to_end.ttft[0] - e2e.ttft[0] == pytest.approx(9 * (T - lat), rel=1e-9)


def test_colocated_single_request_runs_the_full_engine():
    base = load_service_model(ENGINE)
    app = colocated_app(SERVE, ENGINE, deployment_config={"num_replicas": 4})
    name = "LLMServer:meta-llama--Llama-2-70b-chat-hf"
    assert app.topology.streams_from == name and [c.to for c in app.topology.nodes["OpenAiIngress"].calls] == [name]
    spec = app.specs[name]
    assert spec.num_replicas == 4 and spec.autoscaling is None and replica_gpus(spec) == 8.0
    x, y = 4000, 50
    res = simulate_app(_one(x, y), app, SimParams(), seed=0)
    assert res.end_to_end.ttft[0] == pytest.approx(base.prefill_time(x), rel=1e-9)
    tpot = base.decode_step_time(1, 0) + base.decode_per_context_token_s * (x + y / 2)
    assert res.end_to_end.tpot[0] == pytest.approx(tpot, rel=1e-9)


def test_colocated_config_forms(tmp_path):
    opts = colocated_app({"name": "m", "num_replicas": 2, "max_ongoing_requests": 32}, ENGINE)
    spec = opts.specs["LLMServer:m"]
    assert spec.num_replicas == 2 and spec.max_ongoing_requests == 32 and replica_gpus(spec) == 1.0
    cfg = copy.deepcopy(_args(_doc())["decode_config"])
    one = colocated_app(cfg, ENGINE)
    assert one.specs[f"LLMServer:{DECODE.split(':')[1]}"].autoscaling.max_replicas == 4
    doc = {"applications": [{"name": "llm", "import_path": "ray.serve.llm:build_openai_app", "route_prefix": "/",
                             "args": {"llm_configs": [cfg]},
                             "deployments": [{"name": f"LLMServer:{DECODE.split(':')[1]}", "num_replicas": 3,
                                              "autoscaling_config": None}]}]}
    app = colocated_app(_write(tmp_path, doc), ENGINE)
    assert app.app_name == "llm" and app.specs[f"LLMServer:{DECODE.split(':')[1]}"].num_replicas == 3


def test_requests_wait_for_their_own_transfer():
    app, prepare = load_pd_app(SERVE, ENGINE, kv_bytes_per_token=KVB, kv_bandwidth_gbps=BW)
    rng = np.random.default_rng(3)
    n = 40
    tr = prepare(Trace(np.sort(rng.uniform(0, 20, n)), {"input_tokens": rng.integers(100, 20_000, n),
                                                       "output_tokens": rng.integers(2, 300, n)}))
    res = simulate_app(tr, app, SimParams(), seed=0)
    e = res.end_to_end
    assert np.all(e.status == 200)
    T = tr.columns[KV_TRANSFER_COLUMN]
    base = load_service_model(ENGINE)
    # TTFT >= the request's own prefill (alone, chunked at the 8192 budget) + transfer + a decode step
    floor = np.array([base.prefill_time(min(x, 8192)) for x in tr.columns["input_tokens"]]) + T + \
        base.decode_step_time(1, 0)
    assert np.all(e.ttft >= floor - 1e-9)
    assert np.all(np.isfinite(e.tpot))


def test_mooncake_replay_gives_finite_ttft_and_tpot(shared_dir):
    tr = load_trace(shared_dir / "traces" / "mooncake_fast25_conversation.csv")
    assert {"input_tokens", "output_tokens"} <= set(tr.columns)
    tr = tr.take(tr.timestamps < 180.0)
    app, prepare = load_pd_app(SERVE, ENGINE, kv_bytes_per_token=KVB, kv_bandwidth_gbps=BW)
    fixed = app.with_specs({PREFILL: app.specs[PREFILL].with_options(num_replicas=6, autoscaling_config=None),
                            DECODE: app.specs[DECODE].with_options(num_replicas=2, autoscaling_config=None)})
    pd = simulate_app(prepare(tr), fixed, SimParams(), seed=0).summary()
    colo = simulate_app(tr, colocated_app(SERVE, ENGINE, deployment_config={"num_replicas": 8}), SimParams(),
                        seed=0).summary()
    for s in (pd, colo):
        assert s["requests"]["ok"] == len(tr)
        for k in ("ttft_s", "tpot_s"):
            assert all(math.isfinite(s[k][q]) and s[k][q] > 0 for q in ("p50", "p99")), (k, s[k])
    assert pd["deployments"][PREFILL]["replicas"]["max"] == 6 and pd["deployments"][DECODE]["replicas"]["max"] == 2
    # disaggregation keeps prompt chunks out of the decode batches: a lower TPOT tail at equal GPUs
    assert pd["tpot_s"]["p99"] < colo["tpot_s"]["p99"]


def test_llm_config_may_be_a_yaml_path_and_ingress_options_apply(tmp_path):
    doc = _doc()
    a = _args(doc)
    (tmp_path / "decode.yaml").write_text(yaml.safe_dump(a["decode_config"]))
    a["decode_config"] = "decode.yaml"  # relative to the Serve config's folder
    a["ingress_deployment_config"] = {"max_ongoing_requests": 500,
                                      "autoscaling_config": {"min_replicas": 2, "max_replicas": 2}}
    app, _ = load_pd_app(_write(tmp_path, doc), ENGINE, kv_bytes_per_token=KVB, kv_bandwidth_gbps=BW)
    assert app.specs[DECODE].autoscaling.target_ongoing_requests == 64
    ing = app.specs["OpenAiIngress"]
    assert ing.max_ongoing_requests == 500 and ing.autoscaling.min_replicas == 2
    assert ing.autoscaling.target_ongoing_requests == 1e9
