"""Multiplexed deployment: hit rate and latency vs max_num_models_per_replica, simulated
and measured on real Ray Serve (reports/examples/multiplex_real/real_k*.csv, written by
`python -m simtune.validate.multiplex_real reports/examples/multiplex_real`).

    python benchmarks/multiplex_vs_real.py [--seeds 5] [--out reports/examples/multiplex_real]

Prints a table and writes sim_vs_real.md and sim_vs_real.png next to the real runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from simtune.app import load_app, parse_topology, simulate_app  # noqa: E402
from simtune.params import SimParams  # noqa: E402
from simtune.trace.model import Trace  # noqa: E402
from simtune.validate.multiplex_real import REFERENCE, reference_workload  # noqa: E402


def sim_runs(k: int, seeds: int) -> pd.DataFrame:
    p = REFERENCE
    arr, mids = reference_workload(p["rate"], p["duration_s"], p["n_models"], p["zipf_s"], p["seed"])
    tr = Trace(arr, columns={"model_id": mids})
    cfg = {"applications": [{"name": "m", "import_path": "x:y", "deployments": [
        {"name": "M", "num_replicas": p["num_replicas"], "max_ongoing_requests": p["max_ongoing_requests"]}]}]}
    topo = parse_topology({"ingress": "M", "deployments": {"M": {
        "service_time": f"const:{p['service_time_s']}",
        "multiplex": {"max_num_models_per_replica": k, "load_time": f"const:{p['load_time_s']}"}}}})
    app = load_app(cfg, topo)
    frames = []
    for s in range(seeds):
        r = simulate_app(tr, app, SimParams(seed=s)).end_to_end
        frames.append(pd.DataFrame({"latency_s": r.latency, "hit": r.model_hit, "seed": s}))
    return pd.concat(frames, ignore_index=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", default="reports/examples/multiplex_real")
    a = ap.parse_args()
    out = Path(a.out)
    rows = []
    for k in REFERENCE["ks"]:
        real = pd.read_csv(out / f"real_k{k}.csv")
        sim = sim_runs(k, a.seeds)
        for side, df in (("real", real), ("sim", sim)):
            lat = df.latency_s.to_numpy()
            rows.append({"k": k, "side": side, "hit_rate": float(df.hit.mean()),
                         "p50_s": float(np.percentile(lat, 50)), "p95_s": float(np.percentile(lat, 95)),
                         "p99_s": float(np.percentile(lat, 99))})
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    for side, style in (("real", "o-"), ("sim", "s--")):
        t = table[table.side == side]
        axes[0].plot(t.k, t.hit_rate, style, label=side)
        axes[1].plot(t.k, t.p50_s, style, label=f"{side} p50")
        axes[1].plot(t.k, t.p95_s, style, alpha=0.5, label=f"{side} p95")
    axes[0].set(xlabel="max_num_models_per_replica", ylabel="hit rate", xscale="log", title="model cache hits")
    axes[1].set(xlabel="max_num_models_per_replica", ylabel="latency (s)", xscale="log", yscale="log",
                title="latency")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.savefig(out / "sim_vs_real.png", dpi=110)
    p = REFERENCE
    md = ["# Multiplexing: simulated vs real Ray Serve 2.60", "",
          f"Poisson {p['rate']} req/s for {p['duration_s']} s, {p['n_models']} models Zipf s={p['zipf_s']}, "
          f"service {p['service_time_s']} s, load {p['load_time_s']} s, {p['num_replicas']} replicas, "
          f"max_ongoing_requests {p['max_ongoing_requests']}, seed {p['seed']}; simulation: {a.seeds} seeds pooled. "
          "A hit: the model was loaded when the request reached its replica.", "",
          "| k | side | hit rate | p50 s | p95 s | p99 s |", "|---|---|---|---|---|---|"]
    md += [f"| {r.k} | {r.side} | {r.hit_rate:.3f} | {r.p50_s:.3f} | {r.p95_s:.3f} | {r.p99_s:.3f} |"
           for r in table.itertuples()]
    md += ["", "![hit rate and latency vs k](sim_vs_real.png)", "",
           "Regenerate: `python benchmarks/multiplex_vs_real.py` (real runs: "
           "`python -m simtune.validate.multiplex_real reports/examples/multiplex_real`)."]
    (out / "sim_vs_real.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
