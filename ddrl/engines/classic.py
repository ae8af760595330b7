"""The classic engine: a SparkSession with a SparkContext (spark-submit, single-user compute, local mode).

Per iteration: broadcast what every task needs, ``parallelize`` one element per task, and merge the results
with ``RDD.treeReduce`` (exact, so arrival order does not matter); destroy the broadcast once its job is over.
A job carrying several runs broadcasts their payloads together and merges each run's results by its key.
Under ``spark.sync: gradients`` the tasks run as a barrier stage (``RDD.barrier``) and meet through a store the
driver serves (``ddrl.engines.rendezvous``); its merge is one level (``treeReduce`` at depth 1): the task of
rank 0 alone returns the parameters, the others small records, and a barrier stage that ends in a result is
one Spark never runs again, so the engine does.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

from ddrl.algorithms import Algorithm
from ddrl.config import Config, ConfigError
from ddrl.engines import (DRIVER_HEAP_SHARE, Job, check_barrier, check_result_size, job_elements, local_slots, package_archive,
                          run_in_spark_jobs, size_in_bytes, synchronized, task_attempts, tree_depth)
from ddrl.engines.guard import guarded
from ddrl.engines.rendezvous import DriverStore, driver_host
from ddrl.engines.work import run_element
from ddrl.merge import Partial, merge_by_job

_SHIPPED: set[str] = set()
"""Applications this process has already shipped the ddrl package to."""
_DRIVER_STORES: dict[str, DriverStore] = {}
"""The rendezvous store this driver serves, by the host executors reach it at (one for the process)."""
EXECUTORS_WAIT_SECONDS = 30.0
"""How long a session whose executors are still registering is given to offer a barrier stage's slots."""


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
        self.slots: int | None = None
        self.attempts = 1
        self.sync_timeout_s = 0.0

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
        configs = [config for config, _ in runs if synchronized(config)]
        if configs:
            conf = self.spark_context.getConf()
            master = self.spark_context.master
            self.slots = self._slots(max(config.spark.num_tasks for config in configs))
            more = f"a local master with more ({master} now)" if master.startswith("local") else "more executors or cores per executor"
            check_barrier(configs, self.slots, conf.get("spark.dynamicAllocation.enabled", "false").lower() == "true", more)
            self.attempts = task_attempts(master, conf.get("spark.task.maxFailures", None))
            self.sync_timeout_s = max(config.spark.sync_timeout_s for config in configs)
            host = driver_host(conf.get("spark.driver.host", "localhost"))
            if host not in _DRIVER_STORES:
                _DRIVER_STORES[host] = DriverStore(host)
            self.driver_store = _DRIVER_STORES[host]

    def _slots(self, needed: int) -> int:
        """The tasks the session can run at once (Spark's own count for barrier stages), waiting a little for
        executors that are still registering."""
        local = local_slots(self.spark_context.master, self.spark_context.getConf().get("spark.task.cpus", "1"))
        if local is not None:
            return local
        scheduler = self.spark_context._jsc.sc()
        profile = scheduler.resourceProfileManager().defaultResourceProfile()
        deadline = time.monotonic() + EXECUTORS_WAIT_SECONDS
        while (slots := int(scheduler.maxNumConcurrentTasks(profile))) < needed and time.monotonic() < deadline:
            time.sleep(0.5)
        return slots

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
        return run_in_spark_jobs(jobs, self.slots, self.attempts, self._run_job)

    def _run_job(self, jobs: list[Job], barrier: bool) -> tuple[list[Partial], float]:
        timer = time.perf_counter()
        broadcast = self.spark_context.broadcast([dict(job.shipped) for job in jobs])
        ship_seconds = time.perf_counter() - timer
        works = [job.work for job in jobs]
        elements = job_elements(jobs)
        merge = guarded(merge_by_job, arguments=2)
        tasks = self.spark_context.parallelize(elements, len(elements))
        try:
            if barrier:
                meeting = self.driver_store.meeting(self.sync_timeout_s)
                run = guarded(lambda part, payloads: [run_element(works, payloads.value, element, meeting) for element in part], broadcast)
                merged = tasks.barrier().mapPartitions(run).treeReduce(merge, depth=1)
            else:
                run = guarded(lambda element, payloads: run_element(works, payloads.value, element, None), broadcast)
                merged = tasks.map(run).treeReduce(merge, depth=tree_depth([(work.config, work.algorithm) for work in works], self.driver_limit_bytes))
        finally:
            broadcast.destroy()  # the job is over: free the driver's temp file and the executors' copies
        return [merged[index] for index in range(len(jobs))], ship_seconds
