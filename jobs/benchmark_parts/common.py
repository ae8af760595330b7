"""What the benchmark parts share: the sizes of every part, result rows and tables, the benchmark context (with the
shared Spark session), in-process training with probes, and running subprocesses."""

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
ROOT = Path(__file__).resolve().parents[2]
CARTPOLE_TARGET = 475.0
PPO_TASK_SCALING = {"averaging": ["ppo.task_scaling=none"], "default (noise-scale learning rate)": []}
"""The scaling_law part's PPO variants: today's default rule of ppo.task_scaling and plain averaging."""


@dataclasses.dataclass(frozen=True)
class LawCase:
    """One case of the scaling_law part: a shipped config trained to ``target`` at each task count and seed."""

    path: str
    target: float
    max_iterations: int  # the step budget, in iterations at each task count
    tasks: tuple[int, ...]
    seeds: tuple[int, ...]
    variants: dict[str, list[str]]  # name to overrides
    eval_every: int = 1  # evaluate every this many iterations
    overrides: tuple[str, ...] = ()  # for every variant


# ---- sizes ---------------------------------------------------------------------------------------------------

AVERAGING = ["spark.sync=parameters", "env.total_envs=null"]
"""Overrides for the parts that study parameter averaging (before spark.sync: gradients) on the shipped configs,
whose envs are now split over the tasks (env.total_envs): each task's own envs (env.num_envs) instead."""

# The rounds part's variants (jobs/benchmark_parts/rounds.py runs them), here for the default of Sizes.rounds_variants.
_ROUNDS_8X256 = [*AVERAGING, "env.num_envs=8", "ppo.num_steps=256", "ppo.update_epochs=10", "ppo.num_minibatches=8", "ppo.gamma=0.99",
                 "ppo.gae_lambda=0.95", "ppo.learning_rate=0.001", "train.total_env_steps=300000", "ppo.carry_episodes=false"]
_ZOO_ROUNDS = [*AVERAGING, "env.num_envs=8", "ppo.num_steps=32", "ppo.update_epochs=20", "ppo.num_minibatches=1", "ppo.gamma=0.98",
               "ppo.gae_lambda=0.8", "ppo.learning_rate=0.001", "train.total_env_steps=100000", "ppo.carry_episodes=false"]
_CARRIED_ZOO = [*AVERAGING, "ppo.num_steps=32", "ppo.update_epochs=20", "ppo.num_minibatches=1", "ppo.gamma=0.98", "ppo.gae_lambda=0.8",
                "ppo.learning_rate=0.001", "train.total_env_steps=300000", "ppo.carry_episodes=true", "spark.num_tasks=2",
                "ppo.adam_moments=fedadamw"]
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
    # Carried episodes (#20): each task's episodes go on from job to job, so rollouts may be short.
    "8x256 rounds, 2 tasks, K=1, carried": [*_ROUNDS_8X256, "spark.num_tasks=2", "ppo.local_rounds=1", "ppo.carry_episodes=true"],
    "zoo 4x32, 2 tasks, K=2, carried": [*_CARRIED_ZOO, "env.num_envs=4", "ppo.local_rounds=2"],
    "zoo 4x32, 2 tasks, K=4, carried (shipped)": [*_CARRIED_ZOO, "env.num_envs=4", "ppo.local_rounds=4"],
    "zoo 4x32, 2 tasks, K=8, carried": [*_CARRIED_ZOO, "env.num_envs=4", "ppo.local_rounds=8"],
    "zoo 8x32, 2 tasks, K=4, carried": [*_CARRIED_ZOO, "env.num_envs=8", "ppo.local_rounds=4"],
}
CARRIED_ROUND_VARIANTS = tuple(name for name in ROUND_VARIANTS if "carried" in name)


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
    simulated_tasks: tuple[int, ...] = (1, 4, 16, 32)
    simulated_iterations: int = 6  # the first (Python workers start) is not measured
    time_to_target_envs: tuple[str, ...] = ("HalfCheetah-v5", "Hopper-v5")
    time_to_target_minutes: float = 15.0  # SB3's budget
    pixels_minatar_steps: int = 500_000
    pixels_atari_steps: int = 0  # 0: not run by default (400k agent steps: ddrl 25 min, then SB3 40 min)
    pixels_atari_local_rounds: tuple[int, ...] = (4,)
    pixels_envpool_iterations: int = 6  # Breakout PPO iterations on each of gymnasium and EnvPool (0: not run)
    sweep_learning_rates: tuple[float, ...] = (3e-4, 1e-3, 2e-3, 3e-3)
    sweep_seeds: int = 4
    sweep_halving_min_steps: int = 8192  # two iterations of the shipped CartPole config
    sweep_budget: int | None = None  # None: the config's budget
    carry_iterations: dict[str, int] = dataclasses.field(  # the first of each is not measured
        default_factory=lambda: {"CartPole PPO": 21, "HalfCheetah PPO": 9, "Breakout PPO": 5})
    data_iterations: int = 21  # the first (workers start, evaluation) is not measured
    data_score_rows: dict[str, int] = dataclasses.field(default_factory=lambda: {"MLP (CartPole)": 200_000, "CNN (Breakout, 84x84x4)": 4_096})
    data_bc_seeds: tuple[int, ...] = (1, 2, 3)
    data_teacher_episodes: int = 10
    sync_tasks: tuple[int, ...] = (1, 2, 4)  # Pendulum and the wall-time cases (needs 4 task slots)
    sync_tasks_cartpole: tuple[int, ...] = (1, 4)
    sync_cartpole_seeds: tuple[int, ...] = (1, 2, 3, 4, 5)
    sync_cartpole_overrides: tuple[str, ...] = ()
    sync_pendulum_seeds: tuple[int, ...] = (1, 2, 3)
    sync_pendulum_overrides: tuple[str, ...] = ("env.total_envs=4",)  # the measurement: the shipped 4 envs over the tasks
    sync_wall_iterations: int = 6  # the first two (workers start, evaluation) are not measured
    sync_wall_cases: dict[str, tuple[str, tuple[str, ...]]] = dataclasses.field(default_factory=lambda: {
        "HalfCheetah PPO": ("conf/halfcheetah_ppo.yaml", ()),
        "Breakout PPO": ("conf/breakout_ppo.yaml", ()),
    })
    sync_latency_repetitions: int = 50
    sync_mujoco_envs: tuple[str, ...] = ("HalfCheetah-v5", "Hopper-v5")
    sync_mujoco_steps: int = 1_000_000
    sync_mujoco_parallel: int = 2  # processes at a time
    sync_mujoco_wide_seeds: int = 1  # how many of the seeds also run on 4 tasks (an hour each on 2 cores)
    sync_mujoco_timeout: float = 4 * 3600.0
    scaling_law_cases: dict[str, LawCase] = dataclasses.field(
        default_factory=lambda: {
            # The default rule leaves a learning rate at or above ppo.max_scaled_learning_rate (CartPole's and
            # Pendulum's 1e-3) unscaled: plain averaging, bit for bit (the part reports a step scale of 1).
            "CartPole PPO": LawCase("conf/cartpole_ppo.yaml", 475.0, 60, (1, 2, 4, 8, 16, 32), (1, 2, 3), {"default": []},
                                    overrides=(*AVERAGING, "env.num_envs=4")),
            "Pendulum PPO": LawCase("conf/pendulum_ppo.yaml", -200.0, 60, (1, 4, 16), (1,), {"default": []}, overrides=(*AVERAGING, "env.num_envs=4")),
            # Up to 32 tasks split ARS's 32 directions (the same iterations, each shorter); 64 tasks take 64.
            "HalfCheetah ARS": LawCase("conf/halfcheetah_ars.yaml", 3000.0, 100, (1, 16, 64), (1,), {"directions": []}),
            # Evaluations of 5 episodes (5,000 env steps) every 5 iterations keep evaluation from outweighing training.
            "HalfCheetah PPO": LawCase("conf/halfcheetah_ppo.yaml", 3000.0, 200, (1, 4, 16), (1,), PPO_TASK_SCALING,
                                       eval_every=5, overrides=("train.eval_episodes=5", *AVERAGING, "env.num_envs=1", "ppo.num_steps=512")),
        })

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
            simulated_tasks=(1, 2),
            simulated_iterations=2,
            time_to_target_envs=("Hopper-v5",),
            time_to_target_minutes=0.5,
            pixels_minatar_steps=4096,
            pixels_atari_steps=2048,
            pixels_atari_local_rounds=(1,),
            pixels_envpool_iterations=2,
            sweep_learning_rates=(1e-3, 3e-3),
            sweep_seeds=1,
            sweep_halving_min_steps=4096,
            sweep_budget=8192,
            carry_iterations={"CartPole PPO": 2, "HalfCheetah PPO": 2, "Breakout PPO": 2},
            data_iterations=2,
            data_score_rows={"MLP (CartPole)": 2_048, "CNN (Breakout, 84x84x4)": 64},
            data_bc_seeds=(1,),
            data_teacher_episodes=2,
            scaling_law_cases={"CartPole PPO": LawCase("conf/cartpole_ppo.yaml", 50.0, 3, (1, 2), (1,), PPO_TASK_SCALING, overrides=(*AVERAGING, "env.num_envs=4"))},
            sync_tasks=(1, 2),
            sync_tasks_cartpole=(1, 2),
            sync_cartpole_seeds=(1,),
            sync_cartpole_overrides=("train.total_env_steps=2048",),
            sync_pendulum_seeds=(1,),
            sync_pendulum_overrides=("env.total_envs=4", "train.total_env_steps=8192"),
            sync_wall_iterations=3,
            sync_wall_cases={"HalfCheetah PPO": ("conf/halfcheetah_ppo.yaml", ("ppo.num_steps=16", "ppo.update_epochs=2"))},
            sync_latency_repetitions=5,
            sync_mujoco_envs=("Hopper-v5",),
            sync_mujoco_steps=1024,
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
        hp = config.hyperparameters
        return config.env.num_envs * hp.num_steps * hp.local_rounds * config.spark.num_tasks
    from ddrl.algorithms import es

    limit = config.env.max_episode_steps or _episode_limit(config.env.id)
    return 2 * es.directions(config)[0] * config.hyperparameters.episodes_per_perturbation * limit


def _episode_limit(env_id: str) -> int:
    import gymnasium as gym

    spec = gym.spec(env_id)
    return int(spec.max_episode_steps or 1000)


def per_iteration_steps(rows: list[dict[str, Any]]) -> list[int]:
    """Env steps of each iteration (the metrics hold the running total)."""
    totals = [int(r["env_steps"]) for r in rows]
    return [total - previous for total, previous in zip(totals, [0, *totals[:-1]])]


def slim(iterations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = ("iteration", "env_steps", "iteration_s", "ship_s", "tasks_s", "merge_s", "driver_s", "rollout_s", "update_s",
            "steps_per_s", "apply_s", "eval_s", "tasks", "eval_return_mean")
    return [{key: r.get(key) for key in keys} for r in iterations]


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
