"""simtune: simulate and tune Ray Serve autoscaling on recorded traffic.

Notebook entry points (everything the CLI does):

    from simtune import load_trace, load_deployment, simulate, SimParams, run_simulation
"""

__version__ = "0.1.0"

_EXPORTS = {
    "load_trace": ("simtune.trace", "load_trace"),
    "Trace": ("simtune.trace", "Trace"),
    "load_deployment": ("simtune.serve_config", "load_deployment"),
    "DeploymentSpec": ("simtune.serve_config", "DeploymentSpec"),
    "simulate": ("simtune.simulate", "simulate"),
    "SimParams": ("simtune.params", "SimParams"),
    "StartupModel": ("simtune.startup", "StartupModel"),
    "SimResult": ("simtune.results", "SimResult"),
    "run_simulation": ("simtune.api", "run_simulation"),
    "parse_service_time": ("simtune.service_time", "parse_service_time"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Lazy: `import simtune` stays cheap (no Ray, no numba compile) until something is used.
    if name in _EXPORTS:
        import importlib

        module, attr = _EXPORTS[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(name)
