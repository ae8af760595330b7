"""What every Spark task of an iteration runs, whichever engine schedules it: its share of the evaluation of the
shipped policy, then the algorithm's task, reseeded from the task's own seed so that a retry returns the same
bytes; under ``spark.sync: gradients`` inside its run's group (``ddrl.engines.rendezvous``)."""

from __future__ import annotations

import dataclasses
import gc
import time
from typing import Any, Mapping

from ddrl import envs
from ddrl.algorithms import Algorithm
from ddrl.collective import ALONE, Collective
from ddrl.config import Config
from ddrl.merge import Partial
from ddrl.policy import Policy
from ddrl.seeding import seed_everything, task_slice
from ddrl.worker_cache import WorkerCache


@dataclasses.dataclass(frozen=True)
class Work:
    """The part of a task that is the same in every iteration of a run; engines ship it with the job."""

    algorithm: Algorithm
    config: Config
    fingerprint: str
    """The config's fingerprint: keys the worker caches, which outlive a job in a reused Python worker."""

    def run(self, shipped: Mapping[str, Any], task: tuple[int, int], collective: Collective = ALONE) -> Partial:
        """Executor side: task ``(index, seed)`` with the iteration's ``shipped`` payload and evaluation seeds, in
        ``collective`` with the run's other tasks."""
        index, seed = task
        _limit_threads()
        payload, evaluation_seeds = shipped["payload"], shipped["evaluation_seeds"]
        share = evaluation_seeds[task_slice(index, self.config.spark.num_tasks, len(evaluation_seeds))]
        evaluation = _evaluate_share(self.algorithm.payload_policy(payload), self.config, share, self.fingerprint) if share else None
        seed_everything(seed)
        partial = Partial.of_task(index, self.algorithm.run_task(payload, index, seed, collective), evaluation)
        _freeze_long_lived_objects(self.fingerprint)
        return partial


def run_element(works: list[Work], shipped: list[Mapping[str, Any]], element: tuple[int, tuple[int, int]], meeting: Any) -> dict[int, Partial]:
    """One Spark task of a shared job: ``element`` is (the run's index in the job, (task index, seed)); with a
    ``meeting`` (a barrier stage) the task first joins its run's group."""
    from ddrl.engines import rendezvous, synchronized

    job, task = element
    work = works[job]
    if meeting is None or not synchronized(work.config):
        return {job: work.run(shipped[job], task)}
    with rendezvous.joined(meeting, job, task[0], work.config.spark.num_tasks, work.fingerprint) as collective:
        return {job: work.run(shipped[job], task, collective)}


_EVALUATION_ENVS = WorkerCache(close=lambda vector_env: vector_env.close())


def _evaluate_share(policy: Policy, config: Config, seeds: list[int], run_fingerprint: str) -> dict[str, Any]:
    """Greedy episodes of the shipped policy, one per seed, in an env vector cached per worker and config."""
    started = time.perf_counter()
    vector_env = _EVALUATION_ENVS.get((run_fingerprint, len(seeds)), lambda: envs.make_evaluation_env(config.env, len(seeds)))
    returns, _ = envs.evaluate(policy.act_independently, config.env, len(seeds), seeds, vector_env)
    return {"returns": returns, "seconds": time.perf_counter() - started}


_frozen_for_runs: set[str] = set()


def _freeze_long_lived_objects(run_fingerprint: str) -> None:
    """After a Python worker's first task of a config: hide what that task imported and cached (torch, gymnasium,
    envs, modules; ~180k objects) from the cyclic garbage collector.

    PySpark's daemon runs a full ``gc.collect()`` after every task of a reused worker, and over torch's objects
    that takes ~90 ms, during which the worker cannot start the next job's task.  Frozen objects are still
    freed when their reference counts drop.  Each new config unfreezes first, so that cycles among objects
    the worker caches dropped since are collected.
    """
    if run_fingerprint in _frozen_for_runs:
        return
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    _frozen_for_runs.add(run_fingerprint)


def _limit_threads() -> None:
    """Give torch the task's CPUs (spark.task.cpus), not every core of the machine."""
    import torch
    from pyspark import TaskContext

    context = TaskContext.get()
    cpus = context.cpus() if context is not None else 1
    if torch.get_num_threads() != cpus:
        torch.set_num_threads(cpus)
