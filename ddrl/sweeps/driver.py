"""The sweep's loop: many runs (trials) stepped together, one Spark job per iteration carrying the tasks of
every live trial, each trial merged on its own (``ddrl.trainer.step``).

Successive halving and PBT are synchronous: at a barrier (a rung's env steps, every ``pbt.interval``
iterations) a trial waits until every live trial has reached it; then every live trial is checkpointed, the
decision is taken from their evaluations (``ddrl.sweeps.schedulers``), written to SWEEP_DIR/state.json, and
carried out.  So a trial's result depends only on its config, its seed and the decisions, never on which
trials share a job, how many tasks a job has, or the order in which trials finish; and a killed driver resumes
(``resume=DIR``): trials continue from their checkpoints, decisions already written are kept, one written but
not yet carried out is carried out.

::

    SWEEP_DIR/sweep.yaml            the base config and the sweep spec
    SWEEP_DIR/state.json            trials stopped, PBT generations and their lineage
    SWEEP_DIR/trials/trial-000/     each trial's run directory (as jobs/train.py writes), with result.json
    SWEEP_DIR/sweep.parquet         one row per trial and iteration, with its hyperparameters (ddrl.sweeps.report)
    SWEEP_DIR/sweep.png             every trial's curve, the best marked
    SWEEP_DIR/summary.txt           the trials ranked
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import pyarrow as pa
import yaml

from ddrl import checkpoint, config as config_module
from ddrl.config import Config, ConfigError
from ddrl.engines import Engine, engine_for
from ddrl.run import CONFIG_FILE, POLICY_DIR, Run
from ddrl.sweeps import report, schedulers
from ddrl.sweeps.spec import SweepSpec, Trial, load_spec, perturbed_keys, plan, trial_config
from ddrl.trainer import JobFailed, ResultsRejected, RunLoop, TrainingError, TrainResult, step
from ddrl.tracking import LearningCurveObserver, SweepMlflow, flatten, mlflow_enabled

log = logging.getLogger("ddrl")

SPEC_FILE = "sweep.yaml"
STATE_FILE = "state.json"
TRIALS_DIR = "trials"
RESULT_FILE = "result.json"


class SweepFailed(TrainingError):
    """Every trial of the sweep failed (each one's reason is in its result.json and the summary)."""


@dataclasses.dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended: ``finished`` (its budget or its target), ``stopped`` (by successive halving) or
    ``failed`` (a task that kept failing, or an iteration whose every task's result was rejected)."""

    name: str
    values: dict[str, Any]
    """The swept (and PBT's perturbed) values it ended with, seed included; the sweep table has their history."""
    status: str
    eval_return_mean: float
    eval_return_std: float
    best_eval_return: float | None
    env_steps: int
    iterations: int
    solved: bool
    run_dir: Path
    reason: str | None = None
    """Why a failed trial failed."""


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """What ``sweep`` returns: every trial's outcome, the best one, the sweep table and where it all lives."""

    directory: Path
    trials: list[TrialOutcome]
    best: TrialOutcome
    """The trial with the highest final evaluation (``best.run_dir``/policy, ``ddrl.load_policy``), failed ones aside."""
    table: pa.Table
    """One row per trial and iteration (also SWEEP_DIR/sweep.parquet)."""
    summary: str
    wall_seconds: float


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    """A validated sweep, new or resumed, that nothing has been written for yet: its base config, spec, trials
    and their runs (each config and env checked)."""

    directory: Path
    base: Config
    spec: SweepSpec
    trials: list[Trial]
    runs: dict[str, Run]
    resumed: bool

    @staticmethod
    def open(
        config: str | Path | Mapping[str, Any] | Config | None = None,
        *,
        grid: Mapping[str, Sequence[Any]] | None = None,
        random: Mapping[str, Mapping[str, Any]] | None = None,
        trials: int = 1,
        seeds: int = 1,
        halving: Mapping[str, Any] | None = None,
        pbt: Mapping[str, Any] | None = None,
        trials_per_job: int | None = None,
        overrides: list[str] | tuple[str, ...] = (),
        out: str | Path | None = None,
        resume: str | Path | None = None,
    ) -> "SweepPlan":
        """Check a sweep (see ``sweep``) before Spark starts; ``ConfigError`` names the field of the first problem."""
        if resume is not None:
            directory = Path(resume)
            if not (directory / SPEC_FILE).exists():
                raise ConfigError(f"resume: {directory} is not a ddrl sweep directory (no {SPEC_FILE})")
            stored = yaml.safe_load((directory / SPEC_FILE).read_text())
            base, spec = config_module.from_dict(stored["config"]), load_spec(stored["sweep"])
        else:
            if config is None:
                raise ConfigError("config: a config is required to start a sweep")
            base = config_module.load(config, overrides)
            fields = {"grid": grid or {}, "random": random or {}, "trials": trials, "seeds": seeds, "halving": halving,
                      "pbt": pbt, "trials_per_job": trials_per_job}
            spec = load_spec({key: value for key, value in fields.items() if value is not None})
            directory = Path(out) if out is not None else Path(base.output.root) / f"{base.name}-sweep-{datetime.datetime.now():%Y%m%d-%H%M%S}"
            if directory.exists() and any(directory.iterdir()):
                raise ConfigError(f"out: {directory} already holds files; resume it or choose another")
        planned = plan(base, spec)
        runs = {trial.name: _open_run(directory, trial) for trial in planned}
        return SweepPlan(directory, base, spec, planned, runs, resumed=resume is not None)


def sweep(spark: Any, config: str | Path | Mapping[str, Any] | Config | SweepPlan | None = None, *, track: bool = True, **options: Any) -> SweepResult:
    """Run a sweep on the given SparkSession (never created or stopped here) and return its result.

    The trials: every point of ``grid`` (dotted key to values, crossed) times ``trials`` samples of ``random``
    (dotted key to ``{low, high, log}``) times ``seeds`` seeds, each a normal run of ``config`` (a YAML path, a
    dict, a ``Config``; ``overrides`` as in ``ddrl.train``) under OUT/trials.  ``halving`` (``{eta, min_steps}``)
    stops the weaker trials at rungs; ``pbt`` (``{interval, quantile, factors, hyperparameters}``) trains them as
    a population; ``trials_per_job`` caps how many trials share one Spark job.  ``out`` is the sweep directory;
    ``resume`` continues the sweep in that directory with its own config and spec.  ``config`` may also be a
    ``SweepPlan`` already opened.  ``track``: each trial's learning curve and, where MLflow is configured
    (``ddrl.tracking``), a parent run with a child run per trial.

    Every config and the spec are checked before any Spark job (``ConfigError``, naming the field).
    """
    started = time.perf_counter()
    sweep_plan = config if isinstance(config, SweepPlan) else SweepPlan.open(config, **options)
    if not sweep_plan.resumed:
        sweep_plan.directory.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump({"config": sweep_plan.base.to_dict(), "sweep": sweep_plan.spec.model_dump(mode="json")}, sort_keys=False)
        checkpoint.atomic_write(sweep_plan.directory / SPEC_FILE, lambda path: path.write_text(text))
    return _Sweep(sweep_plan, engine_for(spark), started, track).run()


def _open_run(directory: Path, trial: Trial) -> Run:
    """The trial's run, new or (its directory has a config) resumed from its own config, which PBT may have changed."""
    run_dir = directory / TRIALS_DIR / trial.name
    if (run_dir / CONFIG_FILE).exists():
        return Run.open(None, resume=run_dir)
    return Run.open(trial.config, run_dir=run_dir)


def _exploited_config(recipient: Config, donor: Config, values: Mapping[str, Any]) -> Config:
    """What a PBT recipient trains with next: the donor's config with ``values``, and its own seed and output."""
    data = donor.to_dict()
    data["seed"], data["output"] = recipient.seed, recipient.to_dict()["output"]
    return trial_config(data, values)


class _Sweep:
    def __init__(self, sweep_plan: SweepPlan, engine: Engine, started: float, track: bool) -> None:
        self.directory, self.base, self.spec = sweep_plan.directory, sweep_plan.base, sweep_plan.spec
        self.trials = {trial.name: trial for trial in sweep_plan.trials}
        self.runs, self.engine, self.started, self.track = sweep_plan.runs, engine, started, track
        self.mlflow = SweepMlflow() if track and mlflow_enabled() else None
        self.state: dict[str, Any] = json.loads((self.directory / STATE_FILE).read_text()) if (self.directory / STATE_FILE).exists() else {
            "stopped": {}, "rung": 0, "generation": 0, "generations": []}
        self.perturbed = perturbed_keys(self.base, self.spec.pbt) if self.spec.pbt is not None else []
        self.keys = list(dict.fromkeys([*self.spec.grid, *self.spec.random, "seed", *self.perturbed]))  # the sweep table's columns

    def run(self) -> SweepResult:
        if self.mlflow is not None:
            self.mlflow.start(self.directory, {**flatten(self.base.to_dict()), **flatten({"sweep": self.spec.model_dump(mode="json")})})
        outcomes = {name: outcome for name in self.trials if (outcome := self._read_outcome(name)) is not None}
        loops = {name: self._loop(run) for name, run in self.runs.items() if name not in outcomes}
        log.info("sweep %s: %d trials, %d to run (%s)", self.directory, len(self.trials), len(loops), self.spec.scheduler)
        if loops:
            self.engine.prepare([(loop.config, loop.algorithm) for loop in loops.values()])
        for loop in loops.values():
            loop.start()
        for name in [name for name in loops if name in self.state["stopped"]]:  # stopped by a rung the killed driver wrote
            outcomes[name] = self._finish(loops.pop(name), "stopped")
        for generation in self.state["generations"]:
            self._carry_out(generation, loops)
        while loops:
            for name in [name for name, loop in loops.items() if loop.finished]:
                outcomes[name] = self._finish(loops.pop(name), "finished")
            ready = [loop for loop in loops.values() if not self._waiting(loop, len(loops))]
            if ready:
                size = self.spec.trials_per_job or len(ready)
                for start in range(0, len(ready), size):
                    for loop, reason in self._step(ready[start : start + size]).items():
                        outcomes[loop.run.directory.name] = self._fail(loops.pop(loop.run.directory.name), reason)
            elif loops:
                self._barrier(loops, outcomes)
        return self._report([outcomes[name] for name in self.trials])

    def _step(self, group: list[RunLoop]) -> dict[RunLoop, str]:
        """One iteration of every trial in ``group``; the trials that failed in it, with the reason.  A job that
        failed is run again trial by trial, to find whose task it was: tasks are pure functions of what they are
        shipped, so the others' iterations come out as they would have in the shared job."""
        try:
            step(self.engine, group)
        except ResultsRejected as error:
            return error.failed
        except JobFailed as error:
            if len(group) == 1:
                return {group[0]: str(error)}
            log.warning("sweep: a job of %d trials failed (%s); running them one by one", len(group), error)
            return {loop: reason for single in group for loop, reason in self._step([single]).items()}
        return {}

    # ---- barriers -----------------------------------------------------------------------------------------
    def _waiting(self, loop: RunLoop, live: int) -> bool:
        """Whether ``loop`` has reached the next barrier and waits there for the other live trials."""
        if self.spec.halving is not None:
            return live > 1 and loop.progress.env_steps >= schedulers.rung_steps(self.spec.halving, self.state["rung"])
        if self.spec.pbt is not None:
            return live > 1 and loop.progress.iteration >= (self.state["generation"] + 1) * self.spec.pbt.interval
        return False

    def _barrier(self, loops: dict[str, RunLoop], outcomes: dict[str, TrialOutcome]) -> None:
        """Every live trial waits here: checkpoint them all, decide, write the decision, carry it out."""
        for loop in loops.values():
            loop.save_checkpoint()
        scores = {name: report.latest_evaluation(loop.run.read_metrics()) for name, loop in loops.items()}
        if self.spec.halving is not None:
            survivors = schedulers.halving_survivors(scores, self.spec.halving)
            rung_steps = schedulers.rung_steps(self.spec.halving, self.state["rung"])
            stopped = sorted(set(loops) - set(survivors))
            log.info("sweep: rung %d (%d env steps): %s go on, %s stop", self.state["rung"], rung_steps, ", ".join(survivors), ", ".join(stopped) or "none")
            self.state["stopped"].update({name: rung_steps for name in stopped})
            self.state["rung"] += 1
            self._write_state()
            for name in stopped:
                outcomes[name] = self._finish(loops.pop(name), "stopped")
        else:
            assert self.spec.pbt is not None
            generation = self.state["generation"]
            configs = {name: loop.config for name, loop in loops.items()}
            exploits = schedulers.exploit_and_explore(scores, configs, self.spec.pbt, self.perturbed, self.base.seed, generation)
            record = {"generation": generation, "iteration": (generation + 1) * self.spec.pbt.interval, "exploits": [
                {**dataclasses.asdict(exploit), "applied": False, "hyperparameters": report.tracked_values(
                    _exploited_config(loops[exploit.recipient].config, loops[exploit.donor].config, exploit.values).to_dict(), self.keys)}
                for exploit in exploits]}
            for exploit in exploits:
                log.info("sweep: PBT generation %d: %s takes %s's state with %s", generation, exploit.recipient, exploit.donor, exploit.values)
            self.state["generations"].append(record)
            self.state["generation"] += 1
            self._write_state()
            self._carry_out(record, loops)

    def _carry_out(self, generation: dict[str, Any], loops: dict[str, RunLoop]) -> None:
        """Apply a PBT generation's exploits not yet applied: the recipient's config becomes the donor's with the
        new values (and its own seed), its checkpoint the donor's state with its own progress."""
        for exploit in generation["exploits"]:
            if exploit["applied"] or exploit["recipient"] not in loops:
                continue
            recipient, donor = loops[exploit["recipient"]], loops[exploit["donor"]]
            config = _exploited_config(recipient.config, donor.config, exploit["values"])
            run = recipient.run
            text = config_module.dump(config)
            checkpoint.atomic_write(run.directory / CONFIG_FILE, lambda path: path.write_text(text))
            progress = dataclasses.replace(recipient.progress, solved_streak=0)
            meta = {**dataclasses.asdict(progress), "fingerprint": config.fingerprint()}
            checkpoint.save(run.checkpoints, progress.iteration, donor.state, meta, config.output.keep_checkpoints)
            loops[exploit["recipient"]] = self._loop(Run.open(None, resume=run.directory))
            loops[exploit["recipient"]].start()
            exploit["applied"] = True
            self._write_state()

    def _write_state(self) -> None:
        text = json.dumps(self.state, indent=2)
        checkpoint.atomic_write(self.directory / STATE_FILE, lambda path: path.write_text(text))

    # ---- trials -------------------------------------------------------------------------------------------
    def _loop(self, run: Run) -> RunLoop:
        observers: list[Any] = []
        if self.track:
            observers.append(LearningCurveObserver(every_seconds=None))
            child = self.mlflow.trial_observer() if self.mlflow is not None else None
            if child is not None:
                observers.append(child)
        return RunLoop(run, observers, self.started, label=run.directory.name)

    def _finish(self, loop: RunLoop, status: str) -> TrialOutcome:
        """The final evaluation and policy of a trial that ended, recorded in its result.json."""
        result: TrainResult = loop.finish()
        name = loop.run.directory.name
        record = {"status": status, "eval_return_mean": result.eval_return_mean, "eval_return_std": result.eval_return_std,
                  "best_eval_return": result.best_eval_return, "env_steps": result.env_steps, "iterations": result.iterations,
                  "solved": result.solved}
        log.info("sweep: %s %s after %d env steps: final evaluation %.1f +- %.1f", name, status, result.env_steps,
                 result.eval_return_mean, result.eval_return_std)
        return self._record(loop, record)

    def _fail(self, loop: RunLoop, reason: str) -> TrialOutcome:
        """Record a failed trial (its checkpoints stay as they were, none holds a rejected result) in result.json."""
        name = loop.run.directory.name
        record = {"status": "failed", "eval_return_mean": math.nan, "eval_return_std": math.nan, "best_eval_return": None,
                  "env_steps": loop.progress.env_steps, "iterations": loop.progress.iteration, "solved": False, "reason": reason}
        for observer in loop.observers:
            if hasattr(observer, "on_failure"):
                observer.on_failure(reason)
        log.warning("sweep: %s failed after %d env steps: %s", name, loop.progress.env_steps, reason)
        return self._record(loop, record)

    def _record(self, loop: RunLoop, record: dict[str, Any]) -> TrialOutcome:
        """Write how a trial ended to its result.json, which a resumed sweep reads instead of running it again."""
        text = json.dumps(record, indent=2)
        checkpoint.atomic_write(loop.run.directory / RESULT_FILE, lambda path: path.write_text(text))
        return self._outcome(loop.run.directory, loop.config, record)

    def _read_outcome(self, name: str) -> TrialOutcome | None:
        """The outcome of a trial an earlier process finished (its result.json), None for one still to run."""
        run_dir = self.directory / TRIALS_DIR / name
        try:
            record = json.loads((run_dir / RESULT_FILE).read_text())
        except FileNotFoundError:
            return None
        return self._outcome(run_dir, config_module.load(run_dir / CONFIG_FILE), record)

    def _outcome(self, run_dir: Path, config: Config, record: dict[str, Any]) -> TrialOutcome:
        return TrialOutcome(run_dir.name, report.tracked_values(config.to_dict(), self.keys), run_dir=run_dir, **record)

    def _scheduler_text(self) -> str:
        halving, pbt = self.spec.halving, self.spec.pbt
        if halving is not None:
            return f"successive halving (keeps 1/{halving.eta} at each rung, the first at {halving.min_steps} env steps)"
        if pbt is not None:
            return f"PBT (every {pbt.interval} iterations, quantile {pbt.quantile}, perturbing {', '.join(self.perturbed)})"
        return "every trial to its budget"

    def _report(self, outcomes: list[TrialOutcome]) -> SweepResult:
        table = report.sweep_table(self.directory / TRIALS_DIR, self.trials.values(), outcomes, self.state["generations"], self.keys)
        ended = [outcome for outcome in outcomes if outcome.status != "failed"]
        best = max(ended, key=lambda outcome: (outcome.eval_return_mean, -self.trials[outcome.name].index), default=None)
        wall_seconds = time.perf_counter() - self.started
        summary = report.summary(self.directory, self._scheduler_text(), outcomes, best, wall_seconds)
        artifacts = report.write(self.directory, table, summary, best.name if best is not None else None)
        failed = len(outcomes) - len(ended)
        if self.mlflow is not None:
            metrics = {"trials": len(outcomes), "trials_failed": failed, "wall_seconds": wall_seconds}
            if best is not None:
                metrics["best_eval_return_mean"] = best.eval_return_mean
            self.mlflow.end(metrics, artifacts, best.run_dir / POLICY_DIR if best is not None else None, failed=best is None)
        if best is None:
            raise SweepFailed(f"every trial failed ({self.directory / report.SUMMARY_FILE}); {outcomes[0].name}: {outcomes[0].reason}")
        return SweepResult(self.directory, outcomes, best, table, summary, wall_seconds)
