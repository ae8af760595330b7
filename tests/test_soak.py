"""Soak (slow, opt-in): 300 short iterations; the driver's memory, temp files and descriptors must not grow.

Sampled per iteration by an observer: the driver's RSS (VmRSS), the files in PySpark's temp dir (where each
broadcast's pickle lands, ``sc._temp_dir``) and in the whole Spark local dir around it, the driver's open file
descriptors, and, for the report only, the driver JVM's RSS.  Compared between iterations 50 and 300.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import small_ppo_config

import ddrl

ITERATIONS = 300
EARLY = 50
RSS_GROWTH_LIMIT_MB = 64.0
"""Generous: a leak of one broadcast payload per iteration (about 30 KB here) would not show, but one of the
state, a metrics table or a Spark job's bookkeeping that is never released would over 250 iterations."""


def _rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _files(directory: Path) -> int:
    return sum(1 for path in directory.rglob("*") if path.is_file()) if directory.exists() else -1


class _Sampler:
    """An observer that records resource use after every iteration (it does not touch training)."""

    def __init__(self, spark_context) -> None:
        self.temp_dir = Path(spark_context._temp_dir)
        self.local_dir = self.temp_dir.parent  # spark.local.dir's spark-<uuid>: blockmgr-*, userFiles-*, pyspark-*
        process = getattr(spark_context._gateway, "proc", None)
        self.jvm_pid = process.pid if process is not None else None
        self.samples: dict[int, dict[str, float]] = {}

    def on_start(self, run):
        pass

    def on_iteration(self, iteration, metrics):
        self.samples[iteration] = {
            "rss_mb": _rss_mb(),
            "jvm_rss_mb": _rss_mb(self.jvm_pid) if self.jvm_pid else float("nan"),
            "temp_files": _files(self.temp_dir),
            "local_dir_files": _files(self.local_dir),
            "open_fds": len(os.listdir("/proc/self/fd")),
            "threads": len(os.listdir("/proc/self/task")),
            "iteration_s": metrics["iteration_s"],
        }

    def on_end(self, result):
        pass


@pytest.mark.slow
def test_soak_driver_memory_and_temp_files_do_not_grow(spark, tmp_path):
    config = small_ppo_config(
        tmp_path,
        env={"id": "CartPole-v1", "num_envs": 2},
        spark={"num_tasks": 2, "tree_depth": 2},
        train={"total_env_steps": ITERATIONS * 2 * 2 * 16, "eval_every": 25, "eval_episodes": 2, "stop_at_target": False},
        output={"root": str(tmp_path), "checkpoint_every": 10, "keep_checkpoints": 3},
        ppo={"num_steps": 16, "update_epochs": 1, "num_minibatches": 1},
    )
    sampler = _Sampler(spark.sparkContext)
    started = time.perf_counter()
    result = ddrl.train(spark, config, run_dir=tmp_path / "run", observers=[sampler])
    seconds = time.perf_counter() - started

    assert result.iterations == ITERATIONS
    early, late = sampler.samples[EARLY], sampler.samples[ITERATIONS]
    report = {"seconds": round(seconds, 1), "at_50": early, "at_300": late,
              "max_temp_files": max(sample["temp_files"] for sample in sampler.samples.values())}
    print("\nsoak:", json.dumps(report))
    assert late["temp_files"] <= early["temp_files"], report
    assert late["local_dir_files"] <= early["local_dir_files"], report
    assert report["max_temp_files"] <= early["temp_files"] + 1, report  # at most the current broadcast's file
    assert late["open_fds"] <= early["open_fds"] + 5, report
    assert late["threads"] <= early["threads"] + 5, report
    assert late["rss_mb"] - early["rss_mb"] < RSS_GROWTH_LIMIT_MB, report
    assert len(list((tmp_path / "run" / "checkpoints").glob("ckpt-*.safetensors"))) == 3
    assert result.metrics.num_rows == ITERATIONS
