"""Running mean and variance of observations (or returns), merged across tasks.

Each task measures the moments of what it saw: count, mean and M2 (the sum of squared deviations).  The
driver folds them into the running moments with the parallel-variance formula of Chan et al. (1979), in
task order, so that the result is reproducible.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

EPSILON = 1e-8
CLIP = 10.0


@dataclasses.dataclass(frozen=True)
class Moments:
    count: float
    mean: np.ndarray
    m2: np.ndarray

    @staticmethod
    def empty(shape: tuple[int, ...]) -> "Moments":
        return Moments(0.0, np.zeros(shape), np.zeros(shape))

    @staticmethod
    def of(samples: np.ndarray) -> "Moments":
        """Moments of a batch (samples along the first axis)."""
        samples = np.asarray(samples, dtype=np.float64)
        if len(samples) == 0:
            return Moments.empty(samples.shape[1:])
        mean = samples.mean(axis=0)
        return Moments(float(len(samples)), mean, ((samples - mean) ** 2).sum(axis=0))

    def combine(self, other: "Moments") -> "Moments":
        count = self.count + other.count
        if count == 0:
            return self
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / count)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / count)
        return Moments(count, mean, m2)

    @property
    def variance(self) -> np.ndarray:
        return self.m2 / self.count if self.count > 0 else np.ones_like(self.mean)


def normalize(values: np.ndarray, mean: np.ndarray, variance: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
    """Standardize and clip to [-CLIP, CLIP], as gymnasium's NormalizeObservation wrapper does; with ``where``,
    only the features it marks (the others pass through)."""
    return standardize(values, mean, np.sqrt(variance + EPSILON), where).astype(np.float32)


def standardize(values: np.ndarray, mean: np.ndarray, std: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
    """``normalize`` in float64 with ``std = sqrt(variance + EPSILON)`` computed once, for a rollout's step loop."""
    # minimum/maximum rather than np.clip: the same values, at half the per-call cost
    standardized = np.minimum(np.maximum((values - mean) / std, -CLIP), CLIP)
    return standardized if where is None else np.where(where, standardized, values)


def moments_to_state(prefix: str, moments: Moments) -> dict[str, np.ndarray]:
    """``moments`` as an algorithm's state keeps them (checkpoints hold plain arrays): ``<prefix>_count`` etc."""
    return {
        f"{prefix}_count": np.array(moments.count),
        f"{prefix}_mean": np.asarray(moments.mean, dtype=np.float64),
        f"{prefix}_m2": np.asarray(moments.m2, dtype=np.float64),
    }


def moments_from_state(prefix: str, state: Mapping[str, np.ndarray]) -> Moments:
    return Moments(float(state[f"{prefix}_count"]), state[f"{prefix}_mean"], state[f"{prefix}_m2"])
