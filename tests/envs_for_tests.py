"""Tiny gymnasium environments for tests, addressed as 'envs_for_tests:ClassName' (tests/ is on the path).

Each one exists to exercise one branch of ``ddrl.envs.describe``; the healthy ones also step, so they can
be used in Spark tests.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class _Base(gym.Env):
    """A one-step episode: any action ends it with reward 1."""

    observation_space = gym.spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._observation(), {}

    def step(self, action):
        return self._observation(), 1.0, True, False, {}

    def _observation(self):
        space = self.observation_space
        if isinstance(space, gym.spaces.Box):  # drawn from the env's seeded generator, so runs reproduce
            return self.np_random.uniform(space.low, space.high).astype(space.dtype)
        return space.sample()


class TinyDiscreteEnv(_Base):
    """Healthy: 3-D Box observations, Discrete(2) actions.  ``size`` is the only keyword it accepts."""

    def __init__(self, size: int = 3) -> None:
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(size,), dtype=np.float32)


class TinyBoxEnv(_Base):
    """Healthy: 3-D Box observations, 2-D bounded Box actions."""

    action_space = gym.spaces.Box(-2.0, 2.0, shape=(2,), dtype=np.float32)


class DictObservationEnv(_Base):
    observation_space = gym.spaces.Dict(
        {"position": gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32), "flag": gym.spaces.Discrete(2)}
    )


class ImageObservationEnv(_Base):
    observation_space = gym.spaces.Box(0, 255, shape=(8, 8, 3), dtype=np.uint8)


class MultiDiscreteActionEnv(_Base):
    action_space = gym.spaces.MultiDiscrete([3, 2])


class TextObservationEnv(_Base):
    observation_space = gym.spaces.Text(8)


class GraphObservationEnv(_Base):
    observation_space = gym.spaces.Graph(node_space=gym.spaces.Box(-1.0, 1.0, shape=(2,)), edge_space=None)


class TextActionEnv(_Base):
    action_space = gym.spaces.Text(4)


class MaskedBoxActionEnv(_Base):
    """Box actions with an ``action_mask`` observation part: masks apply to categorical actions only."""

    observation_space = gym.spaces.Dict({"x": gym.spaces.Box(-1.0, 1.0, shape=(2,)), "action_mask": gym.spaces.MultiBinary(2)})
    action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)


class ShiftedDiscreteActionEnv(_Base):
    action_space = gym.spaces.Discrete(3, start=1)


class UnboundedBoxActionEnv(_Base):
    action_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)


class MatrixBoxActionEnv(_Base):
    action_space = gym.spaces.Box(-1.0, 1.0, shape=(2, 2), dtype=np.float32)


class MultiLineErrorEnv(_Base):
    """Its constructor fails with a multi-line message, as MuJoCo's XML errors do."""

    def __init__(self, broken: bool = True) -> None:
        if broken:
            raise ValueError("XML Error: unrecognized element\nElement 'bogus', line 1\n")


class NotAnEnv:
    """A class that is not a ``gymnasium.Env``."""


def not_a_class():
    return TinyDiscreteEnv()


class FixedLengthEnv(gym.Env):
    """Healthy: every episode lasts ``length`` steps with reward 1 a step, whatever the actions."""

    observation_space = gym.spaces.Box(0.0, 1.0, shape=(2,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, length: int = 5) -> None:
        self.length = length
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._observation(), {}

    def step(self, action):
        self.t += 1
        return self._observation(), 1.0, self.t >= self.length, False, {}

    def _observation(self):
        return np.array([self.t / self.length, self.np_random.uniform()], dtype=np.float32)
