"""The Spark iteration loop: split, ship, work, merge, update and repeat.

Each iteration the driver broadcasts the algorithm's payload, runs one Spark task per derived seed, merges
the task results with ``RDD.treeReduce`` (exactly, so the result does not depend on arrival order), applies
the merged result, logs, checkpoints, and destroys the broadcast.  On evaluation iterations the same job also
evaluates the broadcast policy: every task runs its share of the episodes, each seeded from (run seed,
iteration, episode), so the result does not depend on the task count; the stop rule and the best policy kept
(``train.keep_best``) go by these evaluations.  Nothing here knows which algorithm runs: see
``ddrl.algorithm`` for the interface.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Protocol

import numpy as np
import pyarrow as pa

from ddrl import checkpoint, envs
from ddrl.algorithm import Algorithm
from ddrl.config import ALGORITHMS, Config, ConfigError
from ddrl.merge import Partial, merge
from ddrl.policy import Policy
from ddrl.run import Run
from ddrl.seeding import Stream, derive_seed, seed_everything, task_slice
from ddrl.tracking import default_observers

log = logging.getLogger("ddrl")


class TrainingError(RuntimeError):
    """Training stopped: a task kept failing, or every task's result was rejected."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What ``train`` returns: the final policy, where the run lives, and how it went."""

    policy: Policy
    run_dir: Path
    metrics: pa.Table
    """One row per iteration (also in RUN_DIR/metrics as Parquet)."""
    iterations: int
    env_steps: int
    eval_return_mean: float
    eval_return_std: float
    solved: bool
    """Whether the final evaluation reached the target return (None target: never)."""
    wall_seconds: float
    best_eval_return: float | None = None
    """The best evaluation mean of the run (in training or final), with ``train.keep_best``."""
    best_policy_dir: Path | None = None
    """Where the best-evaluated policy is saved (``ddrl.load_policy`` reads it), with ``train.keep_best``."""


def train(
    spark: Any,
    config: str | Path | Mapping[str, Any] | Config | Run,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
    observers: list["RunObserver"] | None = None,
) -> TrainResult:
    """Train on the given SparkSession (never created or stopped here) and return the result.

    ``config`` is a YAML path, a dict, a ``Config``, or a ``Run`` already opened; ``overrides`` are
    ``key.path=value`` strings.  ``resume`` continues the run in that directory from its latest checkpoint.
    ``observers`` see every iteration's metrics and the result (for tracking and plots); None means
    ``ddrl.tracking.default_observers`` (learning curve PNG, MLflow when configured), ``[]`` none.
    """
    started = time.perf_counter()
    run = config if isinstance(config, Run) else Run.open(config, overrides, run_dir, resume)
    spark_context = _spark_context(spark)
    _ship_package(spark_context)
    algorithm: Algorithm = importlib.import_module(ALGORITHMS[run.config.algo]).build(run.config, run.env)
    _check_result_size(spark_context, run.config, algorithm)
    if observers is None:
        observers = default_observers(run.config)
    return _Loop(run, algorithm, spark_context, started, observers).train()


def _spark_context(spark: Any) -> Any:
    try:
        return spark.sparkContext
    except Exception as error:  # Spark Connect raises PySparkNotImplementedError (JVM_ATTRIBUTE_NOT_SUPPORTED)
        raise ConfigError(
            "spark: this session has no SparkContext (Spark Connect, Databricks serverless or shared access mode); "
            "ddrl needs the RDD API: use classic or single-user compute"
        ) from error


_SHIPPED: set[str] = set()


def _ship_package(spark_context: Any) -> None:
    """Make ``ddrl`` importable on executors when it is not installed there: zip it and ``addPyFile`` it."""
    package_dir = Path(__file__).resolve().parent
    installed = "site-packages" in package_dir.parts
    from_zip = not package_dir.is_dir()  # imported from a --py-files zip, which Spark already ships
    if installed or from_zip or spark_context.applicationId in _SHIPPED:
        return
    from pyspark import SparkFiles

    # Spark's own per-session directory, deleted when the session stops: the file server reads the archive from
    # here whenever an executor fetches it, so it must outlive this call, but not the session.
    archive_dir = Path(SparkFiles.getRootDirectory()) / "ddrl-package"
    archive = shutil.make_archive(str(archive_dir / "ddrl"), "zip", package_dir.parent, package_dir.name)
    spark_context.addPyFile(archive)
    _SHIPPED.add(spark_context.applicationId)


DRIVER_HEAP_SHARE = 0.15
"""The share of the driver's JVM heap that results collected in one job may take: in local mode the heap holds
them several times over (executor, block manager, fetched copy).  2 x 240 MB on a 2 GiB heap (23 %) ran out
of it, and the job then hung (BENCHMARKS.md, cost model)."""


def _check_result_size(spark_context: Any, config: Config, algorithm: Algorithm) -> None:
    """Refuse, before the first job, a model whose task results the driver cannot collect: Spark would abort the
    job at ``spark.driver.maxResultSize`` or, short of heap, hang without an error."""
    per_task = algorithm.task_result_bytes()
    collected = per_task * driver_fan_in(config.spark.num_tasks, config.spark.tree_depth)
    jvm = spark_context._jvm
    heap = int(jvm.java.lang.Runtime.getRuntime().maxMemory())
    max_result_size = int(jvm.org.apache.spark.network.util.JavaUtils.byteStringAsBytes(
        spark_context.getConf().get("spark.driver.maxResultSize", "1g")))
    limits = {
        "spark.driver.maxResultSize": max_result_size or math.inf,  # 0 means unlimited
        f"{DRIVER_HEAP_SHARE:.0%} of the driver's heap": heap * DRIVER_HEAP_SHARE,
    }
    name, limit = min(limits.items(), key=lambda item: item[1])
    if collected > limit:
        raise ConfigError(
            f"spark: each task returns {per_task / 2**20:.0f} MiB, and "
            f"the driver would collect {collected / 2**20:.0f} MiB per iteration, over {name} ({limit / 2**20:.0f} MiB): "
            "use a smaller model, a deeper spark.tree_depth, or more spark.driver.memory"
        )


def driver_fan_in(num_tasks: int, depth: int) -> int:
    """How many partial results ``RDD.treeReduce(depth)`` collects on the driver: PySpark's treeAggregate plan."""
    partitions: float = num_tasks
    scale = max(int(math.ceil(num_tasks ** (1.0 / depth))), 2)
    while partitions > scale + partitions / scale:
        partitions /= scale
    return int(partitions)


def _run_task(algorithm: Algorithm, shipped: Any, task: tuple[int, int], config: Config, run_fingerprint: str) -> Partial:
    """Executor side: one task's share of the evaluation, then its work, reseeded from its own seed so that a
    retry returns the same bytes."""
    index, seed = task
    _limit_threads()
    payload, evaluation_seeds = shipped.value["payload"], shipped.value["evaluation_seeds"]
    share = evaluation_seeds[task_slice(index, config.spark.num_tasks, len(evaluation_seeds))]
    evaluation = _evaluate_share(algorithm.payload_policy(payload), config, share, run_fingerprint) if share else None
    seed_everything(seed)
    partial = Partial.of_task(index, algorithm.run_task(payload, index, seed), evaluation)
    _freeze_long_lived_objects(run_fingerprint)
    return partial


_EVALUATION_ENVS: dict[tuple[str, int], Any] = {}


def _evaluate_share(policy: Policy, config: Config, seeds: list[int], run_fingerprint: str) -> dict[str, Any]:
    """Greedy episodes of the broadcast policy, one per seed, in an env vector cached per worker and config."""
    started = time.perf_counter()
    key = (run_fingerprint, len(seeds))
    if key not in _EVALUATION_ENVS:
        for old in [old for old in _EVALUATION_ENVS if old[0] != run_fingerprint]:
            _EVALUATION_ENVS.pop(old).close()
        _EVALUATION_ENVS[key] = envs.make_evaluation_env(config.env, len(seeds))
    returns, _ = envs.evaluate(policy.act_independently, config.env, len(seeds), seeds, _EVALUATION_ENVS[key])
    return {"returns": returns, "seconds": time.perf_counter() - started}


def evaluation_seeds(run_seed: int, iteration: int, episodes: int, stream: Stream = Stream.EVALUATION) -> list[int]:
    """The env seed of each evaluation episode of an iteration: a pure function of (run seed, iteration, episode)."""
    return [derive_seed(run_seed, iteration, episode, stream) % 2**31 for episode in range(episodes)]


_frozen_for_run: str | None = None


def _freeze_long_lived_objects(run_fingerprint: str) -> None:
    """After a Python worker's first task of a config: hide what that task imported and cached (torch, gymnasium,
    envs, modules; ~180k objects) from the cyclic garbage collector.

    PySpark's daemon runs a full ``gc.collect()`` after every task of a reused worker, and over torch's objects
    that takes ~90 ms, during which the worker cannot start the next job's task.  Frozen objects are still
    freed when their reference counts drop.  A worker that moves on to another config unfreezes first, so that
    the cycles among the previous config's cached envs are collected.
    """
    global _frozen_for_run
    if _frozen_for_run == run_fingerprint:
        return
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    _frozen_for_run = run_fingerprint


def _limit_threads() -> None:
    """Give torch the task's CPUs (spark.task.cpus), not every core of the machine."""
    import torch
    from pyspark import TaskContext

    context = TaskContext.get()
    cpus = context.cpus() if context is not None else 1
    if torch.get_num_threads() != cpus:
        torch.set_num_threads(cpus)


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where a run stands after its last completed iteration; checkpoints carry it."""

    iteration: int = 0
    env_steps: int = 0
    solved_streak: int = 0
    """Consecutive evaluations at or above the target return."""
    finished: bool = False
    best_eval_return: float | None = None
    """The best evaluation so far, whose policy ``train.keep_best`` keeps."""


class RunObserver(Protocol):
    """Sees a run from the driver: for experiment tracking, plots and the like.  Must not change training."""

    def on_start(self, run: Run) -> None: ...

    def on_iteration(self, iteration: int, metrics: dict[str, Any]) -> None: ...

    def on_end(self, result: TrainResult) -> None: ...


class _Loop:
    """The driver's iteration loop over one run."""

    def __init__(self, run: Run, algorithm: Algorithm, spark_context: Any, started: float, observers: list[RunObserver]) -> None:
        self.observers = observers
        self.run = run
        self.config = run.config
        self.algorithm = algorithm
        self.spark_context = spark_context
        self.started = started
        self.fingerprint = self.config.fingerprint()

    def train(self) -> TrainResult:
        run, config = self.run, self.config
        state, progress = self._initial_state()
        for observer in self.observers:
            observer.on_start(run)
        target = config.train.target_return if config.train.target_return is not None else run.env.reward_threshold
        recent_rates: list[float] = []
        while not progress.finished:
            iteration_started = time.perf_counter()
            evaluating = progress.iteration % config.train.eval_every == 0
            updated, metrics = self._iteration(state, progress.iteration, evaluating)
            iteration = progress.iteration + 1
            env_steps = progress.env_steps + metrics["env_steps"]
            solved_streak, best = progress.solved_streak, progress.best_eval_return
            if evaluating:  # the job evaluated ``state``, the policy it started from
                metrics["eval_env_steps"] = float(progress.env_steps)
                evaluated = metrics["eval_return_mean"]
                if target is not None:
                    solved_streak = solved_streak + 1 if evaluated >= target else 0
                best = self._keep_if_best(best, evaluated, lambda: self.algorithm.policy(state), progress)
            solved = solved_streak >= config.train.solved_evaluations and config.train.stop_at_target
            # A solved run ends with the policy its evaluations saw, not with the update made in the same job.
            state = state if solved else updated
            progress = Progress(iteration, env_steps, solved_streak, solved or env_steps >= config.train.total_env_steps, best)
            metrics["iteration_s"] = time.perf_counter() - iteration_started
            metrics["driver_s"] = metrics["iteration_s"] - metrics["broadcast_s"] - metrics["tasks_s"]
            metrics["steps_per_s"] = metrics["env_steps"] / metrics["iteration_s"]
            metrics["env_steps"] = env_steps
            metrics["wall_s"] = time.perf_counter() - self.started
            run.write_metrics(iteration, {"iteration": iteration, **metrics})
            # The metrics row first, then the checkpoint: a driver killed in between repeats the iteration on
            # resume (its row is dropped and rewritten); the other order would lose the row for good.
            if iteration % config.output.checkpoint_every == 0 or progress.finished:
                meta = {**dataclasses.asdict(progress), "fingerprint": self.fingerprint}
                checkpoint.save(run.checkpoints, iteration, state, meta, config.output.keep_checkpoints)
            for observer in self.observers:
                observer.on_iteration(iteration, metrics)
            recent_rates = (recent_rates + [metrics["steps_per_s"]])[-5:]
            self._log_progress(iteration, env_steps, metrics, float(np.median(recent_rates)))

        policy = self.algorithm.policy(state)
        policy.save(run.policy_directory)
        seeds = evaluation_seeds(config.seed, progress.iteration, config.train.final_eval_episodes, Stream.FINAL_EVALUATION)
        returns, _ = envs.evaluate(policy.act_independently, config.env, len(seeds), seeds)
        best = self._keep_if_best(progress.best_eval_return, float(returns.mean()), lambda: policy, progress, final=True)
        result = TrainResult(
            policy=policy,
            run_dir=run.directory,
            metrics=run.read_metrics(),
            iterations=progress.iteration,
            env_steps=progress.env_steps,
            eval_return_mean=float(returns.mean()),
            eval_return_std=float(returns.std()),
            solved=target is not None and float(returns.mean()) >= target,
            wall_seconds=time.perf_counter() - self.started,
            best_eval_return=best if config.train.keep_best else None,
            best_policy_dir=run.best_directory if config.train.keep_best else None,
        )
        for observer in self.observers:
            observer.on_end(result)
        return result

    def _keep_if_best(self, best: float | None, evaluated: float, policy: Any, progress: Progress, final: bool = False) -> float | None:
        """With ``train.keep_best``, save ``policy()`` (the evaluated one, at ``progress``) if it beats ``best``; the best."""
        if not self.config.train.keep_best or (best is not None and not evaluated > best):
            return best
        record = {"eval_return_mean": evaluated, "iteration": progress.iteration, "env_steps": progress.env_steps}
        self.run.save_best(policy(), {**record, "final": True} if final else record)
        return evaluated

    def _initial_state(self) -> tuple[dict[str, np.ndarray], "Progress"]:
        run = self.run
        if not run.resumed:
            run.create()
            return self.algorithm.initial_state(), Progress()
        if run.latest_checkpoint is None:
            log.info("no valid checkpoint in %s: starting from iteration 0", run.directory)
            run.drop_metrics_after(0)
            return self.algorithm.initial_state(), Progress()
        state, meta = run.latest_checkpoint
        progress = Progress(meta["iteration"], meta["env_steps"], meta["solved_streak"], meta["finished"], meta["best_eval_return"])
        run.drop_metrics_after(progress.iteration)
        log.info("resuming %s after iteration %d (%d env steps)", run.directory, progress.iteration, progress.env_steps)
        return state, progress

    def _iteration(self, state: dict[str, np.ndarray], iteration: int, evaluating: bool) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        config, spark_context = self.config, self.spark_context
        timer = time.perf_counter()
        episodes = config.train.eval_episodes if evaluating else 0
        shipped = spark_context.broadcast(
            {"payload": self.algorithm.task_payload(state, iteration), "evaluation_seeds": evaluation_seeds(config.seed, iteration, episodes)}
        )
        broadcast_seconds = time.perf_counter() - timer

        timer = time.perf_counter()
        num_tasks = config.spark.num_tasks
        tasks = [(index, derive_seed(config.seed, iteration, index)) for index in range(num_tasks)]
        algorithm, fingerprint = self.algorithm, self.fingerprint
        try:
            partial = (
                spark_context.parallelize(tasks, num_tasks)
                .map(lambda task: _run_task(algorithm, shipped, task, config, fingerprint))
                .treeReduce(merge, depth=config.spark.tree_depth)
            )
        except Exception as error:
            raise TrainingError(f"iteration {iteration + 1}: a task failed after Spark's retries: {_root_cause(error)}") from error
        finally:
            shipped.destroy()  # the job is over: free the driver's temp file and the executors' copies
        tasks_seconds = time.perf_counter() - timer

        result = partial.finish()
        for index, reason in result.rejected.items():
            log.warning("iteration %d: rejected the result of task %d: %s", iteration + 1, index, reason)
        if not result.tasks:
            raise TrainingError(f"iteration {iteration + 1}: every task's result was rejected ({next(iter(result.rejected.values()))})")
        state, algorithm_metrics = self.algorithm.apply(state, result, iteration)

        env_steps = int(sum(task["env_steps"] for task in result.tasks))
        episode_returns = np.concatenate([task["episode_returns"] for task in result.tasks])
        evaluation_returns = np.concatenate([share["returns"] for share in result.evaluations]) if result.evaluations else np.zeros(0)
        metrics = {
            "env_steps": env_steps,
            "episodes": len(episode_returns),
            **_summary("episode_return", episode_returns, ("mean", "min", "max")),
            **_summary("eval_return", evaluation_returns, ("mean", "std")),
            "eval_env_steps": math.nan,
            **algorithm_metrics,
            "rejected_tasks": len(result.rejected),
            "broadcast_s": broadcast_seconds,
            "tasks_s": tasks_seconds,
            "merge_s": partial.merge_seconds,
            "eval_s": max((share["seconds"] for share in result.evaluations), default=0.0),
        }
        return state, metrics

    def _log_progress(self, iteration: int, env_steps: int, metrics: dict[str, Any], steps_per_second: float) -> None:
        remaining = max(self.config.train.total_env_steps - env_steps, 0)
        log.info(
            "iter %4d | steps %9d | return %8s | eval %8s | %7.0f steps/s | %5.2fs | ETA to budget %s",
            iteration,
            env_steps,
            _number(metrics["episode_return_mean"]),
            _number(metrics["eval_return_mean"]),
            metrics["steps_per_s"],
            metrics["iteration_s"],
            _duration(remaining / steps_per_second if steps_per_second > 0 else math.inf),
        )


def _summary(name: str, values: np.ndarray, statistics: tuple[str, ...]) -> dict[str, float]:
    """``name_mean`` and the like of ``values``; NaN where there are none (no episode finished, no evaluation)."""
    return {f"{name}_{statistic}": float(getattr(np, statistic)(values)) if len(values) else math.nan for statistic in statistics}


def _number(value: float) -> str:
    """A progress-line figure: one decimal, or "-" where the iteration had none."""
    return f"{value:.1f}" if math.isfinite(value) else "-"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


def _root_cause(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "Exception" in line]
    return (errors[-1] if errors else lines[-1] if lines else type(error).__name__)[:500]

