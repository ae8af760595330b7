"""The classic engine: a SparkSession with a SparkContext (spark-submit, single-user compute, local mode).

Per iteration: broadcast what every task needs, ``parallelize`` one element per task, and merge the results
with ``RDD.treeReduce`` (exact, so arrival order does not matter); destroy the broadcast once its job is over.
A job carrying several runs broadcasts their payloads together and merges each run's results by its key.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

from ddrl.algorithms import Algorithm
from ddrl.config import Config, ConfigError
from ddrl.engines import DRIVER_HEAP_SHARE, Job, check_result_size, job_elements, package_archive, size_in_bytes, tree_depth
from ddrl.engines.guard import guarded
from ddrl.merge import Partial, merge_by_job

_SHIPPED: set[str] = set()
"""Applications this process has already shipped the ddrl package to."""


class ClassicEngine:
    """Broadcast, ``parallelize`` and ``treeReduce`` on the session's SparkContext."""

    def __init__(self, spark: Any) -> None:
        try:
            self.spark_context = spark.sparkContext
        except Exception as error:
            raise ConfigError(
                f"spark: {type(spark).__module__}.{type(spark).__name__} is neither a classic SparkSession (it has no "
                "SparkContext) nor a Spark Connect session: pass the session pyspark or Databricks Connect gave you"
            ) from error
        self.driver_limit_bytes = math.inf

    def prepare(self, runs: Sequence[tuple[Config, Algorithm]]) -> None:
        self.ship_package()
        # The heap the driver really has: spark.driver.memory may be unset (Databricks sizes the driver itself)
        heap = int(self.spark_context._jvm.java.lang.Runtime.getRuntime().maxMemory())
        max_result_size = size_in_bytes(self.spark_context.getConf().get("spark.driver.maxResultSize", "1g"))
        limits = {
            "spark.driver.maxResultSize": max_result_size or math.inf,  # 0 means unlimited
            f"{DRIVER_HEAP_SHARE:.0%} of the driver's heap": heap * DRIVER_HEAP_SHARE,
        }
        self.driver_limit_bytes = check_result_size(runs, limits, "a deeper spark.tree_depth, or more spark.driver.memory")

    def ship_package(self) -> None:
        """``addPyFile`` the ddrl package unless executors can import it.  The zip lives in Spark's own session
        directory: the file server reads it whenever an executor fetches it, and Spark deletes it at stop."""
        if self.spark_context.applicationId in _SHIPPED:
            return
        from pyspark import SparkFiles

        archive = package_archive(Path(SparkFiles.getRootDirectory()) / "ddrl-package")
        if archive is not None:
            self.spark_context.addPyFile(str(archive))
        _SHIPPED.add(self.spark_context.applicationId)

    def run(self, jobs: Sequence[Job]) -> tuple[list[Partial], float]:
        timer = time.perf_counter()
        broadcast = self.spark_context.broadcast([dict(job.shipped) for job in jobs])
        ship_seconds = time.perf_counter() - timer
        works = [job.work for job in jobs]
        elements = job_elements(jobs)
        try:
            merged = (
                self.spark_context.parallelize(elements, len(elements))
                .map(guarded(lambda element, payloads: {element[0]: works[element[0]].run(payloads.value[element[0]], element[1])}, broadcast))
                .treeReduce(guarded(merge_by_job, arguments=2), depth=tree_depth([(work.config, work.algorithm) for work in works], self.driver_limit_bytes))
            )
        finally:
            broadcast.destroy()  # the job is over: free the driver's temp file and the executors' copies
        return [merged[index] for index in range(len(jobs))], ship_seconds
