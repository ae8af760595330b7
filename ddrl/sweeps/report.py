"""What a sweep leaves for people to look at: the sweep table (Parquet, one row per trial and iteration with the
hyperparameters in force), every trial's curve with the best marked, and a ranked summary."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ddrl import checkpoint
from ddrl.run import POLICY_DIR, read_metrics
from ddrl.sweeps.spec import lookup

if TYPE_CHECKING:
    from ddrl.sweeps.driver import TrialOutcome
    from ddrl.sweeps.spec import Trial

TABLE_FILE = "sweep.parquet"
PLOT_FILE = "sweep.png"
SUMMARY_FILE = "summary.txt"
METRICS = ("env_steps", "eval_env_steps", "eval_return_mean", "eval_return_std", "episode_return_mean", "iteration_s", "wall_s")
"""The columns of each trial's metrics that the sweep table keeps."""


def latest_evaluation(metrics: pa.Table) -> float:
    """A trial's latest evaluation mean (NaN before its first): what the schedulers rank trials by."""
    if "eval_return_mean" not in metrics.column_names:
        return math.nan
    values = np.asarray(metrics.column("eval_return_mean").to_numpy(zero_copy_only=False), dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if len(finite) else math.nan


def tracked_values(config_data: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """The values of ``keys`` (dotted) in plain config data."""
    return {key: lookup(config_data, key) for key in keys}


def sweep_table(trial_dirs: Path, trials: Iterable["Trial"], outcomes: Sequence["TrialOutcome"],
                generations: list[dict[str, Any]], keys: Sequence[str]) -> pa.Table:
    """One row per trial and iteration (iteration 0 for one that has none): the trial, its status (and a failed
    trial's reason), the values of ``keys`` (the swept and perturbed hyperparameters, the seed) in force during
    that iteration, the PBT parent whose state it last took, and its metrics."""
    status = {outcome.name: outcome.status for outcome in outcomes}
    reasons = {outcome.name: outcome.reason for outcome in outcomes}
    rows: list[dict[str, Any]] = []
    for trial in trials:
        lineage = [(generation["iteration"], exploit["donor"], exploit["hyperparameters"])
                   for generation in generations for exploit in generation["exploits"]
                   if exploit["recipient"] == trial.name and exploit["applied"]]
        initial = tracked_values(trial.config.to_dict(), keys)
        # a trial that failed in its first iteration still gets a row (iteration 0), for its status and reason
        for row in read_metrics(trial_dirs / trial.name).to_pylist() or [{"iteration": 0}]:
            values, parent = initial, None
            for since, donor, changed in lineage:
                if since < row["iteration"]:
                    values, parent = changed, donor
            rows.append({"trial": trial.name, "status": status.get(trial.name, "running"), "reason": reasons.get(trial.name), "iteration": row["iteration"],
                         **values, "parent": parent, **{name: row.get(name, math.nan) for name in METRICS}})
    return pa.Table.from_pylist(rows)


def summary(directory: Path, scheduler: str, outcomes: Sequence["TrialOutcome"], best: "TrialOutcome | None", wall_seconds: float) -> str:
    """The trials ranked by final evaluation (failed ones last, with their reasons), as printed at the end of a sweep."""
    keys = list(dict.fromkeys(key for outcome in outcomes for key in outcome.values))
    header = ["rank", "trial", *keys, "status", "env steps", "final eval", "best eval"]
    ranked = sorted(outcomes, key=lambda outcome: (outcome.status == "failed", -outcome.eval_return_mean if outcome.status != "failed" else 0.0))
    lines = [[str(rank), outcome.name, *(_cell(outcome.values.get(key)) for key in keys), outcome.status, str(outcome.env_steps),
              "-" if outcome.status == "failed" else f"{outcome.eval_return_mean:.1f} +- {outcome.eval_return_std:.1f}",
              _cell(outcome.best_eval_return)]
             for rank, outcome in enumerate(ranked, 1)]
    widths = [max(len(row[column]) for row in [header, *lines]) for column in range(len(header))]
    table = "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *lines])
    failures = "".join(f"{outcome.name} failed: {outcome.reason}\n" for outcome in ranked if outcome.status == "failed")
    verdict = "best: none, every trial failed\n" if best is None else (
        f"best: {best.name} ({', '.join(f'{key}={_cell(value)}' for key, value in best.values.items())}), "
        f"final evaluation {best.eval_return_mean:.1f} +- {best.eval_return_std:.1f}; policy in {best.run_dir / POLICY_DIR}\n")
    return f"sweep {directory}: {len(outcomes)} trials, {scheduler}, {wall_seconds:.1f} s\n{table}\n{failures}{verdict}"


def write(directory: Path, table: pa.Table, summary_text: str, best: str | None) -> list[Path]:
    """Write the sweep table, the plot (when matplotlib is there) and the summary; the paths written."""
    paths = [directory / TABLE_FILE, directory / SUMMARY_FILE]
    checkpoint.atomic_write(paths[0], lambda path: pq.write_table(table, path))
    checkpoint.atomic_write(paths[1], lambda path: path.write_text(summary_text))
    if importlib.util.find_spec("matplotlib") is not None and table.num_rows:
        from ddrl.plots import plot_sweep

        paths.append(plot_sweep(table, best, directory / PLOT_FILE, title=f"sweep {directory.name}"))
    return paths


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
