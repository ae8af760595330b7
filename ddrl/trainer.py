"""The driver's iteration loop: split, ship, work, merge, update and repeat.

Each iteration the driver asks the algorithm for its payload, derives one seed per task, and hands both to the
session's engine (``ddrl.engines``: broadcast and treeReduce on classic Spark, mapInArrow on Spark Connect),
which runs the tasks and gives back their exact merge (``ddrl.merge``, so arrival order does not matter).  The
driver applies the merged result, logs and checkpoints.  On evaluation iterations the same job also evaluates
the shipped policy: every task runs its share of the episodes, each seeded from (run seed, iteration,
episode), so the result does not depend on the task count; the stop rule and the best policy kept
(``train.keep_best``) go by these evaluations.  ``RunLoop`` holds one run's loop an iteration at a time and
``step`` runs one Spark job for the next iteration of several runs, so that a sweep (``ddrl.sweeps``) steps its
trials together.  Nothing here knows which algorithm runs (``ddrl.algorithms``) or which Spark API runs the
tasks (``ddrl.engines``).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import pyarrow as pa

from ddrl import checkpoint, envs
from ddrl.algorithms import Algorithm
from ddrl.config import ALGORITHMS, Config
from ddrl.engines import Engine, Job, Work, engine_for, guard
from ddrl.merge import Partial
from ddrl.policy import Policy
from ddrl.run import Run
from ddrl.seeding import Stream, derive_seed, env_seed
from ddrl.tracking import default_observers

log = logging.getLogger("ddrl")


class TrainingError(RuntimeError):
    """Training stopped: a task kept failing, or every task's result was rejected."""


class JobFailed(TrainingError):
    """A task of the job kept failing after Spark's retries; in a job of several runs, whose task is unknown."""


class ResultsRejected(TrainingError):
    """Every task's result of some runs of the job was rejected (NaN or Inf); the job's other runs went on."""

    def __init__(self, message: str, failed: Mapping["RunLoop", str]) -> None:
        super().__init__(message)
        self.failed = dict(failed)
        """Each run whose iteration was rejected, with the reason."""


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
    useful_tasks: float = math.nan
    """How many tasks' batches make up the gradient noise scale (``ddrl.noise_scale``), the median of the last
    ten iterations: past it, more tasks add samples per iteration but barely cut the iterations to a target.
    NaN where the algorithm does not estimate it, or from one task."""


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
    loop = RunLoop(run, default_observers(run.config) if observers is None else observers, started)
    engine.prepare([(run.config, loop.algorithm)])
    loop.start()
    while not loop.finished:
        step(engine, [loop])
    return loop.finish()


def step(engine: Engine, loops: Sequence["RunLoop"]) -> None:
    """One Spark job that runs the next iteration of every loop in ``loops``, each merged on its own.

    ``JobFailed`` when a task kept failing (no loop advanced); ``ResultsRejected`` after every loop whose result
    was usable advanced, naming those whose every task's result was rejected."""
    started = time.perf_counter()
    jobs = [loop.next_job() for loop in loops]
    try:
        partials, ship_seconds = engine.run(jobs)
    except Exception as error:
        where = f"iteration {loops[0].progress.iteration + 1}" if len(loops) == 1 else f"a job of {len(loops)} runs"
        reason = guard.explain(error) or f"a task failed after Spark's retries: {guard.root_cause(error)}"
        raise JobFailed(f"{where}: {reason}") from error
    tasks_seconds = time.perf_counter() - started - ship_seconds
    rejected: dict[RunLoop, str] = {}
    for loop, partial in zip(loops, partials):
        try:
            loop.complete(partial, ship_seconds, tasks_seconds)
        except ResultsRejected as error:
            rejected.update(error.failed)
    if rejected:
        raise ResultsRejected(next(iter(rejected.values())), rejected)


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


class RunLoop:
    """The driver's iteration loop over one run, an iteration at a time: ``next_job`` for the Spark job,
    ``complete`` with its merged result.  ``train`` steps one loop; a sweep (``ddrl.sweeps``) steps many in the
    same Spark jobs."""

    def __init__(self, run: Run, observers: list[RunObserver], started: float | None = None, label: str = "") -> None:
        self.label = label  # starts each progress line: a sweep's trial name
        self.observers = observers
        self.run = run
        self.config = run.config
        self.algorithm: Algorithm = importlib.import_module(ALGORITHMS[run.config.algo]).build(run.config, run.env)
        self.started = time.perf_counter() if started is None else started
        self.fingerprint = self.config.fingerprint()
        self.work = Work(self.algorithm, self.config, self.fingerprint)
        self.target = self.config.train.target_return if self.config.train.target_return is not None else run.env.reward_threshold
        self.state: dict[str, np.ndarray] = {}
        self.progress = Progress()
        self.recent_rates: list[float] = []
        self._pending: tuple[float, bool] | None = None

    def start(self) -> None:
        """Create the run directory (or load the resumed run's checkpoint) and tell the observers."""
        self.state, self.progress = self._initial_state()
        for observer in self.observers:
            observer.on_start(self.run)

    @property
    def finished(self) -> bool:
        return self.progress.finished

    def next_job(self) -> Job:
        """The tasks of the next iteration, with their payload (and evaluation seeds on evaluation iterations)."""
        config, iteration = self.config, self.progress.iteration
        evaluating = iteration % config.train.eval_every == 0
        self._pending = (time.perf_counter(), evaluating)
        episodes = config.train.eval_episodes if evaluating else 0
        shipped = {"payload": self.algorithm.task_payload(self.state, iteration), "evaluation_seeds": evaluation_seeds(config.seed, iteration, episodes)}
        tasks = [(index, derive_seed(config.seed, iteration, index)) for index in range(config.spark.num_tasks)]
        return Job(self.work, shipped, tasks)

    def complete(self, partial: Partial, ship_seconds: float, tasks_seconds: float) -> None:
        """Apply the merged result of ``next_job``'s tasks: the next state, metrics, checkpoint, observers."""
        assert self._pending is not None, "complete() without next_job()"
        (iteration_started, evaluating), self._pending = self._pending, None
        run, config, progress, state = self.run, self.config, self.progress, self.state
        updated, metrics = self._apply(state, partial, ship_seconds, tasks_seconds)
        iteration = progress.iteration + 1
        env_steps = progress.env_steps + metrics["env_steps"]
        solved_streak, best = progress.solved_streak, progress.best_eval_return
        if evaluating:  # the job evaluated ``state``, the policy it started from
            metrics["eval_env_steps"] = float(progress.env_steps)
            evaluated = metrics["eval_return_mean"]
            if self.target is not None:
                solved_streak = solved_streak + 1 if evaluated >= self.target else 0
            best = self._keep_if_best(best, evaluated, lambda: self.algorithm.policy(state), progress)
        solved = solved_streak >= config.train.solved_evaluations and config.train.stop_at_target
        # A solved run ends with the policy its evaluations saw, not with the update made in the same job.
        self.state = state if solved else updated
        self.progress = Progress(iteration, env_steps, solved_streak, solved or env_steps >= config.train.total_env_steps, best)
        metrics["iteration_s"] = time.perf_counter() - iteration_started
        metrics["driver_s"] = metrics["iteration_s"] - metrics["ship_s"] - metrics["tasks_s"]
        metrics["steps_per_s"] = metrics["env_steps"] / metrics["iteration_s"]
        metrics["env_steps"] = env_steps
        metrics["wall_s"] = time.perf_counter() - self.started
        run.write_metrics(iteration, {"iteration": iteration, **metrics})
        # The metrics row first, then the checkpoint: a driver killed in between repeats the iteration on
        # resume (its row is dropped and rewritten); the other order would lose the row for good.
        if iteration % config.output.checkpoint_every == 0 or self.progress.finished:
            self.save_checkpoint()
        for observer in self.observers:
            observer.on_iteration(iteration, metrics)
        self.recent_rates = (self.recent_rates + [metrics["steps_per_s"]])[-5:]
        self._log_progress(iteration, env_steps, metrics, float(np.median(self.recent_rates)))

    def save_checkpoint(self) -> None:
        """Checkpoint the state after the last completed iteration (``complete`` does every checkpoint_every)."""
        meta = {**dataclasses.asdict(self.progress), "fingerprint": self.fingerprint}
        checkpoint.save(self.run.checkpoints, self.progress.iteration, self.state, meta, self.config.output.keep_checkpoints)

    def finish(self) -> TrainResult:
        """Save the final policy, evaluate it (on the driver), tell the observers, and return the result."""
        run, config, progress = self.run, self.config, self.progress
        policy = self.algorithm.policy(self.state)
        policy.save(run.policy_directory)
        seeds = evaluation_seeds(config.seed, progress.iteration, config.train.final_eval_episodes, Stream.FINAL_EVALUATION)
        returns, _ = envs.evaluate(policy.act_independently, config.env, len(seeds), seeds)
        best = self._keep_if_best(progress.best_eval_return, float(returns.mean()), lambda: policy, progress, final=True)
        result_metrics = run.read_metrics()
        result = TrainResult(
            policy=policy,
            run_dir=run.directory,
            metrics=result_metrics,
            iterations=progress.iteration,
            env_steps=progress.env_steps,
            eval_return_mean=float(returns.mean()),
            eval_return_std=float(returns.std()),
            solved=self.target is not None and float(returns.mean()) >= self.target,
            wall_seconds=time.perf_counter() - self.started,
            best_eval_return=best if config.train.keep_best else None,
            best_policy_dir=run.best_directory if config.train.keep_best else None,
            useful_tasks=_recent_median(result_metrics, "useful_tasks"),
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
        run.create()  # the config it goes on with (its spark section may differ from the one before)
        progress = Progress(meta["iteration"], meta["env_steps"], meta["solved_streak"], meta["finished"], meta["best_eval_return"])
        run.drop_metrics_after(progress.iteration)
        log.info("resuming %s after iteration %d (%d env steps)", run.directory, progress.iteration, progress.env_steps)
        return state, progress

    def _apply(self, state: dict[str, np.ndarray], partial: Partial, ship_seconds: float, tasks_seconds: float) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        iteration = self.progress.iteration
        result = partial.finish()
        for index, reason in result.rejected.items():
            log.warning("iteration %d: rejected the result of task %d: %s", iteration + 1, index, reason)
        if not result.tasks:
            message = f"iteration {iteration + 1}: every task's result was rejected ({next(iter(result.rejected.values()))})"
            raise ResultsRejected(message, {self: message})
        if result.digests and not result.replicated:
            message = f"iteration {iteration + 1}: the result of task 0, which returns the synchronized tasks' state, was rejected ({result.rejected.get(0)})"
            raise ResultsRejected(message, {self: message})
        if result.disagreeing():
            raise TrainingError(f"iteration {iteration + 1}: tasks {result.disagreeing()} of a synchronized run hold other parameters "
                                "than task 0 (their digests differ): the tasks' envs or libraries differ between executors")
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
        useful = metrics.get("useful_tasks", math.nan)
        log.info(
            "%siter %4d | steps %9d | return %8s | eval %8s | %7.0f steps/s | %5.2fs | ETA to budget %s%s",
            f"{self.label} " if self.label else "",
            iteration,
            env_steps,
            _number(metrics["episode_return_mean"]),
            _number(metrics["eval_return_mean"]),
            metrics["steps_per_s"],
            metrics["iteration_s"],
            _duration(remaining / steps_per_second if steps_per_second > 0 else math.inf),
            f" | useful tasks {useful:.1f}" if math.isfinite(useful) else "",
        )


def _summary(name: str, values: np.ndarray, statistics: tuple[str, ...]) -> dict[str, float]:
    """``name_mean`` and the like of ``values``; NaN where there are none (no episode finished, no evaluation)."""
    return {f"{name}_{statistic}": float(getattr(np, statistic)(values)) if len(values) else math.nan for statistic in statistics}


def _recent_median(metrics: pa.Table, name: str, iterations: int = 10) -> float:
    if name not in metrics.column_names:
        return math.nan
    values = np.array(metrics.column(name).to_pylist()[-iterations:], dtype=float)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if len(values) else math.nan


def _number(value: float) -> str:
    """A progress-line figure: one decimal, or "-" where the iteration had none."""
    return f"{value:.1f}" if math.isfinite(value) else "-"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"
