"""Model multiplexing: routing by model id, the per-replica LRU and its lock, against real Serve."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from simtune.app import load_app, parse_topology, simulate_app
from simtune.errors import InputError
from simtune.params import SimParams
from simtune.trace.model import Trace
from simtune.validate.multiplex_real import reference_workload

from conftest import REPO

REAL = REPO / "reports/examples/multiplex_real"


def _app(k: int, replicas: int = 3, max_ongoing: int = 8, load: str = "const:1.0", svc: str = "const:0.1"):
    cfg = {"applications": [{"name": "m", "import_path": "x:y", "deployments": [
        {"name": "M", "num_replicas": replicas, "max_ongoing_requests": max_ongoing}]}]}
    topo = parse_topology({"ingress": "M", "deployments": {"M": {
        "service_time": svc, "multiplex": {"max_num_models_per_replica": k, "load_time": load}}}})
    return load_app(cfg, topo)


def _trace(times, mids):
    return Trace(np.asarray(times, float), columns={"model_id": np.asarray(mids)})


def test_a_model_stays_on_the_replica_that_loaded_it():
    # one request per second for model "a": the first loads (1 s), every later one hits
    res = simulate_app(_trace(np.arange(10) * 2.0, ["a"] * 10), _app(2), seed=0).end_to_end
    assert np.isclose(res.latency[0], 1.1)
    assert np.allclose(res.latency[1:], 0.1)
    assert len(set(res.replica.tolist())) == 1
    assert res.model_hit.tolist() == [False] + [True] * 9


def test_loads_are_serialised_on_a_replica_and_lru_evicts():
    # one replica, k=1: a, b, a each need a load; the lock serialises them
    res = simulate_app(_trace([0.0, 0.01, 0.02], ["a", "b", "a"]), _app(1, replicas=1), seed=0).end_to_end
    assert np.allclose(res.end, [1.1, 2.1, 3.1], atol=0.02)
    # k=2: the third request finds a loaded (waits for b's load on the lock, then no load)
    res = simulate_app(_trace([0.0, 0.01, 0.02], ["a", "b", "a"]), _app(2, replicas=1), seed=0).end_to_end
    assert np.allclose(res.end, [1.1, 2.1, 2.12], atol=0.02)


def test_hit_rate_grows_with_cache_size_and_is_deterministic():
    arr, mids = reference_workload(8, 60, 12, 1.1, 0)
    tr = _trace(arr, mids)
    rates = [simulate_app(tr, _app(k), SimParams(seed=1)).summary()["multiplex"]["hit_rate"] for k in (1, 2, 4)]
    assert rates[0] < rates[1] < rates[2]
    a = simulate_app(tr, _app(2), SimParams(seed=3)).end_to_end.end
    b = simulate_app(tr, _app(2), SimParams(seed=3)).end_to_end.end
    assert np.array_equal(a, b)


@pytest.mark.parametrize("k, p50_tol, fast_tol", [(2, 0.25, 0.06), (4, 0.10, 0.03), (8, 0.10, 0.03)])
def test_matches_real_serve_reference_runs(k, p50_tol, fast_tol):
    """reports/examples/multiplex_real: real Serve 2.60 on this machine, Poisson 8 req/s for
    60 s, 12 models Zipf s=1.1, 0.1 s service, 1 s load, 3 replicas, max_ongoing 8 (seed 0).
    Measured (5 simulation seeds): k=2 p50 0.775 s vs 0.745 s real, share of requests
    served without a load 0.53 vs 0.54; k=4/8 p50 0.100 vs 0.107, share 0.965 vs 0.97.
    Not asserted: k=1 (overloaded: loads serialise and queue for 100 s): sim p50 27 s vs
    real 22 s."""
    real = pd.read_csv(REAL / f"real_k{k}.csv")
    arr, mids = reference_workload(8, 60, 12, 1.1, 0)
    tr = _trace(arr, mids)
    lat = np.concatenate([simulate_app(tr, _app(k), SimParams(seed=s)).end_to_end.latency for s in range(5)])
    assert abs(np.percentile(lat, 50) / real.latency_s.quantile(0.5) - 1) < p50_tol
    assert abs((lat < 1.0).mean() - (real.latency_s < 1.0).mean()) < fast_tol


def test_bad_multiplex_input():
    with pytest.raises(InputError, match="model_id_column: the trace has no column 'model_id'"):
        simulate_app(Trace(np.arange(3.0)), _app(2), seed=0)
    with pytest.raises(InputError, match="max_num_models_per_replica: must be >= 1"):
        parse_topology({"ingress": "M", "deployments": {"M": {"multiplex": {"max_num_models_per_replica": 0}}}})
    with pytest.raises(InputError, match="multiplex: needs max_num_models_per_replica"):
        parse_topology({"ingress": "M", "deployments": {"M": {"multiplex": {"load_time": "const:1"}}}})


def test_cli_synth_model_ids_then_run_a_multiplexed_topology(tmp_path):
    import json

    import yaml
    from typer.testing import CliRunner

    from simtune.cli import app as cli

    trace = tmp_path / "mux.parquet"
    r = CliRunner().invoke(cli, ["trace", "synth", "poisson", "-o", str(trace), "-d", "60", "-r", "8",
                                 "--service-time", "const:0.1", "--model-ids", "12", "--zipf-s", "1.1"])
    assert r.exit_code == 0, r.output
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(yaml.safe_dump({"applications": [{"name": "m", "import_path": "x:y", "deployments": [
        {"name": "M", "num_replicas": 3, "max_ongoing_requests": 8}]}]}))
    topo = tmp_path / "topo.yaml"
    topo.write_text(yaml.safe_dump({"ingress": "M", "deployments": {"M": {
        "service_time": "trace", "multiplex": {"max_num_models_per_replica": 4, "load_time": "const:1.0"}}}}))
    r = CliRunner().invoke(cli, ["run", "--trace", str(trace), "--config", str(cfg), "--topology", str(topo),
                                 "--format", "json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert 0.8 < s["multiplex"]["hit_rate"] < 1.0
    r = CliRunner().invoke(cli, ["trace", "synth", "poisson", "-o", str(trace), "-d", "60", "-r", "8",
                                 "--model-ids", "0"])
    assert r.exit_code == 2 and "--model-ids" in r.output
