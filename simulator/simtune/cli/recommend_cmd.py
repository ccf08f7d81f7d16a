"""`simtune recommend`: parses options and calls simtune.tuner, nothing more.

stdout carries only the YAML: while the search runs, both Python's sys.stdout and file
descriptor 1 point at stderr (so a library or a worker process that prints cannot
corrupt it), and the YAML is written once at the end, or not at all on error.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

import typer

from simtune.errors import SimtuneError


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    saved, fd, fd_saved = sys.stdout, None, None
    try:
        fd = sys.stdout.fileno()
        sys.stdout.flush()
        fd_saved = os.dup(fd)
        os.dup2(sys.stderr.fileno(), fd)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        fd = None
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout = saved
        if fd is not None and fd_saved is not None:
            os.dup2(fd_saved, fd)
            os.close(fd_saved)


def _progress():
    """A rich progress bar on stderr (a terminal only); returns (callback, context)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        return None, None
    bar = Progress(TextColumn("trials"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[best]}"), console=console, transient=True)
    task = bar.add_task("search", total=None, best="")

    def update(done: int, total: int, best: Optional[float]) -> None:
        bar.update(task, completed=done, total=total,
                   best="no config meets the SLO yet" if best is None else f"best cost {best:,.4g}")

    return update, bar


def _split_slos(items: List[str]) -> List[str]:
    """`--slo ttft_p99=10,tpot_p99=0.1` and repeated --slo alike."""
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()] or list(items)


def recommend(
    trace: List[Path] = typer.Option(..., "--trace", help="Trace file (repeatable): CSV/Parquet with `timestamp`, or "
                                     "any format `simtune trace` reads. Every trace is searched on."),
    slo: List[str] = typer.Option(..., "--slo", help="SLO on successful requests, repeatable or comma-separated: "
                                  "latency p99=2.0, p99.9=500ms, p50=0.2; time to first token ttft_p99=10; time per "
                                  "output token tpot_p99=100ms (seconds unless ms; TTFT/TPOT need an LLM or streaming "
                                  "model, e.g. --pd-engine)."),
    config: Optional[Path] = typer.Option(None, "--config", help="The current Serve config, RayService manifest or "
                                          "deployment YAML; printed back with the tuned deployment replaced."),
    deployment: Optional[str] = typer.Option(None, "--deployment", help="APP/NAME when the config has several."),
    topology: Optional[Path] = typer.Option(None, "--topology", help="Application topology YAML (which deployment "
                                            "calls which, each one's service time; see simtune.app.topology): tune "
                                            "the application's deployments jointly against end-to-end SLOs and print "
                                            "--config with every tuned deployment replaced. Needs --config."),
    tune: Optional[List[str]] = typer.Option(None, "--tune", help="With --topology: the deployments to tune, "
                                             "comma-separated or repeated (default: every one with "
                                             "autoscaling_config); the others keep their config. With --pd-engine: "
                                             "roles prefill, decode, ingress or names (default: prefill,decode)."),
    pd_engine: Optional[Path] = typer.Option(None, "--pd-engine", help="Tune a prefill/decode application "
                                             "(ray.serve.llm:build_pd_openai_app in --config): the LLM engine model "
                                             "YAML both legs run (kind: llm, e.g. traces/pd_engine.yaml). Needs "
                                             "--kv-bytes-per-token and --kv-bandwidth-gbps. The output has each "
                                             "leg's settings in args.<prefill|decode>_config.deployment_config."),
    kv_bytes_per_token: Optional[float] = typer.Option(None, "--kv-bytes-per-token", help="With --pd-engine: KV "
                                                       "cache bytes per prompt token (Llama-2-70B fp16: 327680)."),
    kv_bandwidth_gbps: Optional[float] = typer.Option(None, "--kv-bandwidth-gbps", help="With --pd-engine: the "
                                                      "prefill -> decode KV link, Gbit/s."),
    kv_latency_s: Optional[float] = typer.Option(None, "--kv-latency-s", help="With --pd-engine: fixed cost per KV "
                                                 "transfer, seconds (default 0)."),
    compare_colocated: bool = typer.Option(False, "--compare-colocated", help="With --pd-engine: also simulate a "
                                           "co-located (non-disaggregated) deployment of the same engine with as "
                                           "many fixed replicas as fit in the recommendation's mean GPU use, and "
                                           "report its TTFT/TPOT and SLO attainment beside it."),
    time_window: Optional[str] = typer.Option(None, "--time-window", help="START:END seconds of every trace to use "
                                              "(restarted at 0)."),
    rate_scale: float = typer.Option(1.0, "--rate-scale", help="Thin (<1) or superpose (>1) every trace's "
                                     "traffic before the search."),
    max_error_rate: float = typer.Option(0.001, "--max-error-rate", help="Highest share of requests rejected (503), "
                                         "timed out (408) or failed."),
    cost_per_replica_hour: Optional[float] = typer.Option(None, "--cost-per-replica-hour", help="Cost model; default: "
                                                          "replica-seconds."),
    cost_per_gpu_hour: Optional[float] = typer.Option(None, "--cost-per-gpu-hour", help="Cost per GPU-hour, times "
                                                      "ray_actor_options.num_gpus."),
    pareto: bool = typer.Option(False, "--pareto", help="Search cost vs the first SLO's latency as two objectives "
                                "and list the Pareto front (header, report)."),
    space: Optional[Path] = typer.Option(None, "--space", help="Search-space YAML: fix values, narrow ranges, "
                                         "exclude fields (see simtune.tuner.space); with --topology, DEPLOYMENT.FIELD "
                                         "addresses one deployment, FIELD every tuned one."),
    trials: int = typer.Option(100, "--trials", help="Number of trials (configs proposed)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Stop proposing after this many seconds "
                                            "(the answer then depends on speed)."),
    seed: int = typer.Option(0, "--seed", help="Seeds the sampler and the simulator: same seed, same answer."),
    sim_seeds: int = typer.Option(2, "--sim-seeds", help="Simulator seeds per trial (robustness)."),
    headroom: Optional[List[float]] = typer.Option(None, "--headroom", help="Also run each trace at this traffic "
                                                   "multiplier, e.g. 1.2 (repeatable)."),
    holdout: float = typer.Option(0.25, "--holdout", help="Keep this last fraction of each trace out of the search "
                                  "and report the result on it (0: none)."),
    service_time: Optional[str] = typer.Option(None, "--service-time", help="Service-time distribution if the trace "
                                               "has none: const:0.05, exp:0.05, lognormal:mean=0.05,p99=0.4, "
                                               "empirical:FILE[:COLUMN]."),
    service_model: Optional[Path] = typer.Option(None, "--service-model", help="Replica service-model YAML "
                                                 "(concurrency curve, @serve.batch, LLM; see simtune run). With a "
                                                 "concurrency-aware model max_ongoing_requests is searched too."),
    replica_startup_s: Optional[str] = typer.Option(None, "--replica-startup-s", help="Replica startup model "
                                                    "(see simtune run)."),
    params_file: Optional[Path] = typer.Option(None, "--params", help="Model parameters YAML (validate --calibrate)."),
    storage: Optional[str] = typer.Option(None, "--storage", help="optuna storage URL (sqlite:///x.db, "
                                          "postgresql://user@host/db, memory). Default: study.db in --report, else "
                                          "./simtune-recommend.db."),
    study_name: Optional[str] = typer.Option(None, "--study-name", help="Default: derived from the inputs."),
    resume: bool = typer.Option(False, "--resume", help="Continue (or join) an existing study with the same inputs."),
    n_jobs: int = typer.Option(1, "--n-jobs", help="Parallel worker processes on this machine (-1: all cores)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Run trials as Ray tasks on this cluster "
                                              "(auto: a running one, else a local one)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Trials proposed together; part of the answer's seed, "
                                   "raise it to keep many workers busy."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write plots and a Markdown summary here."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Search autoscaling_config for the lowest cost that meets the SLO; print it as Serve YAML.

    With --topology, search the autoscaling of an application's deployments jointly
    (the SLOs are end to end, the cost is summed over all deployments). With --pd-engine,
    tune the prefill and decode legs of a build_pd_openai_app application against
    end-to-end latency/TTFT/TPOT SLOs (--compare-colocated: against a co-located
    deployment at equal GPUs)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s",
                        stream=sys.stderr)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with stdout_to_stderr():
            from simtune.tuner import RecommendOptions
            from simtune.tuner import recommend as run_recommend

            opts = RecommendOptions(
                traces=[str(t) for t in trace], slos=_split_slos(slo), config=str(config) if config else None,
                deployment=deployment, topology=str(topology) if topology else None, tune=list(tune or []),
                service_time=service_time, replica_startup_s=replica_startup_s,
                service_model=str(service_model) if service_model else None,
                params_file=str(params_file) if params_file else None, max_error_rate=max_error_rate,
                cost_per_replica_hour=cost_per_replica_hour, cost_per_gpu_hour=cost_per_gpu_hour, pareto=pareto,
                space=str(space) if space else None, trials=trials, timeout_s=timeout, seed=seed,
                sim_seeds=sim_seeds, headroom=list(headroom or []), holdout=holdout, storage=storage,
                study_name=study_name, resume=resume, n_jobs=n_jobs, ray_address=ray_address,
                batch_size=batch_size, report=str(report) if report else None, rate_scale=rate_scale,
                time_window=time_window, pd_engine=str(pd_engine) if pd_engine else None,
                kv_bytes_per_token=kv_bytes_per_token, kv_bandwidth_gbps=kv_bandwidth_gbps,
                kv_latency_s=kv_latency_s, compare_colocated=compare_colocated)
            update, bar = _progress()
            if bar is not None:
                with bar:
                    rec = run_recommend(opts, progress=update)
            else:
                rec = run_recommend(opts)
    except SimtuneError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(err.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted: finished trials are in the study; rerun with --resume to continue", err=True)
        raise typer.Exit(130)
    logging.getLogger(__name__).info("recommended trial %s of study %s (%s)", rec.best.user_attrs.get("simtune:slot"),
                                     rec.study_name, rec.storage)
    typer.echo(rec.text, nl=False)
