"""The YAML `simtune recommend` prints: replaced deployment, everything else preserved,
round-tripping through Ray's ServeDeploySchema / DeploymentSchema."""

from __future__ import annotations

import copy
import warnings

import pytest
import yaml

from simtune.serve_config import load_deployment
from simtune.tuner.candidate import Base, build_entry
from simtune.tuner.output import render_document, verify

TUNED = {"target_ongoing_requests": 1.5, "min_replicas": 0, "max_replicas": 6, "upscale_delay_s": 4.2,
         "downscale_delay_s": 300.0, "downscale_to_zero_delay_s": 900.0, "look_back_period_s": 20.0,
         "upscaling_factor": 1.3, "downscaling_factor": 0.5, "aggregation_function": "max"}

SERVE = {
    "proxy_location": "EveryNode",
    "http_options": {"host": "0.0.0.0", "port": 8000, "request_timeout_s": 30},
    "applications": [
        {"name": "app", "route_prefix": "/", "import_path": "m:app", "runtime_env": {"pip": ["torch"]},
         "deployments": [
             {"name": "Model", "max_ongoing_requests": 5, "ray_actor_options": {"num_gpus": 1},
              "user_config": {"threshold": 0.3},
              "autoscaling_config": {"min_replicas": 1, "max_replicas": 8, "metrics_interval_s": 2}},
             {"name": "Pre", "num_replicas": 2},
         ]},
        {"name": "other", "route_prefix": "/o", "import_path": "o:app",
         "deployments": [{"name": "Model", "num_replicas": 1}]},
    ],
}


def _schema_ok(doc, kind):
    from ray.serve.schema import DeploymentSchema, ServeDeploySchema

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "deployment":
            DeploymentSchema(**doc)
        else:
            ServeDeploySchema(**doc)


def test_serve_config_keeps_everything_but_the_tuned_deployment():
    spec = load_deployment(copy.deepcopy(SERVE), "app/Model")
    base = Base.from_spec(spec)
    entry = build_entry(base, TUNED)
    text, _ = render_document(spec, entry)
    verify(text, spec, base, entry)
    doc = yaml.safe_load(text)
    _schema_ok(doc, "serve")
    want = copy.deepcopy(SERVE)
    got_dep = doc["applications"][0]["deployments"][0]
    # Only this deployment's autoscaling_config changed; the user's other options stay.
    assert got_dep["user_config"] == {"threshold": 0.3} and got_dep["ray_actor_options"] == {"num_gpus": 1}
    assert got_dep["autoscaling_config"]["metrics_interval_s"] == 2
    for k, v in TUNED.items():
        assert got_dep["autoscaling_config"][k] == v
    doc["applications"][0]["deployments"][0] = want["applications"][0]["deployments"][0]
    assert doc == want
    back = load_deployment(yaml.safe_load(text), "app/Model")
    assert back.autoscaling.max_replicas == 6 and back.autoscaling.aggregation_function.value == "max"


def test_rayservice_string_serve_config_is_rewritten_as_a_block():
    manifest = {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "svc"},
                "spec": {"serveConfigV2": yaml.safe_dump(SERVE, sort_keys=False),
                         "rayClusterConfig": {"headGroupSpec": {"rayStartParams": {}}}}}
    spec = load_deployment(copy.deepcopy(manifest), "app/Model")
    base = Base.from_spec(spec)
    entry = build_entry(base, TUNED)
    text, _ = render_document(spec, entry)
    verify(text, spec, base, entry)
    assert "serveConfigV2: |" in text
    doc = yaml.safe_load(text)
    assert doc["metadata"] == {"name": "svc"} and doc["spec"]["rayClusterConfig"] == manifest["spec"]["rayClusterConfig"]
    inner = yaml.safe_load(doc["spec"]["serveConfigV2"])
    _schema_ok(inner, "serve")
    assert inner["applications"][1] == SERVE["applications"][1]
    assert inner["applications"][0]["deployments"][0]["autoscaling_config"]["max_replicas"] == 6


def test_bare_deployment_round_trips_through_deployment_schema():
    spec = load_deployment({"name": "Model", "num_replicas": "auto", "max_ongoing_requests": 8})
    base = Base.from_spec(spec)
    entry = build_entry(base, TUNED)
    text, _ = render_document(spec, entry)
    verify(text, spec, base, entry)
    doc = yaml.safe_load(text)
    _schema_ok(doc, "deployment")
    assert doc["num_replicas"] == "auto" and doc["max_ongoing_requests"] == 8
    # `auto` starts from AutoscalingConfig.default(); every tuned field is written, so it reads back as tuned.
    back = load_deployment(doc)
    assert back.autoscaling.target_ongoing_requests == 1.5 and back.autoscaling.min_replicas == 0


def test_verify_catches_a_yaml_that_does_not_read_back():
    spec = load_deployment({"name": "Model", "num_replicas": "auto"})
    base = Base.from_spec(spec)
    entry = build_entry(base, TUNED)
    text, _ = render_document(spec, entry)
    with pytest.raises(RuntimeError):
        verify(text.replace("max_replicas: 6", "max_replicas: 7"), spec, base, entry)
