"""Real Ray Serve multiplexing harness (simtune.validate.multiplex_real).

The fast tests check argument validation, the workload generator and the analysis
helpers, plus the saved reference measurements; the `slow` ones start a local Ray
Serve (about 2-3 minutes on a 2-core machine) and check real multiplexing behaviour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simtune.errors import InputError
from simtune.validate import multiplex_real as mr

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO / "reports" / "examples" / "multiplex_real"


# --------------------------------------------------------------------------- fast


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(arrivals=[0.0, 1.0], model_ids=[0]), "equal length"),
        (dict(arrivals=[1.0, 0.5], model_ids=[0, 1]), "sorted"),
        (dict(arrivals=[-1.0, 0.5], model_ids=[0, 1]), "sorted"),
        (dict(model_ids=[0.5, 1.0]), "non-negative integers"),
        (dict(model_ids=[-1, 1]), "non-negative integers"),
        (dict(service_time_s=-0.1), "service_time_s"),
        (dict(load_time_s=float("nan")), "load_time_s"),
        (dict(max_num_models_per_replica=0), "max_num_models_per_replica"),
        (dict(num_replicas=0), "num_replicas"),
        (dict(max_ongoing_requests=0), "max_ongoing_requests"),
    ],
)
def test_bad_arguments_raise_before_starting_ray(kwargs, match):
    args = dict(arrivals=[0.0, 0.5], model_ids=[0, 1], service_time_s=0.1, load_time_s=1.0,
                max_num_models_per_replica=2, num_replicas=2, max_ongoing_requests=4)
    args.update(kwargs)
    with pytest.raises(InputError, match=match):
        mr.run_real_multiplex(**args)


def test_reference_workload_is_reproducible():
    a1, m1 = mr.reference_workload(8.0, 60.0, 12, 1.1, seed=0)
    a2, m2 = mr.reference_workload(8.0, 60.0, 12, 1.1, seed=0)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(m1, m2)
    assert m1.dtype == np.int64 and m1.min() >= 0 and m1.max() < 12
    assert 400 < len(a1) < 580 and np.all(np.diff(a1) >= 0)


def _frame(rows):
    cols = ["arrival_s", "start_s", "latency_s", "model_id", "replica_id", "hit", "did_load", "error"]
    return pd.DataFrame(rows, columns=cols)


def test_router_learn_delays_and_summarize():
    df = _frame([
        (0.0, 0.01, 1.1, 3, "a", False, True, ""),
        (0.2, 0.21, 0.9, 3, "a", False, False, ""),   # waited for the load above
        (1.5, 1.51, 0.1, 3, "a", True, False, ""),
        (2.0, 2.01, 1.1, 5, "b", False, True, ""),   # never seen by the router
    ])
    view = pd.DataFrame({"t_s": [0.0, 0.12, 0.12, 2.5], "replica_id": ["a", "a", "b", "a"],
                         "model_ids": ["", "3", "", "3"]})
    d = mr.router_learn_delays(df, view)
    assert d.loc[0] == pytest.approx(0.11)
    assert np.isnan(d.loc[3])
    df.attrs["router_view"] = view
    s = mr.summarize(df)
    assert s["n"] == 4 and s["failed"] == 0 and s["loads"] == 2
    assert s["hit_rate"] == pytest.approx(0.25)
    assert s["learn_delay_p50_s"] == pytest.approx(0.11)


def _reference(k: int) -> pd.DataFrame:
    path = REFERENCE_DIR / f"real_k{k}.csv"
    if not path.exists():
        pytest.skip(f"{path} not present")
    return pd.read_csv(path)


def test_saved_reference_runs_are_consistent():
    """The committed ground truth: what Serve did, in numbers the simulator must match."""
    hit = {}
    arrivals, mids = mr.reference_workload(8.0, 60.0, 12, 1.1, seed=0)
    for k in (1, 2, 4, 8):
        df = _reference(k)
        assert (df["error"].fillna("") == "").all()
        np.testing.assert_allclose(df["arrival_s"], arrivals, atol=1e-5)
        np.testing.assert_array_equal(df["model_id"], mids)
        assert (df["n_loaded"] <= k).all()
        loads = df[df["did_load"]]
        assert (loads["load_s"] >= 1.0 - 1e-3).all() and (~loads["hit"]).all()
        assert (df.loc[df["hit"], "load_s"] < 0.01).all()
        assert (df.loc[df["evicted"] >= 0, "did_load"]).all()
        hit[k] = df["hit"].mean()
    assert hit[1] < hit[2] < hit[4] <= hit[8]


# --------------------------------------------------------------------------- real Ray


SERVICE, LOAD = 0.1, 1.0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_real_multiplexing_k2():
    arrivals, mids = mr.reference_workload(5.0, 30.0, 12, 1.1, seed=1)
    df = mr.run_real_multiplex(arrivals, mids, SERVICE, LOAD, max_num_models_per_replica=2,
                               num_replicas=3, max_ongoing_requests=8, seed=1)
    assert len(df) == len(arrivals)
    assert (df["error"] == "").all(), df.loc[df["error"] != "", "error"].head().tolist()
    assert df["replica_id"].nunique() <= 3
    assert df.attrs["meta"]["send_lag_max_s"] < 0.25  # the driver really fired open-loop
    hits, misses, loads = df[df["hit"]], df[~df["hit"]], df[df["did_load"]]
    assert 0.0 < df["hit"].mean() < 1.0
    # A request that ran the loader waited at least the load time, then served.
    assert (loads["load_s"] >= LOAD * 0.98).all()
    assert (loads["latency_s"] >= LOAD + SERVICE - 0.02).all()
    # Misses (including requests that waited for someone else's load) are slow typically...
    assert misses["latency_s"].median() >= 0.5 * LOAD
    # ...hits are not: no load, only the service time plus a few ms of path overhead.
    assert hits["latency_s"].median() < LOAD
    assert (hits["load_s"] < 0.05).all()
    assert hits["latency_s"].quantile(0.75) < SERVICE + 0.2
    # The cache never holds more than k models; evictions only happen on loads.
    assert (df["n_loaded"] <= 2).all()
    assert df.loc[df["evicted"] >= 0, "did_load"].all()
    # The router learns about a model being loaded within a few control-loop periods.
    view = df.attrs["router_view"]
    assert df.attrs["meta"]["router_view_observed"] and not view.empty
    delays = mr.router_learn_delays(df, view).dropna()
    assert len(delays) > 0 and delays.median() < 1.0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_more_cache_slots_give_more_hits():
    arrivals, mids = mr.reference_workload(4.0, 20.0, 8, 1.1, seed=2)
    runs = mr.run_real_multiplex_many(arrivals, mids, SERVICE, LOAD, ks=(1, 4), num_replicas=3,
                                      max_ongoing_requests=8, seed=2)
    h1, h4 = runs[1]["hit"].mean(), runs[4]["hit"].mean()
    assert h4 > h1
    assert runs[4]["did_load"].sum() < runs[1]["did_load"].sum()
    assert runs[4]["latency_s"].median() <= runs[1]["latency_s"].median()
