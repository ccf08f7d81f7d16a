"""A composed application on real Ray Serve vs `simtune.app.simulate_app`.

`run_real_app(app, trace, opts)` deploys the stand-in application
(simtune.validate.app_standin: one deployment per topology node, each with its
config's options, doing exactly the calls and own work the simulator will simulate)
on a private local Ray (or `opts.address`), replays the trace open-loop over HTTP into
the ingress (simtune.validate.loadgen, through harness.replay_observed), polls every
deployment's replica states (one observe.Observer per deployment) and returns a
`RealAppRun`: per deployment a harness.RealRun (replica timeline, decisions, replica
lifecycles, and its calls as "requests"), the end-to-end requests, and, when the
replicas share this host, every call's handler and caller-side times.

`compare_app(real, sim)` gives per deployment the single-deployment fidelity metrics
(simtune.validate.compare.compare_sides: replica-seconds, running-replica MAE, scaling
events, call latency) plus max replicas, and the end-to-end latency (the ingress's
requests, as the client saw them). `run_app_validation` is the whole
`simtune validate --topology` command: real run, simulation with the parameters
measured in that run, comparison, fidelity.json + overlay.png.

What real Serve has that the simulator has no parameter for, measured here
(`hop_overheads`): each DeploymentHandle call costs time outside both handlers: the
request leg (caller's router -> callee's handler start) and the response leg (callee's
return -> caller resumes). The simulator's downstream calls start and return instantly.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from simtune.errors import InputError
from simtune.jsonutil import jsonable
from simtune.results import staged_dir
from simtune.validate import calibrate as cal
from simtune.validate import compare as cmp
from simtune.validate import observe
from simtune.validate.app_standin import REQUEST_TEMPLATE, CallPlan, build_app_standin, call_plan
from simtune.validate.harness import (
    RealRun, RealRunOptions, _requests_frame, _sigterm_as_interrupt, deployed_application, ray_cluster,
    replay_observed, run_env, wait_steady,
)
from simtune.validate.loadgen import LagVerdict, judge_lag

CALL_COLUMNS = ["call", "dep", "parent", "replica", "handler_start", "handler_end", "ok", "sent", "done", "own_s",
                "children_s"]


@dataclass
class RealAppRun:
    """Everything observed in one real run of an application, on the trace's time axis."""

    t0: float
    app_name: str
    ingress: str
    requests: pd.DataFrame              # end to end, one row per trace request (loadgen records)
    deployments: dict[str, RealRun]     # per deployment; `requests` = its calls (caller's view)
    calls: pd.DataFrame                 # every call (CALL_COLUMNS); empty without records
    lag: LagVerdict
    end_s: float
    plan: Optional[CallPlan] = None
    env: dict = field(default_factory=dict)
    max_ongoing: dict = field(default_factory=dict)

    def hop_overheads(self) -> dict:
        return hop_overheads(self.calls, self.max_ongoing)

    def raw_records(self) -> dict:
        out = {"t0_wall": self.t0, "app_name": self.app_name, "end_s": self.end_s,
               "load_generator": self.lag.to_dict(), "env": self.env,
               "deployments": {n: {k: v for k, v in r.raw_records().items() if k not in ("env", "load_generator")}
                               for n, r in self.deployments.items()}}
        return out


# --------------------------------------------------------------------------- records


def call_records(record_dir: Optional[Path], plan: CallPlan, t0: float) -> pd.DataFrame:
    """One row per call from the replicas' JSON-lines records (times in s from t0).

    `handler_start/end`: the callee's handler; `sent/done`: the caller's `.remote()` and
    the moment its await returned (NaN for the trace's requests: the load generator has
    those); `own_s`: the planned own work; `children_s`: time the handler spent awaiting
    its downstream calls (sum for sequential, span for parallel).
    """
    if record_dir is None or not Path(record_dir).is_dir():
        return pd.DataFrame(columns=CALL_COLUMNS)
    served, hops = [], []
    for f in sorted(glob.glob(os.path.join(str(record_dir), "*.jsonl"))):
        with open(f, errors="replace") as fh:
            for line in fh:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a stopped replica
                if r.get("call") is None:
                    continue
                served.append((int(r["call"]), r["dep"], r["replica"], r["t_start"] - t0, r["t_end"] - t0,
                               bool(r["ok"]), _children_time(r.get("hops") or [])))
                for h in r.get("hops") or []:
                    hops.append((int(h[1]), h[2] - t0, h[3] - t0))
    if not served:
        return pd.DataFrame(columns=CALL_COLUMNS)
    df = pd.DataFrame(served, columns=["call", "dep", "replica", "handler_start", "handler_end", "ok", "children_s"])
    df = df.drop_duplicates("call", keep="last").set_index("call")
    if hops:
        h = pd.DataFrame(hops, columns=["call", "sent", "done"]).drop_duplicates("call", keep="last").set_index("call")
        df = df.join(h, how="left")
    else:
        df["sent"], df["done"] = np.nan, np.nan
    idx = df.index.to_numpy()
    df["parent"] = plan.table.parent[idx]
    df["own_s"] = plan.before[idx] + plan.after[idx]
    return df.reset_index()[CALL_COLUMNS].sort_values("call").reset_index(drop=True)


def _children_time(hops: list) -> float:
    if not hops:
        return 0.0
    sent = np.array([h[2] for h in hops], dtype=float)
    done = np.array([h[3] for h in hops], dtype=float)
    # Sequential calls do not overlap: the union of the intervals is their sum; parallel
    # calls overlap: it is their span. The union covers both.
    order = np.argsort(sent)
    total, cur_s, cur_e = 0.0, sent[order[0]], done[order[0]]
    for k in order[1:]:
        if sent[k] > cur_e:
            total += cur_e - cur_s
            cur_s, cur_e = sent[k], done[k]
        else:
            cur_e = max(cur_e, done[k])
    return float(total + cur_e - cur_s)


def hop_overheads(calls: pd.DataFrame, max_ongoing: Optional[dict] = None) -> dict:
    """Per edge (caller -> callee): the time a DeploymentHandle call spends outside both
    handlers, split into the request leg (send -> callee handler start) and the
    response leg (callee handler end -> caller resumes).

    The request leg also holds any queueing in the caller's router when every callee
    replica was busy; `request_leg_free_*` keeps only calls whose callee replica had a
    free slot when they were sent (calibrate._in_flight_at on the callee's handler
    intervals), which is the pure per-hop cost.
    """
    out: dict[str, Any] = {}
    if calls is None or calls.empty:
        return out
    max_ongoing = max_ongoing or {}
    ok = calls[calls["ok"].astype(bool) & calls["sent"].notna() & calls["done"].notna()]
    if ok.empty:
        return out
    dep_of = dict(zip(calls["call"], calls["dep"]))
    all_c = calls.reset_index(drop=True)
    for callee, g in ok.groupby("dep", sort=False):
        parents = g["parent"].map(dep_of)
        for caller, gg in g.groupby(parents, sort=False):
            req = (gg["handler_start"] - gg["sent"]).to_numpy(dtype=float)
            resp = (gg["done"] - gg["handler_end"]).to_numpy(dtype=float)
            total = req + resp
            sel = all_c[all_c["dep"] == callee].reset_index(drop=True)
            busy_all = cal._in_flight_at(sel["replica"].astype(str).to_numpy(),
                                         sel["handler_start"].to_numpy(dtype=float),
                                         sel["handler_end"].to_numpy(dtype=float),
                                         sel["sent"].to_numpy(dtype=float))
            busy = pd.Series(busy_all, index=sel["call"]).reindex(gg["call"]).to_numpy()
            cap = max_ongoing.get(callee)
            free = busy < cap if cap else np.ones(len(gg), dtype=bool)
            reqf = req[free] if free.sum() >= 10 else req
            out[f"{caller}->{callee}"] = {
                "calls": int(len(gg)),
                "total_median_s": float(np.median(total)), "total_p90_s": float(np.percentile(total, 90)),
                "request_leg_median_s": float(np.median(req)), "response_leg_median_s": float(np.median(resp)),
                "request_leg_free_median_s": float(np.median(reqf)),
                "free_samples": int(free.sum()),
                "hop_overhead_s": float(np.median(reqf) + np.median(resp)),
            }
    return out


def slot_overheads(calls: pd.DataFrame) -> dict:
    """Handler time beyond the planned own work and the awaited downstream calls, per
    deployment and overall (median): what `SimParams.slot_overhead_s` models."""
    if calls is None or calls.empty:
        return {"all": None}
    ok = calls[calls["ok"].astype(bool)]
    extra = (ok["handler_end"] - ok["handler_start"] - ok["own_s"] - ok["children_s"]).astype(float)
    out = {str(d): float(np.median(e)) for d, e in extra.groupby(ok["dep"])}
    out["all"] = float(np.median(extra)) if len(extra) else None
    return out


def _deployment_requests(calls: pd.DataFrame, name: str) -> pd.DataFrame:
    """A deployment's calls as a RealRun `requests` frame (the caller's view)."""
    g = calls[(calls["dep"] == name) & calls["sent"].notna()]
    df = pd.DataFrame({"scheduled": g["sent"].to_numpy(dtype=float), "sent": g["sent"].to_numpy(dtype=float),
                       "done": g["done"].to_numpy(dtype=float),
                       "status": np.where(g["ok"].astype(bool), 200, 500).astype(np.int32),
                       "replica": g["replica"].astype("string").to_numpy(),
                       "handler_start": g["handler_start"].to_numpy(dtype=float),
                       "handler_end": g["handler_end"].to_numpy(dtype=float)})
    return _requests_frame(df)


# --------------------------------------------------------------------------- real run


def run_real_app(app: Any, trace: Any, opts: RealRunOptions, seed: int = 0) -> RealAppRun:
    """One complete real run of the stand-in application. Raises RealRunError /
    InputError; KeyboardInterrupt passes (after deleting our application)."""
    if opts.import_path:
        raise InputError("--import-path with --topology is not supported: the application run is the stand-in")
    if opts.gpu_work:
        raise InputError("--gpu-work with --topology is not supported")
    if len(trace) == 0:
        raise InputError("the trace has no requests")
    plan = call_plan(app, trace, seed)
    names = app.names
    ingress = app.topology.ingress
    duration = float(trace.timestamps[-1])
    run_opts = dataclasses.replace(opts, request_template=dict(REQUEST_TEMPLATE))
    with tempfile.TemporaryDirectory(prefix="simtune-validate-app-") as tmp, ray_cluster(opts) as cluster, \
            _sigterm_as_interrupt():
        workdir = Path(tmp)
        record_dir = workdir / "calls" if cluster["local"] else None
        by_value: tuple = ()
        if not cluster["local"]:
            from simtune.validate import app_standin

            by_value = (app_standin,)

        def build() -> Any:
            return build_app_standin(app, plan, record_dir=str(record_dir) if record_dir else None,
                                     startup_s=opts.startup_s)

        with deployed_application(build, f"application {app.app_name!r} ({', '.join(names)})", by_value) as app_name:
            fetchers = {n: observe.controller_details_fetcher(app_name, n) for n in names}
            initial = {n: wait_steady(f, opts.ready_timeout_s) for n, f in fetchers.items()}
            url = f"{cluster['http_url'].rstrip('/')}/{app_name}"
            observers = {n: observe.Observer(f, opts.poll_interval_s) for n, f in fetchers.items()}
            t0, end_s, load_start = replay_observed(url, trace, workdir, run_opts, app.ingress.request_timeout_s,
                                                    duration, list(observers.values()),
                                                    values=np.arange(len(trace), dtype=np.float64))
            raw = pd.read_parquet(workdir / "requests.parquet")
            side = json.loads((workdir / "requests.parquet.json").read_text())
            log_lines = observe.local_controller_log_lines() if cluster["local"] else None
        calls = call_records(record_dir, plan, t0)
    requests = _requests_frame(raw)
    verdict = judge_lag(requests["lag"].to_numpy(), opts.max_p99_lag_s, opts.max_lag_s)
    polls = observers[ingress].obs.polls_frame()
    env = run_env(cluster, opts, initial, load_start, polls, side)
    env.update({"call_records": "replica records" if not calls.empty else "none (remote cluster)",
                "plan_seed": seed})
    deployments: dict[str, RealRun] = {}
    for name in names:
        obs = observers[name].obs
        polled = observe.decisions_from_polls(obs, t0)
        logged = observe.parse_controller_log(log_lines, app_name, name, t0) if log_lines else None
        dec = observe.merge_decisions(polled, logged)
        dec = dec[(dec["time"] >= -0.5) & (dec["time"] <= end_s)].reset_index(drop=True)
        reqs = requests if name == ingress else _deployment_requests(calls, name)
        deployments[name] = RealRun(t0=t0, app_name=app_name, requests=reqs, timeline=observe.timeline(obs, t0),
                                    decisions=dec, replicas=observe.replica_lifecycles(obs, t0, dec), lag=verdict,
                                    end_s=end_s, env={**env, "deployment": name}, observation=obs)
    return RealAppRun(t0=t0, app_name=app_name, ingress=ingress, requests=requests, deployments=deployments,
                      calls=calls, lag=verdict, end_s=end_s, plan=plan, env=env,
                      max_ongoing={n: int(app.specs[n].max_ongoing_requests) for n in names})


# --------------------------------------------------------------------------- params


def measured_app_params(run: RealAppRun, app: Any, seed: int = 0, base: Optional[Any] = None) -> tuple[Any, dict]:
    """The parameters the simulation gets, all measured in `run`: the startup model from
    every deployment's replica startups together (they contend for the same CPUs), the
    proxy overhead from the ingress's requests, the slot overhead from the calls, the call
    overhead (SimParams.call_overhead_s) from the median hop cost over every edge."""
    from types import SimpleNamespace

    frames = [r.replicas for r in run.deployments.values() if r.replicas is not None and not r.replicas.empty]
    replicas = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    pseudo = SimpleNamespace(replicas=replicas, requests=run.requests)
    params, diag = cal.measured_params(pseudo, int(app.ingress.max_ongoing_requests), seed=seed, base=base)
    slots = slot_overheads(run.calls)
    if slots.get("all") is not None:
        params = dataclasses.replace(params, slot_overhead_s=round(max(slots["all"], 0.0), 5))
    diag["overheads"]["slot_overhead_s"] = slots.get("all")
    diag["slot_overhead_by_deployment_s"] = slots
    hops = run.hop_overheads()
    weights = [(h["hop_overhead_s"], h["calls"]) for h in hops.values() if h.get("hop_overhead_s") is not None]
    if weights:
        v = np.array([w[0] for w in weights])
        n = np.array([w[1] for w in weights], dtype=float)
        params = dataclasses.replace(params, call_overhead_s=round(max(float(np.dot(v, n) / n.sum()), 0.0), 5))
        diag["overheads"]["call_overhead_s"] = params.call_overhead_s
    return params, diag


def simulate_for(run: RealAppRun, trace: Any, app: Any, params: Any, seed: int) -> Any:
    """simulate_app with the control plane kept going to the real run's end."""
    from simtune.app.simulate import simulate_app
    from simtune.validate.pipeline import _simulate

    return _simulate(simulate_app, trace, app, params, seed, run.end_s)


# --------------------------------------------------------------------------- compare


def _max_in(tl: pd.DataFrame, col: str, end: float) -> Optional[int]:
    if tl is None or tl.empty:
        return None
    d = tl.sort_values("time", kind="stable")
    # The value in force at 0 and every value set within [0, end].
    before = d[d["time"] <= 0]
    inside = d[(d["time"] > 0) & (d["time"] <= end)]
    vals = list(inside[col]) + ([before[col].iloc[-1]] if not before.empty else [])
    return int(max(vals)) if vals else None


def compare_app(real: RealAppRun, sim: Any, match_window_s: float = cmp.DEFAULT_MATCH_WINDOW_S,
                latency_windows: Optional[dict[str, tuple[float, float]]] = None) -> dict:
    """Fidelity of `sim` (an AppResult) against `real`, per deployment and end to end.

    `latency_windows` ({label: (start, end)} in trace seconds): the end-to-end latency
    also for the requests arriving in each window, e.g. to tell a load step's transient
    from the steady state around it.
    """
    per: dict[str, dict] = {}
    for name, res in sim.deployments.items():
        if name not in real.deployments:
            continue
        rs = cmp.side_from_real(real.deployments[name])
        ss = cmp.side_from_sim(res)
        m = cmp.compare_sides(rs, ss, match_window_s)
        end = m["window_s"][1]
        m["max_replicas"] = {"real": _max_in(rs.timeline, "running", end), "sim": _max_in(ss.timeline, "running", end),
                             "real_target": _max_in(rs.timeline, "target", end),
                             "sim_target": _max_in(ss.timeline, "target", end)}
        per[name] = m
    ing = per.get(real.ingress, {})
    hops = real.hop_overheads()
    rs_real = sum(m["replica_seconds"]["real"] for m in per.values())
    rs_sim = sum(m["replica_seconds"]["sim"] for m in per.values())
    return {
        "deployments": per,
        "end_to_end": {"latency_s": ing.get("latency_s"), "requests": ing.get("requests")},
        "replica_seconds_total": {"real": rs_real, "sim": rs_sim, "error_pct": cmp.pct_error(rs_sim, rs_real)},
        "end_to_end_windows": _windows(real, sim, latency_windows or {}),
        "hops": hops,
        "end_to_end_sim_plus_hops": _sim_plus_hops(real, sim, hops),
        "slot_overhead_s": slot_overheads(real.calls),
    }


def _windows(real: RealAppRun, sim: Any, windows: dict[str, tuple[float, float]]) -> dict:
    req = real.requests
    r_ok = (req["status"] == 200).to_numpy()
    r_t, r_lat = req["scheduled"].to_numpy(dtype=float), req["latency"].to_numpy(dtype=float)
    e2e = sim.end_to_end
    s_ok = e2e.status == 200
    out = {}
    for label, (a, b) in windows.items():
        rw = r_ok & (r_t >= a) & (r_t < b)
        sw = s_ok & (e2e.arrival >= a) & (e2e.arrival < b)
        lr, ls = cmp.latency_quantiles(r_lat[rw]), cmp.latency_quantiles(e2e.latency[sw])
        out[label] = {"window_s": [float(a), float(b)], "requests": {"real": int(rw.sum()), "sim": int(sw.sum())},
                      "latency_s": {q: {"real": lr[q], "sim": ls[q], "error_pct": cmp.pct_error(ls[q], lr[q])}
                                    for q in ("p50", "p95", "p99", "mean")}}
    return out


def _sim_plus_hops(real: RealAppRun, sim: Any, hops: dict) -> Optional[dict]:
    """What a per-hop cost would do to the simulated end-to-end latency: each request's
    simulated latency plus the measured median hop overhead of every downstream call it
    made. Exact for sequential call graphs (every hop is on the request's critical
    path); None when some deployment calls in parallel, or nothing was measured."""
    table = getattr(sim, "calls", None)
    if not hops or table is None or np.any(table.mode != 0):
        return None
    names = table.names
    cost = np.zeros(table.n_calls)
    for c in np.flatnonzero(table.parent >= 0):
        edge = f"{names[int(table.dep[table.parent[c]])]}->{names[int(table.dep[c])]}"
        cost[c] = hops.get(edge, {}).get("hop_overhead_s", 0.0)
    per_request = np.bincount(table.root, weights=cost, minlength=len(sim.end_to_end.arrival))
    e2e = sim.end_to_end
    ok = e2e.status == 200
    lq_sim = cmp.latency_quantiles((e2e.latency + per_request)[ok])
    req = real.requests
    lq_real = cmp.latency_quantiles(req.loc[req["status"] == 200, "latency"].to_numpy(dtype=float))
    return {"added_per_request_s_median": float(np.median(per_request)),
            "latency_s": {q: {"real": lq_real[q], "sim": lq_sim[q], "error_pct": cmp.pct_error(lq_sim[q], lq_real[q])}
                          for q in ("p50", "p95", "p99", "mean")}}


def apply_app_gate(metrics: dict, gate: cmp.Gate, ingress: str) -> dict:
    """The gate per deployment (replica-seconds, running MAE, events) and on the
    end-to-end latency (p50/p99)."""
    checks = []
    per_dep = dataclasses.replace(gate, p50_pct=None, p99_pct=None)
    for name, m in metrics["deployments"].items():
        for c in cmp.apply_gate(m, per_dep)["checks"]:
            checks.append({**c, "metric": f"{name}: {c['metric']}"})
    e2e = cmp.Gate(p50_pct=gate.p50_pct, p99_pct=gate.p99_pct)
    if ingress in metrics["deployments"]:
        for c in cmp.apply_gate(metrics["deployments"][ingress], e2e)["checks"]:
            checks.append({**c, "metric": f"end_to_end: {c['metric']}"})
    return {"checks": checks, "pass": all(c["pass"] for c in checks)}


def plot_app_overlay(real: RealAppRun, sim: Any, path: Any, title: str = "") -> None:
    """One panel per deployment (running replicas solid, target dotted; real vs sim) and
    the end-to-end latency CDF (successful requests)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in sim.deployments if n in real.deployments]
    fig, axes = plt.subplots(len(names) + 1, 1, figsize=(11, 2.6 * (len(names) + 1)))
    axes = np.atleast_1d(axes)
    end = max(real.end_s, float(min(r.horizon for r in sim.deployments.values())))
    end = min(end, real.end_s + 5.0)
    for ax, name in zip(axes, names):
        for side, label, color in ((cmp.side_from_real(real.deployments[name]), "real", "black"),
                                   (cmp.side_from_sim(sim.deployments[name]), "sim", "tab:orange")):
            tl = side.timeline.sort_values("time")
            if tl.empty:
                continue
            t = np.append(tl["time"].to_numpy(dtype=float), end)
            ax.step(t, np.append(tl["running"].to_numpy(), tl["running"].iloc[-1]), where="post", color=color,
                    label=f"{label} running")
            ax.step(t, np.append(tl["target"].to_numpy(), tl["target"].iloc[-1]), where="post", color=color,
                    linestyle=":", alpha=0.7, label=f"{label} target")
        top = max([_max_in(s.timeline, c, end) or 1 for s in (cmp.side_from_real(real.deployments[name]),
                                                               cmp.side_from_sim(sim.deployments[name]))
                   for c in ("running", "target")])
        ax.set_ylim(-0.2, top + 0.8)
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.set_xlim(0, end)
        ax.set_ylabel("replicas")
        ax.set_title(name + (" (ingress)" if name == real.ingress else ""), fontsize=10, loc="left")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8, ncol=2)
    axes[len(names) - 1].set_xlabel("trace time (s)")
    ax = axes[-1]
    req = real.requests
    lat_real = req.loc[req["status"] == 200, "latency"].to_numpy(dtype=float)
    e2e = sim.end_to_end.requests
    lat_sim = e2e.loc[e2e["status"] == 200, "latency"].to_numpy(dtype=float)
    for lat, label, color in ((lat_real, "real", "black"), (lat_sim, "sim", "tab:orange")):
        lat = np.sort(lat[np.isfinite(lat)])
        if lat.size:
            ax.step(lat, np.arange(1, lat.size + 1) / lat.size, where="post", color=color, label=f"{label} (n={lat.size})")
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency (s)")
    ax.set_ylabel("CDF")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- command


def run_app_validation(app: Any, trace: Any, opts: RealRunOptions, *, out_dir: Path, seed: int = 0,
                       gate: Optional[cmp.Gate] = None, base_params: Optional[Any] = None,
                       calibrate_to: Optional[Path] = None, match_window_s: float = cmp.DEFAULT_MATCH_WINDOW_S,
                       label: str = "", progress: Any = None, real: Optional[RealAppRun] = None,
                       latency_windows: Optional[dict[str, tuple[float, float]]] = None) -> Any:
    """Real run, simulation with the measured parameters, comparison, report folder.

    Returns a pipeline.ValidationResult (report = the fidelity.json content). `real`: a
    run already made (tests), else one is made here. `latency_windows`: see compare_app.
    """
    from simtune.validate.pipeline import ValidationResult, _warnings, finish

    say = progress or (lambda msg: None)
    gate = gate or cmp.Gate()
    if len(trace) == 0:
        raise InputError("the trace (after --time-window) has no requests")
    if real is None:
        say(f"real run: application {app.app_name!r} ({' -> '.join(app.names)}), {len(trace)} requests over "
            f"{trace.duration:.0f} s ...")
        real = run_real_app(app, trace, opts, seed=seed)
        say(f"  done: {real.lag.reason}")
    params, diag = measured_app_params(real, app, seed=seed, base=base_params)
    sim = simulate_for(real, trace, app, params, seed)
    metrics = compare_app(real, sim, match_window_s, latency_windows)
    verdict = apply_app_gate(metrics, gate, real.ingress)
    valid = bool(real.lag.valid)
    reasons = [] if valid else [f"load generator fell behind: {real.lag.reason}"]
    report = {
        "label": label,
        "valid": valid,
        "validity_rule": {"max_p99_send_lag_s": opts.max_p99_lag_s, "max_send_lag_s": opts.max_lag_s},
        "gate": {"thresholds": dict(gate.__dict__), **verdict},
        "metrics": metrics,
        "application": {
            "name": app.app_name, "ingress": app.topology.ingress, "order": app.names, "source": app.source,
            "topology": {n: {"service_time": nd.service_time, "after_fraction": nd.after_fraction, "mode": nd.mode,
                             "calls": [dataclasses.asdict(c) for c in nd.calls]}
                         for n, nd in app.topology.nodes.items() if n in app.names},
            "options": {n: app.specs[n].deployment_options for n in app.names},
            "request_timeout_s": app.ingress.request_timeout_s,
            "calls_planned": {n: int(len(p)) for n, p in real.plan.per_deployment.items()} if real.plan else None,
        },
        "trace": {"name": trace.name, "requests": len(trace), "duration_s": trace.duration},
        "real_options": {k: v for k, v in opts.__dict__.items() if k != "request_template"},
        "warnings": _warnings([real.deployments[real.ingress]], diag),
        "sim": {"params": params.to_dict(), "summary": sim.summary(), "calibration": diag},
        "seed": seed,
        "real_run": {"load_generator": real.lag.to_dict(), "env": real.env, "raw": real.raw_records()},
    }
    out_dir = Path(out_dir)
    with staged_dir(out_dir, replace=False) as tmp:
        (tmp / "fidelity.json").write_text(json.dumps(jsonable(report), indent=1))
        plot_app_overlay(real, sim, tmp / "overlay.png", title=f"simtune validate {label}".strip())
        if not real.calls.empty:
            real.calls.to_csv(tmp / "calls.csv", index=False)
        if calibrate_to is not None:
            params.save(tmp / "calibrated_params.yaml")
    passed = finish(out_dir, calibrate_to, valid, verdict, gate, reasons)
    return ValidationResult(out_dir, report, valid, passed, reasons)
