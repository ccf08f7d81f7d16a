"""Fast checks of `simtune validate`'s logic on synthetic records (no Ray cluster)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from simtune.validate import calibrate as cal
from simtune.validate import compare as cmp
from simtune.validate import observe
from simtune.validate.loadgen import judge_lag


# --------------------------------------------------------------------------- observe


def _obs(polls: list[tuple[float, int, list[tuple[str, str, float]]]]) -> observe.Observation:
    o = observe.Observation()
    for i, (t, target, reps) in enumerate(polls):
        o.polls.append({"t": t, "rpc_s": 0.004, "target": target, "status": "HEALTHY", "loadavg1": 0.5})
        for rid, state, start in reps:
            o.replicas.append((i, rid, state, start))
    return o


def test_timeline_decisions_and_lifecycles_from_polls():
    t0 = 1000.0
    a = ("a", "RUNNING", 990.0)
    polls = [
        (1000.0, 1, [a]),
        (1000.25, 3, [a]),                                       # decision seen here
        (1000.5, 3, [a, ("b", "STARTING", 1000.4), ("c", "STARTING", 1000.4)]),
        (1000.75, 3, [a, ("b", "STARTING", 1000.4), ("c", "STARTING", 1000.4)]),
        (1001.0, 3, [a, ("b", "RUNNING", 1000.4), ("c", "STARTING", 1000.4)]),
        (1001.25, 1, [a, ("b", "STOPPING", 1000.4), ("c", "STOPPING", 1000.4)]),
        (1001.5, 1, [a]),
    ]
    obs = _obs(polls)
    tl = observe.timeline(obs, t0)
    assert tl["running"].tolist() == [1, 1, 1, 1, 2, 1, 1]
    assert tl["starting"].tolist() == [0, 0, 2, 2, 1, 0, 0]
    assert tl["stopping"].tolist() == [0, 0, 0, 0, 0, 2, 0]
    dec = observe.decisions_from_polls(obs, t0)
    assert dec[["from_target", "to_target"]].values.tolist() == [[1, 3], [3, 1]]
    assert dec["time"].iloc[0] == pytest.approx(0.125)
    life = observe.replica_lifecycles(obs, t0, dec).set_index("replica_id")
    assert bool(life.loc["a", "initial"]) is True
    # b: created 0.4, RUNNING first seen at 1.0, last seen STARTING at 0.75 -> midpoint 0.875
    assert life.loc["b", "running"] == pytest.approx(0.875)
    assert life.loc["b", "startup_s"] == pytest.approx(0.475)
    assert life.loc["b", "cohort"] == 2
    assert life.loc["b", "decision_time"] == pytest.approx(0.125)
    assert np.isnan(life.loc["c", "running"])  # never ran (cancelled while starting)


def test_controller_log_parsing_and_merge():
    t0 = datetime(2026, 1, 1, 12, 0, 0).timestamp()
    lines = [
        "INFO 2026-01-01 12:00:10,250 controller 42 -- Upscaling Deployment(name='standin', app='x') "
        "from 1 to 3 replicas. Current ongoing requests: 6.00, current running replicas: 1.",
        "INFO 2026-01-01 12:00:11,000 controller 42 -- Adding 2 replicas to Deployment(name='standin', app='x').",
        "INFO 2026-01-01 12:00:20,500 controller 42 -- Downscaling Deployment(name='other', app='x') "
        "from 3 to 1 replicas. Current ongoing requests: 0.00, current running replicas: 3.",
    ]
    log = observe.parse_controller_log(lines, "x", "standin", t0)
    assert log[["from_target", "to_target"]].values.tolist() == [[1, 3]]
    assert log["time"].iloc[0] == pytest.approx(10.25, abs=1e-3)
    assert log["total_num_requests"].iloc[0] == 6.0
    polled = pd.DataFrame([{"time": 10.3, "from_target": 1, "to_target": 3, "uncertainty_s": 0.125,
                            "total_num_requests": np.nan, "source": "poll"},
                           {"time": 30.0, "from_target": 3, "to_target": 0, "uncertainty_s": 0.125,
                            "total_num_requests": np.nan, "source": "poll"}])
    merged = observe.merge_decisions(polled, log)
    assert merged["source"].tolist() == ["log", "poll"]


def test_step_integral():
    t = np.array([0.0, 10.0, 20.0])
    v = np.array([1, 3, 1])
    assert observe.step_integral(t, v, 0.0, 30.0) == pytest.approx(10 + 30 + 10)
    assert observe.step_integral(t, v, 5.0, 15.0) == pytest.approx(5 + 15)


# --------------------------------------------------------------------------- compare


def _dec(rows):
    return pd.DataFrame(rows, columns=["time", "from_target", "to_target"])


def test_match_events_aligns_in_order_and_by_direction():
    real = _dec([(10.0, 1, 3), (40.0, 3, 1), (70.0, 1, 2)])
    sim = _dec([(11.0, 1, 4), (38.5, 4, 1), (55.0, 1, 0)])
    ev = cmp.match_events(real, sim, window_s=5.0)
    assert [(m["real_time"], m["sim_time"]) for m in ev["matched"]] == [(10.0, 11.0), (40.0, 38.5)]
    assert ev["max_abs_dt_s"] == pytest.approx(1.5)
    assert [u["time"] for u in ev["unmatched_real"]] == [70.0]
    assert [u["time"] for u in ev["unmatched_sim"]] == [55.0]
    assert ev["same_size"] == 1


def test_step_mae_and_gate():
    t_a, v_a = np.array([0.0, 10.0]), np.array([1.0, 3.0])
    t_b, v_b = np.array([0.0, 12.0]), np.array([1.0, 3.0])
    assert cmp.step_mae(t_a, v_a, t_b, v_b, 0.0, 20.0) == pytest.approx(2 * 2 / 20)
    real = cmp.Side("real", pd.DataFrame({"time": [0.0, 10.0], "running": [1, 3], "starting": [0, 0],
                                          "stopping": [0, 0], "target": [1, 3]}),
                    _dec([(9.0, 1, 3)]), np.array([0.1, 0.2, 0.3] * 40), np.array([200] * 120 + [503]), 20.0)
    sim = cmp.Side("sim", pd.DataFrame({"time": [0.0, 11.0], "running": [1, 3], "starting": [0, 0],
                                        "stopping": [0, 0], "target": [1, 3]}),
                   _dec([(10.5, 1, 3)]), np.array([0.1, 0.2, 0.33] * 40), np.array([200] * 121), 25.0)
    m = cmp.compare_sides(real, sim)
    assert m["window_s"] == [0.0, 20.0]
    assert m["replica_seconds"]["real"] == pytest.approx(10 + 30)
    assert m["replica_seconds"]["sim"] == pytest.approx(11 + 27)
    assert m["replica_seconds"]["error_pct"] == pytest.approx(-5.0)
    assert m["requests"]["real"]["rejected"] == 1 and m["requests"]["sim"]["rejected"] == 0
    assert m["latency_s"]["p99"]["error_pct"] == pytest.approx(10.0)
    verdict = cmp.apply_gate(m, cmp.Gate(replica_seconds_pct=5.001, event_dt_s=2.0, p99_pct=10.001))
    assert verdict["pass"]
    verdict = cmp.apply_gate(m, cmp.Gate(replica_seconds_pct=4.9, event_dt_s=1.6))
    assert not verdict["pass"] and [c["pass"] for c in verdict["checks"]] == [False, True, True]


def test_unmatched_real_event_fails_event_gate():
    m = {"replica_seconds": {"error_pct": 0.0}, "latency_s": {"p99": {"error_pct": 0.0}, "p50": {"error_pct": 0.0}},
         "running_replicas_mae": 0.0,
         "scaling_events": {"unmatched_real": [{"time": 3.0}], "max_abs_dt_s": 0.1}}
    assert not cmp.apply_gate(m, cmp.Gate(event_dt_s=2.0))["pass"]


def test_overlay_plot_writes_png(tmp_path):
    tl = pd.DataFrame({"time": [0.0, 5.0], "running": [1, 2], "starting": [0, 0], "stopping": [0, 0], "target": [1, 2]})
    arr = np.linspace(0, 20, 100)
    lat = np.full(100, 0.1)
    st = np.array([200] * 95 + [503] * 5)
    sides = [cmp.Side(lbl, tl, _dec([]), lat, st, 20.0, arr, lat) for lbl in ("real", "sim")]
    cmp.plot_overlay(sides, tmp_path / "o.png", "t")
    assert (tmp_path / "o.png").stat().st_size > 1000


# --------------------------------------------------------------------------- calibrate


def test_fit_startup_linear_in_concurrency():
    rows = [("i", -5.0, -2.0, True)]
    # one alone (2.0 s), then four together (2 + 0.5*3 = 3.5 s each)
    rows += [("a", 10.0, 12.0, False)]
    rows += [(f"b{k}", 30.0, 33.5, False) for k in range(4)]
    df = pd.DataFrame(rows, columns=["replica_id", "created", "running", "initial"])
    df["startup_s"] = df["running"] - df["created"]
    fit = cal.fit_startup(df)
    assert fit["kind"] == "linear"
    assert fit["base_s"] == pytest.approx(2.0)
    assert fit["per_extra_s"] == pytest.approx(0.5)
    assert len(fit["values"]) == 5  # the initial replica is excluded


def test_fit_startup_single_level_is_empirical():
    df = pd.DataFrame({"replica_id": ["a", "b"], "created": [1.0, 20.0], "running": [3.0, 22.5], "initial": [False, False]})
    df["startup_s"] = df["running"] - df["created"]
    fit = cal.fit_startup(df)
    assert fit["kind"] == "empirical" and fit["values"] == [2.0, 2.5]


def test_fit_overheads_ignores_requests_that_queued():
    rng = np.random.default_rng(0)
    n = 400
    sent = np.sort(rng.uniform(0, 100, n))
    st = np.full(n, 0.1)
    # a free replica: handler starts 4 ms after send, response 5 ms after the handler
    hs = sent + 0.004
    he = hs + st + 0.001
    done = he + 0.005
    df = pd.DataFrame({"scheduled": sent, "sent": sent, "done": done, "status": 200, "replica": "r",
                       "handler_start": hs, "handler_end": he, "service_time": st})
    df["latency"] = df["done"] - df["sent"]
    # 20 requests that queued 2 s for a slot while the single replica (cap 1) was busy
    q = df.index[:20]
    df.loc[q, ["handler_start", "handler_end", "done"]] += 2.0
    df["latency"] = df["done"] - df["sent"]
    fit = cal.fit_overheads(df, max_ongoing_requests=100)
    assert fit["proxy_overhead_s"] == pytest.approx(0.009, abs=1e-6)
    assert fit["slot_overhead_s"] == pytest.approx(0.001, abs=1e-6)


# --------------------------------------------------------------------------- load generator


def test_judge_lag_rule():
    ok = judge_lag(np.full(1000, 0.001))
    assert ok.valid
    late = judge_lag(np.r_[np.full(980, 0.001), np.full(20, 0.08)])
    assert not late.valid and "p99" in late.reason
    spike = judge_lag(np.r_[np.full(999, 0.001), [0.8]])
    assert not spike.valid and "max" in spike.reason
    assert not judge_lag(np.r_[np.full(999, 0.001), [np.nan]]).valid  # never sent


def test_loadgen_replays_open_loop_against_a_local_server(tmp_path):
    """The generator keeps to schedule and records status/handler times (no Ray)."""
    from aiohttp import web

    async def handler(request):
        st = float(request.query["st"])
        t = time.time()
        await asyncio.sleep(st)
        if st > 0.04:
            return web.Response(status=503)
        return web.json_response({"replica": "r1", "t_start": t, "t_end": time.time()})

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_get("/x", handler)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]
    th = threading.Thread(target=loop.run_forever, daemon=True)
    th.start()
    try:
        ts = np.arange(0, 2.0, 0.02)  # 50 req/s for 2 s
        st = np.where(np.arange(len(ts)) % 10 == 0, 0.05, 0.02)
        np.savez(tmp_path / "t.npz", timestamps=ts, service_time=st)
        proc = subprocess.Popen([sys.executable, "-m", "simtune.validate.loadgen", "--url", f"http://127.0.0.1:{port}/x",
                                 "--trace", str(tmp_path / "t.npz"), "--out", str(tmp_path / "r.parquet")],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "READY"
        proc.stdin.write(f"{time.time() + 0.5!r}\n")
        proc.stdin.flush()
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "DONE" in out
    finally:
        loop.call_soon_threadsafe(loop.stop)
    df = pd.read_parquet(tmp_path / "r.parquet")
    assert len(df) == len(ts)
    assert (df["status"] == 503).sum() == 10 and (df["status"] == 200).sum() == 90
    lag = df["sent"] - df["scheduled"]
    assert lag.min() >= 0 and lag.quantile(0.5) < 0.01
    ok = df[df["status"] == 200]
    assert (ok["replica"] == "r1").all()
    assert ((ok["handler_end"] - ok["handler_start"]) >= 0.019).all()
    assert ((ok["done"] - ok["sent"]) >= (ok["handler_end"] - ok["handler_start"])).all()
    side = json.loads((tmp_path / "r.parquet.json").read_text())
    assert "cpu_s" in side and "loadavg_start" in side


def test_slice_window_and_parse():
    from simtune.trace import Trace
    from simtune.validate import pipeline

    tr = Trace(np.arange(10.0), {"service_time": np.full(10, 0.1)})
    out = pipeline.slice_window(tr, pipeline.parse_window("3:6"))
    assert out.timestamps.tolist() == [0.0, 1.0, 2.0]
    from simtune.errors import InputError

    with pytest.raises(InputError):
        pipeline.parse_window("abc")
    with pytest.raises(InputError):
        pipeline.slice_window(tr, (50.0, 60.0))


def test_build_application_applies_the_config_to_stand_in_and_user_app(tmp_path, monkeypatch):
    """The deployed app carries the config under test (no cluster needed to build it)."""
    from simtune.serve_config import load_deployment
    from simtune.validate.harness import RealRunOptions, build_application

    spec = load_deployment({"name": "standin", "max_ongoing_requests": 3, "max_queued_requests": 7,
                            "ray_actor_options": {"num_cpus": 0},
                            "autoscaling_config": {"min_replicas": 0, "max_replicas": 4}})
    app = build_application(spec, RealRunOptions(startup_s=1.5))
    dep = app._bound_deployment
    assert dep.name == "standin"
    assert dep._deployment_config.max_ongoing_requests == 3
    assert dep._deployment_config.max_queued_requests == 7
    assert dep._deployment_config.autoscaling_config.max_replicas == 4
    assert dep.init_kwargs == {"startup_s": 1.5, "gpu_work": False}

    (tmp_path / "userapp.py").write_text(
        "from ray import serve\n"
        "@serve.deployment\n"
        "class standin:\n"
        "    def __init__(self, k):\n"
        "        self.k = k\n"
        "    async def __call__(self, request):\n"
        "        return 'ok'\n"
        "app = standin.bind(42)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    user = build_application(spec, RealRunOptions(import_path="userapp:app"))
    udep = user._bound_deployment
    assert udep._deployment_config.max_ongoing_requests == 3 and udep.init_args == (42,)
    from simtune.errors import InputError

    other = load_deployment({"name": "other"})
    with pytest.raises(InputError, match="ingress deployment"):
        build_application(other, RealRunOptions(import_path="userapp:app"))


def _fake_real_from_sim(trace, spec, params):
    """A RealRun built from a simulation: comparing the simulator with itself must give ~0 error."""
    from simtune.simulate import simulate
    from simtune.validate.harness import RealRun

    res = simulate(trace, spec, params)
    req = res.requests
    ok = req["status"] == 200
    requests = pd.DataFrame({
        "scheduled": req["arrival"], "sent": req["arrival"], "done": req["end"], "status": req["status"].astype(int),
        "replica": req["replica"].astype(str), "handler_start": req["start"].where(ok),
        "handler_end": (req["start"] + req["service_time"]).where(ok), "service_time": req["service_time"]})
    requests["latency"] = requests["done"] - requests["sent"]
    requests["lag"] = 0.0
    rows = []
    for r in res.replica_records:
        rows.append({"replica_id": str(r.rid), "created": r.created_t,
                     "running": r.running_t if r.running_t is not None else np.nan,
                     "stopping": r.stop_t if r.stop_t is not None else np.nan,
                     "gone": r.stopped_t if r.stopped_t is not None else np.nan,
                     "initial": r.created_t < 0})
    reps = pd.DataFrame(rows)
    reps["startup_s"] = reps["running"] - reps["created"]
    reps["cohort"], reps["decision_time"], reps["decision_to_running_s"] = 1, np.nan, np.nan
    dec = res.decisions[["time", "from_target", "to_target"]].copy()
    return RealRun(t0=0.0, app_name="fake", requests=requests, timeline=res.replicas, decisions=dec,
                   replicas=reps, lag=judge_lag(np.zeros(len(requests))), end_s=float(res.horizon),
                   env={"cpu_count": 2, "loadavg_1min_max": 0.5}), res


def test_pipeline_end_to_end_without_ray(tmp_path, monkeypatch):
    """Simulated 'real' run -> simulation -> report: self-comparison is near exact, files are complete."""
    from simtune.params import SimParams
    from simtune.serve_config import load_deployment
    from simtune.startup import StartupModel
    from simtune.validate import pipeline, scenarios

    sc = scenarios.get("step")
    trace, spec = sc.trace(seed=0), load_deployment(sc.config)
    params = SimParams(startup=StartupModel.constant(3.0), proxy_overhead_s=0.0, seed=0)
    fake, _ = _fake_real_from_sim(trace, spec, params)
    monkeypatch.setattr(pipeline, "run_real", lambda *a, **k: fake)
    gate = cmp.Gate(replica_seconds_pct=5.0, event_dt_s=2.0, p99_pct=10.0)
    res = pipeline.run_validation(spec, trace, pipeline.RealRunOptions(), out_dir=tmp_path / "out", seed=0,
                                  gate=gate, calibrate_to=tmp_path / "p.yaml", label="step", repeat=2)
    rep = json.loads((tmp_path / "out" / "fidelity.json").read_text())
    assert res.valid and res.passed, res.reasons
    m = rep["metrics"]
    assert abs(m["replica_seconds"]["error_pct"]) < 5
    assert m["scaling_events"]["unmatched_real"] == [] and m["scaling_events"]["max_abs_dt_s"] < 2
    assert rep["real_run_to_run"]["replica_seconds"]["error_pct"] == 0.0
    assert (tmp_path / "out" / "overlay.png").exists()
    # The calibration file is a SimParams YAML that `run --params` reads back.
    loaded = SimParams.load(tmp_path / "p.yaml")
    assert loaded.startup.kind in ("empirical", "linear")
    assert rep["real_runs"][0]["raw"]["requests"]["status"][:3] == [200, 200, 200]


def test_pipeline_leaves_nothing_when_the_real_run_fails(tmp_path, monkeypatch):
    from simtune.serve_config import load_deployment
    from simtune.validate import pipeline, scenarios
    from simtune.validate.harness import RealRunError

    def boom(*a, **k):
        raise RealRunError("deploying failed")

    monkeypatch.setattr(pipeline, "run_real", boom)
    sc = scenarios.get("burst")
    with pytest.raises(RealRunError):
        pipeline.run_validation(load_deployment(sc.config), sc.trace(0), pipeline.RealRunOptions(),
                                out_dir=tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
