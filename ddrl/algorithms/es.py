"""Evolution strategies: OpenAI-ES (Salimans et al. 2017) and ARS V2-t (Mania et al. 2018).

Both search directly in parameter space with mirrored (antithetic) Gaussian perturbations.  Per iteration:

1. The driver broadcasts the parameters theta, the observation normalizer and one seed per perturbation
   direction k = 0..N-1, derived from (run seed, iteration, k).  The noise eps_k ~ N(0, I) is a pure function
   of its seed, so nobody ever ships it: tasks and driver regenerate it.
2. Task t takes its contiguous slice of the N seeds and, for each, runs ``episodes_per_perturbation``
   episodes with theta + sigma * eps_k and as many with theta - sigma * eps_k, on the same env seeds (common
   random numbers).  It returns, keyed by seed, the mean return of each half, the episode lengths and the
   moments of the observations it saw: O(N) numbers per iteration, not O(parameters).
3. The driver turns the returns into an update:

   * OpenAI-ES ranks all 2N returns together (centered ranks in [-0.5, 0.5]), estimates the gradient
     g = 1 / (2 N sigma) * sum_k (rank(R+_k) - rank(R-_k)) eps_k and takes an Adam step on -g + l2_coef * theta.
   * ARS V2-t keeps the b = ``top_directions`` directions with the largest max(R+_k, R-_k) and steps
     theta += alpha / (b sigma_R) * sum_k (R+_k - R-_k) eps_k, sigma_R the std of those 2b returns.

   Either way the noise is regenerated from the seeds: N x n random normals per iteration on the driver for
   n parameters.  It then folds the tasks' observation moments into the normalizer (Chan et al., task order).

Policies are ``ddrl.networks`` MLPs over the observation's vector features (``hidden_sizes: []`` is ARS's linear
policy, started at zero), acting deterministically by the action space's greedy rule (``ddrl.spaces``: argmax,
per-dimension argmax, logit > 0, or the clipped output; masked envs' invalid actions never taken).  Image
observations need PPO's CNNs.  Rollouts step a whole vector env
with one perturbation per sub-env, the batched forward pass written in NumPy (one weight matrix per sub-env).
"""

from __future__ import annotations

import abc
import math
import time
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from ddrl import envs as envs_module
from ddrl.algorithms import PolicyOfParameters
from ddrl.checkpoint import State
from ddrl.collective import ALONE, Collective
from ddrl.config import Config, ConfigError, StrictModel
from ddrl.envs import EnvInfo
from ddrl.merge import MergedResult, TaskOutput
from ddrl.normalizer import Moments, moments_from_state, moments_to_state, normalize
from ddrl.networks import build_actor
from ddrl.policy import Policy
from ddrl.seeding import Stream, derive_seed, task_slice
from ddrl.worker_cache import WorkerCache

ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON = 0.9, 0.999, 1e-8
PERTURBABLE = ("learning_rate", "sigma")
"""Hyperparameters population-based training may change during a run (``ddrl.sweeps``)."""


SYNC_MODES = ("parameters",)
"""ES has no gradients to sum: its tasks return the returns of their perturbations, which the driver steps by."""


class Hyperparameters(StrictModel):
    """The ``es:`` section of a config; names as in the OpenAI-ES and ARS papers."""

    variant: Literal["openai", "ars"] = Field("openai", description="OpenAI-ES (ranks + Adam) or ARS V2-t (top-b).")
    num_directions: int = Field(32, ge=1, description="N: mirrored perturbation pairs per iteration (2N rollouts).")
    sigma: float = Field(0.02, gt=0, description="Perturbation std (ARS's nu).")
    learning_rate: float = Field(0.01, gt=0, description="Adam step size (OpenAI-ES) or alpha (ARS).")
    l2_coef: float = Field(0.005, ge=0, description="OpenAI-ES weight decay, added to the Adam direction.")
    top_directions: int | None = Field(None, ge=1, description="ARS b: directions kept per update; all by default.")
    episodes_per_perturbation: int = Field(1, ge=1, description="Episodes per half; their mean return is the score.")
    episode_cap_factor: float | None = Field(
        None, gt=0, description="Cap episodes at this multiple of last iteration's mean episode length (OpenAI used 2)."
    )
    reward_shift: float = Field(0.0, description="Subtracted from every training reward (ARS removes Hopper's survival bonus).")
    hidden_sizes: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list, description="[] is a linear policy.")
    activation: Literal["tanh", "relu"] = "tanh"
    normalize_observation: bool = Field(True, description="Policies act on observations standardized by the running moments.")
    task_scaling: Literal["directions", "none"] = Field(
        "directions", description="With more tasks than num_directions, give every task a direction of its own "
        "(top_directions grows in proportion), so more tasks mean a better gradient estimate; none keeps num_directions "
        "and refuses more tasks than directions."
    )

    @model_validator(mode="after")
    def _top_directions_fit(self) -> "Hyperparameters":
        if self.top_directions is not None and self.top_directions > self.num_directions:
            raise ValueError(f"top_directions ({self.top_directions}) must be at most num_directions ({self.num_directions})")
        return self


def directions(config: Config) -> tuple[int, int | None]:
    """(N, b): the directions each iteration perturbs and ARS keeps, after ``task_scaling``.

    Up to num_directions tasks split the directions (strong scaling: the same estimate, sooner).  Past that, each
    task takes one direction of its own, as OpenAI-ES and ARS grow their populations with their workers at the same
    step size: the estimate's variance falls as 1 / N, and ARS keeps the same share b / N of the best.
    """
    hp = config.hyperparameters
    if hp.task_scaling == "none" or config.spark.num_tasks <= hp.num_directions:
        return hp.num_directions, hp.top_directions
    num_directions = config.spark.num_tasks
    top = None if hp.top_directions is None else math.ceil(hp.top_directions * num_directions / hp.num_directions)
    return num_directions, top


# ---- seeds and noise ---------------------------------------------------------------------------------------


def perturbation_seeds(run_seed: int, iteration: int, num_directions: int) -> list[int]:
    """The seed of each perturbation direction of an iteration: derive_seed(run seed, iteration, k).

    For k < num_tasks these equal the trainer's task seeds (same stream); a task seed only reseeds the global
    generators, which ES never draws from, so the two uses do not interact.
    """
    return [derive_seed(run_seed, iteration, k, Stream.PERTURBATION) for k in range(num_directions)]


def perturbation_noise(seed: int, size: int) -> np.ndarray:
    """eps ~ N(0, I) of ``size`` float32 values, the same in every process for the same seed."""
    return np.random.default_rng(int(seed)).standard_normal(size, dtype=np.float32)


def episode_seed(perturbation_seed: int, episode: int) -> int:
    """The env seed of an episode: both mirrored halves of a perturbation use it (common random numbers)."""
    return int(np.random.SeedSequence([int(perturbation_seed), episode]).generate_state(1)[0])


# ---- the update math ---------------------------------------------------------------------------------------


def centered_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks scaled to [-0.5, 0.5] (Salimans et al.): the smallest value gets -0.5, the largest 0.5.

    Ties are ranked in index order (stable sort), so the result is reproducible.
    """
    values = np.asarray(values).ravel()
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    return ranks / max(len(values) - 1, 1) - 0.5


def noise_weighted_sum(weights: np.ndarray, seeds: np.ndarray, size: int) -> np.ndarray:
    """sum_k weights[k] * eps_k, regenerating each eps_k from its seed (float64 accumulation, seed order).

    Cost on the driver: one ``size``-vector of normals per seed, that is N x n random normals per iteration
    for N directions and n parameters (about 1 ns each: 10^8 normals take a few tenths of a second).
    """
    total = np.zeros(size, dtype=np.float64)
    for weight, seed in zip(weights, seeds):
        total += float(weight) * perturbation_noise(int(seed), size)
    return total


def mirrored_gradient(returns_pos: np.ndarray, returns_neg: np.ndarray, seeds: np.ndarray, sigma: float, size: int) -> np.ndarray:
    """The mirrored-sampling estimate of the gradient of E[F(theta + sigma eps)]:

    g = 1 / (2 N sigma) * sum_k (F(theta + sigma eps_k) - F(theta - sigma eps_k)) eps_k.
    """
    return noise_weighted_sum(np.asarray(returns_pos) - np.asarray(returns_neg), seeds, size) / (2 * len(seeds) * sigma)


# ---- the policy, batched over perturbations ----------------------------------------------------------------


def layer_shapes(env: EnvInfo, hidden_sizes: list[int]) -> list[tuple[int, int]]:
    """(out, in) of each Linear layer of ``build_actor``, in the order of its flat parameter vector."""
    sizes = [env.observation_dim, *hidden_sizes, env.action_dim]
    return list(zip(sizes[1:], sizes[:-1]))


def batched_forward(params: np.ndarray, observations: np.ndarray, shapes: list[tuple[int, int]], activation: str) -> np.ndarray:
    """The actor's output for ``observations[i]`` under ``params[i]`` (flat, in torch's parameter order)."""
    hidden = observations
    offset = 0
    for layer, (size_out, size_in) in enumerate(shapes):
        weight = params[:, offset : offset + size_out * size_in].reshape(-1, size_out, size_in)
        offset += size_out * size_in
        bias = params[:, offset : offset + size_out]
        offset += size_out
        hidden = np.matmul(weight, hidden[:, :, None])[:, :, 0] + bias
        if layer < len(shapes) - 1:
            hidden = np.tanh(hidden) if activation == "tanh" else np.maximum(hidden, 0.0)
    return hidden


# ---- the algorithms ----------------------------------------------------------------------------------------


class EvolutionStrategy(PolicyOfParameters, abc.ABC):
    """What OpenAI-ES and ARS share: seeds, rollouts, the normalizer and the policy.  Subclasses ``_step``."""

    def __init__(self, config: Config, env: EnvInfo) -> None:
        self.config = config
        self.env = env
        self.hp: Hyperparameters = config.hyperparameters
        self.num_directions, self.top_directions = directions(config)
        self.shapes = layer_shapes(env, self.hp.hidden_sizes)
        self.num_params = sum(size_out * size_in + size_out for size_out, size_in in self.shapes)

    @property
    def architecture(self) -> dict[str, Any]:
        return {"hidden_sizes": list(self.hp.hidden_sizes), "activation": self.hp.activation}

    # ---- driver side ---------------------------------------------------------------------------------------
    def initial_state(self) -> State:
        """Zero parameters for a linear policy (as in ARS), ``build_actor``'s initialization for an MLP."""
        if self.hp.hidden_sizes:
            torch.manual_seed(derive_seed(self.config.seed, 0, 0, Stream.INITIALIZATION))
            actor = build_actor(self.env.observation, self.env.action_dim, self.architecture)
            params = torch.nn.utils.parameters_to_vector(actor.parameters()).detach().numpy().astype(np.float32)
        else:
            params = np.zeros(self.num_params, dtype=np.float32)
        return {
            "params": params,
            **moments_to_state("obs", Moments.empty((self.env.observation_dim,))),
            "mean_episode_length": np.array(0.0),
            **self._optimizer_state(params),
        }

    def task_payload(self, state: State, iteration: int) -> dict[str, Any]:
        """theta, the iteration's direction seeds, the normalizer and the episode cap: O(parameters + N)."""
        obs = moments_from_state("obs", state)
        return {
            "params": state["params"],
            "perturbation_seeds": perturbation_seeds(self.config.seed, iteration, self.num_directions),
            "obs_mean": obs.mean,
            "obs_variance": obs.variance,
            "episode_step_cap": self._episode_step_cap(state),
        }

    def _episode_step_cap(self, state: State) -> int:
        """episode_cap_factor x last iteration's mean episode length, rounded up; 0 (no cap) when off or unknown."""
        mean_length = float(state["mean_episode_length"])
        if self.hp.episode_cap_factor is None or mean_length == 0:
            return 0
        return math.ceil(self.hp.episode_cap_factor * mean_length)

    def apply(self, state: State, result: MergedResult, iteration: int) -> tuple[State, dict[str, float]]:
        """Gather the directions' returns in task order, step theta, fold in the observation moments."""
        tasks = result.tasks
        seeds = np.concatenate([task["seeds"] for task in tasks])
        returns_pos = np.concatenate([task["returns_pos"] for task in tasks])
        returns_neg = np.concatenate([task["returns_neg"] for task in tasks])
        theta = state["params"].astype(np.float64)
        step, optimizer_state, metrics = self._step(theta, state, seeds, returns_pos, returns_neg)
        params = (theta + step).astype(np.float32)

        obs = moments_from_state("obs", state)
        for task in tasks:
            obs = obs.combine(Moments(task["obs_count"], task["obs_mean"], task["obs_m2"]))
        lengths = np.concatenate([task["episode_lengths"] for task in tasks])
        population = np.concatenate([returns_pos, returns_neg])
        new_state = {
            "params": params,
            **moments_to_state("obs", obs),
            "mean_episode_length": np.array(float(lengths.mean()) if len(lengths) else 0.0),
            **optimizer_state,
        }
        metrics.update(
            population_return_mean=float(population.mean()),
            population_return_max=float(population.max()),
            population_return_std=float(population.std()),
            update_norm=float(np.linalg.norm(params - state["params"])),
            directions=float(len(seeds)),
            episode_step_cap=float(self._episode_step_cap(state)),
            rollout_s=float(np.mean([task["rollout_s"] for task in tasks])),
        )
        return new_state, metrics

    @abc.abstractmethod
    def _optimizer_state(self, params: np.ndarray) -> State:
        """The update rule's own state (for example Adam's moments) before the first iteration."""

    @abc.abstractmethod
    def _step(
        self, theta: np.ndarray, state: State, seeds: np.ndarray, returns_pos: np.ndarray, returns_neg: np.ndarray
    ) -> tuple[np.ndarray, State, dict[str, float]]:
        """The parameter step from the directions' seeds and returns, the new update-rule state, metrics."""

    def _policy(self, params: np.ndarray, obs_mean: np.ndarray, obs_variance: np.ndarray, obs_count: float | None) -> Policy:
        """theta as a ``ddrl.policy.Policy`` (the same actor ``ddrl.load_policy`` rebuilds)."""
        actor = build_actor(self.env.observation, self.env.action_dim, self.architecture, initialize=False)
        torch.nn.utils.vector_to_parameters(torch.as_tensor(params, dtype=torch.float32), actor.parameters())
        normalized = self.hp.normalize_observation
        return Policy(actor, self.env, self.architecture, obs_mean if normalized else None, obs_variance if normalized else None)

    def task_carry_bytes(self) -> int:
        """Nothing: ES plays whole episodes within a task."""
        return 0

    def task_result_bytes(self) -> int:
        """Nothing per parameter: tasks return their directions' returns keyed by seed, O(N) numbers."""
        return 0

    # ---- executor side -------------------------------------------------------------------------------------
    def run_task(self, payload: dict[str, Any], task_index: int, seed: int, collective: Collective = ALONE) -> TaskOutput:
        """Evaluate this task's slice of the directions, both halves on the same env seeds.

        Directions run in waves of ``num_envs``, one per sub-env; a wave resets the vector env with a seed
        derived from its first direction's seed and the episode number, and its mirrored wave resets with the
        same seed, so direction k meets the same start states with +eps_k and -eps_k.  Start states thus
        depend on the config (num_envs, num_tasks, num_directions) and the run seed, never on the executor.
        The task seed is not needed: all randomness comes from the direction seeds.
        """
        hp = self.hp
        started = time.perf_counter()
        all_seeds = payload["perturbation_seeds"]
        seeds = all_seeds[task_slice(task_index, self.config.spark.num_tasks, len(all_seeds))]
        vector_env = self._vector_env()
        num_envs = vector_env.num_envs
        theta = payload["params"]

        returns = {+1: np.zeros(len(seeds)), -1: np.zeros(len(seeds))}
        episode_returns, episode_lengths, observations = [], [], []
        # One wave per (chunk of num_envs directions, episode, sign): sub-env i runs direction chunk[i].
        for start in range(0, len(seeds), num_envs):
            chunk = seeds[start : start + num_envs]
            noise = np.zeros((num_envs, self.num_params), dtype=np.float32)  # idle sub-envs run theta
            noise[: len(chunk)] = [perturbation_noise(s, self.num_params) for s in chunk]
            for episode in range(hp.episodes_per_perturbation):
                for sign in (+1, -1):
                    params = theta + sign * hp.sigma * noise
                    raw_returns, lengths, seen = self._rollout(vector_env, params, len(chunk), episode_seed(chunk[0], episode), payload)
                    returns[sign][start : start + len(chunk)] += (raw_returns - hp.reward_shift * lengths) / hp.episodes_per_perturbation
                    episode_returns.append(raw_returns)
                    episode_lengths.append(lengths)
                    observations.append(seen)

        obs_moments = Moments.of(np.concatenate(observations))  # build() ensures every task has a direction
        lengths = np.concatenate(episode_lengths)
        return TaskOutput(
            weight=len(lengths),
            weighted={},
            records={
                "seeds": np.array(seeds, dtype=np.int64),
                "returns_pos": returns[+1],
                "returns_neg": returns[-1],
                "obs_count": obs_moments.count,
                "obs_mean": obs_moments.mean,
                "obs_m2": obs_moments.m2,
                "rollout_s": time.perf_counter() - started,
            },
            env_steps=int(lengths.sum()),
            episode_returns=np.concatenate(episode_returns),
            episode_lengths=lengths,
        )

    def _rollout(
        self, vector_env: Any, params: np.ndarray, active: int, env_seed: int, payload: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One episode in each of the first ``active`` sub-envs, sub-env i acting with ``params[i]``.

        Returns their returns, lengths and every observation they acted on.  Episodes end at termination,
        at the env's time limit, or at the payload's ``episode_step_cap`` (0: no cap).
        """
        env, cap = self.env, payload["episode_step_cap"]
        num_envs = vector_env.num_envs
        returns = np.zeros(num_envs)
        lengths = np.zeros(num_envs, dtype=np.int64)
        running = np.arange(num_envs) < active
        seen = []
        observation, info = vector_env.reset(seed=env_seed)
        while running.any():
            raw_obs = env.observation.features(observation)["vector"]
            seen.append(raw_obs[running])
            if self.hp.normalize_observation:
                obs = normalize(raw_obs, payload["obs_mean"], payload["obs_variance"], env.observation.normalized)
            else:
                obs = raw_obs.astype(np.float32)
            output = batched_forward(params, obs, self.shapes, self.hp.activation)
            action = env.action.greedy(output, env.mask(observation, info))
            observation, reward, terminated, truncated, info = vector_env.step(action)
            returns += np.where(running, reward, 0.0)
            lengths += running
            running &= ~(terminated | truncated)
            if cap:
                running &= lengths < cap
        return returns[:active], lengths[:active], np.concatenate(seen)

    def _vector_env(self) -> Any:
        """The vector env, built once per Python worker process and config: ``num_envs`` sub-envs, or as many as a
        task has directions where that is fewer (more tasks than waves of directions), since an idle sub-env would
        step for nothing.  On gymnasium's sync vector env the active sub-envs' episodes are the same either way (the
        wave's reset seeds sub-env i with its seed + i); a native vector env draws its start states for the whole
        batch, so there they differ from ddrl before 2026-12-06 for such configs (none of the shipped ones)."""
        per_task = math.ceil(self.num_directions / self.config.spark.num_tasks)
        num_envs = min(self.config.env.num_envs, per_task)
        return _WORKER_CACHE.get(self.config.fingerprint(), lambda: envs_module.make_vector_env(self.config.env, num_envs))


_WORKER_CACHE = WorkerCache(close=lambda vector_env: vector_env.close())


class OpenAIES(EvolutionStrategy):
    """OpenAI-ES: centered ranks of all 2N returns, mirrored gradient estimate, Adam with weight decay."""

    def _optimizer_state(self, params: np.ndarray) -> State:
        return {"adam_m": np.zeros_like(params), "adam_v": np.zeros_like(params), "adam_step": np.array(0.0)}

    def _step(
        self, theta: np.ndarray, state: State, seeds: np.ndarray, returns_pos: np.ndarray, returns_neg: np.ndarray
    ) -> tuple[np.ndarray, State, dict[str, float]]:
        hp, num = self.hp, len(seeds)
        ranks = centered_ranks(np.concatenate([returns_pos, returns_neg]))
        gradient = mirrored_gradient(ranks[:num], ranks[num:], seeds, hp.sigma, self.num_params)
        # Adam minimizes: descend on -gradient + l2_coef * theta.
        direction = -gradient + hp.l2_coef * theta
        t = float(state["adam_step"]) + 1
        m = ADAM_BETA1 * state["adam_m"] + (1 - ADAM_BETA1) * direction
        v = ADAM_BETA2 * state["adam_v"] + (1 - ADAM_BETA2) * direction**2
        step_size = hp.learning_rate * math.sqrt(1 - ADAM_BETA2**t) / (1 - ADAM_BETA1**t)
        step = -step_size * m / (np.sqrt(v) + ADAM_EPSILON)
        optimizer_state = {"adam_m": m.astype(np.float32), "adam_v": v.astype(np.float32), "adam_step": np.array(t)}
        return step, optimizer_state, {"gradient_norm": float(np.linalg.norm(gradient))}


class ARS(EvolutionStrategy):
    """ARS V2-t: the top b directions by max(R+, R-), step alpha / (b sigma_R) * sum (R+ - R-) eps."""

    def _optimizer_state(self, params: np.ndarray) -> State:
        return {}

    def _step(
        self, theta: np.ndarray, state: State, seeds: np.ndarray, returns_pos: np.ndarray, returns_neg: np.ndarray
    ) -> tuple[np.ndarray, State, dict[str, float]]:
        hp = self.hp
        b = min(self.top_directions or len(seeds), len(seeds))
        top = np.argsort(-np.maximum(returns_pos, returns_neg), kind="stable")[:b]
        sigma_r = float(np.concatenate([returns_pos[top], returns_neg[top]]).std())
        if sigma_r == 0.0:  # every kept rollout scored the same: no direction to follow
            return np.zeros_like(theta), {}, {"selected_return_std": 0.0}
        step = hp.learning_rate / (b * sigma_r) * noise_weighted_sum(returns_pos[top] - returns_neg[top], seeds[top], self.num_params)
        return step, {}, {"selected_return_std": sigma_r}


def check(config: Config) -> None:
    """Checks that span config sections, run when the config is loaded (before Spark starts)."""
    if directions(config)[0] < config.spark.num_tasks:
        raise ConfigError(
            f"es.num_directions: {config.hyperparameters.num_directions} directions cannot keep "
            f"spark.num_tasks={config.spark.num_tasks} tasks busy; use at least as many directions as tasks, or "
            "es.task_scaling: directions"
        )
    if config.init.policy is not None:
        raise ConfigError("init.policy: starting from a saved policy is for algo ppo")
    if config.output.record_experience is not None:
        raise ConfigError("output.record_experience: ES tasks play perturbed policies, not the policy being trained, and "
                          "keep no transitions; record with algo ppo, or record a trained ES policy's episodes with "
                          "jobs/evaluate.py --record")


def check_env(config: Config, env: EnvInfo) -> None:
    """Checks of the env's spaces against the config, run when a run is opened (before Spark starts)."""
    if env.observation.images:
        raise ConfigError(f"env.id: {config.env.id} has image observations; ES perturbs every parameter and acts with an MLP "
                          "on the vector features: use algo ppo, whose CNN encoders read images")


def build(config: Config, env: EnvInfo) -> EvolutionStrategy:
    """The algorithm of the config's ``es.variant``."""
    return ARS(config, env) if config.hyperparameters.variant == "ars" else OpenAIES(config, env)
