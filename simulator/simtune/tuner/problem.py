"""The data a trial is judged on: traces split by time, scaled for headroom, and the
function that simulates one candidate on all of them.

Why split by time, never by rows: traffic is autocorrelated, so rows drawn at random
from the same minutes say nothing about unseen traffic. The last `holdout` fraction
of each trace is never simulated during the search. It is judged afterwards by
simulating the whole trace and scoring only the requests that arrive in the holdout
window (and the replica-seconds spent in it): the deployment then enters the window
in the state the earlier traffic left it in, as it would in production, instead of
being freshly deployed at the window's start.

A `Problem` is picklable and shipped once to each worker process or Ray task; the
objects that are not picklable (service-time samplers, startup models) are rebuilt
lazily on the worker. What it simulates is its `target` (simtune.tuner.target): one
deployment, or an application whose every simulation covers all its deployments.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from simtune.errors import InputError
from simtune.params import SimParams
from simtune.trace import Trace, load_trace
from simtune.tuner.objective import Objective
from simtune.tuner.space import TrafficStats

log = logging.getLogger(__name__)


@dataclass
class Scenario:
    """One trace at one traffic multiplier; requests arriving before `t0` are not scored."""

    trace_name: str
    headroom: float
    trace: Trace
    t0: float = 0.0


@dataclass
class Problem:
    target: Any  # simtune.tuner.target.DeploymentTarget | AppTarget
    objective: Objective
    service_time: Optional[str]
    params: dict
    sim_seeds: tuple[int, ...]
    search: list[Scenario]
    holdout: list[Scenario]
    # One deployment: a simtune.service_models model (picklable), or None: fixed service
    # times (an application's service times and models come from its topology).
    service_model: Any = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state

    def sim_params(self, seed: int) -> SimParams:
        key = ("params", seed)
        if key not in self._cache:
            p = SimParams.from_dict(self.params, "<params>")
            p.seed = seed
            self._cache[key] = p
        return self._cache[key]

    def service_dist(self):
        if "svc" not in self._cache:
            from simtune.service_time import parse_service_time

            self._cache["svc"] = parse_service_time(self.service_time) if self.service_time else None
        return self._cache["svc"]

    def scenarios(self, part: str) -> list[Scenario]:
        return self.search if part == "search" else self.holdout


def evaluate(problem: Problem, candidate: Any, part: str = "search", strict: bool = True,
             keep: bool = False, spec=None) -> dict[str, Any]:
    """Simulate `candidate` (the target's: an entry, or {deployment: entry}) on every
    scenario of `part` ("search" or "holdout") and every simulator seed; returns the
    worst case plus each run's metrics. Raises InvalidCandidate if Ray rejects it.
    `keep` also returns the results. `spec`: the candidate already validated (Ray's
    DeploymentConfig costs ~20 ms a call)."""
    target = problem.target
    spec = spec if spec is not None else target.validate(candidate, strict=strict)
    runs, results = [], []
    for sc in problem.scenarios(part):
        for seed in problem.sim_seeds:
            res = target.simulate(problem, spec, sc.trace, seed)
            m = problem.objective.score(res, sc.t0)
            runs.append({"trace": sc.trace_name, "headroom": sc.headroom, "seed": seed, **m})
            if keep:
                results.append(((sc.trace_name, sc.headroom, seed), res))
    worst = problem.objective.worst((r["trace"], r) for r in runs)
    out: dict[str, Any] = {"worst": worst, "runs": runs}
    if keep:
        out["results"] = results
    return out


# -- building the problem ------------------------------------------------------------------


def load_traces(paths: Sequence[str | Path], *, rate_scale: float = 1.0, start: Optional[float] = None,
                end: Optional[float] = None, seed: int = 0) -> list[Trace]:
    """Load each --trace (any format `simtune.trace` reads) and give them unique names;
    `start`/`end` keep a window of each (restarted at 0), `rate_scale` thins (<1) or
    superposes (>1) its traffic, seeded by `seed` (simtune.trace.io.load_trace)."""
    if not paths:
        raise InputError("give at least one --trace")
    traces, seen = [], set()
    for path in paths:
        tr = load_trace(path, rate_scale=rate_scale, start=start, end=end, seed=seed)
        if len(tr) == 0:
            window = f" in --time-window {start if start is not None else ''}:{end if end is not None else ''}" \
                if start is not None or end is not None else ""
            raise InputError(f"{path}: no requests{window}")
        name = Path(path).stem
        base, i = name, 2
        while name in seen:
            name, i = f"{base}-{i}", i + 1
        seen.add(name)
        tr.name = name
        traces.append(tr)
    return traces


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_holdout(trace: Trace, holdout: float) -> tuple[Trace, float]:
    """(training part, holdout start time): the first (1 - holdout) of the span."""
    span = trace.span
    if holdout <= 0:
        return trace, span
    t_h = span * (1.0 - holdout)
    n_train = int(np.searchsorted(trace.timestamps, t_h, side="left"))
    if n_train < 10 or len(trace) - n_train < 10:
        raise InputError(f"trace {trace.name!r}: --holdout {holdout:g} leaves too few requests on one side "
                         f"({n_train} before {t_h:g} s, {len(trace) - n_train} after)")
    train = trace.take(np.arange(n_train))
    train.meta["span_s"] = t_h
    return train, t_h


def scaled(trace: Trace, factor: float, seed: int) -> Trace:
    """The trace at `factor` x its rate (superposed shifted copies; see
    simtune.trace.transforms.scale_rate), seeded so every run sees the same traffic."""
    if factor == 1.0:
        return trace
    from simtune.trace.transforms import scale_rate

    out = scale_rate(trace, factor, seed=seed)
    out.name = trace.name
    return out


def build_scenarios(traces: Sequence[Trace], holdout: float, headrooms: Sequence[float],
                    seed: int) -> tuple[list[Scenario], list[Scenario]]:
    search, hold = [], []
    for tr in traces:
        train, t_h = split_holdout(tr, holdout)
        for h in headrooms:
            search.append(Scenario(tr.name, h, scaled(train, h, seed)))
            if holdout > 0:
                hold.append(Scenario(tr.name, h, scaled(tr, h, seed), t0=t_h))
    return search, hold


def peak_rate_10s(search: Sequence[Scenario]) -> float:
    """The busiest 10-s arrival rate over every search scenario (req/s)."""
    peak = 0.0
    for sc in search:
        ts = sc.trace.timestamps
        if len(ts):
            counts = np.bincount(((ts - ts[0]) // 10.0).astype(np.int64))
            peak = max(peak, float(counts.max()) / 10.0)
    return peak


def traffic_stats(search: Sequence[Scenario], service_time: Optional[str],
                  probe: Optional[Callable[[], float]] = None) -> TrafficStats:
    """Peak 10-s rate and mean service time of the search part (never the holdout).

    `probe` (with a service model): the mean time a request holds a replica slot in a
    simulation of the current config, used when neither --service-time nor a
    service_time column says it (batch and LLM models derive it from tokens)."""
    peak = 0.0
    svc_sum, svc_n, missing = 0.0, 0, set()
    for sc in search:
        ts = sc.trace.timestamps
        if len(ts):
            counts = np.bincount(((ts - ts[0]) // 10.0).astype(np.int64))
            peak = max(peak, float(counts.max()) / 10.0)
        own = sc.trace.service_time
        if own is None:
            missing.add(sc.trace_name)
        else:
            svc_sum += float(own.sum())
            svc_n += len(own)
    if service_time:
        from simtune.service_time import parse_service_time

        mean = parse_service_time(service_time).mean
    elif probe is not None:
        mean = probe()
    elif missing:
        raise InputError(f"trace(s) {', '.join(sorted(missing))} have no service_time column; give a "
                         "distribution with --service-time (e.g. lognormal:mean=0.1,p99=0.5)")
    else:
        mean = svc_sum / max(svc_n, 1)
    return TrafficStats(peak_rate_10s=peak, mean_service_s=mean)


def slot_time_probe(problem: "Problem", spec) -> Callable[[], float]:
    """Mean (end - start) of successful requests when `spec` serves the first search
    scenario under the problem's service model."""
    def probe() -> float:
        from simtune.dataplane import OK
        from simtune.simulate import simulate

        sc = problem.search[0]
        seed = problem.sim_seeds[0]
        res = simulate(sc.trace, spec, problem.sim_params(seed), service_time=problem.service_dist(), seed=seed,
                       service_model=problem.service_model)
        ok = res.status == OK
        return float(np.mean(res.end[ok] - res.start[ok])) if ok.any() else 1.0

    return probe


def app_traffic_stats(problem: "Problem", current: Any) -> dict[str, TrafficStats]:
    """Each deployment's traffic, for its default ranges: the trace's peak 10-s rate
    (every search scenario) times the calls the deployment receives per request, and
    the mean time one of its calls holds a replica slot (its own work plus the
    downstream calls it awaits), both measured in one simulation of the current config
    (`current`, validated) on the first search scenario."""
    from simtune.dataplane import OK

    peak = peak_rate_10s(problem.search)
    sc = problem.search[0]
    res = problem.target.simulate(problem, current, sc.trace, problem.sim_seeds[0])
    n = max(len(sc.trace), 1)
    out = {}
    for name, r in res.deployments.items():
        ok = r.status == OK
        done = np.isfinite(r.end) & np.isfinite(r.start)
        pick = ok if ok.any() else done
        slot = float(np.mean(r.end[pick] - r.start[pick])) if pick.any() else 1.0
        out[name] = TrafficStats(peak_rate_10s=peak * len(r.arrival) / n, mean_service_s=slot)
    return out
