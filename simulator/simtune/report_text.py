"""The human-readable summary `simtune run` prints (rich tables on stdout)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.table import Table


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.3f}{unit}" if abs(v) < 1000 else f"{v:,.0f}{unit}"
    return f"{v:,}{unit}"


def print_summary(s: dict, out: Optional[Path] = None, console: Optional[Console] = None) -> None:
    console = console or Console(width=100)
    req, lat, rep, sc = s["requests"], s["latency_s"], s["replicas"], s["scaling_events"]
    t = Table(title=f"simtune run: {s.get('deployment', '')}", show_header=False, title_justify="left")
    t.add_column("what", style="bold")
    t.add_column("value")
    t.add_row("requests", f"{req['total']:,} total, {req['ok']:,} ok, {req['rejected']:,} rejected (503), "
              f"{req['timed_out']:,} timed out (408), {req['failed']:,} failed (500)")
    t.add_row("latency p50/p90/p95/p99", " / ".join(_fmt(lat[k], "s") for k in ("p50", "p90", "p95", "p99")))
    t.add_row("latency max / mean", f"{_fmt(lat['max'], 's')} / {_fmt(lat['mean'], 's')}")
    for key, label in (("ttft_s", "TTFT"), ("tpot_s", "TPOT")):
        if key in s:
            t.add_row(f"{label} p50/p90/p99", " / ".join(_fmt(s[key][k], "s") for k in ("p50", "p90", "p99")))
    if "batch_size" in s and s["batch_size"]["mean"] is not None:
        t.add_row("batch size mean / max", f"{s['batch_size']['mean']:.2f} / {s['batch_size']['max']}")
    if "slo" in s:
        att = s["slo"]["attainment"]
        bounds = ", ".join(f"{k[:-2]} <= {v:g}s" for k, v in s["slo"].items() if k.endswith("_s"))
        t.add_row(f"SLO ({bounds})", "-" if att is None else f"{att * 100:.2f}% of requests")
    t.add_row("replicas min/mean/max", f"{rep['min']:.0f} / {rep['mean']:.2f} / {rep['max']:.0f}")
    t.add_row("replica-seconds", f"{rep['replica_seconds']:,.0f} ({rep['replica_hours']:.2f} replica-hours"
              + (f", {rep['gpu_hours']:.2f} GPU-hours)" if rep.get("gpu_hours") else ")"))
    if "cost" in s:
        t.add_row("cost", f"{s['cost']['total']:,.2f} ({_fmt(s['cost']['per_1000_requests'])} per 1,000 requests)")
    t.add_row("scaling events", f"{sc['upscales']} up, {sc['downscales']} down")
    t.add_row("simulated", f"{s['duration_s']:,.0f}s of traffic in {s['sim']['wall_s']:.2f}s wall")
    if out is not None:
        t.add_row("written to", str(out))
    console.print(t)
    if "deployments" in s:
        d = Table(title="per deployment (calls: time at that deployment, incl. its downstream calls)",
                  title_justify="left")
        for col in ("deployment", "calls", "not ok", "p50", "p99", "replicas mean/max", "replica-s"):
            d.add_column(col)
        for name, v in s["deployments"].items():
            c, lt, r = v["calls"], v["latency_s"], v["replicas"]
            d.add_row(name, f"{c['total']:,}", f"{c['total'] - c['ok']:,}", _fmt(lt["p50"], "s"), _fmt(lt["p99"], "s"),
                      f"{r['mean']:.2f} / {r['max']:.0f}", f"{r['replica_seconds']:,.0f}")
        console.print(d)
