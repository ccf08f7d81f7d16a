"""The plan as files people read: one self-contained HTML page (figures embedded as
PNG data URIs, no external resources) and the same content as Markdown, plus plan.json.

Written into a hidden sibling folder and renamed at the end, so an interrupted run
never leaves a half-written report.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from simtune.plan.plots import plot_nodes, plot_p99, plot_what_if
from simtune.jsonutil import jsonable
from simtune.results import staged_dir

FIGURES = (
    ("p99.png", "Where the p99 comes from"),
    ("whatif.png", "What if traffic grows"),
    ("timeline.png", "Load, replicas and latency over time (current vs recommended)"),
    ("nodes.png", "Nodes and replicas waiting for a node (current vs recommended)"),
)


def _f(v: Any, fmt: str = ".2f", unit: str = "") -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{v:{fmt}}{unit}"


def _pct(v: Optional[float], digits: int = 2) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f}%"


def _money(v: Optional[float], cur: str) -> str:
    if v is None:
        return "–"
    sym = "$" if cur == "USD" else ""
    return f"{sym}{v:,.2f}" + ("" if sym else f" {cur}")


def _config_text(cfg: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in cfg.items() if v is not None)


def headline(plan: Any) -> list[str]:
    """The findings, one sentence each (shared by HTML and Markdown)."""
    inp, b, cur = plan.inputs, plan.baseline, plan.inputs["currency"]
    nw = b["node_wait"]
    out = []
    verdict = "meets" if b["slo_met"] else "misses"
    out.append(f"At today's traffic the current config {verdict} the SLO ({inp['slo']}): "
               f"{_pct(b['slo_attainment'])} of requests within {inp['slo_bound_s']:g} s, p99 {_f(nw['p99_s'])} s, "
               f"at {_money(b['cost']['per_day'], cur)} per day (peak {b['nodes']['peak']:.0f} nodes, "
               f"{b['gpus']['peak']:.0f} GPUs, {b['replicas']['peak']:.0f} replicas).")
    if nw["share_of_p99"] is not None:
        out.append(f"Node waits: with nodes ready the moment the autoscaler asks, p99 would be "
                   f"{_f(nw['p99_instant_nodes_s'])} s, so {_f(nw['p99_from_node_waits_s'])} s "
                   f"({_pct(nw['share_of_p99'], 0)}) of the p99 comes from waiting for nodes; "
                   f"{_waits_text(nw['replica_waits'])}.")
    r = plan.recommended
    if r is not None:
        d = r["vs_current"]
        verdict = "meets" if r["slo_met"] else "still misses"
        change = "more" if d["cost_per_day_delta"] >= 0 else "less"
        out.append(f"Recommended ({_config_text(r['config'])}) {verdict} the SLO: {_pct(r['slo_attainment'])} within "
                   f"{inp['slo_bound_s']:g} s, p99 {_f(r['latency_s']['p99'])} s, at {_money(r['cost']['per_day'], cur)} "
                   f"per day ({_money(abs(d['cost_per_day_delta']), cur)} {change} than now).")
    brk = plan.slo_break
    out.append("SLO cliff: as-is " + brk["as_is"]["text"] +
               ("; re-tuned (more replicas and nodes allowed) " + brk["retuned"]["text"] if "retuned" in brk else "") + ".")
    return out


def _waits_text(w: dict) -> str:
    text = (f"{w['waited']} of {w['replicas_started']} replica starts waited for a node "
            f"({_f(w['mean_of_waited'], '.0f')} s on average)")
    if w.get("cancelled_while_waiting"):
        text += f" and {w['cancelled_while_waiting']} more were cancelled while waiting"
    return text


def _waits_cell(w: dict) -> str:
    text = f"{w['waited']} of {w['replicas_started']}, mean {_f(w['mean_of_waited'], '.0f')} s"
    if w.get("cancelled_while_waiting"):
        text += f" (+{w['cancelled_while_waiting']} cancelled)"
    return text


def _summary_rows(plan: Any) -> list[tuple[str, str, str]]:
    b, r, cur = plan.baseline, plan.recommended, plan.inputs["currency"]

    def col(x: Optional[dict]) -> list[str]:
        if x is None:
            return []
        return [
            _pct(x["slo_attainment"]), "yes" if x["slo_met"] else "no", _f(x["latency_s"]["p50"], ".2f", " s"),
            _f(x["latency_s"]["p99"], ".2f", " s"), _f(x["node_wait"]["p99_instant_nodes_s"], ".2f", " s"),
            _pct(x["node_wait"]["share_of_p99"], 0),
            f"{x['nodes']['peak']:.0f} / {x['nodes']['mean']:.2f}", f"{x['gpus']['peak']:.0f} / {x['gpus']['mean']:.2f}",
            f"{x['replicas']['peak']:.0f} / {x['replicas']['mean']:.2f}",
            _waits_cell(x["replica_node_wait_s"]),
            _money(x["cost"]["per_day"], cur), _money(x["cost"]["per_1000_requests"], cur) if
            x["cost"]["per_1000_requests"] is not None else "–",
            _f(x["gpu_hours"] / max(x["duration_s"], 1e-9) * 86400, ".1f"), _pct(x["error_rate"]),
        ]

    names = ["SLO attainment", "SLO met", "p50 latency", "p99 latency", "p99 if nodes were instant",
             "share of p99 from node waits", "nodes peak / mean", "GPUs peak / mean", "replicas peak / mean",
             "replica starts that waited for a node", "cost per day", "cost per 1,000 requests", "GPU-hours per day",
             "errors (rejected, timed out)"]
    a, c = col(b), col(r)
    return [(n, a[i], c[i] if c else "") for i, n in enumerate(names)]


def _what_if_rows(plan: Any) -> tuple[list[str], list[list[str]]]:
    cur = plan.inputs["currency"]
    head = ["traffic", "requests", "as-is: within SLO", "as-is: p99", "as-is: p99 from node waits", "as-is: peak nodes",
            "as-is: cost/day"]
    retuned = bool(plan.what_if) and "retuned" in plan.what_if[0]
    if retuned:
        head += ["re-tuned: within SLO", "re-tuned: p99", "re-tuned: peak GPUs", "re-tuned: cost/day", "re-tuned: config"]
    rows = []
    for w in plan.what_if:
        a = w["as_is"]
        row = [f"x{w['multiplier']:g}", f"{w['requests']:,}", _pct(a["slo_attainment"]) + (" ✓" if a["slo_met"] else " ✗"),
               _f(a["latency_s"]["p99"], ".2f", " s"), _pct(a["node_wait"]["share_of_p99"], 0),
               f"{a['nodes']['peak']:.0f}", _money(a["cost"]["per_day"], cur)]
        if retuned:
            r = w["retuned"]
            c = r["config"]
            row += [_pct(r["slo_attainment"]) + (" ✓" if r["slo_met"] else " ✗"), _f(r["latency_s"]["p99"], ".2f", " s"),
                    f"{r['gpus']['peak']:.0f}", _money(r["cost"]["per_day"], cur),
                    f"min {c.get('min_replicas')}, max {c.get('max_replicas')}, down {c.get('downscale_delay_s'):g} s"
                    if c.get("min_replicas") is not None else "–"]
        rows.append(row)
    return head, rows


def _assumptions(plan: Any) -> list[str]:
    i = plan.inputs
    groups = "; ".join(
        f"{name}: {_res(g['resources'])}, {g['min']}–{g['max']} nodes, "
        f"{'idle timeout ' + format(g['idle_timeout_s'], 'g') + ' s, ' if g['idle_timeout_s'] != float('inf') else ''}"
        f"{_money(g['price_per_hour'], i['currency'])}/h" + (f" ({g['instance_type']})" if g["instance_type"] else "")
        for name, g in i["node_groups"].items())
    return [
        f"Trace {i['trace']}: {i['requests']:,} requests over {i['span_s'] / 60:.1f} min; service time {i['service_time']}. "
        f"Cost per day extrapolates the simulated span ({i['span_s'] / 3600:.2f} h) to 24 h.",
        f"Deployment {i['deployment']} from {i['config_source']}: {_config_text(i['config'])}; each replica needs "
        f"{i['replica_resources']}.",
        f"Cluster {i['cluster']} ({'Ray autoscaler on' if i['autoscaling_enabled'] else 'no autoscaler: fixed nodes'}): {groups}.",
        f"Node provisioning {_delay_text(i['node_provisioning'])} after the autoscaler's next update (every "
        f"{i['autoscaler_interval_s']:g} s); replica startup after the node is ready: {i['replica_startup']}; "
        f"placement {i['scheduling']}. A node is billed from launch to removal.",
        f"SLO {i['slo']}: met when at least {i['slo_percentile']:g}% of all requests end within {i['slo_bound_s']:g} s "
        "(errors count as misses).",
        "What-if traffic: the trace superposed with time-shifted copies of itself (the burst shape is kept). "
        "Re-tuned: cheapest config meeting the SLO among min_replicas x downscale_delay_s, with max_replicas and "
        "the worker group's maxReplicas scaled with traffic. The SLO cliff is bisected between the listed multipliers.",
        f"Seed {i['seed']}; {plan.planner.sims} simulations in {plan.wall_s:.1f} s.",
    ]


def _delay_text(spec: Any) -> str:
    try:
        return f"{float(spec):g} s"
    except (TypeError, ValueError):
        return str(spec)


def _res(res: dict) -> str:
    from simtune.cluster.manifest import format_resources

    return format_resources(res)


def _table_html(head: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(x)}</th>" for x in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _table_md(head: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;color:#222;
line-height:1.45;padding:0 16px}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
.sub{color:#666;margin-top:0} ul.find li{margin:.35em 0}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em} th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f5f8} td:first-child,th:first-child{text-align:left}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee} figcaption{color:#555;font-size:.9em}
.small{color:#555;font-size:.88em}
"""


def render_html(plan: Any, figures: dict[str, bytes], title: str) -> str:
    cur_rec = ["", "current", "recommended" if plan.recommended is not None else ""]
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p class='sub'>{html.escape(plan.inputs['deployment'])} on {html.escape(plan.inputs['cluster'])} · "
             f"trace {html.escape(plan.inputs['trace'])} · generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}</p>",
             "<h2>Findings</h2><ul class='find'>" + "".join(f"<li>{html.escape(s)}</li>" for s in headline(plan)) + "</ul>",
             "<h2>Today's traffic</h2>",
             _table_html([x for x in cur_rec if x or x == ""][: 3 if plan.recommended is not None else 2],
                         [[n, a, c][: 3 if plan.recommended is not None else 2] for n, a, c in _summary_rows(plan)])]
    if plan.recommended is not None:
        parts.append(f"<p class='small'>Recommended config: <code>{html.escape(_config_text(plan.recommended['config']))}"
                     f"</code> ({plan.recommended['candidates_tried']} candidates simulated).</p>")
    head, rows = _what_if_rows(plan)
    parts += ["<h2>What if traffic grows</h2>", _table_html(head, rows)]
    for name, cap in FIGURES:
        if name in figures:
            b64 = base64.b64encode(figures[name]).decode("ascii")
            parts.append(f"<figure><img alt='{html.escape(cap)}' src='data:image/png;base64,{b64}'>"
                         f"<figcaption>{html.escape(cap)}</figcaption></figure>")
    parts.append("<h2>Assumptions</h2><ul class='small'>" +
                 "".join(f"<li>{html.escape(s)}</li>" for s in _assumptions(plan)) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(plan: Any, figure_names: list[str], title: str) -> str:
    lines = [f"# {title}", "", f"{plan.inputs['deployment']} on {plan.inputs['cluster']} · trace {plan.inputs['trace']}",
             "", "## Findings", ""]
    lines += [f"- {s}" for s in headline(plan)]
    lines += ["", "## Today's traffic", ""]
    if plan.recommended is not None:
        lines.append(_table_md(["", "current", "recommended"], [list(r) for r in _summary_rows(plan)]))
    else:
        lines.append(_table_md(["", "current"], [[n, a] for n, a, _ in _summary_rows(plan)]))
    head, rows = _what_if_rows(plan)
    lines += ["", "## What if traffic grows", "", _table_md(head, rows), ""]
    for name, cap in FIGURES:
        if name in figure_names:
            lines += [f"![{cap}]({name})", ""]
    lines += ["## Assumptions", ""] + [f"- {s}" for s in _assumptions(plan)] + [""]
    return "\n".join(lines)


def _compact_png(path: Path, colors: int = 128) -> None:
    """Re-save a figure as a palette PNG (a third of the size; plots have few colours)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib
        return
    with Image.open(path) as im:
        q = im.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    q.save(path, format="PNG", optimize=True)


def write_report(plan: Any, out_dir: str | Path, title: Optional[str] = None, compact: bool = True) -> dict[str, Path]:
    """report.html, report.md, plan.json and the figures' PNGs into out_dir (replaced)."""
    from simtune.plots import plot_timeline

    out_dir = Path(out_dir)
    title = title or f"Capacity plan: {plan.inputs['deployment']}"
    with staged_dir(out_dir) as tmp:
        pl = plan.planner
        cur = pl.result(1.0)
        runs = [("current", cur)]
        if plan.recommended is not None:
            rec = pl.result(1.0, plan.recommended["autoscaling"], plan.recommended["max_replicas_searched"])
            runs.append(("recommended", rec))
        plot_p99(plan, tmp / "p99.png")
        plot_what_if(plan, tmp / "whatif.png")
        plot_timeline(cur, tmp / "timeline.png", slo_latency_s=plan.inputs["slo_bound_s"], others=runs[1:],
                      title=f"offered load: {plan.inputs['trace']}")
        plot_nodes(runs, tmp / "nodes.png", title="nodes: ready (solid) and billed (dashed)")
        for name, _ in FIGURES:
            if compact and (tmp / name).exists():
                _compact_png(tmp / name)
        figures = {name: (tmp / name).read_bytes() for name, _ in FIGURES if (tmp / name).exists()}
        (tmp / "report.html").write_text(render_html(plan, figures, title), encoding="utf-8")
        (tmp / "report.md").write_text(render_markdown(plan, list(figures), title), encoding="utf-8")
        (tmp / "plan.json").write_text(json.dumps(jsonable(plan.to_dict()), indent=1, default=str))
    return {p.name: p for p in sorted(out_dir.iterdir())}
