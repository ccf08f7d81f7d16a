"""The plan report's figures: nodes over time, what-if curves, where the p99 comes from."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:purple"]


def _scale(horizon: float) -> tuple[float, str]:
    return (3600.0, "h") if horizon > 4 * 3600 else ((60.0, "min") if horizon > 600 else (1.0, "s"))


def _waiting_curve(cluster: Any, end: float) -> tuple[np.ndarray, np.ndarray]:
    """Replicas waiting for resources (a node being provisioned, or room) over [0, end]."""
    w = cluster.replica_waits()
    ev = []
    for r in w.itertuples():
        a = max(r.requested_t, 0.0)
        b = r.granted_t if r.granted_t == r.granted_t and r.granted_t is not None else end
        if r.released_t is not None and r.released_t == r.released_t:
            b = min(b, r.released_t)
        b = min(b, end)
        if b > a:
            ev += [(a, 1), (b, -1)]
    ev.sort()
    t, v, cur = [0.0], [0], 0
    for x, d in ev:
        cur += d
        t.append(x)
        v.append(cur)
    t.append(end)
    v.append(cur)
    return np.asarray(t), np.asarray(v)


def plot_nodes(runs: Sequence[tuple[str, Any]], path: str | Path, title: str = "nodes") -> Path:
    """Nodes (ready solid, billed incl. provisioning dashed) and replicas waiting for a node."""
    path = Path(path)
    horizon = max(res.horizon for _, res in runs)
    scale, unit = _scale(horizon)
    fig, axes = plt.subplots(2, 1, figsize=(11, 5.6), sharex=True, constrained_layout=True)
    for (label, res), color in zip(runs, COLORS):
        tl = res.cluster.timeline(0.0, res.horizon)
        t = np.append(tl.time.to_numpy(), res.horizon) / scale
        axes[0].step(t, np.append(tl.ready.to_numpy(), tl.ready.iloc[-1]), where="post", color=color,
                     label=f"{label}: ready")
        axes[0].step(t, np.append(tl.nodes.to_numpy(), tl.nodes.iloc[-1]), where="post", color=color, ls="--",
                     alpha=0.6, label=f"{label}: billed (incl. provisioning)")
        wt, wv = _waiting_curve(res.cluster, res.horizon)
        axes[1].step(wt / scale, wv, where="post", color=color, label=label)
    axes[0].set_ylabel("nodes (incl. head)")
    axes[0].set_title(title)
    axes[0].legend(loc="upper right", fontsize=8, ncol=2)
    axes[1].set_ylabel("replicas waiting\nfor a node")
    axes[1].set_xlabel(f"time ({unit})")
    axes[1].legend(loc="upper right", fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_what_if(plan: Any, path: str | Path) -> Path:
    """SLO attainment and cost per day against the traffic multiplier, as-is and re-tuned."""
    path = Path(path)
    rows = plan.what_if
    ms = [r["multiplier"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    target = plan.inputs["slo_percentile"]
    att = [100 * r["as_is"]["slo_attainment"] for r in rows]
    # The line runs through every multiplier simulated (the cliff's bisection points too).
    curve = list(getattr(plan, "as_is_curve", None) or []) or [
        {"multiplier": r["multiplier"], "slo_attainment": r["as_is"]["slo_attainment"]} for r in rows]
    c_att = [100 * c["slo_attainment"] for c in curve]
    axes[0].plot([c["multiplier"] for c in curve], c_att, ".-", color=COLORS[0], lw=1.2, alpha=0.8)
    axes[0].plot(ms, att, "o", color=COLORS[0], label="as-is")
    att = att + c_att
    cost = [r["as_is"]["cost"]["per_day"] for r in rows]
    axes[1].plot(ms, cost, "o-", color=COLORS[0], label="as-is")
    if rows and "retuned" in rows[0]:
        axes[0].plot(ms, [100 * r["retuned"]["slo_attainment"] for r in rows], "s-", color=COLORS[2], label="re-tuned")
        axes[1].plot(ms, [r["retuned"]["cost"]["per_day"] for r in rows], "s-", color=COLORS[2], label="re-tuned")
    axes[0].axhline(target, color="tab:red", ls=":", lw=1, label=f"target {target:g}%")
    for key, color, name in (("as_is", COLORS[0], "as-is"), ("retuned", COLORS[2], "re-tuned")):
        b = plan.slo_break.get(key)
        if b and b.get("multiplier") is not None:
            axes[0].axvline(b["multiplier"], color=color, ls="--", lw=0.8, alpha=0.8,
                            label=f"{name} SLO breaks ~x{b['multiplier']:g}")
    lo = min(att + [target]) if att else target
    axes[0].set_ylim(max(0.0, lo - 2), 100.5)
    axes[0].set_xlabel("traffic multiplier")
    axes[0].set_ylabel(f"requests within {plan.inputs['slo_bound_s']:g} s (%)")
    axes[0].set_title("SLO attainment")
    axes[0].legend(fontsize=8, loc="center right")
    axes[1].set_xlabel("traffic multiplier")
    axes[1].set_ylabel(f"{plan.inputs['currency']} per day")
    axes[1].set_title("cost per day")
    axes[1].set_ylim(bottom=0)
    axes[1].legend(fontsize=8, loc="upper left")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_p99(plan: Any, path: str | Path) -> Path:
    """Where the p99 comes from: current config, the same with instant nodes, the recommendation."""
    path = Path(path)
    bars = [("current", plan.baseline["latency_s"]["p99"], COLORS[0]),
            ("current,\nnodes instantly ready", plan.instant_nodes["latency_s"]["p99"], "tab:gray")]
    if plan.recommended is not None:
        bars.append(("recommended", plan.recommended["latency_s"]["p99"], COLORS[2]))
    fig, ax = plt.subplots(figsize=(6.5, 3.4), constrained_layout=True)
    labels = [b[0] for b in bars]
    vals = [b[1] or 0.0 for b in bars]
    ax.bar(labels, vals, color=[b[2] for b in bars])
    for i, v in enumerate(vals):
        ax.text(i, v, f"{v:.2f} s", ha="center", va="bottom", fontsize=9)
    ax.axhline(plan.inputs["slo_bound_s"], color="tab:red", ls=":", lw=1, label=f"SLO bound {plan.inputs['slo_bound_s']:g} s")
    ax.set_ylabel("p99 latency (s)")
    ax.set_title("p99 and the share from node waits")
    ax.legend(fontsize=8)
    ax.set_ylim(0, max(vals + [plan.inputs["slo_bound_s"]]) * 1.18)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
