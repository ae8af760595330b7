"""Part 13, scaling_law (#21): do more tasks mean less time to a target return?

For each case, task count N and seed: the shipped config with only ``spark.num_tasks`` (and the seed) changed,
trained in this process's local[2] session until its first evaluation at the target (every iteration
evaluates), within ``max_iterations`` (the step budget is max_iterations iterations at N tasks, so that
annealed learning rates follow the same schedule per iteration whatever N).  Sample and iteration counts do not
depend on this machine's speed.

What a cluster with a core per task would take, T(N) = iterations(N) x (w(N) + o(N)):

* w(N): one task's own work per iteration (rollout and update), the median over the run's iterations, measured
  inside the tasks here (one core each);
* o(N): what an iteration costs beyond its slowest task at N tasks, from the simulated-cluster part of the same
  benchmark run (local[N], envs that wait instead of computing): its iteration time minus its tasks' own work,
  interpolated linearly between the task counts it measured (and extrapolated past the last two).

The projected speed-up is S(N) = T(1) / T(N), the median over seeds of each seed's own ratio; the ideal is N.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from jobs.benchmark_parts.common import ROOT, Bench, iteration_steps, log, median, row
from jobs.benchmark_parts.simulated_cluster import simulated_cluster

TARGETS_AT_16 = {"CartPole PPO": 4.0, "Pendulum PPO": 8.0, "HalfCheetah PPO": 8.0, "HalfCheetah ARS": 12.0}


def scaling_law(bench: Bench) -> dict[str, Any]:
    import ddrl
    from ddrl import config as config_module

    sizes = bench.sizes
    overhead = _overhead_by_tasks(bench)
    rows, data = [], {"overhead_s": {str(n): o for n, o in overhead.items()}, "cases": {}}
    for case, (path, target, max_iterations, task_counts, seeds, variants) in sizes.scaling_law_cases.items():
        one_task: list[dict[str, Any]] = []
        for variant, variant_overrides in variants.items():
            runs: dict[int, list[dict[str, Any]]] = {}
            for tasks in task_counts:
                if tasks == 1 and one_task:  # every rule takes one task's own step: the same run
                    runs[tasks] = one_task
                    continue
                for seed in seeds:
                    config = config_module.load(ROOT / path, [*variant_overrides, f"spark.num_tasks={tasks}"])
                    overrides = [
                        *variant_overrides, f"spark.num_tasks={tasks}", f"seed={seed}", f"train.target_return={target}",
                        "train.solved_evaluations=1", "train.stop_at_target=true", "train.eval_every=1",
                        f"train.total_env_steps={iteration_steps(config) * max_iterations}", "output.checkpoint_every=100000",
                    ]
                    result = ddrl.train(bench.spark(), ROOT / path, overrides=overrides, observers=[],
                                        run_dir=bench.work / "runs" / f"scaling_law-{case}-{variant}-{tasks}-{seed}".replace(" ", "_"))
                    runs.setdefault(tasks, []).append(_measure(result.metrics.to_pylist(), target, tasks, seed, overhead))
                    log(f"scaling_law: {case} {variant} {tasks} tasks seed {seed}: {runs[tasks][-1]}")
                if tasks == 1:
                    one_task = runs[tasks]
            data["cases"][f"{case}, {variant}"] = runs
            rows += _rows(case, variant, runs)
    plot = bench.work / "scaling_law.png"
    _plot(data["cases"], plot)
    data["plot"] = str(plot)
    return {"rows": rows, "data": data}


def _overhead_by_tasks(bench: Bench) -> dict[int, float]:
    """o(N) in seconds from the simulated-cluster part of this benchmark run (run here if it was not)."""
    simulated = bench.results["parts"].get("simulated_cluster", {}).get("data")
    if not simulated:
        bench.stop_spark()  # the simulated cluster starts its own processes
        simulated = simulated_cluster(bench)["data"]
    runs = simulated["ppo"]
    return {int(tasks): max(run["iteration_s"] - run["task_work_s"], 0.0) for tasks, run in runs.items()}


def overhead_at(overhead: dict[int, float], tasks: int) -> float:
    """o(N), linear between the measured task counts and past the last two."""
    counts = sorted(overhead)
    values = [overhead[count] for count in counts]
    if len(counts) == 1 or tasks <= counts[-1]:
        return float(np.interp(tasks, counts, values))
    slope = (values[-1] - values[-2]) / (counts[-1] - counts[-2])
    return values[-1] + slope * (tasks - counts[-1])


def _measure(metrics: list[dict[str, Any]], target: float, tasks: int, seed: int, overhead: dict[int, float]) -> dict[str, Any]:
    reached = next((r for r in metrics if r["eval_return_mean"] >= target), None)
    work = median([r.get("rollout_s", 0.0) + r.get("update_s", 0.0) for r in metrics])
    iteration = work + overhead_at(overhead, tasks)
    return {
        "seed": seed,
        "iterations": reached["iteration"] if reached else None,
        "env_steps": int(reached["eval_env_steps"]) if reached else None,
        "iterations_run": len(metrics),
        "task_work_s": work,
        "projected_iteration_s": iteration,
        "projected_s": reached["iteration"] * iteration if reached else None,
        "useful_tasks": median([r.get("useful_tasks", math.nan) for r in metrics]),
        "step_scale": median([r.get("step_scale", math.nan) for r in metrics]),
    }


def speed_ups(runs: dict[int, list[dict[str, Any]]]) -> dict[int, float]:
    """S(N): per seed T(1) / T(N) (NaN where a run missed the target), the median over seeds."""
    one = {run["seed"]: run["projected_s"] for run in runs[min(runs)]}
    speed_up = {}
    for tasks, seeded in runs.items():
        ratios = [one[run["seed"]] / run["projected_s"] if one.get(run["seed"]) and run["projected_s"] else math.nan for run in seeded]
        speed_up[tasks] = float(np.median(ratios)) if all(math.isfinite(ratio) for ratio in ratios) else math.nan
    return speed_up


def _rows(case: str, variant: str, runs: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows, speed_up = [], speed_ups(runs)
    first = min(runs)
    for tasks, seeded in runs.items():
        label = f"{case}, {variant}, {tasks} tasks"
        seeds_text = " / ".join(str(run["iterations"]) if run["iterations"] else "-" for run in seeded)
        steps_text = " / ".join(f"{run['env_steps']:,}" if run["env_steps"] else "-" for run in seeded)
        rows += [
            row(label, "iterations to the target (seeds)", seeds_text),
            row(label, "env steps to the target (seeds)", steps_text),
            row(label, "one task's work / projected iteration", f"{median([r['task_work_s'] for r in seeded]):.3f} / "
                f"{median([r['projected_iteration_s'] for r in seeded]):.3f}", "s"),
            row(label, "useful tasks (B_noise / per-task batch), median", median([r["useful_tasks"] for r in seeded])),
        ]
        if tasks != first:
            target = TARGETS_AT_16.get(case) if tasks == 16 else None
            hit = None if target is None or not math.isfinite(speed_up[tasks]) else speed_up[tasks] >= target
            rows.append(row(label, f"projected speed-up S({tasks}) against {first} task", speed_up[tasks], "x",
                            f">= {target:g}x" if target else "", hit if target else None))
    return rows


def _plot(cases: dict[str, dict[int, list[dict[str, Any]]]], out: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    from ddrl.plots import save_figure

    figure, axis = pyplot.subplots(figsize=(6.5, 4.5))
    most = max((max(runs) for runs in cases.values()), default=1)
    axis.plot([1, most], [1, most], color="grey", linestyle=":", label="ideal: S(N) = N")
    for label, runs in cases.items():
        speed_up = speed_ups(runs)
        counts = [tasks for tasks in sorted(speed_up) if math.isfinite(speed_up[tasks])]
        axis.plot(counts, [speed_up[tasks] for tasks in counts], marker="o", label=label)
    axis.set_xscale("log", base=2)
    axis.set_yscale("log", base=2)
    axis.set_xlabel("tasks N (a core each)")
    axis.set_ylabel("projected time-to-target speed-up S(N)")
    axis.legend(fontsize="small")
    axis.grid(alpha=0.3)
    save_figure(figure, out, 100)
