"""Evolution strategies (ddrl.algorithms.es): the update math, seeds, the batched policy, and training through Spark."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import small_es_config

import ddrl
from ddrl import checkpoint, envs, seeding, spaces
from ddrl.algorithms import es
from ddrl import config as config_module
from ddrl.envs import EnvInfo
from ddrl.networks import build_actor

ROOT = Path(__file__).resolve().parent.parent


# ---- math ------------------------------------------------------------------------------------------------


def test_centered_ranks_hand_worked():
    # sorted: -1.0 (rank 0), 0.5 (1), 2.0 (2), 3.0 (3), 10.0 (4); scaled by 1/4 and shifted by -0.5
    ranks = es.centered_ranks(np.array([3.0, -1.0, 10.0, 0.5, 2.0]))
    np.testing.assert_array_equal(ranks, [0.25, -0.5, 0.5, -0.25, 0.0])
    # ties keep index order, so the ranks are reproducible
    np.testing.assert_array_equal(es.centered_ranks(np.array([1.0, 1.0, 0.0])), [0.0, 0.5, -0.5])


def test_mirrored_gradient_is_unbiased_on_a_quadratic():
    rng = np.random.default_rng(0)
    size, sigma = 5, 0.3
    basis = rng.standard_normal((size, size))
    hessian = basis @ basis.T + np.eye(size)
    optimum, theta = rng.standard_normal(size), rng.standard_normal(size)

    def objective(x: np.ndarray) -> float:
        return -0.5 * (x - optimum) @ hessian @ (x - optimum)

    true_gradient = -hessian @ (theta - optimum)
    seeds = np.array(es.perturbation_seeds(run_seed=11, iteration=0, num_directions=20_000), dtype=np.int64)
    noise = [es.perturbation_noise(seed, size) for seed in seeds]
    returns_pos = np.array([objective(theta + sigma * eps) for eps in noise])
    returns_neg = np.array([objective(theta - sigma * eps) for eps in noise])
    estimate = es.mirrored_gradient(returns_pos, returns_neg, seeds, sigma, size)
    # 20k directions: the estimate's standard error is about 1% of |gradient| per component
    assert np.linalg.norm(estimate - true_gradient) < 0.05 * np.linalg.norm(true_gradient)


def test_noise_is_the_same_in_a_fresh_process():
    seed = es.perturbation_seeds(run_seed=5, iteration=7, num_directions=3)[2]
    here = hashlib.sha256(es.perturbation_noise(seed, 1000).tobytes()).hexdigest()
    code = f"import hashlib; from ddrl.algorithms import es; print(hashlib.sha256(es.perturbation_noise({seed}, 1000).tobytes()).hexdigest())"
    there = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert here == there


def test_task_slices_cover_every_direction_once():
    for num_directions, num_tasks in [(32, 2), (12, 6), (7, 3), (2, 5)]:
        covered = [k for task in range(num_tasks) for k in range(num_directions)[seeding.task_slice(task, num_tasks, num_directions)]]
        assert covered == list(range(num_directions))


@pytest.mark.parametrize("hidden_sizes", [[], [8, 8]])
def test_batched_forward_matches_the_torch_actor(hidden_sizes):
    env = EnvInfo("test", spaces.observation_spec(gym.spaces.Box(-1.0, 1.0, (5,))), spaces.action_spec(gym.spaces.Box(-1.0, 1.0, (3,))))
    architecture = {"hidden_sizes": hidden_sizes, "activation": "tanh"}
    rng = np.random.default_rng(1)
    actors = [build_actor(env.observation, env.action_dim, architecture) for _ in range(4)]
    params = np.stack([torch.nn.utils.parameters_to_vector(actor.parameters()).detach().numpy() for actor in actors])
    params += rng.standard_normal(params.shape).astype(np.float32)
    for actor, row in zip(actors, params):
        torch.nn.utils.vector_to_parameters(torch.from_numpy(row), actor.parameters())
    obs = rng.standard_normal((4, 5)).astype(np.float32)
    batched = es.batched_forward(params, obs, es.layer_shapes(env, hidden_sizes), "tanh")
    with torch.no_grad():
        expected = np.stack([actor(torch.from_numpy(o[None]))[0].numpy() for actor, o in zip(actors, obs)])
    np.testing.assert_allclose(batched, expected, rtol=1e-5, atol=1e-6)


def test_top_directions_must_fit(tmp_path):
    with pytest.raises(ddrl.ConfigError, match="top_directions"):
        config_module.load(small_es_config(tmp_path, es={"variant": "ars", "num_directions": 4, "top_directions": 8}))


# ---- training through Spark ------------------------------------------------------------------------------


def test_openai_es_solves_cartpole(spark, tmp_path):
    result = ddrl.train(spark, small_es_config(tmp_path))
    assert result.eval_return_mean >= 475
    assert result.env_steps <= 300_000 + 32 * 2 * 500
    assert {"population_return_mean", "population_return_max", "population_return_std", "update_norm"} <= set(result.metrics.column_names)


def test_ars_solves_cartpole_and_saves_a_loadable_linear_policy(spark, tmp_path):
    ars = {"variant": "ars", "num_directions": 16, "top_directions": 8, "sigma": 0.05, "learning_rate": 0.05}
    result = ddrl.train(spark, small_es_config(tmp_path, train={"total_env_steps": 100_000}, es=ars))
    assert result.eval_return_mean >= 475
    loaded = ddrl.load_policy(result.run_dir)
    assert loaded.architecture["hidden_sizes"] == []
    observations = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    np.testing.assert_array_equal(loaded.act(observations), result.policy.act(observations))


def test_runs_are_bit_identical_across_repeats_and_tree_depths(spark, tmp_path):
    def final_state(name: str, tree_depth: int) -> dict[str, np.ndarray]:
        config = small_es_config(
            tmp_path,
            name=name,
            env={"num_envs": 2},
            spark={"num_tasks": 6, "tree_depth": tree_depth},
            train={"total_env_steps": 1500, "eval_episodes": 2, "final_eval_episodes": 2},
            es={"num_directions": 12, "hidden_sizes": [8], "episode_cap_factor": 2.0},
        )
        result = ddrl.train(spark, config)
        assert result.iterations >= 2
        state, _ = checkpoint.load_latest(result.run_dir / "checkpoints")
        return state

    first, repeat, deeper = final_state("a", 1), final_state("b", 1), final_state("c", 3)
    assert set(first) == set(repeat) == set(deeper)
    for key in first:
        assert first[key].tobytes() == repeat[key].tobytes(), key
        assert first[key].tobytes() == deeper[key].tobytes(), key


def test_ars_improves_halfcheetah(spark, tmp_path):
    config = small_es_config(
        tmp_path,
        env={"id": "HalfCheetah-v5", "num_envs": 8, "max_episode_steps": 300},
        train={"total_env_steps": 120_000, "target_return": None, "eval_every": 100, "final_eval_episodes": 5},
        es={"variant": "ars", "num_directions": 16, "top_directions": 8, "sigma": 0.03, "learning_rate": 0.02},
    )
    run_config = config_module.load(config)
    algorithm = es.build(run_config, envs.describe(run_config.env))
    initial, _ = envs.evaluate(algorithm.policy(algorithm.initial_state()).act, run_config.env, 5, seed=0)
    result = ddrl.train(spark, config)
    assert result.eval_return_mean > initial.mean() + 100


def test_fewer_directions_than_tasks_is_a_config_error_before_spark_without_task_scaling(tmp_path):
    config = small_es_config(tmp_path, spark={"num_tasks": 4, "tree_depth": 2}, es={"num_directions": 3, "task_scaling": "none"})
    with pytest.raises(ddrl.ConfigError, match=r"^es\.num_directions: 3 directions cannot keep spark\.num_tasks=4"):
        config_module.load(config)


@pytest.mark.parametrize(
    "num_tasks, expected",
    [(2, (32, 4)), (32, (32, 4)), (64, (64, 8)), (100, (100, 13))],  # up to 32 tasks split the 32; then one each
)
def test_task_scaling_gives_each_task_past_num_directions_a_direction_of_its_own(tmp_path, num_tasks, expected):
    ars = {"variant": "ars", "num_directions": 32, "top_directions": 4}
    config = config_module.load(small_es_config(tmp_path, spark={"num_tasks": num_tasks}, es=ars))
    assert es.directions(config) == expected
    unscaled = config_module.load(small_es_config(tmp_path, spark={"num_tasks": 2}, es={**ars, "task_scaling": "none"}))
    assert es.directions(unscaled) == (32, 4)


def test_more_tasks_than_directions_each_run_a_direction_of_their_own(spark, tmp_path):
    ars = {"variant": "ars", "num_directions": 2, "top_directions": 1, "sigma": 0.05, "learning_rate": 0.05}
    config = small_es_config(tmp_path, env={"num_envs": 2}, spark={"num_tasks": 4, "tree_depth": "auto"},
                             train={"total_env_steps": 600, "eval_episodes": 2, "final_eval_episodes": 2}, es=ars)
    result = ddrl.train(spark, config, observers=[])
    assert result.iterations >= 2
    assert set(result.metrics.column("directions").to_pylist()) == {4.0}  # 4 directions, 2 of them kept: b / N stays 1/2


def test_a_task_with_fewer_directions_than_envs_builds_only_the_envs_it_uses(tmp_path):
    # With gymnasium's sync vector env the active sub-envs' episodes do not depend on idle ones.  A native vector
    # env (CartPole's) draws the whole batch's start states at once, so there they differ (same distribution).
    config = config_module.load(small_es_config(tmp_path, env={"id": "Pendulum-v1", "num_envs": 8}, spark={"num_tasks": 2},
                                                es={"variant": "ars", "num_directions": 4}))
    algorithm = es.build(config, envs.describe(config.env))
    payload = algorithm.task_payload(algorithm.initial_state(), 0)
    lean = algorithm.run_task(payload, 1, 0)
    assert algorithm._vector_env().num_envs == 2
    es._WORKER_CACHE.clear()
    wide = envs.make_vector_env(config.env, 8)  # what a task built before: idle sub-envs ran theta
    algorithm._vector_env = lambda: wide
    full = algorithm.run_task(payload, 1, 0)
    for name in ("seeds", "returns_pos", "returns_neg", "obs_mean"):
        np.testing.assert_array_equal(lean.records[name], full.records[name])
