"""`simtune recommend` end to end, in-process: YAML-only stdout, report, exit codes."""

from __future__ import annotations

import warnings

import pytest
import yaml
from typer.testing import CliRunner

from conftest import TRACES
from simtune.cli import app

SERVE = """\
http_options:
  request_timeout_s: 30
applications:
  - name: app
    route_prefix: /
    import_path: my_model:app
    deployments:
      - name: Model
        max_ongoing_requests: 8
        autoscaling_config:
          min_replicas: 2
          max_replicas: 12
          target_ongoing_requests: 2
          downscale_delay_s: 600
"""


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory):
    from simtune.trace import save_trace
    from simtune.trace.generators import diurnal

    path = tmp_path_factory.mktemp("trace") / "diurnal.parquet"
    save_trace(diurnal(6.0, 600.0, peak_to_trough=4.0, period=600.0, seed=3), path)
    return path


def _run(args):
    result = CliRunner().invoke(app, ["recommend", *map(str, args)])
    return result


def test_recommend_on_a_real_trace_prints_only_yaml_and_writes_a_report(tmp_path):
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(SERVE)
    report = tmp_path / "report"
    res = _run(["--trace", TRACES / "azure_llm_2023_code.csv", "--config", cfg, "--slo", "p99=4",
                "--service-time", "lognormal:mean=0.3,p99=1.5", "--trials", 16, "--sim-seeds", 1,
                "--report", report])
    assert res.exit_code == 0, res.stderr
    out = res.stdout
    header = [line for line in out.splitlines() if line.startswith("#")]
    assert header and out.startswith("# simtune")
    assert any("recommended" in h and "current" in h and "ray-defaults" in h for h in header)
    assert any(h.startswith("#   holdout") for h in header)
    doc = yaml.safe_load(out)
    from ray.serve.schema import ServeDeploySchema

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ServeDeploySchema(**doc)
    dep = doc["applications"][0]["deployments"][0]
    assert dep["name"] == "Model" and dep["max_ongoing_requests"] == 8
    assert {"min_replicas", "max_replicas", "target_ongoing_requests", "upscale_delay_s"} <= set(dep["autoscaling_config"])
    assert "simtune" not in res.stderr or "#" not in res.stderr.splitlines()[0]
    for name in ("summary.md", "recommendation.yaml", "trials.csv", "pareto_front.png", "optimization_history.png",
                 "param_importances.png", "timeline_azure_llm_2023_code.png", "study.db"):
        assert (report / name).exists(), name
    assert (report / "recommendation.yaml").read_text() == out
    md = (report / "summary.md").read_text()
    assert "Holdout, per trace" in md and "ray-defaults" in md


def test_unmeetable_slo_exits_3_with_the_best_achievable_value_and_no_yaml(small_trace, tmp_path):
    res = _run(["--trace", small_trace, "--slo", "p99=0.02", "--service-time", "lognormal:mean=0.1,p99=0.5",
                "--trials", 8, "--sim-seeds", 1, "--storage", "memory"])
    assert res.exit_code == 3
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no configuration")
    assert "best achievable p99 =" in lines[0]


def test_malformed_space_file_names_the_field_and_exits_2(small_trace, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("min_replicas: {low: 1, high: 4}\nupscale_delay: 10\n")
    res = _run(["--trace", small_trace, "--slo", "p99=1", "--service-time", "exp:0.1", "--space", space,
                "--storage", "memory"])
    assert res.exit_code == 2 and res.stdout == ""
    assert "'upscale_delay'" in res.stderr and "unknown field" in res.stderr


def test_existing_study_needs_resume(small_trace, tmp_path):
    args = ["--trace", small_trace, "--slo", "p99=1", "--service-time", "exp:0.1", "--trials", 2, "--sim-seeds", 1,
            "--holdout", 0, "--storage", f"sqlite:///{tmp_path / 's.db'}"]
    first = _run(args)
    assert first.exit_code == 0, first.stderr
    again = _run(args)
    assert again.exit_code == 2 and "--resume" in again.stderr and again.stdout == ""
    resumed = _run([*args, "--resume"])
    assert resumed.exit_code == 0 and resumed.stdout == first.stdout
    other = _run([*args[:-2], "--storage", f"sqlite:///{tmp_path / 's.db'}", "--study-name",
                  first.stdout.split("of study ")[1].split()[0], "--seed", 5, "--resume"])
    assert other.exit_code == 2 and "other inputs" in other.stderr and "seed" in other.stderr


def test_pareto_front_and_gpu_cost(small_trace, tmp_path):
    cfg = tmp_path / "dep.yaml"
    cfg.write_text("name: Model\nnum_replicas: auto\nmax_ongoing_requests: 4\nray_actor_options: {num_gpus: 1}\n")
    report = tmp_path / "r"
    res = _run(["--trace", small_trace, "--config", cfg, "--slo", "p99=1", "--slo", "p50=0.5", "--service-time",
                "lognormal:mean=0.1,p99=0.5", "--trials", 12, "--sim-seeds", 1, "--pareto", "--cost-per-gpu-hour",
                2.5, "--report", report])
    assert res.exit_code == 0, res.stderr
    assert "Pareto front, cost vs p99" in res.stdout and "<- recommended" in res.stdout
    assert "least cost ($)" in res.stdout
    doc = yaml.safe_load(res.stdout)
    assert doc["name"] == "Model" and doc["ray_actor_options"] == {"num_gpus": 1}
    front = yaml.safe_load((report / "pareto.yaml").read_text())
    costs = [p["cost"] for p in front]
    assert costs == sorted(costs) and all(p["p99"] > 0 for p in front)
    no_gpu = _run(["--trace", small_trace, "--slo", "p99=1", "--service-time", "exp:0.1", "--cost-per-gpu-hour", 1,
                   "--storage", "memory"])
    assert no_gpu.exit_code == 2 and "num_gpus" in no_gpu.stderr


def test_concurrency_service_model_opens_max_ongoing_requests(small_trace, tmp_path):
    model = tmp_path / "model.yaml"
    model.write_text("kind: concurrency\nconcurrency: [1, 2, 4, 8]\nlatency_s: [0.05, 0.1, 0.2, 0.4]\n")
    report = tmp_path / "r"
    res = _run(["--trace", small_trace, "--slo", "p99=1", "--service-model", model, "--trials", 10, "--sim-seeds", 1,
                "--report", report])
    assert res.exit_code == 0, res.stderr
    assert "service model concurrency" in res.stdout
    trials = (report / "trials.csv").read_text().splitlines()[0]
    assert "params_max_ongoing_requests" in trials  # searched, because concurrency now has a price
    assert "max_ongoing_requests" in yaml.safe_load(res.stdout)
