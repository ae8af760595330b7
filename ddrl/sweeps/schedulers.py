"""The decisions a sweep takes at its barriers, as pure functions of the trials' evaluations and the sweep seed:
which trials successive halving keeps, and which trials population-based training replaces, by whom, with which
hyperparameters.  Nothing here runs Spark or reads files, so a resumed sweep decides the same."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

from ddrl.config import Config, ConfigError
from ddrl.seeding import Stream, derive_seed
from ddrl.sweeps.spec import HalvingSpec, PbtSpec, lookup, trial_config


def rank(scores: Mapping[str, float]) -> list[str]:
    """Trial names best first by score (a trial's latest evaluation); unevaluated (NaN) last, ties in name order."""
    return sorted(scores, key=lambda name: (-scores[name] if math.isfinite(scores[name]) else math.inf, name))


def rung_steps(halving: HalvingSpec, rung: int) -> int:
    """The env steps at which rung ``rung`` (0, 1, ...) ranks the trials still running."""
    return halving.min_steps * halving.eta**rung


def halving_survivors(scores: Mapping[str, float], halving: HalvingSpec) -> list[str]:
    """The trials that go on past a rung: the top ``1/eta`` of ``scores`` (at least one), best first."""
    ranked = rank(scores)
    return ranked[: max(1, len(ranked) // halving.eta)]


@dataclasses.dataclass(frozen=True)
class Exploit:
    """One PBT replacement: ``recipient`` continues from ``donor``'s state with ``values`` (dotted key to value)."""

    recipient: str
    donor: str
    values: dict[str, Any]


def exploit_and_explore(
    scores: Mapping[str, float],
    configs: Mapping[str, Config],
    pbt: PbtSpec,
    keys: Sequence[str],
    sweep_seed: int,
    generation: int,
) -> list[Exploit]:
    """Truncation selection: each trial in the bottom ``quantile`` takes a trial drawn from the top ``quantile``,
    its hyperparameters each times a factor drawn from ``pbt.factors`` (a value the config refuses, such as a clip
    range above 1, stays the donor's).  Draws come from (sweep seed, generation, recipient)."""
    ranked = rank(scores)
    count = int(len(ranked) * pbt.quantile)
    if count == 0:
        return []
    top, bottom = ranked[:count], ranked[-count:]
    exploits = []
    for recipient in sorted(bottom):
        generator = np.random.default_rng(derive_seed(sweep_seed, generation, int(recipient.rsplit("-", 1)[1]), Stream.POPULATION_BASED_TRAINING))
        donor = top[int(generator.integers(len(top)))]
        donor_data = configs[donor].to_dict()
        values = {}
        for key in keys:
            value = lookup(donor_data, key)
            factor = float(pbt.factors[int(generator.integers(len(pbt.factors)))])
            perturbed = max(1, round(value * factor)) if isinstance(value, int) else value * factor
            values[key] = perturbed if _accepted(donor_data, key, perturbed) else value
        exploits.append(Exploit(recipient, donor, values))
    return exploits


def _accepted(data: Mapping[str, Any], key: str, value: Any) -> bool:
    try:
        trial_config(data, {key: value})
    except ConfigError:
        return False
    return True
