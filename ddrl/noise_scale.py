"""The gradient noise scale of McCandlish et al. 2018 ("An Empirical Model of Large-Batch Training", appendix A),
estimated from one iteration's tasks, and the outer step it calls for.

With B samples per step, the expected squared norm of a batch gradient is |G|^2 + tr(Sigma) / B, for the true
gradient G and the per-sample covariance Sigma.  Measured at two batch sizes B_small < B_big, that gives

    |G|^2     ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

and the simple noise scale B_noise = tr(Sigma) / |G|^2: training speeds up with the batch while it is below
B_noise, and barely beyond.  Here N tasks of b samples each play both sizes: one task's change is G_small
(B_small = b), their mean change G_big (B_big = N b).  Learning rate and local steps scale both alike and cancel
in the ratio.  One iteration's estimates are noisy, so each is smoothed by an exponential moving average before
the ratio, as in the paper.  The state keeps the averages, so a resumed run goes on with them.
"""

from __future__ import annotations

import math

import numpy as np

from ddrl.checkpoint import State

DECAY = 0.9
"""Of the moving averages: about the last ten iterations count."""

PREFIX = "noise_scale_"
STATE_KEYS = tuple(PREFIX + name for name in ("gradient_sq", "trace", "weight"))


def initial_state() -> State:
    """The moving averages before any iteration (the state keys an algorithm adds to its own)."""
    return {key: np.array(0.0) for key in STATE_KEYS}


def estimate(task_sq_norms: np.ndarray, task_samples: np.ndarray, mean_change: np.ndarray) -> tuple[float, float] | None:
    """Unbiased estimates of (|G|^2, tr(Sigma)) from the tasks' squared change norms and the mean change; None from
    one task, where there is nothing to compare."""
    if len(task_samples) < 2:
        return None
    b_small, b_big = float(np.mean(task_samples)), float(np.sum(task_samples))
    small = float(np.dot(task_samples, task_sq_norms) / b_big)
    big = float(np.dot(mean_change, mean_change))
    gradient_sq = (b_big * big - b_small * small) / (b_big - b_small)
    trace = (small - big) / (1.0 / b_small - 1.0 / b_big)
    return gradient_sq, trace


def update(state: State, task_sq_norms: np.ndarray, task_samples: np.ndarray, mean_change: np.ndarray) -> tuple[State, float]:
    """The state with this iteration's estimates folded into the moving averages, and B_noise in samples (NaN
    before any estimate; inf while the smoothed |G|^2 is not positive, all noise)."""
    measured = estimate(task_sq_norms, task_samples, mean_change)
    state = dict(state)
    if measured is not None:
        for key, value in zip(STATE_KEYS[:2], measured):
            state[key] = np.array(DECAY * float(state[key]) + (1 - DECAY) * value)
        state["noise_scale_weight"] = np.array(DECAY * float(state["noise_scale_weight"]) + (1 - DECAY))
    return state, noise_scale(state)


def noise_scale(state: State) -> float:
    """B_noise = tr(Sigma) / |G|^2 from the bias-corrected moving averages in ``state``."""
    weight = float(state["noise_scale_weight"])
    if weight == 0.0:
        return math.nan
    gradient_sq, trace = float(state["noise_scale_gradient_sq"]) / weight, float(state["noise_scale_trace"]) / weight
    if gradient_sq <= 0.0:
        return math.inf
    return max(trace, 0.0) / gradient_sq


def step_scale(b_noise: float, samples_per_task: float, num_tasks: int) -> float:
    """How much further than one task's step the mean of N tasks' changes may go, by the paper's optimal learning
    rate eps(B) = eps_max / (1 + B_noise / B): eps(N b) / eps(b), from 1 (no noise: the tasks agree) towards N
    (mostly noise).  1 without a usable estimate: none yet, or a smoothed |G|^2 that is not positive, where there
    is no direction worth a longer step."""
    if not math.isfinite(b_noise):
        return 1.0
    per_task = b_noise / samples_per_task
    return (1.0 + per_task) / (1.0 + per_task / num_tasks)
