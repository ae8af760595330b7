"""Benchmark part 3: scaling."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from jobs.benchmark_parts.common import (ROOT, Bench, iteration_steps, load_average, median, parse_train_output, per_iteration_steps,
                                         read_run_metrics, row, run_process, train_command)


def scaling_run(bench: Bench, master: str, path: str, overrides: list[str], label: str, worker_dir: Path) -> dict[str, Any]:
    """One ./spark-submit.sh training process on ``master``; rates over the iterations after the first."""
    run_dir = bench.work / "runs" / label
    result = run_process(train_command(master, path, run_dir, overrides), bench.work / "logs" / f"{label}.log", bench.sizes.subprocess_timeout,
                         {"SPARK_WORKER_DIR": str(worker_dir)})
    metrics = read_run_metrics(run_dir)
    steps = per_iteration_steps(metrics)
    later = list(zip(metrics, steps))[1:]
    if result["returncode"] != 0 or not later:
        return {"error": f"{master}: exit {result['returncode']}, {len(metrics)} iterations; see {result['log']}"}
    total_steps = sum(s for _, s in later)
    return {
        "steps_per_s": total_steps / sum(r["iteration_s"] for r, _ in later),
        "tasks_steps_per_s": total_steps / sum(r["tasks_s"] for r, _ in later),
        "median_iteration_steps_per_s": median([r["steps_per_s"] for r, _ in later]),
        "median_iteration_s": median([r["iteration_s"] for r, _ in later]),
        "iterations_measured": len(later),
        "wall_s": parse_train_output(result["output"]).get("wall_s", result["wall_parent_s"]),
        "load_average": load_average(),
    }


def scaling(bench: Bench) -> dict[str, Any]:
    sizes = bench.sizes
    from ddrl import config as config_module

    pairs = [("local[1]", "local[2]"), ("local-cluster[1,1,1024]", "local-cluster[2,1,1024]")]
    cases = [("CartPole PPO", "conf/cartpole_ppo.yaml", sizes.scaling_cartpole_iterations, pairs)]
    if sizes.scaling_ars:
        cases.append(("HalfCheetah ARS", "conf/halfcheetah_ars.yaml", sizes.scaling_ars_iterations, pairs))
    rows, data = [], {}
    worker_dir = bench.work / "spark-worker"
    for case, path, iterations, pairs in cases:
        config = config_module.load(ROOT / path)
        budget = iteration_steps(config) * iterations
        overrides = ["train.stop_at_target=false", f"train.total_env_steps={budget}"]
        for single, double in pairs:
            runs: dict[str, list[dict[str, Any]]] = {single: [], double: []}
            for repeat in range(sizes.scaling_repeats):
                for master in (single, double):
                    label = f"scaling-{Path(path).stem}-{re.sub(r'[^0-9a-z]+', '-', master).strip('-')}-{repeat + 1}"
                    runs[master].append(scaling_run(bench, master, path, overrides, label, worker_dir))
            key = f"{case}: {double} / {single}"
            data[key] = runs
            failed = [r["error"] for master_runs in runs.values() for r in master_runs if "error" in r]
            if failed:
                rows.append(row(case, f"{double} vs {single}", "; ".join(failed), "", ">= 1.8x", False))
                continue
            ratios = [d["steps_per_s"] / s_["steps_per_s"] for s_, d in zip(runs[single], runs[double])]
            tasks_ratios = [d["tasks_steps_per_s"] / s_["tasks_steps_per_s"] for s_, d in zip(runs[single], runs[double])]
            ratio = median(ratios)
            rows += [
                row(case, f"{single} steps/s (iterations 2+, median of {len(ratios)} runs)", median([r["steps_per_s"] for r in runs[single]]), "steps/s"),
                row(case, f"{double} steps/s (iterations 2+, median of {len(ratios)} runs)", median([r["steps_per_s"] for r in runs[double]]), "steps/s"),
                row(case, f"{double} / {single} (median; each run pair: {', '.join(f'{r:.2f}' for r in ratios)})", ratio, "x", ">= 1.8x", ratio >= 1.8),
                row(case, f"{double} / {single}, Spark job only (steps / tasks_s)", median(tasks_ratios), "x"),
            ]
    return {"rows": rows, "data": data}
