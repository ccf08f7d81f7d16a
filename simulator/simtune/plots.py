"""Plots people look at instead of tables: the replica/latency timeline of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from simtune.dataplane import OK  # noqa: E402


def _bin_width(horizon: float) -> float:
    for w in (1, 5, 10, 30, 60, 300, 600, 1800, 3600):
        if horizon / w <= 400:
            return float(w)
    return 3600.0


def plot_timeline(result, path: str | Path, slo_latency_s: Optional[float] = None,
                  others: Sequence[tuple[str, object]] = (), title: Optional[str] = None) -> Path:
    """Three stacked panels: offered load, replicas (running/target), latency p50/p99.

    `others` adds (label, SimResult) pairs drawn as extra replica/latency lines, e.g. the
    current config against a recommendation.
    """
    path = Path(path)
    horizon = max(result.horizon, 1e-9)
    w = _bin_width(horizon)
    edges = np.arange(0, horizon + w, w)
    fig, axes = plt.subplots(3, 1, figsize=(11, 8), sharex=True, constrained_layout=True)
    scale, unit = (3600.0, "h") if horizon > 4 * 3600 else ((60.0, "min") if horizon > 600 else (1.0, "s"))
    centers = (edges[:-1] + w / 2) / scale

    counts, _ = np.histogram(result.arrival, bins=edges)
    axes[0].plot(centers, counts / w, color="tab:gray", lw=1)
    bad = result.status != OK
    if bad.any():
        c_bad, _ = np.histogram(result.arrival[bad], bins=edges)
        axes[0].plot(centers, c_bad / w, color="tab:red", lw=1, label="rejected / timed out / failed")
        axes[0].legend(loc="upper right", fontsize=8)
    axes[0].set_ylabel(f"requests/s ({w:g}s bins)")
    axes[0].set_title(title or "offered load")

    def draw_replicas(res, label, color, ls="-"):
        df = res.replicas
        t = np.append(df.time.to_numpy(), res.horizon) / scale
        axes[1].step(t, np.append(df.running.to_numpy(), df.running.iloc[-1]), where="post", color=color,
                     ls=ls, label=f"{label} running")
        axes[1].step(t, np.append(df.target.to_numpy(), df.target.iloc[-1]), where="post", color=color,
                     ls=":", alpha=0.7, label=f"{label} target")

    draw_replicas(result, "sim" if not others else "this", "tab:blue")
    palette = ["tab:orange", "tab:green", "tab:purple"]
    for (label, res), color in zip(others, palette):
        draw_replicas(res, label, color, "--")
    axes[1].set_ylabel("replicas")
    axes[1].legend(loc="upper right", fontsize=8, ncol=2)

    def draw_latency(res, label, color):
        ok = res.status == OK
        idx = np.digitize(res.arrival[ok], edges) - 1
        lat = res.latency[ok]
        p50 = np.full(len(edges) - 1, np.nan)
        p99 = np.full(len(edges) - 1, np.nan)
        if lat.size:
            order = np.argsort(idx, kind="stable")
            idx_s, lat_s = idx[order], lat[order]
            bounds = np.searchsorted(idx_s, np.arange(len(edges)))
            for b in range(len(edges) - 1):
                seg = lat_s[bounds[b]:bounds[b + 1]]
                if seg.size:
                    p50[b], p99[b] = np.percentile(seg, [50, 99])
        axes[2].plot(centers, p99, color=color, lw=1, label=f"{label} p99")
        axes[2].plot(centers, p50, color=color, lw=1, alpha=0.5, ls="--", label=f"{label} p50")

    draw_latency(result, "sim" if not others else "this", "tab:blue")
    for (label, res), color in zip(others, palette):
        draw_latency(res, label, color)
    if slo_latency_s is not None:
        axes[2].axhline(slo_latency_s, color="tab:red", lw=0.8, ls=":", label=f"SLO {slo_latency_s:g}s")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("latency (s)")
    axes[2].set_xlabel(f"time ({unit})")
    axes[2].legend(loc="upper right", fontsize=8, ncol=2)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
