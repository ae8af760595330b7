"""Run observers for experiment tracking and plots (see ``ddrl.trainer.RunObserver``).

``ddrl.train(spark, config)`` uses ``default_observers(config)`` unless told otherwise (``observers=[]`` turns
everything off):

* ``LearningCurveObserver``: writes RUN_DIR/learning_curve.png at the end of the run (and every few minutes
  during a long one).
* ``MlflowObserver``: logs to MLflow, when mlflow is importable and a tracking destination is configured:
  ``MLFLOW_TRACKING_URI`` is set, or the code runs on Databricks (``DATABRICKS_RUNTIME_VERSION``).
  ``DDRL_MLFLOW=1`` forces it on (mlflow's default destination), ``DDRL_MLFLOW=0`` off.  The experiment is
  mlflow's own choice (``MLFLOW_EXPERIMENT_NAME`` / ``MLFLOW_EXPERIMENT_ID``, the notebook's on Databricks).

Observers never stop training: an error inside one is logged as a warning and that observer goes quiet.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ddrl import extras
from ddrl.config import Config
from ddrl.plots import CURVE_FILE, plot_runs
from ddrl.policy import load_policy

if TYPE_CHECKING:
    from ddrl.run import Run
    from ddrl.trainer import TrainResult

log = logging.getLogger("ddrl")

MODEL_NAME = "model"
"""The MLflow model the observer logs (the policy's serving module); ``policy/`` holds ddrl's own files."""
BEST_MODEL_NAME = "best_model"
"""The same for the best-evaluated policy (``train.keep_best``); ``best/`` holds ddrl's own files."""
MLFLOW_RUN_FILE = "mlflow_run.json"
"""In RUN_DIR: the MLflow run a resumed run continues."""


def default_observers(config: Config | None = None) -> list[Any]:
    """The observers ``ddrl.train`` uses when none are given: the learning curve, and MLflow when enabled."""
    observers: list[Any] = []
    if importlib.util.find_spec("matplotlib") is not None:
        observers.append(LearningCurveObserver())
    else:
        log.info("%s", extras.missing("matplotlib", "the learning-curve PNG"))
    if mlflow_enabled():
        observers.append(MlflowObserver())
    return observers


def mlflow_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """``DDRL_MLFLOW`` if set (0/1); else mlflow importable and a tracking URI or Databricks present."""
    environ = os.environ if environ is None else environ
    forced = environ.get("DDRL_MLFLOW", "").strip().lower()
    importable = importlib.util.find_spec("mlflow") is not None
    if forced in ("0", "false", "no", "off"):
        return False
    if forced in ("1", "true", "yes", "on"):
        if not importable:
            log.warning("no MLflow tracking: %s", extras.missing("mlflow", f"DDRL_MLFLOW={forced}"))
        return importable
    return importable and bool(environ.get("MLFLOW_TRACKING_URI") or environ.get("DATABRICKS_RUNTIME_VERSION"))


class _Guarded:
    """Observer base: a failing hook logs one warning and disables the observer; training goes on."""

    name = "observer"
    failed = False

    def _guard(self, hook: str, function: Any, *args: Any) -> None:
        if self.failed:
            return
        try:
            function(*args)
        except Exception as error:  # noqa: BLE001 - tracking must never stop training
            self.failed = True
            log.warning("%s: %s failed, disabled for this run: %s: %s", self.name, hook, type(error).__name__, error)


class LearningCurveObserver(_Guarded):
    """Writes RUN_DIR/learning_curve.png at the end, and every ``every_seconds`` during the run."""

    name = "learning curve"

    def __init__(self, every_seconds: float | None = 120.0) -> None:
        self.every_seconds = every_seconds
        self.directory: Path | None = None
        self.last_written = 0.0
        self.path: Path | None = None

    def on_start(self, run: "Run") -> None:
        self.failed = False
        self.directory = run.directory
        self.last_written = time.monotonic()

    def on_iteration(self, iteration: int, metrics: dict[str, Any]) -> None:
        if self.every_seconds is not None and time.monotonic() - self.last_written >= self.every_seconds:
            self._guard("on_iteration", self._write)

    def on_end(self, result: "TrainResult") -> None:
        self.directory = Path(result.run_dir)
        self._guard("on_end", self._write)

    def _write(self) -> None:
        assert self.directory is not None
        self.path = plot_runs([self.directory], self.directory / CURVE_FILE)
        self.last_written = time.monotonic()


_OPEN_RUNS: list[str] = []
"""MLflow runs that observers started and have not ended yet (run ids), e.g. after a training error; a sweep
holds its parent run and a child run per live trial."""


def _end_runs(status: str = "FAILED", run_id: str | None = None) -> None:
    """End ``run_id`` (default: every run still open) with ``status``."""
    for open_run in [run_id] if run_id is not None else list(reversed(_OPEN_RUNS)):
        if open_run not in _OPEN_RUNS:
            continue
        _OPEN_RUNS.remove(open_run)
        try:
            import mlflow

            active = mlflow.active_run()
            if active is not None and active.info.run_id == open_run:
                mlflow.end_run(status=status)
            else:
                mlflow.MlflowClient().set_terminated(open_run, status=status)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def _opened(run_id: str) -> None:
    """Remember a run this process started (a resumed trial's observer may start its run twice)."""
    if run_id not in _OPEN_RUNS:
        _OPEN_RUNS.append(run_id)


atexit.register(_end_runs)  # runs before mlflow's own atexit hook, which would mark them FINISHED


class MlflowObserver(_Guarded):
    """Logs a run to MLflow: params, per-iteration metrics, config, learning curve, policy and a served model.

    * params: the resolved config, flattened (``ppo.learning_rate``), plus ``run_dir``;
    * metrics: every finite number of each iteration's row, with ``step`` = cumulative env steps;
      at the end ``final_eval_return_mean``/``_std``, ``best_eval_return``, ``solved``, ``wall_seconds``;
    * artifacts: ``config.yaml``, ``learning_curve.png``, ``policy/`` and ``best/`` (``ddrl.load_policy`` reads
      them);
    * models ``model`` and ``best_model``: ``mlflow.pytorch`` (torch.export format) of
      ``ddrl.export.serving_module`` for the final and the best-evaluated policy: float32 observations in,
      actions out, normalization included (``log_model=False`` skips them).

    A run already active when training starts (opened by the caller) is used and left open; otherwise the
    observer starts one named after the run directory and ends it.  With ``parent_run_id`` (a sweep's trial) it
    starts a child run of that run instead, whatever is active.  A resumed run continues its MLflow run.
    """

    name = "MLflow"

    def __init__(self, experiment: str | None = None, log_model: bool = True, parent_run_id: str | None = None) -> None:
        self.experiment = experiment
        self.log_model = log_model
        self.parent_run_id = parent_run_id
        self.run_id: str | None = None
        self.model_uri: str | None = None
        self.best_model_uri: str | None = None
        self.owns_run = False
        self.directory: Path | None = None

    # ---- hooks ---------------------------------------------------------------------------------------------
    def on_start(self, run: "Run") -> None:
        self.failed = False
        self._guard("on_start", self._start, run)

    def on_iteration(self, iteration: int, metrics: dict[str, Any]) -> None:
        self._guard("on_iteration", self._log_iteration, iteration, metrics)

    def on_end(self, result: "TrainResult") -> None:
        if self.run_id is None:
            return
        self._guard("on_end", self._finish, result)
        if self.failed and self.owns_run:  # whatever failed, close the run
            _end_runs("FAILED", self.run_id)

    # ---- work ------------------------------------------------------------------------------------------------
    def _start(self, run: "Run") -> None:
        import mlflow

        client = mlflow.MlflowClient()
        self.directory = run.directory
        previous = _recorded_run_id(run.directory / MLFLOW_RUN_FILE) if run.resumed else None
        if self.parent_run_id is not None:  # several children are open at once: none is the active run
            experiment_id = client.get_run(self.parent_run_id).info.experiment_id
            tags = {"mlflow.parentRunId": self.parent_run_id}
            self.run_id = previous or client.create_run(experiment_id, run_name=run.directory.name, tags=tags).info.run_id
            self.owns_run = True
            _opened(self.run_id)
        else:
            _end_runs("FAILED")  # a previous run in this process stopped with an error
            if self.experiment is not None:
                mlflow.set_experiment(self.experiment)
            active = mlflow.active_run()
            if active is not None:
                self.owns_run = False
                self.run_id = active.info.run_id
            else:
                started = mlflow.start_run(run_id=previous, run_name=None if previous else run.directory.name)
                self.owns_run = True
                self.run_id = started.info.run_id
                _opened(self.run_id)
        client.set_tag(self.run_id, "ddrl.run_dir", str(run.directory))
        client.set_tag(self.run_id, "ddrl.algo", run.config.algo)
        client.set_tag(self.run_id, "ddrl.env", run.config.env.id)
        if previous is None or previous != self.run_id:
            mlflow.log_params({**flatten(run.config.to_dict()), "run_dir": str(run.directory)}, run_id=self.run_id)
        run.directory.mkdir(parents=True, exist_ok=True)
        record = {"run_id": self.run_id, "tracking_uri": mlflow.get_tracking_uri()}
        (run.directory / MLFLOW_RUN_FILE).write_text(json.dumps(record, indent=2) + "\n")
        log.info("MLflow: logging to run %s at %s", self.run_id, record["tracking_uri"])

    def _log_iteration(self, iteration: int, metrics: dict[str, Any]) -> None:
        import mlflow

        values = {key: float(value) for key, value in metrics.items() if _finite(value)}
        values["iteration"] = float(iteration)
        step = int(metrics.get("env_steps", iteration))
        mlflow.log_metrics(values, step=step, run_id=self.run_id, synchronous=False)

    def on_failure(self, reason: str) -> None:
        """A sweep's trial failed: tag its run with the reason and end it as FAILED."""
        if self.run_id is None:
            return
        self._guard("on_failure", self._fail, reason)
        if self.owns_run:
            _end_runs("FAILED", self.run_id)

    def _fail(self, reason: str) -> None:
        import mlflow

        mlflow.flush_async_logging()
        mlflow.MlflowClient().set_tag(self.run_id, "ddrl.failure", reason[:5000])

    def _finish(self, result: "TrainResult") -> None:
        import mlflow

        mlflow.flush_async_logging()
        run_id, directory = self.run_id, Path(result.run_dir)
        final = {
            "final_eval_return_mean": result.eval_return_mean,
            "final_eval_return_std": result.eval_return_std,
            "best_eval_return": result.best_eval_return if result.best_eval_return is not None else math.nan,
            "solved": float(result.solved),
            "wall_seconds": result.wall_seconds,
        }
        mlflow.log_metrics({key: float(value) for key, value in final.items() if _finite(value)}, step=result.env_steps, run_id=run_id)
        client = mlflow.MlflowClient()
        client.log_artifact(run_id, str(directory / "config.yaml"))
        curve = directory / CURVE_FILE
        if not curve.exists() and importlib.util.find_spec("matplotlib") is not None:
            plot_runs([directory], curve)
        if curve.exists():
            client.log_artifact(run_id, str(curve))
        client.log_artifacts(run_id, str(directory / "policy"), "policy")
        if result.best_policy_dir is not None:
            client.log_artifacts(run_id, str(result.best_policy_dir), "best")
        if self.log_model:
            self.model_uri = _log_serving_model(result.policy, run_id, MODEL_NAME)
            if result.best_policy_dir is not None:
                self.best_model_uri = _log_serving_model(load_policy(result.best_policy_dir), run_id, BEST_MODEL_NAME)
        if self.owns_run:
            _end_runs("FINISHED", run_id)


class SweepMlflow(_Guarded):
    """A sweep's MLflow parent run: its params, and at the end its best trial's figures, the sweep table, plot and
    summary; each trial logs a child run (``trial_observer``).  A run already active (a notebook's) is the parent
    and is left open; a resumed sweep continues its parent run (SWEEP_DIR/mlflow_run.json)."""

    name = "MLflow (sweep)"

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.owns_run = False

    def start(self, directory: Path, params: Mapping[str, Any]) -> None:
        self._guard("start", self._start, directory, params)

    def trial_observer(self) -> "MlflowObserver | None":
        """The observer of one trial's child run, while the parent run is healthy.  Trials log their policy files
        but no served model (a torch.export per trial would cost seconds each); the parent holds the best one's."""
        return MlflowObserver(log_model=False, parent_run_id=self.run_id) if self.run_id is not None and not self.failed else None

    def end(self, metrics: Mapping[str, float], artifacts: list[Path], best_policy_dir: Path | None, failed: bool = False) -> None:
        """Log the sweep's figures, its files, and the best trial's policy (as ``best_policy/``); ``failed``: every
        trial failed, and the parent run ends as FAILED."""
        if self.run_id is not None:
            self._guard("end", self._end, metrics, artifacts, best_policy_dir, failed)

    def _start(self, directory: Path, params: Mapping[str, Any]) -> None:
        import mlflow

        record_path = directory / MLFLOW_RUN_FILE
        active = mlflow.active_run()
        if active is not None:
            self.run_id = active.info.run_id
        else:
            previous = _recorded_run_id(record_path)
            self.run_id = mlflow.start_run(run_id=previous, run_name=None if previous else directory.name).info.run_id
            self.owns_run = True
            _opened(self.run_id)
            if previous is None:
                mlflow.log_params(dict(params), run_id=self.run_id)
        mlflow.MlflowClient().set_tag(self.run_id, "ddrl.sweep_dir", str(directory))
        record_path.write_text(json.dumps({"run_id": self.run_id, "tracking_uri": mlflow.get_tracking_uri()}, indent=2) + "\n")

    def _end(self, metrics: Mapping[str, float], artifacts: list[Path], best_policy_dir: Path | None, failed: bool) -> None:
        import mlflow

        mlflow.log_metrics({key: float(value) for key, value in metrics.items() if _finite(value)}, run_id=self.run_id)
        client = mlflow.MlflowClient()
        for path in artifacts:
            client.log_artifact(self.run_id, str(path))
        if best_policy_dir is not None:
            client.log_artifacts(self.run_id, str(best_policy_dir), "best_policy")
        if self.owns_run:
            _end_runs("FAILED" if failed else "FINISHED", self.run_id)


def _recorded_run_id(record_path: Path) -> str | None:
    """The MLflow run a run or sweep directory recorded, if it still exists in the current tracking store."""
    import mlflow

    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("tracking_uri") != mlflow.get_tracking_uri():
        return None
    try:
        mlflow.MlflowClient().get_run(record["run_id"])
    except Exception:  # noqa: BLE001 - deleted, or another store
        return None
    return record["run_id"]


def _log_serving_model(policy: Any, run_id: str, name: str) -> str | None:
    """``mlflow.pytorch.log_model`` of the serving module (torch.export format); returns the model URI.

    MLflow's torch flavor feeds one array: Dict and Tuple observations log no model (their policies still
    export with ``ddrl.export`` and load with ``ddrl.load_policy`` from the run's ``policy/`` artifacts).
    """
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from ddrl.export import example_input, serving_module

    env = policy.env
    if env.observation.structured:
        log.info("mlflow: no %s logged: MLflow's torch flavor takes one array, %s observations are a Dict or Tuple", name, env.id)
        return None
    observation = env.observation.parts[0]
    example = example_input(policy)[0].numpy()
    inputs = Schema([TensorSpec(example.dtype, (-1, *observation.shape))])
    action_dtype = np.dtype(np.int64) if env.action.categorical else np.dtype(np.int8) if env.action.kind == "multi_binary" else np.dtype(np.float32)
    outputs = Schema([TensorSpec(action_dtype, (-1, *env.action.shape))])
    active = mlflow.active_run()
    torch_requirement = "torch==" + __import__("torch").__version__.split("+")[0]
    if active is not None and active.info.run_id == run_id:
        info = _log_model(serving_module(policy), name, ModelSignature(inputs, outputs), example, torch_requirement)
    else:  # the observer's run is not the active one (the caller switched runs): log into ours explicitly
        with mlflow.start_run(run_id=run_id, nested=active is not None):
            info = _log_model(serving_module(policy), name, ModelSignature(inputs, outputs), example, torch_requirement)
    return info.model_uri


def _log_model(module: Any, name: str, signature: Any, example: Any, requirement: str) -> Any:
    import mlflow.pytorch

    return mlflow.pytorch.log_model(
        module,
        name=name,
        signature=signature,
        input_example=example,
        pip_requirements=[requirement],
        validate_serving_input=False,  # mlflow's check feeds the example as a list, which the torch flavor rejects
    )


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config sections as dotted keys: ``{"ppo": {"gamma": 0.99}}`` -> ``{"ppo.gamma": 0.99}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, dict)) else value
    return flat


def _finite(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
