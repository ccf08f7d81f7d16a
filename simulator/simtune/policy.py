"""Ray Serve's default autoscaling policy (2.60), decision for decision.

Mirrors, line by line:
  serve/autoscaling_policy.py: _get_cold_start_scale_up_replicas,
    _core_replica_queue_length_policy, _apply_scaling_factors, _apply_default_params,
    _apply_delay_logic (the 1e-6 s tolerance is read from Ray as _DELAY_ELAPSED_EPS_S);
  serve/_private/autoscaling_state.py: DeploymentAutoscalingState.get_decision_num_replicas
    (ceil of a float result, then apply_bounds), get_num_replicas_lower_bound/upper_bound;
  serve/_private/utils.py: get_capacity_adjusted_num_replicas.
Reference: section 4 of ray-serve-autoscaling.md. Verified against
policy_vectors.jsonl and against Ray's own functions in tests/test_policy.py.

Why a scalar re-implementation rather than calling Ray: the controller model needs to
know *when* the decision will change (to skip the 0.1 s ticks in between), which
needs the pieces (desired count, direction, timer) separately, and it runs millions of
times in a tuner. A custom `policy_function` is run through Ray's own wrapper instead
(simtune.custom_policy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def capacity_adjusted(n: int, target_capacity: Optional[float]) -> int:
    """serve/_private/utils.py:get_capacity_adjusted_num_replicas."""
    if target_capacity is None or target_capacity == 100:
        return n
    if target_capacity == 0 or n == 0:
        return 0
    return max(1, round_half_up(n * target_capacity / 100.0))


@dataclass
class PolicyState:
    """The two internal policy-state keys Ray keeps (`__decision_counters`, `__decision_timestamp`)."""

    counter: int = 0
    timestamp: Optional[float] = None

    def copy(self) -> "PolicyState":
        return PolicyState(self.counter, self.timestamp)


@dataclass
class Decision:
    """One tick's outcome: `policy_output` before ceil/bounds, `decision` after them."""

    policy_output: Any
    decision: int
    state: PolicyState
    kind: str  # "cold_start" | "bypass" | "delay"


class DefaultPolicy:
    """The default policy for one AutoscalingConfig, with its numbers unpacked once."""

    def __init__(self, config: Any, delay_eps_s: float = 1e-6) -> None:
        self.config = config
        self.tor = float(config.get_target_ongoing_requests())
        self.up_factor = float(config.get_upscaling_factor())
        self.down_factor = float(config.get_downscaling_factor())
        self.upscale_delay_s = float(config.upscale_delay_s)
        self.downscale_delay_s = float(config.downscale_delay_s)
        dz = config.downscale_to_zero_delay_s
        self.downscale_to_zero_delay_s = float(dz) if dz is not None else self.downscale_delay_s
        self.min_replicas = int(config.min_replicas)
        self.max_replicas = int(config.max_replicas)
        self.initial_replicas = None if config.initial_replicas is None else int(config.initial_replicas)
        self.eps = float(delay_eps_s)

    # -- bounds ---------------------------------------------------------------------
    def bounds(self, target_capacity: Optional[float] = None, direction: Optional[str] = None) -> tuple[int, int]:
        if self.initial_replicas is not None and direction == "UP":
            lower = capacity_adjusted(self.initial_replicas, target_capacity)
        else:
            lower = capacity_adjusted(self.min_replicas, target_capacity)
        return lower, capacity_adjusted(self.max_replicas, target_capacity)

    def initial_target(self) -> int:
        """Target at first registration: initial_replicas if set, clamped (reference 3.4)."""
        lower, upper = self.bounds()
        start = self.initial_replicas if self.initial_replicas is not None else -1
        return max(lower, min(upper, start))

    # -- the pieces -----------------------------------------------------------------
    def scaled_desired(self, current: int, target: int, total_requests: float) -> tuple[str, int]:
        """Cold start, core policy and factors: ("cold_start"|"bypass"|"delay", value).

        For "delay" the value is the desired count fed to the delay logic (>= 0).
        """
        if current == 0 and total_requests > 0:
            return "cold_start", max(math.ceil(1 * self.up_factor), target)
        if current == 0:
            raw: float = target
            desired = math.ceil(raw)
            if desired > 0:
                return "bypass", desired
            return "delay", max(0, desired)
        raw = current * (total_requests / (self.tor * current))
        delta = raw - current
        factor = self.up_factor if delta > 0 else self.down_factor
        desired = math.ceil(current + factor * delta)
        if math.ceil(float(raw)) < current and desired == current:
            desired -= 1
        return "delay", max(0, desired)

    def delay_for(self, desired: int, target: int) -> float:
        if desired > target:
            return self.upscale_delay_s
        return self.downscale_to_zero_delay_s if target == 1 else self.downscale_delay_s

    def apply_delay(self, desired: int, target: int, state: PolicyState, now: float) -> tuple[int, PolicyState]:
        """serve/autoscaling_policy.py:_apply_delay_logic."""
        counter, ts = state.counter, state.timestamp
        decision = target
        if desired > target:
            if counter < 0:
                counter, ts = 0, None
            counter += 1
            if ts is None:
                ts = now
            if now - ts + self.eps >= self.upscale_delay_s:
                counter, ts, decision = 0, None, desired
        elif desired < target:
            if counter > 0:
                counter, ts = 0, None
            counter -= 1
            if target == 1:
                delay = self.downscale_to_zero_delay_s
            else:
                delay = self.downscale_delay_s
                desired = max(1, desired)
            if ts is None:
                ts = now
            if now - ts + self.eps >= delay:
                counter, ts, decision = 0, None, desired
        else:
            counter, ts = 0, None
        return decision, PolicyState(counter, ts)

    def decide(
        self,
        current: int,
        target: int,
        total_requests: float,
        state: PolicyState,
        now: float,
        target_capacity: Optional[float] = None,
        direction: Optional[str] = None,
    ) -> Decision:
        """DeploymentAutoscalingState.get_decision_num_replicas with the default policy."""
        kind, value = self.scaled_desired(current, target, total_requests)
        if kind == "delay":
            output, new_state = self.apply_delay(value, target, state, now)
        else:
            output, new_state = value, state.copy()
        lower, upper = self.bounds(target_capacity, direction)
        out = math.ceil(output) if isinstance(output, float) else output
        return Decision(output, max(lower, min(upper, out)), new_state, kind)
