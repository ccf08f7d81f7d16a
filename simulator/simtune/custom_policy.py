"""Running a user's custom `policy_function` exactly as Ray's controller would.

Mirrors serve/_private/autoscaling_state.py:DeploymentAutoscalingState.register and
get_decision_num_replicas: the callable is resolved with Ray's own
`_resolve_policy_callable` (a class is instantiated once with `policy_kwargs`), wrapped
with Ray's own `_apply_autoscaling_config` (cold start, factors, delays), called with
Ray's own `AutoscalingContext`, then ceil'd and bounded. The wrapper reads
`time.time()` for its delay timers, so the simulated clock is swapped in for the call.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from simtune.policy import DefaultPolicy


class _SimClock:
    """Stands in for the `time` module inside ray.serve.autoscaling_policy."""

    def __init__(self, real_time_module: Any) -> None:
        self._real = real_time_module
        self.now = 0.0

    def time(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def is_custom_policy(config: Any) -> bool:
    policy = getattr(config, "policy", None)
    return policy is not None and not policy.is_default_policy_function()


class CustomPolicyRunner:
    """Calls the wrapped custom policy once per controller tick."""

    def __init__(self, config: Any, deployment_name: str, app_name: str) -> None:
        from ray.serve import autoscaling_policy as ap
        from ray.serve._private.autoscaling_state import _resolve_policy_callable

        self._ap = ap
        self.config = config
        self.bounds_policy = DefaultPolicy(config)
        self._fn = ap._apply_autoscaling_config(_resolve_policy_callable(config.policy))
        self._clock = _SimClock(ap.time)
        self.deployment_name = deployment_name
        self.app_name = app_name
        self.state: dict = {}

    def decide(self, current: int, target: int, total: float, queued: float, now: float,
               last_up: Optional[float], last_down: Optional[float]) -> tuple[Any, int]:
        from ray.serve._private.common import DeploymentID
        from ray.serve.config import AutoscalingContext

        lower, upper = self.bounds_policy.bounds()
        ctx = AutoscalingContext(
            deployment_id=DeploymentID(name=self.deployment_name, app_name=self.app_name),
            deployment_name=self.deployment_name, app_name=self.app_name,
            current_num_replicas=current, target_num_replicas=target, running_replicas=[],
            total_num_requests=total, total_queued_requests=queued, aggregated_metrics={}, raw_metrics={},
            capacity_adjusted_min_replicas=lower, capacity_adjusted_max_replicas=upper,
            policy_state=dict(self.state), last_scale_up_time=last_up, last_scale_down_time=last_down,
            current_time=now, config=self.config,
        )
        self._clock.now = now
        real = self._ap.time
        self._ap.time = self._clock
        try:
            output, state = self._fn(ctx)
        finally:
            self._ap.time = real
        self.state = dict(state or {})
        out = math.ceil(output) if isinstance(output, float) else int(output)
        return output, max(lower, min(upper, out))
