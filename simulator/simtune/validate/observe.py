"""Watching what Ray Serve really does: replica states, the autoscaler's target, decisions.

Source of truth (Ray 2.60): the controller actor's `get_deployment_details(app, name)`
(serve/_private/controller.py), which returns `DeploymentDetails`
(serve/schema.py) built by serve/_private/deployment_state.py:
DeploymentStateManager.get_deployment_details:
  * `target_num_replicas` is `DeploymentState._target_state.target_num_replicas`, i.e.
    exactly what the autoscaler last set (DeploymentState.autoscale);
  * `replicas` lists every live replica with its `state` (STARTING / RUNNING / STOPPING /
    UPDATING / RECOVERING / PENDING_MIGRATION) and `start_time_s`, stamped by the
    controller when it created the actor (DeploymentReplica.start).
`serve.status()` only gives state counts, not the target; `DeploymentDetails.
autoscaling_detail.decisions` exists in the schema but 2.60 never fills it. So decisions
are (a) target changes between polls and, when the controller log is readable (local
cluster), (b) its "Upscaling/Downscaling <id> from A to B replicas" lines, which
DeploymentState.autoscale logs at the decision tick with millisecond timestamps.

One poll is ~4 ms of controller time; at 4 Hz that is ~2% of one core.
"""

from __future__ import annotations

import glob
import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd

POLL_INTERVAL_S = 0.25
STATES = ("STARTING", "RUNNING", "STOPPING", "UPDATING", "RECOVERING", "PENDING_MIGRATION")


@dataclass
class Observation:
    """Raw poll results, kept verbatim for fidelity.json."""

    polls: list[dict] = field(default_factory=list)      # t, rpc_s, target, status, loadavg1
    replicas: list[tuple] = field(default_factory=list)  # (poll index, replica_id, state, start_time_s)
    errors: list[str] = field(default_factory=list)

    def polls_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.polls, columns=["t", "rpc_s", "target", "status", "loadavg1"])

    def replicas_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.replicas, columns=["poll", "replica_id", "state", "start_time_s"])


def controller_details_fetcher(app_name: str, deployment: str) -> Callable[[], Any]:
    """A zero-argument function returning the deployment's `DeploymentDetails` (or None)."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)

    def fetch() -> Any:
        try:
            return ray.get(controller.get_deployment_details.remote(app_name, deployment), timeout=5)
        except KeyError:
            return None

    return fetch


class Observer:
    """Polls the controller every `interval_s` in a daemon thread until `stop()`."""

    def __init__(self, fetch: Callable[[], Any], interval_s: float = POLL_INTERVAL_S) -> None:
        self._fetch = fetch
        self.interval_s = interval_s
        self.obs = Observation()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="simtune-observer", daemon=True)

    def start(self) -> "Observer":
        self._thread.start()
        return self

    def stop(self) -> Observation:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.obs

    def poll_once(self) -> None:
        a = time.time()
        try:
            details = self._fetch()
        except Exception as exc:  # keep polling; record why a sample is missing
            if len(self.obs.errors) < 100:
                self.obs.errors.append(f"{a:.3f} {type(exc).__name__}: {str(exc)[:200]}")
            return
        b = time.time()
        if details is None:
            return
        idx = len(self.obs.polls)
        self.obs.polls.append({
            "t": (a + b) / 2, "rpc_s": b - a,
            "target": int(details.target_num_replicas),
            "status": str(getattr(details.status, "value", details.status)),
            "loadavg1": os.getloadavg()[0],
        })
        for r in details.replicas:
            self.obs.replicas.append((idx, r.replica_id, str(getattr(r.state, "value", r.state)),
                                      float(r.start_time_s)))

    def _run(self) -> None:
        next_t = time.time()
        while not self._stop.is_set():
            self.poll_once()
            next_t += self.interval_s
            delay = next_t - time.time()
            if delay < 0:  # fell behind (slow RPC): re-anchor instead of bursting
                next_t = time.time()
                delay = 0
            self._stop.wait(delay)


# --------------------------------------------------------------------------- derive


def timeline(obs: Observation, t0: float) -> pd.DataFrame:
    """Replica counts per poll: time (s from t0), running, starting, stopping, target.

    `starting` includes UPDATING/RECOVERING (not yet serving); `running` includes
    PENDING_MIGRATION, as the controller's `current_num_replicas` does
    (DeploymentState.get_running_replica_ids).
    """
    polls = obs.polls_frame()
    if polls.empty:
        return pd.DataFrame(columns=["time", "running", "starting", "stopping", "target"])
    reps = obs.replicas_frame()
    counts = reps.groupby(["poll", "state"]).size().unstack(fill_value=0) if not reps.empty else pd.DataFrame()
    out = pd.DataFrame({"time": polls["t"] - t0, "target": polls["target"]})

    def col(*names: str) -> np.ndarray:
        total = np.zeros(len(polls), dtype=np.int64)
        for n in names:
            if n in counts.columns:
                total += counts[n].reindex(range(len(polls)), fill_value=0).to_numpy()
        return total

    out["running"] = col("RUNNING", "PENDING_MIGRATION")
    out["starting"] = col("STARTING", "UPDATING", "RECOVERING")
    out["stopping"] = col("STOPPING")
    return out[["time", "running", "starting", "stopping", "target"]].reset_index(drop=True)


def decisions_from_polls(obs: Observation, t0: float) -> pd.DataFrame:
    """Target changes seen between consecutive polls, timed at the midpoint of the gap."""
    polls = obs.polls_frame()
    rows = []
    for k in range(1, len(polls)):
        a, b = polls.iloc[k - 1], polls.iloc[k]
        if a["target"] != b["target"]:
            rows.append({"time": (a["t"] + b["t"]) / 2 - t0, "from_target": int(a["target"]),
                         "to_target": int(b["target"]), "uncertainty_s": (b["t"] - a["t"]) / 2,
                         "total_num_requests": np.nan, "source": "poll"})
    return pd.DataFrame(rows, columns=["time", "from_target", "to_target", "uncertainty_s",
                                       "total_num_requests", "source"])


_LOG_LINE = re.compile(
    r"^\w+ (?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) controller \d+ -- "
    r"(?P<dir>Upscaling|Downscaling) Deployment\(name='(?P<dep>[^']*)', app='(?P<app>[^']*)'\) "
    r"from (?P<a>\d+) to (?P<b>\d+) replicas\. Current ongoing requests: (?P<req>[\d.]+)"
)


def parse_controller_log(lines: list[str], app_name: str, deployment: str, t0: float) -> pd.DataFrame:
    """Decisions from the controller's log (serve/_private/deployment_state.py:
    DeploymentState.autoscale). Times are local wall-clock ms, same host as t0.

    Note: Ray only logs a decision when the running count is within the autoscaling
    bounds (`is_within_bounds`), so a decision while replicas are still starting below
    min_replicas may be missing here; `merge_decisions` fills those in from the polls.
    """
    rows = []
    for line in lines:
        m = _LOG_LINE.match(line)
        if not m or m["dep"] != deployment or m["app"] != app_name:
            continue
        wall = datetime.strptime(m["ts"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        rows.append({"time": wall - t0, "from_target": int(m["a"]), "to_target": int(m["b"]),
                     "uncertainty_s": 0.001, "total_num_requests": float(m["req"]), "source": "log"})
    return pd.DataFrame(rows, columns=["time", "from_target", "to_target", "uncertainty_s",
                                       "total_num_requests", "source"])


def local_controller_log_lines() -> Optional[list[str]]:
    """The Serve controller log lines of the local node, if this driver shares its host."""
    try:
        import ray

        node = ray._private.worker._global_node
        if node is None:
            return None
        files = glob.glob(os.path.join(node.get_logs_dir_path(), "serve", "controller_*.log"))
    except Exception:
        return None
    lines: list[str] = []
    for f in sorted(files):
        try:
            lines.extend(Path(f).read_text(errors="replace").splitlines())
        except OSError:
            continue
    return lines or None


def merge_decisions(from_polls: pd.DataFrame, from_log: Optional[pd.DataFrame],
                    tolerance_s: float = 1.0) -> pd.DataFrame:
    """Prefer log-timed decisions; keep poll-seen target changes the log does not explain.

    A poll-seen change from A to B matches a log entry with the same (from, to) within
    `tolerance_s` + the poll's uncertainty. Several log decisions inside one poll gap
    (e.g. 2->3->4) show in the polls as one change 2->4; the log's entries cover it.
    """
    if from_log is None or from_log.empty:
        return from_polls.reset_index(drop=True)
    keep = []
    log_t = from_log["time"].to_numpy()
    for _, row in from_polls.iterrows():
        near = np.abs(log_t - row["time"]) <= tolerance_s + row["uncertainty_s"]
        if not near.any():
            keep.append(row)
    out = pd.concat([from_log, pd.DataFrame(keep, columns=from_polls.columns)], ignore_index=True)
    return out.sort_values("time", kind="stable").reset_index(drop=True)


def replica_lifecycles(obs: Observation, t0: float, decisions: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """One row per replica seen: when created, first seen RUNNING, STOPPING, gone.

    `startup_s` = RUNNING time − controller's start stamp (actor creation, tick after
    the decision), with the RUNNING time taken at the midpoint between the last poll
    that saw it not yet running and the first that saw it running (so ±poll/2).
    `decision_to_running_s` adds the wait from the upscale decision that created it.
    `cohort` = how many replicas were created in the same controller tick (startup
    grows with the number starting together on a small machine).
    """
    polls = obs.polls_frame()
    reps = obs.replicas_frame()
    cols = ["replica_id", "created", "running", "stopping", "gone", "startup_s",
            "decision_time", "decision_to_running_s", "cohort", "initial"]
    if polls.empty or reps.empty:
        return pd.DataFrame(columns=cols)
    t = polls["t"].to_numpy()
    first_poll_t = t[0]
    rows = []
    for rid, g in reps.groupby("replica_id", sort=False):
        g = g.sort_values("poll")
        created = float(g["start_time_s"].iloc[0])
        run = g[g["state"].isin(["RUNNING", "PENDING_MIGRATION"])]
        stop = g[g["state"] == "STOPPING"]
        last_poll = int(g["poll"].iloc[-1])
        running = np.nan
        if not run.empty:
            p = int(run["poll"].iloc[0])
            prev = t[p - 1] if p > 0 else np.nan
            running = (t[p] + prev) / 2 if p > 0 and prev >= created else t[p]
        stopping = float(t[int(stop["poll"].iloc[0])]) if not stop.empty else np.nan
        gone = float((t[last_poll] + t[last_poll + 1]) / 2) if last_poll + 1 < len(t) else np.nan
        rows.append({"replica_id": rid, "created": created - t0,
                     "running": running - t0 if np.isfinite(running) else np.nan,
                     "stopping": stopping - t0 if np.isfinite(stopping) else np.nan,
                     "gone": gone - t0 if np.isfinite(gone) else np.nan,
                     "initial": bool(created < first_poll_t and int(g["poll"].iloc[0]) == 0
                                     and g["state"].iloc[0] == "RUNNING")})
    df = pd.DataFrame(rows)
    df["startup_s"] = df["running"] - df["created"]
    # Cohort: replicas created within one control-loop tick of each other.
    created_sorted = np.sort(df["created"].to_numpy())
    df["cohort"] = [int(np.sum(np.abs(created_sorted - c) < 0.05)) for c in df["created"]]
    df["decision_time"] = np.nan
    if decisions is not None and not decisions.empty:
        ups = decisions[decisions["to_target"] > decisions["from_target"]]
        for i, c in enumerate(df["created"]):
            before = ups[ups["time"] <= c + 0.3]
            if not before.empty:
                df.loc[i, "decision_time"] = float(before["time"].iloc[-1])
    df["decision_to_running_s"] = df["running"] - df["decision_time"]
    return df[cols].sort_values("created").reset_index(drop=True)


def step_integral(times: np.ndarray, values: np.ndarray, start: float, end: float) -> float:
    """∫ of a right-continuous step function (value[i] from times[i]) over [start, end]."""
    if end <= start or len(times) == 0:
        return 0.0
    times = np.asarray(times, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    grid = np.concatenate([[start], times[(times > start) & (times < end)], [end]])
    idx = np.searchsorted(times, grid[:-1], side="right") - 1
    vals = np.where(idx >= 0, values[np.clip(idx, 0, None)], values[0] if len(values) else 0.0)
    return float(np.sum(vals * np.diff(grid)))
