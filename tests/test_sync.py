"""spark.sync: gradients on a real local Spark session: N tasks' synchronized steps are one process's steps, runs
are bit-identical, and a lost task, too few slots or no way to meet each end in one line or a clean rerun."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, final_params, small_es_config, small_ppo_config
from torch import nn

import ddrl
from ddrl import config as config_module
from ddrl.algorithms import ppo
from ddrl.algorithms.ppo import ActorCritic, Batch, flat_parameters, load_flat_parameters
from ddrl.config import ConfigError
from ddrl.engines import rendezvous
from ddrl.envs import describe
from ddrl.run import Run

# ---- one synchronized minibatch step equals one process's step on the union --------------------------------


def _random_batch(env, rows: int, seed: int) -> Batch:
    """Transitions of random observations, actions, log-probs and returns for ``env``'s spaces."""
    generator = torch.Generator().manual_seed(seed)
    observations = torch.randn(rows, env.observation_dim, generator=generator)
    if env.action.kind == "box":
        actions = torch.randn(rows, env.action_dim, generator=generator)
    else:
        actions = torch.randint(0, env.action_dim, (rows,), generator=generator)
    return Batch(
        features={"vector": observations}, masks=None, actions=actions,
        log_probs=-torch.rand(rows, generator=generator) - 0.5,
        advantages=torch.randn(rows, generator=generator) * 3 + 0.5,
        returns=torch.randn(rows, generator=generator) * 5, values=torch.randn(rows, generator=generator) * 5,
        raw_observations=observations.numpy(), discounted_returns=np.zeros(0), episode_returns=np.zeros(0), episode_lengths=np.zeros(0),
    )


def _permutations(rows: int, seed: int, hp) -> list[list[torch.Tensor]]:
    """Each epoch's minibatches as ``ppo_update`` draws them after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    size = max(rows // hp.num_minibatches, 1)
    orders = [torch.randperm(rows) for _ in range(hp.update_epochs)]
    return [[order[start : start + size] for start in range(0, size * hp.num_minibatches, size)] for order in orders]


def _one_process(model: ActorCritic, optimizer, halves: list[Batch], seeds: list[int], hp) -> tuple[int, list[float]]:
    """CleanRL's minibatch loop on the union of the tasks' rows, each minibatch the union of their k-th ones;
    the steps taken and the gradient norms before clipping."""
    offsets = np.cumsum([0] + [len(half.actions) for half in halves])
    union = {name: torch.cat([getattr(half, name) for half in halves]) for name in ("actions", "log_probs", "advantages", "returns", "values")}
    observations = torch.cat([half.features["vector"] for half in halves])
    per_task = [_permutations(len(half.actions), seed, hp) for half, seed in zip(halves, seeds)]
    steps, norms = 0, []
    for epoch in range(hp.update_epochs):
        for k in range(hp.num_minibatches):
            mb = torch.cat([per_task[task][epoch][k] + int(offsets[task]) for task in range(len(halves))])
            output, new_value = model.output_and_value({"vector": observations[mb]})
            new_log_prob, entropy = model.log_prob_and_entropy(output, union["actions"][mb])
            log_ratio = new_log_prob - union["log_probs"][mb]
            ratio = log_ratio.exp()
            with torch.no_grad():
                approx_kl = ((ratio - 1) - log_ratio).mean()
            advantages = union["advantages"][mb]
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
            pg_loss = torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - hp.clip_coef, 1 + hp.clip_coef)).mean()
            values, returns = union["values"][mb], union["returns"][mb]
            if hp.clip_vloss:
                clipped = values + torch.clamp(new_value - values, -hp.clip_coef, hp.clip_coef)
                v_loss = 0.5 * torch.max((new_value - returns) ** 2, (clipped - returns) ** 2).mean()
            else:
                v_loss = 0.5 * ((new_value - returns) ** 2).mean()
            loss = pg_loss - hp.ent_coef * entropy.mean() + hp.vf_coef * v_loss
            optimizer.zero_grad()
            loss.backward()
            norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), hp.max_grad_norm)))
            optimizer.step()
            steps += 1
        if hp.target_kl is not None and approx_kl.item() > hp.target_kl:
            break
    return steps, norms


def _adam_moments(optimizer, model) -> np.ndarray:
    states = [optimizer.state[parameter] for parameter in model.parameters()]
    return np.concatenate([torch.cat([state[name].reshape(-1) for state in states]).numpy() for name in ("exp_avg", "exp_avg_sq")])


def _synchronized_update(elements, meeting, halves, seeds, params, config):
    """A barrier task: its half of the batch through ``ppo_update`` in the run's group."""
    from pyspark import TaskContext

    rank = TaskContext.get().partitionId()
    algorithm = ppo.PPO(config, describe(config.env))
    hp = config.hyperparameters
    model = ActorCritic(algorithm.env, hp, initialize=False)
    load_flat_parameters(model, params)
    optimizer = torch.optim.Adam(model.parameters(), lr=hp.learning_rate, eps=hp.adam_eps, fused=True)  # as PPO's tasks step
    stats = {name: [] for name in ppo.LOSSES}
    with rendezvous.joined(meeting, 0, rank, len(halves), f"math-{seeds}") as collective:
        torch.manual_seed(seeds[rank])
        updates = ppo.ppo_update(model, optimizer, halves[rank], hp, stats, collective)
    return [(rank, updates, flat_parameters(model), _adam_moments(optimizer, model))]


def _relative(found: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(found.astype(np.float64) - expected) / np.linalg.norm(expected))


MATH_CASES = {
    # rows per task, env, ppo overrides
    "discrete, clipped by the global norm": ((64, 64), "CartPole-v1", {"num_minibatches": 2, "update_epochs": 3, "max_grad_norm": 0.05}),
    "uneven tasks, stopped by target_kl": ((40, 88), "CartPole-v1", {"num_minibatches": 4, "update_epochs": 8, "target_kl": 0.002,
                                                                      "learning_rate": 0.01, "ent_coef": 0.01}),
    "gaussian actions": ((50, 70), "Pendulum-v1", {"num_minibatches": 2, "update_epochs": 2, "clip_vloss": False, "log_std_init": -0.5}),
}


@pytest.mark.parametrize("case", sorted(MATH_CASES))
def test_a_synchronized_step_on_a_split_batch_is_one_processs_step_on_the_whole(spark, tmp_path, one_torch_thread, case):
    rows, env_id, overrides = MATH_CASES[case]
    config = config_module.load(small_ppo_config(tmp_path, env={"id": env_id, "num_envs": 1}, ppo={"learning_rate": 3e-3, **overrides}))
    hp, env = config.hyperparameters, describe(config.env)
    torch.manual_seed(3)
    start = ActorCritic(env, hp)
    params = flat_parameters(start)
    halves = [_random_batch(env, count, seed=task) for task, count in enumerate(rows)]
    seeds = [101, 202]

    store = rendezvous.DriverStore(spark.sparkContext.getConf().get("spark.driver.host"))
    meeting = store.meeting(timeout_s=60)
    tasks = spark.sparkContext.parallelize(range(2), 2).barrier()
    results = sorted(tasks.mapPartitions(lambda part: _synchronized_update(part, meeting, halves, seeds, params, config)).collect())

    model = ActorCritic(env, hp, initialize=False)
    load_flat_parameters(model, params)
    optimizer = torch.optim.Adam(model.parameters(), lr=hp.learning_rate, eps=hp.adam_eps)
    steps, norms = _one_process(model, optimizer, halves, seeds, hp)

    (_, updates_0, params_0, adam_0), (_, updates_1, params_1, adam_1) = results
    assert updates_0 == updates_1 == steps  # target_kl stopped both tasks where it stopped the one process
    assert np.array_equal(params_0, params_1) and np.array_equal(adam_0, adam_1)  # the tasks hold the same bits
    expected = flat_parameters(model).astype(np.float64)
    assert _relative(params_0, expected) <= 1e-6
    assert _relative(params_0 - params, expected - params) <= 1e-5  # the step itself, not just where it lands
    assert _relative(adam_0, _adam_moments(optimizer, model).astype(np.float64)) <= 1e-6
    if hp.target_kl is not None:
        assert steps < hp.update_epochs * hp.num_minibatches
    if hp.max_grad_norm < 0.1:
        assert min(norms) > hp.max_grad_norm  # every step was clipped, by the norm of the whole minibatch's gradient


# ---- whole runs ---------------------------------------------------------------------------------------------


def _killer_env(marker: Path | str = "") -> dict:
    return {"id": "faulty_envs:UpdateKillerCartPole", "num_envs": 4, "max_episode_steps": 500,
            "kwargs": {"marker": str(marker), "kill_partitions": [1], "rollout_steps": 64}}


# 20 epochs of 8 minibatches: an update of 160 synchronized steps, long enough for the kill to land inside it
LONG_UPDATE = {"num_steps": 64, "update_epochs": 20, "num_minibatches": 8}


def test_runs_are_bit_identical_and_their_tasks_report_the_all_reduce(spark, tmp_path):
    runs = [ddrl.train(spark, small_ppo_config(tmp_path), run_dir=tmp_path / name, observers=[]) for name in ("first", "second")]
    assert np.array_equal(final_params(tmp_path / "first"), final_params(tmp_path / "second"))
    config = config_module.load(tmp_path / "first" / "config.yaml")
    assert config.spark.sync == "gradients"  # the default for PPO, written into the run's config
    for row in runs[0].metrics.to_pylist():
        assert row["allreduce_s"] > 0 and row["rejected_tasks"] == 0


def test_a_task_killed_during_its_update_reruns_the_stage_with_the_fault_free_bytes(spark, tmp_path):
    clean = small_ppo_config(tmp_path, env=_killer_env(), ppo=LONG_UPDATE)
    ddrl.train(spark, clean, run_dir=tmp_path / "clean", observers=[])
    marker = tmp_path / "killed"
    killed = small_ppo_config(tmp_path, env=_killer_env(marker), ppo=LONG_UPDATE)
    result = ddrl.train(spark, killed, run_dir=tmp_path / "killed-run", observers=[])

    assert marker.read_text().startswith("killed ")  # partition 1's worker died after its first rollout
    assert result.iterations == 3 and [row["rejected_tasks"] for row in result.metrics.to_pylist()] == [0, 0, 0]
    assert np.array_equal(final_params(tmp_path / "clean"), final_params(tmp_path / "killed-run"))


def test_more_tasks_than_task_slots_get_one_line_before_any_job(spark, tmp_path):
    slots = spark.sparkContext.defaultParallelism  # local[4,2]: 4
    config = small_ppo_config(tmp_path, spark={"num_tasks": slots + 1}, env={"id": "CartPole-v1", "num_envs": 2})
    with pytest.raises(ConfigError) as raised:
        ddrl.train(spark, config, run_dir=tmp_path / "run", observers=[])
    message = str(raised.value)
    assert message.startswith(f"spark.num_tasks: {slots + 1} tasks must run at once") and "\n" not in message
    assert f"{slots} task slots" in message and "spark.sync: parameters" in message
    assert not (tmp_path / "run").exists()
    # the way out it names works
    ddrl.train(spark, config_module.load(config, ["spark.sync=parameters", "train.total_env_steps=1"]), run_dir=tmp_path / "averaged", observers=[])


class _DriverStopsAfter:
    """An observer that stops the driver (raises) once iteration ``iteration`` is done and checkpointed."""

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def on_start(self, run):
        pass

    def on_iteration(self, iteration, metrics):
        if iteration == self.iteration:
            raise KeyboardInterrupt(f"stopped after iteration {iteration}")

    def on_end(self, result):
        pass


def test_executors_that_cannot_reach_the_rendezvous_get_one_line_and_lose_nothing(spark, tmp_path, monkeypatch):
    config = small_ppo_config(tmp_path, spark={"num_tasks": 2, "sync_timeout_s": 3.0})
    ddrl.train(spark, config, run_dir=tmp_path / "whole", observers=[])
    with pytest.raises(KeyboardInterrupt):
        ddrl.train(spark, config, run_dir=tmp_path / "run", observers=[_DriverStopsAfter(2)])

    # 10.255.255.1: a private address no host here has, so the executors' connections go nowhere
    monkeypatch.setenv(rendezvous.HOST_VARIABLE, "10.255.255.1")
    started = time.monotonic()
    with pytest.raises(ddrl.TrainingError) as raised:
        ddrl.train(spark, config, resume=tmp_path / "run", observers=[])
    elapsed = time.monotonic() - started
    message = str(raised.value)
    assert message.startswith("iteration 3: the 2 tasks of a run could not form their process group") and "\n" not in message
    assert "10.255.255.1" in message and "spark.sync: parameters" in message
    assert elapsed < 60  # a 3 s timeout, not retried: no group will form on a later attempt either

    monkeypatch.delenv(rendezvous.HOST_VARIABLE)
    ddrl.train(spark, config, resume=tmp_path / "run", observers=[])  # the checkpoint of iteration 2 goes on
    assert np.array_equal(final_params(tmp_path / "run"), final_params(tmp_path / "whole"))


def test_total_envs_splits_over_the_tasks_and_a_resume_with_other_tasks_splits_them_again(spark, tmp_path):
    config = small_ppo_config(tmp_path, env={"id": "CartPole-v1", "total_envs": 8}, train={"total_env_steps": 8 * 64 * 4})
    config["env"].pop("num_envs")
    with pytest.raises(KeyboardInterrupt):
        ddrl.train(spark, config, run_dir=tmp_path / "run", observers=[_DriverStopsAfter(2)])
    assert config_module.load(tmp_path / "run" / "config.yaml").env.num_envs == 4
    resumed = ddrl.train(spark, config, overrides=["spark.num_tasks=4"], resume=tmp_path / "run", observers=[])
    stored = config_module.load(tmp_path / "run" / "config.yaml")
    assert (stored.spark.num_tasks, stored.env.num_envs, stored.env.total_envs) == (4, 2, 8)
    assert resumed.iterations == 4 and resumed.env_steps == 8 * 64 * 4  # 8 envs x 64 steps an iteration, at 2 tasks and at 4


@pytest.mark.parametrize("overrides, expected", [
    (["env.total_envs=8", "env.num_envs=4"], r"^env\.total_envs: set env\.num_envs \(each task's envs\) or env\.total_envs"),
    (["env.total_envs=6", "spark.num_tasks=4"], r"^env\.total_envs: 6 envs do not split evenly over spark\.num_tasks=4"),
    (["ppo.outer_lr=0.5"], r"^ppo\.outer_lr: applies to spark\.sync: parameters"),
    (["spark.sync=averaged"], r"^spark\.sync: "),
])
def test_sync_keys_are_checked_before_spark_starts(tmp_path, overrides, expected):
    base = small_ppo_config(tmp_path)
    base["env"].pop("num_envs")
    with pytest.raises(ConfigError, match=expected):
        config_module.load(base, overrides)


def test_resume_keeps_the_runs_sync_mode(spark, tmp_path):
    config = small_ppo_config(tmp_path, train={"total_env_steps": 512})
    ddrl.train(spark, config, run_dir=tmp_path / "run", observers=[])
    with pytest.raises(ConfigError, match=r"^spark\.sync: .* trained with sync: gradients"):
        Run.open(config, ["spark.sync=parameters"], resume=tmp_path / "run")


def test_es_refuses_gradients(tmp_path):
    with pytest.raises(ConfigError, match=r"^spark\.sync: algo es cannot train with sync: gradients"):
        config_module.load(small_es_config(tmp_path), ["spark.sync=gradients"])


def test_dynamic_allocation_gets_one_line_from_the_train_job(tmp_path):
    """A session with dynamic allocation on, which Spark refuses barrier stages under: jobs/train.py says so in one
    line before the first job (local mode itself ignores dynamic allocation; the setting is what counts)."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(small_ppo_config(tmp_path)))
    spark_submit = Path(sys.executable).parent / "spark-submit"
    done = subprocess.run(
        [str(spark_submit), "--master", "local[2]", "--conf", "spark.dynamicAllocation.enabled=true", "--conf", "spark.ui.enabled=false",
         str(ROOT / "jobs" / "train.py"), "--config", str(config), "--run-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYSPARK_PYTHON": sys.executable},
    )
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("ddrl: ")]  # spark-submit merges them
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and "dynamic allocation (spark.dynamicAllocation.enabled=true)" in lines[0] and "spark.sync: parameters" in lines[0]
    assert "Traceback" not in done.stdout + done.stderr and not (tmp_path / "run").exists()
