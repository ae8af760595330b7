"""Proximal Policy Optimization (Schulman et al. 2017) with parameter averaging across Spark tasks.

Every task starts from the broadcast parameters and Adam moments, collects ``num_envs x num_steps``
transitions, computes GAE(lambda) advantages, runs ``update_epochs x num_minibatches`` Adam steps on the
clipped surrogate objective, and returns its parameters and Adam moments weighted by its sample count.  The
driver's new parameters are the sample-weighted average.  Reads top to bottom like CleanRL's ppo.py.
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from ddrl import envs as envs_module
from ddrl.checkpoint import State
from ddrl.config import Config, StrictModel
from ddrl.envs import EnvInfo
from ddrl.merge import MergedResult, TaskOutput
from ddrl.normalizer import EPSILON, Moments, standardize
from ddrl.policy import Policy, build_actor, mlp
from ddrl.seeding import Stream, derive_seed


class Hyperparameters(StrictModel):
    """The ``ppo:`` section of a config; names as in the PPO paper and CleanRL."""

    num_steps: int = Field(128, ge=1, description="Steps per env per task and iteration.")
    learning_rate: float = Field(2.5e-4, gt=0, le=1)
    anneal_lr: bool = Field(True, description="Decay the learning rate linearly to 0 over the step budget.")
    gamma: float = Field(0.99, gt=0, le=1)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    update_epochs: int = Field(4, ge=1)
    num_minibatches: int = Field(4, ge=1)
    norm_adv: bool = Field(True, description="Normalize advantages per minibatch.")
    clip_coef: float = Field(0.2, gt=0, le=1)
    clip_vloss: bool = True
    ent_coef: float = Field(0.0, ge=0)
    vf_coef: float = Field(0.5, ge=0)
    max_grad_norm: float = Field(0.5, gt=0)
    target_kl: float | None = Field(None, gt=0, description="Stop a task's epochs early above this approx KL.")
    hidden_sizes: list[int] = Field(default_factory=lambda: [64, 64], min_length=1)
    activation: Literal["tanh", "relu"] = "tanh"
    log_std_init: float = Field(0.0, ge=-5, le=2, description="Initial log std of Gaussian actions.")
    normalize_observation: bool = False
    normalize_reward: bool = False
    adam_eps: float = Field(1e-5, gt=0)


class ActorCritic(nn.Module):
    """Separate actor and critic MLPs; a categorical head for Discrete actions, a diagonal Gaussian for Box."""

    def __init__(self, env: EnvInfo, hp: Hyperparameters, initialize: bool = True) -> None:
        """``initialize=False`` skips the orthogonal initialization, for loading trained weights right after."""
        super().__init__()
        self.discrete = env.discrete
        self.critic = mlp(env.observation_dim, hp.hidden_sizes, 1, hp.activation, 1.0, initialize)
        self.actor = build_actor(env, self.architecture(hp), initialize)
        if not env.discrete:
            self.log_std = nn.Parameter(torch.full((env.action_dim,), hp.log_std_init))

    @staticmethod
    def architecture(hp: Hyperparameters) -> dict[str, Any]:
        return {"hidden_sizes": list(hp.hidden_sizes), "activation": hp.activation}

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)

    def log_prob_and_entropy(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.discrete:
            log_probs = torch.log_softmax(self.actor(obs), -1)
            log_prob = log_probs.gather(-1, action.long().unsqueeze(-1)).squeeze(-1)
            return log_prob, -(log_probs.exp() * log_probs).sum(-1)
        mean = self.actor(obs)
        entropy = (self.log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1).expand(len(mean))
        return self._gaussian_log_prob(mean, action), entropy

    def _gaussian_log_prob(self, mean: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        std = self.log_std.exp()
        return (-0.5 * ((action - mean) / std) ** 2 - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def flat_parameters(module: nn.Module) -> np.ndarray:
    return nn.utils.parameters_to_vector(module.parameters()).detach().numpy().astype(np.float32)


def load_flat_parameters(module: nn.Module, flat: np.ndarray) -> None:
    nn.utils.vector_to_parameters(torch.tensor(flat, dtype=torch.float32), module.parameters())


def numpy_actor(actor: nn.Sequential) -> list[tuple[np.ndarray, np.ndarray]]:
    """The actor's layers as (weight transposed, bias) NumPy views, for rollout steps without torch's per-call cost."""
    return [(layer.weight.detach().numpy().T, layer.bias.detach().numpy()) for layer in actor if isinstance(layer, nn.Linear)]


def actor_forward(layers: list[tuple[np.ndarray, np.ndarray]], obs: np.ndarray, activation: str) -> np.ndarray:
    """Logits (Discrete) or action means (Box) for a batch of observations: the torch actor's math in NumPy."""
    hidden = obs
    for weight_t, bias in layers[:-1]:
        hidden = hidden @ weight_t + bias
        hidden = np.tanh(hidden, out=hidden) if activation == "tanh" else np.maximum(hidden, 0.0, out=hidden)
    weight_t, bias = layers[-1]
    return hidden @ weight_t + bias


def noisy_actions(
    layers: list[tuple[np.ndarray, np.ndarray]],
    obs: np.ndarray,
    noise: np.ndarray,
    activation: str,
    bounds: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """One rollout step: the sampled actions, and the actions the env receives.

    Discrete (``bounds`` None): Gumbel-max, argmax(logits + Gumbel noise), a sample of softmax(logits).  Box:
    mean + std * normal noise (``noise`` comes scaled by std), clipped to ``bounds`` for the env only.
    """
    output = actor_forward(layers, obs, activation) + noise
    if bounds is None:
        actions = output.argmax(axis=1)
        return actions, actions
    low, high = bounds
    return output, np.minimum(np.maximum(output, low), high)


def action_bounds(env: EnvInfo) -> tuple[np.ndarray, np.ndarray] | None:
    """``noisy_actions``' bounds for ``env``: None for Discrete actions, else (low, high) arrays."""
    return None if env.discrete else (np.array(env.action_low), np.array(env.action_high))


def compute_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    next_values: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    gamma: float,
    gae_lambda: float,
) -> np.ndarray:
    """GAE(lambda) advantages over a ``(num_steps, num_envs)`` rollout.

    ``next_values[t]`` is V(s_{t+1}), the state the env returned at step t (the final observation when an
    episode ended there).  A terminated episode bootstraps nothing, a truncated one bootstraps
    V(final observation); neither passes advantage back across the episode boundary.
    """
    deltas = rewards + gamma * (1.0 - terminated) * next_values - values
    decays = gamma * gae_lambda * (1.0 - np.maximum(terminated, truncated))
    advantages = np.zeros_like(deltas)
    last_advantage = np.zeros(rewards.shape[1])
    for t in reversed(range(len(rewards))):
        last_advantage = deltas[t] + decays[t] * last_advantage
        advantages[t] = last_advantage
    return advantages


class PPO:
    """PPO as a ddrl algorithm (see ``ddrl.algorithm.Algorithm``)."""

    def __init__(self, config: Config, env: EnvInfo) -> None:
        self.config = config
        self.env = env
        self.hp: Hyperparameters = config.hyperparameters
        self.samples_per_task = config.env.num_envs * self.hp.num_steps
        steps_per_iteration = self.samples_per_task * config.spark.num_tasks
        self.num_iterations = math.ceil(config.train.total_env_steps / steps_per_iteration)

    # ---- driver side ---------------------------------------------------------------------------------------
    def initial_state(self) -> State:
        torch.manual_seed(derive_seed(self.config.seed, 0, 0, Stream.INITIALIZATION))
        params = flat_parameters(ActorCritic(self.env, self.hp))
        obs = Moments.empty((self.env.observation_dim,))
        returns = Moments.empty(())
        return {
            "params": params,
            "adam_m": np.zeros_like(params),
            "adam_v": np.zeros_like(params),
            "adam_step": np.array(0.0),
            **_moments_state("obs", obs),
            **_moments_state("return", returns),
        }

    def task_payload(self, state: State, iteration: int) -> dict[str, Any]:
        fraction_left = 1.0 - iteration / self.num_iterations if self.hp.anneal_lr else 1.0
        obs = _moments_from_state("obs", state)
        return {
            "params": state["params"],
            "adam_m": state["adam_m"],
            "adam_v": state["adam_v"],
            "adam_step": float(state["adam_step"]),
            "learning_rate": max(fraction_left, 0.0) * self.hp.learning_rate,
            "obs_mean": obs.mean,
            "obs_variance": obs.variance,
            "return_variance": float(_moments_from_state("return", state).variance),
        }

    def apply(self, state: State, result: MergedResult, iteration: int) -> tuple[State, dict[str, float]]:
        params = result.means["params"].astype(np.float32)
        obs, returns = _moments_from_state("obs", state), _moments_from_state("return", state)
        for task in result.tasks:
            obs = obs.combine(Moments(task["obs_count"], task["obs_mean"], task["obs_m2"]))
            returns = returns.combine(Moments(task["return_count"], task["return_mean"], task["return_m2"]))
        new_state = {
            "params": params,
            "adam_m": result.means["adam_m"].astype(np.float32),
            "adam_v": result.means["adam_v"].astype(np.float32),
            "adam_step": np.array(float(state["adam_step"]) + np.mean([t["updates"] for t in result.tasks])),
            **_moments_state("obs", obs),
            **_moments_state("return", returns),
        }
        merged_sq_norm = float(np.dot(result.means["params"], result.means["params"]))
        # Parameter averaging can settle below the optimum when tasks disagree: track how far apart they drift.
        drift = math.sqrt(max(float(result.means["params_sq_norm"][0]) - merged_sq_norm, 0.0))
        metrics = {
            name: float(np.mean([task[name] for task in result.tasks]))
            for name in ("pg_loss", "v_loss", "entropy", "approx_kl", "clipfrac", "explained_variance", "rollout_s", "update_s")
        }
        metrics["drift"] = drift
        metrics["update_norm"] = float(np.linalg.norm(params - state["params"]))
        metrics["learning_rate"] = float(np.mean([task["learning_rate"] for task in result.tasks]))
        return new_state, metrics

    def policy(self, state: State) -> Policy:
        model = ActorCritic(self.env, self.hp, initialize=False)
        load_flat_parameters(model, state["params"])
        obs = _moments_from_state("obs", state)
        normalized = self.hp.normalize_observation
        return Policy(
            model.actor,
            self.env,
            ActorCritic.architecture(self.hp),
            obs.mean if normalized else None,
            obs.variance if normalized else None,
        )

    def weighted_size(self) -> int:
        """Parameters and both Adam moments, plus the squared norm (counted, not built: models may be huge)."""
        sizes = [self.env.observation_dim, *self.hp.hidden_sizes]
        hidden_layers = sum((size_in + 1) * size_out for size_in, size_out in zip(sizes, sizes[1:]))
        heads = (sizes[-1] + 1) * (1 + self.env.action_dim)  # critic and actor outputs
        log_std = 0 if self.env.discrete else self.env.action_dim
        return 3 * (2 * hidden_layers + heads + log_std) + 1

    # ---- executor side -------------------------------------------------------------------------------------
    def run_task(self, payload: dict[str, Any], task_index: int, seed: int) -> TaskOutput:
        hp, num_envs = self.hp, self.config.env.num_envs
        vector_env, model, optimizer = self._worker_objects()
        load_flat_parameters(model, payload["params"])
        _load_adam_state(optimizer, model, payload)
        obs_mean, obs_std = payload["obs_mean"], np.sqrt(payload["obs_variance"] + EPSILON)
        reward_scale = 1.0 / math.sqrt(payload["return_variance"] + 1e-8) if hp.normalize_reward else 1.0

        # ---- rollout: num_steps steps of num_envs envs with the broadcast policy.  Per step only the actor runs,
        # in NumPy with noise drawn up front (torch's per-call cost is larger than a CartPole step); values and
        # log-probs come from one batched torch pass afterwards.
        rollout_started = time.perf_counter()
        num_steps, obs_dim = hp.num_steps, self.env.observation_dim
        rng = np.random.default_rng(seed)
        if self.env.discrete:
            noise = rng.gumbel(size=(num_steps, num_envs, self.env.action_dim)).astype(np.float32)
            actions = np.zeros((num_steps, num_envs), dtype=np.int64)
        else:
            noise = rng.standard_normal((num_steps, num_envs, self.env.action_dim), dtype=np.float32)
            noise *= np.exp(model.log_std.detach().numpy())
            actions = np.zeros((num_steps, num_envs, self.env.action_dim), dtype=np.float32)
        layers, bounds = numpy_actor(model.actor), action_bounds(self.env)
        raw_observations = np.zeros((num_steps + 1, num_envs, obs_dim))
        observations = np.zeros((num_steps + 1, num_envs, obs_dim), dtype=np.float32)
        rewards = np.zeros((num_steps, num_envs))
        terminated = np.zeros((num_steps, num_envs), dtype=bool)
        truncated = np.zeros((num_steps, num_envs), dtype=bool)

        raw_observations[0], _ = vector_env.reset(seed=seed)
        for t in range(num_steps):
            observations[t] = _policy_input(raw_observations[t], hp, obs_mean, obs_std)
            actions[t], env_action = noisy_actions(layers, observations[t], noise[t], hp.activation, bounds)
            raw_observations[t + 1], rewards[t], terminated[t], truncated[t], _ = vector_env.step(env_action)
        observations[num_steps] = _policy_input(raw_observations[num_steps], hp, obs_mean, obs_std)

        # With NEXT_STEP autoreset, the step after an episode ends only resets that env (reward 0, not done):
        # it is not a transition.  Every task starts its envs fresh, so episodes start at step 0.
        done = terminated | truncated
        valid = np.ones((num_steps, num_envs), dtype=bool)
        valid[1:] = ~done[:-1]
        finished_returns, finished_lengths = _finished_episodes(rewards, valid, done)
        with torch.inference_mode():
            all_values = model.value(torch.from_numpy(observations.reshape(-1, obs_dim))).numpy().reshape(num_steps + 1, num_envs)
        values, next_values = all_values[:-1].astype(np.float64), all_values[1:].astype(np.float64)
        if hp.normalize_reward:
            discounted_returns = _discounted_returns(rewards, valid, hp.gamma)[valid]
        else:
            discounted_returns = np.zeros(0)
        advantages = compute_gae(rewards * reward_scale, values, next_values, terminated, truncated, hp.gamma, hp.gae_lambda)
        returns = advantages + values
        keep = valid.reshape(-1)
        b_obs = torch.from_numpy(observations[:-1].reshape(-1, obs_dim)[keep])
        b_actions = torch.from_numpy(actions.reshape(len(keep), *actions.shape[2:])[keep])
        with torch.no_grad():
            b_log_probs = model.log_prob_and_entropy(b_obs, b_actions)[0]
        rollout_seconds = time.perf_counter() - rollout_started

        # ---- update: update_epochs x num_minibatches Adam steps on the clipped surrogate objective
        update_started = time.perf_counter()
        b_advantages = torch.from_numpy(advantages.reshape(-1)[keep]).float()
        b_returns = torch.from_numpy(returns.reshape(-1)[keep]).float()
        b_values = torch.from_numpy(values.reshape(-1)[keep]).float()
        batch_size = len(b_obs)
        minibatch_size = max(batch_size // hp.num_minibatches, 1)
        stats: dict[str, list[float]] = {"pg_loss": [], "v_loss": [], "entropy": [], "approx_kl": [], "clipfrac": []}
        updates = 0
        for _ in range(hp.update_epochs):
            order = torch.randperm(batch_size)
            for start in range(0, minibatch_size * hp.num_minibatches, minibatch_size):
                mb = order[start : start + minibatch_size]
                new_log_prob, entropy = model.log_prob_and_entropy(b_obs[mb], b_actions[mb])
                new_value = model.value(b_obs[mb])
                log_ratio = new_log_prob - b_log_probs[mb]
                ratio = log_ratio.exp()
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - log_ratio).mean()  # http://joschu.net/blog/kl-approx.html
                    clipfrac = ((ratio - 1.0).abs() > hp.clip_coef).float().mean()

                mb_advantages = b_advantages[mb]
                if hp.norm_adv and len(mb) > 1:
                    mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)
                pg_loss = torch.max(
                    -mb_advantages * ratio,
                    -mb_advantages * torch.clamp(ratio, 1 - hp.clip_coef, 1 + hp.clip_coef),
                ).mean()

                if hp.clip_vloss:
                    v_clipped = b_values[mb] + torch.clamp(new_value - b_values[mb], -hp.clip_coef, hp.clip_coef)
                    v_loss = 0.5 * torch.max((new_value - b_returns[mb]) ** 2, (v_clipped - b_returns[mb]) ** 2).mean()
                else:
                    v_loss = 0.5 * ((new_value - b_returns[mb]) ** 2).mean()

                entropy_loss = entropy.mean()
                loss = pg_loss - hp.ent_coef * entropy_loss + hp.vf_coef * v_loss
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), hp.max_grad_norm)
                optimizer.step()
                updates += 1
                for name, value in zip(stats, (pg_loss, v_loss, entropy_loss, approx_kl, clipfrac)):
                    stats[name].append(value.item())
            if hp.target_kl is not None and stats["approx_kl"][-1] > hp.target_kl:
                break
        update_seconds = time.perf_counter() - update_started

        params = flat_parameters(model)
        adam_m, adam_v = _flat_adam_moments(optimizer, model)
        obs_moments = Moments.of(raw_observations[:-1][valid])
        return_moments = Moments.of(discounted_returns)
        variance_of_returns = float(np.var(b_returns.numpy()))
        explained_variance = (
            float(1 - np.var(b_returns.numpy() - b_values.numpy()) / variance_of_returns) if variance_of_returns > 0 else 0.0
        )
        return TaskOutput(
            weight=batch_size,
            weighted={
                "params": params,
                "adam_m": adam_m,
                "adam_v": adam_v,
                "params_sq_norm": np.array([np.dot(params.astype(np.float64), params)]),
            },
            records={
                **{name: float(np.mean(values_)) for name, values_ in stats.items()},
                "explained_variance": explained_variance,
                "updates": updates,
                "learning_rate": payload["learning_rate"],
                "obs_count": obs_moments.count,
                "obs_mean": obs_moments.mean,
                "obs_m2": obs_moments.m2,
                "return_count": return_moments.count,
                "return_mean": return_moments.mean,
                "return_m2": return_moments.m2,
                "rollout_s": rollout_seconds,
                "update_s": update_seconds,
            },
            env_steps=num_steps * num_envs,
            episode_returns=finished_returns,
            episode_lengths=finished_lengths,
        )

    def _worker_objects(self) -> tuple[Any, ActorCritic, torch.optim.Adam]:
        """The vector env, model and optimizer, built once per Python worker process and config."""
        key = (self.config.fingerprint(), "ppo")
        if key not in _WORKER_CACHE:
            _WORKER_CACHE.clear()  # one config at a time: a worker that moves on frees the old envs
            vector_env = envs_module.make_vector_env(self.config.env, self.config.env.num_envs)
            with torch.random.fork_rng():  # the task's seeded generator must not depend on a cold or warm cache
                model = ActorCritic(self.env, self.hp, initialize=False)
            optimizer = torch.optim.Adam(model.parameters(), lr=self.hp.learning_rate, eps=self.hp.adam_eps)
            _WORKER_CACHE[key] = (vector_env, model, optimizer)
        return _WORKER_CACHE[key]


_WORKER_CACHE: dict[tuple[str, str], tuple[Any, ActorCritic, torch.optim.Adam]] = {}


def _policy_input(raw_obs: np.ndarray, hp: Hyperparameters, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return standardize(raw_obs, mean, std) if hp.normalize_observation else raw_obs


def _finished_episodes(rewards: np.ndarray, valid: np.ndarray, done: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return and length of every episode that ended in a ``(num_steps, num_envs)`` rollout, env by env."""
    returns, lengths = [], []
    for env_rewards, env_valid, env_done in zip(rewards.T, valid.T, done.T):
        ends = np.flatnonzero(env_done)
        returns.append(np.diff(np.cumsum(env_rewards)[ends], prepend=0.0))
        lengths.append(np.diff(np.cumsum(env_valid)[ends], prepend=0))
    return np.concatenate(returns), np.concatenate(lengths).astype(np.int64)


def _discounted_returns(rewards: np.ndarray, valid: np.ndarray, gamma: float) -> np.ndarray:
    """The running discounted return of each env at each step, restarting with each episode (reward scaling's
    statistic, as in gymnasium's NormalizeReward)."""
    decays = gamma * valid
    discounted = np.zeros_like(rewards)
    running = np.zeros(rewards.shape[1])
    for t in range(len(rewards)):
        running = running * decays[t] + rewards[t]
        discounted[t] = running
    return discounted


def _load_adam_state(optimizer: torch.optim.Adam, model: nn.Module, payload: dict[str, Any]) -> None:
    optimizer.param_groups[0]["lr"] = payload["learning_rate"]
    offset = 0
    for parameter in model.parameters():
        size = parameter.numel()
        optimizer.state[parameter] = {
            "step": torch.tensor(payload["adam_step"]),
            "exp_avg": torch.tensor(payload["adam_m"][offset : offset + size]).view_as(parameter).clone(),
            "exp_avg_sq": torch.tensor(payload["adam_v"][offset : offset + size]).view_as(parameter).clone(),
        }
        offset += size


def _flat_adam_moments(optimizer: torch.optim.Adam, model: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    states = [optimizer.state[parameter] for parameter in model.parameters()]
    first = torch.cat([state["exp_avg"].reshape(-1) for state in states]).numpy()
    second = torch.cat([state["exp_avg_sq"].reshape(-1) for state in states]).numpy()
    return first.astype(np.float32), second.astype(np.float32)


def _moments_state(prefix: str, moments: Moments) -> State:
    return {
        f"{prefix}_count": np.array(moments.count),
        f"{prefix}_mean": np.asarray(moments.mean, dtype=np.float64),
        f"{prefix}_m2": np.asarray(moments.m2, dtype=np.float64),
    }


def _moments_from_state(prefix: str, state: State) -> Moments:
    return Moments(float(state[f"{prefix}_count"]), state[f"{prefix}_mean"], state[f"{prefix}_m2"])


def build(config: Config, env: EnvInfo) -> PPO:
    return PPO(config, env)
