"""ddrl.atari's wrappers on ale-py's real Breakout: FIRE launches every ball, a lost life ends the training episode
while the game goes on, a seeded reset always starts a new game, and envs without FIRE or lives are refused."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from conftest import small_ppo_config

import ddrl
from ddrl import config as config_module
from ddrl import envs
from ddrl.atari import EpisodicLife, FireReset

NOOP = 0


def _breakout(*wrappers: type[gym.Wrapper]) -> gym.Env:
    import ale_py  # noqa: F401  (registers the ALE/ ids)

    env = gym.make("ALE/Breakout-v5", frameskip=1, repeat_action_probability=0.0)
    env = gym.wrappers.AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84)
    for wrapper in wrappers:
        env = wrapper(env)
    return env


def _lives(env: gym.Env) -> int:
    return env.unwrapped.ale.lives()


def test_fire_reset_launches_the_ball_at_the_start_and_after_every_lost_life():
    without, fired = _breakout(), _breakout(FireReset)
    without.reset(seed=1)
    for _ in range(300):  # nobody presses FIRE: the ball never comes, no life is lost
        without.step(NOOP)
    assert _lives(without) == 5
    fired.reset(seed=1)
    for steps in range(1, 1000):
        _, _, terminated, truncated, _ = fired.step(NOOP)
        if terminated or truncated:
            break
    assert terminated and _lives(fired) == 0 and steps < 300  # five balls, each missed in a few dozen steps
    without.close()
    fired.close()


def test_episodic_life_ends_the_episode_at_a_lost_life_and_goes_on_with_the_game():
    env = _breakout(FireReset, EpisodicLife)
    first, _ = env.reset(seed=2)
    lives_at_episode_ends = []
    for _ in range(6):  # NOOPs lose each life in turn: five episodes, one game, then a new game
        terminated = False
        while not terminated:
            _, _, terminated, truncated, _ = env.step(NOOP)
            assert not truncated
        lives_at_episode_ends.append(_lives(env))
        env.reset()
    assert lives_at_episode_ends == [4, 3, 2, 1, 0, 4]
    env.step(NOOP)
    env.step(NOOP)
    _, _, terminated, _, _ = env.step(NOOP)
    assert _lives(env) == 4 and not terminated
    again, _ = env.reset(seed=2)  # a seeded reset in the middle of a game: a new game, the same start as before
    assert _lives(env) == 5
    np.testing.assert_array_equal(first, again)
    env.close()


@pytest.mark.parametrize("wrapper, expected", [
    ("ddrl.atari:FireReset", "FireReset needs an ale-py env (ale_py:ALE/...); CartPoleEnv is not one"),
    ("ddrl.atari:EpisodicLife", "EpisodicLife needs an ale-py env"),
])
def test_atari_wrappers_on_other_envs_are_refused_naming_the_field(wrapper, expected):
    config = config_module.load(small_ppo_config("unused", env={"id": "CartPole-v1", "wrappers": [{"class": wrapper}]}))
    with pytest.raises(ddrl.ConfigError) as error:
        envs.describe(config.env)
    message = str(error.value)
    assert message.startswith(f"env.wrappers.0: {wrapper} could not wrap CartPole-v1") and expected in message and "\n" not in message


def test_the_breakout_config_evaluates_whole_games_without_standing_still():
    """An untrained greedy policy that never presses FIRE still plays its evaluation games to the end."""
    env = config_module.load("conf/breakout_ppo.yaml").env
    returns, lengths = envs.evaluate(lambda observations, infos: np.zeros(len(observations), dtype=np.int64), env, episodes=2, seed=5)
    assert np.all(lengths < 1000) and np.all(returns >= 0)
