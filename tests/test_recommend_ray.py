"""`simtune recommend --ray-address auto`: trials as tasks on a real (local) Ray cluster."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from simtune.cli import app

CLI = [sys.executable, "-c", "from simtune.cli import main; main()", "recommend"]


@pytest.mark.slow
def test_ray_tasks_give_the_same_answer_as_one_process(tmp_path):
    from simtune.trace import save_trace
    from simtune.trace.generators import diurnal

    trace = tmp_path / "diurnal.parquet"
    save_trace(diurnal(6.0, 300.0, peak_to_trough=4.0, period=300.0, seed=11), trace)
    args = ["--trace", str(trace), "--slo", "p99=0.8", "--service-time", "lognormal:mean=0.1,p99=0.5",
            "--trials", "12", "--sim-seeds", "1", "--study-name", "s"]
    local = CliRunner().invoke(app, ["recommend", *args, "--storage", f"sqlite:///{tmp_path / 'a.db'}"])
    assert local.exit_code == 0, local.stderr
    # A subprocess, so the local Ray cluster it starts (no cluster runs: `auto` falls back to
    # ray.init()) dies with it and never leaks into this test process.
    proc = subprocess.run([*CLI, *args, "--storage", f"sqlite:///{tmp_path / 'b.db'}", "--ray-address", "auto"],
                          capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == local.stdout
    assert yaml.safe_load(proc.stdout)["autoscaling_config"]
