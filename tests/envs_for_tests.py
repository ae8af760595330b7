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


class _OneStep(gym.Env):
    """One-step episodes: observe, act once, get the reward.  Subclasses define the spaces, the observation drawn
    from the env's seeded generator, and the reward of an action."""

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.state = self._draw()
        return self._observation(), self._info()

    def step(self, action):
        reward = self._reward(action)
        self.state = self._draw()
        return self._observation(), reward, True, False, self._info()

    def _info(self):
        return {}


class SideOfTheLightEnv(_OneStep):
    """A 10x10 RGB frame (channels last, uint8) with one lit pixel: action 0 if it is in the left half, 1 if in the
    right half.  A random policy scores 0.5; reading the image scores 1."""

    observation_space = gym.spaces.Box(0, 255, shape=(10, 10, 3), dtype=np.uint8)
    action_space = gym.spaces.Discrete(2)

    def _draw(self):
        return self.np_random.integers(0, 10, size=2)

    def _observation(self):
        frame = np.zeros((10, 10, 3), dtype=np.uint8)
        frame[self.state[0], self.state[1]] = 255
        return frame

    def _reward(self, action):
        return float(int(action) == int(self.state[1] >= 5))


class PickTwoEnv(_OneStep):
    """Dict observations (a Discrete 'target' and a Box 'offset') and MultiDiscrete([3, 2]) actions: one point for
    naming the target, one for the offset's sign.  A random policy scores 5/6."""

    observation_space = gym.spaces.Dict({"target": gym.spaces.Discrete(3), "offset": gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)})
    action_space = gym.spaces.MultiDiscrete([3, 2])

    def _draw(self):
        return int(self.np_random.integers(3)), self.np_random.uniform(-1.0, 1.0, size=1).astype(np.float32)

    def _observation(self):
        return {"target": self.state[0], "offset": self.state[1]}

    def _reward(self, action):
        return float(int(action[0]) == self.state[0]) + float(int(action[1]) == int(self.state[1][0] > 0))


class CopyBitsEnv(_OneStep):
    """Three bits in (MultiBinary observations), the same three bits out (MultiBinary actions): a point each."""

    observation_space = gym.spaces.MultiBinary(3)
    action_space = gym.spaces.MultiBinary(3)

    def _draw(self):
        return self.np_random.integers(0, 2, size=3).astype(np.int8)

    def _observation(self):
        return self.state.copy()

    def _reward(self, action):
        return float(np.sum(np.asarray(action) == self.state))


class MaskedPickEnv(_OneStep):
    """Discrete(4) actions of which a random two or three are valid each step (``info['action_mask']``); a valid
    action scores 1 and the highest valid one 2.  An invalid action raises: a run that completes never took one."""

    observation_space = gym.spaces.Box(0.0, 1.0, shape=(4,), dtype=np.float32)
    action_space = gym.spaces.Discrete(4)

    def _draw(self):
        mask = np.ones(4, dtype=np.int8)
        mask[self.np_random.choice(4, size=int(self.np_random.integers(1, 3)), replace=False)] = 0
        return mask

    def _observation(self):
        return self.state.astype(np.float32)

    def _info(self):
        return {"action_mask": self.state.copy()}

    def _reward(self, action):
        if not self.state[int(action)]:
            raise ValueError(f"invalid action {action} taken under mask {self.state}")
        return 2.0 if int(action) == int(np.flatnonzero(self.state)[-1]) else 1.0


class MaskedMultiPickEnv(_OneStep):
    """MultiDiscrete([3, 3]) actions with their mask as an observation part ('action_mask', 6 entries, one value
    valid in each dimension); an invalid value raises, so any completed episode scores 2."""

    observation_space = gym.spaces.Dict({"action_mask": gym.spaces.MultiBinary(6), "noise": gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)})
    action_space = gym.spaces.MultiDiscrete([3, 3])

    def _draw(self):
        mask = np.zeros(6, dtype=np.int8)
        for dimension in range(2):
            mask[3 * dimension + int(self.np_random.integers(3))] = 1
        return mask

    def _observation(self):
        return {"action_mask": self.state.copy(), "noise": self.np_random.uniform(-1.0, 1.0, size=2).astype(np.float32)}

    def _reward(self, action):
        for dimension, value in enumerate(np.asarray(action)):
            if not self.state[3 * dimension + int(value)]:
                raise ValueError(f"invalid action {action} taken under mask {self.state}")
        return 2.0


class ThirtyTwoBitSeedEnv(TinyDiscreteEnv):
    """Seeds NumPy's legacy RandomState, as older envs do (MinAtar among them): seeds of 2**32 and above raise."""

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            np.random.RandomState(seed)  # ValueError: Seed must be between 0 and 2**32 - 1
        return super().reset(seed=seed, options=options)


class TupleObservationEnv(_OneStep):
    """Tuple observations (a Box and a Discrete): action 1 when the Box's sum is positive or the Discrete is 2."""

    observation_space = gym.spaces.Tuple((gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32), gym.spaces.Discrete(3)))
    action_space = gym.spaces.Discrete(2)

    def _draw(self):
        return self.np_random.uniform(-1.0, 1.0, size=2).astype(np.float32), int(self.np_random.integers(3))

    def _observation(self):
        return self.state

    def _reward(self, action):
        return float(int(action) == int(self.state[0].sum() > 0 or self.state[1] == 2))


class UnseededStartCartPole(gym.Env):
    """CartPole whose starting state also depends on how many resets this process made before, not only on the
    seed: it does not replay (``ddrl.carry``)."""

    resets_in_process = 0

    def __init__(self) -> None:
        from gymnasium.envs.classic_control import CartPoleEnv

        self.env = CartPoleEnv()
        self.observation_space, self.action_space = self.env.observation_space, self.env.action_space

    def reset(self, *, seed=None, options=None):
        observation, info = self.env.reset(seed=seed, options=options)
        UnseededStartCartPole.resets_in_process += 1
        self.env.state = self.env.state + 1e-3 * (UnseededStartCartPole.resets_in_process % 7)
        return np.asarray(self.env.state, dtype=np.float32), info

    def step(self, action):
        return self.env.step(action)
