"""Trajectories as Spark data: the transitions tasks collect, written by the tasks themselves as Parquet files.

With ``output.record_experience: PATH`` every PPO task writes the transitions of its job to one file,
``PATH/iteration-<iteration>-task-<task>.parquet``; ``jobs/evaluate.py --record PATH`` writes its episodes to
``PATH/evaluation-seed-<seed>.parquet``.  Nothing is collected to the driver.  A file is written under a name
starting with ``_`` (which Spark and pyarrow skip when they read a directory) and renamed when complete, so a
retried or resumed task overwrites its own file and a killed one leaves nothing half-written to read.  PATH is any
filesystem pyarrow writes to: a local or mounted path (``/Volumes/...`` on Databricks), ``s3://``, ``gs://``,
``hdfs://``.  ``spark.read.parquet(PATH)`` reads it all.

One row per transition (the valid steps: an autoreset step is none):

================  ======================================================================================
iteration         the training iteration (as in the run's metrics; 0 for evaluation)
task              the task index
env               the sub-env within the task (the episode within an evaluation)
episode           the seed the episode's env was reset with, where episodes carry (the default) and in
                  evaluations: ``env.reset(seed=episode)`` and the recorded actions play it again
step              the step within the episode (continuing across iterations)
observation       the env's observation, flattened to a list in the space's dtype (its shape in the field's
                  metadata); a struct of such fields for Dict and Tuple spaces; an int for Discrete
action            an int for Discrete actions, else a list (flattened)
reward            the env's reward (unscaled)
terminated        the episode ended in a terminal state
truncated         the episode was cut (its time limit)
log_prob          log pi(action | observation) of the behaviour policy (null for greedy evaluations)
value             the behaviour policy's V(observation) (null where it has no critic)
action_mask       the valid actions, for envs with a mask
================  ======================================================================================
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import fs

TEMPORARY_PREFIX = "_incomplete-"


def absolute(location: str) -> str:
    """``location`` as tasks on other machines can use it: a local path made absolute (a URI is left as it is)."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", location):
        return location
    return str(Path(location).expanduser().resolve())


def file_name(iteration: int, task: int) -> str:
    """A task's file: one per (iteration, task), so that a retried task overwrites instead of adding rows."""
    return f"iteration-{iteration:06d}-task-{task:05d}.parquet"


def evaluation_file_name(seed: int) -> str:
    return f"evaluation-seed-{seed}.parquet"


def stack(space: gym.Space, batches: list[Any]) -> Any:
    """Batched observations (as a vector env returns them), stacked on a new first axis: (steps, envs, ...)."""
    if isinstance(space, gym.spaces.Dict):
        return {key: stack(subspace, [batch[key] for batch in batches]) for key, subspace in space.spaces.items()}
    if isinstance(space, gym.spaces.Tuple):
        return tuple(stack(subspace, [batch[index] for batch in batches]) for index, subspace in enumerate(space.spaces))
    return np.stack([np.asarray(batch) for batch in batches])


def select(space: gym.Space, stacked: Any, rows: np.ndarray) -> Any:
    """``stacked`` observations (steps, envs, ...) at the boolean ``rows`` (steps, envs): one row per transition."""
    if isinstance(space, gym.spaces.Dict):
        return {key: select(subspace, stacked[key], rows) for key, subspace in space.spaces.items()}
    if isinstance(space, gym.spaces.Tuple):
        return tuple(select(subspace, stacked[index], rows) for index, subspace in enumerate(space.spaces))
    return stacked[rows]


def space_array(space: gym.Space, values: Any) -> pa.Array:
    """A column of observations or actions (one per row): an int for Discrete, a flat list for arrays, a struct
    for Dict and Tuple spaces."""
    if isinstance(space, gym.spaces.Dict):
        children = [space_array(subspace, values[key]) for key, subspace in space.spaces.items()]
        return pa.StructArray.from_arrays(children, fields=[_field(key, subspace, child.type) for (key, subspace), child in zip(space.spaces.items(), children)])
    if isinstance(space, gym.spaces.Tuple):
        children = [space_array(subspace, values[index]) for index, subspace in enumerate(space.spaces)]
        return pa.StructArray.from_arrays(children, fields=[_field(str(index), subspace, child.type) for index, (subspace, child) in enumerate(zip(space.spaces, children))])
    values = np.asarray(values)
    if isinstance(space, gym.spaces.Discrete):
        return pa.array(values.reshape(-1).astype(np.int64))
    flat = values.reshape(len(values), -1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])


def _field(name: str, space: gym.Space, type_: pa.DataType) -> pa.Field:
    shape = getattr(space, "shape", None)
    return pa.field(name, type_, metadata={"shape": json.dumps(list(shape))} if shape else None)


def table(
    observation_space: gym.Space,
    action_space: gym.Space,
    *,
    iteration: int,
    task: int,
    env: np.ndarray,
    episode: np.ndarray,
    step: np.ndarray,
    observation: Any,
    action: np.ndarray,
    reward: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    log_prob: np.ndarray | None,
    value: np.ndarray | None,
    action_mask: np.ndarray | None,
) -> pa.Table:
    """The transitions as an Arrow table of the schema above (one row per entry of ``env``)."""
    rows = len(env)
    observations = space_array(observation_space, observation)
    columns = {
        "iteration": pa.array(np.full(rows, iteration, dtype=np.int64)),
        "task": pa.array(np.full(rows, task, dtype=np.int32)),
        "env": pa.array(np.asarray(env, dtype=np.int32)),
        "episode": pa.array(np.asarray(episode, dtype=np.int64)),
        "step": pa.array(np.asarray(step, dtype=np.int64)),
        "observation": observations,
        "action": space_array(action_space, action),
        "reward": pa.array(np.asarray(reward, dtype=np.float64)),
        "terminated": pa.array(np.asarray(terminated, dtype=bool)),
        "truncated": pa.array(np.asarray(truncated, dtype=bool)),
        "log_prob": pa.nulls(rows, pa.float32()) if log_prob is None else pa.array(np.asarray(log_prob, dtype=np.float32)),
        "value": pa.nulls(rows, pa.float32()) if value is None else pa.array(np.asarray(value, dtype=np.float32)),
    }
    if action_mask is not None:
        mask = np.asarray(action_mask, dtype=bool).reshape(rows, -1)
        columns["action_mask"] = pa.FixedSizeListArray.from_arrays(pa.array(mask.reshape(-1)), mask.shape[1])
    fields = [_field(name, observation_space, array.type) if name == "observation" else pa.field(name, array.type) for name, array in columns.items()]
    return pa.Table.from_arrays(list(columns.values()), schema=pa.schema(fields))


def write(root: str, name: str, transitions: pa.Table) -> str:
    """Write ``transitions`` to ``root/name`` so that readers see the whole file or none of it; returns its path."""
    filesystem, directory = fs.FileSystem.from_uri(root)
    filesystem.create_dir(directory, recursive=True)
    final = f"{directory}/{name}"
    temporary = f"{directory}/{TEMPORARY_PREFIX}{os.getpid()}-{name}"
    pq.write_table(transitions, temporary, filesystem=filesystem)
    filesystem.move(temporary, final)  # a rename where the filesystem has one (local, HDFS); a copy on object stores
    return final


class EpisodeRecorder:
    """The steps ``ddrl.envs.evaluate`` shows its ``on_step``, kept as transitions: episode i played by sub-env i
    from ``seeds[i]``.  ``mask(observations, infos)`` gives the valid actions (None: the env has no mask) and
    ``value(observations)`` V(s) where the policy has a critic."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space, seeds: list[int],
                 mask: Any = None, value: Any = None) -> None:
        self.observation_space, self.action_space, self.seeds = observation_space, action_space, np.asarray(seeds, dtype=np.int64)
        self.mask, self.value = mask, value
        self.steps: list[tuple[Any, ...]] = []

    def __call__(self, observations: Any, infos: Any, actions: np.ndarray, rewards: np.ndarray, terminated: np.ndarray,
                 truncated: np.ndarray, running: np.ndarray) -> None:
        mask = None if self.mask is None else self.mask(observations, infos)
        value = None if self.value is None else self.value(observations)
        self.steps.append((observations, np.asarray(actions), rewards, terminated, truncated, running, mask, value))

    def table(self) -> pa.Table:
        observations, actions, rewards, terminated, truncated, running, masks, values = zip(*self.steps)
        valid = np.stack(running)
        return table(
            self.observation_space, self.action_space, iteration=0, task=0,
            env=np.broadcast_to(np.arange(valid.shape[1]), valid.shape)[valid],
            episode=np.broadcast_to(self.seeds, valid.shape)[valid],
            step=(np.cumsum(valid, axis=0) - 1)[valid],
            observation=select(self.observation_space, stack(self.observation_space, list(observations)), valid),
            action=np.stack(actions)[valid],
            reward=np.stack(rewards)[valid],
            terminated=np.stack(terminated)[valid],
            truncated=np.stack(truncated)[valid],
            log_prob=None,
            value=None if values[0] is None else np.stack(values)[valid],
            action_mask=None if masks[0] is None else np.stack([np.asarray(mask, dtype=bool).reshape(valid.shape[1], -1) for mask in masks])[valid],
        )


def space_values(space: gym.Space, array: pa.Array | pa.ChunkedArray, label: str) -> Any:
    """The inverse of ``space_array``: a column as a batch of the space's values, (rows, *shape) in its dtype (a
    dict for Dict spaces, from a struct column).  Lists may be flat or nested one level per axis.  ``ValueError``
    names ``label`` for a column of the wrong kind or length, or with nulls."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if array.null_count:
        raise ValueError(f"{label}: {array.null_count} null values")
    if isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple)):
        if not pa.types.is_struct(array.type):
            raise ValueError(f"{label}: a {type(space).__name__} observation needs a struct column with a field per key, not {array.type}")
        keys = list(space.spaces) if isinstance(space, gym.spaces.Dict) else [str(index) for index in range(len(space.spaces))]
        missing = [key for key in keys if array.type.get_field_index(key) < 0]
        if missing:
            raise ValueError(f"{label}: no field {', '.join(missing)} (the struct has {', '.join(field.name for field in array.type)})")
        values = [space_values(subspace, array.field(key), f"{label}.{key}") for key, subspace in zip(keys, space.spaces.values() if isinstance(space, gym.spaces.Dict) else space.spaces)]
        return dict(zip(keys, values)) if isinstance(space, gym.spaces.Dict) else tuple(values)
    rows, shape = len(array), tuple(getattr(space, "shape", ()) or ())
    while pa.types.is_list(array.type) or pa.types.is_fixed_size_list(array.type) or pa.types.is_large_list(array.type):
        array = pc.list_flatten(array)
    if not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type) or pa.types.is_boolean(array.type)):
        raise ValueError(f"{label}: numbers or lists of numbers expected, not {array.type}")
    values = array.to_numpy(zero_copy_only=False)
    size = int(np.prod(shape, dtype=np.int64))
    if len(values) != rows * size:
        raise ValueError(f"{label}: each row must hold {size} values (shape {list(shape)}), the column has {len(values)} for {rows} rows")
    return values.reshape(rows, *shape).astype(space.dtype, copy=False)


def outside(space: gym.Space, values: np.ndarray) -> np.ndarray:
    """Which rows of a batch of actions (``space_values``) the space does not contain."""
    rows = len(values)
    flat = np.asarray(values).reshape(rows, -1)
    if isinstance(space, gym.spaces.Discrete):
        inside = (flat >= space.start) & (flat < space.start + space.n)
    elif isinstance(space, gym.spaces.MultiDiscrete):
        inside = (flat >= space.start.reshape(-1)) & (flat < (space.start + space.nvec).reshape(-1))
    elif isinstance(space, gym.spaces.MultiBinary):
        inside = (flat == 0) | (flat == 1)
    elif isinstance(space, gym.spaces.Box):
        inside = (flat >= space.low.reshape(-1)) & (flat <= space.high.reshape(-1))
    else:
        return np.array([not space.contains(value) for value in values])
    return ~inside.all(axis=1)
