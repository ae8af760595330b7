"""Proximal Policy Optimization (Schulman et al. 2017) over Spark tasks, reading top to bottom like CleanRL's ppo.py.

Every task starts from the shipped parameters theta and runs ``local_rounds`` rounds on its own envs, episodes
continuing from round to round and, carried by the driver (``ddrl.carry``), from job to job: collect
``num_envs x num_steps`` transitions, compute GAE(lambda) advantages, run ``update_epochs x num_minibatches``
Adam steps on the clipped surrogate objective.  How the tasks learn together is ``spark.sync``:

**gradients** (the default; DD-PPO, Wijmans et al. 2020).  The tasks run as one barrier stage and a minibatch
is the union of every task's k-th minibatch: at each step they sum their gradients (``ddrl.algorithms
.synchronized``), so every task takes the Adam step one process with all of their envs takes, with the
advantages standardized, the gradient clipped and ``target_kl`` judged over the whole minibatch, and the
normalizers' moments shared at every round.  The tasks end the job with the same parameters, Adam state and
normalizers, which the driver keeps as they are.  So N tasks learn per sample as one process does, and each
computes 1/N of every minibatch.

**parameters**.  Each task updates on its own and returns the change of its parameters, Delta_i = theta_i -
theta, weighted by its sample count n_i, as one int64 fixed-point value per parameter (``ddrl.merge.FixedPoint``:
exact and order-independent to sum).  The driver takes the outer step of DiLoCo (Douillard et al. 2023) on the
mean change Delta = sum_i n_i Delta_i / sum_i n_i:

    theta <- theta + outer_lr * Delta                                  (outer_momentum = 0)
    b <- mu * b + Delta;  theta <- theta + outer_lr * (Delta + mu * b)  (Nesterov, mu = outer_momentum)

outer_lr 1 without momentum is plain parameter averaging.  N tasks bring N times one task's batch; by
McCandlish et al. (2018) the optimal learning rate grows with the batch as eps(B) = eps_max / (1 + B_noise / B),
from the gradient noise scale B_noise measured across the tasks (``ddrl.noise_scale``).  With ``task_scaling:
noise_scale_lr`` (the default) the tasks' learning rate is multiplied by eps(N b) / eps(b), from the earlier
iterations' B_noise, up to ``max_scaled_learning_rate``; with ``noise_scale`` Delta is lengthened by that ratio
instead; ``none`` is plain averaging.  Adam's moments (``adam_moments``): ``restart`` starts them at zero in every
task; ``fedadamw`` (the default: fewest CartPole steps over 24 seeds, BENCHMARKS.md) restarts the first and
starts the second from the tasks' per-tensor means of the last iteration (FedAdamW, arXiv 2510.27486);
``average`` ships and averages both (7 times the result bytes).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field
from torch import nn

from ddrl import carry, envs as envs_module, noise_scale
from ddrl.carry import EnvCursor
from ddrl.algorithms import PolicyOfParameters, synchronized
from ddrl.collective import ALONE, Collective
from ddrl.checkpoint import State
from ddrl.config import Config, ConfigError, StrictModel
from ddrl.data import trajectories
from ddrl.envs import EnvInfo
from ddrl.merge import BYTES_PER_FIXED_VALUE, BYTES_PER_WEIGHTED_VALUE, FixedPoint, MergedResult, TaskOutput
from ddrl.normalizer import EPSILON, Moments, moments_from_state, moments_to_state, standardize
from ddrl.networks import build_encoders, encode, forward, head, linear_layers, network, resolve_cnn
from ddrl.policy import Policy, load_policy
from ddrl.seeding import Stream, derive_seed, env_seed
from ddrl.worker_cache import WorkerCache

log = logging.getLogger("ddrl")

PERTURBABLE = ("learning_rate", "ent_coef", "clip_coef")
"""Hyperparameters population-based training may change during a run (``ddrl.sweeps``)."""


SYNC_MODES = ("gradients", "parameters")
"""``spark.sync`` modes, the default first (``ddrl.config``)."""


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
    hidden_sizes: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [64, 64], description="The MLP after the features ([]: linear heads).")
    activation: Literal["tanh", "relu"] = "tanh"
    cnn: Literal["auto", "nature", "small"] = Field(
        "auto", description="The CNN of image observations: Nature CNN (Atari-sized), MinAtar's one layer (small "
        "grids), or auto: nature from 36x36 pixels up (ddrl.networks).  Actor and critic share it."
    )
    log_std_init: float = Field(0.0, ge=-5, le=2, description="Initial log std of Gaussian actions.")
    ortho_init: bool = Field(True, description="Orthogonal initialization (CleanRL's and SB3's default); false keeps "
                             "torch's default initialization, as rl-zoo's tuned MuJoCo settings do.")
    normalize_observation: bool = False
    normalize_reward: bool = False
    adam_eps: float = Field(1e-5, gt=0)
    local_rounds: int = Field(1, ge=1, le=10_000, description="Rollout-and-update rounds per task and Spark job.")
    carry_episodes: bool = Field(
        True, description="Each task's envs go on in the next job where the last one left them (ddrl.carry), as in a "
        "single process; false resets them from the task's seed at the start of every job."
    )
    adam_moments: Literal["restart", "fedadamw", "average"] = Field(
        "fedadamw", description="With spark.sync: parameters, Adam's moments in each task: restarted, second moment as per-tensor "
        "means, or averaged (under gradients the tasks keep one Adam, shipped whole)."
    )
    outer_lr: float = Field(1.0, gt=0, le=10, description="With spark.sync: parameters, the outer step on the mean parameter change (1: plain averaging).")
    outer_momentum: float = Field(0.0, ge=0, lt=1, description="With spark.sync: parameters, Nesterov momentum of the outer step (0: none).")
    task_scaling: Literal["none", "noise_scale", "noise_scale_lr"] = Field(
        "noise_scale_lr", description="With spark.sync: parameters, what N tasks' batch changes: the tasks' learning rate, multiplied by "
        "eps(N b) / eps(b) from the previous iterations' gradient noise scale, up to max_scaled_learning_rate "
        "(noise_scale_lr, the default); nothing (none: plain averaging, the behaviour before it); or the outer step, "
        "the mean change lengthened by that ratio (noise_scale: slower on CartPole at 8 and 16 tasks, BENCHMARKS.md "
        "part 13)."
    )
    max_scaled_learning_rate: float = Field(
        3e-4, gt=0, le=1, description="The highest learning rate noise_scale_lr raises the tasks' rate to: the Adam "
        "step size of Schulman et al.'s MuJoCo PPO.  A learning rate at or above it is not scaled (raising CartPole's "
        "1e-3 made it slower at 4 tasks, BENCHMARKS.md part 13)."
    )


class ActorCritic(nn.Module):
    """Separate actor and critic MLPs over the observation's features (sharing the CNN of image observations);
    the actor's head is the action space's (``ddrl.spaces``), a diagonal Gaussian with a state-independent
    log std for Box actions."""

    def __init__(self, env: EnvInfo, hp: Hyperparameters, initialize: bool = True) -> None:
        """``initialize=False`` keeps torch's default initialization: for ``ortho_init: false``, and for loading
        trained weights right after."""
        super().__init__()
        self.action = env.action
        architecture = self.architecture(hp, env)
        encoders = build_encoders(env.observation, architecture["cnn"], initialize)
        self.critic = network(env.observation, encoders, architecture, 1, 1.0, initialize)
        self.actor = network(env.observation, encoders, architecture, env.action_dim, 0.01, initialize)
        if env.action.kind == "box":
            self.log_std = nn.Parameter(torch.full((env.action_dim,), hp.log_std_init))

    @staticmethod
    def architecture(hp: Hyperparameters, env: EnvInfo) -> dict[str, Any]:
        return {"hidden_sizes": list(hp.hidden_sizes), "activation": hp.activation, "cnn": resolve_cnn(env.observation, hp.cnn)}

    def output_and_value(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The actor's output (the action head's input) and V(s).  Actor and critic share their CNN encoders, so
        the images go through the CNN once for both (as CleanRL's ``get_action_and_value``)."""
        hidden = encode(self.actor, features)
        return head(self.actor)(hidden), head(self.critic)(hidden).squeeze(-1)

    def log_prob_and_entropy(
        self, output: torch.Tensor, action: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi(action | s) and the entropy at each row, from the actor's ``output``."""
        return self.action.log_prob_and_entropy(output, action, mask, getattr(self, "log_std", None))


def flat_parameters(module: nn.Module) -> np.ndarray:
    return nn.utils.parameters_to_vector(module.parameters()).detach().numpy().astype(np.float32)


def load_flat_parameters(module: nn.Module, flat: np.ndarray) -> None:
    nn.utils.vector_to_parameters(torch.tensor(flat, dtype=torch.float32), module.parameters())


def numpy_actor(actor: nn.Module) -> list[tuple[np.ndarray, np.ndarray]]:
    """An MLP actor's layers as (weight transposed, bias) NumPy views, for rollout steps without torch's per-call
    cost; empty for an actor with CNN encoders, which runs in torch."""
    return [(layer.weight.detach().numpy().T, layer.bias.detach().numpy()) for layer in linear_layers(actor)]


def actor_forward(layers: list[tuple[np.ndarray, np.ndarray]], obs: np.ndarray, activation: str) -> np.ndarray:
    """Logits (Discrete) or action means (Box) for a batch of observations: the torch actor's math in NumPy."""
    hidden = obs
    for weight_t, bias in layers[:-1]:
        hidden = hidden @ weight_t + bias
        hidden = np.tanh(hidden, out=hidden) if activation == "tanh" else np.maximum(hidden, 0.0, out=hidden)
    weight_t, bias = layers[-1]
    return hidden @ weight_t + bias


LOSSES = ("pg_loss", "v_loss", "entropy", "approx_kl", "clipfrac")
"""The update's per-step statistics, averaged over a task's Adam steps and then over tasks."""

MAX_PARAMETER_CHANGE = 2.0**10
"""A task whose parameters moved further than this in one job has diverged: its result is rejected.  The bound
sets the fixed-point scale of the merge (2**-41 for 2 CartPole tasks, 2**-24 for 100,000 tasks of 65k samples)."""


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


@dataclasses.dataclass(frozen=True)
class Batch:
    """One round's transitions (the valid steps only) for the update, and what the driver's statistics need."""

    features: dict[str, torch.Tensor]
    """The policy's inputs: the standardized vector features and the images."""
    masks: torch.Tensor | None
    actions: torch.Tensor
    log_probs: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    values: torch.Tensor
    raw_observations: np.ndarray
    """The unstandardized vector features, for the observation moments."""
    discounted_returns: np.ndarray
    episode_returns: np.ndarray
    episode_lengths: np.ndarray
    transitions: dict[str, Any] | None = None
    """With ``keep_transitions``: the valid steps as ``ddrl.data.trajectories.table`` takes them."""


def collect_round(
    vector_env: Any,
    model: "ActorCritic",
    cursor: EnvCursor,
    rng: np.random.Generator,
    hp: Hyperparameters,
    env: EnvInfo,
    obs_mean: np.ndarray,
    obs_std: np.ndarray,
    reward_scale: float,
    keep_transitions: bool = False,
) -> tuple[Batch, EnvCursor]:
    """num_steps steps of every env with the current policy, from where ``cursor`` left them.

    Per step only the actor runs, in NumPy for an MLP with noise drawn up front (torch's per-call cost is larger
    than a CartPole step); values and log-probs come from one batched torch pass afterwards.  ``keep_transitions``
    keeps the raw observations, env actions and games' seeds as well, for ``Batch.transitions`` (carried envs only).
    """
    num_steps, num_envs, obs_dim = hp.num_steps, len(cursor.ended), env.observation_dim
    noise = env.action.noise(rng, (num_steps, num_envs))
    if env.action.kind == "box":
        noise *= np.exp(model.log_std.detach().numpy())
    actions = np.zeros((num_steps, num_envs, *env.action.stored_shape), dtype=np.int64 if env.action.categorical else np.float32)
    layers = numpy_actor(model.actor)
    raw_observations = np.zeros((num_steps + 1, num_envs, obs_dim))
    observations = np.zeros((num_steps + 1, num_envs, obs_dim), dtype=np.float32)
    images = {name: np.zeros((num_steps + 1, *value.shape), value.dtype) for name, value in cursor.features.items() if name != "vector"}
    masks = None if cursor.mask is None else np.ones((num_steps + 1, num_envs, env.action_dim), dtype=bool)
    rewards = np.zeros((num_steps, num_envs))
    terminated = np.zeros((num_steps, num_envs), dtype=bool)
    truncated = np.zeros((num_steps, num_envs), dtype=bool)

    def record(t: int, features: dict[str, np.ndarray], mask: np.ndarray | None) -> None:
        raw_observations[t] = features["vector"]
        observations[t] = _policy_input(features["vector"], hp, obs_mean, obs_std, env)
        for name in images:
            images[name][t] = features[name]
        if masks is not None and mask is not None:
            masks[t] = mask

    record(0, cursor.features, cursor.mask)
    raw_batches, env_actions = ([cursor.observation], []) if keep_transitions else (None, None)
    games = [carry.games_in_progress(vector_env)] if keep_transitions else None
    for t in range(num_steps):
        if layers:
            output = actor_forward(layers, observations[t], hp.activation)
        else:
            with torch.inference_mode():
                output = forward(model.actor, _tensors(observations[t], {name: value[t] for name, value in images.items()})).numpy()
        actions[t], env_action = env.action.sample(output, noise[t], None if masks is None else masks[t])
        observation, rewards[t], terminated[t], truncated[t], info = vector_env.step(env_action)
        record(t + 1, env.observation.features(observation), env.mask(observation, info))
        if keep_transitions:
            raw_batches.append(observation)
            env_actions.append(env_action)
            games.append(carry.games_in_progress(vector_env))

    # With NEXT_STEP autoreset, the step after an episode ends only resets that env (reward 0, not done): it is
    # not a transition.  That includes a round's first step when the previous round's last step ended an episode.
    done = terminated | truncated
    valid = np.ones((num_steps, num_envs), dtype=bool)
    valid[0] = ~cursor.ended
    valid[1:] = ~done[:-1]
    episode_returns, episode_lengths, running_return, running_length = _finished_episodes(
        rewards, valid, done, cursor.episode_return, cursor.episode_length
    )
    if hp.normalize_reward:
        discounted_returns, running_discounted = _discounted_returns(rewards, valid, hp.gamma, cursor.discounted_return)
        discounted_returns = discounted_returns[valid]
    else:  # the statistic is not needed: skip its loop over the steps
        discounted_returns, running_discounted = np.zeros(0), cursor.discounted_return
    rows = (num_steps + 1) * num_envs
    all_features = _tensors(observations.reshape(rows, obs_dim), {name: value.reshape(rows, *value.shape[2:]) for name, value in images.items()})
    with torch.no_grad():  # one pass over every observation: V(s) for GAE, the actor's output for the log-probs
        all_outputs, all_values = model.output_and_value(all_features)
    all_values = all_values.numpy().reshape(num_steps + 1, num_envs)
    values, next_values = all_values[:-1].astype(np.float64), all_values[1:].astype(np.float64)
    advantages = compute_gae(rewards * reward_scale, values, next_values, terminated, truncated, hp.gamma, hp.gae_lambda)
    keep = valid.reshape(-1)
    steps = num_steps * num_envs  # the first num_steps x num_envs rows: the observations acted on
    kept = torch.from_numpy(keep)
    b_features = {name: value[:steps][kept] for name, value in all_features.items()}
    b_masks = None if masks is None else torch.from_numpy(masks[:-1].reshape(steps, -1)[keep])
    b_actions = torch.from_numpy(actions.reshape(steps, *actions.shape[2:])[keep])
    with torch.no_grad():
        b_log_probs = model.log_prob_and_entropy(all_outputs[:steps][kept], b_actions, b_masks)[0]
    batch = Batch(
        features=b_features,
        masks=b_masks,
        actions=b_actions,
        log_probs=b_log_probs,
        advantages=torch.from_numpy(advantages.reshape(-1)[keep]).float(),
        returns=torch.from_numpy((advantages + values).reshape(-1)[keep]).float(),
        values=torch.from_numpy(values.reshape(-1)[keep]).float(),
        raw_observations=raw_observations[:-1][valid],
        discounted_returns=discounted_returns,
        episode_returns=episode_returns,
        episode_lengths=episode_lengths,
        transitions=None if not keep_transitions else {
            "env": np.broadcast_to(np.arange(num_envs), valid.shape)[valid],
            "episode": carry.game_seeds(np.stack(games[:-1])[valid]),
            "step": _steps_in_episodes(valid, done, cursor.episode_length)[valid],
            "observation": trajectories.select(vector_env.single_observation_space, trajectories.stack(vector_env.single_observation_space, raw_batches[:-1]), valid),
            "action": np.stack(env_actions)[valid],  # as the env received it (a Box action clipped to its bounds)
            "reward": rewards[valid],
            "terminated": terminated[valid],
            "truncated": truncated[valid],
            "log_prob": b_log_probs.numpy(),
            "value": values[valid],
            "action_mask": None if masks is None else masks[:-1][valid],
        },
    )
    last = {"vector": raw_observations[num_steps], **{name: value[num_steps] for name, value in images.items()}}
    cursor = EnvCursor(last, None if masks is None else masks[num_steps], done[-1], running_return, running_length, running_discounted,
                       observation if num_steps else cursor.observation)
    return batch, cursor


def _tensors(vector: np.ndarray, images: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {"vector": torch.from_numpy(vector), **{name: torch.from_numpy(value) for name, value in images.items()}}


def ppo_update(
    model: "ActorCritic",
    optimizer: torch.optim.Adam,
    batch: Batch,
    hp: Hyperparameters,
    stats: dict[str, list[float]],
    collective: Collective = ALONE,
    train_actor: bool = True,
) -> int:
    """update_epochs x num_minibatches Adam steps on the clipped surrogate objective (the value loss alone without
    ``train_actor``); appends to ``stats``, returns the number of steps taken.

    With the run's other tasks (``collective``; ``spark.sync: gradients``) a minibatch is the union of every task's
    k-th minibatch, and each step is one process's step on it: the advantages are standardized with the moments of
    the whole minibatch, the losses are its means (``synchronized.all_reduce_gradients``), and the gradient is
    clipped by its global norm; ``target_kl`` stops every task at the same epoch, by the whole minibatch's KL."""
    batch_size = len(batch.actions)
    minibatch_size = max(batch_size // hp.num_minibatches, 1)
    parameters = list(model.parameters())
    epochs = []
    for _ in range(hp.update_epochs):
        order = torch.randperm(batch_size)
        epochs.append([order[start : start + minibatch_size] for start in range(0, minibatch_size * hp.num_minibatches, minibatch_size)])
    # Every global minibatch's row count and advantage sums, for all epochs in one all-reduce.
    advantages = batch.advantages.double()
    totals = synchronized.all_reduce_sum(collective, [
        value for minibatches in epochs for mb in minibatches for value in (len(mb), advantages[mb].sum().item(), advantages[mb].square().sum().item())
    ])
    updates = 0
    for epoch, minibatches in enumerate(epochs):
        for k, mb in enumerate(minibatches):
            count, advantage_sum, advantage_sq_sum = totals[3 * (epoch * hp.num_minibatches + k) : 3 * (epoch * hp.num_minibatches + k) + 3]
            if count == 0:  # a batch smaller than num_minibatches on every task
                continue
            mb_features = {name: value[mb] for name, value in batch.features.items()}
            mb_masks = None if batch.masks is None else batch.masks[mb]
            output, new_value = model.output_and_value(mb_features)
            new_log_prob, entropy = model.log_prob_and_entropy(output, batch.actions[mb], mb_masks)
            log_ratio = new_log_prob - batch.log_probs[mb]
            ratio = log_ratio.exp()

            mb_advantages = batch.advantages[mb]
            if hp.norm_adv and count > 1:
                mean = advantage_sum / count
                std = math.sqrt(max(advantage_sq_sum - count * mean * mean, 0.0) / (count - 1))  # unbiased, as torch's std
                mb_advantages = (mb_advantages - mean) / (std + 1e-8)
            pg_losses = torch.max(-mb_advantages * ratio, -mb_advantages * torch.clamp(ratio, 1 - hp.clip_coef, 1 + hp.clip_coef))

            if hp.clip_vloss:
                v_clipped = batch.values[mb] + torch.clamp(new_value - batch.values[mb], -hp.clip_coef, hp.clip_coef)
                v_losses = 0.5 * torch.max((new_value - batch.returns[mb]) ** 2, (v_clipped - batch.returns[mb]) ** 2)
            else:
                v_losses = 0.5 * (new_value - batch.returns[mb]) ** 2

            # Sums over this task's rows: all_reduce_gradients turns them into the whole minibatch's means.
            loss = ((pg_losses - hp.ent_coef * entropy).sum() if train_actor else 0.0) + hp.vf_coef * v_losses.sum()
            optimizer.zero_grad()
            loss.backward()
            with torch.no_grad():
                approx_kl = ((ratio - 1) - log_ratio).sum()  # http://joschu.net/blog/kl-approx.html
                clipfrac = ((ratio - 1.0).abs() > hp.clip_coef).float().sum()
                sums = torch.stack([pg_losses.sum(), v_losses.sum(), entropy.sum(), approx_kl, clipfrac])
            means = synchronized.all_reduce_gradients(parameters, collective, count, sums)
            nn.utils.clip_grad_norm_(parameters, hp.max_grad_norm)
            optimizer.step()
            updates += 1
            for name, value in zip(LOSSES, means.tolist()):
                stats[name].append(value)
        if hp.target_kl is not None and stats["approx_kl"][-1] > hp.target_kl:
            break
    return updates


def explained_variance(batch: Batch) -> float:
    returns, values = batch.returns.numpy(), batch.values.numpy()
    variance_of_returns = float(np.var(returns))
    return float(1 - np.var(returns - values) / variance_of_returns) if variance_of_returns > 0 else 0.0


class PPO(PolicyOfParameters):
    """PPO as a ddrl algorithm (see ``ddrl.algorithms.Algorithm``)."""

    def __init__(self, config: Config, env: EnvInfo) -> None:
        self.config = config
        self.env = env
        self.hp: Hyperparameters = config.hyperparameters
        self.samples_per_task = config.env.num_envs * self.hp.num_steps * self.hp.local_rounds
        steps_per_iteration = self.samples_per_task * config.spark.num_tasks
        self.num_iterations = math.ceil(config.train.total_env_steps / steps_per_iteration)
        self.fixed_point = FixedPoint.for_sums(config.spark.num_tasks, self.samples_per_task * MAX_PARAMETER_CHANGE)
        with torch.device("meta"):  # shapes only: models may be huge
            self.tensor_sizes = [parameter.numel() for parameter in ActorCritic(env, self.hp, initialize=False).parameters()]
        self.fingerprint = config.fingerprint()
        self.synchronized = config.spark.sync == "gradients"
        self.warned_about_replay = False
        # A policy saved without a critic (BC's) starts with an untrained one, whose advantages would be noise:
        # the first iterations train the critic alone.
        starts_without_critic = config.init.policy is not None and load_policy(config.init.policy).critic is None
        self.critic_warmup_iterations = config.init.critic_warmup_iterations if starts_without_critic else 0

    # ---- driver side ---------------------------------------------------------------------------------------
    def initial_state(self) -> State:
        torch.manual_seed(derive_seed(self.config.seed, 0, 0, Stream.INITIALIZATION))
        model = ActorCritic(self.env, self.hp, initialize=self.hp.ortho_init)
        observations = Moments.empty((self.env.observation_dim,))
        if self.config.init.policy is not None:
            observations = self._start_from(model, load_policy(self.config.init.policy)) or observations
        params = flat_parameters(model)
        state = {
            "params": params,
            **moments_to_state("obs", observations),
            **moments_to_state("return", Moments.empty(())),
        }
        if self.synchronized:
            return {**state, **synchronized.initial_adam_state(self.tensor_sizes)}
        if self.hp.adam_moments != "restart":
            state["adam_step"] = np.array(0.0)
        if self.hp.adam_moments == "fedadamw":
            state["adam_v_means"] = np.zeros(len(self.tensor_sizes))
        if self.hp.adam_moments == "average":
            state["adam_m"], state["adam_v"] = np.zeros_like(params), np.zeros_like(params)
        if self.hp.outer_momentum > 0:
            state["outer_momentum_buffer"] = np.zeros_like(params)
        return {**state, **noise_scale.initial_state()}

    def _start_from(self, model: ActorCritic, start: Policy) -> Moments | None:
        """``model`` with the saved policy's actor, critic (where it has one) and log std (``init.policy``); the
        policy's observation moments, where it has them and this run normalizes."""
        where = f"init.policy: {self.config.init.policy}"
        if (start.env.observation.to_dict(), start.env.action.to_dict()) != (self.env.observation.to_dict(), self.env.action.to_dict()):
            raise ConfigError(f"{where}: its policy was trained on {start.env.id}, whose observations or actions differ from {self.env.id}'s")
        architecture = ActorCritic.architecture(self.hp, self.env)
        if start.architecture != architecture:
            raise ConfigError(f"{where}: its network {start.architecture} is not this run's {architecture}: set ppo.hidden_sizes, "
                              "ppo.activation and ppo.cnn as it has them")
        model.actor.load_state_dict(start.actor.state_dict())
        if start.critic is not None:
            model.critic.load_state_dict(start.critic.state_dict())
        if start.log_std is not None and self.env.action.kind == "box":
            model.log_std.data = torch.as_tensor(start.log_std, dtype=torch.float32).clone()
        if (start.observation_mean is not None) != self.hp.normalize_observation:
            reads = "standardized" if start.observation_mean is not None else "raw"
            raise ConfigError(f"{where}: its policy reads {reads} observations: set ppo.normalize_observation: {str(reads == 'standardized').lower()}")
        if start.observation_mean is None:
            return None
        count = 1.0 if start.observation_count is None else float(start.observation_count)  # saved before ddrl kept it: one sample's weight
        return Moments(count, np.asarray(start.observation_mean, dtype=np.float64), np.asarray(start.observation_variance, dtype=np.float64) * count)

    def task_payload(self, state: State, iteration: int) -> dict[str, Any]:
        """theta, a learning rate per local round (annealed linearly over all rounds of the run), the
        normalizers, and the Adam state: all of it under ``spark.sync: gradients``, else what ``adam_moments`` keeps."""
        rounds, total_rounds = self.hp.local_rounds, self.hp.local_rounds * self.num_iterations
        annealed = [max(1.0 - (iteration * rounds + k) / total_rounds, 0.0) for k in range(rounds)]
        obs = moments_from_state("obs", state)
        adam_keys = ("adam_step", "adam_v_means", "adam_m", "adam_v", "adam_steps")
        learning_rate = self._learning_rate_scale(state) * self.hp.learning_rate
        # The running normalizers themselves, which synchronized tasks go on updating at every round.
        normalizers = {**moments_to_state("obs", obs), **moments_to_state("return", moments_from_state("return", state))} if self.synchronized else {}
        return {
            **normalizers,
            "iteration": iteration + 1,  # as the run's metrics number it
            "params": state["params"],
            "learning_rates": [learning_rate * (fraction if self.hp.anneal_lr else 1.0) for fraction in annealed],
            "critic_warmup": iteration < self.critic_warmup_iterations,
            "obs_mean": obs.mean,
            "obs_variance": obs.variance,
            "return_variance": float(moments_from_state("return", state).variance),
            **{key: state[key] for key in adam_keys if key in state},
            # Each task's carried episodes (ddrl.carry); a task index without one starts new episodes, and so does
            # a task of a run resumed with other envs per task (env.total_envs over another spark.num_tasks).
            "carries": {index: arrays for index, arrays in carry.carries_in_state(state).items()
                        if index < self.config.spark.num_tasks and len(arrays["ended"]) == self.config.env.num_envs},
        }

    def _learning_rate_scale(self, state: State) -> float:
        """eps(N b) / eps(b) from the noise scale the earlier iterations measured (``task_scaling: noise_scale_lr``,
        else 1): the tasks' Adam steps lengthen where N tasks' batch is still below B_noise, while each task's
        clipped objective bounds how far its policy moves.  Adam moves each parameter by about the learning rate a
        step whatever the gradient's size, so the scaled rate stops at ``max_scaled_learning_rate``."""
        if self.hp.task_scaling != "noise_scale_lr" or self.synchronized:
            return 1.0
        scale = noise_scale.step_scale(noise_scale.noise_scale(state), self.samples_per_task, self.config.spark.num_tasks)
        return min(scale, max(self.hp.max_scaled_learning_rate / self.hp.learning_rate, 1.0))

    def apply(self, state: State, result: MergedResult, iteration: int) -> tuple[State, dict[str, float]]:
        """The state the tasks ended with (``spark.sync: gradients``: they hold the same), or the outer step on
        their mean change (``parameters``); the iteration's metrics; the carried episodes."""
        tasks = result.tasks
        if self.synchronized:
            new_state, metrics = {**state, **result.replicated}, {"allreduce_s": float(np.mean([task["allreduce_s"] for task in tasks]))}
        else:
            new_state, metrics = self._averaged(state, result)
        metrics.update({
            name: float(np.mean([task[name] for task in tasks]))
            for name in (*LOSSES, "explained_variance", "learning_rate", "rollout_s", "update_s", "record_s") if name in tasks[0]
        })
        metrics["update_norm"] = float(np.linalg.norm(new_state["params"] - state["params"]))
        if self.hp.carry_episodes:
            new_state = self._carry_over(new_state, tasks, metrics)
        return new_state, metrics

    def _averaged(self, state: State, result: MergedResult) -> tuple[State, dict[str, float]]:
        """The outer step on the tasks' mean change, the normalizers and Adam's kept moments folded in task order."""
        hp, tasks = self.hp, result.tasks
        samples = np.array([task["samples"] for task in tasks], dtype=np.float64)
        change_sq_norms = np.array([task["change_sq_norm"] for task in tasks])
        mean_change = result.means["params_change"]
        new_state, b_noise = noise_scale.update(state, change_sq_norms, samples, mean_change)
        samples_per_task = float(np.mean(samples))  # the valid transitions a task trained on (B_small of the estimate)
        scale = noise_scale.step_scale(b_noise, samples_per_task, len(tasks)) if hp.task_scaling == "noise_scale" else 1.0
        scaled_change = scale * mean_change
        if hp.outer_momentum > 0:
            buffer = hp.outer_momentum * state["outer_momentum_buffer"] + scaled_change
            step = hp.outer_lr * (scaled_change + hp.outer_momentum * buffer)
            new_state["outer_momentum_buffer"] = buffer.astype(np.float32)
        else:
            step = hp.outer_lr * scaled_change
        new_state["params"] = (state["params"] + step).astype(np.float32)

        obs, returns = moments_from_state("obs", state), moments_from_state("return", state)
        for task in tasks:
            obs = obs.combine(Moments(task["obs_count"], task["obs_mean"], task["obs_m2"]))
            returns = returns.combine(Moments(task["return_count"], task["return_mean"], task["return_m2"]))
        new_state.update(moments_to_state("obs", obs), **moments_to_state("return", returns))
        if "adam_step" in state:
            new_state["adam_step"] = np.array(float(state["adam_step"]) + np.mean([task["updates"] for task in tasks]))
        if hp.adam_moments == "fedadamw":
            new_state["adam_v_means"] = np.average([task["adam_v_means"] for task in tasks], axis=0, weights=samples)
        if hp.adam_moments == "average":
            new_state["adam_m"] = result.means["adam_m"].astype(np.float32)
            new_state["adam_v"] = result.means["adam_v"].astype(np.float32)

        # Averaging can settle below the optimum when tasks disagree: track how far apart they drift (the RMS
        # distance of the tasks' parameters from their mean).
        mean_sq_change = float(np.dot(samples, change_sq_norms) / samples.sum())
        metrics = {
            "drift": math.sqrt(max(mean_sq_change - float(np.dot(mean_change, mean_change)), 0.0)),
            "noise_scale": b_noise,
            "useful_tasks": b_noise / samples_per_task,
            "step_scale": scale * self._learning_rate_scale(state),  # each is 1 unless its rule is on
        }
        return new_state, metrics

    def _carry_over(self, state: State, tasks: list[dict[str, Any]], metrics: dict[str, float]) -> State:
        """The state holding the carries the tasks returned (a rejected task's envs start anew), and what carrying
        cost in the iteration's metrics."""
        carries = {int(task["task_index"]): carry.Carry.of({name: task[f"carry.{name}"] for name in carry.FIELDS}) for task in tasks}
        failures = int(sum(task["replay_failures"] for task in tasks))
        metrics["carry_bytes"] = float(sum(array.nbytes for one in carries.values() for array in one.arrays().values()))
        metrics["replayed_steps"] = float(sum(task["replayed_steps"] for task in tasks))
        metrics["replay_failures"] = float(failures)
        metrics["restore_s"] = float(np.mean([task["restore_s"] for task in tasks]))
        metrics["carry_cache_hits"] = float(np.mean([task["carry_cache_hit"] for task in tasks]))
        if failures and not self.warned_about_replay:
            self.warned_about_replay = True
            log.warning(
                "%s did not replay: %d carried episode(s) arrived elsewhere than recorded and started anew (counted in "
                "replay_failures).  Make the env deterministic under reset(seed=...) and the same actions, or set "
                "ppo.carry_episodes: false", self.config.env.id, failures,
            )
        return carry.replace_in_state(state, carries)

    def _policy(self, params: np.ndarray, obs_mean: np.ndarray, obs_variance: np.ndarray, obs_count: float | None) -> Policy:
        model = ActorCritic(self.env, self.hp, initialize=False)
        load_flat_parameters(model, params)
        normalized = self.hp.normalize_observation
        architecture = ActorCritic.architecture(self.hp, self.env)
        log_std = model.log_std.detach().numpy() if self.env.action.kind == "box" else None
        return Policy(model.actor, self.env, architecture, obs_mean if normalized else None, obs_variance if normalized else None,
                      critic=model.critic, log_std=log_std, observation_count=obs_count if normalized else None)

    def task_carry_bytes(self) -> int:
        """The most bytes one task's carried games take: its envs' longest possible games, which the time limit
        bounds, and so does the run's budget of steps per sub-env (a reset may follow each step: twice the calls)."""
        if not self.hp.carry_episodes:
            return 0
        config = self.config
        run_steps_per_env = math.ceil(config.train.total_env_steps / (config.spark.num_tasks * config.env.num_envs))
        game_steps = min(self.env.max_episode_steps or run_steps_per_env, run_steps_per_env)
        return carry.bound_bytes(config.env.num_envs, math.prod(self.env.action.shape), 2 * game_steps)

    def task_result_bytes(self) -> int:
        """The parameter change as one int64 a parameter; with ``adam_moments: average`` both moments as limbs;
        under ``spark.sync: gradients`` the state the task of rank 0 returns: the parameters and Adam's moments as
        float32, each tensor's Adam step, and the normalizers' moments."""
        parameters = sum(self.tensor_sizes)
        if self.synchronized:
            return 3 * 4 * parameters + 8 * len(self.tensor_sizes) + 8 * (2 * self.env.observation_dim + 1) + 8 * 3
        moments = 2 * parameters * BYTES_PER_WEIGHTED_VALUE if self.hp.adam_moments == "average" else 0
        return parameters * BYTES_PER_FIXED_VALUE + moments

    # ---- executor side -------------------------------------------------------------------------------------
    def run_task(self, payload: dict[str, Any], task_index: int, seed: int, collective: Collective = ALONE) -> TaskOutput:
        hp = self.hp
        model, optimizer = _WORKER_MODELS.get(self.fingerprint, self._build_model)
        parameters = list(model.parameters())
        load_flat_parameters(model, payload["params"])
        if self.synchronized:
            synchronized.load_adam(optimizer, parameters, payload)
            obs_running, return_running = moments_from_state("obs", payload), moments_from_state("return", payload)
        else:
            _start_adam(optimizer, model, payload, hp.adam_moments)
        obs_mean, obs_std = payload["obs_mean"], np.sqrt(payload["obs_variance"] + EPSILON)
        reward_scale = 1.0 / math.sqrt(payload["return_variance"] + 1e-8) if hp.normalize_reward else 1.0
        rng = np.random.default_rng(seed)

        # ---- the envs where this task's last job left them (or new episodes), then local_rounds rounds of rollout
        # ---- and update, the envs going on where the last round left them
        carry_key = (self.fingerprint, task_index)
        if hp.carry_episodes:
            resumed = carry.resume(self.config.env, self.env, carry_key, seed, payload["carries"].get(task_index))
            vector_env, cursor = resumed.vector_env, resumed.cursor
        else:
            vector_env = _WORKER_ENVS.get(self.fingerprint, lambda: envs_module.make_vector_env(self.config.env, self.config.env.num_envs))
            cursor = EnvCursor.reset(vector_env, env_seed(seed), self.env)
        stats: dict[str, list[float]] = {name: [] for name in LOSSES}
        explained, updates, rollout_seconds, update_seconds, samples = [], 0, 0.0, 0.0, 0
        # What the driver's statistics need from each round; the round's training batch itself is dropped.
        seen_observations, discounted_returns, episode_returns, episode_lengths = [], [], [], []
        record_to = self.config.output.record_experience
        recorded: list[Any] = []
        for learning_rate in payload["learning_rates"]:
            started = time.perf_counter()
            batch, cursor = collect_round(vector_env, model, cursor, rng, hp, self.env, obs_mean, obs_std, reward_scale, keep_transitions=record_to is not None)
            if record_to is not None:
                recorded.append(trajectories.table(vector_env.single_observation_space, vector_env.single_action_space,
                                                   iteration=payload["iteration"], task=task_index, **batch.transitions))
            rollout_seconds += time.perf_counter() - started
            started = time.perf_counter()
            optimizer.param_groups[0]["lr"] = learning_rate
            updates += ppo_update(model, optimizer, batch, hp, stats, collective, train_actor=not payload["critic_warmup"])
            update_seconds += time.perf_counter() - started
            samples += len(batch.actions)
            explained.append(explained_variance(batch))
            if self.synchronized:  # one process's normalizers go on at every round, over every task's envs in rank order
                for obs_round, return_round in synchronized.gathered_moments(collective, [Moments.of(batch.raw_observations), Moments.of(batch.discounted_returns)]):
                    obs_running, return_running = obs_running.combine(obs_round), return_running.combine(return_round)
                obs_mean, obs_std = obs_running.mean, np.sqrt(obs_running.variance + EPSILON)
                reward_scale = 1.0 / math.sqrt(float(return_running.variance) + 1e-8) if hp.normalize_reward else 1.0
            else:
                seen_observations.append(batch.raw_observations)
                discounted_returns.append(batch.discounted_returns)
            episode_returns.append(batch.episode_returns)
            episode_lengths.append(batch.episode_lengths)

        if record_to is not None:
            started = time.perf_counter()
            trajectories.write(record_to, trajectories.file_name(payload["iteration"], task_index), pa.concat_tables(recorded))
            record_seconds = time.perf_counter() - started
        records = {
            **{name: float(np.mean(values)) for name, values in stats.items()},
            "explained_variance": float(np.mean(explained)),
            "samples": samples,
            "updates": updates,
            "learning_rate": float(np.mean(payload["learning_rates"])),
            "rollout_s": rollout_seconds,
            "update_s": update_seconds,
            "task_index": task_index,
        }
        if record_to is not None:
            records["record_s"] = record_seconds
        if hp.carry_episodes:
            records.update({f"carry.{name}": value for name, value in carry.capture(carry_key, vector_env, cursor).arrays().items()})
            records.update(replayed_steps=resumed.replayed_steps, replay_failures=resumed.replay_failures,
                           restore_s=resumed.restore_seconds, carry_cache_hit=float(resumed.cache_hit))
        if self.synchronized:
            records["allreduce_s"] = collective.seconds
            state = {"params": flat_parameters(model), **synchronized.adam_state(optimizer, parameters),
                     **moments_to_state("obs", obs_running), **moments_to_state("return", return_running)}
            result: dict[str, Any] = {"weighted": {}, **synchronized.replicated_output(collective, state)}
        else:
            result = self._change(model, optimizer, payload, records, seen_observations, discounted_returns)
        return TaskOutput(
            weight=samples,
            records=records,
            env_steps=len(payload["learning_rates"]) * hp.num_steps * self.config.env.num_envs,
            episode_returns=np.concatenate(episode_returns),
            episode_lengths=np.concatenate(episode_lengths),
            **result,
        )

    def _change(self, model: ActorCritic, optimizer: torch.optim.Adam, payload: dict[str, Any], records: dict[str, Any],
                seen_observations: list[np.ndarray], discounted_returns: list[np.ndarray]) -> dict[str, Any]:
        """What a task returns for parameter averaging: its change, its observations' moments and the Adam state
        ``adam_moments`` keeps (into ``records``), as ``TaskOutput``'s fields."""
        change = flat_parameters(model).astype(np.float64) - payload["params"]
        obs_moments = Moments.of(np.concatenate(seen_observations))
        return_moments = Moments.of(np.concatenate(discounted_returns))
        records.update(change_sq_norm=float(np.dot(change, change)), obs_count=obs_moments.count, obs_mean=obs_moments.mean,
                       obs_m2=obs_moments.m2, return_count=return_moments.count, return_mean=return_moments.mean, return_m2=return_moments.m2)
        if self.hp.adam_moments == "fedadamw":
            records["adam_v_means"] = np.array([optimizer.state[p]["exp_avg_sq"].double().mean().item() for p in model.parameters()])
        kept = synchronized.adam_state(optimizer, list(model.parameters())) if self.hp.adam_moments == "average" else {}
        weighted = {name: kept[name] for name in ("adam_m", "adam_v") if name in kept}
        return {"weighted": weighted, "fixed": {"params_change": change}, "fixed_point": self.fixed_point}

    def _build_model(self) -> tuple[ActorCritic, torch.optim.Adam]:
        """The model and optimizer a Python worker keeps per config (the task loads theta and Adam's state)."""
        with torch.random.fork_rng():  # the task's seeded generator must not depend on a cold or warm cache
            model = ActorCritic(self.env, self.hp, initialize=False)
        # fused: one kernel for every tensor, 20 % of a HalfCheetah update's time less than the per-tensor loop
        optimizer = torch.optim.Adam(model.parameters(), lr=self.hp.learning_rate, eps=self.hp.adam_eps, fused=True)
        return model, optimizer


_WORKER_MODELS = WorkerCache()
_WORKER_ENVS = WorkerCache(close=lambda vector_env: vector_env.close())
"""The vector env a worker's tasks of a config share when episodes are not carried (ddrl.carry keeps one per task)."""


def _policy_input(raw_obs: np.ndarray, hp: Hyperparameters, mean: np.ndarray, std: np.ndarray, env: EnvInfo) -> np.ndarray:
    return standardize(raw_obs, mean, std, env.observation.normalized) if hp.normalize_observation else raw_obs


def _finished_episodes(
    rewards: np.ndarray, valid: np.ndarray, done: np.ndarray, carried_return: np.ndarray, carried_length: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return and length of every episode that ended in a ``(num_steps, num_envs)`` rollout, env by env, each
    env's first episode counting what it ran in earlier rounds (``carried_*``); and the return and length so far
    of the episodes still going."""
    returns, lengths = [], []
    running_return, running_length = np.zeros_like(carried_return), np.zeros_like(carried_length)
    for env, (env_rewards, env_valid, env_done) in enumerate(zip(rewards.T, valid.T, done.T)):
        cumulative_return = carried_return[env] + np.cumsum(env_rewards)
        cumulative_length = carried_length[env] + np.cumsum(env_valid)
        ends = np.flatnonzero(env_done)
        returns.append(np.diff(cumulative_return[ends], prepend=0.0))
        lengths.append(np.diff(cumulative_length[ends], prepend=0))
        last_end = ends[-1] if len(ends) else None
        running_return[env] = cumulative_return[-1] - (cumulative_return[last_end] if last_end is not None else 0.0)
        running_length[env] = cumulative_length[-1] - (cumulative_length[last_end] if last_end is not None else 0)
    return np.concatenate(returns), np.concatenate(lengths).astype(np.int64), running_return, running_length


def _steps_in_episodes(valid: np.ndarray, done: np.ndarray, carried_length: np.ndarray) -> np.ndarray:
    """Each valid step's number within its episode, the first episode of each env going on from ``carried_length``."""
    steps = np.zeros(valid.shape, dtype=np.int64)
    counter = np.asarray(carried_length, dtype=np.int64).copy()
    for t in range(len(valid)):
        steps[t] = counter
        counter = np.where(done[t], 0, counter + valid[t])
    return steps


def _discounted_returns(rewards: np.ndarray, valid: np.ndarray, gamma: float, carried: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The running discounted return of each env at each step, restarting with each episode (reward scaling's
    statistic, as in gymnasium's NormalizeReward), from ``carried``; and its value after the last step."""
    decays = gamma * valid
    discounted = np.zeros_like(rewards)
    running = carried.copy()
    for t in range(len(rewards)):
        running = running * decays[t] + rewards[t]
        discounted[t] = running
    return discounted, running


def _start_adam(optimizer: torch.optim.Adam, model: nn.Module, payload: dict[str, Any], adam_moments: str) -> None:
    """Adam's state at the start of a task: empty (torch starts it at zero on the first step), or the kept moments.

    With ``fedadamw`` the step count is the run's, so that the bias correction of the carried second moment is
    that of a long-running Adam; the restarted first moment then warms up over its first ~1 / (1 - beta1) steps.
    """
    optimizer.state.clear()
    if adam_moments == "restart":
        return
    parameters = list(model.parameters())
    steps = np.full(len(parameters), float(payload["adam_step"]))
    if adam_moments == "average":
        synchronized.load_adam(optimizer, parameters, {"adam_m": payload["adam_m"], "adam_v": payload["adam_v"], "adam_steps": steps})
        return
    for parameter, step, second in zip(parameters, steps, payload["adam_v_means"]):
        optimizer.state[parameter] = {"step": torch.tensor(step), "exp_avg": torch.zeros_like(parameter), "exp_avg_sq": torch.full_like(parameter, float(second))}


AVERAGING_ONLY = ("adam_moments", "outer_lr", "outer_momentum", "task_scaling", "max_scaled_learning_rate")
"""Keys of how the driver merges independently updated tasks, which synchronized tasks do not do."""


def check(config: Config) -> None:
    """Checks that span config sections, run when the config is loaded (before Spark starts)."""
    hp = config.hyperparameters
    averaging = [key for key in AVERAGING_ONLY if getattr(hp, key) != Hyperparameters.model_fields[key].default]
    if config.spark.sync == "gradients" and averaging:
        raise ConfigError(f"ppo.{averaging[0]}: applies to spark.sync: parameters, where the driver merges the tasks' own updates; "
                          "under gradients the tasks take every optimizer step together: remove it, or set spark.sync: parameters")
    if config.output.record_experience is not None and not config.hyperparameters.carry_episodes:
        raise ConfigError("output.record_experience: recorded episodes are named by the seed their game began with, "
                          "which only carried episodes have (ppo.carry_episodes: true, the default; EnvPool cannot carry)")
    if config.hyperparameters.carry_episodes and config.env.envpool is not None:
        raise ConfigError("env.envpool: EnvPool's envs cannot be replayed one by one, which carried episodes need "
                          "(ppo.carry_episodes); set ppo.carry_episodes: false to train with EnvPool")


def build(config: Config, env: EnvInfo) -> PPO:
    return PPO(config, env)
