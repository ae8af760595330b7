"""The Spark Connect engine: Databricks serverless, standard access mode, Databricks Connect, and
``SparkSession.builder.remote(...)``; no SparkContext, no RDDs, no broadcast.

Per iteration one DataFrame job: ``spark.range(0, N, 1, numPartitions=N).mapInArrow(run_tasks)``, one row and
so one task per partition, with the payload in ``run_tasks``' closure (Connect sends the function with the
plan).  Each task returns one Arrow row: its group and its result encoded as data (``encode_partial``, no
pickle).  When ``spark.tree_depth`` calls for fewer partial results on the driver than there are tasks, a
grouped merge (``groupBy("group").applyInArrow``) combines them on executors first; the driver merges the rest
exactly, as on classic.  The client receives the rows with ``toArrow``.
"""

from __future__ import annotations

import functools
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import pyarrow as pa

from ddrl.algorithms import Algorithm
from ddrl.config import Config, ConfigError
from ddrl.engines import DRIVER_HEAP_SHARE, check_result_size, driver_fan_in, package_archive, size_in_bytes
from ddrl.engines.work import Work
from ddrl.merge import Partial, decode_partial, encode_partial, merge

PAYLOAD_LIMIT_BYTES = 64 * 2**20
"""The largest payload a job may carry.  Connect has no broadcast: the client sends the task function with its
closure inside the plan, in one gRPC message of at most 128 MiB (``spark.connect.grpc.maxInboundMessageSize``),
so half of that is left for the rest of the plan.  A float32 PPO payload of 64 MiB is ~16M parameters."""

RESULT_SCHEMA = pa.schema([("group", pa.int64()), ("partial", pa.binary())])
_RESULT_DDL = "group long, partial binary"

_SHIPPED: set[str] = set()
"""Connect sessions this process has already shipped the ddrl package to."""


class ConnectEngine:
    """``mapInArrow`` over one row per task, an optional grouped merge, ``toArrow`` back to the client."""

    def __init__(self, spark: Any) -> None:
        self.spark = spark

    def prepare(self, config: Config, algorithm: Algorithm) -> None:
        self._ship_package()
        from pyspark.serializers import CloudPickleSerializer  # what the client does to the closure, to measure it

        payload = algorithm.task_payload(algorithm.initial_state(), 0)
        payload_bytes = len(CloudPickleSerializer().dumps(payload))
        if payload_bytes > PAYLOAD_LIMIT_BYTES:
            raise ConfigError(
                f"spark: each iteration's payload is {payload_bytes / 2**20:.0f} MiB, over the "
                f"{PAYLOAD_LIMIT_BYTES / 2**20:.0f} MiB a Spark Connect job can carry in its plan (Connect has no "
                "broadcast): use a smaller model, or a classic session (single-user compute, spark-submit)"
            )
        limits = {"spark.driver.maxResultSize": size_in_bytes(self._conf("spark.driver.maxResultSize") or "1g") or math.inf}
        driver_memory = self._conf("spark.driver.memory")  # the heap is out of a Connect client's sight
        if driver_memory:
            limits[f"{DRIVER_HEAP_SHARE:.0%} of spark.driver.memory"] = size_in_bytes(driver_memory) * DRIVER_HEAP_SHARE
        check_result_size(config, algorithm, limits, "or a deeper spark.tree_depth")

    def _conf(self, key: str) -> str | None:
        try:
            return self.spark.conf.get(key, None)
        except Exception:  # Databricks serverless refuses to read some settings; Spark's default applies there
            return None

    def _ship_package(self) -> None:
        """``addArtifacts`` the ddrl package as a Python file unless executors can import it; the upload copies
        it to the server, so the local zip goes at once."""
        if self.spark.session_id in _SHIPPED:
            return
        with tempfile.TemporaryDirectory(prefix="ddrl-package-") as directory:
            archive = package_archive(Path(directory))
            if archive is not None:
                self.spark.addArtifacts(str(archive), pyfile=True)
        _SHIPPED.add(self.spark.session_id)

    def run(self, work: Work, shipped: Mapping[str, Any], tasks: list[tuple[int, int]]) -> tuple[Partial, float]:
        timer = time.perf_counter()
        groups = driver_fan_in(len(tasks), work.config.spark.tree_depth)
        results = self.spark.range(0, len(tasks), 1, numPartitions=len(tasks)).mapInArrow(
            _task_runner(work, dict(shipped), tasks, groups), _RESULT_DDL)
        if groups < len(tasks):
            # repartition by group first, so that the grouped merge reuses that shuffle's partitions instead of
            # spark.sql.shuffle.partitions (200 by default) mostly empty ones
            results = results.repartition(groups, "group").groupBy("group").applyInArrow(_merge_group, _RESULT_DDL)
        ship_seconds = time.perf_counter() - timer
        table = results.toArrow()
        return functools.reduce(merge, map(decode_partial, table.column("partial").to_pylist())), ship_seconds


def _task_runner(work: Work, shipped: dict[str, Any], tasks: list[tuple[int, int]], groups: int) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function: for each task index in its rows, run the task; ``shipped`` rides in its
    closure."""

    def run_tasks(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for index in batch.column("id").to_pylist():
                yield _result_row(index * groups // len(tasks), work.run(shipped, tasks[index]))

    return run_tasks


def _merge_group(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The grouped merge on an executor: every task result of one group into one."""
    group, partial = None, None
    for batch in batches:
        for group, data in zip(batch.column("group").to_pylist(), batch.column("partial").to_pylist()):
            partial = decode_partial(data) if partial is None else partial.merge(decode_partial(data))
    if partial is not None:
        yield _result_row(group, partial)


def _result_row(group: int, partial: Partial) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({"group": [group], "partial": [encode_partial(partial)]}, schema=RESULT_SCHEMA)
