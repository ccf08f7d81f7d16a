"""Plan from files: what the CLI and the notebooks call."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from simtune.cluster.manifest import load_cluster
from simtune.cost import PriceList
from simtune.errors import InputError
from simtune.params import SimParams
from simtune.plan.core import DEFAULT_MULTIPLIERS, PlanResult, PlanSlo, Planner, parse_plan_slo, run_plan
from simtune.serve_config import load_deployment
from simtune.trace import Trace, load_trace

PathLike = Union[str, Path]


def plan_from_files(
    trace: Union[PathLike, Trace],
    config: PathLike,
    prices: Union[PathLike, PriceList],
    *,
    slo: Union[str, PlanSlo] = "p99=5",
    cluster: Optional[PathLike] = None,
    deployment: Optional[str] = None,
    service_time: Optional[str] = None,
    params: Optional[SimParams] = None,
    replica_startup_s: Optional[str] = None,
    node_provisioning_s: Any = 90.0,
    autoscaler_interval_s: float = 5.0,
    scheduling: str = "spread",
    multipliers: Sequence[float] = DEFAULT_MULTIPLIERS,
    retune: bool = True,
    refine_steps: int = 4,
    seed: int = 0,
    progress: Optional[Callable[[str], None]] = None,
) -> PlanResult:
    """Load everything, check it (bad input fails before any simulation), plan.

    `config` is a RayService manifest (Serve config and node groups in one file) or a
    Serve config with the node groups in `cluster` (a RayCluster or RayService manifest).
    """
    spec = load_deployment(config, deployment)
    cluster_src = cluster if cluster is not None else config
    if cluster is None and spec.kind != "rayservice":
        raise InputError(f"{config}: a Serve config has no node groups; give the RayCluster/RayService manifest "
                         "with --cluster")
    cspec = load_cluster(cluster_src)
    price_list = prices if isinstance(prices, PriceList) else PriceList.load(prices)
    tr = trace if isinstance(trace, Trace) else load_trace(trace)
    slo_obj = slo if isinstance(slo, PlanSlo) else parse_plan_slo(slo)
    if params is None:
        from simtune.api import build_params

        params = build_params(replica_startup_s, None, seed)
    elif replica_startup_s is not None:
        from simtune.startup import StartupModel

        params.startup = StartupModel.parse(replica_startup_s)
    planner = Planner(tr, spec, cspec, price_list, slo_obj, service_time=service_time, params=params,
                      provisioning=node_provisioning_s, autoscaler_interval_s=autoscaler_interval_s,
                      scheduling=scheduling, seed=seed, progress=progress)
    return run_plan(planner, multipliers, retune=retune, refine_steps=refine_steps)
