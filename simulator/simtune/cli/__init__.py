"""The `simtune` command line: parses arguments and calls the library, nothing more.

Every user-facing error is a `SimtuneError`: one line on stderr and its exit code
(2 for bad input). Subcommands owned by other modules are mounted here.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from simtune.errors import SimtuneError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Simulate and tune Ray Serve autoscaling on recorded traffic.")


@app.callback()
def _root() -> None:
    """Simulate and tune Ray Serve autoscaling on recorded traffic."""


def fail(err: SimtuneError) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(err.exit_code)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s",
                        stream=sys.stderr)


@app.command()
def run(
    trace: Path = typer.Option(..., "--trace", help="Trace file (CSV or Parquet) with a `timestamp` column."),
    config: Path = typer.Option(..., "--config", help="Serve config, RayService manifest or deployment YAML."),
    deployment: Optional[str] = typer.Option(None, "--deployment", help="APP/NAME when the config has several."),
    topology: Optional[Path] = typer.Option(
        None, "--topology", help="Application topology YAML: simulate every deployment of the application together "
        "(who calls whom, each one's own time and service model; see simtune.app.topology), or the import path "
        "module:app of a Deployment.bind(...) graph."),
    trace_format: str = typer.Option("auto", "--trace-format", help="auto, csv, parquet, jsonl, azure_llm, mooncake, "
                                     "count (see `simtune trace --help`)."),
    rate_scale: float = typer.Option(1.0, "--rate-scale", help="Thin (<1) or superpose (>1) the trace's traffic."),
    time_window: Optional[str] = typer.Option(None, "--time-window", help="START:END seconds of the trace to replay."),
    tail_s: float = typer.Option(0.0, "--tail-s", help="Keep simulating this long after the last request ended."),
    service_time: Optional[str] = typer.Option(
        None, "--service-time", help="Service-time distribution if the trace has none: const:0.05, exp:0.05, "
        "lognormal:mean=0.05,p99=0.4, empirical:FILE[:COLUMN]. Overrides the trace's column when given."),
    replica_startup_s: Optional[str] = typer.Option(
        None, "--replica-startup-s", help="Replica startup: seconds, linear:base=1.6,per=0.8 (grows with replicas "
        "starting at once; the default), lognormal:mean=2,p99=6, empirical:FILE."),
    service_model: Optional[Path] = typer.Option(
        None, "--service-model", help="Replica service model YAML: fixed, concurrency curve, @serve.batch, LLM, "
        "streaming (see traces/model_*.yaml; `simtune profile` writes one)."),
    params_file: Optional[Path] = typer.Option(None, "--params", help="Model parameters YAML (e.g. from validate --calibrate)."),
    slo_latency_s: Optional[float] = typer.Option(None, "--slo-latency-s", help="Latency SLO for the attainment figure."),
    slo_ttft_s: Optional[float] = typer.Option(None, "--slo-ttft-s", help="Time-to-first-token SLO (LLM/streaming models)."),
    slo_tpot_s: Optional[float] = typer.Option(None, "--slo-tpot-s", help="Time-per-output-token SLO (LLM model)."),
    cost_per_replica_hour: Optional[float] = typer.Option(None, "--cost-per-replica-hour"),
    cost_per_gpu_hour: Optional[float] = typer.Option(None, "--cost-per-gpu-hour"),
    fmt: str = typer.Option("text", "--format", help="text or json."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write summary.json, requests.parquet, decisions.csv, "
                                        "replicas.csv and timeline.png into this folder."),
    seed: int = typer.Option(0, "--seed", help="Seed for every random choice."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Replay a trace through a model of Ray Serve's autoscaler, router and replicas."""
    _setup_logging(verbose)
    try:
        from simtune.api import parse_window, run_simulation
        from simtune.trace import load_trace

        if fmt not in ("text", "json"):
            from simtune.errors import InputError

            raise InputError(f"--format {fmt!r}: expected text or json")
        start, end = parse_window(time_window)
        tr = load_trace(trace, format=trace_format, seed=seed, rate_scale=rate_scale, start=start, end=end)
        result, summary = run_simulation(
            trace=tr, config=config, tail_s=tail_s, deployment=deployment, service_time=service_time,
            replica_startup_s=replica_startup_s, params_file=params_file, seed=seed, slo_latency_s=slo_latency_s,
            service_model=service_model, slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s,
            cost_per_replica_hour=cost_per_replica_hour, cost_per_gpu_hour=cost_per_gpu_hour, topology=topology,
        )
        if out is not None:
            result.write(out, slo_latency_s=slo_latency_s, summary=summary)
    except SimtuneError as err:
        fail(err)
    if fmt == "json":
        typer.echo(json.dumps(summary, default=str))
    else:
        from simtune.report_text import print_summary

        print_summary(summary, out)


def _mount_optional() -> None:
    """Mount subcommands that live in their own modules (if present in this build)."""
    try:
        from simtune.cli.trace_cmd import trace_app

        app.add_typer(trace_app, name="trace", help="Inspect, synthesize and convert traces.")
    except ImportError:
        pass
    try:
        from simtune.cli.validate_cmd import validate_app

        app.add_typer(validate_app, name="validate")
    except ImportError:
        pass
    try:
        from simtune.cli.profile_cmd import profile_app

        app.add_typer(profile_app, name="profile", help="Measure a real deployment and write a service model.")
    except ImportError:
        pass
    try:
        from simtune.cli.plan_cmd import plan

        app.command("plan")(plan)
    except ImportError:
        pass
    try:
        from simtune.cli.recommend_cmd import recommend

        app.command("recommend")(recommend)
    except ImportError:
        pass


_mount_optional()


def main() -> None:
    app()
