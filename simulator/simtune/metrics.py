"""The autoscaling metrics pipeline: what the policy sees as `total_num_requests`.

Mirrors (Ray 2.60):
  serve/_private/router.py:RouterMetricsManager._add_autoscaling_metrics_point
    (record: queued + one running point per replica key, then prune to > now - L),
    ._get_metrics_report (push: prune, send stored points; a key with no data sends
    its current value stamped now), ._update_running_replicas (key lifetime);
  serve/_private/metrics_utils.py:InMemoryMetricsStore.prune_keys_and_compact_data;
  serve/_private/autoscaling_state.py:_HandleMetricStore.accept (newer report wins),
    _collect_handle_running_requests (mask to the running set),
    get_total_num_requests / _merge_and_aggregate_timeseries;
  serve/_private/autoscaling_metrics_merge.py: merge_instantaneous_total_arrays,
    time_weighted_average_arrays, aggregate_arrays, merge_and_aggregate_arrays
    (10 ms rounding half away from zero, change detection, window alignment, the
    last value held to `now`).
Reference: section 2 of ray-serve-autoscaling.md; verified against
aggregation_vectors.jsonl and Ray's functions in tests/test_metrics.py.

`WindowAggregate` precomputes the merged step function once per push so the value at
any later `now` costs a few float operations: that is what lets the controller model
skip the 0.1 s ticks between pushes.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Hashable, Iterable, Optional, Sequence

Series = list  # list[tuple[float, float]] sorted by timestamp

QUEUED_KEY = "__queued__"


def _round_10ms(ts: float) -> float:
    return math.floor(ts * 100.0 + 0.5) / 100.0


def merge_instantaneous_total(sources: Sequence[Sequence[tuple[float, float]]]) -> tuple[list[float], list[float]]:
    """merge_instantaneous_total_arrays: one step function from many gauges."""
    active = [s for s in sources if len(s) > 0]
    if not active:
        return [], []
    if len(active) == 1:
        s = active[0]
        return [float(t) for t, _ in s], [float(v) for _, v in s]
    deltas: dict[float, float] = {}
    for s in active:
        prev = 0.0
        for t, v in s:
            d = v - prev
            prev = v
            if d != 0:
                key = _round_10ms(t)
                deltas[key] = deltas.get(key, 0.0) + d
    times = sorted(deltas)
    totals, acc = [], 0.0
    for t in times:
        acc += deltas[t]
        totals.append(acc)
    return times, totals


@dataclass
class WindowAggregate:
    """The controller's merged view of the pushed data, evaluable at any `now`.

    MEAN: the time-weighted average over [start, now] of the merged step function,
    the last value held to `now` (1 ms if now <= last event). MAX/MIN: over event
    values at or after `start` (independent of `now`).
    """

    agg: str
    times: list[float] = field(default_factory=list)
    totals: list[float] = field(default_factory=list)
    start: Optional[float] = None
    # MEAN: the integral and length of [start, last event]; MAX/MIN: the constant.
    _area: float = 0.0
    _span: float = 0.0
    _const: float = 0.0
    _empty_window: bool = False

    @classmethod
    def from_sources(cls, sources: Sequence[Sequence[tuple[float, float]]], agg: str) -> "WindowAggregate":
        times, totals = merge_instantaneous_total(sources)
        self = cls(agg, times, totals)
        if not times:
            return self
        active = [s for s in sources if len(s) > 0]
        start = None
        if len(active) > 1:
            aligned = max(float(s[0][0]) for s in active)
            if aligned <= times[-1]:
                start = max(aligned, times[0])
        self.start = start
        if agg == "mean":
            ws = times[0] if start is None else start
            # Segments from ws to the last event; LOCF value at ws.
            i = bisect.bisect_right(times, ws) - 1
            cur_t, cur_v = ws, (totals[i] if i >= 0 else 0.0)
            area = 0.0
            for j in range(max(i + 1, 0), len(times)):
                t = times[j]
                if t <= ws:
                    continue
                area += cur_v * (t - cur_t)
                cur_t, cur_v = t, totals[j]
            self._area, self._span = area, cur_t - ws
            # If ws is after the last event, the window is [ws, end] with end = last + lw.
            self._empty_window = ws > times[-1]
            self.start = ws
        else:
            vals = totals if start is None else [v for t, v in zip(times, totals) if t >= start]
            if not vals:
                self._const = 0.0
            else:
                self._const = max(vals) if agg == "max" else min(vals)
        return self

    @property
    def last_value(self) -> float:
        return self.totals[-1] if self.totals else 0.0

    @property
    def last_time(self) -> float:
        return self.times[-1] if self.times else 0.0

    def value(self, now: float) -> float:
        if not self.times:
            return 0.0
        if self.agg != "mean":
            return self._const
        last_window = now - self.times[-1]
        if last_window <= 0:
            last_window = 1e-3
        end = self.times[-1] + last_window
        ws = self.start
        if end <= ws:
            return 0.0
        if self._empty_window:
            return self.totals[-1]
        return (self._area + self.totals[-1] * last_window) / (self._span + last_window)


def aggregate_total(
    handle_queued: Iterable[Series],
    handle_running: Iterable[Series],
    replica_running: Iterable[Series],
    agg: str,
    now: float,
) -> float:
    """get_total_num_requests: replica-side running series win over handle-side ones."""
    replica_running = [s for s in replica_running if s]
    running = replica_running if replica_running else [s for s in handle_running if s]
    sources = list(running) + [s for s in handle_queued if s]
    return WindowAggregate.from_sources(sources, agg).value(now)


class HandleMetricsStore:
    """A handle's InMemoryMetricsStore: record ticks append, pushes prune and send."""

    def __init__(self, look_back_period_s: float) -> None:
        self.look_back = float(look_back_period_s)
        self.data: dict[Hashable, Series] = {}

    def record(self, now: float, queued: float, running: dict[Hashable, float]) -> None:
        self.data.setdefault(QUEUED_KEY, []).append((now, float(queued)))
        for key, value in running.items():
            self.data.setdefault(key, []).append((now, float(value)))
        self.prune(now - self.look_back)

    def prune(self, start: float) -> None:
        """prune_keys_and_compact_data: drop stale keys, keep points after `start`.

        bisect on (timestamp, value) against (start, 0) as Ray does: a point exactly
        at `start` survives only if its value is > 0.
        """
        for key in list(self.data):
            pts = self.data[key]
            if not pts or pts[-1][0] < start:
                del self.data[key]
            else:
                idx = bisect.bisect(pts, (start, 0))
                if idx:
                    self.data[key] = pts[idx:]

    def report(self, now: float, queued_now: float, running_now: dict[Hashable, float]) -> tuple[Series, dict[Hashable, Series]]:
        """_get_metrics_report: (queued series, running series per replica key)."""
        self.prune(now - self.look_back)
        queued = list(self.data.get(QUEUED_KEY) or [(now, float(queued_now))])
        running = {k: list(self.data.get(k) or [(now, float(v))]) for k, v in running_now.items()}
        return queued, running
