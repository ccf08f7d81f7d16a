"""`simtune validate`: replay a config on a real Ray cluster and measure the simulator's error.

Mounted by the main CLI (simtune/cli/__init__.py) as `simtune validate`; usable alone as
`python -m simtune.cli.validate_cmd`. Exit codes: 0 ok; 1 the gate failed, the run was
invalid (load generator fell behind) or the real run failed; 2 bad input; 130 Ctrl-C
(after deleting our application).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from simtune.errors import InputError, SimtuneError

# A callback (not a sub-command) so that, mounted with `app.add_typer(validate_app,
# name="validate")`, the command line is `simtune validate CONFIG ...`.
validate_app = typer.Typer(add_completion=False, help=__doc__.splitlines()[0])


def _template(text: Optional[str]) -> Optional[dict]:
    if not text:
        return None
    raw = Path(text).read_text() if Path(text).exists() else text
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(f"--request-template: not JSON ({exc.msg}); give a JSON object or a file") from None
    if not isinstance(value, dict):
        raise InputError("--request-template: expected a JSON object with method, path, headers, body")
    return value


@validate_app.callback(invoke_without_command=True)
def validate(
    config: Optional[Path] = typer.Option(None, "--config", help="Serve config / RayService / deployment YAML under test."),
    trace: Optional[Path] = typer.Option(None, "--trace", help="Trace (CSV/Parquet) with timestamp and service_time."),
    scenario: Optional[str] = typer.Option(None, "--scenario", help="Built-in scenario (step, zero, burst): config + trace."),
    deployment: Optional[str] = typer.Option(None, "--deployment", help="APP/NAME when the config has several."),
    topology: Optional[Path] = typer.Option(None, "--topology", help="Application topology YAML (who calls whom): run the config's whole application (stand-in deployments) and compare every deployment and the end-to-end latency."),
    time_window: Optional[str] = typer.Option(None, "--time-window", help="Replay only START:END seconds of the trace."),
    address: Optional[str] = typer.Option(None, "--address", help="Existing Ray cluster (default: start a local one)."),
    proxy_url: Optional[str] = typer.Option(None, "--proxy-url", help="Serve HTTP proxy base URL, if not reachable as configured."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="Logical CPUs of the local cluster."),
    num_gpus: Optional[int] = typer.Option(None, "--num-gpus", help="GPUs of the local cluster."),
    startup_s: float = typer.Option(0.0, "--startup-s", help="Seconds the stand-in's constructor takes (model load)."),
    gpu_work: bool = typer.Option(False, "--gpu-work", help="Occupy the replica's GPU with torch kernels instead of sleeping."),
    import_path: Optional[str] = typer.Option(None, "--import-path", help="Deploy your own app (module:app) instead of the stand-in."),
    request_template: Optional[str] = typer.Option(None, "--request-template", help="JSON (or file) {method,path,headers,body}; {service_time} is substituted."),
    tail_s: Optional[float] = typer.Option(None, "--tail-s", help="Keep observing this long after the last request (default 15; scenarios set their own)."),
    repeat: int = typer.Option(1, "--repeat", min=1, max=5, help="Real runs; with 2+ the real run-to-run spread is reported."),
    params: Optional[Path] = typer.Option(None, "--params", help="SimParams YAML for the simulator (startup/overheads replaced by measured ones)."),
    calibrate: Optional[Path] = typer.Option(None, "--calibrate", help="Write fitted SimParams YAML here (for run/recommend --params)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: reports/validate-<label>-<time>)."),
    seed: int = typer.Option(0, "--seed", help="Seed for every random choice (scenario trace, simulator)."),
    max_replica_seconds_error: Optional[float] = typer.Option(None, "--max-replica-seconds-error", help="Gate: |replica-seconds error| in %."),
    max_event_dt: Optional[float] = typer.Option(None, "--max-event-dt", help="Gate: every real scaling event matched within S seconds."),
    max_p99_error: Optional[float] = typer.Option(None, "--max-p99-error", help="Gate: |p99 latency error| in %."),
    max_p50_error: Optional[float] = typer.Option(None, "--max-p50-error", help="Gate: |p50 latency error| in %."),
    max_unmatched_events: int = typer.Option(0, "--max-unmatched-events", help="With --max-event-dt: real events allowed no simulated match."),
    max_running_mae: Optional[float] = typer.Option(None, "--max-running-mae", help="Gate: time-weighted MAE of running replicas."),
    max_p99_lag_ms: float = typer.Option(50.0, "--max-p99-lag-ms", help="Run valid only if p99 send lag <= this."),
    max_lag_ms: float = typer.Option(500.0, "--max-lag-ms", help="Run valid only if max send lag <= this."),
) -> None:
    """Deploy the config on real Ray Serve, replay the trace, simulate it, report the error."""
    try:
        code = _validate(**locals())
    except KeyboardInterrupt:
        typer.echo("simtune validate: interrupted; our Serve application was deleted", err=True)
        raise typer.Exit(130)
    except SimtuneError as err:
        typer.echo(f"simtune validate: {err}", err=True)
        raise typer.Exit(err.exit_code)
    raise typer.Exit(code)


def _validate(**a: object) -> int:
    from simtune.params import SimParams
    from simtune.serve_config import load_deployment
    from simtune.trace import load_trace
    from simtune.validate import compare as cmp
    from simtune.validate import pipeline, scenarios
    from simtune.validate.harness import RealRunOptions

    if a["topology"] is not None:
        return _validate_app(a)
    scenario_obj = None
    if a["scenario"]:
        try:
            scenario_obj = scenarios.get(str(a["scenario"]))
        except KeyError as exc:
            raise InputError(str(exc.args[0])) from None
    if a["config"] is None and scenario_obj is None:
        raise InputError("give --config FILE (or --scenario NAME)")
    spec = load_deployment(a["config"] if a["config"] is not None else scenario_obj.config, a["deployment"])
    if a["trace"] is not None:
        tr = load_trace(a["trace"])
    elif scenario_obj is not None:
        tr = scenario_obj.trace(int(a["seed"]))
    else:
        raise InputError("give --trace FILE (or --scenario NAME)")
    tr = pipeline.slice_window(tr, pipeline.parse_window(a["time_window"]))
    tail = a["tail_s"] if a["tail_s"] is not None else (scenario_obj.tail_s if scenario_obj else 15.0)
    startup = a["startup_s"] if (a["startup_s"] or not scenario_obj) else scenario_obj.startup_s
    opts = RealRunOptions(
        startup_s=float(startup), gpu_work=bool(a["gpu_work"]), address=a["address"], proxy_url=a["proxy_url"],
        num_cpus=a["num_cpus"], num_gpus=a["num_gpus"], tail_s=float(tail),
        max_p99_lag_s=float(a["max_p99_lag_ms"]) / 1e3, max_lag_s=float(a["max_lag_ms"]) / 1e3,
        import_path=a["import_path"], request_template=_template(a["request_template"]),
        # Test hook (tests/test_validate_cleanup.py): crash mid-run to prove cleanup.
        crash_after_s=float(os.environ["SIMTUNE_VALIDATE_CRASH_AFTER_S"]) if os.environ.get("SIMTUNE_VALIDATE_CRASH_AFTER_S") else None,
    )
    gate = cmp.Gate(replica_seconds_pct=a["max_replica_seconds_error"], event_dt_s=a["max_event_dt"],
                    p99_pct=a["max_p99_error"], p50_pct=a["max_p50_error"], running_mae=a["max_running_mae"],
                    unmatched_events=int(a["max_unmatched_events"]))
    label = scenario_obj.name if scenario_obj else Path(str(a["config"])).stem
    out_dir = Path(a["out"]) if a["out"] else pipeline.default_out_dir(label)
    if out_dir.exists():
        raise InputError(f"--out {out_dir}: already exists")
    base = SimParams.load(a["params"]) if a["params"] else None
    res = pipeline.run_validation(spec, tr, opts, out_dir=out_dir, seed=int(a["seed"]), repeat=int(a["repeat"]),
                                  gate=gate, base_params=base, calibrate_to=a["calibrate"], label=label,
                                  progress=lambda m: typer.echo(m, err=True))
    _print_summary(res.report)
    typer.echo(f"wrote {res.out_dir}/fidelity.json and overlay.png", err=True)
    for reason in res.reasons:
        typer.echo(f"FAIL: {reason}", err=True)
    return 0 if res.passed else 1


def _validate_app(a: dict) -> int:
    """`--topology`: the application's stand-in on real Ray vs simulate_app (simtune.validate.app_real)."""
    from simtune.app.spec import load_app
    from simtune.params import SimParams
    from simtune.trace import load_trace
    from simtune.validate import app_real
    from simtune.validate import compare as cmp
    from simtune.validate import pipeline
    from simtune.validate.harness import RealRunOptions

    for opt, key in (("--scenario", "scenario"), ("--deployment", "deployment"), ("--import-path", "import_path"),
                     ("--request-template", "request_template"), ("--gpu-work", "gpu_work")):
        if a[key]:
            raise InputError(f"{opt} cannot be combined with --topology (the stand-in application is deployed)")
    if int(a["repeat"]) != 1:
        raise InputError("--repeat with --topology is not supported: one real run of the application")
    if a["config"] is None or a["trace"] is None:
        raise InputError("--topology needs --config FILE (the Serve config) and --trace FILE")
    app = load_app(a["config"], a["topology"])
    tr = pipeline.slice_window(load_trace(a["trace"]), pipeline.parse_window(a["time_window"]))
    opts = RealRunOptions(
        startup_s=float(a["startup_s"]), address=a["address"], proxy_url=a["proxy_url"], num_cpus=a["num_cpus"],
        num_gpus=a["num_gpus"], tail_s=float(a["tail_s"]) if a["tail_s"] is not None else 20.0,
        max_p99_lag_s=float(a["max_p99_lag_ms"]) / 1e3, max_lag_s=float(a["max_lag_ms"]) / 1e3,
        crash_after_s=float(os.environ["SIMTUNE_VALIDATE_CRASH_AFTER_S"]) if os.environ.get("SIMTUNE_VALIDATE_CRASH_AFTER_S") else None,
    )
    gate = cmp.Gate(replica_seconds_pct=a["max_replica_seconds_error"], event_dt_s=a["max_event_dt"],
                    p99_pct=a["max_p99_error"], p50_pct=a["max_p50_error"], running_mae=a["max_running_mae"],
                    unmatched_events=int(a["max_unmatched_events"]))
    label = Path(str(a["config"])).stem
    out_dir = Path(a["out"]) if a["out"] else pipeline.default_out_dir(label)
    if out_dir.exists():
        raise InputError(f"--out {out_dir}: already exists")
    base = SimParams.load(a["params"]) if a["params"] else None
    res = app_real.run_app_validation(app, tr, opts, out_dir=out_dir, seed=int(a["seed"]), gate=gate, base_params=base,
                                      calibrate_to=a["calibrate"], label=label,
                                      progress=lambda m: typer.echo(m, err=True))
    _print_app_summary(res.report)
    typer.echo(f"wrote {res.out_dir}/fidelity.json and overlay.png", err=True)
    for reason in res.reasons:
        typer.echo(f"FAIL: {reason}", err=True)
    return 0 if res.passed else 1


def _print_app_summary(report: dict) -> None:
    m = report["metrics"]
    lines = [f"valid run: {report['valid']}"]
    for name, d in m["deployments"].items():
        mx, rs = d["max_replicas"], d["replica_seconds"]
        lines.append(f"{name:<12} max replicas real {_fmt(mx['real'])} sim {_fmt(mx['sim'])}  replica-seconds real "
                     f"{_fmt(rs['real'])} sim {_fmt(rs['sim'])} error {_fmt(rs['error_pct'], '%')}  running MAE "
                     f"{_fmt(d['running_replicas_mae'])}")
    lat = m["end_to_end"]["latency_s"] or {}
    for q in ("p50", "p95", "p99"):
        d = lat.get(q) or {}
        lines.append(f"end-to-end {q}  real {_fmt(d.get('real'), ' s')}  sim {_fmt(d.get('sim'), ' s')}  "
                     f"error {_fmt(d.get('error_pct'), '%')}")
    for edge, h in (m.get("hops") or {}).items():
        lines.append(f"handle call {edge}: {h['hop_overhead_s'] * 1e3:.1f} ms outside both handlers (median; "
                     "not in the simulator)")
    rq = m["end_to_end"]["requests"] or {}
    lines.append("requests real " + json.dumps(rq.get("real")) + "  sim " + json.dumps(rq.get("sim")))
    for w in report.get("warnings", []):
        lines.append(f"warning: {w}")
    typer.echo("\n".join(lines))


def _fmt(v: object, unit: str = "") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:+.1f}{unit}" if unit == "%" else f"{v:.3g}{unit}"
    return f"{v}{unit}"


def _print_summary(report: dict) -> None:
    m = report["metrics"]
    ev = m["scaling_events"]
    lines = [
        f"valid run: {report['valid']}",
        f"replica-seconds  real {_fmt(m['replica_seconds']['real'])}  sim {_fmt(m['replica_seconds']['sim'])}  "
        f"error {_fmt(m['replica_seconds']['error_pct'], '%')}",
        f"running replicas MAE {_fmt(m['running_replicas_mae'])}",
        f"scaling events  real {ev['real_count']}  sim {ev['sim_count']}  matched {len(ev['matched'])}  "
        f"max |dt| {_fmt(ev['max_abs_dt_s'], ' s')}",
    ]
    for q in ("p50", "p95", "p99"):
        d = m["latency_s"][q]
        lines.append(f"latency {q}  real {_fmt(d['real'], ' s')}  sim {_fmt(d['sim'], ' s')}  error {_fmt(d['error_pct'], '%')}")
    rq = m["requests"]
    lines.append("requests real " + json.dumps(rq["real"]) + "  sim " + json.dumps(rq["sim"]))
    if report.get("real_run_to_run"):
        s = report["real_run_to_run"]
        lines.append(f"real run-to-run: replica-seconds {_fmt(s['replica_seconds']['error_pct'], '%')}, "
                     f"p99 {_fmt(s['latency_s']['p99']['error_pct'], '%')}, "
                     f"events max |dt| {_fmt(s['scaling_events']['max_abs_dt_s'], ' s')}")
    for w in report.get("warnings", []):
        lines.append(f"warning: {w}")
    typer.echo("\n".join(lines))


def main() -> None:  # pragma: no cover - thin wrapper
    validate_app()


if __name__ == "__main__":  # pragma: no cover
    main()
