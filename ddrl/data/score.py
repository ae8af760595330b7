"""Trained policies that score tables: ``ddrl.score(df, policy, observation=..., output=...)``.

One ``mapInArrow`` over the DataFrame, on classic and Spark Connect sessions alike: each Arrow batch's
observation column(s) become a batch of observations of the policy's space, and the policy's greedy action
(``Policy.act``), and on request its action probabilities and V(s), join the input columns.  The policy travels
in the function's closure as its safetensors bytes and JSON spec (no pickled torch module), once per job, and
each Python worker builds it once per policy (``WorkerCache``, keyed by the bytes' digest).

Where the observation comes from (``observation=``):

* a column name: an array column for a Box (nested one level per axis, ``array<array<array<int>>>`` for an
  (H, W, C) image, or one flat array reshaped to the space's shape), an integer column for a Discrete space, a
  struct column with a field per key for a Dict space (nested structs for nested Dicts);
* a mapping from each key of a Dict space (dotted for nested ones, "0", "1" for a Tuple's parts) to its column;
* a list of numeric columns that together form a flat Box observation.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from safetensors.numpy import load, save

from ddrl.config import ConfigError
from ddrl.policy import Policy, load_policy, policy_from_tensors
from ddrl.spaces import ObservationPart
from ddrl.worker_cache import WorkerCache

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

DEFAULT_BATCH_ROWS = 1024
"""Rows per policy call: bounds a task's memory for image observations (1,024 84x84x4 frames as float32 take
115 MB), while an MLP's per-call cost is spread over enough rows."""

_POLICIES = WorkerCache(size=4)
"""The policies this Python worker has built, by digest: a reused worker builds a job's policy once."""



def score(
    df: "DataFrame",
    policy: Policy | str | Path,
    observation: str | Mapping[str, str] | Sequence[str] = "observation",
    output: str = "action",
    probabilities: str | None = None,
    value: str | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> "DataFrame":
    """``df`` with the policy's greedy action in column ``output`` (long for Discrete actions, array<long> for
    MultiDiscrete, array<tinyint> for MultiBinary, the flattened array<float> for Box), and where named, the action
    probabilities (array<double>, as ``Policy.action_probabilities``) and V(s) (double, ``Policy.value``).

    ``policy``: a ``ddrl.Policy``, or a run or policy directory for ``ddrl.load_policy``.  ``observation``: where
    the observations are (the module's docstring).  Lazy, as any DataFrame: nothing runs until an action.  Columns
    that are missing or of the wrong type raise ``ddrl.ConfigError`` here, naming the column; an observation of
    the wrong length fails its task with a line naming the column and the shape expected.
    """
    from pyspark.sql.pandas.types import to_arrow_type
    from pyspark.sql.types import ArrayType, ByteType, DoubleType, FloatType, LongType, StructField, StructType

    from ddrl.engines import engine_for
    from ddrl.engines.connect import PAYLOAD_LIMIT_BYTES, ConnectEngine
    from ddrl.engines.guard import guarded

    if not isinstance(policy, Policy):
        policy = load_policy(policy)
    if batch_rows < 1:
        raise ConfigError(f"score: batch_rows must be at least 1, not {batch_rows}")
    names = [name for name in (output, probabilities, value) if name is not None]
    clashes = sorted({name for name in names if name in df.columns or names.count(name) > 1})
    if clashes:
        raise ConfigError(f"score: output column(s) {', '.join(clashes)} must be new and distinct (the DataFrame's columns: {', '.join(df.columns)})")
    action_types = {"discrete": LongType(), "multi_discrete": ArrayType(LongType()), "multi_binary": ArrayType(ByteType()), "box": ArrayType(FloatType())}
    new_columns = {output: action_types[policy.env.action.kind]}
    if probabilities is not None:
        if policy.env.action.kind == "box":
            raise ConfigError(f"score: probabilities={probabilities!r}: {policy.env.id}'s Box actions have no probabilities "
                              "(a Box policy has a Gaussian's mean, the action, and its log std, Policy.log_std)")
        new_columns[probabilities] = ArrayType(DoubleType())
    if value is not None:
        if policy.critic is None:
            raise ConfigError(f"score: value={value!r}: this policy has no critic (ES policies, and PPO policies saved before ddrl kept it)")
        new_columns[value] = DoubleType()
    sources = _sources(df.schema, policy, observation)

    weights, spec = save(policy.tensors()), json.dumps(policy.spec())
    payload = {
        "weights": weights, "spec": spec, "digest": hashlib.sha256(weights + spec.encode()).hexdigest(), "sources": sources,
        "outputs": {name: to_arrow_type(data_type) for name, data_type in new_columns.items()},  # the Arrow types Spark reads
        "batch_rows": batch_rows, "output": output, "probabilities": probabilities, "value": value,
    }
    engine = engine_for(df.sparkSession)
    if isinstance(engine, ConnectEngine) and len(weights) > PAYLOAD_LIMIT_BYTES:
        raise ConfigError(f"score: the policy's {len(weights) / 2**20:.0f} MiB are over the {PAYLOAD_LIMIT_BYTES / 2**20:.0f} MiB "
                          "a Spark Connect job carries in its plan: use a classic session")
    engine.ship_package()  # as ddrl.train does: executors that cannot import ddrl get it from the session
    build = guarded(_scorer)  # an executor without ddrl's requirements fails with one line naming the module

    def score_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        # the guard gathers an iterator's items: it only builds the scoring function, which then streams
        return build(payload)(batches)

    schema = StructType([*df.schema.fields, *(StructField(name, data_type) for name, data_type in new_columns.items())])
    return df.mapInArrow(score_partition, schema)


# ---- the driver: where each part of the observation is -------------------------------------------------------


def _sources(schema: Any, policy: Policy, observation: str | Mapping[str, str] | Sequence[str]) -> list[dict[str, Any]]:
    """For each part of the observation space, in its order: the column(s) it is read from, the struct fields
    below the column, whether its arrays nest one level per axis (else one flat array), and its name in errors."""
    from pyspark.sql.types import StructType

    parts = policy.env.observation.parts
    structured = policy.env.observation.structured
    keys = ", ".join(part.name for part in parts)
    if isinstance(observation, str):
        data_type = _column(schema, observation)
        if not structured:
            return [_source(parts[0], [observation], (), data_type, observation)]
        if not isinstance(data_type, StructType):
            raise ConfigError(f"score: column {observation!r} is {data_type.simpleString()}, not a struct with a field per "
                              f"part of {policy.env.id}'s observations ({keys}); or pass observation={{key: column}}")
        sources = []
        for part in parts:
            fields, field_type = tuple(str(key) for key in part.path), data_type
            for depth, field in enumerate(fields):
                label = ".".join((observation, *fields[:depth]))
                if not isinstance(field_type, StructType) or field not in field_type.names:
                    have = ", ".join(field_type.names) if isinstance(field_type, StructType) else field_type.simpleString()
                    raise ConfigError(f"score: column {label!r} has no field {field!r} for the observation part {part.name!r} (it has: {have})")
                field_type = field_type[field].dataType
            sources.append(_source(part, [observation], fields, field_type, ".".join((observation, *fields))))
        return sources
    if isinstance(observation, Mapping):
        if not structured:
            raise ConfigError(f"score: observation={{...}} maps the keys of a Dict or Tuple observation; {policy.env.id}'s is one "
                              "array: pass its column's name")
        unknown = sorted(set(observation) - {part.name for part in parts})
        missing = [part.name for part in parts if part.name not in observation]
        if unknown or missing:
            raise ConfigError(f"score: observation={{...}} must map each part of {policy.env.id}'s observations ({keys}) to a column: "
                              + "; ".join(filter(None, [missing and f"missing {', '.join(missing)}", unknown and f"unknown {', '.join(unknown)}"])))
        return [_source(part, [observation[part.name]], (), _column(schema, observation[part.name]), observation[part.name]) for part in parts]
    columns = list(observation)
    part = parts[0]
    if structured or part.kind != "box" or len(columns) != math.prod(part.shape):
        raise ConfigError(f"score: observation=[{', '.join(columns)}]: a list of columns is a flat Box observation; {policy.env.id}'s "
                          f"is {_describe(parts)}")
    for name in columns:
        _check_leaf(part, _column(schema, name), name, scalar=True)
    return [{"columns": columns, "fields": (), "nested": True, "label": ", ".join(columns)}]


def _column(schema: Any, name: str) -> Any:
    if name not in schema.names:
        raise ConfigError(f"score: no column {name!r} in the DataFrame (its columns: {', '.join(schema.names)})")
    return schema[name].dataType


def _source(part: ObservationPart, columns: list[str], fields: tuple[str, ...], data_type: Any, label: str) -> dict[str, Any]:
    return {"columns": columns, "fields": fields, "nested": _check_leaf(part, data_type, label), "label": label}


def _check_leaf(part: ObservationPart, data_type: Any, label: str, scalar: bool = False) -> bool:
    """Whether ``data_type`` nests one array level per axis of the part (else it is one flat array); raises a
    ``ConfigError`` naming the column where it can hold no observation of the part."""
    from pyspark.sql.types import ArrayType, BooleanType, ByteType, DoubleType, FloatType, IntegerType, LongType, ShortType

    integers = (ByteType, ShortType, IntegerType, LongType)
    numbers = integers if part.kind in ("discrete", "multi_discrete") else (*integers, FloatType, DoubleType, BooleanType)
    depth, leaf = 0, data_type
    while isinstance(leaf, ArrayType):
        depth, leaf = depth + 1, leaf.elementType
    axes = 0 if scalar else len(part.shape)
    if isinstance(leaf, numbers) and (depth == axes or (depth == 1 and axes > 1)):
        return depth == axes
    kind = "integers" if part.kind in ("discrete", "multi_discrete") else "numbers"
    if axes == 0:
        expected = f"a column of {kind}"
    else:
        nested = "array<" * axes + kind + ">" * axes
        expected = nested if axes == 1 else f"{nested} or one array of {math.prod(part.shape)} {kind}"
    where = f" ({part.name})" if part.name else ""
    raise ConfigError(f"score: column {label!r} is {data_type.simpleString()}; the observation{where}, {part.kind} of shape "
                      f"{part.shape}, needs {expected}")


def _describe(parts: Sequence[ObservationPart]) -> str:
    return ", ".join(f"{part.name or 'the observation'}: {part.kind} of shape {part.shape}" for part in parts)


# ---- the executors -------------------------------------------------------------------------------------------


def _scorer(payload: dict[str, Any]) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The scoring function of a job, with its policy built once per worker."""
    policy = _POLICIES.get(payload["digest"], lambda: policy_from_tensors(json.loads(payload["spec"]), load(payload["weights"])))
    return functools.partial(_score_batches, policy, payload)


def _score_batches(policy: Policy, payload: dict[str, Any], batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    outputs = payload["outputs"]
    for batch in batches:
        for start in range(0, batch.num_rows, payload["batch_rows"]):
            rows = batch.slice(start, payload["batch_rows"])
            observation = _observation(rows, policy, payload["sources"])
            results = {payload["output"]: policy.act(observation)}
            if payload["probabilities"] is not None:
                results[payload["probabilities"]] = policy.action_probabilities(observation)
            if payload["value"] is not None:
                results[payload["value"]] = policy.value(observation)
            arrays = [_arrow(values, outputs[name]) for name, values in results.items()]
            yield pa.RecordBatch.from_arrays([*rows.columns, *arrays], names=[*rows.schema.names, *results])


def _observation(rows: pa.RecordBatch, policy: Policy, sources: list[dict[str, Any]]) -> Any:
    """A batch of observations as the policy's space has them: one array, or nested dicts of arrays by key."""
    spec = policy.env.observation
    values = [_read(rows, part, source) for part, source in zip(spec.parts, sources)]
    if not spec.structured:
        return values[0]
    observation: dict[Any, Any] = {}
    for part, value in zip(spec.parts, values):
        node = observation
        for key in part.path[:-1]:
            node = node.setdefault(key, {})
        node[part.path[-1]] = value
    return observation


def _read(rows: pa.RecordBatch, part: ObservationPart, source: dict[str, Any]) -> np.ndarray:
    label = source["label"]
    if len(source["columns"]) > 1:  # one scalar column per value of a flat Box
        values = np.stack([_numbers(rows.column(name), name) for name in source["columns"]], axis=-1)
        return values.reshape(len(values), *part.shape).astype(part.dtype, copy=False)
    array = rows.column(source["columns"][0])
    for field in source["fields"]:
        _no_nulls(array, label)
        array = array.field(field)
    axes = part.shape if source["nested"] else (math.prod(part.shape),)
    for axis, size in enumerate(axes):
        _no_nulls(array, label)
        lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
        wrong = np.flatnonzero(lengths != size)
        if len(wrong):
            where = f"{lengths[wrong[0]]} values" if len(axes) == 1 else f"{lengths[wrong[0]]} values on axis {axis}"
            raise ValueError(f"score: column {label!r} holds an observation of {where} where the observation space's shape "
                             f"{part.shape} needs {size}")
        array = array.flatten()
    return _numbers(array, label).reshape(len(rows), *part.shape).astype(part.dtype, copy=False)


def _numbers(array: pa.Array, label: str) -> np.ndarray:
    _no_nulls(array, label)
    return array.to_numpy(zero_copy_only=False)


def _no_nulls(array: pa.Array, label: str) -> None:
    if array.null_count:
        raise ValueError(f"score: column {label!r} holds {array.null_count} null value(s) in an observation")


def _arrow(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    """A column of one value, or one flattened array, per row."""
    if not pa.types.is_list(arrow_type):
        return pa.array(values, type=arrow_type)
    rows = values.reshape(len(values), -1)
    offsets = pa.array(np.arange(0, rows.size + 1, rows.shape[1], dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(rows.reshape(-1), type=arrow_type.value_type), type=arrow_type)
