"""Simulating a deployment on a node model: the glue between a manifest and simulate()."""

from __future__ import annotations

from typing import Any, Optional, Union

from simtune.cluster.manifest import ClusterSpec, replica_demand
from simtune.cluster.model import DEFAULT_AUTOSCALER_INTERVAL_S, NodeCluster
from simtune.params import SimParams
from simtune.results import SimResult
from simtune.service_time import ServiceTimeDist
from simtune.simulate import sim_start_time


def make_cluster(cluster_spec: ClusterSpec, spec: Any, trace: Any, params: Optional[SimParams] = None, *,
                 provisioning: Union[str, float, ServiceTimeDist, None] = 90.0,
                 autoscaler_interval_s: float = DEFAULT_AUTOSCALER_INTERVAL_S, scheduling: str = "spread",
                 seed: int = 0) -> NodeCluster:
    params = params or SimParams()
    return NodeCluster(cluster_spec, replica_demand(spec), provisioning=provisioning,
                       autoscaler_interval_s=autoscaler_interval_s, scheduling=scheduling,
                       warm_start=params.warm_start, start_t=sim_start_time(trace, spec), seed=seed,
                       deployment=f"{spec.app_name}/{spec.name}")


def simulate_on_cluster(trace: Any, spec: Any, cluster_spec: ClusterSpec, params: Optional[SimParams] = None, *,
                        service_time: Optional[ServiceTimeDist] = None, seed: Optional[int] = None,
                        provisioning: Union[str, float, ServiceTimeDist, None] = 90.0,
                        autoscaler_interval_s: float = DEFAULT_AUTOSCALER_INTERVAL_S,
                        scheduling: str = "spread") -> SimResult:
    """simulate() with replicas placed on the manifest's nodes; `result.cluster` is the NodeCluster."""
    from simtune.simulate import simulate  # noqa: F811 (module-level import is sim_start_time only)

    params = params or SimParams()
    seed = params.seed if seed is None else int(seed)
    cluster = make_cluster(cluster_spec, spec, trace, params, provisioning=provisioning,
                           autoscaler_interval_s=autoscaler_interval_s, scheduling=scheduling, seed=seed)
    return simulate(trace, spec, params, service_time=service_time, seed=seed, cluster=cluster)
