"""Real run vs simulation: the fidelity metrics of issue 5, the overlay plot, the gate.

Both sides are put on one time axis (trace time, t=0 at the first scheduled send) and
compared over the common window [0, T], T = min(real end, simulation horizon):
  * replica-seconds: ∫ (starting + running + stopping) dt, what a replica costs while it
    holds resources (the same definition as SimResult.replica_seconds), and the
    running-only variant;
  * time-weighted mean absolute error of the running-replica count;
  * scaling events: each real decision matched to a simulated one of the same direction
    by an order-preserving alignment (dynamic programming, like an edit distance), with
    the time difference sim − real; unmatched events on either side are listed;
  * latency p50/p95/p99 of successful requests, % error (sim − real) / real;
  * request outcome counts: ok / rejected (503) / timed out (408) / failed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pandas as pd

from simtune.validate.observe import step_integral

#: Events further apart than this are never matched.
DEFAULT_MATCH_WINDOW_S = 15.0


def pct_error(sim: Optional[float], real: Optional[float]) -> Optional[float]:
    if sim is None or real is None or not np.isfinite(sim) or not np.isfinite(real):
        return None
    if real == 0:
        return 0.0 if sim == 0 else math.inf
    return float((sim - real) / real * 100.0)


def _steps(df: pd.DataFrame, cols: list[str]) -> tuple[np.ndarray, np.ndarray]:
    d = df.sort_values("time", kind="stable")
    return d["time"].to_numpy(dtype=float), d[cols].sum(axis=1).to_numpy(dtype=float)


def step_mae(t_a: np.ndarray, v_a: np.ndarray, t_b: np.ndarray, v_b: np.ndarray, start: float, end: float) -> float:
    """Time-weighted mean |a − b| of two right-continuous step functions over [start, end]."""
    if end <= start:
        return float("nan")
    grid = np.unique(np.concatenate([[start, end], t_a[(t_a > start) & (t_a < end)], t_b[(t_b > start) & (t_b < end)]]))

    def at(t: np.ndarray, v: np.ndarray, x: np.ndarray) -> np.ndarray:
        i = np.searchsorted(t, x, side="right") - 1
        return np.where(i >= 0, v[np.clip(i, 0, None)], v[0])

    mid = grid[:-1]
    diff = np.abs(at(t_a, v_a, mid) - at(t_b, v_b, mid))
    return float(np.sum(diff * np.diff(grid)) / (end - start))


def match_events(real: pd.DataFrame, sim: pd.DataFrame, window_s: float = DEFAULT_MATCH_WINDOW_S) -> dict:
    """Order-preserving alignment of real and simulated decisions (same direction only).

    Cost: |Δt| for a match (only if |Δt| ≤ window), `window_s` for leaving an event on
    either side unmatched. Returns the matched pairs and the leftovers.
    """
    rt = real["time"].to_numpy(dtype=float)
    rd = np.sign(real["to_target"].to_numpy() - real["from_target"].to_numpy())
    st = sim["time"].to_numpy(dtype=float)
    sd = np.sign(sim["to_target"].to_numpy() - sim["from_target"].to_numpy())
    n, m = len(rt), len(st)
    cost = np.full((n + 1, m + 1), np.inf)
    cost[0, :] = np.arange(m + 1) * window_s
    cost[:, 0] = np.arange(n + 1) * window_s
    move = np.zeros((n + 1, m + 1), dtype=np.int8)  # 1 match, 2 skip real, 3 skip sim
    move[1:, 0], move[0, 1:] = 2, 3
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            best, how = cost[i - 1, j] + window_s, 2
            if cost[i, j - 1] + window_s < best:
                best, how = cost[i, j - 1] + window_s, 3
            dt = abs(st[j - 1] - rt[i - 1])
            if rd[i - 1] == sd[j - 1] and dt <= window_s and cost[i - 1, j - 1] + dt <= best:
                best, how = cost[i - 1, j - 1] + dt, 1
            cost[i, j], move[i, j] = best, how
    pairs, miss_real, miss_sim = [], [], []
    i, j = n, m
    while i > 0 or j > 0:
        how = move[i, j]
        if how == 1:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif how == 2:
            miss_real.append(i - 1)
            i -= 1
        else:
            miss_sim.append(j - 1)
            j -= 1
    pairs.reverse()
    rows = []
    for a, b in pairs:
        rows.append({"real_time": float(rt[a]), "sim_time": float(st[b]), "dt_s": float(st[b] - rt[a]),
                     "real_from": int(real["from_target"].iloc[a]), "real_to": int(real["to_target"].iloc[a]),
                     "sim_from": int(sim["from_target"].iloc[b]), "sim_to": int(sim["to_target"].iloc[b])})
    unmatched_real = [{"time": float(rt[k]), "from": int(real["from_target"].iloc[k]), "to": int(real["to_target"].iloc[k])}
                      for k in sorted(miss_real)]
    unmatched_sim = [{"time": float(st[k]), "from": int(sim["from_target"].iloc[k]), "to": int(sim["to_target"].iloc[k])}
                     for k in sorted(miss_sim)]
    dts = np.abs([r["dt_s"] for r in rows]) if rows else np.zeros(0)
    return {
        "matched": rows,
        "unmatched_real": unmatched_real,
        "unmatched_sim": unmatched_sim,
        "real_count": n, "sim_count": m,
        "max_abs_dt_s": float(dts.max()) if dts.size else (0.0 if n == 0 else None),
        "mean_abs_dt_s": float(dts.mean()) if dts.size else None,
        "same_size": int(sum(r["real_to"] == r["sim_to"] for r in rows)),
        "window_s": window_s,
    }


def outcome_counts(status: np.ndarray) -> dict:
    s = np.asarray(status)
    return {"total": int(s.size), "ok": int((s == 200).sum()), "rejected": int(np.isin(s, (503, 429)).sum()),
            "timed_out": int((s == 408).sum()),
            "failed": int((~np.isin(s, (200, 503, 429, 408))).sum())}


def latency_quantiles(lat: np.ndarray) -> dict:
    lat = np.asarray(lat, dtype=float)
    lat = lat[np.isfinite(lat)]
    if lat.size == 0:
        return {"p50": None, "p95": None, "p99": None, "mean": None}
    return {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
            "p99": float(np.percentile(lat, 99)), "mean": float(lat.mean())}


@dataclass
class Side:
    """One side of a comparison (a real run or a simulation) in common terms."""

    label: str
    timeline: pd.DataFrame   # time, running, starting, stopping, target
    decisions: pd.DataFrame  # time, from_target, to_target
    latency_ok: np.ndarray
    status: np.ndarray
    end_s: float
    arrival: Optional[np.ndarray] = None  # for the latency-over-time plot
    latency_all: Optional[np.ndarray] = None


def side_from_real(run: Any) -> Side:
    req = run.requests
    ok = (req["status"] == 200).to_numpy()
    return Side("real", run.timeline, run.decisions, req["latency"].to_numpy()[ok], req["status"].to_numpy(),
                run.end_s, arrival=req["scheduled"].to_numpy(), latency_all=req["latency"].to_numpy())


def side_from_sim(res: Any) -> Side:
    req = res.requests
    ok = (req["status"] == 200).to_numpy()
    return Side("sim", res.replicas, res.decisions, req["latency"].to_numpy()[ok], req["status"].to_numpy(),
                float(res.horizon), arrival=req["arrival"].to_numpy(), latency_all=req["latency"].to_numpy())


def compare_sides(real: Side, sim: Side, match_window_s: float = DEFAULT_MATCH_WINDOW_S) -> dict:
    """All fidelity metrics of `sim` against `real` (either may be a real run)."""
    end = float(min(real.end_s, sim.end_s))
    all_cols = ["running", "starting", "stopping"]
    rt, rv = _steps(real.timeline, all_cols)
    st, sv = _steps(sim.timeline, all_cols)
    rs_real, rs_sim = step_integral(rt, rv, 0.0, end), step_integral(st, sv, 0.0, end)
    rtr, rvr = _steps(real.timeline, ["running"])
    stt, svr = _steps(sim.timeline, ["running"])
    run_real, run_sim = step_integral(rtr, rvr, 0.0, end), step_integral(stt, svr, 0.0, end)
    in_win = lambda d: d[(d["time"] >= 0) & (d["time"] <= end)].reset_index(drop=True)  # noqa: E731
    events = match_events(in_win(real.decisions), in_win(sim.decisions), match_window_s)
    lq_real, lq_sim = latency_quantiles(real.latency_ok), latency_quantiles(sim.latency_ok)
    return {
        "window_s": [0.0, end],
        "replica_seconds": {"real": rs_real, "sim": rs_sim, "error_pct": pct_error(rs_sim, rs_real)},
        "running_replica_seconds": {"real": run_real, "sim": run_sim, "error_pct": pct_error(run_sim, run_real)},
        "running_replicas_mae": step_mae(rtr, rvr, stt, svr, 0.0, end),
        "scaling_events": events,
        "latency_s": {q: {"real": lq_real[q], "sim": lq_sim[q], "error_pct": pct_error(lq_sim[q], lq_real[q])}
                      for q in ("p50", "p95", "p99", "mean")},
        "requests": {"real": outcome_counts(real.status), "sim": outcome_counts(sim.status)},
    }


# --------------------------------------------------------------------------- gate


@dataclass
class Gate:
    """`--max-error` thresholds; None = not gated."""

    replica_seconds_pct: Optional[float] = None
    event_dt_s: Optional[float] = None
    p99_pct: Optional[float] = None
    p50_pct: Optional[float] = None
    running_mae: Optional[float] = None
    # With event_dt_s: how many real scaling events may have no simulated counterpart.
    unmatched_events: int = 0

    def any(self) -> bool:
        return any(v is not None for k, v in self.__dict__.items() if k != "unmatched_events")


def apply_gate(metrics: dict, gate: Gate) -> dict:
    """Per-threshold pass/fail; an unmatched real event fails the event gate."""
    checks = []

    def check(name: str, value: Optional[float], limit: Optional[float]) -> None:
        if limit is None:
            return
        ok = value is not None and np.isfinite(value) and abs(value) <= limit
        checks.append({"metric": name, "value": value, "limit": limit, "pass": bool(ok)})

    check("replica_seconds_error_pct", metrics["replica_seconds"]["error_pct"], gate.replica_seconds_pct)
    check("latency_p99_error_pct", metrics["latency_s"]["p99"]["error_pct"], gate.p99_pct)
    check("latency_p50_error_pct", metrics["latency_s"]["p50"]["error_pct"], gate.p50_pct)
    check("running_replicas_mae", metrics["running_replicas_mae"], gate.running_mae)
    if gate.event_dt_s is not None:
        ev = metrics["scaling_events"]
        check("scaling_event_max_abs_dt_s", ev["max_abs_dt_s"] or 0.0, gate.event_dt_s)
        check("unmatched_real_scaling_events", float(len(ev["unmatched_real"])), float(gate.unmatched_events))
    return {"checks": checks, "pass": all(c["pass"] for c in checks)}


# --------------------------------------------------------------------------- plot


def plot_overlay(sides: list[Side], path: Any, title: str = "") -> None:
    """Replicas (running, solid; target, dotted) and binned latency p50/p99 over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"real": "black", "sim": "tab:orange", "real #2": "tab:blue"}
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    end = max(s.end_s for s in sides)
    for s in sides:
        c = colors.get(s.label, None)
        tl = s.timeline.sort_values("time")
        t = np.append(tl["time"].to_numpy(), end)
        ax1.step(t, np.append(tl["running"].to_numpy(), tl["running"].iloc[-1]), where="post", color=c,
                 label=f"{s.label} running")
        ax1.step(t, np.append(tl["target"].to_numpy(), tl["target"].iloc[-1]), where="post", color=c,
                 linestyle=":", alpha=0.7, label=f"{s.label} target")
        if s.arrival is not None and s.latency_all is not None:
            bins = np.arange(0, end + 5.0, 5.0)
            idx = np.digitize(s.arrival, bins) - 1
            ok = (s.status == 200) & np.isfinite(s.latency_all)
            mids, p50, p99 = [], [], []
            for b in range(len(bins) - 1):
                sel = ok & (idx == b)
                if sel.sum() >= 3:
                    mids.append(bins[b] + 2.5)
                    p50.append(np.percentile(s.latency_all[sel], 50))
                    p99.append(np.percentile(s.latency_all[sel], 99))
            ax2.plot(mids, p50, color=c, marker=".", label=f"{s.label} p50")
            ax2.plot(mids, p99, color=c, linestyle="--", label=f"{s.label} p99")
            rej = np.isin(s.status, (503, 429))
            if rej.any():
                ax2.plot(s.arrival[rej], np.full(rej.sum(), 0.005), "|", color=c, alpha=0.4,
                         label=f"{s.label} rejected")
    ax1.set_ylabel("replicas")
    ax1.legend(loc="upper right", fontsize=8, ncol=2)
    ax1.grid(alpha=0.3)
    ax2.set_yscale("log")
    ax2.set_ylabel("latency (s), 5 s bins")
    ax2.set_xlabel("trace time (s)")
    ax2.legend(loc="upper right", fontsize=8, ncol=2)
    ax2.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
