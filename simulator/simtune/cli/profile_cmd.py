"""`simtune profile`: measure a real deployment and write a service-model YAML.

Mount in the main CLI with `app.add_typer(profile_app, name="profile")`; usable alone as
`python -m simtune.cli.profile_cmd`. Exit codes: 0 ok; 1 the real run failed; 2 bad
input; 130 Ctrl-C (after deleting our application).

  simtune profile concurrency --import-path app:app --out model.yaml
  simtune profile concurrency --demo cpu --levels 1,2,4,8 --out traces/model_cpu.yaml
  simtune profile batch --demo --max-batch-size 8 --batch-wait-timeout-s 0.02 --out batch.yaml
  simtune profile from-log reports/validate-.../fidelity.json --out model.yaml
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from simtune.errors import InputError, SimtuneError

profile_app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])


def _fail(err: SimtuneError) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(err.exit_code)


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--levels {text!r}: expected comma-separated integers, e.g. 1,2,4,8") from None
    if not levels or min(levels) < 1 or levels != sorted(set(levels)):
        raise InputError(f"--levels {text!r}: expected increasing integers >= 1, e.g. 1,2,4,8")
    return levels


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


def _target(import_path: Optional[str], demo: Optional[str]) -> str:
    if bool(import_path) == bool(demo):
        raise InputError("give exactly one of --import-path MODULE:APP or --demo")
    return import_path or demo


def _write(model, out: Path, header: str) -> None:
    from simtune.service_models import save_service_model

    out.parent.mkdir(parents=True, exist_ok=True)
    save_service_model(model, out, header=header)
    typer.echo(f"wrote {out}")


def _header(kind: str, table: str, overhead: Optional[float]) -> str:
    lines = [f"simtune profile {kind}: measured closed loop, one replica", table]
    if overhead is not None:
        lines.append(f"request-path overhead {overhead * 1e3:.1f} ms: use SimParams proxy_overhead_s: {overhead:.4f}")
    return "\n".join(lines)


@profile_app.command("concurrency")
def concurrency(
    out: Path = typer.Option(..., "--out", help="Model YAML to write."),
    import_path: Optional[str] = typer.Option(None, "--import-path", help="Your app or deployment (module:attr)."),
    demo: Optional[str] = typer.Option(None, "--demo", help="A built-in demo instead: cpu (CPU-bound sync handler)."),
    levels: str = typer.Option("1,2,3,4,6,8", "--levels", help="Closed-loop concurrencies to measure."),
    duration_s: float = typer.Option(5.0, "--duration-s", help="Measured seconds per level (after warm-up)."),
    warmup_s: float = typer.Option(1.0, "--warmup-s"),
    work: float = typer.Option(0.05, "--work", help="{service_time} substituted into each request (demo: CPU s)."),
    request_template: Optional[str] = typer.Option(None, "--request-template",
                                                   help="JSON (or file) {method,path,headers,body}."),
    max_ongoing_requests: Optional[int] = typer.Option(None, "--max-ongoing-requests",
                                                       help="Replica cap while profiling (default: top level)."),
    fit: str = typer.Option("client", "--fit", help="client (latency - overhead per level) or handler "
                            "(least squares on the handler's t_start/t_end)."),
    parallelism: str = typer.Option("auto", "--parallelism", help="auto (from handler times), none, or K."),
    overhead_s: Optional[float] = typer.Option(None, "--overhead-s", help="Request-path overhead (default: measure "
                                               "a no-op deployment)."),
    address: Optional[str] = typer.Option(None, "--address", help="Existing Ray cluster (default: a private local one)."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus"),
) -> None:
    """Measure latency vs requests in flight on one replica; write a concurrency-curve model."""
    try:
        from simtune.profile import runner as R

        target = _target(import_path, demo)
        if demo is not None and demo != "cpu":
            raise InputError(f"--demo {demo!r}: concurrency profiles the cpu demo")
        lv = _levels(levels)
        par: object = "auto"
        if parallelism == "none":
            par = None
        elif parallelism != "auto":
            try:
                par = int(parallelism)
            except ValueError:
                raise InputError(f"--parallelism {parallelism!r}: expected auto, none or an integer") from None
        opts = R.ProfileOptions(address=address, num_cpus=num_cpus, levels=lv, duration_s=duration_s,
                                warmup_s=warmup_s, work=work, request_template=_template(request_template))
        with R.cluster(opts) as info, R.workdir() as wd:
            wd = Path(wd)
            ov = overhead_s if overhead_s is not None else R.measure_overhead(info["http_url"], wd)
            app = R.build_target(target, max_ongoing_requests=max_ongoing_requests or max(lv))
            with R.deployed(app, info["http_url"]) as url:
                prof = R.profile_concurrency(url, opts, wd, overhead_s=ov, fit=fit, parallelism=par)
        table = prof.levels.round(4).to_string()
        typer.echo(table)
        _write(prof.model, out, _header("concurrency", table, prof.overhead_s))
        typer.echo(f"model: {prof.model.describe()}  latency_s={prof.model.latency_s}")
    except SimtuneError as err:
        _fail(err)
    except KeyboardInterrupt:
        raise typer.Exit(130)


@profile_app.command("batch")
def batch(
    out: Path = typer.Option(..., "--out", help="Model YAML to write."),
    max_batch_size: int = typer.Option(10, "--max-batch-size", help="As in your @serve.batch."),
    batch_wait_timeout_s: float = typer.Option(0.01, "--batch-wait-timeout-s", help="As in your @serve.batch."),
    max_concurrent_batches: int = typer.Option(1, "--max-concurrent-batches", help="As in your @serve.batch."),
    import_path: Optional[str] = typer.Option(None, "--import-path", help="Your app; responses must carry "
                                              "batch_size, batch_start, batch_end (see simtune.profile.demo)."),
    demo: bool = typer.Option(False, "--demo", help="Profile the built-in BatchSleep demo."),
    levels: str = typer.Option("1,2,4,8,16", "--levels"),
    duration_s: float = typer.Option(5.0, "--duration-s"),
    warmup_s: float = typer.Option(1.0, "--warmup-s"),
    table: bool = typer.Option(False, "--table", help="Write latency per batch size as a table (default affine)."),
    request_template: Optional[str] = typer.Option(None, "--request-template"),
    max_ongoing_requests: Optional[int] = typer.Option(None, "--max-ongoing-requests"),
    address: Optional[str] = typer.Option(None, "--address"),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus"),
) -> None:
    """Measure batch latency vs batch size of an @serve.batch handler; write a batch model."""
    try:
        from simtune.profile import runner as R

        target = _target(import_path, "batch" if demo else None)
        lv = _levels(levels)
        for name, v, lo in (("--max-batch-size", max_batch_size, 1), ("--max-concurrent-batches",
                                                                      max_concurrent_batches, 1)):
            if v < lo:
                raise InputError(f"{name} must be >= {lo}")
        if batch_wait_timeout_s < 0:
            raise InputError("--batch-wait-timeout-s must be >= 0")
        opts = R.ProfileOptions(address=address, num_cpus=num_cpus, levels=lv, duration_s=duration_s,
                                warmup_s=warmup_s, request_template=_template(request_template))
        bp = dict(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s,
                  max_concurrent_batches=max_concurrent_batches)
        with R.cluster(opts) as info, R.workdir() as wd:
            app = R.build_target(target, max_ongoing_requests=max_ongoing_requests or max(
                max(lv), max_batch_size * max_concurrent_batches), batch=bp)
            with R.deployed(app, info["http_url"]) as url:
                prof = R.profile_batch(url, opts, Path(wd), table=table, **bp)
        sizes = prof.fit.batches.groupby("size")["duration"].agg(["count", "mean"]).round(4).to_string()
        typer.echo(sizes)
        _write(prof.model, out, _header("batch", sizes, prof.overhead_s))
        typer.echo(f"model: {prof.model.describe()}")
    except SimtuneError as err:
        _fail(err)
    except KeyboardInterrupt:
        raise typer.Exit(130)


@profile_app.command("from-log")
def from_log(
    log: Path = typer.Argument(..., help="Per-request log: a `simtune validate` fidelity.json, or Parquet/CSV with "
                               "handler_start, handler_end, replica and optionally service_time."),
    out: Path = typer.Option(..., "--out", help="Model YAML to write."),
    trace: Optional[Path] = typer.Option(None, "--trace", help="The replayed trace, for each request's "
                                         "service_time (rows in the same order) when the log has none."),
    min_time_s: float = typer.Option(1.0, "--min-time-s", help="Leave out concurrencies seen for less than this."),
) -> None:
    """Fit a concurrency-curve model from a per-request log (handler start/end times)."""
    try:
        from simtune.profile.fit import fit_from_log, load_request_log

        df = load_request_log(log)
        if trace is not None and "service_time" not in df:
            from simtune.trace import load_trace

            tr = load_trace(trace)
            if tr.service_time is None or len(tr) != len(df):
                raise InputError(f"--trace {trace}: needs a service_time column and {len(df)} rows (has "
                                 f"{len(tr)})")
            df = df.sort_values("scheduled").reset_index(drop=True) if "scheduled" in df else df
            df["service_time"] = tr.service_time
        fit = fit_from_log(df, min_time_s=min_time_s, meta={"source": f"simtune profile from-log {log}"})
        info = ", ".join(f"{k}: {v:.1f} s" for k, v in fit.time_at.items())
        _write(fit.model, out, f"simtune profile from-log {log}\nseconds at each concurrency: {info}\n"
                               f"rms relative residual {fit.residual_rel:.3f} over {fit.n_requests} requests")
        typer.echo(f"model: {fit.model.describe()}  latency_s={fit.model.latency_s}")
    except SimtuneError as err:
        _fail(err)


def main() -> None:
    profile_app()


if __name__ == "__main__":
    main()
