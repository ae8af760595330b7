"""Benchmark part 7 (#10), rounds: local rounds, task count and Adam's moments on CartPole."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from jobs.benchmark_parts.common import CARTPOLE_TARGET, ROOT, ROUND_VARIANTS, Bench, log, median, row


def rounds(bench: Bench) -> dict[str, Any]:
    """Each variant and seed on the shared session, stopping at the first 20-episode evaluation >= 475: the env steps
    that policy had trained on, and the training seconds to the stop (the iterations' own time, the evaluating job
    included; start-up is the same for every variant and is measured by vs_sb3)."""
    import ddrl

    sizes, data, rows = bench.sizes, {}, []
    stop = ["train.solved_evaluations=1", "train.eval_episodes=20", "output.checkpoint_every=1000"]
    budget = [f"train.total_env_steps={sizes.rounds_budget}"] if sizes.rounds_budget else []
    warm = ddrl.train(bench.spark(), ROOT / "conf" / "cartpole_ppo.yaml", overrides=[*stop, "train.total_env_steps=1"],
                      run_dir=bench.work / "runs" / "rounds-warm-up", observers=[])  # Python workers start and import torch
    log(f"rounds: workers warm ({warm.wall_seconds:.1f} s)")
    for variant in sizes.rounds_variants:
        runs = []
        for seed in sizes.rounds_seeds:
            label = f"rounds-{len(data)}-seed{seed}"
            result = ddrl.train(bench.spark(), ROOT / "conf" / "cartpole_ppo.yaml", overrides=[*ROUND_VARIANTS[variant], *stop, *budget, f"seed={seed}"],
                                run_dir=bench.work / "runs" / label, observers=[])
            metrics = result.metrics.to_pylist()
            first = next((r for r in metrics if (r["eval_return_mean"] or -math.inf) >= CARTPOLE_TARGET), None)
            solved = first is not None
            runs.append({"seed": seed, "env_steps": first["eval_env_steps"] if solved else math.inf, "consumed_env_steps": result.env_steps,
                         "iterations": result.iterations, "solved": solved,
                         "training_s": sum(r["iteration_s"] for r in metrics), "iteration_s": median([r["iteration_s"] for r in metrics]),
                         "final_eval": result.eval_return_mean})
            log(f"rounds: {variant} seed {seed}: {result.env_steps} steps, {runs[-1]['training_s']:.1f} s, solved {solved}")
        data[variant] = runs
        steps = [r["env_steps"] if r["solved"] else math.inf for r in runs]
        seconds = [r["training_s"] if r["solved"] else math.inf for r in runs]
        rows += [
            row(variant, f"env steps of the first policy evaluated >= 475, median (mean) of {len(runs)} seeds",
                f"{np.median(steps):,.0f} ({np.mean(steps):,.0f})", "steps"),
            row(variant, "training seconds to solved, median (mean)", f"{np.median(seconds):.1f} ({np.mean(seconds):.1f})", "s"),
            row(variant, "seconds per iteration, median; seeds not solved in budget",
                f"{median([r['iteration_s'] for r in runs]):.2f}; {sum(not r['solved'] for r in runs)}", "s"),
        ]
    return {"rows": rows, "data": data}
