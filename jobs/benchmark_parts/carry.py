"""Part 12 (#20), carry: what carrying episodes from job to job costs (ddrl.carry), against resetting every job.

Each config trains in process on the shared session, once carried and once with ``ppo.carry_episodes=false``, for
the same iterations (evaluation only in the first, which is not measured).  Reported: the median iteration time
of each and their ratio; for the carried run, the bytes one task carries (median over iterations), the seconds a
task spends getting its envs back per job and the env steps it replays, and the share of tasks whose worker still
held their envs.  Then the worst case, a task on a worker that holds nothing (a retry, a moved task, a new
executor): its envs replayed from the run's final carry, on the driver.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from jobs.benchmark_parts.common import Bench, load_average, median, row, slim, train_in_process

CONFIGS = {"CartPole PPO": "conf/cartpole_ppo.yaml", "HalfCheetah PPO": "conf/halfcheetah_ppo.yaml", "Breakout PPO": "conf/breakout_ppo.yaml"}


def carry(bench: Bench) -> dict[str, Any]:
    """The cases of ``sizes.carry_iterations`` (case name to iterations, of ``CONFIGS``)."""
    rows, data = [], {}
    for case, iterations in bench.sizes.carry_iterations.items():
        path = CONFIGS[case]
        runs = {}
        for mode, overrides in (("carried", []), ("reset every job", ["ppo.carry_episodes=false"])):
            label = f"carry-{Path(path).stem}-{'carried' if not overrides else 'reset'}"
            config, measured = train_in_process(bench, path, [*overrides, "train.eval_every=100000"], iterations, label)
            runs[mode] = {"iterations": slim(measured[1:]), "config": config}
            if not overrides:
                runs[mode]["metrics"] = [_carry_metrics(r) for r in measured[1:]]
        carried, reset = (median([r["iteration_s"] for r in runs[mode]["iterations"]]) for mode in ("carried", "reset every job"))
        metrics = runs["carried"]["metrics"]
        num_tasks = runs["carried"]["config"].spark.num_tasks
        cold = _cold_restore(runs["carried"]["config"], bench.work / "runs" / f"carry-{Path(path).stem}-carried")
        rows += [
            row(case, f"iteration, carried / reset every job (median of {iterations - 1})", f"{carried:.3f} / {reset:.3f}", "s"),
            row(case, "  carried / reset", carried / reset, "x"),
            *carry_rows(case, metrics, num_tasks),
            row(case, "env steps replayed per job, all tasks (median)", median([m["replayed_steps"] for m in metrics]), "steps"),
            row(case, "tasks whose worker still held their envs (mean)", sum(m["carry_cache_hits"] for m in metrics) / len(metrics) * 100, "%"),
            row(case, "a task on a worker that holds nothing: replaying its envs", cold["seconds"] * 1e3, "ms",
                f"{cold['replayed_steps']:,} steps, {cold['carry_bytes'] / 1e3:.0f} kB"),
        ]
        data[case] = {mode: {key: value for key, value in run.items() if key != "config"} for mode, run in runs.items()}
        data[case]["cold_restore"] = cold
        data[case]["load_average"] = load_average()
    return {"rows": rows, "data": data}


def carry_rows(case: str, iterations: list[dict[str, Any]], num_tasks: int) -> list[dict[str, Any]]:
    """The bytes one task carries and the time restoring its envs takes, medians over carried ``iterations``."""
    return [
        row(case, "bytes one task carries to the next job (median)", median([r["carry_bytes"] / num_tasks for r in iterations]) / 1e3, "kB"),
        row(case, "restoring a task's envs per job (median of the tasks' mean)", median([r["restore_s"] for r in iterations]) * 1e3, "ms"),
    ]


def _carry_metrics(iteration: dict[str, Any]) -> dict[str, float]:
    return {key: float(iteration[key]) for key in ("carry_bytes", "restore_s", "replayed_steps", "carry_cache_hits", "replay_failures")}


def _cold_restore(config: Any, run_dir: Path) -> dict[str, Any]:
    """Task 0's envs replayed on the driver from the run's final checkpoint, with nothing kept."""
    from ddrl import carry as carry_module
    from ddrl import checkpoint, envs

    state, _ = checkpoint.load_latest(run_dir / "checkpoints")
    carried = carry_module.carries_in_state(state)[0]
    env = envs.describe(config.env)
    carry_module._TASK_ENVS.clear()
    started = time.perf_counter()
    resumed = carry_module.resume(config.env, env, ("benchmark", 0), 0, carried)
    seconds = time.perf_counter() - started
    carry_module._TASK_ENVS.clear()
    return {"seconds": seconds, "replayed_steps": resumed.replayed_steps, "replay_failures": resumed.replay_failures,
            "carry_bytes": sum(array.nbytes for array in carried.values())}
