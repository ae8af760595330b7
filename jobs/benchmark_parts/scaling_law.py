"""Part 13, scaling_law (#21): do more tasks mean less time to a target return?

For each case, task count N and seed: the shipped config with only ``spark.num_tasks`` (and the seed) changed,
trained in this process's local[2] session until its first evaluation at the target (every ``eval_every``
iterations), within ``max_iterations`` (the step budget is max_iterations iterations at N tasks, so that
annealed learning rates follow the same schedule per iteration whatever N).  Sample and iteration counts do not
depend on this machine's speed.

What a cluster with a core per task would take, T(N) = iterations(N) x (w(N) + o(N)):

* w(N): one task's own work per iteration (rollout and update), the median over the run's iterations, measured
  inside the tasks here (one core each);
* o(N): what an iteration costs beyond its slowest task at N tasks, two ways: from the simulated-cluster part of
  the same benchmark run (local[N], envs that wait instead of computing: its iteration time minus its tasks' own
  work, interpolated between the task counts it measured and extrapolated past the last two; on a 2-core machine
  it includes N Python workers contending for 2 cores), and from the cost model of part 4 (``model_overhead``).

The projected speed-up is S(N) = T(1) / T(N), the median over seeds of each seed's own ratio; the ideal is N.
Its ceiling is the ratio of iterations, which no cluster changes.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ddrl.engines import tree
from jobs.benchmark_parts.common import ROOT, Bench, iteration_steps, log, median, row
from jobs.benchmark_parts.simulated_cluster import simulated_cluster

TARGETS_AT_16 = {"CartPole PPO": 4.0, "Pendulum PPO": 8.0, "HalfCheetah PPO": 8.0, "HalfCheetah ARS": 12.0}


def scaling_law(bench: Bench) -> dict[str, Any]:
    import ddrl
    from ddrl import config as config_module, envs
    from ddrl.config import ALGORITHMS

    sizes = bench.sizes
    data: dict[str, Any] = {"overhead_s": {str(n): o for n, o in _simulated_overhead(bench).items()}, "cases": {}}
    for case, law in sizes.scaling_law_cases.items():
        one_task: list[dict[str, Any]] = []
        for variant, variant_overrides in law.variants.items():
            runs: dict[int, list[dict[str, Any]]] = {}
            for tasks in law.tasks:
                if tasks == 1 and one_task:  # every rule takes one task's own step: the same run
                    runs[tasks] = one_task
                    continue
                config = config_module.load(ROOT / law.path, [*law.overrides, *variant_overrides, f"spark.num_tasks={tasks}"])
                result_bytes = importlib.import_module(ALGORITHMS[config.algo]).build(config, envs.describe(config.env)).task_result_bytes()
                for seed in law.seeds:
                    overrides = [
                        *law.overrides, *variant_overrides, f"spark.num_tasks={tasks}", f"seed={seed}",
                        f"train.target_return={law.target}", "train.solved_evaluations=1", "train.stop_at_target=true",
                        f"train.eval_every={law.eval_every}", f"train.total_env_steps={iteration_steps(config) * law.max_iterations}",
                        "output.checkpoint_every=100000",
                    ]
                    result = ddrl.train(bench.spark(), ROOT / law.path, overrides=overrides, observers=[],
                                        run_dir=bench.work / "runs" / f"scaling_law-{case}-{variant}-{tasks}-{seed}".replace(" ", "_"))
                    runs.setdefault(tasks, []).append(_measure(result.metrics.to_pylist(), law.target, seed, result_bytes))
                    log(f"scaling_law: {case} {variant} {tasks} tasks seed {seed}: {runs[tasks][-1]}")
                if tasks == 1:
                    one_task = runs[tasks]
            data["cases"][f"{case}, {variant}"] = runs
    plot = bench.work / "scaling_law.png"
    rows = report(data, plot)
    data["plot"] = str(plot)
    return {"rows": rows, "data": data}


def _simulated_overhead(bench: Bench) -> dict[int, float]:
    """o(N) in seconds from the simulated-cluster part of this benchmark run (run here if it was not): its PPO
    iteration time less its tasks' own work."""
    simulated = bench.results["parts"].get("simulated_cluster", {}).get("data")
    if not simulated:
        bench.stop_spark()  # the simulated cluster starts its own processes
        simulated = simulated_cluster(bench)["data"]
    return {int(tasks): max(run["iteration_s"] - run["task_work_s"], 0.0) for tasks, run in simulated["ppo"].items()}


def overhead_at(overhead: dict[int, float], tasks: int) -> float:
    """o(N), linear between the measured task counts and past the last two."""
    counts = sorted(overhead)
    values = [overhead[count] for count in counts]
    if len(counts) == 1 or tasks <= counts[-1]:
        return float(np.interp(tasks, counts, values))
    slope = (values[-1] - values[-2]) / (counts[-1] - counts[-2])
    return values[-1] + slope * (tasks - counts[-1])


def model_overhead(tasks: int, result_bytes: float) -> float:
    """o(N) of a real cluster by the cost model (BENCHMARKS.md part 4): a stage, the driver's serial dispatch and
    the merge at the depth ``auto`` picks (results far below the driver's limit)."""
    depth = tree.auto_depth(tasks, result_bytes, math.inf)
    return tree.STAGE_SECONDS + tasks * tree.DRIVER_SECONDS_PER_TASK + tree.merge_seconds(tasks, depth, result_bytes)


def _measure(metrics: list[dict[str, Any]], target: float, seed: int, result_bytes: int) -> dict[str, Any]:
    reached = next((r for r in metrics if r["eval_return_mean"] >= target), None)
    return {
        "seed": seed,
        "iterations": reached["iteration"] if reached else None,
        "env_steps": int(reached["eval_env_steps"]) if reached else None,
        "iterations_run": len(metrics),
        "task_work_s": median([r.get("rollout_s", 0.0) + r.get("update_s", 0.0) for r in metrics]),
        "result_bytes": result_bytes,
        "useful_tasks": median([r.get("useful_tasks", math.nan) for r in metrics]),
        "step_scale": median([r.get("step_scale", math.nan) for r in metrics]),
    }


def speed_ups(runs: dict[int, list[dict[str, Any]]], overhead: Callable[[int, dict[str, Any]], float] | None) -> dict[int, float]:
    """S(N) = T(1) / T(N) per seed, T = iterations x (the task's work + ``overhead(N, run)``), the median over seeds;
    with ``overhead`` None the ratio of iterations alone.  NaN where a seed missed the target."""
    def seconds(tasks: int, run: dict[str, Any]) -> float:
        if not run["iterations"]:
            return math.nan
        return run["iterations"] * (1.0 if overhead is None else run["task_work_s"] + overhead(tasks, run))

    first = min(runs)
    one = {run["seed"]: seconds(first, run) for run in runs[first]}
    speed_up = {}
    for tasks, seeded in runs.items():
        ratios = [one.get(run["seed"], math.nan) / seconds(tasks, run) for run in seeded]
        speed_up[tasks] = float(np.median(ratios)) if all(math.isfinite(ratio) for ratio in ratios) else math.nan
    return speed_up


def report(data: dict[str, Any], plot: Path) -> list[dict[str, Any]]:
    """The part's rows and plot from its data (also from a stored benchmark JSON, whose keys are strings)."""
    simulated = {int(tasks): seconds for tasks, seconds in data["overhead_s"].items()}
    overheads = {"simulated cluster": lambda tasks, run: overhead_at(simulated, tasks),
                 "cost model": lambda tasks, run: model_overhead(tasks, run["result_bytes"])}
    rows, projected = [], {name: {} for name in overheads}
    for label, stored in data["cases"].items():
        runs = {int(tasks): seeded for tasks, seeded in stored.items()}
        case = label.split(",")[0]
        iteration_ratio = speed_ups(runs, None)
        speed_up = {name: speed_ups(runs, overhead) for name, overhead in overheads.items()}
        for name in overheads:
            projected[name][label] = speed_up[name]
        first = min(runs)
        for tasks, seeded in runs.items():
            where = f"{label}, {tasks} tasks"
            rows += [
                row(where, "iterations to the target (seeds)", " / ".join(str(r["iterations"] or "-") for r in seeded)),
                row(where, "env steps to the target (seeds)", " / ".join(f"{r['env_steps']:,}" if r["env_steps"] else "-" for r in seeded)),
                row(where, "one task's work per iteration, median", median([r["task_work_s"] for r in seeded]), "s"),
            ]
            useful = median([r["useful_tasks"] for r in seeded])
            if math.isfinite(useful):  # McCandlish et al.: steps to a target go as 1 + B_noise / B, at best
                rows += [row(where, "useful tasks u (B_noise / one task's batch), median", useful),
                         row(where, "step scale (ppo.task_scaling's factor), median", median([r["step_scale"] for r in seeded]), "x"),
                         row(where, f"iterations({first}) / iterations({tasks}) the noise scale allows, (1 + u) / (1 + u / N)",
                             (1 + useful) / (1 + useful / tasks), "x")]
            if tasks == first:
                continue
            target = TARGETS_AT_16.get(case) if tasks == 16 else None
            measured = speed_up["simulated cluster"][tasks]
            hit = None if target is None else (math.isfinite(measured) and measured >= target)
            rows += [
                row(where, f"iterations({first}) / iterations({tasks}), median of seeds", iteration_ratio[tasks], "x"),
                row(where, f"projected S({tasks}), overhead of the simulated cluster", measured, "x", f">= {target:g}x" if target else "", hit),
                row(where, f"projected S({tasks}), overhead of the cost model", speed_up["cost model"][tasks], "x"),
            ]
    _plot(projected, plot)
    return rows


def _plot(projected: dict[str, dict[str, dict[int, float]]], out: Path) -> None:
    """One panel per overhead model: each case's S(N) beside the ideal line."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    from ddrl.plots import save_figure

    figure, axes = pyplot.subplots(1, len(projected), figsize=(6 * len(projected), 4.5), sharey=True)
    for axis, (overhead, by_label) in zip(np.atleast_1d(axes), projected.items()):
        most = max((max(speed_up) for speed_up in by_label.values()), default=1)
        axis.plot([1, most], [1, most], color="grey", linestyle=":", label="ideal: S(N) = N")
        for label, speed_up in by_label.items():
            counts = [tasks for tasks in sorted(speed_up) if math.isfinite(speed_up[tasks])]
            axis.plot(counts, [speed_up[tasks] for tasks in counts], marker="o", label=label)
        axis.set_xscale("log", base=2)
        axis.set_yscale("log", base=2)
        axis.set_xlabel("tasks N (a core each)")
        axis.set_title(f"overhead of the {overhead}")
        axis.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("projected time-to-target speed-up S(N)")
    np.atleast_1d(axes)[0].legend(fontsize="small")
    save_figure(figure, out, 100)
