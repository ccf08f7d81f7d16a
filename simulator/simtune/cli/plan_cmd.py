"""`simtune plan`: a capacity-planning report (HTML + Markdown) for a deployment on its nodes.

Mounted by the main CLI as `app.command("plan")(plan)`; usable alone as
`python -m simtune.cli.plan_cmd`. Exit codes: 0 done; 2 bad input (a manifest whose
node groups cannot fit a replica, a price list missing a node type, ... reported before
anything is simulated).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import typer

from simtune.errors import InputError, SimtuneError


def _default_out(config: Path, trace: Path) -> Path:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{config.stem}_{trace.stem}")
    return Path("reports") / f"plan_{stem}"


def plan(
    trace: Path = typer.Option(..., "--trace", help="Trace file (CSV or Parquet) with a `timestamp` column."),
    config: Path = typer.Option(..., "--config", help="RayService manifest (Serve config + node groups), or a Serve "
                                "config together with --cluster."),
    prices: Path = typer.Option(..., "--prices", help="Price list YAML: node_types / instance_types -> price per hour."),
    slo: str = typer.Option("p99=5", "--slo", help="Latency SLO pNN=SECONDS: at least NN% of requests within SECONDS."),
    cluster: Optional[Path] = typer.Option(None, "--cluster", help="RayCluster or RayService manifest with the node "
                                           "groups (default: --config)."),
    deployment: Optional[str] = typer.Option(None, "--deployment", help="APP/NAME when the config has several."),
    service_time: Optional[str] = typer.Option(None, "--service-time", help="Service-time distribution if the trace "
                                               "has none: const:0.05, lognormal:mean=1.0,p99=3, empirical:FILE."),
    replica_startup_s: Optional[str] = typer.Option(None, "--replica-startup-s", help="Replica startup once its node "
                                                    "is ready: seconds, linear:base=1.6,per=0.8, lognormal:mean=30,p99=60."),
    params_file: Optional[Path] = typer.Option(None, "--params", help="Model parameters YAML (validate --calibrate)."),
    node_provisioning_s: str = typer.Option("90", "--node-provisioning-s", help="Time from the autoscaler asking for "
                                            "a node to Ray using it: seconds or a distribution (lognormal:mean=90,p99=240)."),
    autoscaler_interval_s: float = typer.Option(5.0, "--autoscaler-interval-s", help="Ray autoscaler update period "
                                                "(AUTOSCALER_UPDATE_INTERVAL_S)."),
    scheduling: str = typer.Option("spread", "--scheduling", help="Replica placement: spread (Serve's default) or pack."),
    multipliers: str = typer.Option("1,1.5,2,3", "--multipliers", help="Traffic multipliers for the what-if rows."),
    retune: bool = typer.Option(True, "--retune/--no-retune", help="Also re-tune for each multiplier (warm-capacity search)."),
    refine_steps: int = typer.Option(4, "--refine-steps", min=0, max=10, help="Bisection steps for the SLO cliff."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder (default: reports/plan_<config>_<trace>)."),
    title: Optional[str] = typer.Option(None, "--title", help="Report title."),
    fmt: str = typer.Option("text", "--format", help="text or json (the plan's numbers on stdout)."),
    seed: int = typer.Option(0, "--seed", help="Seed for every random choice."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines on stderr."),
) -> None:
    """Capacity plan: nodes, GPUs, cost per day, SLO attainment, what-if traffic and the SLO cliff."""
    try:
        if fmt not in ("text", "json"):
            raise InputError(f"--format {fmt!r}: expected text or json")
        from simtune.api import build_params
        from simtune.plan.api import plan_from_files
        from simtune.plan.core import parse_multipliers
        from simtune.plan.report import headline, write_report

        params = build_params(replica_startup_s, params_file, seed)
        say = (lambda msg: None) if quiet else (lambda msg: typer.echo(msg, err=True))
        result = plan_from_files(trace, config, prices, slo=slo, cluster=cluster, deployment=deployment,
                                 service_time=service_time, params=params, node_provisioning_s=node_provisioning_s,
                                 autoscaler_interval_s=autoscaler_interval_s, scheduling=scheduling,
                                 multipliers=parse_multipliers(multipliers), retune=retune, refine_steps=refine_steps,
                                 seed=seed, progress=say)
        out_dir = out or _default_out(config, trace)
        files = write_report(result, out_dir, title=title)
    except SimtuneError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(err.exit_code)
    if fmt == "json":
        from simtune.jsonutil import jsonable

        typer.echo(json.dumps(jsonable(result.to_dict()), default=str))
    else:
        for line in headline(result):
            typer.echo(f"- {line}")
        typer.echo(f"report: {files['report.html']}  (Markdown: {files['report.md']})")


app = typer.Typer(add_completion=False)
app.command()(plan)

if __name__ == "__main__":
    app()
