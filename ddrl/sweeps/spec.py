"""What a sweep runs: its trials (a grid, random samples, seeds) and how they are scheduled (every trial to its
budget, synchronous successive halving, or population-based training), validated before Spark starts.

Trial ``k`` of a sweep is the base config with its grid point, its random sample and ``seed = base seed + s``
for seed index ``s``: a normal run, the same as ``jobs/train.py --set KEY=VALUE ...`` would train.  Random
samples are drawn from the base config's seed, so the same sweep seed plans the same trials.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import itertools
import math
from typing import Annotated, Any, Literal, Mapping, Sequence

import numpy as np
from pydantic import Field, model_validator

from ddrl import config as config_module
from ddrl.config import ALGORITHMS, Config, ConfigError, StrictModel
from ddrl.seeding import Stream, derive_seed

NOT_SWEPT = ("seed", "name", "algo", "output")
"""Keys a sweep sets itself (seed: ``seeds``) or that do not shape training."""


class RandomRange(StrictModel):
    """Uniform on [low, high], or log-uniform with ``log``; integers where both bounds are integers."""

    low: float | int
    high: float | int
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "RandomRange":
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got {self.low})")
        return self

    def sample(self, generator: np.random.Generator) -> float | int:
        if self.log:
            value = math.exp(generator.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = generator.uniform(self.low, self.high)
        if isinstance(self.low, int) and isinstance(self.high, int):
            return min(max(round(value), self.low), self.high)
        return float(value)


class HalvingSpec(StrictModel):
    """Synchronous successive halving: at each rung (``min_steps`` env steps, then ``eta`` times more each
    rung) every live trial waits for the others, and the top ``1/eta`` by their latest evaluation go on."""

    eta: int = Field(3, ge=2, description="Keep the top 1/eta of the trials at each rung.")
    min_steps: int = Field(ge=1, description="Env steps of a trial at the first rung.")


class PbtSpec(StrictModel):
    """Population-based training (Jaderberg et al. 2017): every ``interval`` iterations, each trial in the bottom
    ``quantile`` (by latest evaluation) takes the state and hyperparameters of a trial drawn from the top
    ``quantile`` (exploit), then multiplies each of ``hyperparameters`` by a factor drawn from ``factors``
    (explore)."""

    interval: int = Field(ge=1, description="Iterations between exploit-and-explore steps.")
    quantile: float = Field(0.25, gt=0, le=0.5)
    factors: list[Annotated[float, Field(gt=0)]] = Field(default_factory=lambda: [0.8, 1.2], min_length=1,
                                                         description="Explore: each perturbed value times one of these.")
    hyperparameters: list[str] | None = Field(
        None, description="Dotted keys that are perturbed; the algorithm's PERTURBABLE (learning rate, entropy "
        "coefficient, clip range for PPO) by default."
    )


class SweepSpec(StrictModel):
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="Dotted key to the values tried, crossed.")
    random: dict[str, RandomRange] = Field(default_factory=dict, description="Dotted key to the range sampled.")
    trials: int = Field(1, ge=1, description="Random samples per grid point (with random).")
    seeds: int = Field(1, ge=1, description="Seeds per point: seed = the base config's seed + 0, 1, ...")
    halving: HalvingSpec | None = None
    pbt: PbtSpec | None = None
    trials_per_job: int | None = Field(None, ge=1, description="Trials whose tasks share a Spark job; all live ones by default.")

    @property
    def scheduler(self) -> Literal["none", "halving", "pbt"]:
        return "halving" if self.halving is not None else "pbt" if self.pbt is not None else "none"


@dataclasses.dataclass(frozen=True)
class Trial:
    """One run of a sweep: its name (its directory under SWEEP_DIR/trials), seed and swept values."""

    index: int
    name: str
    seed: int
    values: dict[str, Any]
    """Dotted key to the value this trial starts with, for every key the sweep sets (seed included)."""
    config: Config


def load_spec(spec: SweepSpec | Mapping[str, Any]) -> SweepSpec:
    """A validated ``SweepSpec``; ``ConfigError`` names the field of the first problem."""
    validated = spec if isinstance(spec, SweepSpec) else config_module.validate_model(SweepSpec, spec, prefix="sweep.")
    if validated.halving is not None and validated.pbt is not None:
        raise ConfigError("sweep: halving and pbt cannot both schedule one sweep")
    return validated


def plan(base: Config, spec: SweepSpec) -> list[Trial]:
    """Every trial of the sweep, each config validated; ``ConfigError`` names the key of the first problem."""
    for kind, keys in (("grid", spec.grid), ("random", spec.random)):
        for key, values in keys.items():
            if key.split(".")[0] in NOT_SWEPT:
                raise ConfigError(f"sweep.{kind}.{key}: {key.split('.')[0]} is not swept (seeds: use sweep.seeds)")
            if kind == "grid" and not values:
                raise ConfigError(f"sweep.grid.{key}: no values")
    for key in spec.grid.keys() & spec.random.keys():
        raise ConfigError(f"sweep.random.{key}: also in sweep.grid")
    if not spec.grid and not spec.random and spec.seeds == 1 and spec.pbt is None:
        raise ConfigError("sweep: nothing to sweep (give sweep.grid, sweep.random or sweep.seeds > 1)")
    generator = np.random.default_rng(derive_seed(base.seed, 0, 0, Stream.SWEEP_SAMPLING))
    samples = [{key: value.sample(generator) for key, value in spec.random.items()} for _ in range(spec.trials if spec.random else 1)]
    points = [dict(zip(spec.grid, values)) for values in itertools.product(*spec.grid.values())]
    base_data = base.to_dict()
    trials: list[Trial] = []
    for point, sample, seed_index in itertools.product(points, samples, range(spec.seeds)):
        values = {**point, **sample, "seed": base.seed + seed_index}
        index = len(trials)
        try:
            config = trial_config(base_data, values)
        except ConfigError as error:
            kind = next((kind for kind, keys in (("grid", spec.grid), ("random", spec.random)) for key in keys if str(error).startswith(f"{key}:")), None)
            raise ConfigError(f"sweep.{kind}.{error}" if kind else f"sweep: trial {index} ({_describe(values)}): {error}") from None
        trials.append(Trial(index, f"trial-{index:03d}", base.seed + seed_index, values, config))
    if spec.pbt is not None:
        check_perturbable(trials[0].config, perturbed_keys(base, spec.pbt))
    return trials


def trial_config(base: Mapping[str, Any], values: Mapping[str, Any]) -> Config:
    """The config ``base`` (plain data) with each dotted key of ``values`` set; ``ConfigError`` names the key."""
    data = copy.deepcopy(dict(base))
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {part} is not a section")
        node[leaf] = value
    data.setdefault("output", {})["run_dir"] = None  # the sweep gives each trial its directory
    return config_module.from_dict(data)


def _describe(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in values.items())


def perturbed_keys(base: Config, pbt: PbtSpec) -> list[str]:
    """The dotted keys PBT perturbs: those named, or the algorithm's ``PERTURBABLE`` hyperparameters."""
    if pbt.hyperparameters is not None:
        return list(pbt.hyperparameters)
    algorithm = importlib.import_module(ALGORITHMS[base.algo])
    return [f"{base.algo}.{name}" for name in getattr(algorithm, "PERTURBABLE", ())]


def check_perturbable(config: Config, keys: Sequence[str]) -> None:
    """Refuse PBT keys that are not numbers in ``config``."""
    if not keys:
        raise ConfigError(f"sweep.pbt.hyperparameters: none given, and algo {config.algo!r} names none to perturb")
    data = config.to_dict()
    for key in keys:
        value = lookup(data, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"sweep.pbt.hyperparameters: {key} is not a number in the config (got {value!r})")


def lookup(data: Mapping[str, Any], key: str) -> Any:
    """The value at a dotted key of plain config data; ``ConfigError`` if there is none."""
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"{key}: unknown key")
        node = node[part]
    return node


def parse_grid(arguments: Sequence[str]) -> dict[str, list[Any]]:
    """``--grid key=v1,v2`` arguments as a grid; values are read as YAML (``3e-4`` is a number)."""
    grid: dict[str, list[Any]] = {}
    for argument in arguments:
        key, values = _split(argument, "--grid", "key=v1,v2")
        grid[key] = [config_module.parse_value(value.strip(), f"--grid {key}") for value in values.split(",") if value.strip()]
        if not grid[key]:
            raise ConfigError(f"--grid {key}: no values")
    return grid


def parse_random(arguments: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--random key=low:high[:log]`` arguments as ranges; low and high must be numbers."""
    ranges: dict[str, dict[str, Any]] = {}
    for argument in arguments:
        key, text = _split(argument, "--random", "key=low:high[:log]")
        parts = text.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
            raise ConfigError(f"--random {key}: expected low:high or low:high:log (got {text!r})")
        bounds = [config_module.parse_value(part.strip(), f"--random {key}") for part in parts[:2]]
        for name, bound in zip(("low", "high"), bounds):
            if isinstance(bound, bool) or not isinstance(bound, (int, float)):
                raise ConfigError(f"--random {key}: {name} {bound!r} is not a number")
        ranges[key] = {"low": bounds[0], "high": bounds[1], "log": len(parts) == 3}
    return ranges


def _split(argument: str, flag: str, form: str) -> tuple[str, str]:
    key, separator, rest = argument.partition("=")
    if not separator or not key.strip():
        raise ConfigError(f"{flag} {argument!r}: expected {form}")
    return key.strip(), rest

