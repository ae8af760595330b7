"""A run directory: the resolved config, metrics as Parquet, checkpoints and the final policy.

::

    RUN_DIR/config.yaml                       the resolved config (defaults filled in)
    RUN_DIR/metrics/iteration-000001.parquet  one row per iteration; read the folder as one table
    RUN_DIR/checkpoints/                      see ddrl.checkpoint
    RUN_DIR/policy/                           the final policy (ddrl.load_policy)
    RUN_DIR/best/                             the best-evaluated policy (train.keep_best), best.json says when

Opening a run checks everything (config, env, directory) and writes nothing, so bad input loses nothing.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
from pathlib import Path
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from ddrl import carry, checkpoint, config as config_module, envs, noise_scale
from ddrl.config import Config, ConfigError
from ddrl.envs import EnvInfo
from ddrl.policy import Policy

CONFIG_FILE = "config.yaml"
METRICS_DIR = "metrics"
CHECKPOINT_DIR = "checkpoints"
POLICY_DIR = "policy"
BEST_DIR = "best"
BEST_FILE = "best.json"


@dataclasses.dataclass(frozen=True)
class Run:
    """A validated run, new or resumed, that nothing has been written for yet."""

    config: Config
    env: EnvInfo
    directory: Path
    resumed: bool
    latest_checkpoint: tuple[checkpoint.State, dict[str, Any]] | None = None
    """For a resumed run: its newest valid checkpoint (state, sidecar), None if it has none."""

    @staticmethod
    def open(
        source: str | Path | Mapping[str, Any] | Config | None = None,
        overrides: list[str] | tuple[str, ...] = (),
        run_dir: str | Path | None = None,
        resume: str | Path | None = None,
    ) -> "Run":
        """Validate a config (and, to resume, the run directory it must match); raise ``ConfigError``."""
        if resume is not None:
            directory = Path(resume)
            stored_path = directory / CONFIG_FILE
            if not stored_path.exists():
                raise ConfigError(f"resume: {directory} is not a ddrl run directory (no {CONFIG_FILE})")
            stored = config_module.load(stored_path)
            config = config_module.load(source if source is not None else stored, overrides)
            if config.spark.sync != stored.spark.sync:
                raise ConfigError(f"spark.sync: {directory} trained with sync: {stored.spark.sync}, whose state (Adam, normalizers) "
                                  f"the run must go on with; resume it with spark.sync: {stored.spark.sync}")
            if _but_the_spark_section(config) != _but_the_spark_section(stored):
                raise ConfigError(f"resume: {directory} belongs to a different config than the one given")
            env = _described(config)
            return Run(config, env, directory, resumed=True, latest_checkpoint=_latest_fitting_checkpoint(config, env, directory))
        if source is None:
            raise ConfigError("config: a config is required to start a run")
        config = config_module.load(source, overrides)
        env = _described(config)
        directory = Path(run_dir or config.output.run_dir or _default_directory(config))
        if directory.exists() and any(directory.iterdir()):
            raise ConfigError(f"output.run_dir: {directory} already holds files; resume it or choose another")
        return Run(config, env, directory, resumed=False)

    @property
    def checkpoints(self) -> Path:
        return self.directory / CHECKPOINT_DIR

    @property
    def policy_directory(self) -> Path:
        return self.directory / POLICY_DIR

    @property
    def best_directory(self) -> Path:
        return self.directory / BEST_DIR

    def save_best(self, policy: Policy, evaluation: dict[str, Any]) -> None:
        """Keep ``policy`` as the best so far, with its evaluation (mean return, iteration, env steps)."""
        policy.save(self.best_directory)
        text = json.dumps(evaluation, indent=2)
        checkpoint.atomic_write(self.best_directory / BEST_FILE, lambda path: path.write_text(text))

    def create(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        text = config_module.dump(self.config)
        checkpoint.atomic_write(self.directory / CONFIG_FILE, lambda path: path.write_text(text))

    def write_metrics(self, iteration: int, row: dict[str, Any]) -> None:
        directory = self.directory / METRICS_DIR
        directory.mkdir(exist_ok=True)
        table = pa.Table.from_pylist([row])
        checkpoint.atomic_write(directory / f"iteration-{iteration:06d}.parquet", lambda path: pq.write_table(table, path))

    def drop_metrics_after(self, iteration: int) -> None:
        """Forget metrics of iterations a resumed run will repeat, so that none is counted twice."""
        for path in (self.directory / METRICS_DIR).glob("iteration-*.parquet"):
            if int(path.stem.split("-")[1]) > iteration:
                path.unlink()

    def read_metrics(self) -> pa.Table:
        return read_metrics(self.directory)


def read_metrics(directory: Path) -> pa.Table:
    """A run directory's metrics, one row per iteration in iteration order (an empty table before the first)."""
    paths = sorted((directory / METRICS_DIR).glob("iteration-*.parquet"))
    tables = [pq.read_table(path) for path in paths]
    return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})


def _but_the_spark_section(config: Config) -> str:
    """What a resumed run's config must share with the run's: everything but the output and how the work is spread
    (a run may go on with other ``spark.num_tasks``: new task indices start new episodes, dropped ones end)."""
    return config.model_copy(update={"spark": config_module.SparkConfig()}).fingerprint()


def _described(config: Config) -> EnvInfo:
    """The config's env, checked against its algorithm (``check_env``, where the algorithm has one)."""
    env = envs.describe(config.env)
    algorithm = importlib.import_module(config_module.ALGORITHMS[config.algo])
    if hasattr(algorithm, "check_env"):
        algorithm.check_env(config, env)
    return env


def _latest_fitting_checkpoint(config: Config, env: EnvInfo, directory: Path) -> tuple[checkpoint.State, dict[str, Any]] | None:
    """The newest valid checkpoint, which must hold the arrays this config's algorithm starts from."""
    loaded = checkpoint.load_latest(directory / CHECKPOINT_DIR)
    if loaded is None:
        return None
    algorithm = importlib.import_module(config_module.ALGORITHMS[config.algo])
    initial = algorithm.build(config, env).initial_state()
    state = loaded[0]
    # Checkpoints from before ddrl measured the gradient noise scale start its averages afresh.
    state.update({key: value for key, value in initial.items() if key.startswith(noise_scale.PREFIX) and key not in state})
    expected = {key: value.shape for key, value in initial.items()}
    found = {key: value.shape for key, value in state.items() if not key.startswith(carry.PREFIX)}  # sizes vary
    if found != expected:
        key = sorted(key for key in found.keys() | expected.keys() if found.get(key) != expected.get(key))[0]
        raise ConfigError(
            f"resume: the checkpoint in {directory / CHECKPOINT_DIR} does not fit this config's policy shape "
            f"({key}: {found.get(key)} in the checkpoint, {expected.get(key)} for the config)"
        )
    return loaded


def _default_directory(config: Config) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(config.output.root) / f"{config.name}-{stamp}"
