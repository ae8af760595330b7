"""What a task returns and how task results merge, exactly and in any order.

Spark's ``treeReduce`` folds results through ``reduceByKey`` levels whose arrival order varies from run to
run, and floating-point addition is not associative: ``(a + b) + c`` and ``a + (b + c)`` can differ in the
last bit.  So weighted sums travel as integers, whose addition is associative and commutative; the float
result is computed once, on the driver, from the exact total.  Two formats:

* ``TaskOutput.weighted``: any finite float64, as three int64 limbs (24 bytes a value), exact to 2**-80;
* ``TaskOutput.fixed``: values of a known range, such as parameter changes, as one int64 each (8 bytes) at a
  scale 2**-k chosen for the range and the number of tasks (``FixedPoint``).

Small per-task records (losses, episode returns, normalizer moments) travel keyed by task index and are read
in task order.  The tasks of a synchronized run (``spark.sync: gradients``) hold the same parameters bit for bit:
the task of rank 0 alone returns them (``TaskOutput.replicated``), every task their digest, which the driver
checks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import time
from typing import Any, Mapping

import numpy as np

_LIMB_BITS = 40
_LIMB_SCALE = float(2**_LIMB_BITS)
_MAX_MAGNITUDE = float(2**62)
BYTES_PER_WEIGHTED_VALUE = 3 * 8
"""A weighted value travels as three int64 limbs (``to_limbs``)."""
BYTES_PER_FIXED_VALUE = 8
"""A fixed-point value travels as one int64 (``FixedPoint``)."""
_INT64_MAX = 2**63 - 1


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


@dataclasses.dataclass(frozen=True)
class FixedPoint:
    """int64 fixed-point numbers with scale ``2**-fraction_bits``, for sums of at most ``terms`` values.

    Integer addition modulo 2**64 is associative and commutative, so partial sums may even wrap around, in any
    order, and the total is still exact whenever the true total lies in int64's range.  Every term within
    +-``limit`` guarantees that; a term outside it is refused (``encode`` returns why).  Rounding a value to the
    scale happens once, in the task, the same way in every process.
    """

    fraction_bits: int
    terms: int

    @staticmethod
    def for_sums(terms: int, magnitude: float) -> "FixedPoint":
        """The finest scale at which ``terms`` values of magnitude up to ``magnitude`` sum within int64."""
        return FixedPoint(math.floor(math.log2(_INT64_MAX / terms / magnitude)), terms)

    @property
    def limit(self) -> float:
        """The largest magnitude one term may have (in value units)."""
        return math.ldexp(_INT64_MAX // self.terms, -self.fraction_bits)

    def encode(self, values: np.ndarray) -> np.ndarray | str:
        """The int64 fixed-point form of float ``values``, or the reason they cannot be encoded."""
        scaled = np.ldexp(np.asarray(values, dtype=np.float64), self.fraction_bits)
        largest = float(np.max(np.abs(scaled), initial=0.0))
        if not math.isfinite(largest):
            return "non-finite values"
        if largest > _INT64_MAX // self.terms:
            return f"a value of magnitude {math.ldexp(largest, -self.fraction_bits):.3g} outside the safe range +-{self.limit:.3g}"
        return np.rint(scaled).astype(np.int64)

    def decode(self, total: np.ndarray) -> np.ndarray:
        """The float64 nearest the exact total (one rounding, the int64-to-float conversion)."""
        return np.ldexp(total.astype(np.float64), -self.fraction_bits)


@dataclasses.dataclass
class TaskOutput:
    """What an algorithm's task returns to the Spark loop.

    ``weighted`` arrays are averaged over tasks with ``weight`` (for example, samples collected), exactly;
    ``fixed`` arrays too, at the scale ``fixed_point``, one int64 a value (a task whose weighted values fall
    outside its range is rejected); ``records`` are small per-task values (scalars or short arrays) handed to
    the driver in task order, together with the env steps the task took and the episodes it finished.
    """

    weight: int
    weighted: dict[str, np.ndarray]
    records: dict[str, Any]
    env_steps: int
    episode_returns: np.ndarray
    episode_lengths: np.ndarray
    fixed: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    fixed_point: FixedPoint | None = None
    replicated: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    """Arrays every task of a synchronized run holds bit for bit: the task of rank 0 returns them, the others none."""
    replicated_digest: str | None = None
    """Every synchronized task's ``digest`` of those arrays."""


def digest(arrays: Mapping[str, np.ndarray]) -> str:
    """A hash of named arrays' names, dtypes, shapes and bytes."""
    hashed = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        hashed.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        hashed.update(array.tobytes())
    return hashed.hexdigest()[:32]


@dataclasses.dataclass
class Partial:
    """A merge of any subset of one iteration's task results; merging is exact and order-independent."""

    weight: int
    sums: dict[str, np.ndarray]
    records: dict[int, dict[str, Any]]
    rejected: dict[int, str]
    merge_seconds: float = 0.0
    fixed_sums: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    fixed_point: FixedPoint | None = None
    evaluations: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Task index to what it measured of the broadcast policy (kept even when its training result is rejected)."""
    replicated: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    digests: dict[int, str] = dataclasses.field(default_factory=dict)

    @staticmethod
    def of_task(task_index: int, output: TaskOutput, evaluation: dict[str, Any] | None = None) -> "Partial":
        """Wrap one task's output, or reject it (with the reason) if any value is NaN or infinite, or a fixed-point
        value lies outside its safe range.  ``evaluation`` is the task's share of the policy's evaluation."""
        evaluations = {task_index: evaluation} if evaluation is not None else {}
        problem = _non_finite(output)
        if problem is not None:
            return Partial(0, {}, {}, {task_index: problem}, evaluations=evaluations)
        if output.fixed and output.fixed_point is None:
            raise ValueError("TaskOutput.fixed needs a fixed_point")
        fixed_sums = {}
        for name, value in output.fixed.items():
            encoded = output.fixed_point.encode(np.asarray(value, dtype=np.float64) * output.weight)
            if isinstance(encoded, str):
                return Partial(0, {}, {}, {task_index: f"{encoded} in {name!r} (times its weight {output.weight})"}, evaluations=evaluations)
            fixed_sums[name] = encoded
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
        digests = {task_index: output.replicated_digest} if output.replicated_digest is not None else {}
        return Partial(output.weight, sums, {task_index: records}, {}, 0.0, fixed_sums, output.fixed_point, evaluations,
                       dict(output.replicated), digests)

    def merge(self, other: "Partial") -> "Partial":
        started = time.perf_counter()
        merged = Partial(
            self.weight + other.weight,
            _add(self.sums, other.sums),
            {**self.records, **other.records},
            {**self.rejected, **other.rejected},
            self.merge_seconds + other.merge_seconds,
            _add(self.fixed_sums, other.fixed_sums),
            self.fixed_point or other.fixed_point,
            {**self.evaluations, **other.evaluations},
            self.replicated or other.replicated,
            {**self.digests, **other.digests},
        )
        merged.merge_seconds += time.perf_counter() - started
        return merged

    def finish(self) -> "MergedResult":
        means = {name: from_limbs(limbs) / self.weight for name, limbs in self.sums.items()}
        if self.fixed_point is not None:
            means.update({name: self.fixed_point.decode(total) / self.weight for name, total in self.fixed_sums.items()})
        tasks = [self.records[index] for index in sorted(self.records)]
        evaluations = [self.evaluations[index] for index in sorted(self.evaluations)]
        return MergedResult(self.weight, means, tasks, dict(sorted(self.rejected.items())), evaluations, self.replicated, dict(sorted(self.digests.items())))


def _add(left: dict[str, np.ndarray], right: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Integer sums by name; int64 arrays wrap around silently, which keeps the sum exact modulo 2**64."""
    sums = dict(left)
    for name, value in right.items():
        sums[name] = sums[name] + value if name in sums else value
    return sums


def merge(left: Partial, right: Partial) -> Partial:
    """Two partial results of one run."""
    return left.merge(right)


def merge_by_job(left: dict[int, Partial], right: dict[int, Partial]) -> dict[int, Partial]:
    """The reduce function handed to ``RDD.treeReduce``: partial results keyed by the job (run) they belong to,
    where one Spark job carries the tasks of several runs; each run's results merge only with their own."""
    merged = dict(left)
    for job, partial in right.items():
        merged[job] = merged[job].merge(partial) if job in merged else partial
    return merged


def encode_partial(partial: Partial) -> bytes:
    """``partial`` as bytes that decode without running code (a NumPy .npz, loaded with ``allow_pickle=False``):
    how results travel where they are data rather than pickles (Spark Connect's Arrow rows).  Exact: the
    integer sums and every record come back bit for bit."""
    arrays: dict[str, np.ndarray] = {"weight": np.int64(partial.weight), "merge_seconds": np.float64(partial.merge_seconds)}
    if partial.fixed_point is not None:
        arrays["fixed_point"] = np.array([partial.fixed_point.fraction_bits, partial.fixed_point.terms], dtype=np.int64)
    for field in ("sums", "fixed_sums", "replicated"):
        arrays.update({f"{field}/{name}": value for name, value in getattr(partial, field).items()})
    arrays.update({f"digests/{index}": np.asarray(value) for index, value in partial.digests.items()})
    for field in ("records", "evaluations"):
        for index, values in getattr(partial, field).items():
            arrays.update({f"{field}/{index}/{name}": np.asarray(value) for name, value in values.items()})
    arrays.update({f"rejected/{index}": np.asarray(reason) for index, reason in partial.rejected.items()})
    for key, array in arrays.items():
        if np.asarray(array).dtype.kind not in "biufcU":
            raise TypeError(f"{key}: only numbers, strings and their arrays travel as data, not {np.asarray(array).dtype}")
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def decode_partial(data: bytes) -> Partial:
    """The ``Partial`` that ``encode_partial`` encoded; 0-d arrays come back as Python scalars."""
    partial = Partial(0, {}, {}, {})
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        for key in archive.files:
            value = archive[key]
            field, _, rest = key.partition("/")
            if field in ("weight", "merge_seconds"):
                setattr(partial, field, value.item())
            elif field == "fixed_point":
                partial.fixed_point = FixedPoint(*(int(number) for number in value))
            elif field in ("sums", "fixed_sums", "replicated"):
                getattr(partial, field)[rest] = value
            elif field in ("rejected", "digests"):
                getattr(partial, field)[int(rest)] = str(value.item())
            else:
                index, _, name = rest.partition("/")
                getattr(partial, field).setdefault(int(index), {})[name] = value.item() if value.ndim == 0 else value
    return partial


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
    evaluations: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """The tasks' shares of the broadcast policy's evaluation, in task order (so in episode order)."""
    replicated: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    """A synchronized run's state, as the task of rank 0 returned it (empty where that task's result was rejected)."""
    digests: Mapping[int, str] = dataclasses.field(default_factory=dict)
    """Each healthy synchronized task's digest of the state it holds."""

    def disagreeing(self) -> list[int]:
        """The tasks whose state differs from the one ``replicated`` holds (every task, where it is missing)."""
        expected = digest(self.replicated) if self.replicated else None
        return [index for index, found in self.digests.items() if found != expected]


def _non_finite(output: TaskOutput) -> str | None:
    named = [*output.weighted.items(), *output.fixed.items(), *output.replicated.items(), *output.records.items(),
             ("episode_returns", output.episode_returns)]
    for name, value in named:
        array = np.asarray(value)
        if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
            return f"non-finite values in {name!r}"
    return None
