"""Whole applications: deployments composed with DeploymentHandles, simulated together.

    from simtune.app import load_app, simulate_app
    app = load_app("serve.yaml", "topology.yaml")
    result = simulate_app(trace, app, seed=0)
    result.summary()["deployments"]["Model"]["replicas"]
"""

from simtune.app.result import AppResult
from simtune.app.simulate import simulate_app
from simtune.app.spec import AppSpec, load_app
from simtune.app.topology import Topology, load_topology, parse_topology, topology_from_application

__all__ = ["AppResult", "AppSpec", "Topology", "load_app", "load_topology", "parse_topology", "simulate_app",
           "topology_from_application"]
