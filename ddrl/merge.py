"""What a task returns and how task results merge, exactly and in any order.

Spark's ``treeReduce`` folds results through ``reduceByKey`` levels whose arrival order varies from run to
run, and floating-point addition is not associative: ``(a + b) + c`` and ``a + (b + c)`` can differ in the
last bit.  So weighted sums are kept as exact fixed-point integers ("limbs"), whose addition is associative
and commutative; the float result is computed once, on the driver, from the exact total.  Small per-task
records (losses, episode returns, normalizer moments) travel keyed by task index and are read in task order.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping

import numpy as np

_LIMB_BITS = 40
_LIMB_SCALE = float(2**_LIMB_BITS)
_MAX_MAGNITUDE = float(2**62)
BYTES_PER_WEIGHTED_VALUE = 3 * 8
"""A weighted value travels as three int64 limbs (``to_limbs``)."""


def to_limbs(values: np.ndarray) -> np.ndarray:
    """Split float values into three int64 limbs: whole part, then two 40-bit fraction limbs.

    The value is ``limbs[0] + limbs[1] * 2**-40 + limbs[2] * 2**-80``, exact for every float64 whose bits lie
    above 2**-80; smaller bits are rounded away, the same way in every process.  Sums of limbs are integer
    sums, exact for up to 2**22 terms, so they do not depend on the order of addition.
    """
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)) or np.any(np.abs(values) >= _MAX_MAGNITUDE):
        raise ValueError("values must be finite and smaller than 2**62 in magnitude")
    # Work on magnitudes: |v| - floor(|v|) is exact in float64, v - floor(v) is not for negative v.
    sign = np.where(values < 0, -1, 1).astype(np.int64)
    magnitude = np.abs(values)
    whole = np.floor(magnitude)
    high_scaled = (magnitude - whole) * _LIMB_SCALE
    high = np.floor(high_scaled)
    low = np.rint((high_scaled - high) * _LIMB_SCALE)
    return np.stack([whole, high, low]).astype(np.int64) * sign


def from_limbs(limbs: np.ndarray) -> np.ndarray:
    """The float64 nearest (up to one rounding per limb) to the exact value the limbs hold.

    Carries are normalised first, so equal exact totals give equal limbs and therefore equal floats.  A
    negative total is converted through its magnitude: ``-1 + 0.99999...`` would cancel the low bits.
    """
    negative = _carry(limbs)[0] < 0
    whole, high, low = _carry(np.where(negative, -limbs, limbs))
    magnitude = whole.astype(np.float64) + (high.astype(np.float64) + low.astype(np.float64) / _LIMB_SCALE) / _LIMB_SCALE
    return np.where(negative, -magnitude, magnitude)


def _carry(limbs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Move carries up so that both fraction limbs lie in [0, 2**40); the exact value is unchanged."""
    whole, high, low = (limb.copy() for limb in limbs)
    high += low >> _LIMB_BITS
    low &= (1 << _LIMB_BITS) - 1
    whole += high >> _LIMB_BITS
    high &= (1 << _LIMB_BITS) - 1
    return whole, high, low


@dataclasses.dataclass
class TaskOutput:
    """What an algorithm's task returns to the Spark loop.

    ``weighted`` arrays are averaged over tasks with ``weight`` (for example, samples collected);
    ``records`` are small per-task values (scalars or short arrays) handed to the driver in task order,
    together with the env steps the task took and the episodes it finished.
    """

    weight: int
    weighted: dict[str, np.ndarray]
    records: dict[str, Any]
    env_steps: int
    episode_returns: np.ndarray
    episode_lengths: np.ndarray


@dataclasses.dataclass
class Partial:
    """A merge of any subset of one iteration's task results; merging is exact and order-independent."""

    weight: int
    sums: dict[str, np.ndarray]
    records: dict[int, dict[str, Any]]
    rejected: dict[int, str]
    merge_seconds: float = 0.0

    @staticmethod
    def of_task(task_index: int, output: TaskOutput) -> "Partial":
        """Wrap one task's output, or reject it (with the reason) if any value is NaN or infinite."""
        problem = _non_finite(output)
        if problem is not None:
            return Partial(0, {}, {}, {task_index: problem})
        sums = {
            name: to_limbs(np.asarray(value, dtype=np.float64) * output.weight)
            for name, value in output.weighted.items()
        }
        records = {
            **output.records,
            "env_steps": output.env_steps,
            "episode_returns": np.asarray(output.episode_returns, dtype=np.float64),
            "episode_lengths": np.asarray(output.episode_lengths, dtype=np.int64),
        }
        return Partial(output.weight, sums, {task_index: records}, {})

    def merge(self, other: "Partial") -> "Partial":
        started = time.perf_counter()
        sums = dict(self.sums)
        for name, limbs in other.sums.items():
            sums[name] = sums[name] + limbs if name in sums else limbs
        merged = Partial(
            self.weight + other.weight,
            sums,
            {**self.records, **other.records},
            {**self.rejected, **other.rejected},
            self.merge_seconds + other.merge_seconds,
        )
        merged.merge_seconds += time.perf_counter() - started
        return merged

    def finish(self) -> "MergedResult":
        means = {name: from_limbs(limbs) / self.weight for name, limbs in self.sums.items()}
        tasks = [self.records[index] for index in sorted(self.records)]
        return MergedResult(self.weight, means, tasks, dict(sorted(self.rejected.items())))


def merge(left: Partial, right: Partial) -> Partial:
    """The reduce function handed to ``RDD.treeReduce``."""
    return left.merge(right)


@dataclasses.dataclass(frozen=True)
class MergedResult:
    """One iteration's merged task results, as the driver's ``apply`` sees them."""

    weight: int
    means: Mapping[str, np.ndarray]
    """Weighted averages (float64) of every ``TaskOutput.weighted`` array."""
    tasks: list[dict[str, Any]]
    """Every healthy task's ``records`` (with its env_steps, episode_returns, episode_lengths), in task order."""
    rejected: Mapping[int, str]
    """Task index to the reason its result was rejected."""


def _non_finite(output: TaskOutput) -> str | None:
    named = [*output.weighted.items(), *output.records.items(), ("episode_returns", output.episode_returns)]
    for name, value in named:
        array = np.asarray(value)
        if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
            return f"non-finite values in {name!r}"
    return None
