"""Composed applications: the call graph, the shared request path, bad topologies."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from simtune.app.simulate import simulate_app
from simtune.app.spec import load_app
from simtune.app.topology import parse_topology
from simtune.errors import InputError
from simtune.params import SimParams
from simtune.serve_config import load_deployment
from simtune.simulate import simulate
from simtune.trace.io import load_trace
from simtune.trace.model import Trace

from conftest import REPO


def _config(tmp_path, deployments: dict, request_timeout_s=None):
    doc = {"applications": [{"name": "app", "import_path": "x:app",
                             "deployments": [{"name": n, **o} for n, o in deployments.items()]}]}
    if request_timeout_s:
        doc["http_options"] = {"request_timeout_s": request_timeout_s}
    p = tmp_path / "serve.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def _topo(tmp_path, data: dict):
    p = tmp_path / "topo.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _poisson(rate, seconds, seed=0):
    rng = np.random.default_rng(seed)
    return Trace(np.cumsum(rng.exponential(1 / rate, int(rate * seconds))))


FIXED = lambda n, m=8: {"num_replicas": n, "max_ongoing_requests": m}  # noqa: E731


def test_one_deployment_app_is_the_single_deployment_simulation():
    repo = REPO
    tr = load_trace(repo / "traces/sample.csv")
    a = simulate_app(tr, load_app(repo / "traces/sample_serve.yaml"), seed=3)
    b = simulate(tr, load_deployment(repo / "traces/sample_serve.yaml"), seed=3)
    for k in ("arrival", "start", "end", "status", "replica"):
        assert np.array_equal(getattr(a.end_to_end, k), getattr(b, k), equal_nan=True), k
    assert a.end_to_end.timeline == b.timeline


def test_chain_latency_is_the_sum_of_stages_and_upstream_holds_its_slot(tmp_path):
    cfg = _config(tmp_path, {"A": FIXED(1, 100), "B": FIXED(4, 100), "C": FIXED(1, 100)})
    topo = _topo(tmp_path, {"ingress": "A", "deployments": {
        "A": {"service_time": "const:0.04", "after_fraction": 0.5, "calls": [{"to": "B"}]},
        "B": {"service_time": "const:0.2", "calls": [{"to": "C"}]},
        "C": {"service_time": "const:0.05"}}})
    res = simulate_app(Trace(np.arange(10) * 1.0), load_app(cfg, topo), seed=0)
    lat = res.end_to_end.latency
    assert np.allclose(lat, 0.04 + 0.2 + 0.05)
    # B's calls last B's own time plus C's; C's only its own
    assert np.allclose(res.deployments["B"].latency, 0.25)
    assert np.allclose(res.deployments["C"].latency, 0.05)
    # B's call starts after A's first half of its own work
    assert np.allclose(res.deployments["B"].arrival - res.end_to_end.arrival, 0.02)


def test_slow_downstream_fills_the_callers_slots(tmp_path):
    # A has 1 replica with 2 slots and no work of its own; B is slow with plenty of replicas.
    cfg = _config(tmp_path, {"A": FIXED(1, 2), "B": FIXED(10, 1)})
    topo = _topo(tmp_path, {"ingress": "A", "deployments": {
        "A": {"service_time": "const:0", "calls": ["B"]}, "B": {"service_time": "const:1.0"}}})
    res = simulate_app(Trace(np.zeros(6)), load_app(cfg, topo), seed=0)
    # only 2 calls can be in flight at once: requests complete in three waves of two (each
    # wave starts when the router's backoff finds the freed slots, within its 0.5 s cap)
    lat = np.sort(res.end_to_end.latency)
    assert np.allclose(lat[:2], 1.0)
    assert lat[2] == lat[3] and 2.0 <= lat[2] <= 2.5
    assert lat[4] == lat[5] and lat[2] + 1.0 <= lat[4] <= lat[2] + 1.5


def test_parallel_fan_out_waits_for_the_slowest_and_probability_branches(tmp_path):
    cfg = _config(tmp_path, {"A": FIXED(2, 100), "B": FIXED(4, 100), "C": FIXED(4, 100), "D": FIXED(2, 100)})
    topo = _topo(tmp_path, {"ingress": "A", "deployments": {
        "A": {"service_time": "const:0", "mode": "parallel",
              "calls": [{"to": "B"}, {"to": "C", "count": 2}, {"to": "D", "probability": 0.3}]},
        "B": {"service_time": "const:0.1"}, "C": {"service_time": "const:0.3"}, "D": {"service_time": "const:0.05"}}})
    tr = Trace(np.arange(2000) * 0.05)
    res = simulate_app(tr, load_app(cfg, topo), seed=4)
    assert np.allclose(res.end_to_end.latency, 0.3)
    assert len(res.deployments["C"].arrival) == 4000
    frac = len(res.deployments["D"].arrival) / 2000
    assert 0.26 < frac < 0.34


def test_downstream_backpressure_fails_the_request(tmp_path):
    cfg = _config(tmp_path, {"A": FIXED(1, 100), "B": {**FIXED(1, 1), "max_queued_requests": 1}})
    topo = _topo(tmp_path, {"ingress": "A", "deployments": {
        "A": {"service_time": "const:0", "calls": ["B"]}, "B": {"service_time": "const:1.0"}}})
    res = simulate_app(Trace(np.zeros(5)), load_app(cfg, topo), seed=0)
    st = res.end_to_end.status
    assert (st == 200).sum() == 2  # one running, one queued at B's handle
    assert (st == 500).sum() == 3
    assert (res.deployments["B"].status == 503).sum() == 3


def test_request_timeout_cancels_the_whole_call_tree(tmp_path):
    cfg = _config(tmp_path, {"A": FIXED(1, 100), "B": FIXED(1, 1)}, request_timeout_s=1.5)
    topo = _topo(tmp_path, {"ingress": "A", "deployments": {
        "A": {"service_time": "const:0", "calls": ["B"]}, "B": {"service_time": "const:1.0"}}})
    res = simulate_app(Trace(np.array([0.0, 0.0, 0.0, 5.0])), load_app(cfg, topo), seed=0)
    e2e, b = res.end_to_end, res.deployments["B"]
    assert list(e2e.status) == [200, 408, 408, 200]
    assert np.allclose(e2e.end[:3], [1.0, 1.5, 1.5])
    # the second call was running at B and freed its slot at 1.5; the third was still
    # queued and left the queue; neither ran on after the client gave up
    assert sorted(b.status[:3].tolist()) == [200, 499, 499]
    assert np.isclose(e2e.end[3], 6.0)


def test_downstream_deployment_autoscales_on_its_own_signal(tmp_path):
    auto = lambda t: {"max_ongoing_requests": 8, "autoscaling_config": {  # noqa: E731
        "min_replicas": 1, "max_replicas": 20, "target_ongoing_requests": t, "upscale_delay_s": 3,
        "downscale_delay_s": 30}}
    cfg = _config(tmp_path, {"A": auto(20), "B": auto(2), "C": auto(2)})
    topo = _topo(tmp_path, {"ingress": "A", "deployments": {
        "A": {"service_time": "const:0.005", "calls": ["B"]},
        "B": {"service_time": "const:0.3", "calls": ["C"]},
        "C": {"service_time": "const:0.01"}}})
    res = simulate_app(_poisson(20, 240), load_app(cfg, topo), seed=1)
    s = res.summary()
    assert s["deployments"]["B"]["replicas"]["max"] >= 3
    assert s["deployments"]["A"]["replicas"]["max"] == 1
    assert s["deployments"]["C"]["replicas"]["max"] == 1
    assert s["requests"]["ok"] == s["requests"]["total"]
    assert s["replicas"]["replica_seconds"] == pytest.approx(
        sum(d["replicas"]["replica_seconds"] for d in s["deployments"].values()))


def test_same_seed_same_result_and_params(tmp_path):
    cfg = _config(tmp_path, {"A": FIXED(2), "B": FIXED(2)})
    topo = _topo(tmp_path, {"ingress": "A", "deployments": {
        "A": {"service_time": "exp:0.01", "calls": [{"to": "B", "probability": 0.5}]},
        "B": {"service_time": "exp:0.2"}}})
    app = load_app(cfg, topo)
    tr = _poisson(10, 60)
    a = simulate_app(tr, app, SimParams(seed=5))
    b = simulate_app(tr, app, SimParams(seed=5))
    c = simulate_app(tr, app, SimParams(seed=6))
    assert np.array_equal(a.end_to_end.end, b.end_to_end.end)
    assert not np.array_equal(a.end_to_end.end, c.end_to_end.end)


@pytest.mark.parametrize("data, message", [
    ({"ingress": "A", "deployments": {"A": {"calls": ["B"]}, "B": {"calls": ["A"]}}}, "cycle A -> B -> A"),
    ({"ingress": "A", "deployments": {"A": {"calls": ["Z"]}}}, "deployments.A.calls[0].to: names 'Z'"),
    ({"ingress": "Q", "deployments": {"A": {}}}, "ingress: names 'Q'"),
    ({"ingress": "A", "deployments": {"A": {"calls": [{"to": "A", "probability": 2}]}}}, "probability: must be"),
    ({"ingress": "A", "deployments": {"A": {"mode": "both"}}}, "mode: must be one of"),
    ({"ingress": "A", "deployments": {"A": {"service_time": "weird:1"}}}, "service_time"),
])
def test_bad_topologies_name_the_field(data, message):
    with pytest.raises(InputError) as exc:
        parse_topology(data, "topo.yaml")
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_topology_deployment_missing_from_config(tmp_path):
    cfg = _config(tmp_path, {"A": FIXED(1)})
    topo = _topo(tmp_path, {"ingress": "A", "deployments": {"A": {"calls": ["B"]}, "B": {}}})
    with pytest.raises(InputError, match="deployment 'B' is not in .*serve.yaml application 'app'"):
        load_app(cfg, topo)


def test_topology_from_a_bind_graph_with_times_from_yaml(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tests"))
    topo = parse_topology({"import_path": "app_graphs:app", "deployments": {
        "Ingress": {"service_time": "const:0.001", "mode": "parallel"},
        "Embed": {"service_time": "const:0.02"}, "Rank": {"service_time": "const:0.1"}}}, "t.yaml")
    assert topo.ingress == "Ingress"
    assert [c.to for c in topo.nodes["Ingress"].calls] == ["Embed", "Rank"]
    cfg = {"applications": [{"name": "a", "import_path": "app_graphs:app",
                             "deployments": [{"name": "Rank", "max_ongoing_requests": 3}]}]}
    app = load_app(cfg, topo)
    # decorator options, overridden field by field by the config, as Serve does
    assert app.specs["Ingress"].num_replicas == 2
    assert app.specs["Embed"].max_ongoing_requests == 16
    assert app.specs["Rank"].max_ongoing_requests == 3
    assert app.specs["Rank"].autoscaling.max_replicas == 6
    res = simulate_app(Trace(np.arange(5) * 1.0), app, seed=0)
    assert np.allclose(res.end_to_end.latency, 0.101)  # parallel: the slower call


def test_bind_graph_topology_rejects_unknown_names(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tests"))
    with pytest.raises(InputError, match="no deployment 'Nope' in the bind graph"):
        parse_topology({"import_path": "app_graphs:app", "deployments": {"Nope": {}}}, "t.yaml")
    with pytest.raises(InputError, match="holds no handle to 'Ingress'"):
        parse_topology({"import_path": "app_graphs:app", "deployments": {"Embed": {"calls": ["Ingress"]}}}, "t.yaml")
    with pytest.raises(InputError, match="cannot be imported"):
        parse_topology({"import_path": "no_such_module_xyz:app"}, "t.yaml")


def test_cli_run_with_topology_writes_every_deployment(tmp_path):
    from typer.testing import CliRunner

    from simtune.cli import app as cli

    cfg = _config(tmp_path, {"A": FIXED(1, 100), "B": FIXED(2, 4)})
    topo = _topo(tmp_path, {"ingress": "A", "deployments": {
        "A": {"service_time": "const:0.01", "calls": ["B"]}, "B": {"service_time": "trace"}}})
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["run", "--trace", str(REPO / "traces/sample.csv"), "--config", str(cfg),
                                 "--topology", str(topo), "--out", str(out), "--format", "json"])
    assert r.exit_code == 0, r.output
    import json

    s = json.loads(r.output)
    assert set(s["deployments"]) == {"A", "B"}
    assert {p.name for p in out.iterdir()} >= {"summary.json", "calls.parquet", "replicas.csv", "timeline.png"}
    import pandas as pd

    assert set(pd.read_csv(out / "replicas.csv").deployment) == {"A", "B"}
    r = CliRunner().invoke(cli, ["run", "--trace", str(REPO / "traces/sample.csv"), "--config", str(cfg),
                                 "--topology", str(topo), "--service-time", "const:1"])
    assert r.exit_code == 2 and "--service-time does not apply with --topology" in r.output
    bad = _topo(tmp_path, {"ingress": "A", "deployments": {"A": {"calls": ["B"]}, "B": {"calls": ["A"]}}})
    r = CliRunner().invoke(cli, ["run", "--trace", str(REPO / "traces/sample.csv"), "--config", str(cfg),
                                 "--topology", str(bad)])
    assert r.exit_code == 2 and "cycle A -> B -> A" in r.output



def test_downstream_scale_from_zero_waits_for_a_record_and_a_push(tmp_path):
    """Reference section 11.4: the handle's "immediate" scale-from-zero push carries only
    the stored samples (zeros), so a downstream deployment at zero starts when a record
    holding the queued call (every 0.2 x look_back_period_s = 6 s) has been pushed (every
    metrics_interval_s = 10 s): seconds, not a tick, after its first call."""
    auto = {"max_ongoing_requests": 8, "autoscaling_config": {
        "min_replicas": 0, "initial_replicas": 0, "max_replicas": 2, "target_ongoing_requests": 1,
        "upscale_delay_s": 0, "downscale_delay_s": 600}}
    cfg = _config(tmp_path, {"A": FIXED(1, 100), "B": auto})
    topo = _topo(tmp_path, {"ingress": "A", "deployments": {
        "A": {"service_time": "const:0.05", "calls": ["B"]}, "B": {"service_time": "const:0.1"}}})
    for seed in range(3):
        res = simulate_app(Trace(np.array([30.0])), load_app(cfg, topo), SimParams(seed=seed), seed=seed)
        dec = res.deployments["B"].decisions
        assert dec.to_target.iloc[0] == 1 and dec.from_target.iloc[0] == 0
        assert 30.05 < dec.time.iloc[0] <= 30.05 + 6.0 + 10.0 + 0.2
        assert res.end_to_end.status[0] == 200
        assert res.end_to_end.latency[0] > dec.time.iloc[0] - 30.0  # it waited for the replica


def test_call_overhead_delays_each_downstream_call_and_holds_the_callers_slot(tmp_path):
    cfg = _config(tmp_path, {"A": FIXED(1, 1), "B": FIXED(1, 100), "C": FIXED(1, 100)})
    topo = _topo(tmp_path, {"ingress": "A", "deployments": {
        "A": {"service_time": "const:0.01", "calls": ["B", "C"]},
        "B": {"service_time": "const:0.1"}, "C": {"service_time": "const:0.2"}}})
    app = load_app(cfg, topo)
    res = simulate_app(Trace(np.array([0.0, 0.0])), app, SimParams(seed=0, call_overhead_s=0.006), seed=0)
    lat = np.sort(res.end_to_end.latency)
    one = 0.01 + 0.006 + 0.1 + 0.006 + 0.2
    assert lat[0] == pytest.approx(one)
    # A has one slot, held through both calls and their overheads: the second waits for it
    assert lat[1] >= 2 * one - 1e-9
    assert np.allclose(res.deployments["B"].arrival - res.deployments["B"].arrival.min(), [0, lat[0]], atol=0.6)
    with pytest.raises(InputError, match="call_overhead_s must be >= 0"):
        SimParams.from_dict({"call_overhead_s": -1})


def test_force_killed_caller_fails_its_request_and_the_downstream_call_runs_on(tmp_path):
    # Two A replicas each await a 60 s call to B; A scales down to one (target 5: decided at
    # ~13 s, 5 s after the quiet start) and its graceful shutdown times out after 1 s: the
    # victim's request fails (500) at the kill.
    a = {"max_ongoing_requests": 4, "graceful_shutdown_timeout_s": 1, "graceful_shutdown_wait_loop_s": 0.5,
         "autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "initial_replicas": 2,
                                "target_ongoing_requests": 5, "upscale_delay_s": 0, "downscale_delay_s": 5,
                                "metrics_interval_s": 0.5, "look_back_period_s": 1}}
    cfg = _config(tmp_path, {"A": a, "B": FIXED(2, 4)})
    topo = _topo(tmp_path, {"ingress": "A", "deployments": {
        "A": {"service_time": "const:0", "calls": ["B"]}, "B": {"service_time": "const:60"}}})
    res = simulate_app(Trace(np.array([10.0, 10.0])), load_app(cfg, topo), SimParams(seed=0), seed=0)
    e2e = res.end_to_end
    st = sorted(e2e.status.tolist())
    assert st == [200, 500]
    killed = int(np.flatnonzero(e2e.status == 500)[0])
    assert 10.0 < e2e.end[killed] < 20.0  # at the kill, long before B's 60 s
    assert list(res.deployments["B"].status) == [200, 200]  # B's calls are not cancelled
    assert e2e.end[1 - killed] == pytest.approx(70.0, abs=0.01)


def test_topology_option_takes_an_import_path(monkeypatch):
    from simtune.app.topology import load_topology

    monkeypatch.chdir(REPO / "tests")
    topo = load_topology("app_graphs:app")
    assert topo.ingress == "Ingress" and [c.to for c in topo.nodes["Ingress"].calls] == ["Embed", "Rank"]
    assert topo.nodes["Ingress"].service_time == "trace" and topo.nodes["Rank"].service_time == "const:0"
    with pytest.raises(InputError, match="no_such_mod:app.*cannot be imported"):
        load_topology("no_such_mod:app")


def test_the_documented_topology_example_parses():
    import textwrap

    import simtune.app.topology as T

    doc = T.__doc__
    block = doc[doc.index("    ingress: Preprocess"):doc.index("It can also be read")]
    data = yaml.safe_load(textwrap.dedent(block))
    topo = T.parse_topology(data, "docstring", REPO / "traces")
    assert topo.order() == ["Preprocess", "Model", "Postprocess"]
    assert topo.nodes["Postprocess"].multiplex.max_num_models_per_replica == 4
    assert topo.streams_from == "Model" and topo.nodes["Model"].service_model.endswith("model_llm.yaml")
