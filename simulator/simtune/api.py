"""A few imports for notebooks: everything the CLI does, as plain functions.

    from simtune.api import run_simulation
    result, summary = run_simulation("traces/sample.csv", "traces/sample_serve.yaml")
    result.replicas.plot(x="time", y=["running", "target"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from simtune.errors import InputError
from simtune.params import SimParams
from simtune.results import SimResult
from simtune.serve_config import DeploymentSpec, load_deployment
from simtune.service_time import parse_service_time
from simtune.simulate import simulate
from simtune.startup import StartupModel
from simtune.trace import Trace, load_trace

PathLike = Union[str, Path]


def build_params(replica_startup_s: Optional[str] = None, params_file: Optional[PathLike] = None,
                 seed: int = 0, **overrides: Any) -> SimParams:
    """Model parameters from a params file, then the command-line overrides."""
    params = SimParams.load(params_file) if params_file else SimParams()
    if replica_startup_s is not None:
        params.startup = StartupModel.parse(replica_startup_s)
    params.seed = seed
    for key, value in overrides.items():
        setattr(params, key, value)
    return params


def parse_window(text: Optional[str]) -> tuple[Optional[float], Optional[float]]:
    """`START:END` seconds (either side may be empty) -> (start, end)."""
    if not text:
        return None, None
    from simtune.errors import InputError

    lo, sep, hi = text.partition(":")
    try:
        start = float(lo) if lo.strip() else None
        end = float(hi) if hi.strip() else None
    except ValueError:
        raise InputError(f"--time-window {text!r}: expected START:END in seconds, e.g. 600:1800") from None
    if not sep or (start is not None and end is not None and end <= start):
        raise InputError(f"--time-window {text!r}: expected START:END with END > START")
    return start, end


def run_simulation(
    trace: Union[PathLike, Trace],
    config: Union[PathLike, dict, DeploymentSpec],
    *,
    deployment: Optional[str] = None,
    service_time: Optional[str] = None,
    replica_startup_s: Optional[str] = None,
    params_file: Optional[PathLike] = None,
    params: Optional[SimParams] = None,
    seed: int = 0,
    slo_latency_s: Optional[float] = None,
    cost_per_replica_hour: Optional[float] = None,
    cost_per_gpu_hour: Optional[float] = None,
    tail_s: float = 0.0,
    service_model: Union[PathLike, Any, None] = None,
    slo_ttft_s: Optional[float] = None,
    slo_tpot_s: Optional[float] = None,
    topology: Union[PathLike, Any, None] = None,
) -> tuple[Any, dict]:
    """Simulate one deployment, or a whole application when `topology` is given (a
    topology YAML or simtune.app.Topology): then the result is a simtune.app.AppResult."""
    tr = trace if isinstance(trace, Trace) else load_trace(trace, seed=seed)
    if topology is not None:
        return _run_app(tr, config, topology, service_time=service_time, service_model=service_model,
                        deployment=deployment, params=params or build_params(replica_startup_s, params_file, seed,
                                                                              tail_s=tail_s),
                        seed=seed, slo_latency_s=slo_latency_s, cost_per_replica_hour=cost_per_replica_hour,
                        cost_per_gpu_hour=cost_per_gpu_hour, slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s)
    spec = config if isinstance(config, DeploymentSpec) else load_deployment(config, deployment)
    dist = parse_service_time(service_time) if service_time else None
    if params is None:
        params = build_params(replica_startup_s, params_file, seed, tail_s=tail_s)
    if isinstance(service_model, (str, Path)):
        from simtune.service_models import load_service_model

        service_model = load_service_model(service_model)
    result = simulate(tr, spec, params, service_time=dist, seed=seed, service_model=service_model)
    summary = result.summary(slo_latency_s, cost_per_replica_hour, cost_per_gpu_hour,
                             slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s)
    return result, summary


def _run_app(tr: Trace, config: Any, topology: Any, *, service_time: Optional[str], service_model: Any,
             deployment: Optional[str], params: SimParams, seed: int, **summary_args: Any) -> tuple[Any, dict]:
    from simtune.app import load_app, simulate_app

    for given, flag in ((service_time, "--service-time"), (service_model, "--service-model"),
                        (deployment, "--deployment")):
        if given:
            raise InputError(f"{flag} does not apply with --topology: give each deployment's service_time / "
                             "service_model in the topology file")
    app = load_app(config, topology)
    result = simulate_app(tr, app, params, seed=seed)
    return result, result.summary(**summary_args)
