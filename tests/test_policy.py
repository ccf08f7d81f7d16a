"""The default policy reproduces Ray 2.60 decision for decision.

Three sources of truth: policy_vectors.jsonl (computed by Ray's own
DeploymentAutoscalingState), and randomized cases run through Ray's own
`_apply_autoscaling_config(replica_queue_length_autoscaling_policy)` and `apply_bounds`
with a controlled clock.
"""

from __future__ import annotations

import math
import random
from unittest import mock

import pytest

from conftest import REFERENCE, read_jsonl
from simtune.policy import DefaultPolicy, PolicyState

VECTORS = read_jsonl(REFERENCE / "policy_vectors.jsonl")
COUNTERS, STAMP = "__decision_counters", "__decision_timestamp"
CONFIG_FIELDS = (
    "min_replicas", "max_replicas", "initial_replicas", "target_ongoing_requests", "upscale_delay_s",
    "downscale_delay_s", "downscale_to_zero_delay_s", "upscaling_factor", "downscaling_factor",
    "smoothing_factor", "upscale_smoothing_factor", "downscale_smoothing_factor", "look_back_period_s",
    "metrics_interval_s", "aggregation_function",
)


def _config(d: dict):
    import warnings

    from ray.serve.config import AutoscalingConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoscalingConfig(**{k: d[k] for k in CONFIG_FIELDS if k in d})


@pytest.mark.parametrize("vec", VECTORS, ids=[v["id"] for v in VECTORS])
def test_policy_vectors(vec: dict) -> None:
    policy = DefaultPolicy(_config(vec["config"]))
    inp = vec["inputs"]
    sb = vec["state_before"]
    state = PolicyState(sb.get(COUNTERS, 0), sb.get(STAMP))
    lower, upper = policy.bounds(vec["target_capacity"], vec["target_capacity_direction"])
    assert (lower, upper) == (vec["bounds"]["lower"], vec["bounds"]["upper"])
    out = policy.decide(
        inp["current_num_replicas"], inp["target_num_replicas"], inp["total_num_requests"], state, inp["now"],
        vec["target_capacity"], vec["target_capacity_direction"],
    )
    exp = vec["expected"]
    assert out.policy_output == exp["policy_output"]
    assert out.decision == exp["decision"]
    sa = exp["state_after"]
    assert out.state.counter == sa.get(COUNTERS, 0)
    assert out.state.timestamp == sa.get(STAMP)


def _ray_decide(cfg, current, target, total, state, now):
    """Ray's own wrapped default policy + ceil + bounds, with time.time() pinned to `now`."""
    from ray.serve import autoscaling_policy as ap
    from ray.serve.config import AutoscalingContext

    ctx = AutoscalingContext(
        deployment_id=None, deployment_name="d", app_name="a", current_num_replicas=current,
        target_num_replicas=target, running_replicas=[], total_num_requests=total,
        total_queued_requests=0.0, aggregated_metrics={}, raw_metrics={},
        capacity_adjusted_min_replicas=cfg.min_replicas, capacity_adjusted_max_replicas=cfg.max_replicas,
        policy_state={COUNTERS: state.counter, STAMP: state.timestamp}, last_scale_up_time=None,
        last_scale_down_time=None, current_time=now, config=cfg,
    )
    wrapped = ap._apply_autoscaling_config(ap.replica_queue_length_autoscaling_policy)
    with mock.patch.object(ap.time, "time", return_value=now):
        out, st = wrapped(ctx)
    if isinstance(out, float):
        out = math.ceil(out)
    return out, max(cfg.min_replicas, min(cfg.max_replicas, out)), st


def test_randomized_against_ray_policy() -> None:
    """3000 random trajectories through Ray's wrapped policy with a controlled clock."""
    rng = random.Random(11)
    for case in range(300):
        mn = rng.choice([0, 0, 1, 2])
        mx = mn + rng.randint(1, 12)
        fields = dict(
            min_replicas=mn, max_replicas=mx, target_ongoing_requests=rng.choice([0.5, 1, 2, 3.5, 5]),
            upscale_delay_s=rng.choice([0, 0.3, 1, 3]), downscale_delay_s=rng.choice([0, 0.5, 2, 5]),
            downscale_to_zero_delay_s=rng.choice([None, 0, 1, 4]),
            upscaling_factor=rng.choice([None, 0.5, 1, 2]), downscaling_factor=rng.choice([None, 0.3, 1, 1.5]),
        )
        cfg = _config(fields)
        policy = DefaultPolicy(cfg)
        state = PolicyState()
        current, target = rng.randint(0, mx), rng.randint(max(mn, 0), mx)
        now = 1000.0
        for step in range(10):
            total = rng.choice([0.0, 0.0, rng.random() * 3, rng.random() * 20, float(rng.randint(0, 30))])
            ray_out, ray_dec, ray_state = _ray_decide(cfg, current, target, total, state, now)
            ours = policy.decide(current, target, total, state, now)
            assert (ours.policy_output, ours.decision) == (ray_out, ray_dec), (case, step, fields, current, target, total)
            if ours.kind == "delay":
                assert (ours.state.counter, ours.state.timestamp) == (ray_state[COUNTERS], ray_state[STAMP])
            state = ours.state
            target = ours.decision
            current = max(0, min(target, current + rng.randint(-1, 2)))
            now += rng.choice([0.1, 0.1, 0.1, 0.5, 1.0])
