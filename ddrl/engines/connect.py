"""The Spark Connect engine: Databricks serverless, standard access mode, Databricks Connect, and
``SparkSession.builder.remote(...)``; no SparkContext, no RDDs, no broadcast.

Per iteration one DataFrame job: ``spark.range(0, N, 1, numPartitions=N).mapInArrow(run_tasks)``, one row and
so one task per partition, with the payload in ``run_tasks``' closure (Connect sends the function with the
plan).  Each task returns one Arrow row: its job (the run it belongs to, where one Spark job carries several),
its group and its result encoded as data (``encode_partial``, no pickle).  When ``spark.tree_depth`` calls for
fewer partial results on the driver than there are tasks, a grouped merge (``groupBy("job", "group")
.applyInArrow``) combines them on executors first; the driver merges the rest of each job exactly, as on
classic.  The client receives the rows with ``toArrow``.  Under ``spark.sync: gradients`` the tasks run as a
barrier stage (``mapInArrow(..., barrier=True)``) and meet through Spark's ``allGather``
(``ddrl.engines.rendezvous``); the driver merges every row (only the task of rank 0 returns the parameters).
"""

from __future__ import annotations

import functools
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pyarrow as pa

from ddrl.algorithms import Algorithm
from ddrl.config import Config, ConfigError
from ddrl.engines import (DRIVER_HEAP_SHARE, Job, check_barrier, check_result_size, job_elements, local_slots, package_archive,
                          run_in_spark_jobs, size_in_bytes, synchronized, task_attempts, tree, tree_depth)
from ddrl.engines.guard import guarded
from ddrl.engines.rendezvous import Meeting, spark_meeting
from ddrl.engines.work import Work, run_element
from ddrl.merge import Partial, decode_partial, encode_partial, merge_by_job

PAYLOAD_LIMIT_BYTES = 64 * 2**20
"""The largest payload a job may carry.  Connect has no broadcast: the client sends the task function with its
closure inside the plan, in one gRPC message of at most 128 MiB (``spark.connect.grpc.maxInboundMessageSize``),
so half of that is left for the rest of the plan.  A float32 PPO payload of 64 MiB is ~16M parameters."""

RESULT_SCHEMA = pa.schema([("job", pa.int64()), ("group", pa.int64()), ("partial", pa.binary())])
_RESULT_DDL = "job long, group long, partial binary"

_SHIPPED: set[str] = set()
"""Connect sessions this process has already shipped the ddrl package to."""


class ConnectEngine:
    """``mapInArrow`` over one row per task, an optional grouped merge, ``toArrow`` back to the client."""

    def __init__(self, spark: Any) -> None:
        self.spark = spark
        self.driver_limit_bytes = math.inf
        self.slots: int | None = None
        self.attempts = 1
        self.sync_timeout_s = 0.0

    def prepare(self, runs: Sequence[tuple[Config, Algorithm]]) -> None:
        self.ship_package()
        from pyspark.serializers import CloudPickleSerializer  # what the client does to the closure, to measure it

        payloads = [algorithm.task_payload(algorithm.initial_state(), 0) for _, algorithm in runs]
        payload_bytes = sum(len(CloudPickleSerializer().dumps(payload)) for payload in payloads)
        payload_bytes += sum(algorithm.task_carry_bytes() * config.spark.num_tasks for config, algorithm in runs)  # none yet in the first
        if payload_bytes > PAYLOAD_LIMIT_BYTES:
            runs_text = f" ({len(runs)} runs in one job)" if len(runs) > 1 else ""
            raise ConfigError(
                f"spark: each iteration's payload is {payload_bytes / 2**20:.0f} MiB{runs_text}, over the "
                f"{PAYLOAD_LIMIT_BYTES / 2**20:.0f} MiB a Spark Connect job can carry in its plan (Connect has no "
                "broadcast): use a smaller model, or a classic session (single-user compute, spark-submit)"
            )
        limits = {"spark.driver.maxResultSize": size_in_bytes(self._conf("spark.driver.maxResultSize") or "1g") or math.inf}
        driver_memory = self._conf("spark.driver.memory")  # the heap is out of a Connect client's sight
        if driver_memory:
            limits[f"{DRIVER_HEAP_SHARE:.0%} of spark.driver.memory"] = size_in_bytes(driver_memory) * DRIVER_HEAP_SHARE
        self.driver_limit_bytes = check_result_size(runs, limits, "or a deeper spark.tree_depth")
        configs = [config for config, _ in runs if synchronized(config)]
        if configs:
            master = self._conf("spark.master")
            # The slots of a local server; a cluster's are out of a Connect client's sight, and Spark checks them itself
            self.slots = local_slots(master, self._conf("spark.task.cpus"))
            more = f"a server with a larger local master ({master} now)" if self.slots is not None else "more executors or cores"
            check_barrier(configs, self.slots, (self._conf("spark.dynamicAllocation.enabled") or "false").lower() == "true", more)
            self.attempts = task_attempts(master, self._conf("spark.task.maxFailures"))
            self.sync_timeout_s = max(config.spark.sync_timeout_s for config in configs)

    def _conf(self, key: str) -> str | None:
        try:
            return self.spark.conf.get(key, None)
        except Exception:  # Databricks serverless refuses to read some settings; Spark's default applies there
            return None

    def ship_package(self) -> None:
        """``addArtifacts`` the ddrl package as a Python file unless executors can import it; the upload copies
        it to the server, so the local zip goes at once."""
        if self.spark.session_id in _SHIPPED:
            return
        with tempfile.TemporaryDirectory(prefix="ddrl-package-") as directory:
            archive = package_archive(Path(directory))
            if archive is not None:
                self.spark.addArtifacts(str(archive), pyfile=True)
        _SHIPPED.add(self.spark.session_id)

    def run(self, jobs: Sequence[Job]) -> tuple[list[Partial], float]:
        return run_in_spark_jobs(jobs, self.slots, self.attempts, self._run_job)

    def _run_job(self, jobs: list[Job], barrier: bool) -> tuple[list[Partial], float]:
        timer = time.perf_counter()
        elements = job_elements(jobs)
        depth = 1 if barrier else tree_depth([(job.work.config, job.work.algorithm) for job in jobs], self.driver_limit_bytes)
        groups = tree.driver_fan_in(len(elements), depth)
        meeting = spark_meeting(self.sync_timeout_s) if barrier else None
        runner = _task_runner([job.work for job in jobs], [dict(job.shipped) for job in jobs], elements, groups, meeting)
        results = self.spark.range(0, len(elements), 1, numPartitions=len(elements)).mapInArrow(guarded(runner), _RESULT_DDL, barrier=barrier)
        if groups < len(elements):
            # repartition by group first, so that the grouped merge reuses that shuffle's partitions instead of
            # spark.sql.shuffle.partitions (200 by default) mostly empty ones
            results = results.repartition(groups, "group").groupBy("job", "group").applyInArrow(guarded(_merge_group, type_hints=True), _RESULT_DDL)
        ship_seconds = time.perf_counter() - timer
        table = results.toArrow()
        rows = zip(table.column("job").to_pylist(), table.column("partial").to_pylist())
        merged = functools.reduce(merge_by_job, ({job: decode_partial(data)} for job, data in rows), {})
        return [merged[index] for index in range(len(jobs))], ship_seconds


def _task_runner(
    works: list[Work], shipped: list[dict[str, Any]], elements: list[tuple[int, tuple[int, int]]], groups: int, meeting: Meeting | None
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function: for each element index in its rows, run that job's task; the payloads ride
    in its closure."""

    def run_tasks(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for index in batch.column("id").to_pylist():
                for job, partial in run_element(works, shipped, elements[index], meeting).items():
                    yield _result_row(job, index * groups // len(elements), partial)

    return run_tasks


def _merge_group(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The grouped merge on an executor: every task result of one job's group into one."""
    job, group, partial = None, None, None
    for batch in batches:
        for job, group, data in zip(batch.column("job").to_pylist(), batch.column("group").to_pylist(), batch.column("partial").to_pylist()):
            partial = decode_partial(data) if partial is None else partial.merge(decode_partial(data))
    if partial is not None:
        yield _result_row(job, group, partial)


def _result_row(job: int, group: int, partial: Partial) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({"job": [job], "group": [group], "partial": [encode_partial(partial)]}, schema=RESULT_SCHEMA)
