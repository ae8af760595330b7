"""Learning from logged data: behaviour cloning (``algo: bc``) on a trained policy's recorded episodes, PPO started
from its policy (``init.policy``), and one-line errors for bad tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, fault_marker, final_params, small_ppo_config

import ddrl
from ddrl import checkpoint, config as config_module
from ddrl.algorithms import ppo
from ddrl.run import Run


@pytest.fixture(scope="module")
def recorded(spark, tmp_path_factory) -> Path:
    """10 greedy episodes of a CartPole policy that PPO trained to 500 (the README's config)."""
    from jobs import evaluate

    root = tmp_path_factory.mktemp("teacher")
    teacher = ddrl.train(spark, ROOT / "conf" / "cartpole_ppo.yaml", overrides=[f"output.root={root}", "train.final_eval_episodes=5"])
    assert teacher.eval_return_mean >= 475
    assert evaluate.main([str(teacher.run_dir), "--episodes", "10", "--record", str(root / "episodes")]) == 0
    return root / "episodes"


def bc_config(tmp_path: Path, data: Path | str, **sections) -> dict:
    config = {
        "name": "bc", "seed": 5, "algo": "bc", "env": {"id": "CartPole-v1", "num_envs": 1}, "spark": {"num_tasks": 2, "tree_depth": 1},
        "train": {"total_env_steps": 8 * 5000 * 4, "target_return": 475, "eval_every": 2, "eval_episodes": 4, "final_eval_episodes": 10},
        "output": {"root": str(tmp_path), "checkpoint_every": 1}, "bc": {"data": str(data), "epochs": 4},
    }
    for section, values in sections.items():
        config[section] = {**config[section], **values}
    return config


def test_bc_reaches_the_teachers_return_from_its_recorded_episodes(spark, tmp_path, recorded) -> None:
    result = ddrl.train(spark, bc_config(tmp_path, recorded))
    assert result.solved and result.eval_return_mean >= 475
    losses = [loss for loss in result.metrics["bc_loss"].to_pylist() if loss == loss]
    assert losses[-1] < losses[0] / 2


def test_bc_is_bit_identical_across_tree_depths_and_task_retries(spark, tmp_path, recorded) -> None:
    short = {"total_env_steps": 3 * 5000 * 4, "stop_at_target": False}
    plain = ddrl.train(spark, bc_config(tmp_path / "a", recorded, train=short))
    retried = ddrl.train(spark, bc_config(
        tmp_path / "b", recorded, train=short, spark={"tree_depth": 2},
        env={"id": "faulty_envs:FlakyCartPole", "max_episode_steps": 500, "kwargs": {"fail_partitions": [1], "marker": fault_marker(tmp_path)}},  # its evaluation share raises once
    ))
    np.testing.assert_array_equal(final_params(plain.run_dir), final_params(retried.run_dir))


def test_ppo_starts_from_a_bc_policy_and_is_bit_identical_across_runs(spark, tmp_path, recorded) -> None:
    cloned = ddrl.train(spark, bc_config(tmp_path / "bc", recorded, bc={"normalize_observation": True}, train={"stop_at_target": False}))
    config = small_ppo_config(tmp_path / "ppo", init={"policy": str(cloned.run_dir)}, ppo={"normalize_observation": True},
                              train={"stop_at_target": False, "eval_episodes": 4, "total_env_steps": 4 * 64 * 2 * 2})
    loaded = config_module.load(config)
    algorithm = ppo.PPO(loaded, Run.open(loaded).env)
    state = algorithm.initial_state()
    np.testing.assert_array_equal(algorithm.policy(state).act(np.eye(4, dtype=np.float32)), cloned.policy.act(np.eye(4, dtype=np.float32)))
    np.testing.assert_allclose(state["obs_mean"], cloned.policy.observation_mean)

    first, second = (ddrl.train(spark, config, run_dir=tmp_path / "ppo" / name) for name in ("first", "second"))
    assert first.metrics["eval_return_mean"][0].as_py() >= 475  # the first evaluation sees BC's policy
    # Its 2 iterations are within init.critic_warmup_iterations: the critic learned, the actor did not move.
    start = ppo.PPO(loaded, Run.open(loaded).env)
    trained = checkpoint.load_latest(first.run_dir / "checkpoints")[0]["params"]
    np.testing.assert_array_equal(start.policy({**state, "params": trained}).act(np.eye(4, dtype=np.float32)), cloned.policy.act(np.eye(4, dtype=np.float32)))
    assert not np.array_equal(trained, state["params"])
    np.testing.assert_array_equal(final_params(first.run_dir), final_params(second.run_dir))

    other = small_ppo_config(tmp_path / "other", init={"policy": str(cloned.run_dir)}, ppo={"hidden_sizes": [32]})
    with pytest.raises(ddrl.ConfigError, match=r"^init.policy: .* set ppo.hidden_sizes"):
        ddrl.train(spark, other)
    raw = small_ppo_config(tmp_path / "raw", init={"policy": str(cloned.run_dir)})
    with pytest.raises(ddrl.ConfigError, match=r"^init.policy: .* reads standardized observations: set ppo.normalize_observation: true"):
        ddrl.train(spark, raw)
    with pytest.raises(ddrl.ConfigError, match=r"^init.policy: no such run or policy directory"):
        config_module.load(small_ppo_config(tmp_path, init={"policy": str(tmp_path / "nowhere")}))


def _table_with(recorded: Path, directory: Path, **columns) -> Path:
    table = pq.read_table(recorded)
    for name, values in columns.items():
        table = table.set_column(table.column_names.index(name), name, values)
    directory.mkdir()
    pq.write_table(table, directory / "part-0.parquet")
    return directory


def test_bad_tables_get_one_line_errors_naming_the_column_or_file(spark, tmp_path, recorded) -> None:
    def fails(data: Path, **sections) -> str:
        with pytest.raises((ddrl.ConfigError, ddrl.TrainingError)) as error:  # a run directory each: two may start in one second
            ddrl.train(spark, bc_config(tmp_path / "runs" / data.name / str(len(sections)), data, **sections))
        assert "\n" not in str(error.value)
        return str(error.value)

    assert "has no column 'act' (its columns: iteration, task, env, episode, step, observation, action" in fails(recorded, bc={"action": "act"})

    actions = pq.read_table(recorded)["action"].to_numpy().copy()
    actions[3] = 2
    message = fails(_table_with(recorded, tmp_path / "outside", action=pa.array(actions)))
    assert "column 'action': 1 actions outside Discrete(2), the first 2 at row 3" in message and "part-0.parquet" in message

    rows = pq.read_table(recorded).num_rows
    message = fails(_table_with(recorded, tmp_path / "shape", observation=pa.array([[0.0, 0.0, 0.0]] * rows, pa.list_(pa.float32()))))
    assert "column 'observation': each row must hold 4 values (shape [4])" in message

    empty = tmp_path / "empty"
    empty.mkdir()
    pq.write_table(pq.read_table(recorded).slice(0, 0), empty / "part-0.parquet")
    assert fails(empty).startswith(f"bc.data: the table at {empty} is empty")

    unreadable = _table_with(recorded, tmp_path / "unreadable")
    (unreadable / "part-1.parquet").write_bytes(b"not parquet at all")
    assert fails(unreadable).startswith(f"bc.data: cannot read {unreadable / 'part-1.parquet'}")
    assert fails(tmp_path / "missing").startswith("bc.data: no such file or directory")


def test_a_saved_policy_keeps_its_observation_count(tmp_path) -> None:
    config = config_module.load(small_ppo_config(tmp_path, ppo={"normalize_observation": True}))
    algorithm = ppo.PPO(config, Run.open(config).env)
    state = algorithm.initial_state()
    state.update(obs_count=np.array(123.0), obs_mean=np.ones(4), obs_m2=np.full(4, 246.0))
    saved = ddrl.load_policy(algorithm.policy(state).save(tmp_path / "policy"))
    assert float(saved.observation_count) == 123.0
    np.testing.assert_array_equal(saved.observation_variance, np.full(4, 2.0))


def test_a_table_rewritten_between_runs_is_read_again(spark, tmp_path, recorded) -> None:
    """Workers keep their share of the rows between jobs; a run on the same path after the files changed must not
    get the old rows (the same config: the same fingerprint and seeds)."""
    short = {"total_env_steps": 2 * 5000 * 4, "stop_at_target": False, "eval_every": 100}
    data = _table_with(recorded, tmp_path / "data")
    before = ddrl.train(spark, bc_config(tmp_path / "a", data, train=short))
    table = pq.read_table(recorded)
    flipped = table.set_column(table.column_names.index("action"), "action", pa.array(1 - table["action"].to_numpy()))
    pq.write_table(flipped, data / "part-0.parquet")
    after = ddrl.train(spark, bc_config(tmp_path / "b", data, train=short))
    assert not np.array_equal(final_params(after.run_dir), final_params(before.run_dir))
