"""Training on a real Spark Connect session (``SparkSession.builder.remote("local[2,2]")``), against the test
session's classic local[2,2]: same parameters, retries, NaN rejection, resume from one kind of session on the
other, ddrl and a user's env module shipped with ``addArtifacts``, and the limits a Connect job has.

The Connect session lives in a process of its own (``connect_session.py``), whose Python has ddrl's
dependencies but not ddrl, and no PYTHONPATH: executors import ddrl only because it ships itself.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, final_params, environment_without_this_checkout, flaky_config, fresh_venv, nan_config, small_es_config, small_ppo_config

import ddrl
from ddrl import checkpoint

for _module in ("grpc", "grpc_status", "google.rpc", "zstandard", "pandas"):
    pytest.importorskip(_module, reason="Spark Connect needs pyspark[connect]")



POPULATION = {"seeds": 4, "pbt": {"interval": 2}}
"""A PBT sweep of 4 trials of 2 tasks: 8 tasks a job, merged in 2 groups (job, group) on executors first."""


def _forget_after_first_iteration(run_dir: Path) -> None:
    """As if the driver had died after checkpointing iteration 1 of 3."""
    for name in ("ckpt-000002", "ckpt-000003"):
        for suffix in (".json", ".safetensors"):
            (run_dir / "checkpoints" / (name + suffix)).unlink()


@pytest.fixture(scope="module")
def sessions(spark, tmp_path_factory):
    """Classic runs first, then every Connect scenario in one process; the tests compare their run directories."""
    tmp = tmp_path_factory.mktemp("connect")
    short = small_ppo_config(tmp)
    grouped = small_ppo_config(tmp, spark={"num_tasks": 8, "tree_depth": 2, "sync": "parameters"}, train={"total_env_steps": 2 * 8 * 4 * 64})
    evolution = small_es_config(tmp, spark={"num_tasks": 3, "tree_depth": 1}, train={"total_env_steps": 20_000})
    classic = {
        "short": (short, tmp / "classic-short"),
        "grouped": (grouped, tmp / "classic-grouped"),
        "es": (evolution, tmp / "classic-es"),
        "flaky": (flaky_config(tmp), tmp / "classic-flaky"),
        "nan": (nan_config(tmp, [1]), tmp / "classic-nan"),
    }
    for config, run_dir in classic.values():
        ddrl.train(spark, config, run_dir=run_dir, observers=[])
    population = small_ppo_config(tmp, train={"total_env_steps": 4 * 64 * 2 * 4})
    ddrl.sweep(spark, population, out=tmp / "classic-sweep", track=False, **POPULATION)
    shutil.copytree(tmp / "classic-short", tmp / "classic-then-connect")
    _forget_after_first_iteration(tmp / "classic-then-connect")

    # 8.4M parameters: a 32 MiB payload, but 32 tasks x 64 MiB of results at tree depth 1
    too_large_results = small_ppo_config(tmp, spark={"num_tasks": 32, "tree_depth": 1, "sync": "parameters"}, ppo={"hidden_sizes": [2048, 2048]})
    scenarios = [
        {"name": "cartpole", "config": str(ROOT / "conf" / "cartpole_ppo.yaml"), "run_dir": str(tmp / "connect-cartpole")},
        {"name": "short", "config": short, "run_dir": str(tmp / "connect-short")},
        {"name": "grouped", "config": grouped, "run_dir": str(tmp / "connect-grouped")},
        {"name": "es", "config": evolution, "run_dir": str(tmp / "connect-es")},
        {"name": "flaky", "config": flaky_config(tmp, fail_partitions=[1]), "run_dir": str(tmp / "connect-flaky")},
        {"name": "nan", "config": nan_config(tmp, [1]), "run_dir": str(tmp / "connect-nan")},
        {"name": "resume", "config": short, "resume": str(tmp / "classic-then-connect")},
        {"name": "payload_limit", "config": short, "run_dir": str(tmp / "connect-payload"), "payload_limit_bytes": 1000},
        {"name": "result_size", "config": too_large_results, "run_dir": str(tmp / "connect-result-size")},
        {"name": "sweep", "config": population, "out": str(tmp / "connect-sweep"), "sweep": POPULATION},
    ]
    (tmp / "scenarios.json").write_text(json.dumps(scenarios))
    python = fresh_venv(tmp / "venv-without-ddrl")
    completed = subprocess.run(
        [str(python), str(ROOT / "tests" / "connect_session.py"), str(tmp / "scenarios.json"), str(tmp / "report.json")],
        cwd=tmp, env={**environment_without_this_checkout(), "PYSPARK_PYTHON": str(python)},
        capture_output=True, text=True, timeout=900, start_new_session=True,
    )
    (tmp / "connect.log").write_text(completed.stdout + "\n--- stderr ---\n" + completed.stderr)
    assert completed.returncode == 0, f"exit {completed.returncode}\n{completed.stdout[-3000:]}\n{completed.stderr[-5000:]}"
    report = json.loads((tmp / "report.json").read_text())
    assert report["session"] == "pyspark.sql.connect.session", report
    return tmp, report["scenarios"], report


def test_cartpole_is_solved_on_a_spark_connect_session(sessions):
    _, scenarios, _ = sessions
    assert scenarios["cartpole"]["outcome"] == "trained", scenarios["cartpole"]
    assert scenarios["cartpole"]["solved"] and scenarios["cartpole"]["eval_return_mean"] >= 475, scenarios["cartpole"]


@pytest.mark.parametrize("name", ["short", "grouped", "es"])
def test_connect_gives_the_classic_parameters_and_metrics(sessions, name):
    """PPO (synchronized: a barrier stage meeting through Spark's allGather), PPO averaging 8 tasks (tree depth 2) merged
    in 2 groups on executors before the driver, and OpenAI-ES."""
    tmp, scenarios, _ = sessions
    assert scenarios[name]["outcome"] == "trained", scenarios[name]
    assert np.array_equal(final_params(tmp / f"connect-{name}"), final_params(tmp / f"classic-{name}"))
    timings = {"wall_s", "iteration_s", "ship_s", "tasks_s", "merge_s", "driver_s", "steps_per_s", "eval_s", "rollout_s", "update_s",
               "allreduce_s", *("restore_s", "replayed_steps", "carry_cache_hits")}  # how often a worker still held a task's envs: scheduling
    rows = {kind: sorted(pq.read_table(tmp / f"{kind}-{name}" / "metrics").to_pylist(), key=lambda row: row["iteration"])
            for kind in ("classic", "connect")}
    assert [{k: v for k, v in row.items() if k not in timings} for row in rows["connect"]] == \
        [{k: v for k, v in row.items() if k not in timings} for row in rows["classic"]]


def test_a_sweep_on_connect_gives_the_classic_trials(sessions):
    tmp, scenarios, _ = sessions
    assert scenarios["sweep"] == {"outcome": "swept", "trials": ["finished"] * 4}, scenarios["sweep"]
    for trial in ("trial-000", "trial-001", "trial-002", "trial-003"):
        assert np.array_equal(final_params(tmp / "connect-sweep" / "trials" / trial), final_params(tmp / "classic-sweep" / "trials" / trial)), trial
    assert json.loads((tmp / "connect-sweep" / "state.json").read_text()) == json.loads((tmp / "classic-sweep" / "state.json").read_text())


def test_a_task_failing_on_its_first_attempt_is_retried_with_the_same_result(sessions):
    tmp, scenarios, _ = sessions
    assert scenarios["flaky"]["outcome"] == "trained", scenarios["flaky"]
    assert np.array_equal(final_params(tmp / "connect-flaky"), final_params(tmp / "classic-flaky"))


def test_nan_results_are_rejected_as_on_classic(sessions):
    tmp, scenarios, _ = sessions
    metrics = pq.read_table(tmp / "connect-nan" / "metrics").to_pylist()
    assert [row["rejected_tasks"] for row in metrics] == [1] * 6
    assert np.all(np.isfinite(final_params(tmp / "connect-nan")))
    assert np.array_equal(final_params(tmp / "connect-nan"), final_params(tmp / "classic-nan"))


def test_a_run_started_on_classic_resumes_on_connect(sessions):
    tmp, scenarios, _ = sessions
    assert scenarios["resume"] == {**scenarios["resume"], "outcome": "trained", "iterations": 3}
    assert np.array_equal(final_params(tmp / "classic-then-connect"), final_params(tmp / "classic-short"))


def test_a_run_started_on_connect_resumes_on_classic(spark, sessions):
    tmp, _, _ = sessions
    shutil.copytree(tmp / "connect-short", tmp / "connect-then-classic")
    _forget_after_first_iteration(tmp / "connect-then-classic")
    result = ddrl.train(spark, small_ppo_config(tmp), resume=tmp / "connect-then-classic", observers=[])
    assert result.iterations == 3
    assert np.array_equal(final_params(tmp / "connect-then-classic"), final_params(tmp / "classic-short"))


def test_ddrl_ships_itself_and_a_users_env_module_reaches_the_executors(sessions):
    _, scenarios, report = sessions
    # The retried scenario ran faulty_envs, shipped with spark.addArtifacts(..., pyfile=True) as a user would.
    assert scenarios["flaky"]["outcome"] == "trained"
    assert not Path(report["executor_ddrl"]).is_relative_to(ROOT), report["executor_ddrl"]
    assert "ddrl.zip" in report["executor_ddrl"], report["executor_ddrl"]


def test_a_payload_over_the_connect_limit_is_refused_before_anything_is_written(sessions):
    tmp, scenarios, _ = sessions
    assert scenarios["payload_limit"]["outcome"] == "ConfigError"
    assert scenarios["payload_limit"]["message"].startswith("spark: each iteration's payload is 0 MiB, over the 0 MiB a Spark Connect job")
    assert "classic session" in scenarios["payload_limit"]["message"]
    assert not (tmp / "connect-payload").exists()


def test_results_over_the_sessions_max_result_size_are_refused_before_anything_is_written(sessions):
    tmp, scenarios, _ = sessions
    assert scenarios["result_size"]["outcome"] == "ConfigError", scenarios["result_size"]
    assert "would collect 2056 MiB per iteration, over spark.driver.maxResultSize (1024 MiB)" in scenarios["result_size"]["message"], scenarios["result_size"]
    assert not (tmp / "connect-result-size").exists()


def test_the_train_job_runs_on_a_connect_server_with_remote(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(small_ppo_config(tmp_path)))  # JSON is YAML
    completed = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "train.py"), "--remote", "local[2]", "--config", str(config), "--run-dir", str(tmp_path / "run")],
        cwd=tmp_path, env=environment_without_this_checkout(), capture_output=True, text=True, timeout=600, start_new_session=True,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert f"env steps: {3 * 2 * 4 * 64} in 3 iterations" in completed.stdout
    assert checkpoint.load_latest(tmp_path / "run" / "checkpoints") is not None


def test_remote_under_spark_submit_is_refused_with_one_line(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "train.py"), "--remote", "local[2]", "--config", str(ROOT / "conf" / "cartpole_ppo.yaml"),
         "--run-dir", str(tmp_path / "run")],
        env={**environment_without_this_checkout(), "PYSPARK_GATEWAY_PORT": "1"}, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 2 and completed.stderr.startswith("ddrl: --remote: run jobs/train.py with the venv's Python")
    assert not (tmp_path / "run").exists()
