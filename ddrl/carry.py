"""Episodes that outlive a Spark job: what each PPO task carries from one job to the next, and how it goes on.

A single-process trainer keeps its envs between updates; a Spark task is a new piece of work in every job, and it
must be a pure function of what the driver ships it (a retried or moved task has to go on from the same place).
So the driver owns what is carried.  For each sub-env of a task the carry holds the game in progress as the seed
its env was last reset with and the calls made on it since (steps with their actions, and resets that went on
with the same game, such as ``ddrl.atari.EpisodicLife``'s after a lost life), plus ddrl's own running statistics
of the episode (return, length, the discounted return that reward scaling keeps).  The next job's task with the
same index rebuilds the sub-env by **replay**: reset it with that seed and make the recorded calls again through
the whole wrapper stack (frame stacks, time limits, lives and episode statistics come back with it).  Replay
works for any env that is deterministic under ``reset(seed=...)`` and the same calls, users' own envs included,
and costs env steps without the policy; a digest of the last observation, kept in the carry, tells whether the
replay arrived where the game was.  An env that does not replay starts a new episode instead (counted in the
metrics; the driver warns once).

So that a replay is bounded by one game, the env under the wrappers is never reset from wherever its random
generator happened to be: every reset without a seed takes the next seed of the sub-env's chain, derived from
the sub-env's first seed and the number of games since (``SeededResets``).

A Python worker keeps each task's vector env after its task (``_TASK_ENVS``), keyed by the run and the task
index, with the digest of the carry it ended with.  It is only a cache: the next task uses it as it is when the
shipped carry has that digest, which for an env that replays is exactly the state replay would build, and
replays otherwise.

The carry travels as plain arrays: in the task's records back to the driver, in the driver's state (so
checkpoints hold it without pickling, under keys starting with ``PREFIX``) and in the next payload.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Any, Mapping

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

FIELDS = ("origins", "games", "ended", "lengths", "calls", "resets", "observation_digests", "episode_return", "episode_length", "discounted_return")
"""The arrays of one task's carry (``Carry``)."""

BYTES_PER_ENV = 8 * 8
"""The fixed part of a sub-env's carry: one 8-byte value per sub-env of every field but the calls."""


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
    observation: Any
    """The raw observations themselves, batched as the vector env returns them (for recorded trajectories)."""

    @staticmethod
    def reset(vector_env: Any, seed: int, env: EnvInfo) -> "EnvCursor":
        """Every env at the start of a new episode, sub-env i from ``seed + i``."""
        observation, info = vector_env.reset(seed=seed)
        zeros = np.zeros(vector_env.num_envs)
        return EnvCursor(env.observation.features(observation), env.mask(observation, info), zeros.astype(bool), zeros, zeros.astype(np.int64), zeros, observation)


@dataclasses.dataclass(frozen=True)
class Carry:
    """One task's sub-envs between two jobs, as the driver holds them (every field an array, sub-env by sub-env)."""

    origins: np.ndarray
    """int64: each sub-env's first seed, which its chain of reset seeds derives from (``SeededResets``)."""
    games: np.ndarray
    """int64: the number of the game in progress in that chain (its seed: ``chain_seed(origin, game)``)."""
    ended: np.ndarray
    """bool: an episode ended on the job's last step (the next job resets the sub-env first)."""
    lengths: np.ndarray
    """int64: calls made on each sub-env since its game began."""
    calls: np.ndarray
    """float64 ``(sum(lengths), action size)``: those calls' actions, sub-env after sub-env, flattened (0 for resets)."""
    resets: np.ndarray
    """bool ``(sum(lengths),)``: which of the calls were resets that went on with the game."""
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
        """Identifies the carry: equal digests, equal games (and so, for an env that replays, equal env states)."""
        hasher = hashlib.blake2b(digest_size=16)
        for name in FIELDS:
            array = np.ascontiguousarray(getattr(self, name))
            hasher.update(f"{name}{array.dtype.str}{array.shape}".encode())
            hasher.update(array.tobytes())
        return hasher.digest()


def chain_seed(origin: int, game: int) -> int:
    """The seed of a sub-env's ``game``-th game: its first seed, then seeds derived from it."""
    return origin if game == 0 else env_seed(derive_seed(origin, game, 0, Stream.EPISODE))


class SeededResets(gym.Wrapper):
    """The innermost wrapper of a sub-env whose games are carried: a reset without a seed (an autoreset, a wrapper
    that starts a new game) takes the next seed of the sub-env's chain, so that every game starts from a seed."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.origin, self.game = 0, 0
        self.resets = 0
        self._continuing: tuple[int, int] | None = None

    def continue_chain(self, origin: int, game: int) -> None:
        """The next reset, seeded with ``chain_seed(origin, game)``, restarts that game of that chain."""
        self._continuing = (origin, game)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if seed is None:
            self.game += 1
        elif self._continuing is not None:
            self.origin, self.game = self._continuing
        else:  # a new chain: the sub-env's first seed
            self.origin, self.game = seed, 0
        self._continuing = None
        self.resets += 1
        return self.env.reset(seed=chain_seed(self.origin, self.game), options=options)


class ReplayableEpisode(gym.Wrapper):
    """The outermost wrapper of a sub-env whose games are carried: it records the calls made since the game in
    progress began, and replays recorded calls."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        inner = env
        while not isinstance(inner, SeededResets):
            inner = inner.env
        self.chain: SeededResets = inner
        space = self.action_space  # how a recorded action goes back to the env, worked out once (not every step)
        self._action_shape = space.shape
        self._action_dtype = np.float64 if np.issubdtype(space.dtype, np.floating) else space.dtype
        self._action_size = int(np.prod(space.shape, dtype=np.int64))
        self.origin, self.game = 0, 0
        self.calls: list[np.ndarray] = []
        self.resets: list[bool] = []
        self.last: tuple[Any, dict[str, Any]] = (None, {})
        """The last observation and info the env returned."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        resets_before = self.chain.resets
        observation, info = self.env.reset(seed=seed, options=options)
        if self.chain.resets > resets_before:  # a new game began in this call: the record starts here
            self.origin, self.game = self.chain.origin, self.chain.game - (self.chain.resets - resets_before - 1)
            self.calls, self.resets = [], []
        else:  # the game went on (a lost life, say): replay must make this call too
            self.calls.append(np.zeros(self._action_size))
            self.resets.append(True)
        self.last = (observation, info)
        return observation, info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        """The env steps the action as it is recorded, so that a replay gives it exactly the same values."""
        flat = np.asarray(action, dtype=np.float64).reshape(-1)
        observation, reward, terminated, truncated, info = self.env.step(self._action(flat))
        self.calls.append(flat)
        self.resets.append(False)
        self.last = (observation, info)
        return observation, reward, terminated, truncated, info

    def _action(self, flat: np.ndarray) -> Any:
        """A recorded action as the env takes it: the space's shape, and its dtype (float64 for float spaces)."""
        return flat.reshape(self._action_shape).astype(self._action_dtype)[()]

    def replay(self, calls: np.ndarray, resets: np.ndarray, observation_digest: int) -> bool:
        """Make the recorded calls again, right after the reset that began the game; whether the env arrived at
        the recorded last observation.  A game that ends or starts anew where the record goes on did not replay."""
        for index, (flat, is_reset) in enumerate(zip(calls, resets)):
            if is_reset:
                resets_before = self.chain.resets
                self.reset()
                if self.chain.resets != resets_before:
                    return False
                continue
            _, _, terminated, truncated, _ = self.step(flat)
            if (terminated or truncated) and index + 1 < len(calls) and not resets[index + 1]:
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
    """The task's vector env where ``carried`` left it (new chains of games from ``seed`` where nothing is carried).

    ``key`` is (run fingerprint, task index): where this worker may have kept the env from the task's last job.
    Sub-envs whose episode ended on the last job's last step are reset before the job's first step.
    """
    started = time.perf_counter()
    kept = _TASK_ENVS.get(key, lambda: _KeptEnv(envs.make_vector_env(config, config.num_envs, innermost=SeededResets, outermost=ReplayableEpisode)))
    vector_env, kept_digest, kept.digest = kept.vector_env, kept.digest, None
    if carried is None:
        cursor = EnvCursor.reset(vector_env, env_seed(seed), env)  # sub-env i starts its chain from seed + i
        return Resumed(vector_env, cursor, 0, 0, time.perf_counter() - started, False)

    carry = Carry.of(carried)
    wrappers: list[ReplayableEpisode] = list(vector_env.envs)
    hit = kept_digest == carry.digest()
    restart = np.zeros(len(wrappers), dtype=bool)
    replayed_steps = 0
    if not hit:  # begin every sub-env's game again, then make its recorded calls
        for wrapper, origin, game in zip(wrappers, carry.origins, carry.games):
            wrapper.chain.continue_chain(int(origin), int(game))
        vector_env.reset(seed=[chain_seed(int(origin), int(game)) for origin, game in zip(carry.origins, carry.games)])
        offsets = np.concatenate([[0], np.cumsum(carry.lengths)])
        for index, wrapper in enumerate(wrappers):
            calls, resets = carry.calls[offsets[index] : offsets[index + 1]], carry.resets[offsets[index] : offsets[index + 1]]
            replayed_steps += int(np.count_nonzero(~resets))
            restart[index] = not wrapper.replay(calls, resets, int(carry.observation_digests[index]))
    reset = carry.ended.astype(bool) | restart
    if reset.any():  # an ended episode's sub-env resets as its autoreset would; one that did not replay starts a new game
        seeds: list[int | None] = [None] * len(wrappers)
        for index in np.flatnonzero(restart):
            origin, game = int(carry.origins[index]), int(carry.games[index]) + 1
            wrappers[index].chain.continue_chain(origin, game)
            seeds[index] = chain_seed(origin, game)
        vector_env.reset(seed=seeds, options={"reset_mask": reset})
    episode_return, episode_length, discounted_return = carry.episode_return.copy(), carry.episode_length.copy(), carry.discounted_return.copy()
    episode_return[reset], episode_length[reset], discounted_return[reset] = 0.0, 0, 0.0
    observation, features, mask = _last_observation(vector_env, env)
    cursor = EnvCursor(features, mask, np.zeros(len(wrappers), dtype=bool), episode_return, episode_length, discounted_return, observation)
    return Resumed(vector_env, cursor, replayed_steps, int(restart.sum()), time.perf_counter() - started, hit)


def capture(key: tuple[str, int], vector_env: Any, cursor: EnvCursor) -> Carry:
    """The carry of a task's envs at the end of its job (``cursor`` from its last round); the worker keeps the env."""
    wrappers: list[ReplayableEpisode] = list(vector_env.envs)
    calls = [row for wrapper in wrappers for row in wrapper.calls]
    carry = Carry(
        origins=np.array([wrapper.origin for wrapper in wrappers], dtype=np.int64),
        games=np.array([wrapper.game for wrapper in wrappers], dtype=np.int64),
        ended=np.asarray(cursor.ended, dtype=bool),
        lengths=np.array([len(wrapper.calls) for wrapper in wrappers], dtype=np.int64),
        calls=np.stack(calls) if calls else np.zeros((0, wrappers[0]._action_size)),
        resets=np.array([flag for wrapper in wrappers for flag in wrapper.resets], dtype=bool),
        observation_digests=np.array([observation_digest_of(wrapper.observation_space, wrapper.last[0]) for wrapper in wrappers], dtype=np.int64),
        episode_return=np.asarray(cursor.episode_return, dtype=np.float64),
        episode_length=np.asarray(cursor.episode_length, dtype=np.int64),
        discounted_return=np.asarray(cursor.discounted_return, dtype=np.float64),
    )
    _TASK_ENVS.get(key, lambda: _KeptEnv(vector_env)).digest = carry.digest()
    return carry


def bound_bytes(num_envs: int, action_size: int, game_calls: int) -> int:
    """The most bytes one task's carry takes with games of at most ``game_calls`` calls."""
    return num_envs * (BYTES_PER_ENV + game_calls * (action_size * 8 + 1))


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


def games_in_progress(vector_env: Any) -> np.ndarray:
    """(origin, game) of each sub-env's game in progress: ``game_seeds`` turns them into the games' seeds."""
    return np.array([(wrapper.chain.origin, wrapper.chain.game) for wrapper in vector_env.envs], dtype=np.int64)


def game_seeds(games: np.ndarray) -> np.ndarray:
    """The seed each (origin, game) row's game began with (``env.reset(seed=...)`` starts it again), derived once
    per distinct game: a derivation costs more than a CartPole step."""
    distinct, index = np.unique(games.reshape(-1, 2), axis=0, return_inverse=True)
    return np.array([chain_seed(int(origin), int(game)) for origin, game in distinct], dtype=np.int64)[index.reshape(-1)]


def _last_observation(vector_env: Any, env: EnvInfo) -> tuple[Any, dict[str, np.ndarray], np.ndarray | None]:
    """Every sub-env's last observation, its features and mask, batched as the vector env would."""
    wrappers = vector_env.envs
    space = vector_env.single_observation_space
    observations = concatenate(space, [wrapper.last[0] for wrapper in wrappers], create_empty_array(space, len(wrappers)))
    if env.action_mask is None:
        return observations, env.observation.features(observations), None
    masks = [env.mask(wrapper.last[0], wrapper.last[1]) for wrapper in wrappers]
    full = np.ones(env.action_dim, dtype=bool)
    return observations, env.observation.features(observations), np.stack([full if mask is None else np.asarray(mask, dtype=bool).reshape(-1) for mask in masks])
