"""The interface between the Spark loop (``ddrl.trainer``) and an algorithm (``ddrl.algorithms.ppo``).

The loop knows nothing of the algorithm's math, the algorithm nothing of Spark.  Per iteration the loop:

1. asks ``task_payload(state, iteration)`` for what every task needs, and broadcasts it;
2. runs ``run_task(payload, task_index, seed, collective)`` in each Spark task, the seed derived from (run seed,
   iteration, task index); on evaluation iterations the tasks also evaluate ``payload_policy(payload)``, each
   a share of the evaluation episodes.  ``collective`` (``ddrl.collective``) joins the task to the run's other
   tasks under ``spark.sync: gradients``, and is a world of one otherwise;
3. merges the tasks' ``TaskOutput``s exactly (``ddrl.merge``) with ``RDD.treeReduce``;
4. calls ``apply(state, merged, iteration)`` on the driver for the next state and the iteration's metrics.

The state is a flat dict of NumPy arrays, so that checkpoints hold all of it without pickling.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from ddrl.checkpoint import State
from ddrl.collective import ALONE, Collective
from ddrl.merge import MergedResult, TaskOutput
from ddrl.normalizer import moments_from_state
from ddrl.policy import Policy


class Algorithm(Protocol):
    def initial_state(self) -> State:
        """The state before the first iteration, a pure function of the config (and its seed)."""

    def task_payload(self, state: State, iteration: int) -> dict[str, Any]:
        """What every task of ``iteration`` needs from the driver (broadcast once per iteration)."""

    def run_task(self, payload: dict[str, Any], task_index: int, seed: int, collective: Collective = ALONE) -> TaskOutput:
        """One task's work; runs on an executor and must be a pure function of its arguments (and of the other
        tasks' in ``collective``)."""

    def apply(self, state: State, result: MergedResult, iteration: int) -> tuple[State, dict[str, float]]:
        """The next state from the merged task results, and the iteration's algorithm metrics."""

    def policy(self, state: State) -> Policy:
        """The deterministic policy the state holds, for evaluation and saving."""

    def payload_policy(self, payload: dict[str, Any]) -> Policy:
        """The policy of the state a payload was made from (``policy(state)``), for evaluation inside tasks."""

    def task_carry_bytes(self) -> int:
        """The most bytes of env state one task carries to the next job (``ddrl.carry``): every task's carry comes
        back to the driver and goes out with the next payload.  0 for an algorithm that carries none."""

    def task_result_bytes(self) -> int:
        """Bytes one task's ``TaskOutput.weighted`` and ``fixed`` arrays take: the loop refuses, before the first
        job, a model whose results the driver could not collect."""


class PolicyOfParameters:
    """``policy`` and ``payload_policy`` for an algorithm whose state holds theta as ``params`` with the observation
    moments under ``obs_``, and whose payload ships theta with their mean and variance; it builds the policy in
    ``_policy(params, obs_mean, obs_variance, obs_count)``."""

    def policy(self, state: State) -> Policy:
        obs = moments_from_state("obs", state)
        return self._policy(state["params"], obs.mean, obs.variance, obs.count)

    def payload_policy(self, payload: dict[str, Any]) -> Policy:
        return self._policy(payload["params"], payload["obs_mean"], payload["obs_variance"], None)

    def _policy(self, params: np.ndarray, obs_mean: np.ndarray, obs_variance: np.ndarray, obs_count: float | None) -> Policy:
        raise NotImplementedError
