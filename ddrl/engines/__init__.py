"""Engines: how one iteration's tasks run on Spark, behind one small interface the driver's loop calls.

* ``ClassicEngine`` (``ddrl.engines.classic``): a SparkSession with a SparkContext (spark-submit, notebooks on
  single-user compute, local mode): broadcast, ``parallelize``, ``RDD.treeReduce``.
* ``ConnectEngine`` (``ddrl.engines.connect``): a Spark Connect session (Databricks serverless, standard access
  mode, Databricks Connect, ``SparkSession.builder.remote``): the DataFrame API alone, ``mapInArrow``.

Both run the same executor-side ``Work`` (``ddrl.engines.work``) and merge exactly (``ddrl.merge``), so the same
config and seed give bit-identical parameters on either kind of session.  One Spark job may carry the tasks of
several runs (the trials of a sweep, ``ddrl.sweeps``): each ``Job`` is merged on its own, so sharing a job
changes no run's result.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from ddrl.algorithms import Algorithm
from ddrl.config import Config, ConfigError
from ddrl.engines import tree
from ddrl.engines.work import Work
from ddrl.merge import Partial


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
    tree's last partial results holds one merged result per run it covers.  Returns that smallest limit, which
    ``tree_depth`` sizes the merge tree by."""
    name, limit = min(limits.items(), key=lambda item: item[1])
    total_tasks = sum(config.spark.num_tasks for config, _ in runs)
    fan_in = tree.driver_fan_in(total_tasks, tree_depth(runs, limit))
    per_task = max(algorithm.task_result_bytes() for _, algorithm in runs)  # the largest, where runs differ
    collected = sum(
        algorithm.task_result_bytes() * min(config.spark.num_tasks, fan_in) + algorithm.task_carry_bytes() * config.spark.num_tasks
        for config, algorithm in runs
    )
    if collected > limit:
        runs_text = f" for {len(runs)} runs in one job" if len(runs) > 1 else ""
        raise ConfigError(
            f"spark: each task returns {per_task / 2**20:.0f} MiB, and the driver would collect "
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
