"""Episodes that outlive a Spark job: what each PPO task carries from one job to the next, and how it goes on.

A single-process trainer keeps its envs between updates; a Spark task is a new process's work on every job, and
it must be a pure function of what the driver ships it (a retried or moved task has to go on from the same
place).  So the driver owns what is carried.  For each sub-env of a task the carry holds the episode in
progress as the seed it was reset with and the actions taken since, plus ddrl's own running statistics of it
(return, length, the discounted return that reward scaling keeps).  The next job's task with the same index
rebuilds the sub-env by **replay**: reset it with that seed and step the recorded actions through the whole
wrapper stack (frame stacks, time limits, lives and episode statistics come back with it).  Replay works for
any env that is deterministic under ``reset(seed=...)`` and the same actions, users' own envs included, and
costs env steps without the policy; the last observation's digest, kept in the carry, tells whether the replay
arrived where the episode was.  An env that does not replay starts a new episode instead (counted in the
metrics, and the driver warns once).

So that replay is bounded by one episode, every episode starts from a seeded reset: an episode that ends during
a job starts its successor from a seed derived from (task seed, sub-env, episode), never from where the env's
random generator happened to be.

A Python worker keeps each task's vector env after its task (``_TASK_ENVS``), keyed by the run and the task
index, with the digest of the carry it ended with.  It is only a cache: the next task uses it as it is when
the shipped carry has that digest, which for an env that replays means exactly the state replay would build,
and replays otherwise.

The carry travels as plain arrays: in the task's records back to the driver, in the driver's state (so
checkpoints hold it without pickling, under keys starting with ``PREFIX``) and in the next payload.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import time
from typing import Any, Iterator, Mapping

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import concatenate, create_empty_array

from ddrl import envs
from ddrl.config import EnvConfig
from ddrl.envs import EnvInfo
from ddrl.seeding import Stream, derive_seed, env_seed
from ddrl.worker_cache import WorkerCache

PREFIX = "carry."
"""State keys of carried episodes: ``carry.<task index>.<field>``.  Their sizes vary from one checkpoint to the
next, so a resumed run's checkpoint is matched to its config without them."""

FIELDS = ("seeds", "ended", "lengths", "actions", "observation_digests", "episode_return", "episode_length", "discounted_return")
"""The arrays of one task's carry (``Carry``)."""

BYTES_PER_ENV = 7 * 8
"""The fixed part of a sub-env's carry: every field but the actions, one 8-byte value each."""


@dataclasses.dataclass(frozen=True)
class EnvCursor:
    """Where each of a task's envs stands between rounds (and, carried, between jobs), so that episodes go on."""

    features: dict[str, np.ndarray]
    """The features of the raw observation each env returned last (``ddrl.spaces``; the vector unstandardized)."""
    mask: np.ndarray | None
    """The valid-action mask that came with it (None: the env has no masks)."""
    ended: np.ndarray
    """Whether that step ended an episode: the env's next step only resets it."""
    episode_return: np.ndarray
    episode_length: np.ndarray
    discounted_return: np.ndarray
    """The running discounted return of the episode in progress (reward scaling's statistic)."""

    @staticmethod
    def reset(vector_env: Any, seed: int, env: EnvInfo) -> "EnvCursor":
        """Every env at the start of a new episode, sub-env i from ``seed + i``."""
        observation, info = vector_env.reset(seed=seed)
        zeros = np.zeros(vector_env.num_envs)
        return EnvCursor(env.observation.features(observation), env.mask(observation, info), zeros.astype(bool), zeros, zeros.astype(np.int64), zeros)


@dataclasses.dataclass(frozen=True)
class Carry:
    """One task's sub-envs between two jobs, as the driver holds them (every field an array, sub-env by sub-env)."""

    seeds: np.ndarray
    """int64: the seed each episode in progress was reset with."""
    ended: np.ndarray
    """bool: the episode ended on the job's last step (the next job starts a new one)."""
    lengths: np.ndarray
    """int64: actions taken in each episode in progress."""
    actions: np.ndarray
    """float64 ``(sum(lengths), action size)``: those actions, sub-env after sub-env, flattened."""
    observation_digests: np.ndarray
    """int64: a digest of each env's last observation, to tell a replay that arrived from one that did not."""
    episode_return: np.ndarray
    episode_length: np.ndarray
    discounted_return: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in FIELDS}

    @staticmethod
    def of(arrays: Mapping[str, np.ndarray]) -> "Carry":
        return Carry(**{name: np.asarray(arrays[name]) for name in FIELDS})

    def digest(self) -> bytes:
        """Identifies the carry: equal digests, equal episodes (and so, for an env that replays, equal env states)."""
        hasher = hashlib.blake2b(digest_size=16)
        for name in FIELDS:
            array = np.ascontiguousarray(getattr(self, name))
            hasher.update(f"{name}{array.dtype.str}{array.shape}".encode())
            hasher.update(array.tobytes())
        return hasher.digest()


class ReplayableEpisode(gym.Wrapper):
    """The outermost wrapper of every training sub-env when episodes are carried: it records the episode in
    progress (its reset seed and the actions since), gives each new episode of a job a seed derived from the job's
    task seed, and replays a recorded episode."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.episode_seed = 0
        self.actions: list[np.ndarray] = []
        self.last: tuple[Any, dict[str, Any]] = (None, {})
        """The last observation and info the env returned."""
        self.next_seeds: Iterator[int] = iter(())

    def begin_job(self, task_seed: int, index: int) -> None:
        """Episodes that start in this job without a seed take theirs from (task seed, sub-env, episode)."""
        self.next_seeds = (env_seed(derive_seed(task_seed, index, episode, Stream.EPISODE)) for episode in itertools.count())

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        seed = next(self.next_seeds) if seed is None else seed
        observation, info = self.env.reset(seed=seed, options=options)
        self.episode_seed, self.actions, self.last = seed, [], (observation, info)
        return observation, info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        """The env steps the action as it is recorded, so that a replay gives it exactly the same values."""
        flat = np.asarray(action, dtype=np.float64).reshape(-1)
        observation, reward, terminated, truncated, info = self.env.step(self._action(flat))
        self.actions.append(flat)
        self.last = (observation, info)
        return observation, reward, terminated, truncated, info

    def _action(self, flat: np.ndarray) -> Any:
        """A recorded action as the env takes it: the space's shape, and its dtype (float64 for float spaces)."""
        space = self.action_space
        dtype = np.float64 if np.issubdtype(space.dtype, np.floating) else space.dtype
        return flat.reshape(space.shape).astype(dtype)[()]

    def replay(self, actions: np.ndarray, observation_digest: int) -> bool:
        """Step the recorded ``actions`` (after the reset with the episode's seed); whether the env arrived at the
        recorded last observation.  An episode that ends before its last action did not replay either."""
        for flat in actions:
            _, _, terminated, truncated, _ = self.step(flat)
            if terminated or truncated:
                return False
        return observation_digest_of(self.observation_space, self.last[0]) == observation_digest


def observation_digest_of(space: gym.Space, observation: Any) -> int:
    """A 64-bit digest of an observation (any space ddrl reads), as a signed int64 value."""
    flat = np.ascontiguousarray(gym.spaces.flatten(space, observation))
    digest = hashlib.blake2b(flat.tobytes(), digest_size=8, person=flat.dtype.str.encode()).digest()
    return int(np.frombuffer(digest, dtype=np.int64)[0])


@dataclasses.dataclass(frozen=True)
class Resumed:
    """A task's envs at the start of its job, and what getting them there took."""

    vector_env: Any
    cursor: EnvCursor
    replayed_steps: int
    """Env steps spent replaying carried episodes (not counted as training steps)."""
    replay_failures: int
    """Carried episodes that did not replay and started anew."""
    restore_seconds: float
    cache_hit: bool


@dataclasses.dataclass
class _KeptEnv:
    vector_env: Any
    digest: bytes | None = None
    """The digest of the carry the env ended its last task with; None while a task is using it (a task that
    fails half-way leaves an env that no carry describes)."""


_TASK_ENVS = WorkerCache(close=lambda kept: kept.vector_env.close())
"""(run fingerprint, task index) to the ``_KeptEnv`` of the task's last job on this worker."""


def resume(config: EnvConfig, env: EnvInfo, key: tuple[str, int], seed: int, carried: Mapping[str, np.ndarray] | None) -> Resumed:
    """The task's vector env where ``carried`` left it (new episodes from ``seed`` where nothing is carried).

    ``key`` is (run fingerprint, task index): where this worker may have kept the env from the task's last job.
    """
    started = time.perf_counter()
    kept = _TASK_ENVS.get(key, lambda: _KeptEnv(envs.make_vector_env(config, config.num_envs, outermost=ReplayableEpisode)))
    vector_env, kept_digest, kept.digest = kept.vector_env, kept.digest, None
    wrappers: list[ReplayableEpisode] = list(vector_env.envs)
    for index, wrapper in enumerate(wrappers):
        wrapper.begin_job(seed, index)
    if carried is None:
        cursor = EnvCursor.reset(vector_env, env_seed(seed), env)
        return Resumed(vector_env, cursor, 0, 0, time.perf_counter() - started, False)

    carry = Carry.of(carried)
    hit = kept_digest == carry.digest()
    ended, replayed_steps, failures = carry.ended.astype(bool).copy(), 0, 0
    episode_return, episode_length, discounted_return = (carry.episode_return.copy(), carry.episode_length.copy(), carry.discounted_return.copy())
    if hit:  # the env is where the carry says: only the episodes that ended on the last step start anew
        if ended.any():
            vector_env.reset(seed=[None] * len(wrappers), options={"reset_mask": ended})
    else:
        seeds = [None if done else int(seed) for done, seed in zip(ended, carry.seeds)]
        vector_env.reset(seed=seeds, options={"reset_mask": np.ones(len(wrappers), dtype=bool)})
        offsets = np.concatenate([[0], np.cumsum(carry.lengths)])
        for index, wrapper in enumerate(wrappers):
            if ended[index]:
                continue
            actions = carry.actions[offsets[index] : offsets[index + 1]]
            replayed_steps += len(actions)
            if not wrapper.replay(actions, int(carry.observation_digests[index])):
                failures += 1
                ended[index] = True
                vector_env.reset(seed=[None] * len(wrappers), options={"reset_mask": _only(index, len(wrappers))})
    episode_return[ended], episode_length[ended], discounted_return[ended] = 0.0, 0, 0.0
    cursor = EnvCursor(*_last_features_and_mask(vector_env, env), np.zeros(len(wrappers), dtype=bool), episode_return, episode_length, discounted_return)
    return Resumed(vector_env, cursor, replayed_steps, failures, time.perf_counter() - started, hit)


def capture(key: tuple[str, int], vector_env: Any, cursor: EnvCursor) -> Carry:
    """The carry of a task's envs at the end of its job (``cursor`` from its last round); the worker keeps the env."""
    wrappers: list[ReplayableEpisode] = list(vector_env.envs)
    action_size = int(np.prod(wrappers[0].action_space.shape, dtype=np.int64))
    kept = [wrapper.actions if not done else [] for wrapper, done in zip(wrappers, cursor.ended)]
    rows = [row for actions in kept for row in actions]
    carry = Carry(
        seeds=np.array([wrapper.episode_seed for wrapper in wrappers], dtype=np.int64),
        ended=np.asarray(cursor.ended, dtype=bool),
        lengths=np.array([len(actions) for actions in kept], dtype=np.int64),
        actions=np.stack(rows) if rows else np.zeros((0, action_size)),
        observation_digests=np.array([observation_digest_of(wrapper.observation_space, wrapper.last[0]) for wrapper in wrappers], dtype=np.int64),
        episode_return=np.asarray(cursor.episode_return, dtype=np.float64),
        episode_length=np.asarray(cursor.episode_length, dtype=np.int64),
        discounted_return=np.asarray(cursor.discounted_return, dtype=np.float64),
    )
    _TASK_ENVS.get(key, lambda: _KeptEnv(vector_env)).digest = carry.digest()
    return carry


def bound_bytes(num_envs: int, action_size: int, episode_steps: int) -> int:
    """The most bytes one task's carry takes with episodes of at most ``episode_steps`` steps."""
    return num_envs * (BYTES_PER_ENV + episode_steps * action_size * 8)


def carries_in_state(state: Mapping[str, np.ndarray]) -> dict[int, dict[str, np.ndarray]]:
    """Task index to its carry's arrays, for every task a driver state holds one for."""
    carries: dict[int, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        if key.startswith(PREFIX):
            task_index, _, name = key[len(PREFIX):].partition(".")
            carries.setdefault(int(task_index), {})[name] = value
    return carries


def replace_in_state(state: dict[str, np.ndarray], carries: Mapping[int, Carry]) -> dict[str, np.ndarray]:
    """``state`` holding ``carries`` (task index to carry) and no other: tasks that returned none start anew."""
    kept = {key: value for key, value in state.items() if not key.startswith(PREFIX)}
    for task_index, carry in sorted(carries.items()):
        kept.update({f"{PREFIX}{task_index}.{name}": value for name, value in carry.arrays().items()})
    return kept


def _only(index: int, count: int) -> np.ndarray:
    mask = np.zeros(count, dtype=bool)
    mask[index] = True
    return mask


def _last_features_and_mask(vector_env: Any, env: EnvInfo) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The features and mask of every sub-env's last observation, batched as the vector env would."""
    wrappers = vector_env.envs
    space = vector_env.single_observation_space
    observations = concatenate(space, [wrapper.last[0] for wrapper in wrappers], create_empty_array(space, len(wrappers)))
    if env.action_mask is None:
        return env.observation.features(observations), None
    masks = [env.mask(wrapper.last[0], wrapper.last[1]) for wrapper in wrappers]
    full = np.ones(env.action_dim, dtype=bool)
    return env.observation.features(observations), np.stack([full if mask is None else np.asarray(mask, dtype=bool).reshape(-1) for mask in masks])
