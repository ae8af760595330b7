"""The driver's iteration loop: split, ship, work, merge, update and repeat.

Each iteration the driver asks the algorithm for its payload, derives one seed per task, and hands both to the
session's engine (``ddrl.engines``: broadcast and treeReduce on classic Spark, mapInArrow on Spark Connect),
which runs the tasks and gives back their exact merge (``ddrl.merge``, so arrival order does not matter).  The
driver applies the merged result, logs and checkpoints.  On evaluation iterations the same job also evaluates
the shipped policy: every task runs its share of the episodes, each seeded from (run seed, iteration,
episode), so the result does not depend on the task count; the stop rule and the best policy kept
(``train.keep_best``) go by these evaluations.  Nothing here knows which algorithm runs (``ddrl.algorithms``)
or which Spark API runs the tasks (``ddrl.engines``).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping, Protocol

import numpy as np
import pyarrow as pa

from ddrl import checkpoint, envs
from ddrl.algorithms import Algorithm
from ddrl.config import ALGORITHMS, Config
from ddrl.engines import Engine, Work, engine_for
from ddrl.policy import Policy
from ddrl.run import Run
from ddrl.seeding import Stream, derive_seed, env_seed
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
    engine = engine_for(spark)
    algorithm: Algorithm = importlib.import_module(ALGORITHMS[run.config.algo]).build(run.config, run.env)
    engine.prepare(run.config, algorithm)
    if observers is None:
        observers = default_observers(run.config)
    return _Loop(run, algorithm, engine, started, observers).train()


def evaluation_seeds(run_seed: int, iteration: int, episodes: int, stream: Stream = Stream.EVALUATION) -> list[int]:
    """The env seed of each evaluation episode of an iteration: a pure function of (run seed, iteration, episode)."""
    return [env_seed(derive_seed(run_seed, iteration, episode, stream)) for episode in range(episodes)]


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

    def __init__(self, run: Run, algorithm: Algorithm, engine: Engine, started: float, observers: list[RunObserver]) -> None:
        self.observers = observers
        self.run = run
        self.config = run.config
        self.algorithm = algorithm
        self.engine = engine
        self.started = started
        self.fingerprint = self.config.fingerprint()
        self.work = Work(algorithm, self.config, self.fingerprint)

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
            metrics["driver_s"] = metrics["iteration_s"] - metrics["ship_s"] - metrics["tasks_s"]
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
        config = self.config
        episodes = config.train.eval_episodes if evaluating else 0
        shipped = {"payload": self.algorithm.task_payload(state, iteration), "evaluation_seeds": evaluation_seeds(config.seed, iteration, episodes)}
        tasks = [(index, derive_seed(config.seed, iteration, index)) for index in range(config.spark.num_tasks)]
        timer = time.perf_counter()
        try:
            partial, ship_seconds = self.engine.run(self.work, shipped, tasks)
        except Exception as error:
            raise TrainingError(f"iteration {iteration + 1}: a task failed after Spark's retries: {_root_cause(error)}") from error
        tasks_seconds = time.perf_counter() - timer - ship_seconds

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
            "ship_s": ship_seconds,
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

