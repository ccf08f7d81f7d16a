"""`simtune trace inspect|synth|convert` through typer's runner: outputs, files, exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import TRACES
from simtune.cli.trace_cmd import trace_app
from simtune.trace import load_trace

runner = CliRunner()

SHARED = {
    "azure_llm_2023_code.csv": "8,819",
    "mooncake_fast25_conversation.csv": "12,031",
    "epa_http_1995.csv": "47,748",
    "azure_functions_2019_sample500_minute_total.csv": "3,037,902",
    "azure_functions_2019_sample500_minute_by_function.csv": "3,037,902",
    "servegen_language_m_large_10min.csv": "236,892,826",
}


def invoke(*args: str):
    return runner.invoke(trace_app, [str(a) for a in args])


@pytest.mark.parametrize("name", sorted(SHARED))
def test_inspect_every_shared_trace_with_plot(tmp_path, name):
    png = tmp_path / f"{name}.png"
    res = invoke("inspect", TRACES / name, "--plot", png)
    assert res.exit_code == 0, res.stderr
    assert f"requests     {SHARED[name]}" in res.stdout
    assert png.stat().st_size > 20_000


def test_inspect_json():
    res = invoke("inspect", TRACES / "azure_llm_2023_code.csv", "--json")
    assert res.exit_code == 0
    st = json.loads(res.stdout)
    assert st["rows"] == 8819 and [w["peak_count"] for w in st["windows"]] == [67, 327, 632]


def test_inspect_expanded_count_trace_window():
    res = invoke("inspect", TRACES / "servegen_language_m_large_10min.csv", "--start", "20h", "--end", "21h",
                 "--expand", "poisson", "--seed", "3")
    assert res.exit_code == 0, res.stderr
    assert "expanded from 600-s counts (poisson, seed 3)" in res.stdout


@pytest.mark.parametrize("args", [
    ["poisson", "--rate", "5", "-d", "10m"],
    ["steps", "--step", "0:1", "--step", "5m:10", "-d", "10m"],
    ["diurnal", "--rate", "0.5", "-d", "1d", "--peak-to-trough", "3"],
    ["hourly", "--profile", ",".join(["1"] * 12 + ["3"] * 12), "--rate", "0.2", "-d", "1d"],
    ["spikes", "--rate", "2", "-d", "30m", "--spike", "10m:8:2m:20s", "--random-spikes", "2"],
    ["mmpp", "--state-rates", "20,0.5", "--mean-durations", "30,120", "-d", "1h"],
])
def test_synth_kinds_write_canonical_parquet(tmp_path, args):
    out = tmp_path / "t.parquet"
    res = invoke("synth", *args, "-o", out, "--seed", "7", "--service-time", "exp:0.05")
    assert res.exit_code == 0, res.stderr
    trace = load_trace(out)
    assert len(trace) > 100 and trace.service_time is not None
    assert trace.meta["generator"] == args[0].replace("hourly", "hourly") and trace.meta["seed"] == 7
    again = tmp_path / "u.parquet"
    invoke("synth", *args, "-o", again, "--seed", "7", "--service-time", "exp:0.05")
    np.testing.assert_array_equal(load_trace(again).timestamps, trace.timestamps)


def test_synth_replay_with_resampled_tokens(tmp_path):
    curve = tmp_path / "curve.csv"
    curve.write_text("minute_start,rps\n0,1\n60,5\n120,2\n180,0\n")
    out = tmp_path / "r.parquet"
    res = invoke("synth", "replay", "--rate-curve", curve, "-c", "time=minute_start", "-c", "rate=rps",
                 "--interpolation", "step", "--resample-from", TRACES / "azure_llm_2023_code.csv", "-o", out)
    assert res.exit_code == 0, res.stderr
    trace = load_trace(out)
    assert abs(len(trace) - 480) < 5 * np.sqrt(480)
    src = load_trace(TRACES / "azure_llm_2023_code.csv")
    assert set(trace.columns["input_tokens"]) <= set(src.columns["input_tokens"])


def test_convert_roundtrip_and_transforms(tmp_path):
    out = tmp_path / "a.parquet"
    res = invoke("convert", TRACES / "azure_functions_2019_sample500_minute_total.csv", "-o", out,
                 "--start", "1h", "--end", "2h", "--rate-scale", "0.1", "--compress", "2")
    assert res.exit_code == 0, res.stderr
    trace = load_trace(out)
    assert trace.span == 1800 and trace.meta["expand_method"] == "uniform" and trace.meta["time_scale"] == 0.5
    assert abs(len(trace) / 1800 - 105.5 * 0.1 * 2) < 3
    raw = tmp_path / "llm.csv"
    raw.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374,44\n"
                   "2023-11-16 18:15:47.18,396,109\n")
    res = invoke("convert", raw, "-o", tmp_path / "llm.parquet")
    assert res.exit_code == 0 and "2 requests" in res.stdout
    back = load_trace(tmp_path / "llm.parquet")
    assert back.timestamps.tolist() == [0.0, 0.5] and back.meta["source_format"] == "azure-llm-2023"


@pytest.mark.parametrize("setup,args,needle", [
    (None, ["inspect", "{t}", "--trace-format", "splunk"], "unknown trace format"),
    ("when,what\n1,2\n", ["inspect", "{f}"], "columns found: when, what"),
    ("TIMESTAMP,ContextTokens\nx,1\n", ["inspect", "{f}", "-f", "azure-llm-2023"], "columns found: TIMESTAMP, ContextTokens"),
    ("timestamp\n2024-01-01\nnot a date\n", ["inspect", "{f}"], "row 2"),
    ("minute,count\n0,3\n1,-1\n", ["convert", "{f}", "-o", "{o}"], "negative count"),
    (b"", ["inspect", "{f}"], "empty (0 bytes)"),
    (bytes(range(256)) * 8, ["inspect", "{f}"], "binary"),
    (None, ["convert", "{s}", "-o", "{o}"], "--rate-scale"),
    (None, ["synth", "poisson", "-d", "1h", "-o", "{o}"], "--rate is required"),
    (None, ["synth", "poisson", "-r", "1", "-d", "soon", "-o", "{o}"], "duration 'soon'"),
    (None, ["convert", "{t}", "-o", "{tmp}/x.csv"], "name it *.parquet"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, setup, args, needle):
    f = tmp_path / "in.csv"
    if isinstance(setup, bytes):
        f.write_bytes(setup)
    elif setup is not None:
        f.write_text(setup)
    subst = {"f": f, "o": tmp_path / "o.parquet", "t": TRACES / "epa_http_1995.csv", "tmp": tmp_path,
             "s": TRACES / "servegen_language_m_large_10min.csv"}
    res = invoke(*[a.format(**subst) for a in args])
    assert res.exit_code == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr
