"""The metric merge reproduces Ray's controller (aggregation_vectors.jsonl and Ray's own code)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from conftest import REFERENCE, read_jsonl
from simtune.metrics import HandleMetricsStore, WindowAggregate, aggregate_total

VECTORS = read_jsonl(REFERENCE / "aggregation_vectors.jsonl")


def _totals(vec: dict) -> tuple[float, float]:
    running = set(vec["running_replicas"])
    agg = vec["aggregation_function"]
    now = vec["now"]
    queued = [[tuple(p) for p in h["queued"]] for h in vec["handle_reports"]]
    handle_running = [
        [tuple(p) for p in series]
        for h in vec["handle_reports"]
        for key, series in h["running"].items()
        if key in running
    ]
    replica_running = [[tuple(p) for p in r["running"]] for r in vec["replica_reports"] if r["replica"] in running]
    total = aggregate_total(queued, handle_running, replica_running, agg, now)
    q = aggregate_total(queued, [], [], agg, now)
    return total, q


@pytest.mark.parametrize("vec", VECTORS, ids=[v["id"] for v in VECTORS])
def test_aggregation_vectors(vec: dict) -> None:
    total, queued = _totals(vec)
    assert total == pytest.approx(vec["expected"]["total_num_requests"], rel=1e-9, abs=1e-9)
    assert queued == pytest.approx(vec["expected"]["total_queued_requests"], rel=1e-9, abs=1e-9)


def test_worked_example_section_2_5() -> None:
    """The reference's worked example: MEAN 5.609, MAX 8, MIN 3 at now=135, MEAN 5.14 at 140."""
    q = [(106, 0), (112, 3), (118, 4), (124, 1), (130, 0)]
    a = [(t, 2) for t in (106, 112, 118, 124, 130)]
    b = [(112, 1), (118, 2), (124, 2), (130, 1)]
    mean = WindowAggregate.from_sources([a, b, q], "mean")
    assert mean.value(135) == pytest.approx(129 / 23)
    assert mean.value(140) == pytest.approx((36 + 48 + 30 + 30) / 28)
    assert WindowAggregate.from_sources([a, b, q], "max").value(135) == 8
    assert WindowAggregate.from_sources([a, b, q], "min").value(135) == 3
    assert WindowAggregate.from_sources([q], "mean").value(135) == pytest.approx(48 / 29)


def test_randomized_against_ray_merge() -> None:
    """3000 random source sets against ray.serve._private.autoscaling_metrics_merge."""
    merge = pytest.importorskip("ray.serve._private.autoscaling_metrics_merge")
    rng = random.Random(7)
    for case in range(3000):
        n_src = rng.randint(1, 4)
        sources = []
        base = 1_700_000_000 + rng.random() * 1000
        for _ in range(n_src):
            n = rng.randint(0, 8)
            t = base + rng.random() * 5
            pts = []
            for _ in range(n):
                t += rng.choice([0.5, 1.0, 6.0, rng.random() * 3])
                pts.append((t, float(rng.choice([0, 0, 1, 2, 3, 5, rng.randint(0, 20)]))))
            sources.append(pts)
        agg = rng.choice(["mean", "max", "min"])
        now = max([base + 10] + [p[-1][0] for p in sources if p]) + rng.random() * 12 - 1
        ts = np.array([t for s in sources for t, _ in s], dtype=float)
        val = np.array([v for s in sources for _, v in s], dtype=float)
        offsets = np.cumsum([0] + [len(s) for s in sources])
        expected = merge.merge_and_aggregate_arrays(ts, val, offsets, now, agg)
        got = WindowAggregate.from_sources(sources, agg).value(now)
        # Epoch-sized timestamps carry ~2e-7 s of float error per difference, hence rel 1e-7.
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-6), (case, sources, agg, now)


def test_store_prunes_like_ray() -> None:
    """Record prunes to (now - L, now]; a push sends stored points, or `now` for a fresh key."""
    store = HandleMetricsStore(look_back_period_s=30)
    for t in range(0, 60, 6):
        store.record(float(t), queued=t % 4, running={"r1": 1})
    queued, running = store.report(60.0, queued_now=9, running_now={"r1": 1, "r2": 3})
    # The point at exactly now - L = 30 has value 2 > 0, so bisect against (30, 0) keeps it.
    assert [t for t, _ in queued] == [30.0, 36.0, 42.0, 48.0, 54.0]
    assert running["r2"] == [(60.0, 3.0)]
    assert math.isclose(running["r1"][0][0], 30.0)
