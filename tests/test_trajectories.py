"""Recorded trajectories (``output.record_experience``, ``jobs/evaluate.py --record``): written by the tasks, one
file per (iteration, task), read back with Spark, and replayable from the recorded seeds and actions."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import final_params, flaky_config, small_es_config, small_ppo_config

import ddrl
from ddrl import config as config_module
from ddrl.data import trajectories


def _replay_every_episode_from_its_start(rows: pa.Table, env_id: str) -> int:
    """Play each recorded episode that begins in ``rows`` again from its seed with its actions; assert that the
    observations and rewards are the recorded ones.  Returns how many steps were replayed."""
    frame = rows.sort_by([("task", "ascending"), ("env", "ascending"), ("iteration", "ascending"), ("step", "ascending")]).to_pylist()
    episodes: dict[tuple[int, int, int], list[dict]] = {}
    for row in frame:
        episodes.setdefault((row["task"], row["env"], row["episode"]), []).append(row)
    replayed = 0
    for (_, _, seed), steps in episodes.items():
        if steps[0]["step"] != 0:  # began before the recording (not in these tests: recording starts with the run)
            continue
        assert [row["step"] for row in steps] == list(range(len(steps)))
        env = gym.make(env_id)
        observation, _ = env.reset(seed=seed)
        for index, row in enumerate(steps):
            np.testing.assert_array_equal(np.asarray(row["observation"], dtype=observation.dtype), observation.reshape(-1))
            observation, reward, terminated, truncated, _ = env.step(np.asarray(row["action"]) if env_id != "CartPole-v1" else row["action"])
            assert (reward, terminated, truncated) == (row["reward"], row["terminated"], row["truncated"])
            replayed += 1
            if terminated or truncated:
                assert index == len(steps) - 1
        env.close()
    return replayed


def test_tasks_write_one_file_per_iteration_and_task_that_spark_reads_and_that_replays(spark, tmp_path) -> None:
    record = tmp_path / "experience"
    config = small_ppo_config(tmp_path, output={"record_experience": str(record)}, ppo={"local_rounds": 2})
    result = ddrl.train(spark, config)

    files = sorted(path.name for path in record.iterdir())
    assert files == [trajectories.file_name(iteration, task) for iteration in range(1, result.iterations + 1) for task in range(2)]
    frame = spark.read.parquet(str(record))
    table = pq.read_table(record)
    assert frame.count() == table.num_rows
    assert table.num_rows <= result.env_steps and table.num_rows > 0.95 * result.env_steps  # autoreset steps are not transitions
    assert table.column_names[:5] == ["iteration", "task", "env", "episode", "step"]
    assert not any(np.isnan(table["log_prob"].to_numpy())) and not any(np.isnan(table["value"].to_numpy()))

    frame.createOrReplaceTempView("experience")
    returns = spark.sql("SELECT iteration, SUM(reward) AS reward FROM experience GROUP BY iteration ORDER BY iteration").collect()
    assert [row["iteration"] for row in returns] == list(range(1, result.iterations + 1))
    assert sum(row["reward"] for row in returns) == pytest.approx(float(np.sum(table["reward"].to_numpy())))

    # Episodes go on across rounds and jobs (carried): one that spans iterations replays as one episode.
    spans = spark.sql("SELECT task, env, episode FROM experience GROUP BY task, env, episode HAVING COUNT(DISTINCT iteration) > 1")
    assert spans.count() > 0
    assert _replay_every_episode_from_its_start(table, "CartPole-v1") == table.num_rows


def test_recording_leaves_training_unchanged(spark, tmp_path) -> None:
    plain = ddrl.train(spark, small_ppo_config(tmp_path / "plain"))
    recorded = ddrl.train(spark, small_ppo_config(tmp_path / "recorded", output={"record_experience": str(tmp_path / "experience")}))
    np.testing.assert_array_equal(final_params(plain.run_dir), final_params(recorded.run_dir))


def test_box_observations_and_actions_replay(spark, tmp_path) -> None:
    record = tmp_path / "experience"
    config = small_ppo_config(
        tmp_path, env={"id": "HalfCheetah-v5", "num_envs": 1}, spark={"num_tasks": 1},
        train={"total_env_steps": 2 * 48, "eval_every": 100, "eval_episodes": 1, "final_eval_episodes": 1},
        ppo={"num_steps": 48, "update_epochs": 1, "num_minibatches": 1}, output={"record_experience": str(record)},
    )
    ddrl.train(spark, config)
    table = pq.read_table(record)
    assert table.schema.field("observation").type == pa.list_(pa.float64(), 17)
    assert table.schema.field("observation").metadata == {b"shape": b"[17]"}
    assert table.schema.field("action").type == pa.list_(pa.float64(), 6)
    assert _replay_every_episode_from_its_start(table, "HalfCheetah-v5") == 96


def test_a_retried_task_leaves_exactly_one_file(spark, tmp_path) -> None:
    record = tmp_path / "experience"
    config = flaky_config(tmp_path, fail_partitions=[1])
    config["output"]["record_experience"] = str(record)
    result = ddrl.train(spark, config)
    assert sorted(path.name for path in record.iterdir()) == [
        trajectories.file_name(iteration, task) for iteration in range(1, result.iterations + 1) for task in range(2)]


def test_an_interrupted_write_leaves_no_file_that_readers_see(spark, tmp_path, monkeypatch) -> None:
    rows = pa.table({"x": [1, 2, 3]})
    trajectories.write(str(tmp_path), "iteration-000001-task-00000.parquet", rows)

    def dies_half_way(table, where, filesystem):
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("the executor was killed")

    monkeypatch.setattr(pq, "write_table", dies_half_way)
    with pytest.raises(OSError):
        trajectories.write(str(tmp_path), "iteration-000002-task-00000.parquet", rows)
    assert spark.read.parquet(str(tmp_path)).count() == 3
    assert pq.read_table(tmp_path).num_rows == 3


def test_recording_and_init_policy_are_refused_where_they_do_not_apply(tmp_path) -> None:
    with pytest.raises(ddrl.ConfigError, match=r"^output.record_experience: recorded episodes .*ppo.carry_episodes"):
        config_module.load(small_ppo_config(tmp_path, output={"record_experience": "x"}, ppo={"carry_episodes": False}))
    with pytest.raises(ddrl.ConfigError, match=r"^output.record_experience: ES tasks"):
        config_module.load(small_es_config(tmp_path, output={"record_experience": "x"}))
    with pytest.raises(ddrl.ConfigError, match=r"^init.policy: starting from a saved policy is for algo ppo"):
        config_module.load(small_es_config(tmp_path, init={"policy": str(tmp_path)}))
    relative = config_module.load(small_ppo_config(tmp_path, output={"record_experience": "experience"}))
    assert Path(relative.output.record_experience).is_absolute()
    assert config_module.load(small_ppo_config(tmp_path, output={"record_experience": "s3://bucket/x"})).output.record_experience == "s3://bucket/x"


def test_evaluate_records_its_episodes_by_seed(spark, tmp_path, capsys) -> None:
    from jobs import evaluate

    result = ddrl.train(spark, small_ppo_config(tmp_path))
    assert evaluate.main([str(result.run_dir), "--episodes", "3", "--seed", "40", "--record", str(tmp_path / "evaluations")]) == 0
    assert "recorded" in capsys.readouterr().out
    table = pq.read_table(tmp_path / "evaluations" / trajectories.evaluation_file_name(40))
    assert sorted(set(table["episode"].to_pylist())) == [40, 41, 42]
    assert _replay_every_episode_from_its_start(table, "CartPole-v1") == table.num_rows
    policy = ddrl.load_policy(result.run_dir)
    np.testing.assert_array_equal(policy.act(np.stack(table["observation"].to_numpy(zero_copy_only=False))), table["action"].to_numpy())
