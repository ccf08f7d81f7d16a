"""What a simulation produced: per-request arrays, the replica timeline, decisions.

Per-request results stay numpy arrays (millions of rows); pandas views are built on
demand for notebooks. `summary()` is the single source of the numbers that the CLI
prints, writes as JSON, and that the tuner optimises.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pandas as pd

from simtune.dataplane import FAILED, OK, REJECTED, TIMED_OUT

STATUS_NAMES = {OK: "ok", REJECTED: "rejected", TIMED_OUT: "timed_out", FAILED: "failed"}


@dataclass
class SimResult:
    arrival: np.ndarray
    start: np.ndarray
    end: np.ndarray
    status: np.ndarray
    replica: np.ndarray
    service_time: np.ndarray
    proxy_overhead_s: float
    timeline: list[tuple[float, int, int, int, int]]
    decisions_list: list[tuple[float, int, int, int, float]]
    replica_records: list[Any]
    horizon: float
    wall_s: float
    ticks_executed: int
    num_gpus: float = 0.0
    cluster: Any = None  # the Cluster model used (node timeline, cost), if any
    meta: dict[str, Any] = field(default_factory=dict)
    # Per-request service-model outputs (simtune.service_models), None when the model has none:
    ttft: Optional[np.ndarray] = None  # time to first token/chunk seen by the client (s), NaN unless OK
    tpot: Optional[np.ndarray] = None  # time per output token after the first (s), NaN unless OK
    batch_size: Optional[np.ndarray] = None  # size of the @serve.batch batch the request ran in
    model_hit: Optional[np.ndarray] = None  # multiplexed: its model was loaded when it reached the replica

    # -- per-request views -------------------------------------------------------------
    @property
    def latency(self) -> np.ndarray:
        """End-to-end latency seen by the client (NaN for requests that never ended)."""
        return self.end - self.arrival + self.proxy_overhead_s

    @property
    def requests(self) -> pd.DataFrame:
        df = pd.DataFrame({
            "arrival": self.arrival, "start": self.start, "end": self.end + self.proxy_overhead_s,
            "latency": self.latency, "status": self.status.astype(np.int16), "replica": self.replica,
            "service_time": self.service_time,
        })
        for name in ("ttft", "tpot", "batch_size", "model_hit"):
            if getattr(self, name) is not None:
                df[name] = getattr(self, name)
        return df

    @property
    def replicas(self) -> pd.DataFrame:
        """A row at every change: time, running, starting, stopping, target (from t=0)."""
        df = pd.DataFrame(self.timeline, columns=["time", "running", "starting", "stopping", "target"])
        before = df[df.time <= 0]
        after = df[df.time > 0]
        if len(before):
            first = before.iloc[[-1]].copy()
            first["time"] = 0.0
            df = pd.concat([first, after], ignore_index=True)
        return df.reset_index(drop=True)

    @property
    def decisions(self) -> pd.DataFrame:
        return pd.DataFrame(self.decisions_list,
                            columns=["time", "from_target", "to_target", "current", "total_num_requests"])

    # -- summary numbers ----------------------------------------------------------------
    def _step_integral(self, column: str) -> tuple[float, float, float, float]:
        """(integral, min, max, time-weighted mean) of a timeline column over [0, horizon]."""
        df = self.replicas
        if df.empty or self.horizon <= 0:
            return 0.0, 0.0, 0.0, 0.0
        t = np.append(df.time.to_numpy(), self.horizon)
        t = np.clip(t, 0, self.horizon)
        dur = np.diff(t)
        vals = df[column].to_numpy(dtype=float)
        area = float(np.dot(vals, dur))
        seen = vals[dur > 0] if np.any(dur > 0) else vals[-1:]
        return area, float(seen.min()), float(seen.max()), area / self.horizon

    def replica_seconds(self) -> float:
        """Seconds of replicas holding resources (starting + running + stopping)."""
        df = self.replicas
        if df.empty:
            return 0.0
        total = df.running + df.starting + df.stopping
        t = np.clip(np.append(df.time.to_numpy(), self.horizon), 0, self.horizon)
        return float(np.dot(total.to_numpy(dtype=float), np.diff(t)))

    def summary(self, slo_latency_s: Optional[float] = None, cost_per_replica_hour: Optional[float] = None,
                cost_per_gpu_hour: Optional[float] = None, slo_ttft_s: Optional[float] = None,
                slo_tpot_s: Optional[float] = None) -> dict[str, Any]:
        status = self.status
        n = int(status.shape[0])
        ok = status == OK
        lat = self.latency[ok]
        pct = (lambda q: float(np.percentile(lat, q))) if lat.size else (lambda q: None)
        rs = self.replica_seconds()
        _, rmin, rmax, rmean = self._step_integral("running")
        dec = self.decisions
        out: dict[str, Any] = {
            "requests": {
                "total": n, "ok": int(ok.sum()), "rejected": int((status == REJECTED).sum()),
                "timed_out": int((status == TIMED_OUT).sum()), "failed": int((status == FAILED).sum()),
            },
            "latency_s": {
                "p50": pct(50), "p90": pct(90), "p95": pct(95), "p99": pct(99),
                "max": float(lat.max()) if lat.size else None, "mean": float(lat.mean()) if lat.size else None,
            },
            "queue_wait_s": {
                "p50": float(np.percentile((self.start - self.arrival)[ok], 50)) if lat.size else None,
                "p99": float(np.percentile((self.start - self.arrival)[ok], 99)) if lat.size else None,
            },
            "replicas": {"min": rmin, "max": rmax, "mean": rmean, "replica_seconds": rs,
                         "replica_hours": rs / 3600.0, "gpu_hours": rs * self.num_gpus / 3600.0},
            "scaling_events": {"upscales": int((dec.to_target > dec.from_target).sum()) if len(dec) else 0,
                               "downscales": int((dec.to_target < dec.from_target).sum()) if len(dec) else 0},
            "duration_s": self.horizon,
            "sim": {"wall_s": self.wall_s, "requests_per_s": n / self.wall_s if self.wall_s > 0 else None,
                    "controller_ticks_executed": self.ticks_executed},
        }
        for name in ("ttft", "tpot"):
            arr = getattr(self, name)
            if arr is not None:
                v = arr[ok & np.isfinite(arr)]
                out[f"{name}_s"] = ({"p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90)),
                                     "p99": float(np.percentile(v, 99)), "mean": float(v.mean())}
                                    if v.size else {"p50": None, "p90": None, "p99": None, "mean": None})
        if self.model_hit is not None:
            h = self.model_hit[ok]
            out["multiplex"] = {"hit_rate": float(h.mean()) if h.size else None, "loads_or_waits": int((~h).sum())}
        if self.batch_size is not None:
            b = self.batch_size[ok & (self.batch_size > 0)]
            out["batch_size"] = ({"mean": float(b.mean()), "p50": float(np.percentile(b, 50)), "max": int(b.max())}
                                 if b.size else {"mean": None, "p50": None, "max": None})
        if slo_latency_s is not None or slo_ttft_s is not None or slo_tpot_s is not None:
            # A request meets the SLO if it succeeded and meets every bound given.
            met = ok.copy()
            slo: dict[str, Any] = {}
            for key, bound, arr in (("latency_s", slo_latency_s, self.latency), ("ttft_s", slo_ttft_s, self.ttft),
                                    ("tpot_s", slo_tpot_s, self.tpot)):
                if bound is None:
                    continue
                slo[key] = bound
                if arr is not None:
                    met &= ~(arr > bound)  # NaN (e.g. TPOT of a one-token reply) does not fail it
            slo["attainment"] = float(met.sum() / n) if n else None
            out["slo"] = slo
        if cost_per_replica_hour is not None or cost_per_gpu_hour is not None:
            cost = 0.0
            if cost_per_replica_hour is not None:
                cost += rs / 3600.0 * cost_per_replica_hour
            if cost_per_gpu_hour is not None:
                cost += rs * self.num_gpus / 3600.0 * cost_per_gpu_hour
            out["cost"] = {"total": cost, "per_1000_requests": cost / n * 1000 if n else None}
        out.update({k: v for k, v in self.meta.items() if k not in out})
        return out

    # -- files ------------------------------------------------------------------------
    def write(self, out_dir: str | os.PathLike, slo_latency_s: Optional[float] = None, plot: bool = True,
              summary: Optional[dict] = None) -> Path:
        """Write summary.json, requests.parquet, decisions.csv, replicas.csv, timeline.png
        (all at once: see `staged_dir`)."""
        with staged_dir(out_dir) as tmp:
            summary = summary or self.summary(slo_latency_s)
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default))
            self.requests.to_parquet(tmp / "requests.parquet", index=False)
            self.decisions.to_csv(tmp / "decisions.csv", index=False)
            self.replicas.to_csv(tmp / "replicas.csv", index=False)
            if plot:
                from simtune.plots import plot_timeline

                plot_timeline(self, tmp / "timeline.png", slo_latency_s=slo_latency_s)
        return Path(out_dir)


@contextlib.contextmanager
def staged_dir(out_dir: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """A temporary sibling folder to write into, renamed to `out_dir` when the block ends
    without an error and removed otherwise: an interrupted write never leaves a
    half-filled `out_dir`. What was at `out_dir` is replaced, or (replace=False) the
    rename is refused with an InputError."""
    from simtune.errors import InputError

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; an output folder is for sharing
        if out_dir.exists():
            if not replace:
                raise InputError(f"--out {out_dir}: already exists")
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    return str(obj)
