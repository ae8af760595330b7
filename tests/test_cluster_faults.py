"""local-cluster[2,1,1024], with real executor JVMs, in its own process (one SparkContext per process): an
executor is SIGKILLed mid-iteration and the run still ends with the fault-free run's parameters (slow: about a
minute and a half here, opt-in).  Spark Connect sessions are in test_connect.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, final_params, small_ppo_config

import ddrl



def _run_script(tmp_path: Path, script: str, timeout: float) -> dict:
    """Run ``script`` with the venv's Python in a fresh process; it prints one JSON line last."""
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(script))
    env = dict(
        os.environ,
        PYSPARK_PYTHON=sys.executable,
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        SPARK_WORKER_DIR=str(tmp_path / "spark-work"),  # not $SPARK_HOME/work inside site-packages
    )
    completed = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=timeout, start_new_session=True)
    (tmp_path / "script.log").write_text(completed.stdout + "\n--- stderr ---\n" + completed.stderr)
    assert completed.returncode == 0, f"exit {completed.returncode}\n{completed.stdout[-3000:]}\n{completed.stderr[-5000:]}"
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _killer_config(tmp_path: Path, marker: Path, kill_partitions: list[int]) -> dict:
    env = {"id": "faulty_envs:ExecutorKillerCartPole", "num_envs": 4, "max_episode_steps": 500,
           "kwargs": {"marker": str(marker), "kill_partitions": kill_partitions, "kill_at_step": 20}}
    return small_ppo_config(tmp_path, env=env)


@pytest.mark.slow
def test_executor_jvm_killed_mid_iteration_on_local_cluster_gives_the_fault_free_parameters(spark, tmp_path):
    marker = tmp_path / "executor-killed"
    clean = _killer_config(tmp_path, marker, [])
    faulty = _killer_config(tmp_path, marker, [1])
    report = _run_script(tmp_path, f"""
        import json, time
        from pyspark.sql import SparkSession
        import ddrl

        started = time.perf_counter()
        spark = (SparkSession.builder.master("local-cluster[2,1,1024]").appName("ddrl-executor-loss")
                 .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
                 .config("spark.executorEnv.OMP_NUM_THREADS", "1").getOrCreate())
        spark.sparkContext.setLogLevel("ERROR")
        up = time.perf_counter() - started

        def executors():
            infos = spark.sparkContext._jsc.sc().statusTracker().getExecutorInfos()
            return sorted(f"{{info.host()}}:{{info.port()}}" for info in infos)

        before = executors()
        timer = time.perf_counter()
        ddrl.train(spark, {clean!r}, run_dir={str(tmp_path / "clean")!r}, observers=[])
        clean_s = time.perf_counter() - timer
        timer = time.perf_counter()
        result = ddrl.train(spark, {faulty!r}, run_dir={str(tmp_path / "faulty")!r}, observers=[])
        faulty_s = time.perf_counter() - timer
        after = executors()
        spark.stop()
        print(json.dumps({{"session_s": up, "clean_s": clean_s, "faulty_s": faulty_s, "before": before, "after": after,
                          "iterations": result.iterations,
                          "rejected": [row["rejected_tasks"] for row in result.metrics.to_pylist()],
                          "total_s": time.perf_counter() - started}}))
    """, timeout=900)

    killed = marker.read_text()
    assert killed.startswith("killed ") and "CoarseGrainedExecutorBackend" in killed, killed
    assert report["iterations"] == 3 and report["rejected"] == [0, 0, 0], report
    assert np.array_equal(final_params(tmp_path / "clean"), final_params(tmp_path / "faulty"))
    # The cluster's parameters are also those of the test session's local[2,2], for the same config.
    ddrl.train(spark, clean, run_dir=tmp_path / "local", observers=[])
    assert np.array_equal(final_params(tmp_path / "local"), final_params(tmp_path / "faulty"))
    print(f"\nlocal-cluster executor loss: {json.dumps(report)}")


def test_executor_killer_kills_nothing_in_local_mode(spark, tmp_path):
    """In local mode the JVM above a worker is the driver's: the env must find no executor and leave it alone."""
    marker = tmp_path / "executor-killed"
    ddrl.train(spark, _killer_config(tmp_path, marker, [1]), run_dir=tmp_path / "run", observers=[])
    assert marker.read_text().startswith("no executor JVM above pid ")
