"""Gymnasium environments: checking a config's env, building vector envs, and evaluating a policy."""

from __future__ import annotations

import dataclasses
import importlib
import re
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from ddrl.config import ConfigError, EnvConfig


@dataclasses.dataclass(frozen=True)
class EnvInfo:
    """What a policy needs to know about an environment: shapes, action kind and bounds."""

    id: str
    observation_dim: int
    discrete: bool
    action_dim: int
    """Number of actions for a Discrete space, vector size for a Box."""
    action_low: tuple[float, ...] = ()
    action_high: tuple[float, ...] = ()
    reward_threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "EnvInfo":
        data = dict(data)
        data["action_low"] = tuple(data.get("action_low", ()))
        data["action_high"] = tuple(data.get("action_high", ()))
        return EnvInfo(**data)


def describe(env: EnvConfig) -> EnvInfo:
    """Build the env once and read its spaces; raise ``ConfigError`` naming the field if it cannot be used."""
    env_id = _registered_id(env.id)
    try:
        single = gym.make(env_id, **_make_kwargs(env))
    except gym.error.DependencyNotInstalled as error:
        raise ConfigError(f"env.id: {env.id} needs a missing dependency: {error}") from None
    except TypeError as error:
        raise ConfigError(f"env.kwargs: {env.id} rejected them: {_one_line(error)}") from None
    except Exception as error:  # an env's constructor may raise anything
        field = "env.kwargs" if env.kwargs else "env.id"
        raise ConfigError(f"{field}: {env.id} could not be created: {type(error).__name__}: {_one_line(error)}") from None
    try:
        observation_space, action_space = single.observation_space, single.action_space
        threshold = single.spec.reward_threshold if single.spec is not None else None
    finally:
        single.close()

    if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
        raise ConfigError(f"env.id: {env.id} has observation space {observation_space}; only 1-D Box is supported")
    observation_dim = int(observation_space.shape[0])
    if isinstance(action_space, gym.spaces.Discrete):
        if action_space.start != 0:
            raise ConfigError(f"env.id: {env.id} has a Discrete action space starting at {action_space.start}; only 0 is supported")
        return EnvInfo(env.id, observation_dim, True, int(action_space.n), reward_threshold=threshold)
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
            raise ConfigError(f"env.id: {env.id} has an unbounded Box action space; bounded actions are required")
        return EnvInfo(
            env.id,
            observation_dim,
            False,
            int(action_space.shape[0]),
            tuple(float(x) for x in action_space.low),
            tuple(float(x) for x in action_space.high),
            threshold,
        )
    raise ConfigError(f"env.id: {env.id} has action space {action_space}; only Discrete and 1-D Box are supported")


def make_vector_env(env: EnvConfig, num_envs: int) -> gym.vector.VectorEnv:
    """The env's native vector version where it has one, else a synchronous vector of single envs.

    Every vector env here autoresets on the step after an episode ends (``AutoresetMode.NEXT_STEP``).
    """
    vector_env = gym.make_vec(_registered_id(env.id), num_envs, **_make_kwargs(env))
    mode = vector_env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    if mode != AutoresetMode.NEXT_STEP:
        raise ConfigError(f"env.id: {env.id} vector env autoresets in mode {mode}; NEXT_STEP is required")
    return vector_env


def make_evaluation_env(env: EnvConfig, num_envs: int) -> gym.vector.VectorEnv:
    """A synchronous vector of single envs, each of which a ``reset(seed=[...])`` seeds on its own."""
    return gym.make_vec(_registered_id(env.id), num_envs, vectorization_mode="sync", **_make_kwargs(env))


def evaluate(
    act: Callable[[np.ndarray], np.ndarray],
    env: EnvConfig,
    episodes: int,
    seed: int | Sequence[int],
    vector_env: gym.vector.VectorEnv | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``episodes`` episodes in parallel, one per sub-env, with ``act`` on batches of observations.

    Episode i starts from ``seed + i``, or from ``seed[i]`` when ``seed`` is a sequence: each episode depends on
    its own seed and the policy only.  ``vector_env`` (from ``make_evaluation_env``, ``episodes`` sub-envs) is
    reused instead of building one.  Returns each episode's return and length, in episode order.
    """
    seeds = [seed + index for index in range(episodes)] if isinstance(seed, int) else [int(s) for s in seed]
    if len(seeds) != episodes:
        raise ValueError(f"{episodes} episodes need {episodes} seeds, got {len(seeds)}")
    own_env = vector_env is None
    vector_env = make_evaluation_env(env, episodes) if vector_env is None else vector_env
    try:
        observations, _ = vector_env.reset(seed=seeds)
        returns = np.zeros(episodes)
        lengths = np.zeros(episodes, dtype=np.int64)
        running = np.ones(episodes, dtype=bool)
        while running.any():
            observations, rewards, terminated, truncated, _ = vector_env.step(act(observations))
            returns += np.where(running, rewards, 0.0)
            lengths += running
            running &= ~(terminated | truncated)
        return returns, lengths
    finally:
        if own_env:
            vector_env.close()


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _make_kwargs(env: EnvConfig) -> dict[str, Any]:
    kwargs = dict(env.kwargs)
    if env.max_episode_steps is not None:
        kwargs["max_episode_steps"] = env.max_episode_steps
    return kwargs


def _registered_id(env_id: str) -> str:
    """A gymnasium id for ``env_id``, registering a user's 'package.module:ClassName' on first use."""
    if ":" not in env_id:
        if env_id not in gym.registry:
            raise ConfigError(f"env.id: unknown environment {env_id!r} (not in gymnasium's registry)")
        return env_id
    module_name, _, class_name = env_id.partition(":")
    registered = "ddrl-user/" + re.sub(r"\W", "_", env_id)
    if registered in gym.registry:
        return registered
    try:
        env_class = getattr(importlib.import_module(module_name), class_name)
    except ImportError as error:
        raise ConfigError(f"env.id: cannot import module {module_name!r}: {error}") from None
    except AttributeError:
        raise ConfigError(f"env.id: module {module_name!r} has no attribute {class_name!r}") from None
    if not (isinstance(env_class, type) and issubclass(env_class, gym.Env)):
        raise ConfigError(f"env.id: {env_id} is not a gymnasium.Env subclass")
    gym.register(id=registered, entry_point=env_class)
    return registered
