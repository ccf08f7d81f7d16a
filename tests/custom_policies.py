"""Custom autoscaling policies used by tests (importable as `custom_policies:NAME`)."""

from __future__ import annotations


def queue_only_policy(ctx):
    """Scale on queued requests only: one replica per 3 queued, at least the current count."""
    want = ctx.current_num_replicas + ctx.total_queued_requests / 3.0
    return want, {"calls": ctx.policy_state.get("calls", 0) + 1}


class FixedPolicy:
    """A class policy: instantiated once with policy_kwargs, always wants `n` replicas."""

    def __init__(self, n: int = 3):
        self.n = n

    def __call__(self, ctx):
        return self.n, {}
