"""CartPole variants that misbehave inside Spark tasks, for fault-injection tests (importable on executors)."""

from __future__ import annotations

import math

from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from pyspark import TaskContext


def _in_task(partitions: list[int]) -> TaskContext | None:
    context = TaskContext.get()
    return context if context is not None and context.partitionId() in partitions else None


class FlakyCartPole(CartPoleEnv):
    """Raises in ``step`` on the first attempt of the tasks in ``fail_partitions``; later attempts run clean.

    With ``every_attempt`` it fails on every attempt, so Spark gives up on the task.
    """

    def __init__(self, fail_partitions: list[int] = (), every_attempt: bool = False, render_mode: str | None = None):
        super().__init__(render_mode=render_mode)
        self.fail_partitions = list(fail_partitions)
        self.every_attempt = every_attempt

    def step(self, action):
        context = _in_task(self.fail_partitions)
        if context is not None and (self.every_attempt or context.attemptNumber() == 0):
            raise RuntimeError(f"injected failure in partition {context.partitionId()}")
        return super().step(action)


class NaNRewardCartPole(CartPoleEnv):
    """Returns a NaN reward in the tasks in ``nan_partitions`` (their results must never reach the policy)."""

    def __init__(self, nan_partitions: list[int] = (), render_mode: str | None = None):
        super().__init__(render_mode=render_mode)
        self.nan_partitions = list(nan_partitions)

    def step(self, action):
        observation, reward, terminated, truncated, info = super().step(action)
        if _in_task(self.nan_partitions) is not None:
            reward = math.nan
        return observation, reward, terminated, truncated, info
