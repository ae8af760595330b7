"""Learning curves from run directories: return against env steps and against wall time, runs overlaid.

``plot_runs([run_dir, ...], "curve.png")`` writes a PNG (matplotlib's Agg backend: no display needed);
``learning_curve([run_dir, ...])`` returns the matplotlib Figure (a notebook shows it inline).  Both read only
RUN_DIR/metrics (Parquet) and RUN_DIR/config.yaml: no Spark.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from ddrl.run import CONFIG_FILE, METRICS_DIR, read_metrics as run_metrics

CURVE_FILE = "learning_curve.png"


def read_metrics(run_dir: str | Path) -> dict[str, np.ndarray]:
    """A run's metrics as columns of numpy arrays, in iteration order (missing values are NaN).

    ``wall_s`` is made cumulative across resumes (each process counts from its own start).
    """
    table = run_metrics(Path(run_dir))
    if not table.num_rows:
        raise FileNotFoundError(f"{run_dir}: no metrics yet (expected {METRICS_DIR}/iteration-*.parquet)")
    columns = {name: np.asarray(table.column(name).to_numpy(zero_copy_only=False)) for name in table.column_names}
    order = np.argsort(columns["iteration"], kind="stable")
    columns = {name: values[order] for name, values in columns.items()}
    columns = {name: values.astype(np.float64) if values.dtype == object else values for name, values in columns.items()}
    if "wall_s" in columns:
        columns["wall_s"] = _cumulative_wall(columns["wall_s"].astype(np.float64))
    return columns


def _cumulative_wall(wall: np.ndarray) -> np.ndarray:
    """A resumed run restarts its clock: add the time reached before each restart."""
    result, offset = wall.copy(), 0.0
    for index in range(1, len(wall)):
        if wall[index] < wall[index - 1]:
            offset = result[index - 1]
        result[index] = wall[index] + offset
    return result


def target_return(run_dir: str | Path) -> float | None:
    """The run's target return: train.target_return, else the env's reward threshold (None if neither)."""
    try:
        import yaml

        config = yaml.safe_load((Path(run_dir) / CONFIG_FILE).read_text())
        target = (config.get("train") or {}).get("target_return")
        if target is not None:
            return float(target)
        import gymnasium as gym

        spec = gym.spec(config["env"]["id"])
        return float(spec.reward_threshold) if spec.reward_threshold is not None else None
    except Exception:  # a user's env id, a missing config: no target line
        return None


def learning_curve(run_dirs: Sequence[str | Path], labels: Sequence[str] | None = None, title: str | None = None) -> Any:
    """A matplotlib Figure with two panels (return vs env steps, return vs wall time), one colour per run.

    Thin dashed lines: mean return of the training episodes that finished in each iteration.  Solid lines with
    markers and a band: the greedy evaluation (mean +- std).  A dotted grey line marks the target return.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    run_dirs = [Path(run_dir) for run_dir in run_dirs]
    if labels is None:
        labels = [run_dir.name for run_dir in run_dirs]
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    by_steps, by_time = figure.subplots(1, 2, sharey=True)
    runs = [read_metrics(run_dir) for run_dir in run_dirs]
    walls = [run.get("wall_s", np.full(len(run["iteration"]), np.nan)).astype(np.float64) for run in runs]
    longest_wall = max((float(np.nanmax(wall)) for wall in walls if np.isfinite(wall).any()), default=0.0)
    minutes = longest_wall > 300
    targets = {target for target in map(target_return, run_dirs) if target is not None}
    for index, (metrics, wall, label) in enumerate(zip(runs, walls, labels)):
        color = f"C{index % 10}"
        steps = metrics["env_steps"].astype(np.float64)
        # An evaluation runs in the job after its policy's update, so it belongs at that policy's env steps.
        evaluated_at = np.asarray(metrics.get("eval_env_steps", steps), dtype=np.float64)
        _plot_run(by_steps, steps, evaluated_at, metrics, label, color)
        _plot_run(by_time, wall / 60.0 if minutes else wall, wall / 60.0 if minutes else wall, metrics, label, color)
    for target in sorted(targets):
        by_steps.axhline(target, color="grey", linestyle=":", linewidth=1, label=f"target {target:g}")
        by_time.axhline(target, color="grey", linestyle=":", linewidth=1)
    by_steps.set_xlabel("env steps")
    by_time.set_xlabel("wall time (min)" if minutes else "wall time (s)")
    by_steps.set_ylabel("return")
    for axis in (by_steps, by_time):
        axis.grid(True, alpha=0.3)
    by_steps.xaxis.set_major_formatter(EngFormatter(sep=""))  # 20k, 1.5M
    handles, legend_labels = by_steps.get_legend_handles_labels()
    if handles:
        by_steps.legend(handles, legend_labels, fontsize="small", loc="best")
    figure.suptitle(title or ("learning curve: " + ", ".join(labels) if len(labels) == 1 else "learning curves"))
    return figure


def _plot_run(axis: Any, x: np.ndarray, eval_x: np.ndarray, metrics: dict[str, np.ndarray], label: str, color: str) -> None:
    train = np.asarray(metrics.get("episode_return_mean", np.full(len(x), np.nan)), dtype=np.float64)
    keep = np.isfinite(train) & np.isfinite(x)
    if keep.any():
        axis.plot(x[keep], train[keep], color=color, linestyle="--", linewidth=1, alpha=0.6, label=f"{label} train")
    evaluation = np.asarray(metrics.get("eval_return_mean", np.full(len(x), np.nan)), dtype=np.float64)
    spread = np.asarray(metrics.get("eval_return_std", np.zeros(len(x))), dtype=np.float64)
    keep = np.isfinite(evaluation) & np.isfinite(eval_x)
    if keep.any():
        axis.plot(eval_x[keep], evaluation[keep], color=color, marker="o", markersize=3, linewidth=1.8, label=f"{label} eval")
        low = evaluation[keep] - np.nan_to_num(spread[keep])
        high = evaluation[keep] + np.nan_to_num(spread[keep])
        axis.fill_between(eval_x[keep], low, high, color=color, alpha=0.15, linewidth=0)


def plot_runs(
    run_dirs: Sequence[str | Path], out: str | Path, labels: Sequence[str] | None = None, title: str | None = None, dpi: int = 100
) -> Path:
    """Write the learning curve of one or more runs to ``out`` (PNG); returns the path."""
    return save_figure(learning_curve(run_dirs, labels, title), Path(out), dpi)


def sweep_curves(table: pa.Table, best: str | None, title: str | None = None) -> Any:
    """A matplotlib Figure of a sweep table (``ddrl.sweeps.report``): every trial's evaluations against env steps
    and against wall time, thin, and the ``best`` trial thick and named."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    figure = Figure(figsize=(11, 4.2), layout="constrained")
    by_steps, by_time = figure.subplots(1, 2, sharey=True)
    columns = {name: np.asarray(table.column(name).to_numpy(zero_copy_only=False)) for name in ("trial", "eval_env_steps", "eval_return_mean", "wall_s")}
    names = list(dict.fromkeys(columns["trial"].tolist()))
    for index, name in enumerate(names):
        rows = (columns["trial"] == name) & np.isfinite(columns["eval_return_mean"].astype(np.float64))
        style = {"color": "black", "linewidth": 2.4, "zorder": 3, "label": f"best: {name}"} if name == best else {"color": f"C{index % 10}", "linewidth": 1, "alpha": 0.5}
        by_steps.plot(columns["eval_env_steps"][rows], columns["eval_return_mean"][rows], **style)
        by_time.plot(columns["wall_s"][rows], columns["eval_return_mean"][rows], **style)
    by_steps.set_xlabel("env steps")
    by_time.set_xlabel("sweep wall time (s)")
    by_steps.set_ylabel("evaluation return")
    for axis in (by_steps, by_time):
        axis.grid(True, alpha=0.3)
    by_steps.xaxis.set_major_formatter(EngFormatter(sep=""))
    if best is not None:  # every trial failed: nothing is named
        by_steps.legend(fontsize="small", loc="best")
    figure.suptitle(title or f"sweep: {len(names)} trials")
    return figure


def plot_sweep(table: pa.Table, best: str | None, out: str | Path, title: str | None = None, dpi: int = 100) -> Path:
    """Write ``sweep_curves`` to ``out`` (PNG); returns the path."""
    return save_figure(sweep_curves(table, best, title), Path(out), dpi)


def save_figure(figure: Any, out: Path, dpi: int) -> Path:
    """Write ``figure`` to ``out`` atomically (the format from its suffix); returns the path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.tmp")
    try:
        figure.savefig(temporary, format=out.suffix.lstrip(".") or "png", dpi=dpi)
        temporary.replace(out)
    finally:
        temporary.unlink(missing_ok=True)
    return out

