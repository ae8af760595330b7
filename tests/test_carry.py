"""Carried episodes (ddrl.carry): games that span Spark jobs replay exactly, kept and replayed envs agree, envs that
do not replay are caught, and the reset-every-job option is the behaviour from before carrying."""

from __future__ import annotations

import hashlib
import logging
import shutil

import gymnasium as gym
import numpy as np
import pytest
import yaml

import ddrl
from conftest import ROOT, final_params, small_ppo_config
from ddrl import carry, checkpoint, envs
from ddrl import config as config_module
from ddrl.algorithms import ppo as ppo_module
from ddrl.carry import EnvCursor
from ddrl.config import ConfigError, EnvConfig
from ddrl.merge import Partial
from ddrl.seeding import seed_everything


def _breakout_env() -> dict:
    """The shipped Breakout env section, its envs given per task by the tests (not over the tasks)."""
    env = yaml.safe_load((ROOT / "conf" / "breakout_ppo.yaml").read_text())["env"]
    return {key: value for key, value in env.items() if key != "total_envs"}


def _cold_worker() -> None:
    """As if the next task ran in a new Python worker: nothing kept from earlier tasks."""
    for cache in (ppo_module._WORKER_MODELS, ppo_module._WORKER_ENVS, carry._TASK_ENVS):
        cache.clear()


@pytest.mark.parametrize(
    "env_section, steps_per_job",
    [({"id": "CartPole-v1"}, 4), ({"id": "HalfCheetah-v5"}, 30), (_breakout_env(), 40)],
    ids=["classic-control", "mujoco", "atari"],
)
def test_a_game_spanning_jobs_replays_as_played_straight_through(env_section, steps_per_job):
    """Sub-env 0 goes through 4 jobs, each on a cold worker that rebuilds it by replay from the carry; what it
    shows (observations, rewards) equals the same env stack played straight through with the same seed and calls.
    Breakout's stack is the shipped config's (frame skip, FIRE, episodic lives, clipped rewards, frame stack):
    after a lost life the game goes on, in the replay too."""
    env_config = EnvConfig(**{**env_section, "num_envs": 2})
    info = envs.describe(env_config)
    rng = np.random.default_rng(1)
    seed, carried = 12345, None
    events = []  # sub-env 0's calls: ("reset", observation, 0.0) or (action, observation, reward)
    for job in range(4):
        carry._TASK_ENVS.clear()
        resumed = carry.resume(env_config, info, ("test", 0), seed, carried)
        vector_env, cursor = resumed.vector_env, resumed.cursor
        assert resumed.replay_failures == 0 and not resumed.cache_hit
        assert resumed.replayed_steps >= (steps_per_job if job else 0)
        if job == 0 or carried["ended"][0]:
            events.append(("reset", cursor.features["vector"][0] if "vector" in cursor.features else cursor.features["image"][0], 0.0))
        ended = np.zeros(2, dtype=bool)
        for _ in range(steps_per_job):
            action = np.stack([_action(vector_env.single_action_space, rng) for _ in range(2)])
            observation, reward, terminated, truncated, _ = vector_env.step(action)
            features = info.observation.features(observation)
            events.append(("reset" if ended[0] else action[0], next(iter(features.values()))[0], reward[0]))
            ended = terminated | truncated
        cursor = EnvCursor(features, None, ended, np.zeros(2), np.zeros(2, dtype=np.int64), np.zeros(2), observation)
        carried = carry.capture(("test", 0), vector_env, cursor).arrays()
    game_steps = sum(1 for call, _, _ in events if not isinstance(call, str))
    assert game_steps >= 3 * steps_per_job, "the game must span at least three jobs"

    straight = envs.make_vector_env(env_config, 1, outermost=lambda env: env).envs[0]
    for index, (call, observation, reward) in enumerate(events):
        if index == 0:
            straight_observation, straight_reward = straight.reset(seed=seed)[0], 0.0
        elif isinstance(call, str):
            straight_observation, straight_reward = straight.reset()[0], 0.0
        else:
            straight_observation, straight_reward, terminated, truncated, _ = straight.step(_as_env_action(call, info))
            assert not (truncated or (terminated and "EpisodicLife" not in str(env_section))), "one game only"
        features = info.observation.features(np.asarray(straight_observation)[None])
        assert np.array_equal(next(iter(features.values()))[0], observation), f"call {index}"
        assert reward == straight_reward, f"call {index}"


def _action(space, rng):
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(space.n)
    return rng.uniform(space.low, space.high).astype(np.float64)


def _as_env_action(action, info):
    return action if info.action.kind == "box" else int(action)


def _algorithm(tmp_path, **sections) -> ppo_module.PPO:
    config = config_module.load(small_ppo_config(tmp_path, **sections))
    return ppo_module.build(config, envs.describe(config.env))


def _train_in_process(algorithm, iterations: int, cold_worker_every_task: bool):
    """The driver's loop without Spark: each task reseeded as ddrl.engines.work does, results merged exactly.
    Returns the state and every task's records."""
    state, records = algorithm.initial_state(), []
    for iteration in range(iterations):
        payload = algorithm.task_payload(state, iteration)
        partial = None
        for index in range(algorithm.config.spark.num_tasks):
            if cold_worker_every_task:
                _cold_worker()
            seed = 1000 * iteration + index
            seed_everything(seed)
            task = Partial.of_task(index, algorithm.run_task(payload, index, seed))
            partial = task if partial is None else partial.merge(task)
        result = partial.finish()
        records.append(result.tasks)
        state, _ = algorithm.apply(state, result, iteration)
    return state, records


BREAKOUT_SMALL = {"env": {**_breakout_env(), "num_envs": 2}, "ppo": {"num_steps": 32, "cnn": "nature", "hidden_sizes": []}}
"""The shipped Breakout stack (EpisodicLife: games go on across lost lives, and across jobs), small rollouts."""


@pytest.mark.parametrize("sections", [{"ppo": {"num_steps": 16}}, BREAKOUT_SMALL], ids=["cartpole", "breakout"])
def test_a_kept_env_and_a_replayed_one_give_the_same_tasks(tmp_path, sections):
    """A worker that kept the task's envs goes on with them; one that did not replays the carry: same bytes."""
    _cold_worker()
    kept_state, kept_records = _train_in_process(_algorithm(tmp_path, **sections), 4, cold_worker_every_task=False)
    replayed_state, replayed_records = _train_in_process(_algorithm(tmp_path, **sections), 4, cold_worker_every_task=True)
    assert [task["carry_cache_hit"] for task in kept_records[-1]] == [1.0, 1.0]
    assert all(task["carry_cache_hit"] == 0.0 and task["replayed_steps"] > 0 for task in replayed_records[-1])
    assert kept_state.keys() == replayed_state.keys() and any(key.startswith(carry.PREFIX) for key in kept_state)
    if sections is BREAKOUT_SMALL:  # lives were lost and the games went on: resets inside the carried records
        assert any(array.any() for key, array in kept_state.items() if key.endswith(".resets"))
    for key in kept_state:
        assert np.array_equal(kept_state[key], replayed_state[key]), key


def test_episodes_spanning_jobs_are_reported_whole_where_they_end(tmp_path):
    """With 8-step rollouts, CartPole's episodes (about 20 steps at first) end in a later job than they began in:
    each is reported once, with its whole length, and no episode is cut at the job's end."""
    _cold_worker()
    _, records = _train_in_process(_algorithm(tmp_path, ppo={"num_steps": 8}, env={"num_envs": 2}), 6, cold_worker_every_task=True)
    lengths = np.concatenate([task["episode_lengths"] for tasks in records for task in tasks])
    returns = np.concatenate([task["episode_returns"] for tasks in records for task in tasks])
    assert len(lengths) > 0 and lengths.max() > 8 and np.array_equal(returns, lengths)  # CartPole: +1 a step


def test_an_env_that_does_not_replay_is_counted_warned_about_once_and_still_trains(tmp_path, caplog):
    _cold_worker()
    algorithm = _algorithm(tmp_path, env={"id": "envs_for_tests:UnseededStartCartPole", "num_envs": 4, "max_episode_steps": 500})
    with caplog.at_level(logging.WARNING, logger="ddrl"):
        state, records = _train_in_process(algorithm, 3, cold_worker_every_task=True)
    failures = sum(task["replay_failures"] for tasks in records for task in tasks)
    assert failures > 0
    warnings = [record.message for record in caplog.records if "did not replay" in record.message]
    assert len(warnings) == 1 and "UnseededStartCartPole" in warnings[0] and "ppo.carry_episodes: false" in warnings[0]
    assert np.all(np.isfinite(state["params"]))


def test_reset_every_job_keeps_no_carry_and_starts_each_task_from_its_seed(tmp_path):
    """``ppo.carry_episodes: false``: nothing carried, and a task's result does not depend on what ran before it."""
    algorithm = _algorithm(tmp_path, ppo={"num_steps": 16, "carry_episodes": False})
    _cold_worker()
    state, _ = _train_in_process(algorithm, 2, cold_worker_every_task=False)
    assert not any(key.startswith(carry.PREFIX) for key in state)
    payload = algorithm.task_payload(state, 2)
    seed_everything(5)
    warm = algorithm.run_task(payload, 0, 5)
    _cold_worker()
    seed_everything(5)
    cold = algorithm.run_task(payload, 0, 5)
    assert np.array_equal(warm.replicated["params"], cold.replicated["params"])


PARAMS_BEFORE_CARRYING = {"CartPole-v1": "5a9fb2874e19da34", "Pendulum-v1": "34e08b41afd3e123"}
"""sha256 (first 16 hex digits) of the final parameters of the run below: resetting every job with plain averaging
must give the results of before ddrl carried episodes and scaled its outer step (commit 7980297), bit for bit.
Re-recorded when PPO's update began to take its losses as sums over a minibatch divided by its size (for
spark.sync: gradients) and to step Adam with torch's fused kernel: the same math rounded otherwise, 4e-9 and 3e-9
relative from 7980297's parameters (CartPole, Pendulum)."""


@pytest.mark.parametrize("env_id", sorted(PARAMS_BEFORE_CARRYING))
def test_reset_every_job_gives_the_parameters_from_before_carrying(spark, tmp_path, env_id):
    more = {"normalize_observation": True, "normalize_reward": True} if env_id == "Pendulum-v1" else {}
    config = {
        "name": "cmp", "seed": 7, "algo": "ppo", "env": {"id": env_id, "num_envs": 4}, "spark": {"num_tasks": 2, "sync": "parameters"},
        "train": {"total_env_steps": 4 * 64 * 2 * 4, "eval_episodes": 2, "final_eval_episodes": 2},
        "output": {"root": str(tmp_path)},
        "ppo": {"num_steps": 64, "update_epochs": 2, "num_minibatches": 2, "carry_episodes": False, "task_scaling": "none", **more},
    }
    result = ddrl.train(spark, config, observers=[])
    assert hashlib.sha256(final_params(result.run_dir).tobytes()).hexdigest()[:16] == PARAMS_BEFORE_CARRYING[env_id]


def test_a_run_resumed_from_a_checkpoint_taken_mid_episode_gives_the_same_parameters(spark, tmp_path):
    config = small_ppo_config(tmp_path, ppo={"num_steps": 16}, train={"total_env_steps": 4 * 16 * 2 * 4})
    ddrl.train(spark, config, run_dir=tmp_path / "whole", observers=[])
    state, _ = checkpoint.load_latest(tmp_path / "whole" / "checkpoints")
    carried = carry.carries_in_state(state)
    assert sorted(carried) == [0, 1] and all(arrays["lengths"][~arrays["ended"]].min() > 0 for arrays in carried.values())

    shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
    for name in ("ckpt-000003", "ckpt-000004"):  # as if the driver died after checkpointing iteration 2
        for suffix in (".json", ".safetensors"):
            (tmp_path / "resumed" / "checkpoints" / (name + suffix)).unlink()
    ddrl.train(spark, config, resume=tmp_path / "resumed", observers=[])
    assert np.array_equal(final_params(tmp_path / "whole"), final_params(tmp_path / "resumed"))


def test_envpool_with_carried_episodes_is_a_config_error():
    config = small_ppo_config(ROOT, env={"id": "CartPole-v1", "envpool": {"id": "CartPole-v1"}})
    with pytest.raises(ConfigError, match=r"^env.envpool: .*ppo.carry_episodes: false"):
        config_module.load(config)


def test_a_run_resumed_with_other_task_counts_starts_new_tasks_fresh_and_ends_dropped_ones(spark, tmp_path):
    config = small_ppo_config(tmp_path, ppo={"num_steps": 16}, train={"total_env_steps": 4 * 16 * 2 * 4})
    ddrl.train(spark, config, run_dir=tmp_path / "whole", observers=[])
    for num_tasks, iterations in ((3, 2 + 2), (1, 2 + 4)):  # 256 steps left: 2 iterations of 3 tasks, 4 of 1
        run = tmp_path / f"tasks-{num_tasks}"
        shutil.copytree(tmp_path / "whole", run)
        for name in ("ckpt-000003", "ckpt-000004"):  # back to the checkpoint of iteration 2
            for suffix in (".json", ".safetensors"):
                (run / "checkpoints" / (name + suffix)).unlink()
        result = ddrl.train(spark, config_module.load(config, [f"spark.num_tasks={num_tasks}"]), resume=run, observers=[])
        state, _ = checkpoint.load_latest(run / "checkpoints")
        assert result.iterations == iterations and sorted(carry.carries_in_state(state)) == list(range(num_tasks))
        assert config_module.load(run / "config.yaml").spark.num_tasks == num_tasks
    with pytest.raises(ConfigError, match="belongs to a different config"):
        ddrl.train(spark, config_module.load(config, ["ppo.learning_rate=0.1"]), resume=tmp_path / "whole")


def test_a_carry_the_driver_cannot_hold_is_refused_before_any_job(spark, tmp_path):
    """4,096 CartPole envs a task, episodes up to 5,000 steps: each task's carry could reach 352 MiB."""
    config = small_ppo_config(tmp_path, env={"num_envs": 4096, "max_episode_steps": 5000}, train={"total_env_steps": 10**10})
    with pytest.raises(ConfigError, match=r"^spark: .*driver would collect"):
        ddrl.train(spark, config, run_dir=tmp_path / "run", observers=[])
    assert not (tmp_path / "run").exists()
    ddrl.train(spark, config_module.load(config, ["ppo.carry_episodes=false", "env.num_envs=4", "train.total_env_steps=512"]),
               run_dir=tmp_path / "small", observers=[])
