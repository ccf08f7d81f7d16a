"""Prefill/decode split vs a co-located deployment at equal cost, on the Mooncake trace.

For a GPU budget of N replicas (one replica = 8 H100s, traces/pd_engine.yaml), every
split P prefill + D decode replicas (P + D = N) of traces/pd_serve.yaml is simulated,
the split with the highest SLO attainment (TTFT and TPOT bounds) is recommended, and it
is compared with N co-located replicas of the same engine (same GPUs, same cost).

    python benchmarks/pd_vs_colocated.py [--replicas 4] [--rate-scale 0.25] [--window 0:900]
        [--slo-ttft-s 10] [--slo-tpot-s 0.1] [--out reports/examples/pd_mooncake]
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from simtune.app import simulate_app  # noqa: E402
from simtune.app.pd import colocated_app, load_pd_app  # noqa: E402
from simtune.params import SimParams  # noqa: E402
from simtune.trace.io import load_trace  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TRACE = REPO.parent / "shared/traces/mooncake_fast25_conversation.csv"
SERVE = REPO / "traces/pd_serve.yaml"
ENGINE = REPO / "traces/pd_engine.yaml"
KV = dict(kv_bytes_per_token=327680, kv_bandwidth_gbps=400)


def _fixed(doc: dict, p: int, d: int) -> dict:
    doc = copy.deepcopy(doc)
    args = doc["applications"][0]["args"]
    for key, n in (("prefill_config", p), ("decode_config", d)):
        dc = args[key].setdefault("deployment_config", {})
        dc.pop("autoscaling_config", None)
        dc["num_replicas"] = n
    return doc


def _row(label: str, res, slo_ttft: float, slo_tpot: float) -> dict:
    s = res.summary(slo_ttft_s=slo_ttft, slo_tpot_s=slo_tpot)
    return {"config": label, "gpus": None, "ttft_p50": s["ttft_s"]["p50"], "ttft_p99": s["ttft_s"]["p99"],
            "tpot_p50": s["tpot_s"]["p50"], "tpot_p99": s["tpot_s"]["p99"], "slo": s["slo"]["attainment"],
            "ok": s["requests"]["ok"], "total": s["requests"]["total"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--rate-scale", type=float, default=0.25)
    ap.add_argument("--window", default="0:900")
    ap.add_argument("--slo-ttft-s", type=float, default=10.0)
    ap.add_argument("--slo-tpot-s", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "reports/examples/pd_mooncake"))
    a = ap.parse_args()
    start, end = (float(x) for x in a.window.split(":"))
    trace = load_trace(TRACE, rate_scale=a.rate_scale, start=start, end=end, seed=a.seed)
    doc = yaml.safe_load(SERVE.read_text())
    n = a.replicas
    rows = []
    for p in range(1, n):
        app, prepare = load_pd_app(_fixed(doc, p, n - p), ENGINE, **KV)
        res = simulate_app(prepare(trace), app, SimParams(seed=a.seed))
        rows.append(_row(f"PD {p}P+{n - p}D", res, a.slo_ttft_s, a.slo_tpot_s))
    co = colocated_app(doc, ENGINE, deployment_config={"num_replicas": n})
    res = simulate_app(trace, co, SimParams(seed=a.seed))
    rows.append(_row(f"co-located x{n}", res, a.slo_ttft_s, a.slo_tpot_s))
    best = max(rows[:-1], key=lambda r: (r["slo"], -r["ttft_p99"]))
    for r in rows:
        r["gpus"] = 8 * n
    head = (f"Mooncake conversation trace, {a.window} s at x{a.rate_scale} ({len(trace):,} requests), "
            f"{n} replicas = {8 * n} H100s either way; SLO: TTFT <= {a.slo_ttft_s:g} s and TPOT <= "
            f"{a.slo_tpot_s * 1000:g} ms. Recommended split: **{best['config']}**.")
    lines = ["# Prefill/decode split vs co-located at equal cost", "", head, "",
             "| config | GPUs | TTFT p50 / p99 (s) | TPOT p50 / p99 (ms) | SLO attainment | ok / total |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        mark = " (recommended)" if r is best else ""
        lines.append(f"| {r['config']}{mark} | {r['gpus']} | {r['ttft_p50']:.2f} / {r['ttft_p99']:.2f} | "
                     f"{r['tpot_p50'] * 1000:.0f} / {r['tpot_p99'] * 1000:.0f} | {r['slo'] * 100:.1f} % | "
                     f"{r['ok']:,} / {r['total']:,} |")
    lines += ["", "![TTFT and TPOT per configuration](pd_vs_colocated.png)", "",
              f"Regenerate: `python benchmarks/pd_vs_colocated.py --replicas {n} --rate-scale {a.rate_scale} "
              f"--window {a.window}`"]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pd_vs_colocated.md").write_text(text)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
    labels = [r["config"] for r in rows]
    x = np.arange(len(rows))
    for ax, key, unit, scale in ((axes[0], "ttft", "s", 1), (axes[1], "tpot", "ms", 1000)):
        ax.bar(x - 0.2, [r[f"{key}_p50"] * scale for r in rows], 0.4, label="p50")
        ax.bar(x + 0.2, [r[f"{key}_p99"] * scale for r in rows], 0.4, label="p99")
        ax.set_xticks(x, labels, rotation=20)
        ax.set_ylabel(f"{key.upper()} ({unit})")
        ax.legend(fontsize=8)
    axes[2].bar(x, [r["slo"] * 100 for r in rows], color=["tab:green" if r is best else "tab:gray" for r in rows])
    axes[2].set_xticks(x, labels, rotation=20)
    axes[2].set_ylabel("SLO attainment (%)")
    fig.savefig(out / "pd_vs_colocated.png", dpi=110)


if __name__ == "__main__":
    main()
