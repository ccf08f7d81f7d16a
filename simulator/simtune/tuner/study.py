"""The optuna search, built so that its answer depends on the inputs and `--seed` only.

Why not `study.optimize`: with parallel workers, optuna's TPE proposes each trial from
whatever happened to finish first, and after a SIGKILL the sampler's random state is
gone, so neither `--n-jobs` nor `--resume` would give the same answer twice. Here:

* Trials are numbered by *slot* 0..N-1 (user attr `simtune:slot`), in batches of
  `batch_size`. Slot k's parameters are proposed by a fresh `TPESampler(seed=f(seed,
  k))` that sees exactly the finished slots of the earlier batches, in slot order (an
  in-memory copy of them: the "mirror" study). Simulations are deterministic given the
  config and seed. So every slot's parameters and results are a function of (inputs,
  seed, k), whoever computes it, in whatever order, on however many processes. (A target
  with `proposal_attempts` > 1, a prefill/decode application, has a proposal that Ray
  rejects drawn again by `TPESampler(seed=f(seed, k, attempt))`, up to that many times,
  before the slot is recorded as pruned.)
* A slot is written to the storage only when it has finished, as one complete trial
  (`study.add_trial`: params, values, constraints and metrics in one transaction).
  A killed run leaves only whole trials behind; `--resume` recomputes the missing
  slots, which come out the same. The answer is the best over slots 0..N-1.
* Several `simtune recommend` processes (other machines, a shared PostgreSQL) can work
  on one study: each claims the slots it computes (study user attr
  `simtune:claim:<k>`), refreshes a heartbeat, and takes over the claims of workers
  that died (same host: the process is gone; elsewhere: no heartbeat for
  `stale_after_s`). A batch is finished before the next is proposed, so all workers
  propose from the same history and the answer stays the same.
Only `--timeout` (which stops after a wall-clock time) can change the answer.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from simtune.errors import InputError
from simtune.tuner.candidate import InvalidCandidate
from simtune.tuner.executor import Job
from simtune.tuner.objective import Objective

log = logging.getLogger(__name__)

SLOT = "simtune:slot"
CANDIDATE = "simtune:candidate"
METRICS = "simtune:metrics"
PRUNED_REASON = "simtune:pruned"
ERROR = "simtune:error"
FINGERPRINT = "simtune:fingerprint"
INPUTS = "simtune:inputs"
CLAIM = "simtune:claim:"
WORKER = "simtune:worker:"


# -- storage ------------------------------------------------------------------------------


def open_storage(url: Optional[str], default_path: Path):
    """An optuna storage from a URL (sqlite:///, postgresql://, mysql://, ...), a file
    path (SQLite) or `memory`. SQLite waits up to a minute for a lock, so two worker
    processes can share one file."""
    if url in ("memory", ":memory:"):
        return optuna.storages.InMemoryStorage()
    if url is None:
        default_path.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{default_path}"
    elif "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{url}"
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except ImportError as exc:
            raise InputError(f"--storage {_redact(url)}: database driver missing ({exc}); for PostgreSQL "
                             "install psycopg[binary]") from None
        except Exception as exc:
            # Two workers creating the tables at once: one loses the race; try again.
            msg = str(exc).lower()
            if attempt < 4 and any(w in msg for w in ("duplicate key", "unique constraint", "already exists",
                                                        "database is locked")):
                time.sleep(0.5 + attempt)
                continue
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InputError(f"--storage {_redact(url)}: cannot open: {first}") from None
    raise InputError(f"--storage {_redact(url)}: cannot create its tables")  # pragma: no cover


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def open_study(storage, study_name: str, directions: list[str], fingerprint: str, inputs: dict,
               resume: bool) -> optuna.Study:
    """Create the study, or load it for --resume after checking it was made from the
    same inputs (otherwise its trials would answer another question)."""
    try:
        study = optuna.create_study(storage=storage, study_name=study_name, directions=directions,
                                    load_if_exists=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"study {study_name!r}: cannot create or load: {first}") from None
    attrs = study.user_attrs
    has_trials = any(SLOT in t.user_attrs for t in study.get_trials(deepcopy=False))
    old = attrs.get(FINGERPRINT)
    if old is not None and old != fingerprint:
        before = attrs.get(INPUTS) or {}
        diff = sorted(k for k in set(before) | set(inputs) if before.get(k) != inputs.get(k))
        raise InputError(f"study {study_name!r} was made from other inputs (differs in: {', '.join(diff) or '?'}); "
                         "use another --study-name or --storage")
    if has_trials and not resume:
        n = sum(SLOT in t.user_attrs for t in study.get_trials(deepcopy=False))
        raise InputError(f"study {study_name!r} already has {n} trials; pass --resume to continue it "
                         "(or use another --study-name or --storage)")
    if old is None:
        study.set_user_attr(FINGERPRINT, fingerprint)
        study.set_user_attr(INPUTS, inputs)
    return study


# -- who is working ------------------------------------------------------------------------


def _start_time(pid: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner_token() -> str:
    """host:pid:process-start-time; unique even when pids are reused."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or int(time.time())}"


def owner_alive(owner: str) -> Optional[bool]:
    """True/False for a worker on this host; None when it runs elsewhere."""
    try:
        host, pid_s, start = owner.rsplit(":", 2)
        pid = int(pid_s)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    actual = _start_time(pid)
    if actual is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not Path("/proc").exists()
    return actual == start


# -- the search ----------------------------------------------------------------------------


@dataclass
class SearchSettings:
    n_trials: int
    batch_size: int = 8
    seed: int = 0
    timeout_s: Optional[float] = None
    stale_after_s: float = 120.0
    heartbeat_s: float = 10.0
    poll_s: float = 0.5
    n_startup_trials: int = 10


def slot_seed(seed: int, slot: int) -> int:
    return int(np.random.SeedSequence([seed, slot]).generate_state(1)[0])


class Search:
    """Runs the slots of one study (see the module docstring)."""

    def __init__(self, study: optuna.Study, target, objective: Objective, executor,
                 settings: SearchSettings, seed_params: list[dict[str, Any]] = (),
                 progress: Optional[Callable[[int, int, Optional[float]], None]] = None) -> None:
        self.study = study
        self.target = target  # simtune.tuner.target: what a slot's parameters configure
        self.objective = objective
        self.executor = executor
        self.s = settings
        self.seed_params = list(seed_params)
        self.progress = progress
        self.owner = owner_token()
        self._stop = threading.Event()
        self.timed_out = False
        self.n_evaluated = 0
        self._count = 0
        self._best: Optional[float] = None

    # -- reading the storage -------------------------------------------------------------
    def done(self) -> dict[int, FrozenTrial]:
        """Finished slots (the first trial of each slot, if a race wrote two)."""
        out: dict[int, FrozenTrial] = {}
        for t in self.study.get_trials(deepcopy=False):
            k = t.user_attrs.get(SLOT)
            if k is not None and t.state.is_finished() and k not in out:
                out[int(k)] = t
        return out

    def _claimable(self, owner: Optional[str], attrs: dict) -> bool:
        if owner is None or owner == self.owner:
            return True
        alive = owner_alive(owner)
        if alive is not None:
            return not alive
        return not self._fresh(attrs.get(WORKER + owner))

    def _fresh(self, beat: Any) -> bool:
        return isinstance(beat, dict) and beat.get("cap", 0) > 0 and time.time() - float(beat.get("t", 0)) <= \
            self.s.stale_after_s

    def _capacity(self) -> int:
        return max(1, int(getattr(self.executor, "capacity", 1)))

    # -- proposing -------------------------------------------------------------------------
    def _mirror(self, done: dict[int, FrozenTrial], upto: int) -> optuna.Study:
        mirror = optuna.create_study(directions=self.objective.directions)
        view = [done[k] for k in sorted(done) if k < upto and done[k].state in (TrialState.COMPLETE, TrialState.PRUNED)]
        mirror.add_trials(view)
        return mirror

    def _propose(self, mirror: optuna.Study, k: int, attempt: int = 0) -> tuple[dict, dict]:
        if k < len(self.seed_params):
            fixed = optuna.trial.FixedTrial(self.seed_params[k])
            params = self.target.suggest(fixed)
            return params, dict(fixed.distributions)
        seed = slot_seed(self.s.seed, k) if attempt == 0 else int(
            np.random.SeedSequence([self.s.seed, k, attempt]).generate_state(1)[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # group=True
            mirror.sampler = optuna.samplers.TPESampler(
                seed=seed, multivariate=True, group=True, constant_liar=False,
                n_startup_trials=self.s.n_startup_trials)
        trial = mirror.ask()
        params = self.target.suggest(trial)
        dists = dict(trial.distributions)
        mirror.tell(trial, state=TrialState.FAIL)
        return params, dists

    # -- writing the storage -----------------------------------------------------------
    def _record(self, k: int, params: dict, dists: dict, state: TrialState, *, entry: Any,
                result: Optional[dict] = None, reason: Optional[str] = None) -> None:
        user_attrs: dict[str, Any] = {SLOT: k, CANDIDATE: entry}
        system_attrs: dict[str, Any] = {}
        values = None
        if result is not None:
            worst = result["worst"]
            user_attrs[METRICS] = {"worst": worst, "runs": result["runs"]}
            values = self.objective.values(worst)
            for name, c in self.objective.constraints(worst).items():
                system_attrs[f"constraints:{name}"] = float(c)
        if reason is not None:
            user_attrs[PRUNED_REASON if state == TrialState.PRUNED else ERROR] = reason[-2000:]
        trial = optuna.trial.create_trial(state=state, params=params, distributions=dists, values=values,
                                          user_attrs=user_attrs, system_attrs=system_attrs)
        self.study.add_trial(trial)

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> list[FrozenTrial]:
        beat = threading.Thread(target=self._heartbeat, daemon=True)
        beat.start()
        t0 = time.monotonic()
        try:
            while True:
                done = self.done()
                missing = [k for k in range(self.s.n_trials) if k not in done]
                self._report(done)
                if not missing:
                    break
                if self.s.timeout_s is not None and time.monotonic() - t0 > self.s.timeout_s:
                    self.timed_out = True
                    log.warning("--timeout reached: stopping with %d of %d trials", len(done), self.s.n_trials)
                    break
                start = missing[0] // self.s.batch_size * self.s.batch_size
                batch = [k for k in missing if k < start + self.s.batch_size]
                mine = self._claim(batch)
                if not mine:
                    time.sleep(self.s.poll_s)  # other workers are computing this batch
                    continue
                self._run_batch(mine, self._mirror(done, start))
        finally:
            self._stop.set()
            beat.join(timeout=10)
        done = self.done()
        return [done[k] for k in sorted(done) if k < self.s.n_trials]

    def _claim(self, batch: list[int]) -> list[int]:
        """Claim this worker's share of the batch's free slots, in proportion to its
        capacity among the live workers (so a second machine gets work instead of
        waiting while the first claims every batch)."""
        attrs = self.study.user_attrs
        free = [k for k in batch if self._claimable(attrs.get(f"{CLAIM}{k}"), attrs)]
        if not free:
            return []
        caps = {key[len(WORKER):]: beat.get("cap", 0) for key, beat in attrs.items()
                if key.startswith(WORKER) and self._fresh(beat)}
        caps[self.owner] = self._capacity()
        alive = {o: c for o, c in caps.items() if o == self.owner or owner_alive(o) is not False}
        share = math.ceil(len(free) * caps[self.owner] / sum(alive.values()))
        mine = free[:max(1, share)]
        for k in mine:
            self.study.set_user_attr(f"{CLAIM}{k}", self.owner)
        attrs = self.study.user_attrs  # a racing worker's claim may have landed last
        return [k for k in mine if attrs.get(f"{CLAIM}{k}") == self.owner]

    def _run_batch(self, slots: list[int], mirror: optuna.Study) -> None:
        jobs, proposals = [], {}
        # A target may ask for proposals that Ray rejects to be drawn again (a fresh,
        # seeded sampler per attempt, so the answer stays a function of the inputs):
        # with several deployments tuned at once, most random combinations of their
        # independent ranges hold one invalid pair (min_replicas > max_replicas, ...).
        attempts = max(1, int(getattr(self.target, "proposal_attempts", 1)))
        for k in slots:
            for attempt in range(attempts if k >= len(self.seed_params) else 1):
                params, dists = self._propose(mirror, k, attempt)
                entry = self.target.candidate(params)
                proposals[k] = (params, dists, entry)
                try:
                    spec = self.target.validate(entry)
                    break
                except InvalidCandidate as exc:
                    reason = str(exc)
            else:
                self._record(k, params, dists, TrialState.PRUNED, entry=entry, reason=reason)
                self._report(result=None)
                continue
            jobs.append(Job(k, entry, spec=spec))
        for k, (status, payload) in self.executor.run(jobs):
            params, dists, entry = proposals[k]
            self.n_evaluated += 1
            if status == "ok":
                self._record(k, params, dists, TrialState.COMPLETE, entry=entry, result=payload)
            elif status == "invalid":
                self._record(k, params, dists, TrialState.PRUNED, entry=entry, reason=payload)
            else:
                log.warning("trial %d failed: %s", k, payload.strip().splitlines()[-1])
                self._record(k, params, dists, TrialState.FAIL, entry=entry, reason=payload)
            self._report(result=payload if status == "ok" else None)

    def _heartbeat(self) -> None:
        while not self._stop.is_set():
            self._beat(self._capacity())
            self._stop.wait(self.s.heartbeat_s)
        self._beat(0)  # leaving: others stop counting on this worker's share

    def _beat(self, cap: int) -> None:
        try:
            self.study.set_user_attr(WORKER + self.owner, {"t": time.time(), "cap": cap})
        except Exception as exc:  # pragma: no cover - a storage hiccup must not stop the search
            log.debug("heartbeat failed: %s", exc)

    def _report(self, done: Optional[dict] = None, result: Optional[dict] = None) -> None:
        """Progress: recount from `done` at each batch, then count this worker's records."""
        if done is not None:
            self._count = sum(k < self.s.n_trials for k in done)
            self._best = None
            for t in done.values():
                self._consider(t.user_attrs.get(METRICS) if t.state == TrialState.COMPLETE else None)
        else:
            self._count += 1
            self._consider(result)
        if self.progress is not None:
            self.progress(self._count, self.s.n_trials, self._best)

    def _consider(self, metrics: Optional[dict]) -> None:
        if metrics and self.objective.meets(metrics["worst"]):
            cost = metrics["worst"]["cost"]
            self._best = cost if self._best is None else min(self._best, cost)


def trial_entry(trial: FrozenTrial) -> Any:
    """The trial's candidate: a deployment entry, or {deployment: entry} for an application."""
    return trial.user_attrs[CANDIDATE]


def trial_metrics(trial: FrozenTrial) -> Optional[dict]:
    m = trial.user_attrs.get(METRICS)
    return None if m is None else m["worst"]


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
