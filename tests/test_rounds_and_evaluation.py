"""Local rounds, the outer step, evaluation inside the Spark job, and the best policy kept."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from conftest import fault_marker, final_params, small_ppo_config

import ddrl
from ddrl import envs
from ddrl.algorithms import ppo
from ddrl import config as config_module
from ddrl.merge import MergedResult
from ddrl.seeding import seed_everything


def _algorithm(tmp_path, sync: str = "gradients", **sections) -> ppo.PPO:
    config = config_module.load(small_ppo_config(tmp_path, spark={"num_tasks": 2, "sync": sync}, **sections))
    return ppo.PPO(config, envs.describe(config.env))


# ---- local rounds (no Spark) --------------------------------------------------------------------------------


def test_episodes_continue_across_local_rounds(tmp_path):
    """5-step episodes never fit in a 4-step round; over 3 rounds each env finishes two, whole."""
    algorithm = _algorithm(
        tmp_path,
        env={"id": "envs_for_tests:FixedLengthEnv", "num_envs": 2, "kwargs": {"length": 5}},
        ppo={"num_steps": 4, "local_rounds": 3, "update_epochs": 1, "num_minibatches": 1},
    )
    seed_everything(3)
    output = algorithm.run_task(algorithm.task_payload(algorithm.initial_state(), 0), 0, 3)
    np.testing.assert_array_equal(output.episode_lengths, [5, 5, 5, 5])
    np.testing.assert_array_equal(output.episode_returns, [5.0, 5.0, 5.0, 5.0])
    # 12 steps per env, of which two only reset the env after an episode ended (steps 5 and 11).
    assert output.records["samples"] == output.weight == 2 * 10
    assert output.env_steps == 2 * 4 * 3


def test_one_round_of_four_steps_finishes_no_five_step_episode(tmp_path):
    algorithm = _algorithm(
        tmp_path,
        env={"id": "envs_for_tests:FixedLengthEnv", "num_envs": 2, "kwargs": {"length": 5}},
        ppo={"num_steps": 4, "update_epochs": 1, "num_minibatches": 1},
    )
    seed_everything(3)
    output = algorithm.run_task(algorithm.task_payload(algorithm.initial_state(), 0), 0, 3)
    assert len(output.episode_lengths) == 0


def test_the_learning_rate_anneals_over_every_round_of_the_run(tmp_path):
    # 3 iterations of 2 tasks x 4 envs x 64 steps x 2 rounds: 6 rounds per task over the run.
    algorithm = _algorithm(tmp_path, ppo={"local_rounds": 2, "learning_rate": 0.006}, train={"total_env_steps": 3 * 2 * 4 * 64 * 2})
    state = algorithm.initial_state()
    rates = [rate for iteration in range(3) for rate in algorithm.task_payload(state, iteration)["learning_rates"]]
    np.testing.assert_allclose(rates, [0.006, 0.005, 0.004, 0.003, 0.002, 0.001])


# ---- the outer step (no Spark) ------------------------------------------------------------------------------


def _merged(change: np.ndarray, samples=(10, 30), change_sq_norms=None) -> MergedResult:
    record = {name: 0.0 for name in ("pg_loss", "v_loss", "entropy", "approx_kl", "clipfrac", "explained_variance", "learning_rate", "rollout_s", "update_s")}
    record.update(obs_count=0.0, obs_mean=np.zeros(4), obs_m2=np.zeros(4), return_count=0.0, return_mean=0.0, return_m2=0.0, updates=1)
    norms = change_sq_norms or [float(change @ change)] * len(samples)
    tasks = [{**record, "samples": n, "change_sq_norm": norm} for n, norm in zip(samples, norms)]
    return MergedResult(sum(samples), {"params_change": change}, tasks, {})


RESTART = {"adam_moments": "restart", "carry_episodes": False}  # no Adam state or envs to carry: the hand-made results below have none


def test_outer_lr_one_without_momentum_adds_the_mean_change(tmp_path):
    algorithm = _algorithm(tmp_path, "parameters", ppo=RESTART)
    state = algorithm.initial_state()
    change = np.random.default_rng(0).normal(size=len(state["params"])) * 1e-3
    new_state, metrics = algorithm.apply(state, _merged(change), 0)
    np.testing.assert_array_equal(new_state["params"], (state["params"] + change).astype(np.float32))
    assert metrics["drift"] == 0.0


def test_drift_is_the_rms_distance_of_the_tasks_from_their_mean(tmp_path):
    algorithm = _algorithm(tmp_path, "parameters", ppo=RESTART)
    state = algorithm.initial_state()
    size = len(state["params"])
    first, second = np.full(size, 1.0), np.full(size, 3.0)  # samples 10 and 30: mean 2.5, distances 1.5 and 0.5
    merged = _merged(np.full(size, 2.5), change_sq_norms=[float(first @ first), float(second @ second)])
    _, metrics = algorithm.apply(state, merged, 0)
    assert metrics["drift"] == pytest.approx(np.sqrt(size * (10 * 1.5**2 + 30 * 0.5**2) / 40))


def test_nesterov_outer_momentum(tmp_path):
    algorithm = _algorithm(tmp_path, "parameters", ppo={**RESTART, "outer_lr": 0.7, "outer_momentum": 0.9})
    state = algorithm.initial_state()
    rng = np.random.default_rng(1)
    first, second = (rng.normal(size=len(state["params"])) * 1e-3 for _ in range(2))
    after_first, _ = algorithm.apply(state, _merged(first), 0)
    after_second, _ = algorithm.apply(after_first, _merged(second), 1)
    buffer = 0.9 * first + second  # b1 = first; b2 = 0.9 b1 + second
    expected_first = state["params"] + 0.7 * (first + 0.9 * first)
    np.testing.assert_allclose(after_first["params"], expected_first, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(after_second["params"], expected_first + 0.7 * (second + 0.9 * buffer), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("sync, adam_moments, shipped", [
    ("parameters", "restart", set()), ("parameters", "fedadamw", {"adam_step", "adam_v_means"}), ("parameters", "average", {"adam_step", "adam_m", "adam_v"}),
    ("gradients", None, {"adam_steps", "adam_m", "adam_v"}),  # one Adam, all of it
])
def test_the_payload_carries_only_the_adam_state_its_option_keeps(tmp_path, sync, adam_moments, shipped):
    algorithm = _algorithm(tmp_path, sync, ppo={"adam_moments": adam_moments} if adam_moments else {})
    payload = algorithm.task_payload(algorithm.initial_state(), 0)
    assert {key for key in payload if key.startswith("adam")} == shipped


def test_fedadamw_keeps_the_second_moment_as_per_tensor_means(tmp_path):
    algorithm = _algorithm(tmp_path, "parameters", ppo={"adam_moments": "fedadamw"})
    state = algorithm.initial_state()
    seed_everything(5)
    output = algorithm.run_task(algorithm.task_payload(state, 0), 0, 5)
    means = output.records["adam_v_means"]
    assert means.shape == (len(algorithm.tensor_sizes),) and np.all(means > 0)


# ---- on Spark: determinism, evaluation inside the job, the best policy ------------------------------------


ROUNDS = {"local_rounds": 2, "adam_moments": "fedadamw", "outer_lr": 0.8, "outer_momentum": 0.5, "num_steps": 32}


def test_local_rounds_with_outer_momentum_are_bit_identical_across_tree_depths_retries_and_resume(spark, tmp_path):
    marker = fault_marker(tmp_path)

    def config(depth: int, **env_kwargs) -> dict:
        env = {"id": "faulty_envs:FlakyCartPole", "num_envs": 4, "max_episode_steps": 500, "kwargs": {"marker": marker, **env_kwargs}}
        return small_ppo_config(tmp_path, env=env, ppo=ROUNDS, spark={"tree_depth": depth, "sync": "parameters"})

    ddrl.train(spark, config(1), run_dir=tmp_path / "depth1", observers=[])
    ddrl.train(spark, config(3, fail_partitions=[1]), run_dir=tmp_path / "depth3-retried", observers=[])
    reference = final_params(tmp_path / "depth1")
    assert np.array_equal(final_params(tmp_path / "depth3-retried"), reference)

    shutil.copytree(tmp_path / "depth1", tmp_path / "resumed")
    for name in ("ckpt-000002", "ckpt-000003"):  # as if the driver died after checkpointing iteration 1
        for suffix in (".json", ".safetensors"):
            (tmp_path / "resumed" / "checkpoints" / (name + suffix)).unlink()
    resumed = ddrl.train(spark, config(1), resume=tmp_path / "resumed", observers=[])
    assert resumed.iterations == 3
    assert np.array_equal(final_params(tmp_path / "resumed"), reference)


def test_the_evaluation_does_not_depend_on_the_task_count(spark, tmp_path):
    """Iteration 1 evaluates the initial policy, the same for any task count; each episode has its own seed."""
    evaluations = {}
    for tasks in (1, 3):
        config = small_ppo_config(
            tmp_path, env={"id": "Pendulum-v1", "num_envs": 2}, spark={"num_tasks": tasks},
            train={"total_env_steps": 1, "eval_episodes": 5}, ppo={"num_steps": 16},
        )
        result = ddrl.train(spark, config, run_dir=tmp_path / f"tasks{tasks}", observers=[])
        (row,) = result.metrics.to_pylist()
        evaluations[tasks] = (row["eval_return_mean"], row["eval_return_std"], row["eval_env_steps"])
    assert evaluations[1] == evaluations[3]
    assert evaluations[1][2] == 0.0  # the evaluated policy had seen no env step


def test_a_run_solved_at_its_first_evaluation_ends_with_the_policy_it_evaluated(spark, tmp_path):
    config = small_ppo_config(tmp_path, train={"target_return": 5.0, "solved_evaluations": 1, "total_env_steps": 10**6})
    result = ddrl.train(spark, config, run_dir=tmp_path / "run", observers=[])
    assert result.iterations == 1
    algorithm = _algorithm(tmp_path)
    np.testing.assert_array_equal(final_params(tmp_path / "run"), algorithm.initial_state()["params"])
    observations = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    np.testing.assert_array_equal(result.policy.act(observations), algorithm.policy(algorithm.initial_state()).act(observations))


def test_keep_best_keeps_the_best_evaluated_policy_and_load_policy_reads_it(spark, tmp_path):
    config = small_ppo_config(tmp_path, train={"total_env_steps": 4 * 64 * 2 * 4, "eval_episodes": 4})
    result = ddrl.train(spark, config, run_dir=tmp_path / "run", observers=[])
    best = json.loads((tmp_path / "run" / "best" / "best.json").read_text())
    evaluations = [row["eval_return_mean"] for row in result.metrics.to_pylist()] + [result.eval_return_mean]
    assert best["eval_return_mean"] == max(evaluations) == result.best_eval_return
    assert result.best_policy_dir == tmp_path / "run" / "best"
    policy = ddrl.load_policy(tmp_path / "run", best=True)
    if not best.get("final"):  # the best was evaluated in the job of iteration best["iteration"] + 1
        rows = {row["iteration"]: row for row in result.metrics.to_pylist()}
        assert rows[best["iteration"] + 1]["eval_env_steps"] == best["env_steps"]
    assert policy.act(np.zeros(4, dtype=np.float32)) in (0, 1)


def test_without_keep_best_no_best_policy_is_written(spark, tmp_path):
    result = ddrl.train(spark, small_ppo_config(tmp_path, train={"keep_best": False}), run_dir=tmp_path / "run", observers=[])
    assert result.best_policy_dir is None and not (tmp_path / "run" / "best").exists()
    with pytest.raises(FileNotFoundError, match="no best policy"):
        ddrl.load_policy(tmp_path / "run", best=True)


def test_the_progress_line_shows_a_dash_where_an_iteration_had_no_evaluation(spark, tmp_path, caplog):
    config = small_ppo_config(tmp_path, train={"eval_every": 2})
    with caplog.at_level(logging.INFO, logger="ddrl"):
        ddrl.train(spark, config, run_dir=tmp_path / "run", observers=[])
    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("iter")]
    assert len(lines) == 3
    assert "| eval        - |" in lines[1] and "nan" not in " ".join(lines)
    assert "| eval        - |" not in lines[0]
