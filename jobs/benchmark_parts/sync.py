"""Benchmark part ``sync``: ``spark.sync: gradients`` (#29), with the global batch fixed while the tasks change.

* **Per sample.**  CartPole-v1 (the README config, 8 envs over the tasks): env steps to the first 20-episode
  evaluation >= 475 at 1 and 4 tasks, against SB3 PPO (rl-zoo's settings, 8 envs) evaluated as often, seed by
  seed.  Pendulum-v1 (4 envs over the tasks): env steps to -200 at 1, 2 and 4 tasks, the case the issue measured
  under parameter averaging (106,496, 126,976 and 155,648).
* **Wall time.**  HalfCheetah-v5 PPO (4 envs x 128 steps) and Breakout PPO (8 envs x 128 steps, 4 rounds a
  job): an iteration's time at 1, 2 and 4 tasks, split into collection, the update's compute, all-reduce and the
  rest (the job's overhead: shipping, scheduling, the merge, the driver's step).
* **Projection.**  S(N) = T(1) / T(N) with T(N) = the tasks' work / N + the update's collectives at N tasks + the
  cost model's job overhead (part 4), the collectives' latency fitted to all-reduces measured here between 2
  Python workers (ring all-reduce: 2 (N - 1) hops of latency alpha, 2 (N - 1) / N of the bytes at bandwidth beta).

Needs 4 task slots: ``DDRL_MASTER='local[4]' ./spark-submit.sh jobs/benchmark.py --only sync`` (4 slots on this
machine's 2 cores: the 4-task rows share the cores, so they show the cost of the all-reduce, not a speed-up).
"""

from __future__ import annotations

import math
import re
import statistics
import sys
import time
from typing import Any

import numpy as np

from jobs.benchmark_parts.common import CARTPOLE_TARGET, ROOT, Bench, log, median, row, run_process, train_in_process
from jobs.benchmark_parts.scaling_law import model_overhead
from jobs.benchmark_parts.sb3 import require_sb3

PENDULUM_TARGET = -200.0
PENDULUM_AVERAGING = {1: 106_496, 2: 126_976, 4: 155_648}
"""Env steps to -200 under parameter averaging, medians of 3 seeds (the issue's measurement)."""


def sync(bench: Bench) -> dict[str, Any]:
    slots = bench.spark().sparkContext.defaultParallelism
    if slots < max(bench.sizes.sync_tasks):
        raise RuntimeError(f"the sync part needs {max(bench.sizes.sync_tasks)} task slots and the session has {slots}: "
                           "DDRL_MASTER='local[4]' ./spark-submit.sh jobs/benchmark.py --only sync")
    rows: list[dict[str, Any]] = []
    data: dict[str, Any] = {"cartpole": _cartpole(bench, rows), "pendulum": _pendulum(bench, rows)}
    data["wall"] = {label: _wall_time(bench, label, config, rows) for label, config in bench.sizes.sync_wall_cases.items()}
    data["latency_ms"] = _all_reduce_latency(bench, data["wall"])
    rows += _projection(data["wall"], data["latency_ms"])
    return {"rows": rows, "data": data}


# ---- per sample -----------------------------------------------------------------------------------------------


def _steps_to(bench: Bench, config_path: str, overrides: list[str], target: float, label: str) -> float:
    """Env steps the first evaluation at or above ``target`` had trained on; NaN if none did."""
    import ddrl

    log(f"{label}: ddrl.train {config_path} {' '.join(overrides)}")
    result = ddrl.train(bench.spark(), ROOT / config_path, overrides=overrides, run_dir=bench.work / "runs" / label, observers=[])
    reached = next((r for r in result.metrics.to_pylist() if (r["eval_return_mean"] or -math.inf) >= target), None)
    return float(reached["eval_env_steps"]) if reached else math.nan


def _cartpole(bench: Bench, rows: list[dict[str, Any]]) -> dict[str, Any]:
    require_sb3()
    sizes = bench.sizes
    steps: dict[str, list[float]] = {f"ddrl {tasks} task{'s' * (tasks > 1)}": [] for tasks in sizes.sync_tasks_cartpole}
    steps["SB3"] = []
    for seed in sizes.sync_cartpole_seeds:
        for tasks in sizes.sync_tasks_cartpole:
            overrides = [f"seed={seed}", f"spark.num_tasks={tasks}", "train.solved_evaluations=1", *sizes.sync_cartpole_overrides]
            steps[f"ddrl {tasks} task{'s' * (tasks > 1)}"].append(_steps_to(bench, "conf/cartpole_ppo.yaml", overrides, CARTPOLE_TARGET, f"sync-cartpole-{tasks}-seed{seed}"))
        command = [sys.executable, str(ROOT / "jobs" / "benchmark.py"), "sb3-cartpole", "--seed", str(seed), "--eval-every", "1024",
                   "--max-steps", str(sizes.sb3_max_steps)]
        result = run_process(command, bench.work / "logs" / f"sync-sb3-cartpole-seed{seed}.log", sizes.subprocess_timeout)
        passed = [int(found[1]) for found in re.finditer(r"eval at (\d+) steps: (-?[\d.]+)", result["output"]) if float(found[2]) >= CARTPOLE_TARGET]
        steps["SB3"].append(float(passed[0]) if passed else math.nan)
    sb3 = _median(steps["SB3"])
    for label, values in steps.items():
        target = "" if label == "SB3" else f"<= SB3's {sb3:,.0f}"
        rows.append(row(f"CartPole, {label}", f"env steps to the first 20-episode eval >= 475, median of {len(values)} seeds ({_list(values)})",
                        _median(values), "steps", target, None if label == "SB3" else _median(values) <= sb3))
    return steps


def _pendulum(bench: Bench, rows: list[dict[str, Any]]) -> dict[str, Any]:
    sizes = bench.sizes
    steps: dict[int, list[float]] = {tasks: [] for tasks in sizes.sync_tasks}
    for seed in sizes.sync_pendulum_seeds:
        for tasks in sizes.sync_tasks:
            overrides = [f"seed={seed}", f"spark.num_tasks={tasks}", "train.eval_every=1", "train.solved_evaluations=1", *sizes.sync_pendulum_overrides]
            steps[tasks].append(_steps_to(bench, "conf/pendulum_ppo.yaml", overrides, PENDULUM_TARGET, f"sync-pendulum-{tasks}-seed{seed}"))
    one = _median(steps[min(steps)])
    for tasks, values in steps.items():
        before = PENDULUM_AVERAGING.get(tasks)
        rows.append(row(f"Pendulum, {tasks} task{'s' * (tasks > 1)}", f"env steps to -200, median of {len(values)} seeds ({_list(values)}); "
                        f"averaging: {before:,}" if before else "", _median(values), "steps", f"ratio to 1 task {_median(values) / one:.2f}"))
    return {str(tasks): values for tasks, values in steps.items()}


# ---- wall time --------------------------------------------------------------------------------------------------


def _wall_time(bench: Bench, label: str, case: tuple[str, list[str]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    config_path, overrides = case
    sizes = bench.sizes
    measured: dict[str, Any] = {}
    for tasks in sizes.sync_tasks:
        config, iterations = train_in_process(bench, config_path, [f"spark.num_tasks={tasks}", "train.eval_every=100000", *overrides],
                                              sizes.sync_wall_iterations, f"sync-wall-{label.split()[0].lower()}-{tasks}")
        later = iterations[2:] or iterations[-1:]  # the first iterations start workers and evaluate
        parts = {name: median([r.get(name, 0.0) for r in later]) for name in ("iteration_s", "rollout_s", "update_s", "allreduce_s")}
        parts["compute_s"] = parts["update_s"] - parts["allreduce_s"]
        parts["overhead_s"] = parts["iteration_s"] - parts["rollout_s"] - parts["update_s"]
        hp = config.hyperparameters
        parts["collectives"] = hp.local_rounds * (hp.update_epochs * hp.num_minibatches + 2)
        parts["parameters"] = int(sum(np.prod(shape) for shape in _parameter_shapes(config)))
        measured[str(tasks)] = parts
        rows.append(row(f"{label}, {tasks} task{'s' * (tasks > 1)}",
                        f"iteration: collection {parts['rollout_s']:.3f} s + update compute {parts['compute_s']:.3f} s + all-reduce "
                        f"{parts['allreduce_s']:.3f} s + overhead {parts['overhead_s']:.3f} s", parts["iteration_s"], "s"))
    one, two = measured[str(min(sizes.sync_tasks))]["iteration_s"], measured.get("2", {}).get("iteration_s", math.nan)
    rows.append(row(label, "2 tasks against 1 at the same global batch (iteration time)", one / two, "x", ">= 1.6x", one / two >= 1.6))
    return measured


def _parameter_shapes(config: Any) -> list[tuple[int, ...]]:
    from ddrl.algorithms.ppo import ActorCritic
    from ddrl.envs import describe

    import torch

    with torch.device("meta"):
        return [tuple(parameter.shape) for parameter in ActorCritic(describe(config.env), config.hyperparameters, initialize=False).parameters()]


def _all_reduce_latency(bench: Bench, wall: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Milliseconds per all-reduce of each case's gradient (float32) among 2 and 4 tasks of a barrier stage, formed
    by ddrl's own rendezvous: the median of ``sync_latency_repetitions`` after 3 to warm up."""
    from ddrl.engines.rendezvous import DriverStore, driver_host

    spark = bench.spark()
    sizes = sorted({parts["parameters"] for case in wall.values() for parts in case.values()})
    repetitions = bench.sizes.sync_latency_repetitions
    latency: dict[str, dict[str, float]] = {}
    store = DriverStore(driver_host(spark.sparkContext.getConf().get("spark.driver.host")))
    for tasks in (2, 4):
        meeting = store.meeting(120.0)

        def measure(partition: Any) -> list[dict[int, float]]:
            import torch
            from pyspark import TaskContext

            from ddrl.engines import rendezvous

            with rendezvous.joined(meeting, 0, TaskContext.get().partitionId(), tasks, "all-reduce-latency") as collective:
                found = {}
                for size in sizes:
                    tensor, times = torch.ones(size), []
                    for repetition in range(repetitions + 3):
                        started = time.perf_counter()
                        collective.all_reduce(tensor)
                        times.append(time.perf_counter() - started)
                    found[size] = 1000 * statistics.median(times[3:])
            return [found]

        found = spark.sparkContext.parallelize(range(tasks), tasks).barrier().mapPartitions(measure).collect()
        latency[str(tasks)] = {str(size): max(task[size] for task in found) for size in sizes}
    return latency


def _projection(wall: dict[str, Any], latency: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """S(8) and S(16) of each case from its 1-task work, the ring model fitted to the 2-task latencies, and the cost
    model's job overhead (its merge: only the task of rank 0 returns the state, 12 bytes a parameter)."""
    measured = latency["2"]
    small, large = sorted(int(size) for size in measured)[0], sorted(int(size) for size in measured)[-1]
    # l(2, P) = 2 alpha + P * 4 / beta at two sizes
    seconds_per_byte = (measured[str(large)] - measured[str(small)]) / 1000 / (4 * (large - small)) if large > small else 0.0
    alpha = max(measured[str(small)] / 1000 - 4 * small * seconds_per_byte, 0.0) / 2
    rows = [row("all-reduce among 2 tasks (fitted)", f"latency per hop alpha; {1 / seconds_per_byte / 2**20:.0f} MiB/s" if seconds_per_byte else "latency per hop alpha",
                alpha * 1000, "ms")]
    for label, case in wall.items():
        one = case["1"]
        work = one["rollout_s"] + one["compute_s"]
        parameters, collectives = one["parameters"], one["collectives"]
        for tasks in (8, 16):
            ring = 2 * (tasks - 1) * alpha + 2 * (tasks - 1) / tasks * 4 * parameters * seconds_per_byte
            t_one = work + model_overhead(1, 12 * parameters)
            t_n = work / tasks + collectives * ring + model_overhead(tasks, 12 * parameters)
            target = 5.0 if tasks == 8 and label.startswith("Breakout") else None
            rows.append(row(label, f"projected S({tasks}): work {work:.2f} s / {tasks} + {collectives} all-reduces of {ring * 1000:.1f} ms "
                            f"+ job overhead {model_overhead(tasks, 12 * parameters):.3f} s", t_one / t_n, "x",
                            f">= {target:g}x" if target else "", (t_one / t_n >= target) if target else None))
    return rows


def _median(values: list[float]) -> float:
    finite = [value for value in values if math.isfinite(value)]
    return float(np.median(values)) if len(finite) == len(values) and values else math.nan


def _list(values: list[float]) -> str:
    return ", ".join(f"{value:,.0f}" if math.isfinite(value) else "missed" for value in values)
