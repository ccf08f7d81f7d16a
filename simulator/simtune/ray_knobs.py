"""Ray-internal constants that shape autoscaling and routing, read from Ray itself.

Why import instead of re-typing: Ray reads each `RAY_SERVE_*` environment variable
once, at import of serve/_private/constants.py, with its own defaults. Importing that
module here gives simtune exactly the values a Serve process started with the same
environment would use (reference section 10). Nothing here is a hand-typed default
except where a constant does not exist in the installed Ray version (2.53 lacks the
record-interval factor; it used fixed 0.5 s record intervals instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class RayKnobs:
    ray_version: str
    control_loop_interval_s: float
    record_interval_factor: float | None  # 2.60: record = min(L * factor, MI)
    handle_record_interval_s: float | None  # 2.53: record = min(this, MI)
    collect_metrics_on_handle: bool
    min_handle_metrics_timeout_s: float
    router_initial_backoff_s: float
    router_backoff_multiplier: float
    router_max_backoff_s: float
    max_num_routing_tasks_cap: int
    delay_eps_s: float
    multiplex_matching_timeout_s: float = 1.0  # RAY_SERVE_MULTIPLEXED_MODEL_ID_MATCHING_TIMEOUT_S
    multiplex_push_interval_s: float = 0.1  # PUSH_MULTIPLEXED_MODEL_IDS_INTERVAL_S

    def record_interval_s(self, look_back_period_s: float, metrics_interval_s: float) -> float:
        """serve/_private/router.py:RouterMetricsManager.update_deployment_config."""
        if self.record_interval_factor is not None:
            return min(look_back_period_s * self.record_interval_factor, metrics_interval_s)
        return min(self.handle_record_interval_s or 0.5, metrics_interval_s)


@lru_cache(maxsize=1)
def ray_knobs() -> RayKnobs:
    import ray
    from ray.serve._private import constants as c
    from ray.serve._private.request_router.request_router import RequestRouter

    try:
        from ray.serve import autoscaling_policy as ap

        eps = float(getattr(ap, "_DELAY_ELAPSED_EPS_S", 0.0))
    except Exception:  # pragma: no cover
        eps = 0.0
    return RayKnobs(
        ray_version=ray.__version__,
        control_loop_interval_s=float(c.CONTROL_LOOP_INTERVAL_S),
        record_interval_factor=getattr(c, "RAY_SERVE_AUTOSCALING_METRIC_RECORD_INTERVAL_FACTOR", None),
        handle_record_interval_s=getattr(c, "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_RECORD_INTERVAL_S", None),
        collect_metrics_on_handle=bool(c.RAY_SERVE_COLLECT_AUTOSCALING_METRICS_ON_HANDLE),
        min_handle_metrics_timeout_s=float(c.RAY_SERVE_MIN_HANDLE_METRICS_TIMEOUT_S),
        router_initial_backoff_s=float(c.RAY_SERVE_ROUTER_RETRY_INITIAL_BACKOFF_S),
        router_backoff_multiplier=float(c.RAY_SERVE_ROUTER_RETRY_BACKOFF_MULTIPLIER),
        router_max_backoff_s=float(c.RAY_SERVE_ROUTER_RETRY_MAX_BACKOFF_S),
        max_num_routing_tasks_cap=int(getattr(RequestRouter, "max_num_routing_tasks_cap", 50)),
        delay_eps_s=eps,
        multiplex_matching_timeout_s=float(getattr(c, "RAY_SERVE_MULTIPLEXED_MODEL_ID_MATCHING_TIMEOUT_S", 1.0)),
        multiplex_push_interval_s=float(getattr(c, "PUSH_MULTIPLEXED_MODEL_IDS_INTERVAL_S", 0.1)),
    )
