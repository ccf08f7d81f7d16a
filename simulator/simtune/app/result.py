"""What an application simulation produced: a SimResult per deployment, end to end.

The ingress's requests are the trace's requests, and an ingress call ends only when
every call it awaited has ended, so the ingress's SimResult *is* the end-to-end view
(latency, status, TTFT/TPOT via `streams_from`). Replica-seconds and cost add up over
deployments.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from simtune.app.calls import CallTable
from simtune.results import SimResult, _json_default, staged_dir


@dataclass
class AppResult:
    """Per-deployment results plus the end-to-end view (the ingress's requests)."""

    deployments: dict[str, SimResult]
    ingress: str
    calls: CallTable
    wall_s: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def end_to_end(self) -> SimResult:
        """The trace's requests: a request ends when its ingress call (and so every call it
        awaited) ended, so this is the latency the client sees."""
        return self.deployments[self.ingress]

    def replica_seconds(self) -> float:
        return float(sum(r.replica_seconds() for r in self.deployments.values()))

    def gpu_seconds(self) -> float:
        return float(sum(r.replica_seconds() * r.num_gpus for r in self.deployments.values()))

    def summary(self, slo_latency_s: Optional[float] = None, cost_per_replica_hour: Optional[float] = None,
                cost_per_gpu_hour: Optional[float] = None, slo_ttft_s: Optional[float] = None,
                slo_tpot_s: Optional[float] = None) -> dict[str, Any]:
        """The end-to-end summary (same keys as SimResult.summary, replicas and cost summed
        over deployments) plus `deployments`: each deployment's own summary."""
        per = {name: r.summary(cost_per_replica_hour=cost_per_replica_hour, cost_per_gpu_hour=cost_per_gpu_hour)
               for name, r in self.deployments.items()}
        out = self.end_to_end.summary(slo_latency_s, slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s)
        rs = self.replica_seconds()
        gs = self.gpu_seconds()
        out["replicas"] = {"min": float(sum(p["replicas"]["min"] for p in per.values())),
                           "replica_seconds": rs, "replica_hours": rs / 3600.0, "gpu_hours": gs / 3600.0,
                           "max": float(sum(p["replicas"]["max"] for p in per.values())),
                           "mean": float(sum(p["replicas"]["mean"] for p in per.values()))}
        out["scaling_events"] = {k: int(sum(p["scaling_events"][k] for p in per.values()))
                                 for k in ("upscales", "downscales")}
        if cost_per_replica_hour is not None or cost_per_gpu_hour is not None:
            n = out["requests"]["total"]
            cost = float(sum(p["cost"]["total"] for p in per.values()))
            out["cost"] = {"total": cost, "per_1000_requests": cost / n * 1000 if n else None}
        out["sim"] = {"wall_s": self.wall_s, "calls": self.calls.n_calls,
                      "calls_per_s": self.calls.n_calls / self.wall_s if self.wall_s > 0 else None}
        out["deployments"] = {name: {"calls": p["requests"], "latency_s": p["latency_s"],
                                     "queue_wait_s": p["queue_wait_s"], "replicas": p["replicas"],
                                     "scaling_events": p["scaling_events"],
                                     **({"cost": p["cost"]} if "cost" in p else {}),
                                     **({k: p[k] for k in ("ttft_s", "tpot_s", "batch_size", "multiplex") if k in p})}
                              for name, p in per.items()}
        out["deployment"] = f"{self.meta.get('application', '')} (application; ingress {self.ingress})"
        out.update({k: v for k, v in self.meta.items() if k not in out})
        return out


    # -- files ------------------------------------------------------------------------
    def write(self, out_dir: "str | Path", slo_latency_s: Optional[float] = None, plot: bool = True,
              summary: Optional[dict] = None) -> Path:
        """summary.json, requests.parquet (end to end), calls.parquet (every call, with its
        deployment and request), replicas.csv/decisions.csv (with a deployment column) and
        timeline.png, written into a temporary sibling folder and renamed at the end."""
        import pandas as pd

        with staged_dir(out_dir) as tmp:
            summary = summary or self.summary(slo_latency_s)
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default))
            self.end_to_end.requests.to_parquet(tmp / "requests.parquet", index=False)
            frames, reps, decs = [], [], []
            for name, r in self.deployments.items():
                df = r.requests
                df.insert(0, "deployment", name)
                d = self.calls.names.index(name)
                df.insert(1, "request", self.calls.root[self.calls.calls_of(d)])
                frames.append(df)
                rp = r.replicas
                rp.insert(0, "deployment", name)
                reps.append(rp)
                dc = r.decisions
                dc.insert(0, "deployment", name)
                decs.append(dc)
            pd.concat(frames, ignore_index=True).to_parquet(tmp / "calls.parquet", index=False)
            pd.concat(reps, ignore_index=True).to_csv(tmp / "replicas.csv", index=False)
            pd.concat(decs, ignore_index=True).to_csv(tmp / "decisions.csv", index=False)
            if plot:
                plot_app_timeline(self, tmp / "timeline.png", slo_latency_s=slo_latency_s)
        return Path(out_dir)


def plot_app_timeline(result: AppResult, path: str | Path, slo_latency_s: Optional[float] = None,
                      title: Optional[str] = None) -> Path:
    """Offered load and end-to-end latency on top, then one replica panel per deployment
    (running and target), all on one time axis: which stage scaled, and when."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from simtune.plots import _bin_width

    e2e = result.end_to_end
    horizon = max(e2e.horizon, 1e-9)
    w = _bin_width(horizon)
    edges = np.arange(0, horizon + w, w)
    scale, unit = (3600.0, "h") if horizon > 4 * 3600 else ((60.0, "min") if horizon > 600 else (1.0, "s"))
    centers = (edges[:-1] + w / 2) / scale
    names = list(result.deployments)
    fig, axes = plt.subplots(2 + len(names), 1, figsize=(11, 3 + 1.8 * (2 + len(names))), sharex=True,
                             constrained_layout=True)
    counts, _ = np.histogram(e2e.arrival, bins=edges)
    axes[0].plot(centers, counts / w, color="tab:gray", lw=1)
    axes[0].set_ylabel("requests/s")
    axes[0].set_title(title or f"application {result.meta.get('application', '')}: offered load, end-to-end "
                               "latency, replicas per deployment")
    ok = e2e.status == 200
    lat = e2e.latency
    idx = np.digitize(e2e.arrival, edges) - 1
    for q, color in ((50, "tab:blue"), (99, "tab:red")):
        vals = np.full(len(centers), np.nan)
        for b in np.unique(idx[ok]):
            if 0 <= b < len(vals):
                vals[b] = np.percentile(lat[ok & (idx == b)], q)
        axes[1].plot(centers, vals, color=color, lw=1, label=f"p{q}")
    if slo_latency_s:
        axes[1].axhline(slo_latency_s, color="k", ls="--", lw=0.8, label="SLO")
    axes[1].set_ylabel("end-to-end latency (s)")
    axes[1].legend(loc="upper right", fontsize=8)
    for ax, name in zip(axes[2:], names):
        df = result.deployments[name].replicas
        t = np.append(df.time.to_numpy(), horizon) / scale
        ax.step(t, np.append(df.running.to_numpy(), df.running.iloc[-1]), where="post", color="tab:blue",
                label="running")
        ax.step(t, np.append(df.target.to_numpy(), df.target.iloc[-1]), where="post", color="tab:orange", ls=":",
                label="target")
        ax.set_ylabel(f"{name}\nreplicas")
        ax.legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel(f"time ({unit})")
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
