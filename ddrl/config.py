"""Run configuration: YAML files in ``conf/``, validated before Spark starts.

A config has the sections below plus one section named after its algorithm (``ppo:``), whose schema lives
in that algorithm's module.  Every problem is reported as one ``ConfigError`` line naming the field.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import re
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ALGORITHMS = {"ppo": "ddrl.algorithms.ppo", "es": "ddrl.algorithms.es", "bc": "ddrl.algorithms.bc"}
"""Algorithm name to the module that implements it (see ``ddrl.algorithms``)."""


class ConfigError(ValueError):
    """A config, override, environment or run directory that cannot be used; the message names the field."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class WrapperConfig(StrictModel):
    """One env wrapper: ``{class: package.module:Name, kwargs: {...}}``, called as ``Name(env, **kwargs)``."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)
    class_: str = Field(alias="class", pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", description="'package.module:Name'.")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    use: Literal["always", "training", "evaluation"] = Field(
        "always", description="Which envs it wraps: training-only wrappers (reward clipping, an episode per life) leave "
        "evaluations scoring whole games."
    )


class EnvPoolConfig(StrictModel):
    """Training envs from EnvPool (``envpool.make_gymnasium``) instead of gymnasium's vector env: ``id`` is EnvPool's
    task id, ``kwargs`` its options (its own preprocessing: the config's wrappers do not apply to these envs).
    Evaluations stay on gymnasium's env (``env.id`` and its wrappers), whose spaces EnvPool's must equal."""

    id: str = Field(min_length=1, description="EnvPool's task id, e.g. 'Breakout-v5'.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Options of envpool.make_gymnasium; num_threads 1 by default.")


class EnvConfig(StrictModel):
    id: str = Field(min_length=1, description="A registered gymnasium id, or 'package.module:ClassName'.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the env.")
    num_envs: int = Field(8, ge=1, le=4096, description="Environments per task, stepped as one vector env.")
    total_envs: int | None = Field(
        None, ge=1, le=4096 * 100_000, description="Environments over all tasks, instead of num_envs: the envs one process "
        "would step, which spark.num_tasks splits evenly (num_envs = total_envs / num_tasks each)."
    )
    max_episode_steps: int | None = Field(None, ge=1, description="Time limit; the env's own by default.")
    wrappers: list[WrapperConfig] = Field(default_factory=list, description="Wrappers applied to each env, in order.")
    action_mask: Literal["auto", "info", "observation", "none"] = Field(
        "auto", description="Where the valid-action mask comes from; auto: the observation's part or the reset info's "
        "entry named action_mask_key, if there is one."
    )
    action_mask_key: str = Field("action_mask", min_length=1)
    envpool: EnvPoolConfig | None = Field(None, description="Step training envs with EnvPool (package envpool).")


class SparkConfig(StrictModel):
    num_tasks: int = Field(2, ge=1, le=100_000, description="Tasks per iteration (part of the config, not the cluster).")
    sync: Literal["gradients", "parameters"] | None = Field(
        None, description="How an iteration's tasks learn together.  gradients: they run as one barrier stage and sum "
        "their gradients at every optimizer step, so N tasks learn as one process with all their envs (every task "
        "must run at once, on executors that reach each other and the driver over TCP).  parameters: each task "
        "updates on its own and the driver merges their changes.  Default: the algorithm's (gradients for ppo and "
        "bc, parameters for es)."
    )
    sync_timeout_s: float = Field(
        300.0, gt=0, le=86_400, description="With sync: gradients, how long a task waits to form its group with the "
        "others, and at any collective for the slowest of them, before its barrier stage fails (a task that dies "
        "fails the others at once)."
    )
    tree_depth: int | Literal["auto"] = Field(
        "auto", description="Depth of RDD.treeReduce, 1 to 16; auto: the fastest by the merge's cost model (ddrl.engines.tree)."
    )

    @field_validator("tree_depth", mode="before")
    @classmethod
    def _depth_or_auto(cls, value: Any) -> Any:
        if value == "auto" or (type(value) is int and 1 <= value <= 16):
            return value
        raise ValueError(f"must be auto or a depth from 1 to 16 (got {value!r})")


class TrainConfig(StrictModel):
    total_env_steps: int = Field(ge=1, description="Step budget: training stops once this many env steps ran.")
    target_return: float | None = Field(None, description="Evaluation mean that counts as solved; the env's reward_threshold by default.")
    stop_at_target: bool = Field(True, description="Stop once evaluations reach target_return (see solved_evaluations).")
    solved_evaluations: int = Field(2, ge=1, description="Consecutive evaluations at or above target_return that count as solved.")
    eval_every: int = Field(1, ge=1, description="Evaluate the policy every this many iterations, inside their Spark job.")
    eval_episodes: int = Field(10, ge=1, description="Episodes per evaluation during training, spread over the tasks.")
    final_eval_episodes: int = Field(20, ge=1, description="Episodes of the final evaluation (on the driver).")
    keep_best: bool = Field(True, description="Keep the best-evaluated policy in RUN_DIR/best beside the final one.")


class OutputConfig(StrictModel):
    root: str = Field("runs", min_length=1, description="Where run directories are created.")
    run_dir: str | None = Field(None, description="This run's directory; root/<name>-<timestamp> by default.")
    checkpoint_every: int = Field(10, ge=1, description="Checkpoint every this many iterations (and at the end).")
    keep_checkpoints: int = Field(3, ge=1, description="How many recent checkpoints to keep.")
    record_experience: str | None = Field(
        None, min_length=1, description="Where every task writes the transitions it collects, a Parquet file per "
        "(iteration, task) (ddrl.data.trajectories): a local or mounted directory, or a URI pyarrow writes to."
    )

    @field_validator("record_experience")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        """Executors run elsewhere: a local path is made absolute on the driver."""
        from ddrl.data import trajectories

        return None if value is None else trajectories.absolute(value)


class InitConfig(StrictModel):
    policy: str | None = Field(
        None, min_length=1, description="Start from this saved policy (a run or policy directory, e.g. a BC run's): "
        "its actor, its critic where it has one, its Gaussian log std and its observation moments (algo ppo)."
    )
    critic_warmup_iterations: int = Field(
        3, ge=0, description="For a policy saved without a critic (BC's): the first iterations train only the new "
        "critic, so that the actor's first updates see advantages from a fitted V(s)."
    )

    @field_validator("policy")
    @classmethod
    def _exists(cls, value: str | None) -> str | None:
        if value is None:
            return None
        path = Path(value).expanduser().resolve()
        if not path.exists():
            raise ValueError(f"no such run or policy directory: {value}")
        return str(path)


class Config(StrictModel):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = Field(0, ge=0, lt=2**63)
    algo: str
    env: EnvConfig
    spark: SparkConfig = SparkConfig()
    train: TrainConfig
    output: OutputConfig = OutputConfig()
    init: InitConfig = InitConfig()
    hyperparameters: Any = Field(None, exclude=True, description="The algorithm's section, validated by its module.")

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data, with the algorithm's section under its name."""
        data = self.model_dump(mode="json")
        data[self.algo] = self.hyperparameters.model_dump(mode="json")
        if self.env.total_envs is not None:  # each task's share follows from spark.num_tasks
            del data["env"]["num_envs"]
        return data

    def fingerprint(self) -> str:
        """A hash of everything that shapes training (the output section does not)."""
        data = self.to_dict()
        data.pop("output")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def load(source: str | Path | Mapping[str, Any] | Config, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read and validate a config from a YAML path, a dict or a ``Config``, applying ``key.path=value`` overrides."""
    if isinstance(source, Config):
        if not overrides:
            return source
        source = source.to_dict()
    data = _read_yaml(Path(source)) if isinstance(source, (str, Path)) else copy.deepcopy(dict(source))
    for override in overrides:
        _apply_override(data, override)
    return from_dict(data)


def from_dict(data: Mapping[str, Any]) -> Config:
    data = dict(data)
    if "hyperparameters" in data:
        raise ConfigError("hyperparameters: unknown key")
    algo = data.get("algo")
    if not isinstance(algo, str) or algo not in ALGORITHMS:
        raise ConfigError(f"algo: must be one of {sorted(ALGORITHMS)} (got {algo!r})")
    for other in ALGORITHMS:
        if other != algo and other in data:
            raise ConfigError(f"{other}: section does not apply to algo {algo!r}")
    section = data.pop(algo, None) or {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"{algo}: must be a mapping of hyperparameters")
    algorithm = importlib.import_module(ALGORITHMS[algo])
    hyperparameters = validate_model(algorithm.Hyperparameters, section, prefix=f"{algo}.")
    config = validate_model(Config, data, prefix="").model_copy(update={"hyperparameters": hyperparameters})
    config = _resolve_sync(_split_envs(config), algorithm.SYNC_MODES)
    if hasattr(algorithm, "check"):  # checks that span sections, e.g. directions against tasks
        algorithm.check(config)
    return config


def _split_envs(config: Config) -> Config:
    """``env.num_envs`` of each task from ``env.total_envs`` and ``spark.num_tasks``."""
    env, num_tasks = config.env, config.spark.num_tasks
    if env.total_envs is None:
        return config
    if "num_envs" in env.model_fields_set:
        raise ConfigError("env.total_envs: set env.num_envs (each task's envs) or env.total_envs (all tasks' together), not both")
    if env.total_envs % num_tasks:
        raise ConfigError(f"env.total_envs: {env.total_envs} envs do not split evenly over spark.num_tasks={num_tasks} "
                          "tasks: choose a task count that divides it, or set env.num_envs per task")
    return config.model_copy(update={"env": env.model_copy(update={"num_envs": env.total_envs // num_tasks})})


def _resolve_sync(config: Config, modes: tuple[str, ...]) -> Config:
    """``spark.sync`` filled in with the algorithm's default (the first of ``modes``), or refused where it has no such mode."""
    sync = config.spark.sync or modes[0]
    if sync not in modes:
        raise ConfigError(f"spark.sync: algo {config.algo} cannot train with sync: {sync} (it can with: {', '.join(modes)})")
    return config.model_copy(update={"spark": config.spark.model_copy(update={"sync": sync})})


def validate_model(model: type[BaseModel], data: Mapping[str, Any], prefix: str) -> Any:
    """``model`` validated from ``data``; the first problem as one ``ConfigError`` naming ``prefix`` + its field."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        field = prefix + ".".join(str(part) for part in first["loc"])
        message = first["msg"]
        if first["type"] == "value_error":  # a model's own check: its message says what was wrong
            message = message.removeprefix("Value error, ")
        elif first["type"] not in ("missing", "extra_forbidden"):
            message += f" (got {first['input']!r})"
        elif first["type"] == "extra_forbidden":
            message = "unknown key"
        more = error.error_count() - 1
        raise ConfigError(f"{field}: {message}" + (f" (and {more} more problems)" if more else "")) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as error:
        raise ConfigError(f"config file {path} cannot be read: {error.strerror}") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: {getattr(error, 'problem', error)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    return data


def _apply_override(data: dict[str, Any], override: str) -> None:
    key, separator, raw_value = override.partition("=")
    if not separator or not key:
        raise ConfigError(f"override {override!r}: expected key.path=value")
    value = parse_value(raw_value, f"override {key}")
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part} is not a section")
        node = child
    node[leaf] = value


def parse_value(text: str, where: str) -> Any:
    """A value given on a command line, read as YAML (``3e-4`` is a number); ``where`` names it in the error."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        raise ConfigError(f"{where}: value {text!r} is not valid YAML") from None


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, also reading YAML 1.2 floats without a dot such as ``3e-4`` as numbers."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def dump(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
