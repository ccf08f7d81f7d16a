"""The control plane: Serve's controller loop, replica lifecycle and handle metrics.

Mirrors (Ray 2.60):
  serve/_private/controller.py:ServeController.run_control_loop (a tick every
    CONTROL_LOOP_INTERVAL_S plus the step's own duration);
  serve/_private/deployment_state.py: check_and_update_replicas (STARTING -> RUNNING on
    the first tick after startup finished; STOPPING -> gone on the first tick after the
    graceful shutdown returned, or force-kill at graceful_shutdown_timeout_s),
    scale_deployment_replicas / _get_target_replica_delta (delta against the target,
    STOPPING replicas not counted), broadcast of the running set, and
    get_running_replica_ids (current_num_replicas counts RUNNING only);
  serve/_private/deployment_scheduler.py:_get_replicas_to_stop (not-yet-running
    replicas first, then the newest running ones);
  serve/_private/replica.py:_perform_graceful_shutdown (sleep
    graceful_shutdown_wait_loop_s first, then check the ongoing count, repeat);
  serve/_private/application_state.py:ApplicationState.autoscale (the decision of
    tick k is acted on at tick k+1);
  serve/_private/router.py:RouterMetricsManager (record every min(0.2 L, MI), push
    every MI, the scale-from-zero push) and autoscaling_state.py (the controller keeps
    the latest report and masks running series to the running set).
Reference: sections 2, 3 and 5 of ray-serve-autoscaling.md.

Tick skipping: between two events that can change its inputs (a push reaching the
controller, a replica changing state, a decision), the policy's inputs are fixed
except `now`, and the MEAN window value moves monotonically with `now`. So the first
tick at which the decision's direction flips can be found by bisection, and the tick at
which a running delay timer fires is computed directly. Every other tick would
reproduce the same decision (hold), so it is not executed. The 2.60 decision counter
only records direction (its magnitude is never read), so skipping ticks cannot change
any decision; `tests/test_controller.py` checks this against a run that executes every tick.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import simpy

from simtune.cluster_base import Cluster, UnlimitedCluster
from simtune.custom_policy import CustomPolicyRunner, is_custom_policy
from simtune.dataplane import A_PTR, N_ROUTABLE, DataPlane
from simtune.metrics import HandleMetricsStore, QUEUED_KEY, WindowAggregate
from simtune.policy import DefaultPolicy, PolicyState
from simtune.ray_knobs import RayKnobs
from simtune.serve_config import DeploymentSpec
from simtune.params import SimParams

STARTING, RUNNING, STOPPING, STOPPED = "STARTING", "RUNNING", "STOPPING", "STOPPED"


@dataclass
class ReplicaRecord:
    rid: int
    created_t: float
    ready_t: float  # when startup finishes (RUNNING at the first tick after); inf while waiting for resources
    startup_s: float = 0.0  # the startup model's time, counted from when resources are granted
    alloc_t: Optional[float] = None  # when the cluster granted its resources
    state: str = STARTING
    running_t: Optional[float] = None
    stop_t: Optional[float] = None
    deadline_t: float = math.inf
    drained_t: Optional[float] = None
    stopped_t: Optional[float] = None
    killed_requests: int = 0


class Controller:
    """One deployment's controller, replicas and the proxy handle's metrics."""

    def __init__(self, env: simpy.Environment, spec: DeploymentSpec, knobs: RayKnobs, params: SimParams,
                 dp: DataPlane, rng: np.random.Generator, t_start: float, cluster: Optional[Cluster] = None) -> None:
        self.env, self.spec, self.knobs, self.params, self.dp, self.rng = env, spec, knobs, params, dp, rng
        self.cluster: Cluster = cluster if cluster is not None else UnlimitedCluster()
        self.period = knobs.control_loop_interval_s + params.controller_step_s
        phase = params.tick_phase_s if params.tick_phase_s is not None else float(rng.uniform(0, self.period))
        self.t0 = t_start + phase
        self.replicas: list[ReplicaRecord] = []  # not yet STOPPED
        self.stopped: list[ReplicaRecord] = []
        self.timeline: list[tuple[float, int, int, int, int]] = []
        self.decisions: list[tuple[float, int, int, int, float]] = []
        self.cfg = spec.autoscaling
        self.policy: Optional[DefaultPolicy] = None
        self.custom: Optional[CustomPolicyRunner] = None
        self.state = PolicyState()
        self.last_up: Optional[float] = None
        self.last_down: Optional[float] = None
        self.ticks_executed = 0
        if self.cfg is not None:
            self.policy = DefaultPolicy(self.cfg, knobs.delay_eps_s)
            if is_custom_policy(self.cfg):
                self.custom = CustomPolicyRunner(self.cfg, spec.name, spec.app_name)
            self.target = self.policy.initial_target()
            self.look_back = float(self.cfg.look_back_period_s)
            self.mi = float(self.cfg.metrics_interval_s)
            self.record_interval = knobs.record_interval_s(self.look_back, self.mi)
            self.agg_name = str(getattr(self.cfg.aggregation_function, "value", self.cfg.aggregation_function)).lower()
            self.store = HandleMetricsStore(self.look_back)
            self.report: Optional[tuple[list, dict]] = None
            self.window = WindowAggregate(self.agg_name)
        else:
            self.target = int(spec.num_replicas)
        self._wake: Optional[simpy.Event] = None
        self.peers: list["Controller"] = []  # the other deployments' controllers (applications)
        self._next_id = 0
        self._running_ids: frozenset[int] = frozenset()
        # Initial replicas.
        for _ in range(self.target):
            r = self._new_replica(t_start, 0.0)
            if params.warm_start:
                r.state, r.running_t, r.ready_t = RUNNING, t_start, t_start
                dp.add_replica(t_start, r.rid)
        self._running_ids = frozenset(r.rid for r in self.replicas if r.state == RUNNING)
        self._log_timeline(t_start)
        env.process(self._control_loop())
        if self.cfg is not None:
            m_phase = params.metrics_phase_s if params.metrics_phase_s is not None else float(
                rng.uniform(0, self.record_interval))
            env.process(self._record_loop(t_start + m_phase))
            env.process(self._push_loop(t_start + m_phase + 1e-6))

    # -- bookkeeping -------------------------------------------------------------------
    def _new_replica(self, t: float, startup_s: float) -> ReplicaRecord:
        r = ReplicaRecord(rid=self._next_id, created_t=t, ready_t=math.inf, startup_s=startup_s)
        self._next_id += 1
        self.dp.ensure_replica(r.rid)
        self.replicas.append(r)
        granted = self.cluster.request(t, r.rid)
        if granted is not None:
            r.alloc_t, r.ready_t = granted, granted + startup_s
        return r

    def _release(self, t: float, r: ReplicaRecord) -> None:
        """Give a stopped replica's resources back; waiting replicas may now start."""
        by_id = {x.rid: x for x in self.replicas}
        for rid, granted in self.cluster.release(t, r.rid):
            w = by_id.get(rid)
            if w is not None and w.state == STARTING:
                w.alloc_t, w.ready_t = granted, granted + w.startup_s

    def counts(self) -> tuple[int, int, int]:
        running = starting = stopping = 0
        for r in self.replicas:
            if r.state == RUNNING:
                running += 1
            elif r.state == STARTING:
                starting += 1
            elif r.state == STOPPING:
                stopping += 1
        return running, starting, stopping

    def _log_timeline(self, t: float) -> None:
        running, starting, stopping = self.counts()
        row = (t, running, starting, stopping, self.target)
        if not self.timeline or self.timeline[-1][1:] != row[1:]:
            self.timeline.append(row)

    def _grid_at_or_after(self, t: float) -> float:
        k = math.ceil((t - self.t0) / self.period - 1e-9)
        return self.t0 + max(k, 0) * self.period

    def poke(self, t: float) -> None:
        """Something the controller reads changed at time t; process the next tick."""
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed(t)

    # -- metrics: the proxy handle's record and push tasks -----------------------------
    def _running_series_now(self) -> dict[int, float]:
        dp = self.dp
        out: dict[int, float] = {}
        routable = set(dp.routable[: dp.si[N_ROUTABLE]].tolist())
        for r in self.replicas:
            rid = r.rid
            if dp.ever_sent[rid] and (rid in routable or dp.sent[rid] > 0):
                out[rid] = float(dp.sent[rid])
        return out

    def _record_loop(self, first: float):
        env = self.env
        yield env.timeout(max(first - env.now, 0.0))
        while True:
            t = env.now
            self.dp.advance(t)
            self.store.record(t, self.dp.queued, self._running_series_now())
            # Scale-from-zero push (router.py:wrap_queued_request): with no replicas, the
            # next request that starts queueing pushes the stored points at once.
            if self.dp.si[N_ROUTABLE] == 0 and self.dp.queued > 0 and self.dp.arrivals_left > 0:
                t_next = float(self.dp.arr_t[self.dp.si[A_PTR]])
                if t_next < t + self.record_interval:
                    env.process(self._push_at(t_next))
            yield env.timeout(self.record_interval)

    def _push_at(self, t: float):
        yield self.env.timeout(max(t - self.env.now, 0.0))
        self._push()

    def _push_loop(self, first: float):
        env = self.env
        yield env.timeout(max(first - env.now, 0.0))
        while True:
            self._push()
            yield env.timeout(self.mi)

    def _push(self) -> None:
        t = self.env.now
        self.dp.advance(t)
        report = self.store.report(t, self.dp.queued, self._running_series_now())
        if self.params.push_delay_s > 0:
            self.env.process(self._deliver(report, t + self.params.push_delay_s))
        else:
            self._accept_report(report, t)

    def _deliver(self, report, t: float):
        yield self.env.timeout(max(t - self.env.now, 0.0))
        self._accept_report(report, t)

    def _accept_report(self, report, t: float) -> None:
        self.report = report
        self._rebuild_window()
        self.poke(t)

    def _rebuild_window(self) -> None:
        if self.report is None:
            self.window = WindowAggregate(self.agg_name)
            return
        queued, running = self.report
        sources = [running[rid] for rid in sorted(running) if rid in self._running_ids] + [queued]
        self.window = WindowAggregate.from_sources(sources, self.agg_name)

    def _queued_window(self) -> WindowAggregate:
        return WindowAggregate.from_sources([self.report[0]] if self.report else [], self.agg_name)

    # -- the control loop ---------------------------------------------------------------
    def _control_loop(self):
        env = self.env
        t = self._grid_at_or_after(env.now)
        yield env.timeout(t - env.now)
        k = round((t - self.t0) / self.period)
        while True:
            t = self.t0 + k * self.period
            self._tick(t)
            self.ticks_executed += 1
            k_next = k + 1 if self.params.exhaustive_ticks else self._next_active_tick(k)
            wake = self._wake = env.event()
            if math.isinf(k_next):
                woke_at = yield wake
            else:
                result = yield env.timeout(self.t0 + k_next * self.period - env.now) | wake
                woke_at = result[wake] if wake in result else None
            self._wake = None
            if woke_at is None:
                k = int(k_next)
                continue
            # Woken by an event: process the first tick strictly after the one just run.
            k_w = max(k + 1, math.ceil((env.now - self.t0) / self.period - 1e-9))
            if not math.isinf(k_next):
                k_w = min(k_w, int(k_next))
            t_w = self.t0 + k_w * self.period
            if t_w > env.now:
                yield env.timeout(t_w - env.now)
            k = k_w

    def _tick(self, t: float) -> None:
        dp = self.dp
        dp.advance(t)
        changed = False
        # 1a. check replicas: promotions, stop completions, force-kills.
        for r in self.replicas:
            if r.state == STARTING and r.ready_t <= t:
                r.state, r.running_t = RUNNING, t
                changed = True
            elif r.state == STOPPING:
                if r.drained_t is not None and r.drained_t <= t:
                    r.state, r.stopped_t = STOPPED, t
                    self._release(t, r)
                    changed = True
                elif t >= r.deadline_t:
                    r.killed_requests = dp.kill_replica(t, r.rid)
                    r.state, r.stopped_t = STOPPED, t
                    self._release(t, r)
                    changed = True
        # 1b. scale to the target.
        running, starting, _ = self.counts()
        delta = self.target - (running + starting)
        if delta > 0:
            # Replicas starting at once slow each other down (process spawn, imports on the
            # same CPUs), whichever deployment they belong to: an application's controllers
            # share the count (`peers`).
            others = sum(p.counts()[1] for p in self.peers if p is not self)
            durations = self.params.startup.draw(self.rng, delta, starting + others)
            for d in durations:
                self._new_replica(t, float(d))
            changed = True
        elif delta < 0:
            self._stop_replicas(t, -delta)
            changed = True
        # 1c/1d. broadcast the running set to the router and the autoscaler.
        running_ids = frozenset(r.rid for r in self.replicas if r.state == RUNNING)
        if running_ids != self._running_ids:
            added = sorted(running_ids - self._running_ids)
            for rid in added:
                if self.params.broadcast_delay_s > 0:
                    self.env.process(self._route_later(rid, t + self.params.broadcast_delay_s))
                else:
                    dp.add_replica(t, rid)
            self._running_ids = running_ids
            if self.cfg is not None:
                self._rebuild_window()
        if changed:
            self.stopped.extend(r for r in self.replicas if r.state == STOPPED)
            self.replicas = [r for r in self.replicas if r.state != STOPPED]
            self._log_timeline(t)
        # 2. autoscale.
        if self.cfg is not None:
            self._autoscale(t)

    def _route_later(self, rid: int, t: float):
        yield self.env.timeout(max(t - self.env.now, 0.0))
        r = next(x for x in self.replicas if x.rid == rid)
        if r.state == RUNNING:
            self.dp.add_replica(self.env.now, rid)

    def _stop_replicas(self, t: float, n: int) -> None:
        not_running = [r for r in self.replicas if r.state == STARTING]
        running = [r for r in self.replicas if r.state == RUNNING]
        victims = sorted(not_running, key=lambda r: -r.created_t)[:n]
        victims += sorted(running, key=lambda r: (-r.created_t, -r.rid))[: n - len(victims)]
        for r in victims:
            if r.state == STARTING:
                # Never initialized: the actor is killed without a drain.
                r.state, r.stop_t, r.stopped_t = STOPPED, t, t
                self._release(t, r)
                continue
            r.state, r.stop_t = STOPPING, t
            r.deadline_t = t + self.spec.graceful_shutdown_timeout_s
            self.dp.remove_replica(t, r.rid)
            self.env.process(self._drain(r))

    def _drain(self, r: ReplicaRecord):
        wait = max(self.spec.graceful_shutdown_wait_loop_s, 1e-3)
        while True:
            yield self.env.timeout(wait)
            if r.state != STOPPING:
                return
            t = self.env.now
            self.dp.advance(t)
            if self.dp.ongoing[r.rid] == 0:
                r.drained_t = t
                self.poke(t)
                return
            if t >= r.deadline_t:
                return

    def _autoscale(self, t: float) -> None:
        running = len(self._running_ids)
        total = self.window.value(t)
        if self.custom is not None:
            queued = self._queued_window().value(t)
            output, decision = self.custom.decide(running, self.target, total, queued, t, self.last_up, self.last_down)
        else:
            d = self.policy.decide(running, self.target, total, self.state, t)
            self.state = d.state
            decision = d.decision
        if decision != self.target:
            self.decisions.append((t, self.target, decision, running, total))
            if decision > self.target:
                self.last_up = t
            else:
                self.last_down = t
            self.target = decision
            self._log_timeline(t)

    # -- tick skipping --------------------------------------------------------------------
    def _next_active_tick(self, k: int) -> float:
        """The next tick at which anything can change, or inf (wait for an event)."""
        t = self.t0 + k * self.period
        cands = [math.inf]
        running, starting, stopping = self.counts()
        if running + starting != self.target:
            cands.append(k + 1)
        for r in self.replicas:
            if r.state == STARTING and not math.isinf(r.ready_t):
                cands.append(self._tick_index_at_or_after(r.ready_t))
            elif r.state == STOPPING:
                if r.drained_t is not None:
                    cands.append(self._tick_index_at_or_after(r.drained_t))
                cands.append(self._tick_index_at_or_after(r.deadline_t))
        if self.cfg is not None:
            if self.custom is not None:
                cands.append(k + 1)  # an opaque policy must see every tick
            else:
                cands.append(self._next_policy_tick(k, t, min(cands)))
        best = min(cands)
        return max(best, k + 1) if not math.isinf(best) else best

    def _tick_index_at_or_after(self, t: float) -> int:
        return max(math.ceil((t - self.t0) / self.period - 1e-9), 0)

    def _direction(self, running: int, t: float) -> int:
        """Sign of (desired - target) at tick time t: what the delay timer tracks."""
        _, d = self.policy.scaled_desired(running, self.target, self.window.value(t))
        return (d > self.target) - (d < self.target)

    def _fire_tick(self, k: int, ts: float, delay: float) -> int:
        """First tick index > k with t_k - ts + eps >= delay (_apply_delay_logic)."""
        eps = self.policy.eps
        kf = max(math.ceil((ts + delay - eps - self.t0) / self.period), k + 1)
        while kf - 1 > k and self.t0 + (kf - 1) * self.period - ts + eps >= delay:
            kf -= 1
        while self.t0 + kf * self.period - ts + eps < delay:
            kf += 1
        return kf

    def _next_policy_tick(self, k: int, t: float, horizon: float) -> float:
        running = len(self._running_ids)
        if running == 0:
            # Cold start acts at once when the window shows demand; that only changes
            # with a push, which wakes the controller.
            kind, d = self.policy.scaled_desired(0, self.target, self.window.value(t))
            if kind == "cold_start":
                lower, upper = self.policy.bounds()
                return k + 1 if max(lower, min(upper, d)) != self.target else math.inf
            if kind == "bypass":
                return math.inf
        direction = self._direction(running, t)
        # Bound the search by the next push (it always wakes us) or the other events.
        k_h = int(min(horizon, k + math.ceil((self.mi + self.params.push_delay_s) / self.period) + 2))
        cands = [math.inf]
        if direction != 0:
            if self.state.timestamp is None:
                # The timer fired this tick and the result was clamped: it restarts next tick.
                self.state = PolicyState(direction, self.t0 + (k + 1) * self.period)
            ts = self.state.timestamp
            delay = self.policy.delay_for(self.target + direction, self.target)
            kf = self._fire_tick(k, ts, delay)
            cands.append(kf)
            k_h = min(k_h, kf)
        # First tick in (k, k_h] whose direction differs (monotone between events).
        if k_h > k and self._direction(running, self.t0 + k_h * self.period) != direction:
            lo, hi = k, k_h  # direction(lo) == current, direction(hi) differs
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if self._direction(running, self.t0 + mid * self.period) != direction:
                    hi = mid
                else:
                    lo = mid
            cands.append(hi)
        return min(cands)
