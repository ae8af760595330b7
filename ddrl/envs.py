"""Gymnasium environments: checking a config's env, building vector envs, and evaluating a policy."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
import re
from typing import Any, Callable, Literal, Sequence

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from ddrl import extras, spaces
from ddrl.config import ConfigError, EnvConfig, EnvPoolConfig
from ddrl.spaces import ActionSpec, ObservationPart, ObservationSpec


@dataclasses.dataclass(frozen=True)
class EnvInfo:
    """What a policy needs to know about an environment: how its observations and actions map to the network's
    inputs and outputs (``ddrl.spaces``), and where its valid-action mask comes from."""

    id: str
    observation: ObservationSpec
    action: ActionSpec
    reward_threshold: float | None = None
    action_mask: Literal["info", "observation"] | None = None
    """Where the mask of valid actions comes from: ``info[action_mask_key]``, the observation's part of that name, or nowhere."""
    action_mask_key: str = "action_mask"
    max_episode_steps: int | None = None
    """The training envs' time limit, where they have one."""

    @property
    def observation_dim(self) -> int:
        """Size of the vector features (``ddrl.spaces``): the observation's size for a 1-D Box."""
        return self.observation.vector_dim

    @property
    def discrete(self) -> bool:
        return self.action.kind == "discrete"

    @property
    def action_dim(self) -> int:
        """The network's output size: number of actions for Discrete, vector size for a 1-D Box."""
        return self.action.output_dim

    def mask(self, observation: Any, info: Any) -> np.ndarray | None:
        """The valid-action mask that goes with an observation (or a batch of them) and its info; None without masks."""
        return spaces.action_mask(self.action_mask, self.action_mask_key, observation, info or {})

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "observation": self.observation.to_dict(),
            "action": self.action.to_dict(),
            "reward_threshold": self.reward_threshold,
            "action_mask": self.action_mask,
            "action_mask_key": self.action_mask_key,
            "max_episode_steps": self.max_episode_steps,
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "EnvInfo":
        if "observation_dim" in data:  # policies saved before ddrl read every space: a 1-D Box in, Discrete or Box out
            observation = ObservationSpec((ObservationPart((), "box", (int(data["observation_dim"]),)),))
            if data["discrete"]:
                action = ActionSpec("discrete", (), (int(data["action_dim"]),))
            else:
                action = ActionSpec("box", (int(data["action_dim"]),), (), tuple(data["action_low"]), tuple(data["action_high"]))
            return EnvInfo(data["id"], observation, action, data.get("reward_threshold"))
        return EnvInfo(
            data["id"],
            ObservationSpec.from_dict(data["observation"]),
            ActionSpec.from_dict(data["action"]),
            data.get("reward_threshold"),
            data.get("action_mask"),
            data.get("action_mask_key", "action_mask"),
            data.get("max_episode_steps"),
        )


def describe(env: EnvConfig) -> EnvInfo:
    """Build the env once and read its spaces; raise ``ConfigError`` naming the field if it cannot be used."""
    env_id = _registered_id(env.id)
    wrappers, evaluation_wrappers = _wrappers(env), _wrappers(env, evaluation=True)  # every class imports
    try:
        single = gym.make(env_id, **_make_kwargs(env))
    except gym.error.DependencyNotInstalled as error:
        raise ConfigError(f"env.id: {env.id} needs a missing dependency: {error}") from None
    except TypeError as error:
        raise ConfigError(f"env.kwargs: {env.id} rejected them: {_one_line(error)}") from None
    except Exception as error:  # an env's constructor may raise anything
        if (missing := extras.missing_extra(error, f"env.id {env.id}")) is not None:
            raise missing from None
        field = "env.kwargs" if env.kwargs else "env.id"
        raise ConfigError(f"{field}: {env.id} could not be created: {type(error).__name__}: {_one_line(error)}") from None
    try:
        single = _wrapped(single, env, wrappers)
        observation_space, action_space = single.observation_space, single.action_space
        threshold = single.spec.reward_threshold if single.spec is not None else None
        max_episode_steps = single.spec.max_episode_steps if single.spec is not None else None
        try:
            observation, action = spaces.observation_spec(observation_space), spaces.action_spec(action_space)
        except spaces.SpaceError as error:
            raise ConfigError(f"env.id: {env.id} has {error}") from None
        mask = _mask_source(env, single, observation_space, action)
    finally:
        single.close()
    if env.envpool is not None:
        _check_envpool(env, observation_space, action_space)
    if [index for index, _ in evaluation_wrappers] != [index for index, _ in wrappers]:  # wrapped otherwise: same spaces?
        evaluation = _wrapped(gym.make(env_id, **_make_kwargs(env)), env, evaluation_wrappers)
        evaluation.close()
        if (evaluation.observation_space, evaluation.action_space) != (observation_space, action_space):
            raise ConfigError(f"env.wrappers: {env.id}'s evaluation envs have spaces {evaluation.observation_space}, "
                              f"{evaluation.action_space}; training envs {observation_space}, {action_space}")
    return EnvInfo(env.id, observation, action, threshold, mask, env.action_mask_key, max_episode_steps)


def _wrapped(single: gym.Env, env: EnvConfig, wrappers: list[tuple[int, Callable[[gym.Env], gym.Env]]]) -> gym.Env:
    """``single`` with ``wrappers`` applied; ``ConfigError`` names the one that fails (and closes the env)."""
    for index, wrap in wrappers:
        try:
            single = wrap(single)
        except Exception as error:  # a wrapper's constructor may raise anything
            single.close()
            raise ConfigError(f"env.wrappers.{index}: {env.wrappers[index].class_} could not wrap {env.id}: "
                              f"{type(error).__name__}: {_one_line(error)}") from None
    return single


def _mask_source(env: EnvConfig, single: gym.Env, observation_space: gym.Space, action: ActionSpec) -> str | None:
    """Where the env's valid-action mask comes from (``env.action_mask``; ``auto`` looks at the observation's parts
    and at the info of a reset), checked against the action space."""
    key = env.action_mask_key
    in_observation = isinstance(observation_space, gym.spaces.Dict) and key in observation_space.spaces
    if env.action_mask == "none":
        return None
    if env.action_mask == "observation" and not in_observation:
        raise ConfigError(f"env.action_mask: {env.id} has no observation part {key!r} (its observation space is {observation_space})")
    source = env.action_mask if env.action_mask != "auto" else "observation" if in_observation else None
    size = None
    if source == "observation":
        size = int(np.prod(observation_space.spaces[key].shape))
    elif env.action_mask in ("auto", "info"):
        _, info = single.reset(seed=0)
        if key in info:
            source, size = "info", int(np.asarray(info[key]).size)
        elif env.action_mask == "info":
            raise ConfigError(f"env.action_mask: {env.id} gives no info[{key!r}] on reset")
    if source is None:
        return None
    if not action.categorical:
        raise ConfigError(f"env.action_mask: {env.id} has {action.kind} actions; masks apply to Discrete and MultiDiscrete actions")
    if size != action.output_dim:
        raise ConfigError(f"env.action_mask: {env.id}'s mask {key!r} has {size} entries; its action space needs {action.output_dim}")
    return source


def make_env(env: EnvConfig, **kwargs: Any) -> gym.Env:
    """One evaluation env of the config, its evaluation wrappers applied (``kwargs`` such as ``render_mode`` go to
    ``gym.make``)."""
    single = gym.make(_registered_id(env.id), **_make_kwargs(env), **kwargs)
    for _, wrap in _wrappers(env, evaluation=True):
        single = wrap(single)
    return single


def make_vector_env(
    env: EnvConfig, num_envs: int, innermost: Callable[[gym.Env], gym.Env] | None = None, outermost: Callable[[gym.Env], gym.Env] | None = None
) -> gym.vector.VectorEnv:
    """The training vector env: EnvPool's where ``env.envpool`` says so, else the env's native vector version where
    it has one, else a synchronous vector of single envs.  ``innermost`` and ``outermost`` wrap every sub-env under
    and over the config's wrappers, in a synchronous vector of single envs (``.envs``) whatever the env offers.

    Every vector env here autoresets on the step after an episode ends (``AutoresetMode.NEXT_STEP``).
    """
    if env.envpool is not None and innermost is None and outermost is None:
        return SeededEnvPool(env.envpool, num_envs)
    wrappers = [wrap for wrap in (innermost, *(wrap for _, wrap in _wrappers(env)), outermost) if wrap is not None]
    mode = {"vectorization_mode": "sync"} if wrappers else {}  # a native vector env takes no per-env wrappers
    wrappers = wrappers or None
    vector_env = gym.make_vec(_registered_id(env.id), num_envs, wrappers=wrappers, **mode, **_make_kwargs(env))
    mode = vector_env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    if mode != AutoresetMode.NEXT_STEP:
        raise ConfigError(f"env.id: {env.id} vector env autoresets in mode {mode}; NEXT_STEP is required")
    return vector_env


class SeededEnvPool(gym.vector.VectorWrapper):
    """An EnvPool vector env that ``reset(seed=s)`` reseeds as gymnasium's vector envs do, sub-env ``i`` from
    ``s + i``.  EnvPool takes seeds only when it is made (its reset ignores them), so a seeded reset makes it anew:
    a task's rollout then depends on its seed alone, not on what the worker's envs ran before."""

    def __init__(self, config: EnvPoolConfig, num_envs: int, seed: int = 0) -> None:
        self.config = config
        super().__init__(_make_envpool(config, num_envs, seed))

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if seed is not None:
            first = seed if isinstance(seed, int) else seed[0]
            if not isinstance(seed, int) and list(seed) != list(range(first, first + len(seed))):
                raise ValueError(f"EnvPool seeds its envs s, s + 1, ...: seeds {list(seed)} cannot be given")
            num_envs = self.env.num_envs
            self.env.close()
            self.env = _make_envpool(self.config, num_envs, first)
        return self.env.reset(options=options)


def _make_envpool(config: EnvPoolConfig, num_envs: int, seed: int) -> gym.vector.VectorEnv:
    import envpool

    return envpool.make_gymnasium(config.id, num_envs=num_envs, seed=seed, **{"num_threads": 1, **config.kwargs})


def _check_envpool(env: EnvConfig, observation_space: gym.Space, action_space: gym.Space) -> None:
    """Refuse an ``env.envpool`` that cannot be made, or whose spaces differ from the gymnasium training env's."""
    assert env.envpool is not None
    extras.require("envpool", "env.envpool")
    try:
        pool = _make_envpool(env.envpool, 1, 0)
    except Exception as error:  # EnvPool raises plain errors for unknown ids and options
        raise ConfigError(f"env.envpool: EnvPool could not make {env.envpool.id!r}: {type(error).__name__}: {_one_line(error)}") from None
    found = (pool.single_observation_space, pool.single_action_space)
    pool.close()
    if found != (observation_space, action_space):
        raise ConfigError(f"env.envpool: EnvPool's {env.envpool.id} has spaces {found[0]}, {found[1]}; the gymnasium training env "
                          f"({env.id} and its wrappers) {observation_space}, {action_space}")


def make_evaluation_env(env: EnvConfig, num_envs: int) -> gym.vector.VectorEnv:
    """A synchronous vector of single envs, each of which a ``reset(seed=[...])`` seeds on its own, with the
    config's evaluation wrappers."""
    wrappers = [wrap for _, wrap in _wrappers(env, evaluation=True)] or None
    return gym.make_vec(_registered_id(env.id), num_envs, vectorization_mode="sync", wrappers=wrappers, **_make_kwargs(env))


def evaluate(
    act: Callable[[Any, Any], np.ndarray],
    env: EnvConfig,
    episodes: int,
    seed: int | Sequence[int],
    vector_env: gym.vector.VectorEnv | None = None,
    on_step: Callable[..., None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``episodes`` episodes in parallel, one per sub-env, with ``act(observations, infos)`` on batches.

    Episode i starts from ``seed + i``, or from ``seed[i]`` when ``seed`` is a sequence: each episode depends on
    its own seed and the policy only.  ``vector_env`` (from ``make_evaluation_env``, ``episodes`` sub-envs) is
    reused instead of building one.  ``on_step(observations, infos, actions, rewards, terminated, truncated,
    running)`` sees every step (``running``: which episodes the step belongs to).  Returns each episode's return
    and length, in episode order.
    """
    seeds = [seed + index for index in range(episodes)] if isinstance(seed, int) else [int(s) for s in seed]
    if len(seeds) != episodes:
        raise ValueError(f"{episodes} episodes need {episodes} seeds, got {len(seeds)}")
    own_env = vector_env is None
    vector_env = make_evaluation_env(env, episodes) if vector_env is None else vector_env
    try:
        observations, infos = vector_env.reset(seed=seeds)
        returns = np.zeros(episodes)
        lengths = np.zeros(episodes, dtype=np.int64)
        running = np.ones(episodes, dtype=bool)
        while running.any():
            actions = act(observations, infos)
            next_observations, rewards, terminated, truncated, next_infos = vector_env.step(actions)
            if on_step is not None:
                on_step(observations, infos, actions, rewards, terminated, truncated, running.copy())
            observations, infos = next_observations, next_infos
            returns += np.where(running, rewards, 0.0)
            lengths += running
            running &= ~(terminated | truncated)
        return returns, lengths
    finally:
        if own_env:
            vector_env.close()


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


@functools.cache
def _mujoco_warnings_to_log() -> None:
    """MuJoCo writes its warnings to MUJOCO_LOG.TXT in the working directory, and gymnasium's own models raise one
    at every env they build (a deprecated compiler attribute): send them to ddrl's log instead, at debug level."""
    import mujoco

    mujoco.set_mju_user_warning(lambda message: logging.getLogger("ddrl").debug("MuJoCo: %s", message))


def _make_kwargs(env: EnvConfig) -> dict[str, Any]:
    kwargs = dict(env.kwargs)
    if env.max_episode_steps is not None:
        kwargs["max_episode_steps"] = env.max_episode_steps
    return kwargs


def _wrappers(env: EnvConfig, evaluation: bool = False) -> list[tuple[int, Callable[[gym.Env], gym.Env]]]:
    """The config's wrappers of training envs (or of ``evaluation`` envs) in order, each as its index in
    ``env.wrappers`` and a callable bound to its kwargs; ``ConfigError`` names a bad one."""
    wrappers = []
    for index, wrapper in enumerate(env.wrappers):
        if wrapper.use not in ("always", "evaluation" if evaluation else "training"):
            continue
        module_name, _, class_name = wrapper.class_.partition(":")
        field = f"env.wrappers.{index}.class: {env.id}'s wrapper"
        try:
            wrapper_class = getattr(importlib.import_module(module_name), class_name)
        except ImportError as error:
            raise ConfigError(f"{field}: cannot import module {module_name!r}: {error}") from None
        except AttributeError:
            raise ConfigError(f"{field}: module {module_name!r} has no attribute {class_name!r}") from None
        if not callable(wrapper_class):
            raise ConfigError(f"{field}: {wrapper.class_} is not a class or function")
        wrappers.append((index, functools.partial(wrapper_class, **wrapper.kwargs)))
    return wrappers


def _registered_id(env_id: str) -> str:
    """A gymnasium id for ``env_id``: a registered id, an id that importing a module registers ('module:EnvId'),
    or a user's 'package.module:ClassName', registered on first use."""
    if ":" not in env_id:
        if env_id not in gym.registry:
            raise ConfigError(f"env.id: unknown environment {env_id!r} (not in gymnasium's registry)")
        if "mujoco" in str(gym.registry[env_id].entry_point):
            _mujoco_warnings_to_log()
        return env_id
    module_name, _, class_name = env_id.partition(":")
    registered = "ddrl-user/" + re.sub(r"\W", "_", env_id)
    if registered in gym.registry:
        return registered
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        if (missing := extras.missing_extra(error, f"env.id {env_id}")) is not None:
            raise missing from None
        raise ConfigError(f"env.id: cannot import module {module_name!r}: {error}") from None
    if class_name in gym.registry:  # 'ale_py:ALE/Breakout-v5': a module whose import registers the id
        return class_name
    try:
        env_class = getattr(module, class_name)
    except AttributeError:
        raise ConfigError(f"env.id: module {module_name!r} has neither attribute nor registered id {class_name!r}") from None
    if not (isinstance(env_class, type) and issubclass(env_class, gym.Env)):
        raise ConfigError(f"env.id: {env_id} is not a gymnasium.Env subclass")
    gym.register(id=registered, entry_point=env_class)
    return registered
