"""Engines: how one iteration's tasks run on Spark, behind one small interface the driver's loop calls.

* ``ClassicEngine`` (``ddrl.engines.classic``): a SparkSession with a SparkContext (spark-submit, notebooks on
  single-user compute, local mode): broadcast, ``parallelize``, ``RDD.treeReduce``.
* ``ConnectEngine`` (``ddrl.engines.connect``): a Spark Connect session (Databricks serverless, standard access
  mode, Databricks Connect, ``SparkSession.builder.remote``): the DataFrame API alone, ``mapInArrow``.

Both run the same executor-side ``Work`` (``ddrl.engines.work``) and merge exactly (``ddrl.merge``), so the same
config and seed give bit-identical parameters on either kind of session.  One Spark job may carry the tasks of
several runs (the trials of a sweep, ``ddrl.sweeps``): each ``Job`` is merged on its own, so sharing a job
changes no run's result.

Runs under ``spark.sync: gradients`` (``synchronized``) run as barrier stages, whose tasks form a group per run
(``ddrl.engines.rendezvous``).  A barrier stage needs every one of its tasks running at once, so such runs share
a Spark job only as far as the session's task slots go (``spark_jobs``), and a run with more tasks than slots is
refused before the first job (``check_barrier``).  Spark does not run a failed barrier stage again when it ends
in a result, as these do, so the engine does (``run_attempts``), as often as Spark would run a task.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from ddrl.algorithms import Algorithm
from ddrl.config import Config, ConfigError
from ddrl.engines import guard, tree
from ddrl.engines.work import Work
from ddrl.merge import Partial

log = logging.getLogger("ddrl")


@dataclasses.dataclass(frozen=True)
class Job:
    """One run's share of a Spark job: ``work`` for every (task index, seed) in ``tasks``, with ``shipped`` (the
    same for every task of the run)."""

    work: Work
    shipped: Mapping[str, Any]
    tasks: list[tuple[int, int]]


class Engine(Protocol):
    """Runs an iteration's tasks with a payload and gives back their merged result."""

    def prepare(self, runs: Sequence[tuple[Config, Algorithm]]) -> None:
        """Before the first job: make ddrl importable on executors, and refuse (``ConfigError``) runs whose
        payloads or results this session cannot carry in one job."""

    def run(self, jobs: Sequence[Job]) -> tuple[list[Partial], float]:
        """Run every job's tasks in one Spark job and return each job's exact merge (in the order of ``jobs``),
        and the seconds the driver spent getting the payloads on their way (the broadcast on classic, building
        the job's plan on Connect)."""


def engine_for(spark: Any) -> Engine:
    """The engine for this session, told by the session's type: a local Spark Connect server has a SparkContext
    in its process, so an active context says nothing about the session a user holds."""
    if type(spark).__module__.startswith("pyspark.sql.connect"):
        from ddrl.engines.connect import ConnectEngine

        return ConnectEngine(spark)
    from ddrl.engines.classic import ClassicEngine

    return ClassicEngine(spark)


def package_archive(into: Path) -> Path | None:
    """The ddrl package zipped into the directory ``into``, for executors that cannot import it; None where they
    can: ddrl is installed (site-packages) or was itself imported from a zip Spark already ships."""
    package_dir = Path(__file__).resolve().parent.parent
    if "site-packages" in package_dir.parts or not package_dir.is_dir():
        return None
    return Path(shutil.make_archive(str(into / "ddrl"), "zip", package_dir.parent, package_dir.name))


DRIVER_HEAP_SHARE = 0.15
"""The share of the driver's JVM heap that results collected in one job may take: in local mode the heap holds
them several times over (executor, block manager, fetched copy).  2 x 240 MB on a 2 GiB heap (23 %) ran out
of it, and the job then hung (BENCHMARKS.md, cost model)."""


def job_elements(jobs: Sequence[Job]) -> list[tuple[int, tuple[int, int]]]:
    """One element per Spark task of a shared job: (the job's index, its (task index, seed))."""
    return [(index, task) for index, job in enumerate(jobs) for task in job.tasks]


def tree_depth(runs: Sequence[tuple[Config, Algorithm]], driver_limit_bytes: float) -> int:
    """The depth of a shared job's merge tree: the deepest any of its runs asks for, ``auto`` resolved by the cost
    model for the job's task count and largest result (depth never changes results)."""
    depths = [config.spark.tree_depth for config, _ in runs]
    if "auto" in depths:
        num_tasks = sum(config.spark.num_tasks for config, _ in runs)
        result_bytes = max(algorithm.task_result_bytes() for _, algorithm in runs)
        carried_bytes = sum(algorithm.task_carry_bytes() * config.spark.num_tasks for config, algorithm in runs)
        depth = tree.auto_depth(num_tasks, result_bytes, driver_limit_bytes - carried_bytes)
        depths = [depth if asked == "auto" else asked for asked in depths]
    return max(depths)


def check_result_size(runs: Sequence[tuple[Config, Algorithm]], limits: Mapping[str, float], fix: str) -> float:
    """Refuse, before the first job, models whose task results the driver cannot collect under the smallest of
    ``limits`` (name to bytes): Spark would abort the job or, short of heap, hang without an error.  Each of the
    tree's last partial results holds one merged result per run it covers; of a synchronized run only the task
    of rank 0 returns the state.  Returns that smallest limit, which ``tree_depth`` sizes the merge tree by."""
    name, limit = min(limits.items(), key=lambda item: item[1])
    total_tasks = sum(config.spark.num_tasks for config, _ in runs)
    fan_in = tree.driver_fan_in(total_tasks, tree_depth(runs, limit))
    per_task = max(algorithm.task_result_bytes() for _, algorithm in runs)  # the largest, where runs differ
    collected = sum(
        algorithm.task_result_bytes() * (1 if synchronized(config) else min(config.spark.num_tasks, fan_in))
        + algorithm.task_carry_bytes() * config.spark.num_tasks
        for config, algorithm in runs
    )
    if collected > limit:
        runs_text = f" for {len(runs)} runs in one job" if len(runs) > 1 else ""
        who = "the task of rank 0 returns" if all(synchronized(config) for config, _ in runs) else "each task returns"
        raise ConfigError(
            f"spark: {who} {per_task / 2**20:.0f} MiB, and the driver would collect "
            f"{collected / 2**20:.0f} MiB per iteration{runs_text}, over {name} ({limit / 2**20:.0f} MiB): use a smaller "
            f"model, {fix}"
        )
    return limit


_BYTE_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30, "t": 2**40, "tb": 2**40, "p": 2**50, "pb": 2**50}


def size_in_bytes(size: str) -> int:
    """A Spark size string ("1g", "512m", "0") in bytes, as Spark reads it (binary units; no unit means bytes)."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-z]*)\s*", size.lower())
    if match is None or match.group(2) not in _BYTE_UNITS:
        raise ConfigError(f"spark: cannot read the size {size!r} in this session's Spark settings")
    return int(match.group(1)) * _BYTE_UNITS[match.group(2)]


def synchronized(config: Config) -> bool:
    """Whether a run's tasks form a group and run as a barrier stage: ``spark.sync: gradients`` on several tasks."""
    return config.spark.sync == "gradients" and config.spark.num_tasks > 1


def check_barrier(configs: Sequence[Config], slots: int | None, dynamic_allocation: bool, more_slots: str) -> None:
    """Refuse, before the first job, synchronized runs Spark cannot run as barrier stages: under dynamic allocation,
    or with more tasks than the session's task slots (``slots``; None where the session does not tell), where
    Spark would wait about ten minutes before it fails the job."""
    counts = [config.spark.num_tasks for config in configs if synchronized(config)]
    if not counts:
        return
    if dynamic_allocation:
        raise ConfigError(
            "spark.sync: gradients runs each iteration's tasks as one barrier stage, which Spark refuses under dynamic "
            "allocation (spark.dynamicAllocation.enabled=true): turn it off for this application, or set spark.sync: parameters"
        )
    if slots is not None and max(counts) > slots:
        raise ConfigError(
            f"spark.num_tasks: {max(counts)} tasks must run at once (spark.sync: gradients runs them as one barrier "
            f"stage), and this session has {slots} task slots: use at most {slots} tasks, {more_slots}, or set "
            "spark.sync: parameters"
        )


def spark_jobs(jobs: Sequence[Job], slots: int | None) -> list[list[int]]:
    """The indices of ``jobs`` each Spark job carries: every unsynchronized run in one job, synchronized runs in
    barrier stages of at most ``slots`` tasks (consecutive runs packed together; None: no limit known)."""
    plain = [index for index, job in enumerate(jobs) if not synchronized(job.work.config)]
    stages: list[list[int]] = []
    used = 0
    for index in (index for index, job in enumerate(jobs) if synchronized(job.work.config)):
        tasks = jobs[index].work.config.spark.num_tasks
        if not stages or (slots is not None and used + tasks > slots):
            stages.append([])
            used = 0
        stages[-1].append(index)
        used += tasks
    return ([plain] if plain else []) + stages


def run_in_spark_jobs(jobs: Sequence[Job], slots: int | None, attempts: int,
                      run_one: Callable[[list[Job], bool], tuple[list[Partial], float]]) -> tuple[list[Partial], float]:
    """``Engine.run`` over ``spark_jobs``: ``run_one(jobs, barrier)`` runs one Spark job; barrier stages are run
    again after a failure, up to ``attempts`` times in all."""
    partials: dict[int, Partial] = {}
    ship_seconds = 0.0
    for indices in spark_jobs(jobs, slots):
        carried = [jobs[index] for index in indices]
        if synchronized(carried[0].work.config):
            merged, seconds = run_attempts(lambda: run_one(carried, True), attempts)
        else:
            merged, seconds = run_one(carried, False)
        partials.update(zip(indices, merged))
        ship_seconds += seconds
    return [partials[index] for index in range(len(jobs))], ship_seconds


def run_attempts(run: Callable[[], Any], attempts: int) -> Any:
    """``run()``, again after a failure while attempts are left; a failure a task reported in one line (no group
    could form, say) is not transient and ends it at once.  Tasks are pure functions of what they are shipped,
    so a later attempt gives the bytes the first would have."""
    for attempt in range(1, attempts):
        try:
            return run()
        except Exception as error:
            if guard.explain(error) is not None:
                raise
            log.warning("a barrier stage failed (attempt %d of %d), running it again: %s", attempt, attempts, guard.root_cause(error))
    return run()


def task_attempts(master: str | None, max_failures: str | None) -> int:
    """How many times Spark runs a task before it fails the job: ``local[K,F]`` F, other local masters 1,
    elsewhere ``spark.task.maxFailures`` (4 by default)."""
    master = master or ""
    if master.startswith("local"):
        found = re.fullmatch(r"local\[[^,\]]+,\s*(\d+)\]", master.strip())
        return int(found.group(1)) if found else 1
    return int(max_failures or 4)


def local_slots(master: str | None, task_cpus: str | None) -> int | None:
    """The task slots of a local master (``local``, ``local[K]``, ``local[*]``, ``local[K,F]``); None for others."""
    import os

    found = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\s*\d+)?\])?", (master or "").strip())
    if found is None:
        return None
    cores = (os.cpu_count() or 1) if found.group(1) == "*" else int(found.group(1) or 1)
    return cores // int(task_cpus or 1)
