"""Search space, candidates and the objective of `simtune recommend` (no search runs here)."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
import yaml

from simtune.errors import InputError
from simtune.serve_config import load_deployment
from simtune.tuner.candidate import Base, InvalidCandidate, build_entry, default_entry, effective_values, to_spec
from simtune.tuner.objective import CostModel, Objective, parse_slo, replica_seconds
from simtune.tuner.space import FIELDS, TrafficStats, apply_space_file, default_space

SERVE = {
    "http_options": {"request_timeout_s": 30},
    "applications": [{
        "name": "app", "route_prefix": "/", "import_path": "m:app",
        "deployments": [{"name": "Model", "max_ongoing_requests": 5, "max_queued_requests": 200,
                         "autoscaling_config": {"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 2,
                                                "metrics_interval_s": 2, "look_back_period_s": 10}}],
    }],
}


@pytest.fixture
def spec():
    return load_deployment(SERVE)


def _space(spec, busy=3.0):
    return default_space(TrafficStats(peak_rate_10s=busy / 0.1, mean_service_s=0.1), effective_values(spec),
                         spec.max_ongoing_requests, float(spec.autoscaling.metrics_interval_s))


def test_default_space_covers_every_field_and_the_current_config(spec):
    space = _space(spec)
    assert set(space.dims) == set(FIELDS)
    searched = {d.name for d in space.searched()}
    assert {"target_ongoing_requests", "min_replicas", "max_replicas", "upscale_delay_s", "downscale_delay_s",
            "downscale_to_zero_delay_s", "look_back_period_s", "upscaling_factor", "downscaling_factor",
            "aggregation_function"} == searched
    # Excluded by default, with the reasons in the module docstring.
    for name in ("initial_replicas", "max_ongoing_requests", "max_queued_requests"):
        assert space.dims[name].kind == "exclude"
    current = effective_values(spec)
    for d in space.searched():
        if d.kind != "categorical":
            assert d.low <= current[d.name] <= d.high or d.name == "look_back_period_s", d
    # Replica ranges follow the traffic: 10x the busy slots, ~10x the range.
    assert _space(spec, busy=30.0).dims["max_replicas"].high >= 10 * space.dims["max_replicas"].high // 2
    # look_back_period_s starts above the metrics interval (Ray 2.60 warns otherwise).
    assert space.dims["look_back_period_s"].low > spec.autoscaling.metrics_interval_s


def test_downscale_to_zero_delay_is_only_searched_when_min_replicas_is_zero(spec):
    space = _space(spec)
    base = space.project(effective_values(spec))
    with_min1 = space.suggest(optuna.trial.FixedTrial({**base, "min_replicas": 1}))
    assert "downscale_to_zero_delay_s" not in with_min1
    with_min0 = space.suggest(optuna.trial.FixedTrial({**base, "min_replicas": 0, "downscale_to_zero_delay_s": 30.0}))
    assert with_min0["downscale_to_zero_delay_s"] == 30.0
    assert space.values(with_min0)["downscale_to_zero_delay_s"] == 30.0


def test_space_file_fixes_narrows_and_excludes(spec, tmp_path):
    f = tmp_path / "space.yaml"
    f.write_text(yaml.safe_dump({
        "upscale_delay_s": 5, "min_replicas": {"low": 1, "high": 3}, "aggregation_function": ["mean", "MAX"],
        "downscaling_factor": "exclude", "max_ongoing_requests": {"low": 4, "high": 16, "log": True},
        "initial_replicas": None,
    }))
    space = apply_space_file(_space(spec), f)
    d = space.dims
    assert d["upscale_delay_s"].kind == "fixed" and d["upscale_delay_s"].value == 5.0
    assert (d["min_replicas"].kind, d["min_replicas"].low, d["min_replicas"].high) == ("int", 1, 3)
    assert d["aggregation_function"].choices == ("mean", "max")
    assert d["downscaling_factor"].kind == "exclude"
    assert d["max_ongoing_requests"].kind == "int" and d["max_ongoing_requests"].log
    assert d["initial_replicas"].kind == "fixed" and d["initial_replicas"].value is None
    assert not space.may_scale_to_zero()
    params = space.suggest(optuna.trial.FixedTrial({**space.project(effective_values(spec))}))
    values = space.values(params)
    assert values["upscale_delay_s"] == 5.0 and "downscaling_factor" not in values


@pytest.mark.parametrize("doc, words", [
    ({"min_replica": {"low": 1, "high": 2}}, ["'min_replica'", "unknown field"]),
    ({"max_replicas": {"low": 5, "high": 2}}, ["'max_replicas'", "greater than high"]),
    ({"min_replicas": -1}, ["'min_replicas'", "rejected by Ray"]),
    ({"target_ongoing_requests": {"low": 1, "hi": 3}}, ["'target_ongoing_requests'", "unknown key"]),
    ({"aggregation_function": {"low": 1, "high": 2}}, ["'aggregation_function'", "choices"]),
    ({"upscale_delay_s": "soon"}, ["'upscale_delay_s'", "number"]),
    ({"max_queued_requests": 0}, ["'max_queued_requests'", "-1"]),
    (["min_replicas"], ["expected a mapping"]),
])
def test_malformed_space_file_names_the_field(spec, tmp_path, doc, words):
    f = tmp_path / "space.yaml"
    f.write_text(yaml.safe_dump(doc))
    with pytest.raises(InputError) as err:
        apply_space_file(_space(spec), f)
    for w in words:
        assert w in str(err.value)
    assert "\n" not in str(err.value)


def test_ray_validation_prunes_impossible_combinations(spec):
    base = Base.from_spec(spec)
    with pytest.raises(InvalidCandidate, match="min_replicas"):
        to_spec(base, build_entry(base, {"min_replicas": 5, "max_replicas": 2}))
    with pytest.raises(InvalidCandidate, match="look_back_period_s"):
        to_spec(base, build_entry(base, {"look_back_period_s": 1.5}))  # <= metrics_interval_s (2)
    with pytest.raises(InvalidCandidate, match="Autoscaling will never happen"):
        to_spec(base, build_entry(base, {"target_ongoing_requests": 8.0}))  # > max_ongoing_requests 5
    ok = to_spec(base, build_entry(base, {"min_replicas": 0, "max_replicas": 3, "downscale_to_zero_delay_s": 7.0}))
    assert ok.autoscaling.downscale_to_zero_delay_s == 7.0


def test_entries_keep_user_fields_and_never_retype_ray_defaults(spec):
    base = Base.from_spec(spec)
    entry = build_entry(base, {"max_replicas": 4, "upscaling_factor": None})
    # The user's metrics_interval_s survives: a file's autoscaling_config replaces the code's whole.
    assert entry["autoscaling_config"]["metrics_interval_s"] == 2
    assert entry["autoscaling_config"]["max_replicas"] == 4 and "upscaling_factor" not in entry["autoscaling_config"]
    fixed = load_deployment({"name": "M", "num_replicas": 3})
    e2 = build_entry(Base.from_spec(fixed), {"max_replicas": 6})
    assert "num_replicas" not in e2  # an int num_replicas with autoscaling_config is rejected by Ray
    d = default_entry(base)
    assert d["num_replicas"] == "auto" and "autoscaling_config" not in d
    from ray.serve.config import AutoscalingConfig

    got = to_spec(base, d, strict=False).autoscaling.model_dump()
    assert got == AutoscalingConfig(**AutoscalingConfig.default().model_dump()).model_dump()


def test_slo_parsing_and_objective_worst_case():
    assert parse_slo("p99=2.0").bound_s == 2.0
    assert parse_slo("p99.9=500ms").percentile == 99.9 and parse_slo("p99.9=500ms").bound_s == 0.5
    for bad in ("99=2", "p100=1", "p99=-1", "p99=abc", "latency"):
        with pytest.raises(InputError):
            parse_slo(bad)
    obj = Objective((parse_slo("p99=2"), parse_slo("p50=0.5")), 0.01, CostModel())
    runs = [
        ("a", {"error_rate": 0.0, "p99": 1.0, "p50": 0.1, "attainment_p99": 1.0, "attainment_p50": 1.0,
               "cost": 100.0, "replica_seconds": 100.0, "mean_replicas": 1.0, "requests": 10}),
        ("a", {"error_rate": 0.02, "p99": 3.0, "p50": 0.2, "attainment_p99": 0.9, "attainment_p50": 1.0,
               "cost": 150.0, "replica_seconds": 150.0, "mean_replicas": 1.5, "requests": 10}),
        ("b", {"error_rate": 0.0, "p99": 0.5, "p50": 0.1, "attainment_p99": 1.0, "attainment_p50": 1.0,
               "cost": 10.0, "replica_seconds": 10.0, "mean_replicas": 2.0, "requests": 10}),
    ]
    w = obj.worst(runs)
    assert w["cost"] == 160.0  # per trace the worst scenario, summed over traces
    assert w["p99"] == 3.0 and w["error_rate"] == 0.02 and w["attainment_p99"] == 0.9
    c = obj.constraints(w)
    assert math.isclose(c["p99"], 0.5) and c["p50"] < 0 and c["error_rate"] > 0
    assert not obj.meets(w)
    money = CostModel(per_replica_hour=2.0, per_gpu_hour=10.0, num_gpus=0.5)
    assert money.unit == "$" and math.isclose(money(3600.0), 2.0 + 5.0)


def test_replica_seconds_over_a_window():
    timeline = [(-5.0, 1, 0, 0, 1), (10.0, 1, 1, 0, 2), (12.0, 2, 0, 0, 2), (20.0, 1, 0, 1, 1)]
    # [0, 30]: 10 s x1 + 2 s x2 + 8 s x2 + 10 s x2 = 50
    assert replica_seconds(timeline, 0.0, 30.0) == pytest.approx(50.0)
    assert replica_seconds(timeline, 15.0, 30.0) == pytest.approx(5 * 2 + 10 * 2)
    assert replica_seconds(np.empty((0, 5)).tolist(), 0.0, 10.0) == 0.0
