"""Part 10, time_to_target (#12): wall time to a return on MuJoCo, SB3 PPO with rl-zoo's settings on one core
against ddrl's PPO with the same settings (one env per task) on local[2] and local[1]; whole processes in turn.

SB3 trains for ``time_to_target_minutes`` with a 20-episode deterministic evaluation every 50k env steps; R is
its final evaluation and T_sb3 the time of its first evaluation >= R.  ddrl then runs until its first
20-episode evaluation >= R (``train.target_return=R``, ``solved_evaluations=1``), evaluating about every 50k
steps too.  Times run from process launch to the end of the evaluation that reached R.
"""

from __future__ import annotations

import math
import re
import sys
from typing import Any

from jobs.benchmark_parts.common import (ROOT, Bench, iteration_steps, load_average, read_run_metrics, row, run_process,
                                         train_command)
from jobs.benchmark_parts.sb3 import require_sb3

CONFIGS = {"HalfCheetah-v5": "conf/halfcheetah_ppo.yaml", "Hopper-v5": "conf/hopper_ppo.yaml"}
EVAL_EVERY_STEPS = 50_000
TARGETS = {2: 0.6, 1: 1.1}
"""Cores to the largest ddrl time, as a multiple of T_sb3."""


def sb3_evaluations(output: str) -> list[dict[str, float]]:
    """The "eval at S steps: R (T s)" lines of ``benchmark.py sb3-mujoco``."""
    return [{"steps": int(m[1]), "mean": float(m[2]), "seconds": float(m[3])}
            for m in re.finditer(r"eval at (\d+) steps: (-?[\d.]+) \(([\d.]+) s\)", output)]


def time_to_target(bench: Bench) -> dict[str, Any]:
    require_sb3()
    sizes, data, rows = bench.sizes, {}, []
    for env_id in sizes.time_to_target_envs:
        command = [sys.executable, str(ROOT / "jobs" / "benchmark.py"), "sb3-mujoco", "--env", env_id, "--minutes",
                   str(sizes.time_to_target_minutes), "--eval-every", str(EVAL_EVERY_STEPS)]
        sb3 = run_process(command, bench.work / "logs" / f"time_to_target-{env_id}-sb3.log", sizes.time_to_target_minutes * 60 + 600)
        evaluations = sb3_evaluations(sb3["output"])
        if sb3["returncode"] != 0 or not evaluations:
            raise RuntimeError(f"SB3 on {env_id}: exit {sb3['returncode']}, {len(evaluations)} evaluations; see {sb3['log']}")
        target = evaluations[-1]["mean"]
        reached = next(e for e in evaluations if e["mean"] >= target)
        entry: dict[str, Any] = {"sb3": {"evaluations": evaluations, "target": target, "seconds": reached["seconds"],
                                         "steps": reached["steps"], "log": sb3["log"]}}
        case = f"{env_id}: R = {target:,.0f} (SB3's final evaluation after {sizes.time_to_target_minutes:g} min)"
        rows.append(row(case, "SB3 PPO (rl-zoo, 1 core): T_sb3, first evaluation >= R", reached["seconds"], "s", f"at {reached['steps']:,} steps"))
        for cores, limit in TARGETS.items():
            entry[f"ddrl local[{cores}]"] = run = ddrl_until(bench, env_id, target, cores, reached["seconds"])
            ratio = run["seconds"] / reached["seconds"]
            rows.append(row(case, f"ddrl PPO on local[{cores}]: first evaluation >= R", run["seconds"] if math.isfinite(ratio) else "not reached",
                            "s" if math.isfinite(ratio) else "", f"<= {limit} x T_sb3 (now {ratio:.2f} x)", ratio <= limit))
        data[env_id] = entry
    return {"rows": rows, "data": data}


def ddrl_until(bench: Bench, env_id: str, target: float, cores: int, sb3_seconds: float) -> dict[str, Any]:
    """ddrl on local[``cores``] until its first evaluation >= ``target``, or 3 x SB3's time."""
    from ddrl import config as config_module

    path = CONFIGS[env_id]
    every = max(round(EVAL_EVERY_STEPS / iteration_steps(config_module.load(ROOT / path))), 1)
    overrides = [f"train.target_return={target}", "train.stop_at_target=true", "train.solved_evaluations=1", f"train.eval_every={every}",
                 "train.eval_episodes=20", "train.total_env_steps=100000000"]
    label = f"time_to_target-{env_id}-local{cores}"
    run_dir = bench.work / "runs" / label
    result = run_process(train_command(f"local[{cores}]", path, run_dir, overrides), bench.work / "logs" / f"{label}.log", 3 * sb3_seconds + 120)
    config_file = run_dir / "config.yaml"
    startup = config_file.stat().st_mtime - result["launched"] if config_file.exists() else math.nan
    evaluated = [r for r in read_run_metrics(run_dir) if r["eval_return_mean"] == r["eval_return_mean"]]
    hit = next((r for r in evaluated if r["eval_return_mean"] >= target), None)
    return {"seconds": startup + hit["wall_s"] if hit else math.inf, "steps": hit["eval_env_steps"] if hit else None,
            "evaluations": [(r["eval_env_steps"], r["eval_return_mean"], startup + r["wall_s"]) for r in evaluated],
            "returncode": result["returncode"], "log": result["log"], "load_average": load_average()}
