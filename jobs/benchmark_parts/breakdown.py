"""Benchmark part 2: breakdown."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from jobs.benchmark_parts.carry import carry_rows
from jobs.benchmark_parts.common import ROOT, Bench, load_average, log, median, per_iteration_steps, row, slim, timed, train_in_process


def breakdown_of(iterations: list[dict[str, Any]], algo: str) -> dict[str, float]:
    """Seconds per component summed over the iterations after the first, and the iteration total.

    scheduling = tasks_s - (slowest task's rollout + update) - its evaluation share - merge_s: job scheduling, task
    launch, the task's own overhead outside rollout/update (loading parameters, encoding the change), serialization
    and result transfer.  Evaluation runs inside the job (eval_s: the slowest task's share).  For ES the update is
    the driver's ``apply`` (the ARS/ES step); for PPO the update runs in the tasks.
    """
    totals = dict.fromkeys(("iteration", "broadcast", "scheduling", "rollout", "update", "merge", "apply", "eval", "driver_other"), 0.0)
    for r in iterations[1:]:
        slowest = max(r["tasks"], key=lambda task: task["rollout_s"] + task["update_s"])
        totals["iteration"] += r["iteration_s"]
        totals["broadcast"] += r["ship_s"]
        totals["rollout"] += slowest["rollout_s"]
        totals["merge"] += r["merge_s"]
        totals["scheduling"] += r["tasks_s"] - slowest["rollout_s"] - slowest["update_s"] - r["eval_s"] - r["merge_s"]
        if algo == "es":
            totals["update"] += r["apply_s"]
        else:
            totals["update"] += slowest["update_s"]
            totals["apply"] += r["apply_s"]
        totals["eval"] += r["eval_s"]
        totals["driver_other"] += r["driver_s"] - r["apply_s"]
    return totals


def result_serialization(config_path: str, overrides: list[str], repetitions: int) -> dict[str, float]:
    """Run one task on the driver and measure its Partial as Spark ships it (pyspark's pickle serializer), and the
    broadcast payload."""
    import importlib

    from pyspark.serializers import CPickleSerializer

    from ddrl.config import ALGORITHMS
    from ddrl.merge import Partial
    from ddrl.run import Run

    run = Run.open(ROOT / config_path, overrides, run_dir=Path("/nonexistent-benchmark-run"))
    algorithm = importlib.import_module(ALGORITHMS[run.config.algo]).build(run.config, run.env)
    state = algorithm.initial_state()
    payload = algorithm.task_payload(state, 0)
    started = time.perf_counter()
    partial = Partial.of_task(0, algorithm.run_task(payload, 0, 12345))
    task_seconds = time.perf_counter() - started
    serializer = CPickleSerializer()
    dumps_s, data = timed(lambda: serializer.dumps(partial), repetitions)
    loads_s, _ = timed(lambda: serializer.loads(data), repetitions)  # our own bytes, just made: measuring Spark's cost
    payload_s, payload_bytes = timed(lambda: serializer.dumps(payload), repetitions)
    array_bytes = sum(array.nbytes for array in [*partial.sums.values(), *partial.fixed_sums.values()])
    return {
        "result_bytes": len(data),
        "array_bytes": array_bytes,
        "result_dumps_s": dumps_s,
        "result_loads_s": loads_s,
        "payload_bytes": len(payload_bytes),
        "payload_dumps_s": payload_s,
        "task_on_driver_s": task_seconds,
        "parameters": int(state["params"].size),
    }


def breakdown(bench: Bench) -> dict[str, Any]:
    sizes = bench.sizes
    cases = [
        ("CartPole PPO (conf/cartpole_ppo.yaml)", "conf/cartpole_ppo.yaml", [], sizes.breakdown_iterations),
        ("HalfCheetah ARS (conf/halfcheetah_ars.yaml)", "conf/halfcheetah_ars.yaml", [], sizes.breakdown_ars_iterations),
    ]
    rows, data = [], {}
    for case, path, overrides, count in cases:
        label = "breakdown-" + Path(path).stem
        config, iterations = train_in_process(bench, path, overrides, count, label)
        totals = breakdown_of(iterations, config.algo)
        total = totals["iteration"]
        measured = len(iterations) - 1
        overhead = total - totals["rollout"] - totals["update"]
        spark_only = totals["broadcast"] + totals["scheduling"] + totals["merge"]
        rows.append(row(case, f"iteration time (median of {measured}, warm-up excluded)", median([r["iteration_s"] for r in iterations[1:]]), "s"))
        names = {
            "broadcast": "broadcast",
            "scheduling": "scheduling + task overhead + result transfer",
            "rollout": "rollout (slowest task)",
            "update": "update (slowest task)" if config.algo == "ppo" else "update (driver apply: the ES step)",
            "merge": "merge (treeReduce merge calls)",
            "apply": "driver apply (PPO: averaging)",
            "eval": "evaluation inside the job (slowest task)",
            "driver_other": "driver other (finish, metrics, checkpoint, log)",
        }
        for key, name in names.items():
            if key == "apply" and config.algo == "es":
                continue
            rows.append(row(case, name, totals[key] / measured, "s", "", None))
            rows.append(row(case, f"  share: {name}", totals[key] / total * 100, "%"))
        rows.append(row(case, "overhead (all but rollout and update)", overhead / total * 100, "%", "<= 10%", overhead / total <= 0.10))
        rows.append(row(case, "Spark-only overhead (broadcast + scheduling + merge)", spark_only / total * 100, "%"))
        if "carry_bytes" in iterations[-1]:  # carried episodes (ddrl.carry; part carry compares with resetting)
            rows += carry_rows(case, iterations[1:], config.spark.num_tasks)
        log(f"breakdown {case}: result serialization")
        serialization = result_serialization(path, overrides, sizes.repetitions)
        rows += [
            row(case, "one task's result pickled", serialization["result_bytes"] / 1e3, "kB"),
            row(case, "  pickle / unpickle", f"{serialization['result_dumps_s'] * 1e3:.2f} / {serialization['result_loads_s'] * 1e3:.2f}", "ms"),
            row(case, "broadcast payload pickled", serialization["payload_bytes"] / 1e3, "kB"),
        ]
        data[case] = {
            "config": path,
            "iterations_measured": measured,
            "per_iteration_s": {key: value / measured for key, value in totals.items()},
            "overhead_share": overhead / total,
            "spark_only_share": spark_only / total,
            "serialization": serialization,
            "whole_iteration_steps_per_s": sum(per_iteration_steps(iterations)[1:]) / total,
            "iterations": slim(iterations),
            "load_average": load_average(),
        }
    return {"rows": rows, "data": data}
