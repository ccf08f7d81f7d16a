"""Config input: Serve config files, RayService manifests and bare deployments, validated by Ray."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from simtune.errors import InputError
from simtune.serve_config import load_deployment

SERVE = {
    "http_options": {"request_timeout_s": 12},
    "applications": [
        {"name": "a", "import_path": "m:app", "deployments": [
            {"name": "Pre", "num_replicas": 2},
            {"name": "Model", "max_ongoing_requests": 8,
             "autoscaling_config": {"min_replicas": 2, "max_replicas": 9, "target_ongoing_requests": 3}},
        ]},
        {"name": "b", "route_prefix": "/b", "import_path": "m:app2", "deployments": [{"name": "Model", "num_replicas": "auto"}]},
    ],
}


def test_serve_config_pick_by_app_and_name(tmp_path):
    f = tmp_path / "serve.yaml"
    f.write_text(yaml.safe_dump(SERVE))
    spec = load_deployment(f, "a/Model")
    assert (spec.app_name, spec.name, spec.max_ongoing_requests) == ("a", "Model", 8)
    assert spec.autoscaling.max_replicas == 9 and spec.autoscaling.min_replicas == 2
    # Fields the file did not set take Ray's AutoscalingConfig defaults (not re-typed here).
    from ray.serve.config import AutoscalingConfig

    assert spec.autoscaling.upscale_delay_s == AutoscalingConfig().upscale_delay_s
    assert spec.request_timeout_s == 12
    pre = load_deployment(f, "Pre")
    assert pre.autoscaling is None and pre.num_replicas == 2


def test_num_replicas_auto_uses_ray_defaults(tmp_path):
    f = tmp_path / "serve.yaml"
    f.write_text(yaml.safe_dump(SERVE))
    from ray.serve.config import AutoscalingConfig

    spec = load_deployment(f, "b/Model")
    default = AutoscalingConfig.default()
    assert spec.autoscaling.max_replicas == default.max_replicas
    assert spec.autoscaling.target_ongoing_requests == default.target_ongoing_requests


def test_ambiguous_and_unknown_deployments(tmp_path):
    f = tmp_path / "serve.yaml"
    f.write_text(yaml.safe_dump(SERVE))
    with pytest.raises(InputError, match="several deployments"):
        load_deployment(f)
    with pytest.raises(InputError, match="ambiguous"):
        load_deployment(f, "Model")
    with pytest.raises(InputError, match=r"unknown deployment 'a/Nope'.*a/Pre"):
        load_deployment(f, "a/Nope")


def test_rayservice_manifest(tmp_path):
    serve_v2 = yaml.safe_dump({"applications": [{"name": "llm", "import_path": "x:y", "deployments": [
        {"name": "LLM", "max_ongoing_requests": 16, "ray_actor_options": {"num_gpus": 1},
         "autoscaling_config": {"min_replicas": 0, "max_replicas": 4, "downscale_to_zero_delay_s": 300}}]}]})
    manifest = {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "svc"},
                "spec": {"serveConfigV2": serve_v2, "rayClusterConfig": {}}}
    f = tmp_path / "rayservice.yaml"
    f.write_text(yaml.safe_dump(manifest))
    spec = load_deployment(f)
    assert spec.kind == "rayservice" and spec.num_gpus == 1.0
    assert spec.autoscaling.downscale_to_zero_delay_s == 300


def test_bare_deployment_and_ray_rejections(tmp_path):
    f = tmp_path / "dep.yaml"
    f.write_text(textwrap.dedent("""
        name: d
        max_queued_requests: 10
        autoscaling_config: {min_replicas: 5, max_replicas: 2}
    """))
    with pytest.raises(InputError) as err:
        load_deployment(f)
    assert str(f) in str(err.value) and "\n" not in str(err.value)
    f.write_text("name: d\nmax_ongoing_requests: 0\n")
    with pytest.raises(InputError, match="max_ongoing_requests"):
        load_deployment(f)
    f.write_text("name: d\nnum_replicas: 3\nautoscaling_config: {max_replicas: 4}\n")
    with pytest.raises(InputError):
        load_deployment(f)
    f.write_text("name: d\nmax_queued_requests: 10\nautoscaling_config: {max_replicas: 4, upscaling_factor: 2}\n")
    spec = load_deployment(f)
    assert spec.max_queued_requests == 10 and spec.autoscaling.get_upscaling_factor() == 2


def test_deprecated_smoothing_factor_resolves_like_ray():
    spec = load_deployment({"name": "d", "autoscaling_config": {"smoothing_factor": 2.0, "downscale_smoothing_factor": 0.5}})
    assert spec.autoscaling.get_upscaling_factor() == 2.0
    assert spec.autoscaling.get_downscaling_factor() == 0.5


def test_invalid_yaml_names_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("name: d\n  bad: [\n")
    with pytest.raises(InputError, match="line"):
        load_deployment(f)


def test_request_router_backoff_is_read_from_ray_class():
    from ray.serve.config import RequestRouterConfig

    spec = load_deployment({"name": "d", "request_router_config": {"initial_backoff_s": 0.05, "max_backoff_s": 1.0}})
    assert spec.router_backoff == (0.05, RequestRouterConfig().backoff_multiplier, 1.0)
    assert load_deployment({"name": "d"}).router_backoff is None
