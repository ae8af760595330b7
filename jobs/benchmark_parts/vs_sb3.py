"""Benchmark part 5: vs Stable-Baselines3 on CartPole."""

from __future__ import annotations

import math
import re
import sys
from typing import Any

import numpy as np

from jobs.benchmark_parts.common import (CARTPOLE_TARGET, ROOT, Bench, iteration_steps, load_average, median, parse_train_output,
                                         read_run_metrics, row, run_process, train_command)
from jobs.benchmark_parts.sb3 import require_sb3


def vs_sb3(bench: Bench) -> dict[str, Any]:
    """The README's first command against SB3 PPO (rl-zoo), seed by seed in turn: whole processes, each side stopping
    at its first 20-episode evaluation >= 475 (ddrl: --set train.solved_evaluations=1; the config asks for two).
    SB3 evaluates as often as ddrl does: every ddrl iteration's env steps."""
    from ddrl import config as config_module

    require_sb3()
    sizes = bench.sizes
    eval_every = iteration_steps(config_module.load(ROOT / "conf" / "cartpole_ppo.yaml"))
    runs: dict[str, list[dict[str, Any]]] = {"ddrl": [], "sb3": []}
    for seed in sizes.sb3_seeds:
        run_dir = bench.work / "runs" / f"vs_sb3-ddrl-seed{seed}"
        overrides = [f"seed={seed}", "train.solved_evaluations=1"] + ([f"train.total_env_steps={sizes.sb3_ddrl_steps}"] if sizes.sb3_ddrl_steps else [])
        venv = getattr(bench.args, "ddrl_venv", None)
        result = run_process(train_command(None, "conf/cartpole_ppo.yaml", run_dir, overrides) + ["--timings"],
                             bench.work / "logs" / f"vs_sb3-ddrl-seed{seed}.log", sizes.subprocess_timeout,
                             {"DDRL_VENV": str(venv.resolve())} if venv else None)
        config_file = run_dir / "config.yaml"
        startup = config_file.stat().st_mtime - result["launched"] if config_file.exists() else math.nan
        metrics = read_run_metrics(run_dir)
        solved = any((r.get("eval_return_mean") or -math.inf) >= CARTPOLE_TARGET for r in metrics)
        runs["ddrl"].append({
            "seed": seed, "returncode": result["returncode"], **parse_train_output(result["output"]), "wall_parent_s": result["wall_parent_s"],
            "solved": solved, "startup_s": startup,
            "first_iteration_s": metrics[0]["iteration_s"] if metrics else math.nan,
            "later_iteration_s": median([r["iteration_s"] for r in metrics[1:]]),
            "iterations_s": sum(r["iteration_s"] for r in metrics),
            "fixed_time": fixed_time(result["output"]), "log": result["log"], "load_average": load_average(),
        })
        command = [sys.executable, str(ROOT / "jobs" / "benchmark.py"), "sb3-cartpole", "--seed", str(seed), "--max-steps", str(sizes.sb3_max_steps),
                   "--eval-every", str(eval_every)]
        result = run_process(command, bench.work / "logs" / f"vs_sb3-sb3-seed{seed}.log", sizes.subprocess_timeout)
        parsed = parse_train_output(result["output"])
        runs["sb3"].append({"seed": seed, "returncode": result["returncode"], **parsed, "wall_parent_s": result["wall_parent_s"],
                            "solved": parsed.get("stop_eval", -math.inf) >= CARTPOLE_TARGET, "log": result["log"], "load_average": load_average()})

    def solved_time(run: dict[str, Any]) -> float:
        return run["wall_parent_s"] if run["solved"] else math.inf

    ddrl_times, sb3_times = [solved_time(r) for r in runs["ddrl"]], [solved_time(r) for r in runs["sb3"]]
    ratios = [d / s for d, s in zip(ddrl_times, sb3_times)]
    ratio = float(np.median(ratios))
    rows = []
    for r, t in zip(runs["ddrl"], ddrl_times):
        rows.append(row(f"ddrl seed {r['seed']}", "process wall to its first 20-ep eval >= 475 (and exit)", t if math.isfinite(t) else "not solved",
                        "s" if math.isfinite(t) else ""))
    for r, t, q in zip(runs["sb3"], sb3_times, ratios):
        rows.append(row(f"SB3 seed {r['seed']}", "process wall to its first 20-ep eval >= 475 (and exit)", t if math.isfinite(t) else "not solved",
                        "s" if math.isfinite(t) else "", f"ddrl / SB3 = {q:.2f}"))
    rows += [
        row("ddrl / SB3", f"median of the per-seed ratios ({len(ratios)} seeds)", ratio, "x", "<= 1.0 (no worse than 1.3)", ratio <= 1.0),
        row("ddrl", "median process wall", float(np.median(ddrl_times)), "s"),
        row("SB3", "median process wall", float(np.median(sb3_times)), "s"),
        row("ddrl", "median env steps", median([r.get("env_steps", math.nan) for r in runs["ddrl"]]), "steps"),
        row("SB3", "median env steps", median([r.get("stop_steps", math.nan) for r in runs["sb3"]]), "steps"),
        row("ddrl", "median start-up before iteration 1 (interpreter, imports, JVM, Spark session)", median([r["startup_s"] for r in runs["ddrl"]]), "s"),
        row("ddrl", "median first iteration (Python workers start and import torch, first job)", median([r["first_iteration_s"] for r in runs["ddrl"]]), "s"),
        row("ddrl", "median later iteration", median([r["later_iteration_s"] for r in runs["ddrl"]]), "s"),
        row("ddrl", "median after the last iteration (final evaluation, plot, Spark stop, exit)",
            median([r["wall_parent_s"] - r["startup_s"] - r["iterations_s"] for r in runs["ddrl"]]), "s"),
    ]
    phases = [name for name in runs["ddrl"][0]["fixed_time"] if name != "total"] if runs["ddrl"] else []
    for name in phases:
        rows.append(row("ddrl", f"fixed time (--timings): {name}", median([r["fixed_time"].get(name, math.nan) for r in runs["ddrl"]]), "s"))
    # the JVM's exit comes after the process's last mark: the parent's wall less the process's own
    exits = [r["wall_parent_s"] - r.get("wall_s", math.nan) for r in runs["ddrl"]]
    rows.append(row("ddrl", "fixed time: after the process's last mark (JVM exit)", median(exits), "s"))
    total = median([r["fixed_time"].get("total", math.nan) + exit_s for r, exit_s in zip(runs["ddrl"], exits)])
    rows.append(row("ddrl", "fixed time: the whole process but the iterations", total, "s", "<= 5 s", total <= 5.0))
    return {"rows": rows, "data": runs}


def fixed_time(output: str) -> dict[str, float]:
    """The phases of jobs/train.py's ``--timings`` line, in seconds, and their total."""
    found = re.search(r"fixed time: ([\d.]+) s outside the iterations, in s: (.*)", output)
    if found is None:
        return {}
    phases = {name.strip(): float(seconds) for name, seconds in (item.rsplit(" ", 1) for item in found[2].split(" | "))}
    return {"total": float(found[1]), **phases}
