"""Envs for the ``simulated_cluster`` benchmark part, addressed as 'jobs.benchmark_parts.slow_envs:SlowPendulum'.

Each step waits without using a core, standing in for a simulator that takes wall time elsewhere (a remote
service, a heavyweight physics engine in another process): on a 2-core machine, tasks that mostly wait behave
like tasks on a cluster with a core each.
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym


class SlowPendulum(gym.Wrapper):
    """Pendulum-v1 (fixed 200-step episodes, so every task's work is the same) whose steps sleep ``step_seconds``."""

    def __init__(self, step_seconds: float = 0.004, render_mode: str | None = None) -> None:
        super().__init__(gym.make("Pendulum-v1", render_mode=render_mode))
        self.step_seconds = step_seconds

    def step(self, action: Any) -> Any:
        time.sleep(self.step_seconds)
        return self.env.step(action)
