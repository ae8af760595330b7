"""Training runs on a real local Spark session: outputs, determinism, retries, resume, rejected results."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import final_params, flaky_config, nan_config, small_ppo_config

import ddrl
from ddrl import checkpoint, envs
from ddrl.algorithms import ppo
from ddrl import config as config_module
from ddrl.merge import Partial



def test_short_run_writes_config_metrics_checkpoints_and_policy(spark, tmp_path):
    result = ddrl.train(spark, small_ppo_config(tmp_path), run_dir=tmp_path / "run")

    assert result.iterations == 3 and result.env_steps == 3 * 2 * 4 * 64
    assert (tmp_path / "run" / "config.yaml").exists()
    metrics = pq.read_table(tmp_path / "run" / "metrics").to_pylist()
    assert [row["iteration"] for row in sorted(metrics, key=lambda row: row["iteration"])] == [1, 2, 3]
    for column in ("env_steps", "wall_s", "episode_return_mean", "episodes", "pg_loss", "v_loss", "approx_kl",
                   "allreduce_s", "steps_per_s", "ship_s", "tasks_s", "merge_s", "driver_s", "eval_return_mean"):
        assert column in metrics[0], column
    assert result.metrics.num_rows == 3
    sidecars = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("ckpt-*.json"))
    assert sidecars == ["ckpt-000001.json", "ckpt-000002.json", "ckpt-000003.json"]
    assert json.loads((tmp_path / "run" / "checkpoints" / "latest.json").read_text()) == {"checkpoint": "ckpt-000003"}

    policy = ddrl.load_policy(tmp_path / "run")
    observations = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    np.testing.assert_array_equal(policy.act(observations), result.policy.act(observations))
    assert policy.act(observations[0]) in (0, 1)


def test_continuous_actions_with_observation_and_reward_normalization(spark, tmp_path):
    env = {"id": "Pendulum-v1", "num_envs": 2}
    ppo = {"num_steps": 200, "update_epochs": 2, "num_minibatches": 2, "normalize_observation": True,
           "normalize_reward": True, "log_std_init": -0.5}
    config = small_ppo_config(tmp_path, env=env, ppo=ppo, train={"total_env_steps": 2 * 200 * 2 * 2})
    result = ddrl.train(spark, config, run_dir=tmp_path / "run")

    state, _ = checkpoint.load_latest(tmp_path / "run" / "checkpoints")
    assert state["obs_count"] == 2 * 2 * 200 * 2  # every observation of both iterations, before the autoreset steps
    assert state["return_count"] > 0
    assert all(row["episodes"] == 4 for row in result.metrics.to_pylist())  # 200-step episodes end inside a task
    action = ddrl.load_policy(tmp_path / "run").act(np.zeros(3, dtype=np.float32))
    assert action.shape == (1,) and -2.0 <= action[0] <= 2.0


@pytest.mark.parametrize("sync, num_tasks", [("parameters", 6), ("gradients", 4)])
def test_same_seed_gives_bit_identical_parameters_across_runs_and_tree_depths(spark, tmp_path, sync, num_tasks):
    runs = {}
    for name, depth in (("first", 1), ("second", 1), ("depth3", 3)):
        config = small_ppo_config(tmp_path, spark={"num_tasks": num_tasks, "tree_depth": depth, "sync": sync})
        ddrl.train(spark, config, run_dir=tmp_path / name)
        runs[name] = final_params(tmp_path / name)
    assert np.array_equal(runs["first"], runs["second"])
    assert np.array_equal(runs["first"], runs["depth3"])
    other_seed = small_ppo_config(tmp_path, seed=8)
    ddrl.train(spark, other_seed, run_dir=tmp_path / "other")
    assert not np.array_equal(final_params(tmp_path / "other"), final_params(tmp_path / "first"))


def test_a_task_retried_after_failing_returns_the_same_bytes(spark, tmp_path):
    ddrl.train(spark, flaky_config(tmp_path), run_dir=tmp_path / "clean")
    ddrl.train(spark, flaky_config(tmp_path, fail_partitions=[1]), run_dir=tmp_path / "retried")
    assert np.array_equal(final_params(tmp_path / "clean"), final_params(tmp_path / "retried"))


def test_a_task_failing_every_attempt_stops_the_run_naming_the_iteration(spark, tmp_path):
    config = flaky_config(tmp_path, fail_partitions=[0], every_attempt=True)
    with pytest.raises(ddrl.TrainingError, match=r"iteration 1: .*injected failure in partition 0"):
        ddrl.train(spark, config, run_dir=tmp_path / "failing")


def test_resume_from_a_checkpoint_gives_bit_identical_parameters(spark, tmp_path):
    config = small_ppo_config(tmp_path)
    ddrl.train(spark, config, run_dir=tmp_path / "whole")
    shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
    for name in ("ckpt-000002", "ckpt-000003"):  # as if the driver died after checkpointing iteration 1
        for suffix in (".json", ".safetensors"):
            (tmp_path / "resumed" / "checkpoints" / (name + suffix)).unlink()

    result = ddrl.train(spark, config, resume=tmp_path / "resumed")

    assert result.iterations == 3
    assert np.array_equal(final_params(tmp_path / "whole"), final_params(tmp_path / "resumed"))
    iterations = sorted(row["iteration"] for row in pq.read_table(tmp_path / "resumed" / "metrics").to_pylist())
    assert iterations == [1, 2, 3]


def test_resume_refuses_a_run_directory_of_another_config(spark, tmp_path):
    ddrl.train(spark, small_ppo_config(tmp_path), run_dir=tmp_path / "run")
    with pytest.raises(ddrl.ConfigError, match="belongs to a different config"):
        ddrl.train(spark, small_ppo_config(tmp_path, seed=99), resume=tmp_path / "run")


def test_a_task_result_with_nan_is_rejected_and_the_iteration_goes_on(spark, tmp_path):
    result = ddrl.train(spark, nan_config(tmp_path, [1]), run_dir=tmp_path / "run")
    metrics = result.metrics.to_pylist()
    # Only the healthy task's steps come back, so the step budget of 3 two-task iterations takes 6.
    assert [row["rejected_tasks"] for row in metrics] == [1] * 6
    assert [row["env_steps"] for row in metrics] == [4 * 64 * i for i in range(1, 7)]
    assert np.all(np.isfinite(final_params(tmp_path / "run")))


def test_every_result_rejected_stops_the_run_and_keeps_no_bad_checkpoint(spark, tmp_path):
    with pytest.raises(ddrl.TrainingError, match="every task's result was rejected"):
        ddrl.train(spark, nan_config(tmp_path, [0, 1]), run_dir=tmp_path / "run")
    assert checkpoint.load_latest(tmp_path / "run" / "checkpoints") is None


# ---- models too large for the driver -------------------------------------------------------------------------


@pytest.mark.parametrize("sync, expected", [
    # 2 x 4096 hidden units: 33.6M parameters, one int64 each = 256 MiB per task, twice that at the driver
    ("parameters", r"^spark: each task returns 256 MiB, and the driver would collect 513 MiB"),
    # the parameters and Adam's moments as float32 from the task of rank 0 alone
    ("gradients", r"^spark: the task of rank 0 returns 385 MiB, and the driver would collect 385 MiB"),
])
def test_a_model_whose_results_the_driver_cannot_collect_is_refused_before_any_job(spark, tmp_path, sync, expected):
    config = small_ppo_config(tmp_path, ppo={"hidden_sizes": [4096, 4096]}, spark={"num_tasks": 2, "sync": sync})
    jobs_before = spark.sparkContext.statusTracker().getJobIdsForGroup()
    with pytest.raises(ddrl.ConfigError, match=expected):
        ddrl.train(spark, config, run_dir=tmp_path / "too-large")
    assert spark.sparkContext.statusTracker().getJobIdsForGroup() == jobs_before
    assert not (tmp_path / "too-large").exists()


@pytest.mark.parametrize("sync, adam_moments, bytes_per_parameter", [
    ("parameters", "restart", 8), ("parameters", "fedadamw", 8), ("parameters", "average", 8 + 2 * 24),
    ("gradients", None, 3 * 4),  # from the task of rank 0, with Adam's steps and the normalizers' moments besides
])
@pytest.mark.parametrize("hidden_sizes, env_id", [([64, 64], "CartPole-v1"), ([32], "Pendulum-v1"), ([8, 16, 4], "Acrobot-v1")])
def test_ppo_counts_the_bytes_its_tasks_return(tmp_path, hidden_sizes, env_id, sync, adam_moments, bytes_per_parameter):
    ppo_section = {"hidden_sizes": hidden_sizes, "num_steps": 8, **({"adam_moments": adam_moments} if adam_moments else {})}
    config = config_module.load(small_ppo_config(tmp_path, env={"id": env_id}, ppo=ppo_section, spark={"num_tasks": 2, "sync": sync}))
    algorithm = ppo.PPO(config, envs.describe(config.env))
    state = algorithm.initial_state()
    assert bytes_per_parameter * len(state["params"]) <= algorithm.task_result_bytes() < bytes_per_parameter * len(state["params"]) + 1024
    output = algorithm.run_task(algorithm.task_payload(state, 0), 0, 5)
    sent = Partial.of_task(0, output)
    arrays = [*sent.sums.values(), *sent.fixed_sums.values(), *sent.replicated.values()]
    assert sum(array.nbytes for array in arrays) == algorithm.task_result_bytes()


def test_shipping_the_package_leaves_no_directory_in_the_temp_folder(spark, tmp_path):
    import tempfile
    from pathlib import Path

    from pyspark import SparkFiles

    from ddrl.engines import classic

    before = set(Path(tempfile.gettempdir()).glob("ddrl-package-*"))
    classic._SHIPPED.discard(spark.sparkContext.applicationId)  # as if this session had not shipped it yet
    classic.ClassicEngine(spark).ship_package()
    assert set(Path(tempfile.gettempdir()).glob("ddrl-package-*")) == before
    assert (Path(SparkFiles.getRootDirectory()) / "ddrl-package" / "ddrl.zip").exists()  # removed with the session
    ddrl.train(spark, small_ppo_config(tmp_path), run_dir=tmp_path / "run", observers=[])  # executors still import it
