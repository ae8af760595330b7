"""Engines: how one iteration's tasks run on Spark, behind one small interface the driver's loop calls.

* ``ClassicEngine`` (``ddrl.engines.classic``): a SparkSession with a SparkContext (spark-submit, notebooks on
  single-user compute, local mode): broadcast, ``parallelize``, ``RDD.treeReduce``.
* ``ConnectEngine`` (``ddrl.engines.connect``): a Spark Connect session (Databricks serverless, standard access
  mode, Databricks Connect, ``SparkSession.builder.remote``): the DataFrame API alone, ``mapInArrow``.

Both run the same executor-side ``Work`` (``ddrl.engines.work``) and merge exactly (``ddrl.merge``), so the same
config and seed give bit-identical parameters on either kind of session.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path
from typing import Any, Mapping, Protocol

from ddrl.algorithms import Algorithm
from ddrl.config import Config, ConfigError
from ddrl.engines.work import Work
from ddrl.merge import Partial


class Engine(Protocol):
    """Runs an iteration's tasks with a payload and gives back their merged result."""

    def prepare(self, config: Config, algorithm: Algorithm) -> None:
        """Before the first job: make ddrl importable on executors, and refuse (``ConfigError``) a run whose
        payload or results this session cannot carry."""

    def run(self, work: Work, shipped: Mapping[str, Any], tasks: list[tuple[int, int]]) -> tuple[Partial, float]:
        """Run ``work`` for every (task index, seed) in ``tasks`` with ``shipped`` (the same for every task) and
        return their exact merge, and the seconds the driver spent getting ``shipped`` on its way (the broadcast
        on classic, building the job's plan on Connect)."""


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


def check_result_size(config: Config, algorithm: Algorithm, limits: Mapping[str, float], fix: str) -> None:
    """Refuse, before the first job, a model whose task results the driver cannot collect under the smallest of
    ``limits`` (name to bytes): Spark would abort the job or, short of heap, hang without an error."""
    per_task = algorithm.task_result_bytes()
    collected = per_task * driver_fan_in(config.spark.num_tasks, config.spark.tree_depth)
    name, limit = min(limits.items(), key=lambda item: item[1])
    if collected > limit:
        raise ConfigError(
            f"spark: each task returns {per_task / 2**20:.0f} MiB, and the driver would collect "
            f"{collected / 2**20:.0f} MiB per iteration, over {name} ({limit / 2**20:.0f} MiB): use a smaller model, {fix}"
        )


def driver_fan_in(num_tasks: int, depth: int) -> int:
    """How many partial results reach the driver: PySpark's treeAggregate plan for ``RDD.treeReduce(depth)``,
    which the Connect engine's grouped merge follows too."""
    partitions: float = num_tasks
    scale = max(int(math.ceil(num_tasks ** (1.0 / depth))), 2)
    while partitions > scale + partitions / scale:
        partitions /= scale
    return int(partitions)


_BYTE_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30, "t": 2**40, "tb": 2**40, "p": 2**50, "pb": 2**50}


def size_in_bytes(size: str) -> int:
    """A Spark size string ("1g", "512m", "0") in bytes, as Spark reads it (binary units; no unit means bytes)."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-z]*)\s*", size.lower())
    if match is None or match.group(2) not in _BYTE_UNITS:
        raise ConfigError(f"spark: cannot read the size {size!r} in this session's Spark settings")
    return int(match.group(1)) * _BYTE_UNITS[match.group(2)]
