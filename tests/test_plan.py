"""`simtune plan` on the GPU scenario of issue 8: the bursty Azure LLM code trace on
1-GPU nodes that take 90 s to provision. Checks the numbers the report states, the
report files, and the report as a browser shows it (headless Chromium)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import TRACES
from simtune.cli.plan_cmd import app as plan_app
from simtune.errors import InputError
from simtune.plan import plan_from_files, write_report
from simtune.plan.core import Planner, parse_multipliers, parse_plan_slo

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "traces" / "rayservice_gpu.yaml"
PRICES = REPO / "traces" / "prices.yaml"
TRACE = TRACES / "azure_llm_2023_code.csv"
SERVICE = "lognormal:mean=1.0,p99=3"
SLO = "p99=5"


@pytest.fixture(scope="module")
def gpu_plan():
    return plan_from_files(TRACE, MANIFEST, PRICES, slo=SLO, service_time=SERVICE, node_provisioning_s=90,
                           multipliers=[1, 1.5, 2, 3], seed=0)


@pytest.fixture(scope="module")
def report_dir(gpu_plan, tmp_path_factory):
    out = tmp_path_factory.mktemp("plan") / "plan_gpu"
    write_report(gpu_plan, out)
    return out


def test_gpu_scenario_node_waits_dominate_the_p99(gpu_plan):
    b = gpu_plan.baseline
    nw = b["node_wait"]
    assert not b["slo_met"]  # the current config misses p99 <= 5 s
    # Most of the p99 is the 90 s node wait: with instant nodes the same config does far better.
    assert nw["share_of_p99"] > 0.5
    assert nw["p99_s"] - nw["p99_instant_nodes_s"] == pytest.approx(nw["p99_from_node_waits_s"])
    assert nw["replica_waits"]["waited"] > 10 and nw["replica_waits"]["mean_of_waited"] >= 60
    assert gpu_plan.instant_nodes["slo_attainment"] > b["slo_attainment"]
    # Counts the report states.
    assert b["nodes"]["peak"] == 9 and b["gpus"]["peak"] == 8  # head + maxReplicas 8 one-GPU nodes
    assert 1 < b["gpus"]["mean"] < 8 and b["replicas"]["peak"] <= 8
    assert b["cost"]["per_day"] > 0 and b["cost"]["per_1000_requests"] > 0


def test_recommended_warm_capacity_beats_default(gpu_plan):
    b, r = gpu_plan.baseline, gpu_plan.recommended
    assert r["slo_met"] and not b["slo_met"]
    assert r["slo_attainment"] >= 0.99 > b["slo_attainment"]
    assert r["config"]["min_replicas"] > b["config"]["min_replicas"]  # it keeps warm capacity
    assert r["latency_s"]["p99"] <= 5.0 < b["latency_s"]["p99"]
    # ... at a stated cost: the report gives both costs and the difference.
    d = r["vs_current"]
    assert d["cost_per_day_delta"] == pytest.approx(r["cost"]["per_day"] - b["cost"]["per_day"])
    assert r["node_wait"]["share_of_p99"] < 0.1  # little of the remaining p99 is node waiting
    # The recommendation is the cheapest of the candidates that met the SLO.
    pl = gpu_plan.planner
    met = [v for k, v in pl._cache.items() if k[0] == 1.0 and not k[3] and k[2] is not None and v["slo_met"]]
    assert r["cost"]["per_day"] == pytest.approx(min(v["cost"]["per_day"] for v in met))


def test_what_if_rows_and_the_slo_cliff(gpu_plan):
    rows = {w["multiplier"]: w for w in gpu_plan.what_if}
    assert sorted(rows) == [1.0, 1.5, 2.0, 3.0]
    n1 = rows[1.0]["requests"]
    for m, w in rows.items():
        assert w["requests"] == pytest.approx(m * n1, rel=0.05)
        assert w["retuned"]["config"]["max_replicas"] >= math.ceil(8 * m)
        assert w["retuned"]["max_nodes"]["gpu-workers"] >= math.ceil(8 * m)
        assert w["as_is"]["max_nodes"]["gpu-workers"] == 8
    assert rows[3.0]["as_is"]["slo_attainment"] < rows[1.0]["as_is"]["slo_attainment"]
    assert rows[3.0]["retuned"]["slo_met"]
    assert rows[3.0]["retuned"]["cost"]["per_day"] > rows[1.0]["retuned"]["cost"]["per_day"]
    brk = gpu_plan.slo_break
    lo, hi = brk["as_is"]["bracket"]
    assert hi is not None and hi <= 1.0 and (lo is None or lo < hi)  # as-is misses already today
    if lo is not None:
        assert gpu_plan.planner.evaluate(lo)["slo_met"] and not gpu_plan.planner.evaluate(hi)["slo_met"]
    assert brk["retuned"]["multiplier"] is None and "x3" in brk["retuned"]["text"]


def test_break_point_bisection():
    bp = Planner.break_point
    ok = lambda m: m < 1.8  # noqa: E731
    r = bp(None, ok, {1.0: True, 1.5: True, 2.0: False, 3.0: False}, steps=4)
    assert r["bracket"][0] < 1.8 <= r["bracket"][1] and r["bracket"][1] - r["bracket"][0] <= 0.5 / 16 + 0.01
    r = bp(None, lambda m: m < 0.6, {1.0: False, 2.0: False}, steps=4)
    assert 0.6 <= r["multiplier"] <= 0.67 and r["bracket"][0] < 0.6
    r = bp(None, lambda m: False, {1.0: False}, steps=4)
    assert r["multiplier"] == 0.25 and "already" in r["text"]
    r = bp(None, lambda m: True, {1.0: True, 2.0: True}, steps=4)
    assert r["multiplier"] is None and "x2" in r["text"]


def test_option_parsing():
    assert parse_plan_slo("p99=5").bound_s == 5 and parse_plan_slo("p99.9=800ms").bound_s == 0.8
    assert parse_plan_slo("p95=2").target == 0.95
    for bad in ("99=5", "p100=1", "p99=-1", "p99=abc", "ttft_p99=1"):
        with pytest.raises(InputError, match="--slo"):
            parse_plan_slo(bad)
    assert parse_multipliers("2, 1,1.5") == [1.0, 1.5, 2.0]
    with pytest.raises(InputError, match="--multipliers"):
        parse_multipliers("1,x")
    with pytest.raises(InputError, match="must be > 0"):
        parse_multipliers("0")


# -- the report ------------------------------------------------------------------------------


def test_report_files_are_self_contained(report_dir, gpu_plan):
    names = sorted(p.name for p in report_dir.iterdir())
    assert names == ["nodes.png", "p99.png", "plan.json", "report.html", "report.md", "timeline.png", "whatif.png"]
    html = (report_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    # nothing fetched from elsewhere: no external src/href, no scripts
    assert not re.search(r"""(src|href)\s*=\s*['"](?!data:)""", html)
    assert "<script" not in html
    share = gpu_plan.baseline["node_wait"]["share_of_p99"]
    assert f"({100 * share:.0f}%) of the p99 comes from waiting for nodes" in html
    md = (report_dir / "report.md").read_text()
    for fig in ("p99.png", "whatif.png", "timeline.png", "nodes.png"):
        assert f"]({fig})" in md
    assert "| traffic | requests |" in md and "| x3 |" in md
    assert "cost per day" in md and "share of p99 from node waits" in md
    data = json.loads((report_dir / "plan.json").read_text())
    assert data["baseline"]["node_wait"]["share_of_p99"] == pytest.approx(share)
    assert [w["multiplier"] for w in data["what_if"]] == [1.0, 1.5, 2.0, 3.0]
    assert data["recommended"]["slo_met"] is True


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("headless Chromium is needed for this test: apt-get install -y chromium")


def screenshot(html: Path, png: Path, tmp: Path, height: int = 4200) -> None:
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp / 'chromium-profile'}", "--hide-scrollbars", f"--window-size=1280,{height}",
           f"--screenshot={png}", html.resolve().as_uri()]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert png.exists(), f"chromium wrote no screenshot (rc {p.returncode}): {p.stderr[-2000:]}"


def test_report_renders_in_headless_chromium(report_dir, tmp_path):
    from PIL import Image

    png = tmp_path / "report.png"
    screenshot(report_dir / "report.html", png, tmp_path)
    img = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    assert img.shape[1] == 1280 and img.shape[0] >= 3000
    gray = img.mean(axis=2)
    assert gray.std() > 20  # not a blank page
    non_white = (gray < 240).mean()
    assert non_white > 0.02
    # The plots are there: matplotlib's tab:blue (31,119,180) and tab:orange (255,127,14) lines
    # and bars cover many pixels, which text and tables never do.
    def near(rgb, tol=40):
        return (np.abs(img - np.array(rgb)).sum(axis=2) < tol).sum()
    assert near((31, 119, 180)) > 5000
    assert near((255, 127, 14)) > 1000
    assert near((44, 160, 44)) > 500  # tab:green: the recommended bar and re-tuned curves
    # The figures sit below the tables: the lower half of the page has most of the colour.
    lower = img[img.shape[0] // 3:]
    assert (np.abs(lower - np.array((31, 119, 180))).sum(axis=2) < 40).sum() > 4000


# -- the command line ------------------------------------------------------------------------


runner = CliRunner()


def cpu_only_manifest(tmp_path) -> Path:
    doc = yaml.safe_load(MANIFEST.read_text())
    worker = doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    del worker["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    del worker["template"]["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"]
    path = tmp_path / "cpu_only.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_cli_no_group_fits_fails_before_simulating(tmp_path, monkeypatch):
    import simtune.simulate as sim_mod

    monkeypatch.setattr(sim_mod, "simulate", lambda *a, **k: pytest.fail("simulated despite bad input"))
    res = runner.invoke(plan_app, ["--trace", str(TRACE), "--config", str(cpu_only_manifest(tmp_path)),
                                   "--prices", str(PRICES), "--service-time", SERVICE, "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert "no node group can fit one replica of llm/LLM (needs CPU 2, GPU 1)" in err
    assert "gpu-workers: GPU 0 < 1" in err and "headgroup: CPU 0 < 2" in err
    assert not (tmp_path / "o").exists()


def test_cli_price_list_missing_node_type(tmp_path, monkeypatch):
    import simtune.simulate as sim_mod

    monkeypatch.setattr(sim_mod, "simulate", lambda *a, **k: pytest.fail("simulated despite bad input"))
    prices = tmp_path / "prices.yaml"
    prices.write_text("currency: USD\ninstance_types:\n  m5.xlarge: 0.192\n")
    res = runner.invoke(plan_app, ["--trace", str(TRACE), "--config", str(MANIFEST), "--prices", str(prices),
                                   "--service-time", SERVICE])
    assert res.exit_code == 2
    assert "no price for node type 'gpu-workers' (instance type g5.xlarge)" in res.stderr


def test_cli_serve_config_needs_a_cluster(tmp_path):
    res = runner.invoke(plan_app, ["--trace", str(REPO / "traces" / "sample.csv"), "--config",
                                   str(REPO / "traces" / "sample_serve.yaml"), "--prices", str(PRICES)])
    assert res.exit_code == 2 and "--cluster" in res.stderr


def test_cli_end_to_end_small(tmp_path):
    # The first 15 minutes of the trace, no re-tuning: quick, and checks the CLI's outputs.
    import pandas as pd

    df = pd.read_csv(TRACE)
    small = tmp_path / "azure_15min.csv"
    df[df.timestamp < 900].to_csv(small, index=False)
    out = tmp_path / "report"
    res = runner.invoke(plan_app, ["--trace", str(small), "--config", str(MANIFEST), "--prices", str(PRICES),
                                   "--service-time", SERVICE, "--slo", SLO, "--no-retune", "--multipliers", "1,2",
                                   "--out", str(out), "--format", "json", "-q"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["recommended"] is None and [w["multiplier"] for w in data["what_if"]] == [1.0, 2.0]
    assert "retuned" not in data["what_if"][0] and "retuned" not in data["slo_break"]
    assert (out / "report.html").exists() and (out / "report.md").exists()
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4


def test_serve_config_with_a_separate_raycluster_manifest(tmp_path):
    import pandas as pd

    doc = yaml.safe_load(MANIFEST.read_text())
    serve = tmp_path / "serve.yaml"
    serve.write_text(doc["spec"]["serveConfigV2"])
    rc = tmp_path / "raycluster.yaml"
    rc.write_text(yaml.safe_dump({"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "rc"},
                                  "spec": doc["spec"]["rayClusterConfig"]}))
    df = pd.read_csv(TRACE)
    small = tmp_path / "t.csv"
    df[df.timestamp < 600].to_csv(small, index=False)
    a = plan_from_files(small, serve, PRICES, cluster=rc, slo=SLO, service_time=SERVICE, multipliers=[1],
                        retune=False)
    b = plan_from_files(small, MANIFEST, PRICES, slo=SLO, service_time=SERVICE, multipliers=[1], retune=False)
    assert a.baseline["cost"]["per_day"] == pytest.approx(b.baseline["cost"]["per_day"])
    assert a.baseline["slo_attainment"] == b.baseline["slo_attainment"]
    assert a.inputs["cluster"] == "rc"
