"""Benchmark part 7 (#10), large_model: a 2.1M-parameter PPO, iteration time against the tasks' own work."""

from __future__ import annotations

from typing import Any

from jobs.benchmark_parts.common import AVERAGING, Bench, median, row, slim, train_in_process


def large_model(bench: Bench) -> dict[str, Any]:
    """HalfCheetah-v5 PPO with two hidden layers of ``large_model_hidden`` units, 8 tasks: each iteration's time against
    its tasks' own rollout and update spread over the cores, with the 8-byte result and with Adam's moments averaged."""
    from ddrl import envs
    from ddrl.algorithms import ppo

    sizes, data, rows = bench.sizes, {}, []
    cores = int(bench.spark().sparkContext.defaultParallelism)
    hidden = sizes.large_model_hidden
    base = [*AVERAGING, "env.num_envs=1", f"ppo.hidden_sizes=[{hidden},{hidden}]", "spark.num_tasks=8", "train.eval_every=1000"]
    base += [f"ppo.num_steps={sizes.large_model_steps}"] if sizes.large_model_steps else []
    # 8 results through treeReduce: depth 1 collects all 8 on the driver, depth 2 adds a reduceByKey level of 2.
    variants = {"fedadamw, depth 1": ["ppo.adam_moments=fedadamw", "spark.tree_depth=1"],
                "fedadamw, depth 2": ["ppo.adam_moments=fedadamw", "spark.tree_depth=2"],
                "average, depth 2": ["ppo.adam_moments=average", "spark.tree_depth=2"]}
    for name, overrides in variants.items():
        label = "large_model-" + name.replace(", ", "-").replace(" ", "")
        config, iterations = train_in_process(bench, "conf/halfcheetah_ppo.yaml", [*base, *overrides], sizes.large_model_iterations, label)
        algorithm = ppo.PPO(config, envs.describe(config.env))
        measured = iterations[1:]
        own = [sum(t["rollout_s"] + t["update_s"] for t in r["tasks"]) / cores for r in measured]
        total = [r["iteration_s"] for r in measured]
        beyond = [(t - o) / t * 100 for t, o in zip(total, own)]
        data[name] = {"parameters": sum(algorithm.tensor_sizes), "result_bytes": algorithm.task_result_bytes(), "cores": cores,
                      "iterations": slim(iterations)}
        case = f"{sum(algorithm.tensor_sizes) / 1e6:.1f}M params, adam {name}"
        rows += [
            row(case, "bytes per parameter per task (result)", algorithm.task_result_bytes() / sum(algorithm.tensor_sizes), "B"),
            row(case, "iteration, median", median(total), "s"),
            row(case, f"tasks' own rollout + update over {cores} cores, median", median(own), "s"),
            row(case, "time beyond the tasks' own work", median(beyond), "%", "<= 10%", median(beyond) <= 10),
            row(case, "ship / merge, median", f"{median([r['ship_s'] for r in measured]):.2f} / {median([r['merge_s'] for r in measured]):.2f}", "s"),
        ]
    return {"rows": rows, "data": data}
