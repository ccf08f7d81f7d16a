"""Where candidate simulations run: in this process, in N worker processes, or as
tasks on a Ray cluster. All three take the same jobs and yield the same outcomes as
they finish, so the search loop (simtune.tuner.study) never knows which one it uses.

Why processes and not threads: the simulator's control plane is Python (simpy), so
threads would share one core through the GIL. Why only the search loop touches the
optuna storage: one writer per search process keeps SQLite happy and lets a worker
crash without leaving half-written trials.

Workers write nothing to stdout: their fd 1 is pointed at stderr, because stdout of
`simtune recommend` carries only the YAML.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

from simtune.errors import SimtuneError
from simtune.tuner.candidate import InvalidCandidate
from simtune.tuner.problem import Problem, evaluate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    key: Any  # the caller's handle (a slot number, a baseline name)
    entry: Any  # the target's candidate: a deployment entry, or {deployment: entry}
    part: str = "search"
    strict: bool = True
    keep: bool = False
    spec: Any = None  # the validated candidate (DeploymentSpec or {deployment: spec}), when the caller has it


class WorkerLost(SimtuneError):
    """A worker process, Ray task or node died: the search stops (finished trials are
    stored) instead of recording a failure that a rerun would not reproduce."""

    def __init__(self, message: str) -> None:
        super().__init__(f"{message}; finished trials are stored in the study: rerun with --resume")


# An outcome: ("ok", result dict) | ("invalid", reason) | ("error", traceback text)
Outcome = tuple[str, Any]


def run_job(problem: Problem, job: Job) -> tuple[Any, Outcome]:
    try:
        return job.key, ("ok", evaluate(problem, job.entry, job.part, job.strict, job.keep, job.spec))
    except InvalidCandidate as exc:
        return job.key, ("invalid", str(exc))
    except Exception:  # a simulator bug must fail one trial, not the search
        return job.key, ("error", traceback.format_exc(limit=6))


class InlineExecutor:
    """Jobs run one after another in this process (--n-jobs 1)."""

    name = "inline"
    capacity = 1

    def __init__(self, problem: Problem) -> None:
        self.problem = problem

    def run(self, jobs: Sequence[Job]) -> Iterator[tuple[Any, Outcome]]:
        for job in jobs:
            yield run_job(self.problem, job)

    def close(self) -> None:
        pass


# -- worker processes ------------------------------------------------------------------------

_WORKER_PROBLEM: Optional[Problem] = None


def _init_worker(problem: Problem) -> None:
    global _WORKER_PROBLEM
    _WORKER_PROBLEM = problem
    try:
        os.dup2(2, 1)
    except OSError:  # pragma: no cover - no fd 2
        pass
    sys.stdout = sys.stderr
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """A worker whose parent was SIGKILLed would wait for jobs forever (it holds both
    ends of the job queue, so it never sees EOF): leave when the parent is gone."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


def _worker_job(job: Job) -> tuple[Any, Outcome]:
    assert _WORKER_PROBLEM is not None
    return run_job(_WORKER_PROBLEM, job)


class ProcessExecutor:
    """Jobs run in `n_jobs` spawned worker processes (--n-jobs N).

    Spawned, not forked: the parent may hold threads (progress bar, heartbeat, Ray)
    that a fork would copy in an inconsistent state. concurrent.futures, not
    multiprocessing.Pool: a worker killed by the OS breaks the pool loudly instead of
    leaving its job unanswered forever."""

    name = "processes"

    def __init__(self, problem: Problem, n_jobs: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.n_jobs = self.capacity = n_jobs
        self.pool = ProcessPoolExecutor(max_workers=n_jobs, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_init_worker, initargs=(problem,))

    def run(self, jobs: Sequence[Job]) -> Iterator[tuple[Any, Outcome]]:
        from concurrent.futures import as_completed
        from concurrent.futures.process import BrokenProcessPool

        futures = {self.pool.submit(_worker_job, job): job for job in jobs}
        for fut in as_completed(futures):
            try:
                yield fut.result()
            except BrokenProcessPool as exc:
                raise WorkerLost(f"a worker process died ({exc}) during trial {futures[fut].key}") from None

    def close(self) -> None:
        procs = list((getattr(self.pool, "_processes", None) or {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:  # do not wait for a running simulation to finish
            proc.terminate()
        for proc in procs:
            proc.join(timeout=5)


# -- Ray -----------------------------------------------------------------------------------


def _ray_job(problem: Problem, job: Job) -> tuple[Any, Outcome]:
    try:
        os.dup2(2, 1)
    except OSError:  # pragma: no cover
        pass
    return run_job(problem, job)


class RayExecutor:
    """Jobs run as Ray tasks (--ray-address). `auto` joins a running cluster, or starts
    a local one when none runs. The problem (traces included) is put in the object
    store once and shared by every task."""

    name = "ray"

    def __init__(self, problem: Problem, address: str) -> None:
        import ray

        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            kwargs = dict(log_to_driver=False, include_dashboard=False, configure_logging=False)
            if address == "auto":
                try:
                    ray.init(address="auto", **kwargs)
                except ConnectionError:
                    log.info("no running Ray cluster found; starting a local one")
                    ray.init(**kwargs)
            else:
                ray.init(address=address, **kwargs)
            self.started = True
        self.problem_ref = ray.put(problem)
        self.remote = ray.remote(num_cpus=1, max_retries=2)(_ray_job)
        cpus = ray.cluster_resources().get("CPU", 1)
        self.capacity = max(1, int(cpus))
        log.info("Ray cluster with %g CPUs", cpus)

    def run(self, jobs: Sequence[Job]) -> Iterator[tuple[Any, Outcome]]:
        try:
            pending = {self.remote.remote(self.problem_ref, job): job for job in jobs}
        except Exception as exc:
            raise WorkerLost(f"Ray refused the trials: {type(exc).__name__}: {str(exc)[:200]}") from None
        while pending:
            ready, _ = self.ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            job = pending.pop(ref)
            try:
                result = self.ray.get(ref)
            except Exception as exc:  # a dead raylet or node: infrastructure, not the trial's fault
                raise WorkerLost(f"Ray could not run trial {job.key}: {type(exc).__name__}: "
                                 f"{(str(exc).strip().splitlines() or [''])[0][:200]}") from None
            yield result

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def make_executor(problem: Problem, n_jobs: int = 1, ray_address: Optional[str] = None):
    if ray_address:
        return RayExecutor(problem, ray_address)
    if n_jobs < 0:
        n_jobs = os.cpu_count() or 1
    if n_jobs <= 1:
        return InlineExecutor(problem)
    return ProcessExecutor(problem, n_jobs)
