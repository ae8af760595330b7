"""EnvPool as the training vector env (``env.envpool``): reseeded like gymnasium's vector envs, PPO on it
deterministic on real Spark, and configs it cannot serve refused before Spark starts."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import final_params, small_ppo_config

import ddrl
from ddrl import config as config_module
from ddrl import envs


def test_a_seeded_reset_reseeds_every_sub_env_as_gymnasium_does():
    env = config_module.load(small_ppo_config("unused", env={"id": "CartPole-v1", "envpool": {"id": "CartPole-v1"}}, ppo={"carry_episodes": False})).env
    vector_env = envs.make_vector_env(env, 4)
    assert isinstance(vector_env, envs.SeededEnvPool) and vector_env.metadata["autoreset_mode"] == envs.AutoresetMode.NEXT_STEP
    first, _ = vector_env.reset(seed=10)
    for _ in range(30):  # run the envs on, then reset: the same starts again
        vector_env.step(np.zeros(4, dtype=np.int64))
    again, _ = vector_env.reset(seed=10)
    shifted, _ = vector_env.reset(seed=[11, 12, 13, 14])
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first[1:], shifted[:3])  # sub-env i starts from seed + i
    with pytest.raises(ValueError, match="EnvPool seeds its envs s, s \\+ 1"):
        vector_env.reset(seed=[1, 5, 2, 3])
    vector_env.close()


def _breakout(tmp_path, name: str) -> dict:
    """conf/breakout_ppo.yaml's envs with EnvPool's Breakout for training, a handful of steps."""
    base = config_module.load("conf/breakout_ppo.yaml").to_dict()
    envpool = {"id": "Breakout-v5", "kwargs": {"episodic_life": True, "reward_clip": True, "noop_max": 30, "repeat_action_probability": 0.0}}
    return small_ppo_config(tmp_path, name=name, env={**base["env"], "total_envs": None, "num_envs": 2, "max_episode_steps": 300, "envpool": envpool},
                            ppo={"num_steps": 16, "cnn": "nature", "hidden_sizes": [], "carry_episodes": False},
                            train={"total_env_steps": 2 * 2 * 16 * 2, "eval_episodes": 1, "final_eval_episodes": 1})


def test_ppo_on_envpool_breakout_gives_the_same_parameters_twice(spark, tmp_path):
    first = ddrl.train(spark, _breakout(tmp_path, "first"), run_dir=tmp_path / "first", observers=[])
    second = ddrl.train(spark, _breakout(tmp_path, "second"), run_dir=tmp_path / "second", observers=[])
    assert first.iterations == 2 and first.env_steps == 2 * 2 * 2 * 16
    assert np.array_equal(final_params(first.run_dir), final_params(second.run_dir))


@pytest.mark.parametrize("envpool, expected", [
    ({"id": "Pong-v5"}, "env.envpool: EnvPool's Pong-v5 has spaces Box(0, 255, (4, 84, 84), uint8), Discrete(6); the gymnasium training env (CartPole-v1"),
    ({"id": "NoSuchGame-v0"}, "env.envpool: EnvPool could not make 'NoSuchGame-v0'"),
    ({"id": "CartPole-v1", "kwargs": {"no_such_option": 1}}, "env.envpool: EnvPool could not make 'CartPole-v1'"),
])
def test_envpool_envs_that_do_not_fit_are_refused_naming_the_field(envpool, expected):
    with pytest.raises(ddrl.ConfigError) as error:
        envs.describe(config_module.load(small_ppo_config("unused", env={"id": "CartPole-v1", "envpool": envpool}, ppo={"carry_episodes": False})).env)
    assert str(error.value).startswith(expected) and "\n" not in str(error.value)
