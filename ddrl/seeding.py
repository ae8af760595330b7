"""Seeds derived from (run seed, iteration, task): the only source of randomness in a run.

A task's randomness must not depend on which executor runs it, on its attempt number, or on what the Python
worker ran before, so every task reseeds everything from its derived seed before it starts.
"""

from __future__ import annotations

import enum
import random

import numpy as np


class Stream(enum.IntEnum):
    """Independent seed streams, so that evaluation never shares noise with training."""

    TASK = 0
    EVALUATION = 1
    INITIALIZATION = 2
    PERTURBATION = 3
    FINAL_EVALUATION = 4
    SWEEP_SAMPLING = 5
    POPULATION_BASED_TRAINING = 6
    EPISODE = 7


def derive_seed(run_seed: int, iteration: int, index: int, stream: Stream = Stream.TASK) -> int:
    """A 62-bit seed, a pure function of its arguments (``numpy.random.SeedSequence`` hashing)."""
    high, low = np.random.SeedSequence([run_seed, iteration, index, int(stream)]).generate_state(2, np.uint32)
    return (int(high) << 30) ^ int(low)


def env_seed(seed: int) -> int:
    """``seed`` as every env takes it: below 2**31, so that envs that seed NumPy's RandomState (32 bits, as MinAtar
    does) accept it, and so do the seeds a vector env gives its sub-envs (seed + index)."""
    return seed % 2**31


def seed_everything(seed: int) -> None:
    """Reseed Python's, NumPy's and torch's global generators (libraries may draw from them)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def task_slice(task_index: int, num_tasks: int, num_items: int) -> slice:
    """The contiguous share of ``num_items`` (ES directions, evaluation episodes) that task ``task_index`` takes;
    shares differ in size by at most 1."""
    return slice(task_index * num_items // num_tasks, (task_index + 1) * num_items // num_tasks)
