"""Nodes, Ray's cluster autoscaler and what they do to replica startup (issue 8).

    from simtune.cluster import load_cluster, simulate_on_cluster
    cspec = load_cluster("traces/rayservice_gpu.yaml")
    res = simulate_on_cluster(trace, spec, cspec, provisioning="lognormal:mean=90,p99=180")
    res.cluster.timeline()       # nodes / GPUs over time
    res.cluster.replica_waits()  # how long each replica waited for a node
"""

from simtune.cluster.manifest import (ClusterSpec, NodeType, ReplicaDemand, check_fits, load_cluster,
                                      replica_demand)
from simtune.cluster.model import NodeCluster, parse_delay
from simtune.cluster.run import make_cluster, simulate_on_cluster, sim_start_time

__all__ = ["ClusterSpec", "NodeType", "ReplicaDemand", "NodeCluster", "check_fits", "load_cluster", "replica_demand",
           "parse_delay", "make_cluster", "simulate_on_cluster", "sim_start_time"]
