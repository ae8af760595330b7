"""Behaviour cloning (Pomerleau 1991): the policy fitted to the actions of logged transitions, by maximum
likelihood, with the same Spark loop as PPO.

The table (``bc.data``, Parquet: ddrl's trajectory schema, ``ddrl.data.trajectories``, or a user's with
``bc.observation`` and ``bc.action`` naming the columns) is checked once on the driver.  Every iteration task i
of N takes the i-th contiguous share of its rows (``ddrl.data.tables``), in the files' order, so that a retried
task reads the same rows, and runs ``epochs`` passes of Adam over them from the broadcast theta:

    Discrete, MultiDiscrete, MultiBinary actions:  L(theta) = -mean log pi_theta(a | s)
    Box actions:                                   L(theta) = mean |mu_theta(s) - a|^2   (mu: the greedy action's mean)

Under ``spark.sync: gradients`` (the default) the tasks sum their gradients at every step
(``ddrl.algorithms.synchronized``): an epoch is ceil(rows / minibatch_size) steps over all of the table's rows,
each task taking its share of every minibatch, and one Adam, shipped with theta, goes on from iteration to
iteration, so N tasks fit the table as one process does.  Under ``parameters`` each task runs its own Adam over
its share and returns its change Delta_i = theta_i - theta, weighted by its rows, as fixed-point values (exact
in any order), and the driver steps theta <- theta + sum_i n_i Delta_i / sum_i n_i.  The first iteration only
measures the observations' moments (the normalizer every task must share before it trains); theta stays.

The saved policy is an actor of PPO's architecture (``hidden_sizes``, ``activation``, ``cnn``), so that PPO can
start from it (``init.policy``); Box policies keep ``log_std_init`` as their log std.  ``train.total_env_steps``
counts the rows trained on (rows x epochs per iteration): BC takes no env steps; it evaluates in the env.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from ddrl.algorithms.ppo import MAX_PARAMETER_CHANGE, flat_parameters, load_flat_parameters
from ddrl.algorithms import PolicyOfParameters, synchronized
from ddrl.checkpoint import State
from ddrl.collective import ALONE, Collective
from ddrl.config import Config, ConfigError, StrictModel
from ddrl.data import trajectories
from ddrl.data.tables import ParquetTable
from ddrl.envs import EnvInfo, make_env
from ddrl.merge import BYTES_PER_FIXED_VALUE, FixedPoint, MergedResult, TaskOutput
from ddrl.networks import build_actor, forward, resolve_cnn
from ddrl.normalizer import Moments, moments_from_state, moments_to_state, normalize
from ddrl.policy import Policy
from ddrl.seeding import Stream, derive_seed
from ddrl.worker_cache import WorkerCache


SYNC_MODES = ("gradients", "parameters")
"""``spark.sync`` modes, the default first (``ddrl.config``)."""


class Hyperparameters(StrictModel):
    """The ``bc:`` section of a config."""

    data: str = Field(min_length=1, description="The logged transitions: a Parquet file or directory (local, mounted, or a URI pyarrow reads).")
    observation: str = Field("observation", min_length=1, description="The column of observations (struct columns for Dict spaces).")
    action: str = Field("action", min_length=1, description="The column of actions taken.")
    epochs: int = Field(1, ge=1, description="Passes of each task over its rows per iteration.")
    minibatch_size: int = Field(256, ge=1)
    learning_rate: float = Field(1e-3, gt=0, le=1)
    max_grad_norm: float = Field(0.5, gt=0)
    normalize_observation: bool = Field(False, description="Standardize the vector features with the table's moments (as "
                                        "ppo.normalize_observation: a PPO run that starts from the policy must say the same).")
    hidden_sizes: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [64, 64], description="As ppo.hidden_sizes.")
    activation: Literal["tanh", "relu"] = "tanh"
    cnn: Literal["auto", "nature", "small"] = Field("auto", description="As ppo.cnn.")
    log_std_init: float = Field(0.0, ge=-5, le=2, description="The log std Box policies keep, for PPO to start from.")

    @field_validator("data")
    @classmethod
    def _absolute(cls, value: str) -> str:
        """Executors run elsewhere: a local path is made absolute on the driver."""
        return trajectories.absolute(value)


class BehaviourCloning(PolicyOfParameters):
    """BC as a ddrl algorithm (see ``ddrl.algorithms.Algorithm``)."""

    def __init__(self, config: Config, env: EnvInfo) -> None:
        self.config, self.env, self.hp = config, env, config.hyperparameters
        self.table = ParquetTable.open(self.hp.data, [self.hp.observation, self.hp.action], "bc.data")
        spaces = make_env(config.env)
        self.observation_space, self.action_space = spaces.observation_space, spaces.action_space
        spaces.close()
        self.architecture = {"hidden_sizes": list(self.hp.hidden_sizes), "activation": self.hp.activation, "cnn": resolve_cnn(env.observation, self.hp.cnn)}
        self.rows_per_task = math.ceil(self.table.num_rows / config.spark.num_tasks)
        self.fixed_point = FixedPoint.for_sums(config.spark.num_tasks, self.rows_per_task * MAX_PARAMETER_CHANGE)
        with torch.device("meta"):
            self.tensor_sizes = [parameter.numel() for parameter in self._actor(initialize=False).parameters()]
        self.fingerprint = config.fingerprint()
        self.synchronized = config.spark.sync == "gradients"
        self.steps_per_epoch = math.ceil(self.table.num_rows / self.hp.minibatch_size)
        """Under gradients: the steps of an epoch over the whole table, each task taking its share of every one."""

    def _actor(self, initialize: bool) -> nn.Module:
        return build_actor(self.env.observation, self.env.action_dim, self.architecture, initialize)

    # ---- driver side ---------------------------------------------------------------------------------------
    def initial_state(self) -> State:
        torch.manual_seed(derive_seed(self.config.seed, 0, 0, Stream.INITIALIZATION))
        empty = Moments.empty((self.env.observation_dim,))
        adam = synchronized.initial_adam_state(self.tensor_sizes) if self.synchronized else {}
        return {"params": flat_parameters(self._actor(initialize=True)), **moments_to_state("obs", empty), **adam}

    def task_payload(self, state: State, iteration: int) -> dict[str, Any]:
        """theta (with Adam's state under gradients) and the observations' moments; with none yet, the tasks measure
        them instead of training."""
        obs = moments_from_state("obs", state)
        adam = {key: state[key] for key in synchronized.ADAM_KEYS if key in state}
        return {"params": state["params"], "obs_mean": obs.mean, "obs_variance": obs.variance, "measure_only": obs.count == 0, **adam}

    def apply(self, state: State, result: MergedResult, iteration: int) -> tuple[State, dict[str, float]]:
        tasks = result.tasks
        if self.synchronized:
            new_state = {**state, **result.replicated}
        else:
            new_state = {**state, "params": (state["params"] + result.means["params_change"]).astype(np.float32)}
        if float(state["obs_count"]) == 0:
            obs = moments_from_state("obs", state)
            for task in tasks:
                obs = obs.combine(Moments(task["obs_count"], task["obs_mean"], task["obs_m2"]))
            new_state.update(moments_to_state("obs", obs))
        losses = [task["loss"] for task in tasks if "loss" in task]
        return new_state, {"bc_loss": float(np.mean(losses)) if losses else math.nan, "rows": float(sum(task["rows"] for task in tasks))}

    def _policy(self, params: np.ndarray, obs_mean: np.ndarray, obs_variance: np.ndarray, obs_count: float | None) -> Policy:
        actor = self._actor(initialize=False)
        load_flat_parameters(actor, params)
        normalized = self.hp.normalize_observation
        log_std = np.full(self.env.action_dim, self.hp.log_std_init, dtype=np.float32) if self.env.action.kind == "box" else None
        return Policy(actor, self.env, self.architecture, obs_mean if normalized else None, obs_variance if normalized else None, log_std=log_std,
                      observation_count=obs_count if normalized else None)

    def task_carry_bytes(self) -> int:
        return 0

    def task_result_bytes(self) -> int:
        """theta's change as one int64 a parameter, or (under gradients, from rank 0) theta and Adam's moments as float32."""
        return sum(self.tensor_sizes) * (3 * 4 if self.synchronized else BYTES_PER_FIXED_VALUE)

    # ---- executor side -------------------------------------------------------------------------------------
    def run_task(self, payload: dict[str, Any], task_index: int, seed: int, collective: Collective = ALONE) -> TaskOutput:
        observations, actions = _SHARDS.get((self.fingerprint, task_index, self.table), lambda: self._read_shard(task_index))
        features = self.env.observation.features(observations)
        rows = len(actions)
        actor = self._actor(initialize=False)
        load_flat_parameters(actor, payload["params"])
        parameters = list(actor.parameters())
        optimizer = torch.optim.Adam(parameters, lr=self.hp.learning_rate, fused=True)
        if self.synchronized:
            synchronized.load_adam(optimizer, parameters, payload)
        records: dict[str, Any] = {"rows": 0}
        if payload["measure_only"]:
            moments = Moments.of(features["vector"])
            records.update(obs_count=moments.count, obs_mean=moments.mean, obs_m2=moments.m2)
        else:
            records.update(loss=self._fit(actor, optimizer, features, actions, payload, collective), rows=rows * self.hp.epochs)
        if self.synchronized:
            state = {"params": flat_parameters(actor), **synchronized.adam_state(optimizer, parameters)} if not payload["measure_only"] else {
                "params": payload["params"], **{key: payload[key] for key in synchronized.ADAM_KEYS}}
            result: dict[str, Any] = {"weighted": {}, **synchronized.replicated_output(collective, state)}
        else:
            change = flat_parameters(actor).astype(np.float64) - payload["params"]
            result = {"weighted": {}, "fixed": {"params_change": change}, "fixed_point": self.fixed_point}
        return TaskOutput(weight=rows, records=records, env_steps=records["rows"], episode_returns=np.zeros(0),
                          episode_lengths=np.zeros(0, dtype=np.int64), **result)

    def _fit(self, actor: nn.Module, optimizer: torch.optim.Adam, features: dict[str, np.ndarray], actions: np.ndarray,
             payload: dict[str, Any], collective: Collective) -> float:
        """``epochs`` passes of Adam over the task's rows (under gradients, its share of every minibatch of the
        table); the mean loss of the steps."""
        rows = len(actions)
        if self.hp.normalize_observation:
            features = {**features, "vector": normalize(features["vector"], payload["obs_mean"], payload["obs_variance"], self.env.observation.normalized)}
        tensors = {name: torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32 if name == "vector" else value.dtype)) for name, value in features.items()}
        targets = torch.from_numpy(np.asarray(actions).reshape(rows, -1).astype(np.float32 if self.env.action.kind == "box" else np.int64))
        parameters = list(actor.parameters())
        steps = self.steps_per_epoch if self.synchronized else math.ceil(rows / self.hp.minibatch_size)
        losses = []
        for _ in range(self.hp.epochs):
            minibatches = torch.tensor_split(torch.randperm(rows), steps)
            for count, minibatch in zip(synchronized.all_reduce_sum(collective, [len(minibatch) for minibatch in minibatches]), minibatches):
                if count == 0:
                    continue
                output = forward(actor, {name: value[minibatch] for name, value in tensors.items()})
                loss = self._losses(output, targets[minibatch]).sum()
                optimizer.zero_grad()
                loss.backward()
                losses.append(synchronized.all_reduce_gradients(parameters, collective, count, loss.detach()).item())
                nn.utils.clip_grad_norm_(parameters, self.hp.max_grad_norm)
                optimizer.step()
        return float(np.mean(losses))

    def _losses(self, output: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Each row's loss: squared distance of the greedy action to the logged one (Box), else -log pi(a | s)."""
        if self.env.action.kind == "box":
            return ((output.reshape(actions.shape) - actions) ** 2).sum(-1)
        log_prob, _ = self.env.action.log_prob_and_entropy(output, actions, None, None)
        return -log_prob

    def _read_shard(self, task_index: int) -> tuple[Any, np.ndarray]:
        """This task's observations and actions from the table, checked against the env's spaces."""
        shard, files = self.table.shard(task_index, self.config.spark.num_tasks)
        where = f"bc.data ({', '.join(files)})"
        observations = trajectories.space_values(self.observation_space, shard[self.hp.observation], f"{where}: column {self.hp.observation!r}")
        actions = trajectories.space_values(self.action_space, shard[self.hp.action], f"{where}: column {self.hp.action!r}")
        outside = np.flatnonzero(trajectories.outside(self.action_space, actions))
        if len(outside):
            raise ValueError(f"{where}: column {self.hp.action!r}: {len(outside)} actions outside {self.action_space}, "
                             f"the first {actions[outside[0]].tolist()} at row {outside[0]} of the task's share")
        return observations, actions


_SHARDS = WorkerCache(size=2)
"""A worker's task shards, by (run, task index, the table's files as opened): a reused worker reads them once."""


def check(config: Config) -> None:
    """Checks that span config sections, run when the config is loaded (before Spark starts)."""
    if config.init.policy is not None:
        raise ConfigError("init.policy: starting from a saved policy is for algo ppo (BC fits its policy to bc.data)")
    if config.output.record_experience is not None:
        raise ConfigError("output.record_experience: BC takes no env steps to record; record the trained policy's "
                          "episodes with jobs/evaluate.py --record")


def build(config: Config, env: EnvInfo) -> BehaviourCloning:
    return BehaviourCloning(config, env)
