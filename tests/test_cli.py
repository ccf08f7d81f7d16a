"""`simtune run` end to end through the real CLI: outputs, JSON keys, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SIMTUNE = [sys.executable, "-m", "simtune.cli"]
SERVE = REPO / "traces" / "sample_serve.yaml"


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(SIMTUNE + list(args), capture_output=True, text=True, cwd=cwd, timeout=300)


def test_run_sample_json_and_out(tmp_path):
    out = tmp_path / "out"
    p = run("run", "--trace", str(REPO / "traces" / "sample.csv"), "--config", str(SERVE), "--format", "json",
            "--slo-latency-s", "0.5", "--out", str(out))
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    for key in ("total", "ok", "rejected", "timed_out"):
        assert key in s["requests"]
    for key in ("p50", "p90", "p95", "p99", "max", "mean"):
        assert s["latency_s"][key] > 0
    for key in ("min", "max", "mean", "replica_seconds"):
        assert key in s["replicas"]
    assert s["scaling_events"]["upscales"] >= 1 and s["sim"]["requests_per_s"] > 0
    assert 0 < s["slo"]["attainment"] <= 1
    assert sorted(f.name for f in out.iterdir()) == [
        "decisions.csv", "replicas.csv", "requests.parquet", "summary.json", "timeline.png"]
    header = (out / "replicas.csv").read_text().splitlines()[0]
    assert header == "time,running,starting,stopping,target"
    assert (out / "timeline.png").stat().st_size > 10_000


def _bad(tmp_path, trace_text: str | bytes, expect: str, *extra: str):
    trace = tmp_path / "t.csv"
    (trace.write_bytes if isinstance(trace_text, bytes) else trace.write_text)(trace_text)
    out = tmp_path / "out"
    p = run("run", "--trace", str(trace), "--config", str(SERVE), "--out", str(out), *extra)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert expect in err, err
    assert not out.exists()
    return err


@pytest.mark.parametrize("text,expect", [
    ("timestamp,service_time\n0,0.1\n,0.1\n", "row 2"),
    ("timestamp,service_time\n0,0.1\nabc,0.1\n", "row 2"),
    ("timestamp,service_time\n0,0.1\nnan,0.1\n", "row 2"),
    ("timestamp,service_time\n0,0.1\n1,-0.5\n", "row 2: negative service time"),
    ("timestamp,service_time\n0,0.1\n1,x\n", "row 2"),
    ("timestamp,service_time\n0,0.1\n1,\n", "row 2"),
    ("timestamp,service_time\n", "no rows"),
    ("", "empty"),
    ("time,service_time\n0,0.1\n", "columns found: time, service_time"),
])
def test_bad_traces(tmp_path, text, expect):
    err = _bad(tmp_path, text, expect)
    assert "t.csv" in err


def test_bad_config_and_deployment(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp,service_time\n0,0.1\n1,0.1\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: d\nautoscaling_config: {min_replicas: 3, max_replicas: 1}\n")
    p = run("run", "--trace", str(trace), "--config", str(bad), "--out", str(tmp_path / "o"))
    assert p.returncode == 2 and "bad.yaml" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = run("run", "--trace", str(trace), "--config", str(SERVE), "--deployment", "app/Nope")
    assert p.returncode == 2 and "unknown deployment 'app/Nope'" in p.stderr
    assert not (tmp_path / "o").exists()


def test_missing_service_time_needs_distribution(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp\n0\n1\n2\n")
    p = run("run", "--trace", str(trace), "--config", str(SERVE))
    assert p.returncode == 2 and "--service-time" in p.stderr
    p = run("run", "--trace", str(trace), "--config", str(SERVE), "--service-time", "lognormal:mean=0.1,p99=0.05")
    assert p.returncode == 2 and "lognormal" in p.stderr
    p = run("run", "--trace", str(trace), "--config", str(SERVE), "--service-time", "exp:0.05", "--format", "json")
    assert p.returncode == 0 and json.loads(p.stdout)["requests"]["ok"] == 3


def test_out_of_order_rows_are_sorted_with_warning(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp,service_time\n0,0.1\n5,0.1\n2,0.1\n3,0.1\n1,0.1\n")
    p = run("run", "--trace", str(trace), "--config", str(SERVE), "--format", "json")
    assert p.returncode == 0, p.stderr
    assert "3 rows were out of order" in p.stderr  # rows below the running maximum: 2, 3, 1
    assert json.loads(p.stdout)["requests"]["ok"] == 5


def test_iso_timestamps(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp,service_time\n2024-05-01T10:00:00Z,0.1\n2024-05-01T10:00:01.5Z,0.1\n")
    p = run("run", "--trace", str(trace), "--config", str(SERVE), "--format", "json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["duration_s"] >= 1.5
