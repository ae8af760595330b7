"""Benchmarks (#6): ``./spark-submit.sh jobs/benchmark.py [--only PART] [--quick] [--out benchmark.json]``.

Parts (``--only`` takes one or more, comma-separated or repeated; default all, in this order):

* ``throughput``  raw vector-env step rate (random actions, one process, the config's num_envs) against ddrl's
                  rollout rate inside a task and the whole-iteration rate, for CartPole-v1 and HalfCheetah-v5 PPO;
* ``breakdown``   where an iteration's time goes (broadcast, scheduling, rollout, update, merge, driver apply and
                  evaluation) for CartPole PPO and HalfCheetah ARS, and the size/time of one task's pickled result;
* ``cost_model``  broadcast and treeReduce (the real ``ddrl.merge`` fixed-point format) at 10k, 1M and 10M parameters over 2, 4
                  and 8 partitions and tree depths 1-3, fitted to a model of iteration time (see BENCHMARKS.md);
* ``scaling``     local[1] against local[2], local-cluster[1,1,1024] against local-cluster[2,1,1024] (each run a
                  separate ./spark-submit.sh process, equal step budgets, warm-up iteration excluded);
* ``vs_sb3``      whole-process time to solve CartPole-v1 (README command) against Stable-Baselines3 PPO with rl-zoo
                  hyperparameters, several seeds;
* ``halfcheetah`` equal wall time (15 min each): ddrl ARS on both cores against SB3 PPO (rl-zoo) on one core;
* ``rounds``      CartPole-v1 env steps and training time to the first 20-episode evaluation >= 475 against local
                  rounds, task count and Adam's moments, several seeds each (#10);
* ``large_model`` a 2.1M-parameter PPO (HalfCheetah-v5, 1024x1024, 8 tasks): iteration time against the tasks'
                  own work, in the 8-byte format and with Adam's moments averaged (56 bytes a parameter) (#10);
* ``connect``     per-iteration time on a Spark Connect session against a classic one, same config and cores, for
                  CartPole PPO and a 1M-parameter PPO (#11).

The in-process parts (throughput, breakdown, cost_model) share one Spark session, stopped before the parts that
start their own processes, so that at most one Spark session runs at a time.  ``--quick`` shrinks every part to
a smoke-size run.  Results go to stdout as markdown tables and to a JSON file (default
``runs/benchmark-<timestamp>/benchmark.json``, next to the runs it made).  Targets are checked, never asserted.
SB3 comes from ``requirements-bench.txt``: ``.venv/bin/pip install -r requirements-bench.txt``.

Internal subcommands (started as subprocesses by the parts above; whole-process timing from DDRL_STARTED_AT):
``python jobs/benchmark.py sb3-cartpole --seed S`` and ``python jobs/benchmark.py sb3-halfcheetah --minutes M``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

STARTED_AT = float(os.environ.get("DDRL_STARTED_AT", time.time()))
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PARTS = ("throughput", "breakdown", "cost_model", "rounds", "large_model", "scaling", "vs_sb3", "halfcheetah", "connect")
"""In running order: the in-process parts first (one Spark session), then those that start their own."""
IN_PROCESS = ("throughput", "breakdown", "cost_model", "rounds", "large_model")
CARTPOLE_TARGET = 475.0


# ---- sizes ---------------------------------------------------------------------------------------------------

_ROUNDS_8X256 = ["env.num_envs=8", "ppo.num_steps=256", "ppo.update_epochs=10", "ppo.num_minibatches=8", "ppo.gamma=0.99",
                 "ppo.gae_lambda=0.95", "ppo.learning_rate=0.001", "train.total_env_steps=300000"]
_ZOO_ROUNDS = ["env.num_envs=8", "ppo.num_steps=32", "ppo.update_epochs=20", "ppo.num_minibatches=1", "ppo.gamma=0.98",
               "ppo.gae_lambda=0.8", "ppo.learning_rate=0.001", "train.total_env_steps=100000"]
ROUND_VARIANTS: dict[str, list[str]] = {
    # name: overrides of conf/cartpole_ppo.yaml.  "8x256" rounds: 8 envs x 256 steps, 10 epochs of 8 minibatches;
    # "zoo" rounds: rl-zoo's CartPole PPO (8 envs x 32 steps, 20 epochs of one 256-sample minibatch, lr 1e-3
    # annealed over 100k steps, gamma 0.98, GAE 0.8), which SB3 runs.
    "8x256 rounds, 2 tasks, K=1, adam average (the previous defaults)": [*_ROUNDS_8X256, "spark.num_tasks=2", "ppo.local_rounds=1", "ppo.adam_moments=average"],
    "8x256 rounds, 2 tasks, K=1, adam restart": [*_ROUNDS_8X256, "spark.num_tasks=2", "ppo.local_rounds=1", "ppo.adam_moments=restart"],
    "8x256 rounds, 2 tasks, K=1, adam fedadamw": [*_ROUNDS_8X256, "spark.num_tasks=2", "ppo.local_rounds=1", "ppo.adam_moments=fedadamw"],
    "8x256 rounds, 1 task, K=2, adam fedadamw": [*_ROUNDS_8X256, "spark.num_tasks=1", "ppo.local_rounds=2", "ppo.adam_moments=fedadamw"],
    "zoo rounds, 2 tasks, K=8, adam fedadamw": [*_ZOO_ROUNDS, "spark.num_tasks=2", "ppo.local_rounds=8", "ppo.adam_moments=fedadamw"],
    "zoo rounds, 1 task, K=8, adam fedadamw": [*_ZOO_ROUNDS, "spark.num_tasks=1", "ppo.local_rounds=8", "ppo.adam_moments=fedadamw"],
    "zoo rounds, 1 task, K=16, adam fedadamw": [*_ZOO_ROUNDS, "spark.num_tasks=1", "ppo.local_rounds=16", "ppo.adam_moments=fedadamw"],
    "zoo rounds, 1 task, K=16, adam restart": [*_ZOO_ROUNDS, "spark.num_tasks=1", "ppo.local_rounds=16", "ppo.adam_moments=restart"],
}


@dataclasses.dataclass
class Sizes:
    """How much each part runs; ``quick()`` is a smoke-size run of every part."""

    raw_seconds: float = 1.0  # per repetition of a raw env rate
    repetitions: int = 5  # of every micro-measurement (medians are reported)
    throughput_iterations: int = 12
    breakdown_iterations: int = 21  # CartPole PPO
    breakdown_ars_iterations: int = 21  # HalfCheetah ARS (64k steps each; evaluations after 10 and 20, the config's cadence)
    scaling_cartpole_iterations: int = 12
    scaling_ars_iterations: int = 11  # one evaluation (after 10) among the 10 measured iterations, as in the config
    scaling_ars: bool = True
    scaling_repeats: int = 3  # interleaved: 1 core, 2 cores, 1 core, ...; the median ratio is reported
    cost_sizes: tuple[int, ...] = (10_000, 1_000_000, 10_000_000)
    cost_partitions: tuple[int, ...] = (2, 4, 8)
    cost_depths: tuple[int, ...] = (1, 2, 3)
    cost_repetitions: int = 3
    cost_jvm_tasks: tuple[int, int] = (8, 256)
    cost_driver_heap_share: float = 0.15  # skip treeReduce plans sending more than this share of spark.driver.memory to the driver
    cost_job_timeout: float = 180.0  # cancel a cost-model job after this many seconds (a JVM OOM leaves it hanging)
    sb3_seeds: tuple[int, ...] = (1, 2, 3, 4, 5)
    sb3_ddrl_steps: int | None = None  # None: the config's budget
    sb3_max_steps: int = 100_000  # rl-zoo's CartPole budget (the linear schedules decay over it)
    halfcheetah_minutes: float = 15.0
    subprocess_timeout: float = 1200.0
    rounds_seeds: tuple[int, ...] = tuple(range(1, 13))
    rounds_variants: tuple[str, ...] = tuple(ROUND_VARIANTS)
    rounds_budget: int | None = None  # None: each variant's own step budget
    large_model_iterations: int = 3  # the first (workers start, evaluation) is not measured
    large_model_hidden: int = 1024
    large_model_steps: int | None = None  # None: the config's 1024 steps per task
    connect_iterations: tuple[int, int] = (21, 5)  # CartPole, 1M-parameter PPO; the first of each is not measured
    connect_repeats: int = 2  # interleaved: classic, Connect, classic, Connect
    connect_hidden: int = 700  # 2 x 700 hidden units: 1.01M parameters on HalfCheetah-v5

    @staticmethod
    def quick() -> "Sizes":
        return Sizes(
            raw_seconds=0.2,
            repetitions=3,
            throughput_iterations=3,
            breakdown_iterations=3,
            breakdown_ars_iterations=2,
            scaling_cartpole_iterations=3,
            scaling_ars=False,
            scaling_repeats=1,
            cost_sizes=(10_000, 100_000),
            cost_partitions=(2, 4),
            cost_depths=(1, 2),
            cost_repetitions=1,
            cost_jvm_tasks=(4, 32),
            sb3_seeds=(1,),
            sb3_ddrl_steps=8192,
            sb3_max_steps=8192,
            halfcheetah_minutes=1.0,
            subprocess_timeout=600.0,
            rounds_seeds=(1,),
            rounds_variants=tuple(ROUND_VARIANTS)[:2],
            rounds_budget=8192,
            large_model_iterations=2,
            large_model_hidden=64,
            large_model_steps=64,
            connect_iterations=(3, 2),
            connect_repeats=1,
            connect_hidden=64,
        )


# ---- results -------------------------------------------------------------------------------------------------


def row(case: str, metric: str, value: Any, unit: str = "", target: str = "", hit: bool | None = None) -> dict[str, Any]:
    """One line of a part's table: ``hit`` None means no target."""
    status = "" if hit is None else ("hit" if hit else "MISS")
    return {"case": case, "metric": metric, "value": value, "unit": unit, "target": target, "status": status}


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| case | metric | value | target | status |", "| --- | --- | --- | --- | --- |"]
    for item in rows:
        value = fmt(item["value"]) + (f" {item['unit']}" if item["unit"] else "")
        lines.append(f"| {item['case']} | {item['metric']} | {value} | {item['target']} | {item['status']} |")
    return "\n".join(lines)


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} benchmark: {message}", file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(statistics.median(values)) if values else math.nan


def load_average() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return math.nan


def timed(function: Callable[[], Any], repetitions: int) -> tuple[float, Any]:
    """Median seconds of ``repetitions`` calls, and the last call's result."""
    seconds, result = [], None
    for _ in range(repetitions):
        started = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - started)
    return median(seconds), result


# ---- the benchmark context -----------------------------------------------------------------------------------


class Bench:
    """Sizes, where outputs go, the shared Spark session (created on first use) and results so far."""

    def __init__(self, sizes: Sizes, work: Path, out: Path, quick: bool, spark: Any = None, args: argparse.Namespace | None = None):
        self.sizes, self.work, self.out, self.quick = sizes, work, out, quick
        self.args = args
        self._spark, self._own_spark = spark, spark is None
        self.results: dict[str, Any] = {"meta": machine_info(quick), "parts": {}}

    def spark(self) -> Any:
        if self._spark is None:
            self._spark = build_spark_session()
        return self._spark

    def stop_spark(self) -> None:
        if self._spark is not None and self._own_spark:
            self._spark.stop()
            self._spark = None

    def record(self, part: str, result: dict[str, Any]) -> None:
        self.results["parts"][part] = result
        self.save()

    def save(self) -> None:
        """Rewrite the JSON file (atomically): partial results survive a part that fails or a killed run."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.out.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(self.results, indent=1, default=_json_default))
        os.replace(temporary, self.out)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def machine_info(quick: bool) -> dict[str, Any]:
    import importlib.metadata as metadata

    versions = {}
    for package in ("pyspark", "torch", "gymnasium", "numpy", "stable_baselines3", "mujoco"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "quick": quick,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_1min_at_start": load_average(),
        "versions": versions,
        "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def build_spark_session() -> Any:
    """spark-submit's master if it set one (./spark-submit.sh), else $DDRL_MASTER or local[2], with conf/spark-defaults."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # executors must run this venv's Python
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    conf = SparkConf()
    if not conf.contains("spark.master") and "PYSPARK_GATEWAY_PORT" not in os.environ:
        conf.setMaster(os.environ.get("DDRL_MASTER", "local[2]"))
        for line in (ROOT / "conf" / "spark-defaults.conf").read_text().splitlines():
            parts = line.split(None, 1)
            if len(parts) == 2 and not line.lstrip().startswith("#"):
                conf.set(parts[0], parts[1].strip())
    spark = SparkSession.builder.appName("ddrl-benchmark").config(conf=conf).getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


# ---- in-process training with probes -------------------------------------------------------------------------


class _Probe:
    """Driver-side timings that ddrl's metrics do not hold: every task's rollout/update and the driver's apply,
    gathered per iteration (an observer closes each iteration)."""

    def __init__(self) -> None:
        self.iterations: list[dict[str, Any]] = []
        self.current = self._fresh()

    @staticmethod
    def _fresh() -> dict[str, Any]:
        return {"apply_s": 0.0, "tasks": []}

    def on_start(self, run: Any) -> None:
        self.current = self._fresh()

    def on_iteration(self, iteration: int, metrics: dict[str, Any]) -> None:
        self.iterations.append({**metrics, **self.current, "iteration": iteration})
        self.current = self._fresh()

    def on_end(self, result: Any) -> None:
        pass


@contextlib.contextmanager
def _probing(probe: _Probe) -> Iterator[None]:
    """Wrap the algorithms' ``apply`` on the driver only (executors import their own, unwrapped classes: instances
    travel by reference to their class).  Restored on exit."""
    import ddrl.algorithms.es
    import ddrl.algorithms.ppo

    restore: list[tuple[Any, str, Any]] = []

    def wrap_apply(cls: Any) -> None:
        original = cls.apply

        def apply(self: Any, state: Any, result: Any, iteration: int) -> Any:
            started = time.perf_counter()
            output = original(self, state, result, iteration)
            probe.current["apply_s"] += time.perf_counter() - started
            probe.current["tasks"] = [
                {"rollout_s": float(task.get("rollout_s", 0.0)), "update_s": float(task.get("update_s", 0.0)), "env_steps": int(task["env_steps"])}
                for task in result.tasks
            ]
            return output

        restore.append((cls, "apply", original))
        cls.apply = apply

    wrap_apply(ddrl.algorithms.ppo.PPO)
    wrap_apply(ddrl.algorithms.es.EvolutionStrategy)
    try:
        yield
    finally:
        for owner, name, original in reversed(restore):
            setattr(owner, name, original)


def train_in_process(bench: Bench, config_path: str, overrides: list[str], iterations: int, label: str) -> tuple[Any, list[dict[str, Any]]]:
    """``ddrl.train`` on the shared session for exactly ``iterations`` iterations (to a step budget, no early
    stop); returns the config and one probed row per iteration."""
    import ddrl
    from ddrl import config as config_module

    config = config_module.load(ROOT / config_path, overrides)
    steps = iteration_steps(config)
    budget = steps * iterations
    all_overrides = [*overrides, "train.stop_at_target=false", f"train.total_env_steps={budget}"]
    probe = _Probe()
    run_dir = bench.work / "runs" / label
    log(f"{label}: ddrl.train {config_path} {' '.join(all_overrides)} ({iterations} iterations)")
    with _probing(probe):
        ddrl.train(bench.spark(), ROOT / config_path, overrides=all_overrides, run_dir=run_dir, observers=[probe])
    return config_module.load(ROOT / config_path, all_overrides), probe.iterations


def iteration_steps(config: Any) -> int:
    """Env steps of one iteration (PPO exactly; ES at most, episodes of the env's time limit)."""
    if config.algo == "ppo":
        return config.env.num_envs * config.hyperparameters.num_steps * config.spark.num_tasks
    limit = config.env.max_episode_steps or _episode_limit(config.env.id)
    return 2 * config.hyperparameters.num_directions * config.hyperparameters.episodes_per_perturbation * limit


def _episode_limit(env_id: str) -> int:
    import gymnasium as gym

    spec = gym.spec(env_id)
    return int(spec.max_episode_steps or 1000)


def per_iteration_steps(rows: list[dict[str, Any]]) -> list[int]:
    """Env steps of each iteration (the metrics hold the running total)."""
    totals = [int(r["env_steps"]) for r in rows]
    return [total - previous for total, previous in zip(totals, [0, *totals[:-1]])]


# ---- part 1: throughput --------------------------------------------------------------------------------------


def raw_env_rate(env_config: Any, num_envs: int, seconds: float, repetitions: int, seed: int = 0) -> float:
    """Steps per second of the config's vector env with pre-drawn uniform random actions (median)."""
    import gymnasium as gym

    from ddrl import envs

    vector_env = envs.make_vector_env(env_config, num_envs)
    rng = np.random.default_rng(seed)
    space = vector_env.single_action_space
    chunk = 256

    def actions() -> np.ndarray:
        if isinstance(space, gym.spaces.Discrete):
            return rng.integers(0, space.n, (chunk, num_envs))
        return rng.uniform(space.low, space.high, (chunk, num_envs, space.shape[0])).astype(np.float32)

    try:
        vector_env.reset(seed=seed)
        rates = []
        for _ in range(repetitions + 1):  # the first is a warm-up
            batch, steps, started = actions(), 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                for action in batch:
                    vector_env.step(action)
                steps += chunk * num_envs
            rates.append(steps / (time.perf_counter() - started))
        return median(rates[1:])
    finally:
        vector_env.close()


def policy_step_seconds(config: Any, repetitions: int) -> float:
    """Median seconds of one rollout step's policy work in ddrl's PPO (``ddrl.algorithms.ppo.noisy_actions`` on num_envs
    observations: the NumPy actor and the action draw)."""
    from ddrl import envs
    from ddrl.algorithms.ppo import ActorCritic, action_bounds, noisy_actions, numpy_actor

    env = envs.describe(config.env)
    hp = config.hyperparameters
    layers, bounds = numpy_actor(ActorCritic(env, hp).actor), action_bounds(env)
    obs = np.zeros((config.env.num_envs, env.observation_dim), dtype=np.float32)
    noise = np.zeros((config.env.num_envs, env.action_dim), dtype=np.float32)
    calls = 2000

    def steps() -> None:
        for _ in range(calls):
            noisy_actions(layers, obs, noise, hp.activation, bounds)

    seconds, _ = timed(steps, repetitions)
    return seconds / calls


def throughput(bench: Bench) -> dict[str, Any]:
    sizes = bench.sizes
    cases = [
        ("CartPole-v1 (conf, 8 envs)", "conf/cartpole_ppo.yaml", [], 0.5),
        # One task leaves the second core to the driver's JVM, which in local mode works beside the tasks as they start.
        ("CartPole-v1 (conf, 1 task)", "conf/cartpole_ppo.yaml", ["spark.num_tasks=1"], 0.5),
        ("CartPole-v1 (64 envs x 32 steps)", "conf/cartpole_ppo.yaml", ["env.num_envs=64", "ppo.num_steps=32"], 0.5),
        ("HalfCheetah-v5 (conf/halfcheetah_ppo.yaml)", "conf/halfcheetah_ppo.yaml", [], 0.7),
        ("HalfCheetah-v5 (conf, 1 task)", "conf/halfcheetah_ppo.yaml", ["spark.num_tasks=1"], 0.7),
        ("HalfCheetah-v5 (8 envs x 128 steps)", "conf/halfcheetah_ppo.yaml", ["env.num_envs=8", "ppo.num_steps=128"], 0.7),
    ]
    rows, data = [], {}
    for case, path, overrides, target in cases:
        from ddrl import config as config_module

        config = config_module.load(ROOT / path, overrides)
        num_envs = config.env.num_envs
        log(f"throughput {case}: raw env rate")
        raw = raw_env_rate(config.env, num_envs, sizes.raw_seconds, sizes.repetitions)
        policy_step = policy_step_seconds(config, sizes.repetitions)
        label = "throughput-" + re.sub(r"\W+", "-", case).strip("-").lower()
        config, iterations = train_in_process(bench, path, overrides, sizes.throughput_iterations, label)
        steps = per_iteration_steps(iterations)
        num_tasks = config.spark.num_tasks
        later = list(zip(iterations, steps))[1:]  # the first iteration starts Python workers: warm-up
        rollout_rate = median([s / num_tasks / r["rollout_s"] for r, s in later])
        update_rate = median([s / num_tasks / r["update_s"] for r, s in later])
        whole = median([r["steps_per_s"] for r, _ in later])
        ratio = rollout_rate / raw
        inference_share = median([policy_step * config.hyperparameters.num_steps / r["rollout_s"] for r, _ in later])
        env_share = median([s / num_tasks / raw / r["rollout_s"] for r, s in later])
        rows += [
            row(case, "raw env steps/s (1 process, random actions)", raw, "steps/s"),
            row(case, "ddrl rollout steps/s per task (1 core)", rollout_rate, "steps/s"),
            row(case, "rollout / raw", ratio * 100, "%", f">= {target * 100:.0f}%", ratio >= target),
            row(case, "policy per rollout step (NumPy actor + action draw)", policy_step * 1e6, "us"),
            row(case, "share of rollout time in the policy step", inference_share * 100, "%"),
            row(case, "share of rollout time in env.step (at the raw rate)", env_share * 100, "%"),
            row(case, "share of rollout time elsewhere (loop, normalization, values, GAE)", max(1 - inference_share - env_share, 0.0) * 100, "%"),
            row(case, f"ddrl whole-iteration steps/s ({num_tasks} tasks)", whole, "steps/s"),
            row(case, "whole-iteration / (raw x cores)", whole / (raw * (os.cpu_count() or 1)) * 100, "%"),
            row(case, "samples/s through the update per task", update_rate, "steps/s"),
        ]
        data[case] = {
            "config": path,
            "overrides": overrides,
            "num_envs": num_envs,
            "num_tasks": num_tasks,
            "raw_steps_per_s": raw,
            "rollout_steps_per_s_per_task": rollout_rate,
            "rollout_over_raw": ratio,
            "target": target,
            "policy_step_s": policy_step,
            "whole_iteration_steps_per_s": whole,
            "iterations": _slim(iterations),
            "load_average": load_average(),
        }
    return {"rows": rows, "data": data}


def _slim(iterations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = ("iteration", "env_steps", "iteration_s", "ship_s", "tasks_s", "merge_s", "driver_s", "rollout_s", "update_s",
            "steps_per_s", "apply_s", "eval_s", "tasks", "eval_return_mean")
    return [{key: r.get(key) for key in keys} for r in iterations]


# ---- part 2: breakdown ---------------------------------------------------------------------------------------


def breakdown_of(iterations: list[dict[str, Any]], algo: str) -> dict[str, float]:
    """Seconds per component summed over the iterations after the first, and the iteration total.

    scheduling = tasks_s - (slowest task's rollout + update) - its evaluation share - merge_s: job scheduling, task
    launch, the task's own overhead outside rollout/update (loading parameters, encoding the change), serialization
    and result transfer.  Evaluation runs inside the job (eval_s: the slowest task's share).  For ES the update is
    the driver's ``apply`` (the ARS/ES step); for PPO the update runs in the tasks.
    """
    totals = dict.fromkeys(("iteration", "broadcast", "scheduling", "rollout", "update", "merge", "apply", "eval", "driver_other"), 0.0)
    for r in iterations[1:]:
        slowest = max(r["tasks"], key=lambda task: task["rollout_s"] + task["update_s"])
        totals["iteration"] += r["iteration_s"]
        totals["broadcast"] += r["ship_s"]
        totals["rollout"] += slowest["rollout_s"]
        totals["merge"] += r["merge_s"]
        totals["scheduling"] += r["tasks_s"] - slowest["rollout_s"] - slowest["update_s"] - r["eval_s"] - r["merge_s"]
        if algo == "es":
            totals["update"] += r["apply_s"]
        else:
            totals["update"] += slowest["update_s"]
            totals["apply"] += r["apply_s"]
        totals["eval"] += r["eval_s"]
        totals["driver_other"] += r["driver_s"] - r["apply_s"]
    return totals


def result_serialization(config_path: str, overrides: list[str], repetitions: int) -> dict[str, float]:
    """Run one task on the driver and measure its Partial as Spark ships it (pyspark's pickle serializer), and the
    broadcast payload."""
    import importlib

    from pyspark.serializers import CPickleSerializer

    from ddrl.config import ALGORITHMS
    from ddrl.merge import Partial
    from ddrl.run import Run

    run = Run.open(ROOT / config_path, overrides, run_dir=Path("/nonexistent-benchmark-run"))
    algorithm = importlib.import_module(ALGORITHMS[run.config.algo]).build(run.config, run.env)
    state = algorithm.initial_state()
    payload = algorithm.task_payload(state, 0)
    started = time.perf_counter()
    partial = Partial.of_task(0, algorithm.run_task(payload, 0, 12345))
    task_seconds = time.perf_counter() - started
    serializer = CPickleSerializer()
    dumps_s, data = timed(lambda: serializer.dumps(partial), repetitions)
    loads_s, _ = timed(lambda: serializer.loads(data), repetitions)  # our own bytes, just made: measuring Spark's cost
    payload_s, payload_bytes = timed(lambda: serializer.dumps(payload), repetitions)
    array_bytes = sum(array.nbytes for array in [*partial.sums.values(), *partial.fixed_sums.values()])
    return {
        "result_bytes": len(data),
        "array_bytes": array_bytes,
        "result_dumps_s": dumps_s,
        "result_loads_s": loads_s,
        "payload_bytes": len(payload_bytes),
        "payload_dumps_s": payload_s,
        "task_on_driver_s": task_seconds,
        "parameters": int(state["params"].size),
    }


def breakdown(bench: Bench) -> dict[str, Any]:
    sizes = bench.sizes
    cases = [
        ("CartPole PPO (conf/cartpole_ppo.yaml)", "conf/cartpole_ppo.yaml", [], sizes.breakdown_iterations),
        ("HalfCheetah ARS (conf/halfcheetah_ars.yaml)", "conf/halfcheetah_ars.yaml", [], sizes.breakdown_ars_iterations),
    ]
    rows, data = [], {}
    for case, path, overrides, count in cases:
        label = "breakdown-" + Path(path).stem
        config, iterations = train_in_process(bench, path, overrides, count, label)
        totals = breakdown_of(iterations, config.algo)
        total = totals["iteration"]
        measured = len(iterations) - 1
        overhead = total - totals["rollout"] - totals["update"]
        spark_only = totals["broadcast"] + totals["scheduling"] + totals["merge"]
        rows.append(row(case, f"iteration time (median of {measured}, warm-up excluded)", median([r["iteration_s"] for r in iterations[1:]]), "s"))
        names = {
            "broadcast": "broadcast",
            "scheduling": "scheduling + task overhead + result transfer",
            "rollout": "rollout (slowest task)",
            "update": "update (slowest task)" if config.algo == "ppo" else "update (driver apply: the ES step)",
            "merge": "merge (treeReduce merge calls)",
            "apply": "driver apply (PPO: averaging)",
            "eval": "evaluation inside the job (slowest task)",
            "driver_other": "driver other (finish, metrics, checkpoint, log)",
        }
        for key, name in names.items():
            if key == "apply" and config.algo == "es":
                continue
            rows.append(row(case, name, totals[key] / measured, "s", "", None))
            rows.append(row(case, f"  share: {name}", totals[key] / total * 100, "%"))
        rows.append(row(case, "overhead (all but rollout and update)", overhead / total * 100, "%", "<= 10%", overhead / total <= 0.10))
        rows.append(row(case, "Spark-only overhead (broadcast + scheduling + merge)", spark_only / total * 100, "%"))
        log(f"breakdown {case}: result serialization")
        serialization = result_serialization(path, overrides, sizes.repetitions)
        rows += [
            row(case, "one task's result pickled", serialization["result_bytes"] / 1e3, "kB"),
            row(case, "  pickle / unpickle", f"{serialization['result_dumps_s'] * 1e3:.2f} / {serialization['result_loads_s'] * 1e3:.2f}", "ms"),
            row(case, "broadcast payload pickled", serialization["payload_bytes"] / 1e3, "kB"),
        ]
        data[case] = {
            "config": path,
            "iterations_measured": measured,
            "per_iteration_s": {key: value / measured for key, value in totals.items()},
            "overhead_share": overhead / total,
            "spark_only_share": spark_only / total,
            "serialization": serialization,
            "whole_iteration_steps_per_s": sum(per_iteration_steps(iterations)[1:]) / total,
            "iterations": _slim(iterations),
            "load_average": load_average(),
        }
    return {"rows": rows, "data": data}


# ---- part 4: cost model --------------------------------------------------------------------------------------


def _cost_format() -> Any:
    """The fixed-point scale PPO would use for 8 tasks of 2,048 samples: the sizes measured here."""
    from ddrl.merge import FixedPoint

    return FixedPoint.for_sums(8, 2048 * 1024.0)


def tree_plan(partitions: int, depth: int) -> list[int]:
    """Partitions at each level of PySpark's treeAggregate, ending with what the driver folds."""
    scale = max(int(math.ceil(partitions ** (1.0 / depth))), 2)
    levels, current = [partitions], float(partitions)
    while current > scale + current / scale:
        current /= scale
        levels.append(int(current))
    return levels


def _make_partial(index: int, size: int) -> Any:
    """Executor side: one task's Partial of a change of ``size`` float32 parameters, built the real way (PPO's format)."""
    from ddrl.merge import Partial, TaskOutput

    started = time.perf_counter()
    values = np.random.default_rng(index).standard_normal(size, dtype=np.float32) * 1e-3
    output = TaskOutput(1, {}, {}, 0, np.zeros(0), np.zeros(0, dtype=np.int64), fixed={"params_change": values}, fixed_point=_cost_format())
    partial = Partial.of_task(index, output)
    partial.records[index]["make_s"] = time.perf_counter() - started
    return partial


def _tiny_partial(index: int) -> Any:
    return _make_partial(index, 1)


def partial_costs(values: np.ndarray, repetitions: int) -> dict[str, Any]:
    """Driver-side costs of one task's Partial for ``values``: making, merging, finishing and (un)pickling it."""
    from pyspark.serializers import CPickleSerializer

    from ddrl.merge import Partial

    costs: dict[str, Any] = {"float32_bytes": values.nbytes}
    costs["encode_s"], encoded = timed(lambda: _cost_format().encode(values.astype(np.float64)), repetitions)
    partial = Partial(1, {}, {}, {}, fixed_sums={"params_change": encoded}, fixed_point=_cost_format())
    costs["merge_pair_s"], _ = timed(lambda: partial.merge(partial), repetitions)
    costs["finish_s"], _ = timed(partial.finish, repetitions)
    serializer = CPickleSerializer()
    costs["pickle_s"], pickled = timed(lambda: serializer.dumps(partial), repetitions)
    costs["unpickle_s"], _ = timed(lambda: serializer.loads(pickled), repetitions)  # our own bytes, just made
    costs["partial_bytes"] = len(pickled)
    return costs


def cost_model(bench: Bench) -> dict[str, Any]:
    from ddrl.merge import merge

    sizes = bench.sizes
    context = bench.spark().sparkContext
    repetitions = sizes.cost_repetitions
    rows, data = [], {"master": context.master, "default_parallelism": context.defaultParallelism, "sizes": {}, "baseline": {}}
    driver_memory = _bytes(context.getConf().get("spark.driver.memory", "1g"))
    max_driver_bytes = sizes.cost_driver_heap_share * driver_memory
    data["driver_memory_bytes"], data["max_bytes_to_driver"] = driver_memory, max_driver_bytes

    # Python workers up, and a floor: the same job with a one-parameter Partial.
    most = max(sizes.cost_partitions)
    context.parallelize(range(most), most).map(_tiny_partial).treeReduce(merge, depth=1)
    for partitions in sizes.cost_partitions:
        seconds, _ = timed(lambda: context.parallelize(range(partitions), partitions).map(_tiny_partial).treeReduce(merge, depth=1), max(repetitions, 5))
        data["baseline"][partitions] = seconds
        rows.append(row(f"{partitions} partitions", "job floor: map + treeReduce of 1-parameter Partials", seconds * 1e3, "ms"))
    # The driver's serial cost per task, bounded from above by JVM-only jobs (no Python): many tiny tasks.
    session = bench.spark()
    few, many = sizes.cost_jvm_tasks
    jvm = {}
    for tasks in (few, many):
        jvm[tasks], _ = timed(lambda: session.range(0, tasks, 1, tasks).count(), max(repetitions, 3))
    data["jvm_tasks"] = jvm
    data["driver_per_task_s"] = (jvm[many] - jvm[few]) / (many - few)
    rows.append(row(f"{few} vs {many} JVM-only tasks", "driver per-task cost (upper bound: includes running them on 2 cores)", data["driver_per_task_s"] * 1e3, "ms"))

    for size in sizes.cost_sizes:
        log(f"cost_model: {size:,} parameters")
        values = np.random.default_rng(0).standard_normal(size, dtype=np.float32)
        entry: dict[str, Any] = {"broadcast": {}, "tree_reduce": {}, **partial_costs(values, repetitions)}
        case = f"{size:,} params"
        rows += [
            row(case, "Partial on the wire (one int64 per parameter)", entry["partial_bytes"] / 1e6, "MB"),
            row(case, "encode the change (task side)", entry["encode_s"] * 1e3, "ms"),
            row(case, "merge of two Partials", entry["merge_pair_s"] * 1e3, "ms"),
            row(case, "pickle / unpickle one Partial", f"{entry['pickle_s'] * 1e3:.1f} / {entry['unpickle_s'] * 1e3:.1f}", "ms"),
            row(case, "finish (decode on the driver)", entry["finish_s"] * 1e3, "ms"),
        ]
        for partitions in sizes.cost_partitions:
            created, reads = [], []
            for _ in range(repetitions):
                started = time.perf_counter()
                broadcast = context.broadcast(values)
                created.append(time.perf_counter() - started)
                started = time.perf_counter()
                context.parallelize(range(partitions), partitions).map(lambda i: float(broadcast.value[i % 7])).collect()
                reads.append(time.perf_counter() - started)
                broadcast.destroy()
            plain, _ = timed(lambda: context.parallelize(range(partitions), partitions).map(lambda i: float(i)).collect(), repetitions)
            entry["broadcast"][partitions] = {"create_s": median(created), "job_s": median(reads), "plain_job_s": plain}
            rows.append(row(case, f"broadcast: create + job reading it, {partitions} tasks (job without: {plain * 1e3:.0f} ms)",
                            f"{median(created) * 1e3:.1f} + {median(reads) * 1e3:.0f}", "ms"))
        for partitions in sizes.cost_partitions:
            measured_plans: dict[tuple[int, ...], dict[str, Any]] = {}
            for depth in sizes.cost_depths:
                plan = tree_plan(partitions, depth)
                key = f"{partitions}x{depth}"
                if tuple(plan) in measured_plans:
                    entry["tree_reduce"][key] = {"plan": plan, "same_as": measured_plans[tuple(plan)]["key"]}
                    continue
                to_driver = plan[-1] * entry["partial_bytes"]
                if to_driver > max_driver_bytes:
                    reason = (f"skipped: {to_driver / 1e6:.0f} MB would reach the driver; local mode holds ~4 copies in the "
                              f"{driver_memory / 2**30:.0f} GiB heap (10M params x 2 tasks: OutOfMemoryError, job hung)")
                    entry["tree_reduce"][key] = {"plan": plan, "skipped": reason}
                    measured_plans[tuple(plan)] = {"key": key}
                    rows.append(row(case, f"treeReduce {partitions} partitions depth {depth} (levels {plan})", reason))
                    continue
                seconds, makes, merges = [], [], []
                try:
                    for _ in range(repetitions):
                        started = time.perf_counter()
                        with _watchdog(context, sizes.cost_job_timeout):
                            result = context.parallelize(range(partitions), partitions).map(lambda i, n=size: _make_partial(i, n)).treeReduce(merge, depth=depth)
                        seconds.append(time.perf_counter() - started)
                        makes.append(max(record["make_s"] for record in result.records.values()))
                        merges.append(result.merge_seconds)
                        del result
                except Exception as error:  # cancelled by the watchdog, or a result Spark refused
                    reason = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
                    entry["tree_reduce"][key] = {"plan": plan, "failed": reason}
                    measured_plans[tuple(plan)] = {"key": key}
                    rows.append(row(case, f"treeReduce {partitions} partitions depth {depth} (levels {plan})", reason))
                    continue
                measured = {"key": key, "plan": plan, "job_s": median(seconds), "max_make_s": median(makes), "merge_calls_s": median(merges),
                            "bytes_to_driver": to_driver, "critical_bytes": critical_bytes(plan, entry["partial_bytes"], context.defaultParallelism)}
                measured["communication_s"] = measured["job_s"] - data["baseline"].get(partitions, 0.0) - _waves(partitions, context.defaultParallelism) * measured["max_make_s"]
                entry["tree_reduce"][key] = measured
                measured_plans[tuple(plan)] = measured
                same = [d for d in sizes.cost_depths if d != depth and tuple(tree_plan(partitions, d)) == tuple(plan)]
                depth_label = f"depth {depth}" + (f" (= depth {', '.join(map(str, same))})" if same else "")
                rows.append(row(case, f"treeReduce {partitions} partitions {depth_label}, levels {plan}: job (make {measured['max_make_s'] * 1e3:.0f} ms/task)",
                                measured["job_s"] * 1e3, "ms"))
        data["sizes"][size] = entry
    data["model"] = fit_model(data, context.defaultParallelism)
    rows += model_rows(data["model"])
    return {"rows": rows, "data": data}


def _bytes(text: str) -> int:
    """Spark's memory strings: 2g, 1024m, 512k, or bytes."""
    match = re.fullmatch(r"(\d+)([kmgt]?)b?", text.strip().lower())
    if not match:
        return 2**30
    return int(match[1]) * 1024 ** "bkmgt".index(match[2] or "b")


@contextlib.contextmanager
def _watchdog(context: Any, seconds: float) -> Iterator[None]:
    """Cancel the jobs started inside after ``seconds``: a result too big for the driver's heap ends in an
    OutOfMemoryError on a JVM thread and the job never finishes (seen at 10M parameters on a 2g driver)."""
    import threading

    group = f"ddrl-benchmark-{time.monotonic_ns()}"
    context.setJobGroup(group, "cost model", interruptOnCancel=True)
    timer = threading.Timer(seconds, context.cancelJobGroup, args=(group,))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        context.setLocalProperty("spark.jobGroup.id", None)


def critical_bytes(plan: list[int], partial_bytes: int, cores: int) -> int:
    """Bytes on the critical path of a treeReduce plan: per inner level, the waves of reducers on ``cores`` cores
    times each reducer's fan-in; then the driver's fan-in."""
    total = 0
    for upper, lower in zip(plan, plan[1:]):
        total += _waves(lower, cores) * math.ceil(upper / lower) * partial_bytes
    return total + plan[-1] * partial_bytes


def _waves(partitions: int, cores: int) -> int:
    return math.ceil(partitions / max(cores, 1))


# The model: per-parameter and per-task constants fitted from the measurements above, plus stated assumptions
# for a real cluster network.  See BENCHMARKS.md for the derivation.
NETWORK_BYTES_PER_S = 1.25e9  # assumption: 10 Gb/s driver and executor NICs
MAX_RESULT_BYTES = 2**30  # spark.driver.maxResultSize's default: a plan collecting more on the driver is infeasible
BROADCAST_BYTES_PER_PARAM = 4  # PPO's default payload: the parameters as float32 (adam_moments: restart)
RESULT_BYTES_PER_PARAM = 8  # its result: the parameter change as one int64 (ddrl.merge.FixedPoint)


def fit_model(data: dict[str, Any], cores: int) -> dict[str, Any]:
    """Constants for ``iteration_model`` from the measurements: see BENCHMARKS.md for the model."""
    baseline = data["baseline"]
    partitions = sorted(baseline)
    waves = [math.ceil(p / cores) for p in partitions]
    if len(set(waves)) >= 2:
        per_wave, floor = np.polyfit(waves, [baseline[p] for p in partitions], 1)
    else:
        per_wave, floor = 0.0, baseline[partitions[0]]
    sizes = sorted(data["sizes"])
    largest = data["sizes"][sizes[-1]]
    params = float(sizes[-1])
    per_param = {
        "encode_s": largest["encode_s"] / params,
        "merge_s": largest["merge_pair_s"] / params,
        "finish_s": largest["finish_s"] / params,
        "pickle_s_per_byte": largest["pickle_s"] / largest["partial_bytes"],
        "unpickle_s_per_byte": largest["unpickle_s"] / largest["partial_bytes"],
    }
    # Moving results, seconds per byte: the slope of (job - floor - the tasks' own making per wave) over bytes, every
    # size.  Executor pickling, Python -> JVM, block manager / shuffle files, JVM -> Python and unpickling, all on
    # one machine (a real network adds bytes / bandwidth).  One-level plans give the cost of collecting results on
    # the driver; plans with inner levels add reduceByKey shuffles, whose cost per byte is fitted on what remains.
    plans = [m for entry in data["sizes"].values() for m in entry["tree_reduce"].values() if "job_s" in m]
    collect_s_per_byte = _slope([(m["bytes_to_driver"], m["communication_s"]) for m in plans if len(m["plan"]) == 1])
    shuffle_s_per_byte = _slope([(m["critical_bytes"] - m["bytes_to_driver"], m["communication_s"] - collect_s_per_byte * m["bytes_to_driver"])
                                 for m in plans if len(m["plan"]) > 1])
    if not math.isfinite(shuffle_s_per_byte):
        shuffle_s_per_byte = collect_s_per_byte
    create = _slope([(e["float32_bytes"], b["create_s"]) for e in data["sizes"].values() for b in e["broadcast"].values()])
    read = _slope([(e["float32_bytes"], b["job_s"] - b["plain_job_s"]) for e in data["sizes"].values() for b in e["broadcast"].values()])
    constants = {
        "job_floor_s": max(float(floor), 0.0),
        "python_task_s": max(float(per_wave), 0.0),
        "driver_per_task_s": max(float(data.get("driver_per_task_s", 0.0)), 0.0),
        "cores": cores,
        "per_param": per_param,
        "collect_s_per_byte": collect_s_per_byte,
        "shuffle_s_per_byte": shuffle_s_per_byte,
        "broadcast_create_s_per_byte": create,
        "broadcast_read_s_per_byte": read,
        "network_bytes_per_s_assumed": NETWORK_BYTES_PER_S,
        "fitted_at_params": sizes[-1],
    }
    return {**constants, "predictions": predictions(constants), "half_efficiency_executors": half_efficiency(constants)}


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (seconds per byte), at least 0; NaN without two distinct x."""
    if len({x for x, _ in points}) < 2:
        return math.nan
    slope, _ = np.polyfit([x for x, _ in points], [y for _, y in points], 1)
    return max(float(slope), 0.0)


def iteration_model(executors: int, params: float, task_s: float, depth: int, constants: dict[str, Any]) -> dict[str, Any]:
    """Predicted seconds of one PPO iteration, one task per executor (weak scaling: fixed work per task).

    broadcast   the driver pickles the float32 parameters (4 bytes/param) once; torrent distribution takes about
                log2(E + 1) rounds of the whole payload over the network; every executor's worker unpickles it;
    scheduling  a per-job floor, one Python task start (all executors in parallel), and the driver's serial
                per-task cost times E;
    reduce      every task encodes its parameter change (8 bytes/param) and pickles it; each tree level
                moves fan-in results into one reducer (shuffle cost per byte + network) and merges them; the
                driver collects the last level's results (collect cost per byte + network), merges, finishes.
    """
    per = constants["per_param"]
    collect_per_byte = constants["collect_s_per_byte"] + 1 / constants["network_bytes_per_s_assumed"]
    shuffle_per_byte = constants["shuffle_s_per_byte"] + 1 / constants["network_bytes_per_s_assumed"]
    broadcast_bytes = BROADCAST_BYTES_PER_PARAM * params
    result_bytes = RESULT_BYTES_PER_PARAM * params
    broadcast = (broadcast_bytes * (constants["broadcast_create_s_per_byte"] + constants["broadcast_read_s_per_byte"])
                 + broadcast_bytes / constants["network_bytes_per_s_assumed"] * math.ceil(math.log2(executors + 1)))
    scheduling = constants["job_floor_s"] + constants["python_task_s"] + constants["driver_per_task_s"] * executors
    task_side = params * per["encode_s"]
    levels = tree_plan(executors, depth)
    reduce_levels = 0.0
    for upper, lower in zip(levels, levels[1:]):
        fan_in = math.ceil(upper / lower)
        reduce_levels += fan_in * result_bytes * shuffle_per_byte + (fan_in - 1) * params * per["merge_s"]
    final = levels[-1]
    driver = final * result_bytes * collect_per_byte + (final - 1) * params * per["merge_s"] + params * per["finish_s"]
    overhead = broadcast + scheduling + task_side + reduce_levels + driver
    return {"broadcast_s": broadcast, "scheduling_s": scheduling, "task_side_s": task_side, "reduce_levels_s": reduce_levels,
            "driver_reduce_s": driver, "overhead_s": overhead, "iteration_s": task_s + overhead, "efficiency": task_s / (task_s + overhead),
            "levels": levels, "bytes_to_driver": final * result_bytes, "feasible": final * result_bytes <= MAX_RESULT_BYTES}


def predictions(constants: dict[str, Any], task_s: float = 1.0) -> list[dict[str, Any]]:
    """The model at 10k, 1M and 10M parameters, 2 to 1,000 executors, depths 1-3, ``task_s`` of work per task."""
    return [
        {"params": params, "executors": executors, "depth": depth, "task_s": task_s, **iteration_model(executors, params, task_s, depth, constants)}
        for params in (1e4, 1e6, 1e7)
        for executors in (2, 10, 100, 1000)
        for depth in (1, 2, 3)
    ]


def best_plan(executors: int, params: float, task_s: float, constants: dict[str, Any]) -> dict[str, Any] | None:
    """The fastest of depths 1-3 whose last level fits spark.driver.maxResultSize; None if none does."""
    plans = [{"depth": depth, **iteration_model(executors, params, task_s, depth, constants)} for depth in (1, 2, 3)]
    feasible = [plan for plan in plans if plan["feasible"]]
    return min(feasible, key=lambda plan: plan["overhead_s"]) if feasible else None


def half_efficiency(constants: dict[str, Any], task_s: float = 1.0) -> dict[str, Any]:
    """Where scaling flattens: the smallest executor count at which the overhead exceeds the task's own work
    (efficiency below 50% at the best feasible depth), per parameter count; None if not below 100,000."""
    found = {}
    for params in (1e4, 1e6, 1e7):
        found[f"{params:.0e}"] = None
        for executors in sorted({int(round(10 ** (k / 20))) for k in range(0, 101)}):
            best = best_plan(executors, params, task_s, constants)
            if best is None or best["efficiency"] < 0.5:
                found[f"{params:.0e}"] = executors
                break
    return found


def model_rows(model: dict[str, Any]) -> list[dict[str, Any]]:
    per = model["per_param"]
    rows = [
        row("model", "job floor / Python task start / driver per task",
            f"{model['job_floor_s'] * 1e3:.0f} / {model['python_task_s'] * 1e3:.0f} / {model['driver_per_task_s'] * 1e3:.2f}", "ms"),
        row("model", "merge / encode / finish per parameter", f"{per['merge_s'] * 1e9:.2f} / {per['encode_s'] * 1e9:.1f} / {per['finish_s'] * 1e9:.1f}", "ns"),
        row("model", "pickle / unpickle per MB", f"{per['pickle_s_per_byte'] * 1e9:.2f} / {per['unpickle_s_per_byte'] * 1e9:.2f}", "ms"),
        row("model", "moving results per MB: collect on the driver / through a reduceByKey level (local session)",
            f"{model['collect_s_per_byte'] * 1e9:.2f} / {model['shuffle_s_per_byte'] * 1e9:.2f}", "ms"),
        row("model", "broadcast create / read per MB", f"{model['broadcast_create_s_per_byte'] * 1e9:.2f} / {model['broadcast_read_s_per_byte'] * 1e9:.2f}", "ms"),
    ]
    for params in (1e4, 1e6, 1e7):
        for executors in (100, 1000):
            best = best_plan(executors, params, 1.0, model)
            case = f"predicted PPO {params:.0e} params, {executors} executors"
            if best is None:
                rows.append(row(case, "overhead per iteration", f"infeasible: every depth collects > {MAX_RESULT_BYTES / 2**30:.0f} GiB on the driver"))
            else:
                rows.append(row(case, f"overhead per iteration (best depth {best['depth']}, levels {best['levels']})", best["overhead_s"], "s"))
    for params, executors in model["half_efficiency_executors"].items():
        rows.append(row(f"predicted PPO {params} params", "executors where overhead exceeds 1 s of work per task", executors if executors else "> 100,000"))
    return rows


# ---- subprocesses --------------------------------------------------------------------------------------------


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without what spark-submit set for it (its gateway, its start time)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "SPARK_")) and k not in ("PYTHONPATH", "MASTER", "DDRL_MASTER", "DDRL_STARTED_AT")}
    environ.update(extra or {})
    return environ


def run_process(command: list[str], log_path: Path, timeout: float, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a command in its own process group, output to ``log_path``; whole-process wall time from launch."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    launched = time.time()
    environ = child_environment({**(extra_env or {}), "DDRL_STARTED_AT": f"{launched:.6f}"})
    log(f"$ {' '.join(command)}  (log: {log_path})")
    with open(log_path, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=environ, cwd=ROOT, start_new_session=True)
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the group this call started
            process.wait()
            returncode = None
    ended = time.time()
    text = log_path.read_text(errors="replace")
    return {"returncode": returncode, "launched": launched, "wall_parent_s": ended - launched, "output": text, "log": str(log_path)}


def parse_train_output(text: str) -> dict[str, Any]:
    """The summary lines jobs/train.py (and the SB3 subcommands) print."""
    found: dict[str, Any] = {}
    if match := re.search(r"final evaluation: (-?[\d.]+) \+- ([\d.]+) over (\d+) episodes \((solved|not solved)\)", text):
        found.update(final_eval=float(match[1]), final_eval_std=float(match[2]), final_solved=match[4] == "solved")
    if match := re.search(r"env steps: (\d+)", text):
        found["env_steps"] = int(match[1])
    if match := re.search(r"wall time: ([\d.]+) s", text):
        found["wall_s"] = float(match[1])
    if match := re.search(r"stopping evaluation: (-?[\d.]+) at (\d+) steps", text):
        found.update(stop_eval=float(match[1]), stop_steps=int(match[2]))
    return found


def read_run_metrics(run_dir: Path) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = sorted((run_dir / "metrics").glob("iteration-*.parquet"))
    if not paths:
        return []
    return pa.concat_tables([pq.read_table(p) for p in paths], promote_options="default").to_pylist()


def train_command(master: str | None, config_path: str, run_dir: Path, overrides: list[str]) -> list[str]:
    command = [str(ROOT / "spark-submit.sh")]
    if master:
        command += ["--master", master]
    command += ["jobs/train.py", "--config", config_path, "--run-dir", str(run_dir)]
    for override in overrides:
        command += ["--set", override]
    return command


# ---- part 3: scaling -----------------------------------------------------------------------------------------


def scaling_run(bench: Bench, master: str, path: str, overrides: list[str], label: str, worker_dir: Path) -> dict[str, Any]:
    """One ./spark-submit.sh training process on ``master``; rates over the iterations after the first."""
    run_dir = bench.work / "runs" / label
    result = run_process(train_command(master, path, run_dir, overrides), bench.work / "logs" / f"{label}.log", bench.sizes.subprocess_timeout,
                         {"SPARK_WORKER_DIR": str(worker_dir)})
    metrics = read_run_metrics(run_dir)
    steps = per_iteration_steps(metrics)
    later = list(zip(metrics, steps))[1:]
    if result["returncode"] != 0 or not later:
        return {"error": f"{master}: exit {result['returncode']}, {len(metrics)} iterations; see {result['log']}"}
    total_steps = sum(s for _, s in later)
    return {
        "steps_per_s": total_steps / sum(r["iteration_s"] for r, _ in later),
        "tasks_steps_per_s": total_steps / sum(r["tasks_s"] for r, _ in later),
        "median_iteration_steps_per_s": median([r["steps_per_s"] for r, _ in later]),
        "median_iteration_s": median([r["iteration_s"] for r, _ in later]),
        "iterations_measured": len(later),
        "wall_s": parse_train_output(result["output"]).get("wall_s", result["wall_parent_s"]),
        "load_average": load_average(),
    }


def scaling(bench: Bench) -> dict[str, Any]:
    sizes = bench.sizes
    from ddrl import config as config_module

    pairs = [("local[1]", "local[2]"), ("local-cluster[1,1,1024]", "local-cluster[2,1,1024]")]
    cases = [("CartPole PPO", "conf/cartpole_ppo.yaml", sizes.scaling_cartpole_iterations, pairs)]
    if sizes.scaling_ars:
        cases.append(("HalfCheetah ARS", "conf/halfcheetah_ars.yaml", sizes.scaling_ars_iterations, pairs))
    rows, data = [], {}
    worker_dir = bench.work / "spark-worker"
    for case, path, iterations, pairs in cases:
        config = config_module.load(ROOT / path)
        budget = iteration_steps(config) * iterations
        overrides = ["train.stop_at_target=false", f"train.total_env_steps={budget}"]
        for single, double in pairs:
            runs: dict[str, list[dict[str, Any]]] = {single: [], double: []}
            for repeat in range(sizes.scaling_repeats):
                for master in (single, double):
                    label = f"scaling-{Path(path).stem}-{re.sub(r'[^0-9a-z]+', '-', master).strip('-')}-{repeat + 1}"
                    runs[master].append(scaling_run(bench, master, path, overrides, label, worker_dir))
            key = f"{case}: {double} / {single}"
            data[key] = runs
            failed = [r["error"] for master_runs in runs.values() for r in master_runs if "error" in r]
            if failed:
                rows.append(row(case, f"{double} vs {single}", "; ".join(failed), "", ">= 1.8x", False))
                continue
            ratios = [d["steps_per_s"] / s_["steps_per_s"] for s_, d in zip(runs[single], runs[double])]
            tasks_ratios = [d["tasks_steps_per_s"] / s_["tasks_steps_per_s"] for s_, d in zip(runs[single], runs[double])]
            ratio = median(ratios)
            rows += [
                row(case, f"{single} steps/s (iterations 2+, median of {len(ratios)} runs)", median([r["steps_per_s"] for r in runs[single]]), "steps/s"),
                row(case, f"{double} steps/s (iterations 2+, median of {len(ratios)} runs)", median([r["steps_per_s"] for r in runs[double]]), "steps/s"),
                row(case, f"{double} / {single} (median; each run pair: {', '.join(f'{r:.2f}' for r in ratios)})", ratio, "x", ">= 1.8x", ratio >= 1.8),
                row(case, f"{double} / {single}, Spark job only (steps / tasks_s)", median(tasks_ratios), "x"),
            ]
    return {"rows": rows, "data": data}


# ---- part 5: vs Stable-Baselines3 on CartPole ----------------------------------------------------------------


def _require_sb3() -> None:
    import importlib.util

    if importlib.util.find_spec("stable_baselines3") is None:
        raise RuntimeError("stable-baselines3 is not installed: .venv/bin/pip install -r requirements-bench.txt")


def vs_sb3(bench: Bench) -> dict[str, Any]:
    """The README's first command against SB3 PPO (rl-zoo), seed by seed in turn: whole processes, each side stopping
    at its first 20-episode evaluation >= 475 (ddrl: --set train.solved_evaluations=1; the config asks for two)."""
    _require_sb3()
    sizes = bench.sizes
    runs: dict[str, list[dict[str, Any]]] = {"ddrl": [], "sb3": []}
    for seed in sizes.sb3_seeds:
        run_dir = bench.work / "runs" / f"vs_sb3-ddrl-seed{seed}"
        overrides = [f"seed={seed}", "train.solved_evaluations=1"] + ([f"train.total_env_steps={sizes.sb3_ddrl_steps}"] if sizes.sb3_ddrl_steps else [])
        result = run_process(train_command(None, "conf/cartpole_ppo.yaml", run_dir, overrides), bench.work / "logs" / f"vs_sb3-ddrl-seed{seed}.log",
                             sizes.subprocess_timeout)
        config_file = run_dir / "config.yaml"
        startup = config_file.stat().st_mtime - result["launched"] if config_file.exists() else math.nan
        metrics = read_run_metrics(run_dir)
        solved = any((r.get("eval_return_mean") or -math.inf) >= CARTPOLE_TARGET for r in metrics)
        runs["ddrl"].append({
            "seed": seed, "returncode": result["returncode"], **parse_train_output(result["output"]), "wall_parent_s": result["wall_parent_s"],
            "solved": solved, "startup_s": startup,
            "first_iteration_s": metrics[0]["iteration_s"] if metrics else math.nan,
            "later_iteration_s": median([r["iteration_s"] for r in metrics[1:]]),
            "iterations_s": sum(r["iteration_s"] for r in metrics),
            "log": result["log"], "load_average": load_average(),
        })
        command = [sys.executable, str(ROOT / "jobs" / "benchmark.py"), "sb3-cartpole", "--seed", str(seed), "--max-steps", str(sizes.sb3_max_steps)]
        result = run_process(command, bench.work / "logs" / f"vs_sb3-sb3-seed{seed}.log", sizes.subprocess_timeout)
        parsed = parse_train_output(result["output"])
        runs["sb3"].append({"seed": seed, "returncode": result["returncode"], **parsed, "wall_parent_s": result["wall_parent_s"],
                            "solved": parsed.get("stop_eval", -math.inf) >= CARTPOLE_TARGET, "log": result["log"], "load_average": load_average()})

    def solved_time(run: dict[str, Any]) -> float:
        return run["wall_parent_s"] if run["solved"] else math.inf

    ddrl_times, sb3_times = [solved_time(r) for r in runs["ddrl"]], [solved_time(r) for r in runs["sb3"]]
    ratios = [d / s for d, s in zip(ddrl_times, sb3_times)]
    ratio = float(np.median(ratios))
    rows = []
    for r, t in zip(runs["ddrl"], ddrl_times):
        rows.append(row(f"ddrl seed {r['seed']}", "process wall to its first 20-ep eval >= 475 (and exit)", t if math.isfinite(t) else "not solved",
                        "s" if math.isfinite(t) else ""))
    for r, t, q in zip(runs["sb3"], sb3_times, ratios):
        rows.append(row(f"SB3 seed {r['seed']}", "process wall to its first 20-ep eval >= 475 (and exit)", t if math.isfinite(t) else "not solved",
                        "s" if math.isfinite(t) else "", f"ddrl / SB3 = {q:.2f}"))
    rows += [
        row("ddrl / SB3", f"median of the per-seed ratios ({len(ratios)} seeds)", ratio, "x", "<= 1.0 (no worse than 1.3)", ratio <= 1.0),
        row("ddrl", "median process wall", float(np.median(ddrl_times)), "s"),
        row("SB3", "median process wall", float(np.median(sb3_times)), "s"),
        row("ddrl", "median env steps", median([r.get("env_steps", math.nan) for r in runs["ddrl"]]), "steps"),
        row("SB3", "median env steps", median([r.get("stop_steps", math.nan) for r in runs["sb3"]]), "steps"),
        row("ddrl", "median start-up before iteration 1 (interpreter, imports, JVM, Spark session)", median([r["startup_s"] for r in runs["ddrl"]]), "s"),
        row("ddrl", "median first iteration (Python workers start and import torch, first job)", median([r["first_iteration_s"] for r in runs["ddrl"]]), "s"),
        row("ddrl", "median later iteration", median([r["later_iteration_s"] for r in runs["ddrl"]]), "s"),
        row("ddrl", "median after the last iteration (final evaluation, plot, Spark stop, exit)",
            median([r["wall_parent_s"] - r["startup_s"] - r["iterations_s"] for r in runs["ddrl"]]), "s"),
    ]
    return {"rows": rows, "data": runs}


# ---- part 6: HalfCheetah at equal wall time ------------------------------------------------------------------

ARS_STEPS_PER_S_DEFAULT = 40_000.0  # local[2] here (BENCHMARKS.md, scaling); the breakdown part measures it when it runs first
ARS_ITERATION_STEPS = 64_000


def halfcheetah(bench: Bench) -> dict[str, Any]:
    _require_sb3()
    sizes = bench.sizes
    minutes = sizes.halfcheetah_minutes
    args = bench.args
    rate = ARS_STEPS_PER_S_DEFAULT
    measured = bench.results["parts"].get("breakdown", {}).get("data", {}).get("HalfCheetah ARS (conf/halfcheetah_ars.yaml)")
    if measured:
        rate = measured["whole_iteration_steps_per_s"]
    startup_s = 12.0  # start-up (~5 s here), the first iteration's warm-up and the final evaluation
    steps = getattr(args, "halfcheetah_steps", None) or max(int(rate * (minutes * 60 - startup_s)) // ARS_ITERATION_STEPS, 1) * ARS_ITERATION_STEPS
    run_dir = bench.work / "runs" / "halfcheetah-ddrl-ars"
    overrides = ["train.stop_at_target=false", f"train.total_env_steps={steps}"]
    timeout = minutes * 60 * 2 + 300
    ddrl_result = run_process(train_command(None, "conf/halfcheetah_ars.yaml", run_dir, overrides), bench.work / "logs" / "halfcheetah-ddrl.log", timeout)
    ddrl_parsed = parse_train_output(ddrl_result["output"])
    command = [sys.executable, str(ROOT / "jobs" / "benchmark.py"), "sb3-halfcheetah", "--seed", "1", "--minutes", str(minutes)]
    sb3_result = run_process(command, bench.work / "logs" / "halfcheetah-sb3.log", timeout)
    sb3_parsed = parse_train_output(sb3_result["output"])
    ddrl_eval, sb3_eval = ddrl_parsed.get("final_eval", math.nan), sb3_parsed.get("final_eval", math.nan)
    rows = [
        row("ddrl ARS (2 cores)", "final evaluation (20 episodes)", ddrl_eval, "", ">= SB3's", ddrl_eval >= sb3_eval if math.isfinite(ddrl_eval) and math.isfinite(sb3_eval) else False),
        row("ddrl ARS (2 cores)", "wall time / env steps", f"{ddrl_parsed.get('wall_s', math.nan):.0f} s / {ddrl_parsed.get('env_steps', 0):,}"),
        row("SB3 PPO rl-zoo (1 core)", "final evaluation (20 episodes)", sb3_eval),
        row("SB3 PPO rl-zoo (1 core)", "wall time / env steps", f"{sb3_parsed.get('wall_s', math.nan):.0f} s / {sb3_parsed.get('env_steps', 0):,}"),
    ]
    data = {"minutes": minutes, "ddrl_steps_budget": steps, "ddrl_rate_used_for_budget": rate,
            "ddrl": {**ddrl_parsed, "returncode": ddrl_result["returncode"], "wall_parent_s": ddrl_result["wall_parent_s"], "log": ddrl_result["log"]},
            "sb3": {**sb3_parsed, "returncode": sb3_result["returncode"], "wall_parent_s": sb3_result["wall_parent_s"], "log": sb3_result["log"]},
            "load_average": load_average()}
    return {"rows": rows, "data": data}


# ---- SB3 subcommands (run as their own processes) ------------------------------------------------------------


def _evaluate_sb3(model: Any, env_id: str, episodes: int, seed: int, normalize: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Deterministic returns of ``episodes`` episodes, one per sub-env of a vector env (as ddrl evaluates)."""
    import gymnasium as gym

    vector_env = gym.make_vec(env_id, episodes)
    try:
        obs, _ = vector_env.reset(seed=seed)
        returns, running = np.zeros(episodes), np.ones(episodes, dtype=bool)
        while running.any():
            action, _ = model.predict(normalize(obs) if normalize else obs, deterministic=True)
            obs, reward, terminated, truncated, _ = vector_env.step(action)
            returns += np.where(running, reward, 0.0)
            running &= ~(terminated | truncated)
        return returns
    finally:
        vector_env.close()


def sb3_cartpole(argv: list[str]) -> int:
    """SB3 PPO with rl-zoo's CartPole-v1 hyperparameters until a 20-episode deterministic evaluation >= 475."""
    parser = argparse.ArgumentParser(prog="benchmark.py sb3-cartpole")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=100_000, help="rl-zoo's n_timesteps (schedules decay over it)")
    parser.add_argument("--eval-every", type=int, default=4096, help="env steps between evaluations (ddrl: one iteration)")
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest for a 64x64 MLP; 2 threads on 2 busy cores ran 6x slower)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)  # before the first torch op
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    def linear(start: float) -> Callable[[float], float]:
        return lambda progress_remaining: progress_remaining * start

    env = make_vec_env("CartPole-v1", n_envs=8, seed=args.seed)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0,
                learning_rate=linear(1e-3), clip_range=linear(0.2), seed=args.seed, device="cpu", verbose=0)
    evaluations: list[tuple[int, float, float]] = []

    class Check(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps // args.eval_every > len(evaluations):
                returns = _evaluate_sb3(model, "CartPole-v1", args.eval_episodes, args.seed * 1000 + len(evaluations))
                evaluations.append((self.num_timesteps, float(returns.mean()), time.time() - STARTED_AT))
                print(f"eval at {self.num_timesteps} steps: {returns.mean():.1f} ({evaluations[-1][2]:.1f} s)", flush=True)
                return returns.mean() < CARTPOLE_TARGET
            return True

    model.learn(total_timesteps=args.max_steps, callback=Check())
    last_steps, last_eval, _ = evaluations[-1] if evaluations else (model.num_timesteps, math.nan, 0.0)
    print(f"stopping evaluation: {last_eval:.1f} at {last_steps} steps")
    wall = time.time() - STARTED_AT
    final = _evaluate_sb3(model, "CartPole-v1", args.eval_episodes, 10**6 + args.seed)
    verdict = "solved" if final.mean() >= CARTPOLE_TARGET else "not solved"
    print(f"final evaluation: {final.mean():.1f} +- {final.std():.1f} over {args.eval_episodes} episodes ({verdict})")
    print(f"env steps: {model.num_timesteps}")
    print(f"wall time: {wall:.1f} s, whole process (to the stopping evaluation)")
    return 0


def sb3_halfcheetah(argv: list[str]) -> int:
    """SB3 PPO with rl-zoo's HalfCheetah hyperparameters on one core, trained for a wall-time budget."""
    parser = argparse.ArgumentParser(prog="benchmark.py sb3-halfcheetah")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=15.0, help="whole-process budget, final evaluation included")
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--cpu", type=int, default=0, help="the core to pin to")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    import torch

    torch.set_num_threads(1)  # before the first torch op
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    reserve = 10.0 if args.minutes >= 5 else 4.0  # seconds kept for the final evaluation
    deadline = STARTED_AT + args.minutes * 60 - reserve
    env = VecNormalize(make_vec_env("HalfCheetah-v5", n_envs=1, seed=args.seed), gamma=0.98)  # rl-zoo: normalize, gamma of the algo
    policy_kwargs = {"log_std_init": -2, "ortho_init": False, "activation_fn": torch.nn.ReLU, "net_arch": {"pi": [256, 256], "vf": [256, 256]}}
    model = PPO("MlpPolicy", env, batch_size=64, n_steps=512, gamma=0.98, learning_rate=2.0633e-05, ent_coef=0.000401762, clip_range=0.1,
                n_epochs=20, gae_lambda=0.92, max_grad_norm=0.8, vf_coef=0.58096, policy_kwargs=policy_kwargs, seed=args.seed, device="cpu", verbose=0)

    class Deadline(BaseCallback):
        def _on_step(self) -> bool:
            return time.time() < deadline

    # rl-zoo's budget is 1M steps; the deadline stops training here (lr and clip are constant: no schedule to keep).
    model.learn(total_timesteps=100_000_000, callback=Deadline())
    env.training = False
    final = _evaluate_sb3(model, "HalfCheetah-v5", args.eval_episodes, 10**6 + args.seed, normalize=env.normalize_obs)
    print(f"final evaluation: {final.mean():.1f} +- {final.std():.1f} over {args.eval_episodes} episodes (not solved)")
    print(f"env steps: {model.num_timesteps}")
    print(f"wall time: {time.time() - STARTED_AT:.1f} s, whole process")
    return 0


# ---- rounds: local rounds, task count and Adam's moments on CartPole (#10) --------------------------------------


def rounds(bench: Bench) -> dict[str, Any]:
    """Each variant and seed on the shared session, stopping at the first 20-episode evaluation >= 475: the env steps
    that policy had trained on, and the training seconds to the stop (the iterations' own time, the evaluating job
    included; start-up is the same for every variant and is measured by vs_sb3)."""
    import ddrl

    sizes, data, rows = bench.sizes, {}, []
    stop = ["train.solved_evaluations=1", "train.eval_episodes=20", "output.checkpoint_every=1000"]
    budget = [f"train.total_env_steps={sizes.rounds_budget}"] if sizes.rounds_budget else []
    warm = ddrl.train(bench.spark(), ROOT / "conf" / "cartpole_ppo.yaml", overrides=[*stop, "train.total_env_steps=1"],
                      run_dir=bench.work / "runs" / "rounds-warm-up", observers=[])  # Python workers start and import torch
    log(f"rounds: workers warm ({warm.wall_seconds:.1f} s)")
    for variant in sizes.rounds_variants:
        runs = []
        for seed in sizes.rounds_seeds:
            label = f"rounds-{len(data)}-seed{seed}"
            result = ddrl.train(bench.spark(), ROOT / "conf" / "cartpole_ppo.yaml", overrides=[*ROUND_VARIANTS[variant], *stop, *budget, f"seed={seed}"],
                                run_dir=bench.work / "runs" / label, observers=[])
            metrics = result.metrics.to_pylist()
            first = next((r for r in metrics if (r["eval_return_mean"] or -math.inf) >= CARTPOLE_TARGET), None)
            solved = first is not None
            runs.append({"seed": seed, "env_steps": first["eval_env_steps"] if solved else math.inf, "consumed_env_steps": result.env_steps,
                         "iterations": result.iterations, "solved": solved,
                         "training_s": sum(r["iteration_s"] for r in metrics), "iteration_s": median([r["iteration_s"] for r in metrics]),
                         "final_eval": result.eval_return_mean})
            log(f"rounds: {variant} seed {seed}: {result.env_steps} steps, {runs[-1]['training_s']:.1f} s, solved {solved}")
        data[variant] = runs
        steps = [r["env_steps"] if r["solved"] else math.inf for r in runs]
        seconds = [r["training_s"] if r["solved"] else math.inf for r in runs]
        rows += [
            row(variant, f"env steps of the first policy evaluated >= 475, median (mean) of {len(runs)} seeds",
                f"{np.median(steps):,.0f} ({np.mean(steps):,.0f})", "steps"),
            row(variant, "training seconds to solved, median (mean)", f"{np.median(seconds):.1f} ({np.mean(seconds):.1f})", "s"),
            row(variant, "seconds per iteration, median; seeds not solved in budget",
                f"{median([r['iteration_s'] for r in runs]):.2f}; {sum(not r['solved'] for r in runs)}", "s"),
        ]
    return {"rows": rows, "data": data}


# ---- large_model: a 2.1M-parameter PPO, iteration time against the tasks' own work (#10) ------------------------


def large_model(bench: Bench) -> dict[str, Any]:
    """HalfCheetah-v5 PPO with two hidden layers of ``large_model_hidden`` units, 8 tasks: each iteration's time against
    its tasks' own rollout and update spread over the cores, with the 8-byte result and with Adam's moments averaged."""
    from ddrl import envs
    from ddrl.algorithms import ppo

    sizes, data, rows = bench.sizes, {}, []
    cores = int(bench.spark().sparkContext.defaultParallelism)
    hidden = sizes.large_model_hidden
    base = [f"ppo.hidden_sizes=[{hidden},{hidden}]", "spark.num_tasks=8", "train.eval_every=1000"]
    base += [f"ppo.num_steps={sizes.large_model_steps}"] if sizes.large_model_steps else []
    # 8 results through treeReduce: depth 1 collects all 8 on the driver, depth 2 adds a reduceByKey level of 2.
    variants = {"fedadamw, depth 1": ["ppo.adam_moments=fedadamw", "spark.tree_depth=1"],
                "fedadamw, depth 2": ["ppo.adam_moments=fedadamw", "spark.tree_depth=2"],
                "average, depth 2": ["ppo.adam_moments=average", "spark.tree_depth=2"]}
    for name, overrides in variants.items():
        label = "large_model-" + name.replace(", ", "-").replace(" ", "")
        config, iterations = train_in_process(bench, "conf/halfcheetah_ppo.yaml", [*base, *overrides], sizes.large_model_iterations, label)
        algorithm = ppo.PPO(config, envs.describe(config.env))
        measured = iterations[1:]
        own = [sum(t["rollout_s"] + t["update_s"] for t in r["tasks"]) / cores for r in measured]
        total = [r["iteration_s"] for r in measured]
        beyond = [(t - o) / t * 100 for t, o in zip(total, own)]
        data[name] = {"parameters": sum(algorithm.tensor_sizes), "result_bytes": algorithm.task_result_bytes(), "cores": cores,
                      "iterations": _slim(iterations)}
        case = f"{sum(algorithm.tensor_sizes) / 1e6:.1f}M params, adam {name}"
        rows += [
            row(case, "bytes per parameter per task (result)", algorithm.task_result_bytes() / sum(algorithm.tensor_sizes), "B"),
            row(case, "iteration, median", median(total), "s"),
            row(case, f"tasks' own rollout + update over {cores} cores, median", median(own), "s"),
            row(case, "time beyond the tasks' own work", median(beyond), "%", "<= 10%", median(beyond) <= 10),
            row(case, "ship / merge, median", f"{median([r['ship_s'] for r in measured]):.2f} / {median([r['merge_s'] for r in measured]):.2f}", "s"),
        ]
    return {"rows": rows, "data": data}


# ---- part 8: Spark Connect against classic -------------------------------------------------------------------


def connect(bench: Bench) -> dict[str, Any]:
    """The same config on a classic local[2] session and on a Spark Connect server started inside the process
    (``jobs/train.py --remote local[2]``), whole processes in turn; the first iteration (Python workers start) is
    not measured.  Both sides run jobs/train.py with plain Python and Spark's defaults."""
    sizes, data, rows = bench.sizes, {}, []
    hidden = sizes.connect_hidden
    cases = {
        "CartPole PPO (shipped config)": ("conf/cartpole_ppo.yaml", [], sizes.connect_iterations[0]),
        f"PPO 2x{hidden} (HalfCheetah-v5)": ("conf/halfcheetah_ppo.yaml", [f"ppo.hidden_sizes=[{hidden},{hidden}]"], sizes.connect_iterations[1]),
    }
    from ddrl import config as config_module
    from ddrl import envs
    from ddrl.algorithms import ppo

    for case, (path, overrides, iterations) in cases.items():
        config = config_module.load(ROOT / path, overrides)
        overrides = [*overrides, "train.stop_at_target=false", f"train.total_env_steps={iteration_steps(config) * iterations}"]
        parameters = sum(ppo.PPO(config, envs.describe(config.env)).tensor_sizes)
        runs: dict[str, list[dict[str, Any]]] = {"classic": [], "connect": []}
        for repeat in range(sizes.connect_repeats):
            for kind in runs:
                label = f"connect-{path.split('/')[-1].removesuffix('.yaml')}-{kind}-{repeat}"
                run_dir = bench.work / "runs" / label
                command = [sys.executable, str(ROOT / "jobs" / "train.py"), "--config", path, "--run-dir", str(run_dir)]
                command += [item for override in overrides for item in ("--set", override)]
                command += ["--remote", "local[2]"] if kind == "connect" else []
                result = run_process(command, bench.work / "logs" / f"{label}.log", sizes.subprocess_timeout,
                                     {"PYSPARK_PYTHON": sys.executable, "DDRL_MASTER": "local[2]"})
                measured = read_run_metrics(run_dir)[1:]
                if result["returncode"] != 0 or not measured:
                    raise RuntimeError(f"{label}: exit {result['returncode']}, {len(measured)} measured iterations; see {result['log']}")
                runs[kind].append({key: median([r[key] for r in measured]) for key in ("iteration_s", "ship_s", "tasks_s", "merge_s", "driver_s")}
                                  | {"wall_s": parse_train_output(result["output"]).get("wall_s", math.nan), "log": result["log"]})
        data[case] = {"parameters": parameters, "iterations_measured": iterations - 1, "runs": runs}
        classic_s, connect_s = (median([r["iteration_s"] for r in runs[kind]]) for kind in ("classic", "connect"))
        case = f"{case}, {parameters / 1e6:.2f}M params"
        rows += [
            row(case, "iteration, classic (median)", classic_s, "s"),
            row(case, "iteration, Spark Connect (median)", connect_s, "s"),
            row(case, "Connect's extra time per iteration", connect_s - classic_s, "s", f"Connect / classic = {connect_s / classic_s:.2f}"),
            *(row(case, f"{key} classic / Connect (median)",
                  f"{median([r[key] for r in runs['classic']]):.3f} / {median([r[key] for r in runs['connect']]):.3f}", "s")
              for key in ("ship_s", "tasks_s", "driver_s")),
            row(case, "whole process classic / Connect (median)",
                f"{median([r['wall_s'] for r in runs['classic']]):.1f} / {median([r['wall_s'] for r in runs['connect']]):.1f}", "s"),
        ]
    return {"rows": rows, "data": data}


# ---- main ----------------------------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "throughput": throughput,
    "breakdown": breakdown,
    "cost_model": cost_model,
    "scaling": scaling,
    "vs_sb3": vs_sb3,
    "halfcheetah": halfcheetah,
    "rounds": rounds,
    "large_model": large_model,
    "connect": connect,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], metavar="PART", help=f"one or more of {', '.join(PARTS)} (comma-separated or repeated)")
    parser.add_argument("--quick", action="store_true", help="smoke-size run of every part")
    parser.add_argument("--out", type=Path, help="JSON results (default runs/benchmark-<timestamp>/benchmark.json)")
    parser.add_argument("--seeds", help="vs_sb3 seeds, comma-separated (default 1,2,3; --quick: 1)")
    parser.add_argument("--halfcheetah-minutes", type=float, help="halfcheetah: wall time of each side (default 15; --quick: 1)")
    parser.add_argument("--halfcheetah-steps", type=int, help="halfcheetah: ddrl's step budget (default: sized for the minutes)")
    args = parser.parse_args(argv)
    parts = [part for item in args.only for part in item.split(",") if part]
    unknown = [part for part in parts if part not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    args.parts = [part for part in PARTS if part in parts] if parts else list(PARTS)
    return args


def run_parts(bench: Bench, parts: list[str]) -> dict[str, Any]:
    """Run the parts in order (in-process ones first), printing each table and rewriting the JSON after each."""
    failures = {}
    for part in parts:
        if part not in IN_PROCESS:
            bench.stop_spark()  # at most one Spark session at a time: the subprocess parts start their own
        log(f"part {part} (load average {load_average()})")
        started = time.perf_counter()
        try:
            result = RUNNERS[part](bench)
        except Exception as error:  # one failing part must not lose the others' results
            log(f"part {part} failed: {type(error).__name__}: {error}")
            failures[part] = f"{type(error).__name__}: {error}"
            result = {"rows": [row(part, "error", f"{type(error).__name__}: {error}")], "data": {}}
        result["seconds"] = time.perf_counter() - started
        result["load_average_after"] = load_average()
        bench.record(part, result)
        print(f"\n## {part} ({result['seconds']:.0f} s, load average {result['load_average_after']})\n", flush=True)
        print(markdown_table(result["rows"]), flush=True)
    bench.results["meta"]["failures"] = failures
    bench.results["meta"]["load_average_1min_at_end"] = load_average()
    bench.results["meta"]["seconds"] = time.time() - STARTED_AT
    bench.save()
    return bench.results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "sb3-cartpole":
        return sb3_cartpole(argv[1:])
    if argv and argv[0] == "sb3-halfcheetah":
        return sb3_halfcheetah(argv[1:])
    args = parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.seeds:
        sizes.sb3_seeds = tuple(int(seed) for seed in args.seeds.split(","))
    if args.halfcheetah_minutes:
        sizes.halfcheetah_minutes = args.halfcheetah_minutes
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = ROOT / "runs" / f"benchmark-{stamp}"
    out = args.out.resolve() if args.out else work / "benchmark.json"
    bench = Bench(sizes, work, out, args.quick, args=args)
    log(f"parts {', '.join(args.parts)}{' (quick)' if args.quick else ''}; outputs in {work}, results in {out}")
    try:
        results = run_parts(bench, args.parts)
    finally:
        bench.stop_spark()
    log(f"done in {results['meta']['seconds']:.0f} s; results in {out}")
    return 1 if results["meta"]["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
