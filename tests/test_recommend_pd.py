"""`simtune recommend --pd-engine`: tuning a prefill/decode application (ray.serve.llm:
build_pd_openai_app) against end-to-end TTFT/TPOT SLOs, the output written into each
leg's LLMConfig deployment_config, and the co-located baseline at equal cost.

Traffic: the first 10 minutes of the Mooncake conversation trace thinned to x0.25
(~490 requests, prompts of 0.1k-120k tokens), on traces/pd_serve.yaml (one replica =
8 H100s) and traces/pd_engine.yaml. TTFT p99 cannot go below ~17 s on this trace (the
longest prompts alone take that long to prefill), so the SLO is ttft_p99=30.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import REPO, TRACES
from simtune.cli import app as cli

SERVE = REPO / "traces" / "pd_serve.yaml"
ENGINE = REPO / "traces" / "pd_engine.yaml"
MOONCAKE = TRACES / "mooncake_fast25_conversation.csv"
PREFILL = "Prefill:meta-llama--Llama-2-70b-chat-hf"
DECODE = "Decode:meta-llama--Llama-2-70b-chat-hf"
KV = {"kv_bytes_per_token": 327680.0, "kv_bandwidth_gbps": 400.0}
WINDOW, SCALE = "0:600", 0.25
TTFT, TPOT = 30.0, 0.1
PD_FLAGS = ["--pd-engine", ENGINE, "--kv-bytes-per-token", 327680, "--kv-bandwidth-gbps", 400]


def _run(args):
    return CliRunner().invoke(cli, ["recommend", *map(str, args)])


def _options(**kw):
    from simtune.tuner import RecommendOptions

    base = dict(traces=[str(MOONCAKE)], slos=[f"ttft_p99={TTFT:g}", f"tpot_p99={TPOT:g}"], config=str(SERVE),
                pd_engine=str(ENGINE), time_window=WINDOW, rate_scale=SCALE, trials=24, storage="memory",
                cost_per_gpu_hour=2.0, compare_colocated=True, **KV)
    base.update(kw)
    return RecommendOptions(**base)


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    from simtune.tuner import recommend

    report = tmp_path_factory.mktemp("pd") / "report"
    return recommend(_options(report=str(report))), report


def _trace():
    from simtune.trace.io import load_trace

    return load_trace(MOONCAKE, rate_scale=SCALE, start=0.0, end=600.0, seed=0)


def _schema_ok(doc: dict) -> None:
    from ray.serve.schema import ServeDeploySchema

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ServeDeploySchema(**doc)


def test_output_reloads_with_the_recommended_autoscaling_in_each_legs_deployment_config(rec):
    from simtune.app.pd import load_pd_app

    r, _ = rec
    header = [line for line in r.text.splitlines() if line.startswith("#")]
    assert header[0].startswith("# simtune") and "prefill/decode application pd-llama70b" in header[0]
    assert f"tuned: decode {DECODE}, prefill {PREFILL}; kept as configured: ingress OpenAiIngress" in header[0]
    for words in ("TTFT p99 s (SLO 30)", "TPOT p99 s (SLO 0.1)", "TTFT p50 s", "TPOT p50 s", "within every SLO",
                  f"#   decode: {DECODE} (tuned)", f"#   prefill: {PREFILL} (tuned)", "mean GPUs"):
        assert any(words in h for h in header), words
    doc = yaml.safe_load(r.text)
    _schema_ok(doc)
    before = yaml.safe_load(SERVE.read_text())
    app_doc, app_before = doc["applications"][0], before["applications"][0]
    assert "deployments" not in app_doc  # Ray reads the legs' options from their LLMConfigs
    assert {k: v for k, v in app_doc.items() if k != "args"} == {k: v for k, v in app_before.items() if k != "args"}
    for leg, name in (("prefill_config", PREFILL), ("decode_config", DECODE)):
        got, was = app_doc["args"][leg], app_before["args"][leg]
        # only deployment_config changed, and in it only the tuned options
        assert {k: v for k, v in got.items() if k != "deployment_config"} == \
            {k: v for k, v in was.items() if k != "deployment_config"}
        dc = got["deployment_config"]
        assert dc["autoscaling_config"] == r.entry[name]["autoscaling_config"]
        assert dc["max_ongoing_requests"] == r.entry[name]["max_ongoing_requests"]
        assert set(dc) == {"max_ongoing_requests", "autoscaling_config"}
    # re-loaded as Ray builds it: the effective settings are the simulated ones
    appspec, _ = load_pd_app(doc, ENGINE, **KV)
    for name in (PREFILL, DECODE):
        spec, want = appspec.specs[name], r.entry[name]["autoscaling_config"]
        assert spec.autoscaling.min_replicas == want["min_replicas"]
        assert spec.autoscaling.max_replicas == want["max_replicas"]
        assert spec.autoscaling.target_ongoing_requests == pytest.approx(want["target_ongoing_requests"])
        assert spec.max_ongoing_requests == r.entry[name]["max_ongoing_requests"]
    # the search found something cheaper than the current config, which misses the TTFT SLO
    rc, cur = r.compare["recommended"]["search"], r.compare["current"]["search"]
    assert rc["cost"] < cur["cost"] and cur["ttft_p99"] > TTFT


def test_recommendation_meets_ttft_and_tpot_when_resimulated(rec):
    """The whole window (search and holdout parts), the printed YAML re-loaded, two seeds
    the search never used."""
    from simtune.app.pd import load_pd_app
    from simtune.app.simulate import simulate_app

    r, _ = rec
    appspec, prepare = load_pd_app(yaml.safe_load(r.text), ENGINE, **KV)
    tr = prepare(_trace())
    for seed in (5, 6):
        e2e = simulate_app(tr, appspec, seed=seed).end_to_end
        ok = e2e.status == 200
        assert ok.all()
        ttft, tpot = e2e.ttft[ok], e2e.tpot[ok]
        assert np.percentile(ttft, 99) <= TTFT, seed
        assert np.percentile(tpot[np.isfinite(tpot)], 99) <= TPOT, seed
    # the search's own numbers agree: met on the search part and on the unseen holdout
    for part in ("search", "holdout"):
        m = r.compare["recommended"][part]
        assert m["ttft_p99"] <= TTFT and m["tpot_p99"] <= TPOT and m["error_rate"] == 0.0
        assert 0.99 <= m["attainment"] <= m["attainment_ttft_p99"]


def test_compare_colocated_reports_a_baseline_within_the_recommendations_gpus(rec):
    r, report = rec
    info = r.colocated
    assert info is not None and info["part"] == "holdout" and info["within"]
    label = info["label"]
    assert label == f"co-located x{info['replicas']}" and label in r.compare
    rec_gpus = r.compare["recommended"]["holdout"]["mean_gpus"]
    colo = r.compare[label]["holdout"]
    assert info["gpus"] == info["replicas"] * 8 <= rec_gpus + 1e-6
    assert colo["mean_gpus"] <= rec_gpus + 1e-6
    assert (info["replicas"] + 1) * 8 > rec_gpus  # as many replicas as fit, not fewer
    for key in ("ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99", "attainment"):
        assert np.isfinite(colo[key])
    # co-located prompts stall the decode batches: its TPOT tail misses the SLO that PD meets
    assert colo["tpot_p99"] > TPOT >= r.compare["recommended"]["holdout"]["tpot_p99"]
    header = [line for line in r.text.splitlines() if line.startswith("#")]
    assert any("co-located baseline (--compare-colocated)" in h for h in header)
    table = header[next(i for i, h in enumerate(header) if h.startswith("# at equal cost")) + 1:]
    assert table[0].split()[1:4] == ["config", "mean", "GPUs"]
    rows = {line.split()[1]: line for line in table[1:4]}
    assert set(rows) == {"recommended", "current", "co-located"}
    md = (report / "summary.md").read_text()
    assert "## Prefill/decode vs co-located at equal cost" in md and f"| {label} |" in md
    assert (report / "recommendation.yaml").read_text() == r.text


def test_cli_prints_only_the_yaml(tmp_path):
    report = tmp_path / "report"
    res = _run(["--trace", MOONCAKE, "--time-window", WINDOW, "--rate-scale", SCALE, "--config", SERVE,
                *PD_FLAGS, "--kv-latency-s", 0.002, "--slo", "ttft_p99=40,tpot_p99=0.1",
                "--trials", 6, "--sim-seeds", 1, "--storage", "memory", "--compare-colocated",
                "--report", report])
    assert res.exit_code == 0, res.stderr
    assert res.stdout.startswith("# simtune") and "co-located x" in res.stdout
    assert "KV transfer 0.002 s + 327,680 B/token at 400 Gbit/s" in res.stdout
    assert (report / "recommendation.yaml").read_text() == res.stdout
    doc = yaml.safe_load(res.stdout)
    assert doc["applications"][0]["args"]["decode_config"]["deployment_config"]["autoscaling_config"]
    assert not any(line.startswith("{") for line in res.stderr.splitlines())  # ray.llm's JSON logging kept out


@pytest.mark.parametrize("extra, words", [
    (["--pd-engine", ENGINE, "--kv-bytes-per-token", 327680], ["--pd-engine needs --kv-bandwidth-gbps"]),
    (["--pd-engine", ENGINE, "--kv-bandwidth-gbps", 400], ["--pd-engine needs --kv-bytes-per-token"]),
    (["--kv-bandwidth-gbps", 400], ["--kv-bandwidth-gbps needs --pd-engine"]),
    (["--compare-colocated"], ["--compare-colocated needs --pd-engine"]),
    ([*PD_FLAGS[:-1], 0], ["--kv-bandwidth-gbps 0.0: must be > 0"]),
    ([*PD_FLAGS, "--topology", REPO / "traces" / "pipeline_topology.yaml"], ["--pd-engine cannot be combined "
                                                                            "with --topology"]),
    ([*PD_FLAGS, "--service-time", "exp:0.1"], ["--service-time cannot be combined with --pd-engine"]),
    ([*PD_FLAGS, "--tune", "prefill,nope"], ["--tune 'nope'", "prefill, decode, ingress"]),
    (["--pd-engine", REPO / "traces" / "model_concurrency.yaml", *PD_FLAGS[2:]], ["needs an LLM engine"]),
    ([*PD_FLAGS, "--slo", "e2e_p99=1"], ["unknown metric 'e2e'", "ttft_pNN"]),
    ([*PD_FLAGS, "--time-window", "600:0"], ["--time-window"]),
])
def test_bad_pd_options_exit_2_with_one_line(extra, words):
    res = _run(["--trace", MOONCAKE, "--config", SERVE, "--slo", "ttft_p99=30", "--trials", 2, "--storage",
                "memory", *extra])
    assert res.exit_code == 2 and res.stdout == "", (res.exit_code, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_non_pd_config_and_missing_config_exit_2():
    res = _run(["--trace", MOONCAKE, "--config", REPO / "traces" / "sample_serve.yaml", "--slo", "ttft_p99=30",
                *PD_FLAGS, "--storage", "memory"])
    assert res.exit_code == 2 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "no application with import_path ray.serve.llm:build_pd_openai_app" in lines[0]
    res = _run(["--trace", MOONCAKE, "--slo", "ttft_p99=30", *PD_FLAGS, "--storage", "memory"])
    assert res.exit_code == 2 and "--pd-engine needs --config" in res.stderr


def test_ttft_slo_needs_streamed_replies(tmp_path):
    res = _run(["--trace", MOONCAKE, "--slo", "ttft_p99=30", "--service-time", "exp:0.1", "--storage", "memory"])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "TTFT is measured on streamed replies" in lines[0] and "--service-model" in lines[0]


# ----------------------------------------------------------------------------- units


def test_slo_syntax_and_scoring_of_ttft_tpot():
    from simtune.errors import InputError
    from simtune.service_models import load_service_model
    from simtune.simulate import simulate
    from simtune.serve_config import deployment_from_mapping
    from simtune.trace.model import Trace
    from simtune.tuner.objective import CostModel, Objective, parse_slo

    assert (parse_slo("p99=0.5").metric, parse_slo("p99=0.5").name) == ("latency", "p99")
    assert parse_slo("latency_p99=0.5").name == "p99"
    s = parse_slo("ttft_p99=10")
    assert (s.metric, s.percentile, s.bound_s, s.name, s.label) == ("ttft", 99.0, 10.0, "ttft_p99", "TTFT p99")
    assert parse_slo("tpot_p99.9=100ms").bound_s == pytest.approx(0.1)
    assert parse_slo("TPOT_p50=0.05").name == "tpot_p50"
    for bad, word in (("foo_p99=1", "unknown metric 'foo'"), ("ttft=1", "[METRIC_]pNN"), ("ttft_p99=0", "TTFT bound"),
                      ("tpot_p100=1", "percentile")):
        with pytest.raises(InputError, match=None) as err:
            parse_slo(bad)
        assert word in str(err.value) and "\n" not in str(err.value)

    model = load_service_model(REPO / "traces" / "model_llm.yaml")
    rng = np.random.default_rng(0)
    n = 200
    out_tokens = rng.integers(1, 300, n)
    out_tokens[:5] = 1  # one-token replies: no TPOT, never fail a TPOT bound
    tr = Trace(np.sort(rng.uniform(0, 60, n)), {"input_tokens": rng.integers(100, 4000, n),
                                                "output_tokens": out_tokens})
    spec = deployment_from_mapping({"name": "llm", "num_replicas": 2, "max_ongoing_requests": 64,
                                    "ray_actor_options": {"num_gpus": 8}})
    res = simulate(tr, spec, seed=0, service_model=model)
    obj = Objective((parse_slo("ttft_p90=0.5"), parse_slo("tpot_p99=0.05"), parse_slo("p50=30")), 0.0, CostModel())
    m = obj.score(res)
    ok = res.status == 200
    tpot = res.tpot[ok]
    assert m["ttft_p90"] == pytest.approx(np.percentile(res.ttft[ok], 90))
    assert m["tpot_p99"] == pytest.approx(np.percentile(tpot[np.isfinite(tpot)], 99))
    assert m["attainment_ttft_p90"] == pytest.approx(np.mean(ok & (res.ttft <= 0.5)))
    assert m["attainment_tpot_p99"] == pytest.approx(np.mean(ok & ~(res.tpot > 0.05)))
    both = ok & (res.ttft <= 0.5) & ~(res.tpot > 0.05) & (res.latency <= 30)
    assert m["attainment"] == pytest.approx(both.mean())
    assert m["ttft_p50"] == pytest.approx(np.percentile(res.ttft[ok], 50))  # reported whatever the SLOs
    assert m["mean_gpus"] == pytest.approx(16.0, rel=0.01)
    assert m["gpu_seconds"] == pytest.approx(8 * m["replica_seconds"])
    assert 0 < m["attainment"] < m["attainment_tpot_p99"] <= 1
    w = obj.worst([("t", m), ("t", {**m, "tpot_p99": 1.0, "attainment": m["attainment"] / 2, "ttft_p50": 9.0})])
    assert w["tpot_p99"] == 1.0 and w["attainment"] == m["attainment"] / 2 and w["ttft_p50"] == 9.0


def _target(config):
    from simtune.tuner.run import RecommendOptions, _pd_target

    return _pd_target(RecommendOptions(traces=[], slos=["ttft_p99=30"], config=str(config), pd_engine=str(ENGINE),
                                       **KV))


def _candidate(target, prefill_min=2, decode_min=1):
    from simtune.tuner.candidate import build_entry

    return {PREFILL: build_entry(target.bases[PREFILL], {"min_replicas": prefill_min, "max_replicas": 6,
                                                         "target_ongoing_requests": 3.0}),
            DECODE: build_entry(target.bases[DECODE], {"min_replicas": decode_min, "max_replicas": 3,
                                                       "target_ongoing_requests": 40.0})}


def test_tune_takes_roles_or_names():
    from simtune.tuner.run import RecommendOptions, _pd_target

    def tuned(*tune):
        return _pd_target(RecommendOptions(traces=[], slos=["ttft_p99=30"], config=str(SERVE), pd_engine=str(ENGINE),
                                           tune=list(tune), **KV)).tuned

    assert tuned() == [DECODE, PREFILL]
    assert tuned("ingress,decode") == ["OpenAiIngress", DECODE]
    assert tuned(PREFILL) == [PREFILL]


def test_ingress_follows_decode_scaling_to_zero():
    """Ray's OpenAiIngress gets min_replicas 0 when decode's is 0: the candidate is
    simulated (and verified) as re-built from the document, ingress included."""
    target = _target(SERVE)
    specs = target.validate(_candidate(target, decode_min=0))
    assert specs[DECODE].autoscaling.min_replicas == 0
    assert specs["OpenAiIngress"].autoscaling.min_replicas == 0
    assert target.validate(_candidate(target))["OpenAiIngress"].autoscaling.min_replicas == 1
    cand = _candidate(target, decode_min=0)
    text, _ = target.render(cand)
    target.verify(text, cand)


def test_llm_config_files_deployments_overrides_and_rayservice(tmp_path):
    """Where the settings go: a leg given as an LLMConfig file gets a `deployments:` override
    (the file is not rewritten); a leg already overridden under `deployments:` is updated
    there; a RayService's serveConfigV2 keeps its form."""
    doc = yaml.safe_load(SERVE.read_text())
    args = doc["applications"][0]["args"]
    (tmp_path / "decode.yaml").write_text(yaml.safe_dump(args["decode_config"]))
    args["decode_config"] = "decode.yaml"
    args["prefill_config"]["deployment_config"]["num_replicas"] = 2
    del args["prefill_config"]["deployment_config"]["autoscaling_config"]
    doc["applications"][0]["deployments"] = [{"name": PREFILL, "max_ongoing_requests": 12}]
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    target = _target(cfg)
    cand = _candidate(target)
    text, out = target.render(cand)
    target.verify(text, cand)
    a = out["applications"][0]
    assert a["args"]["decode_config"] == "decode.yaml"
    deps = {d["name"]: d for d in a["deployments"]}
    assert deps[DECODE]["autoscaling_config"]["target_ongoing_requests"] == 40.0
    assert deps[PREFILL]["autoscaling_config"]["min_replicas"] == 2 and deps[PREFILL]["max_ongoing_requests"] == 12
    assert "num_replicas" not in a["args"]["prefill_config"]["deployment_config"]  # Ray rejects it next to autoscaling

    rs = {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "pd"},
          "spec": {"serveConfigV2": SERVE.read_text()}}
    rcfg = tmp_path / "rayservice.yaml"
    rcfg.write_text(yaml.safe_dump(rs, sort_keys=False))
    target = _target(rcfg)
    cand = _candidate(target)
    text, out = target.render(cand)
    target.verify(text, cand)
    inner = yaml.safe_load(out["spec"]["serveConfigV2"])
    assert inner["applications"][0]["args"]["decode_config"]["deployment_config"]["autoscaling_config"][
        "max_replicas"] == 3
    assert copy.deepcopy(inner["applications"][0]["args"]["prefill_config"]["engine_kwargs"]) == \
        yaml.safe_load(SERVE.read_text())["applications"][0]["args"]["prefill_config"]["engine_kwargs"]
