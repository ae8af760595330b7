"""Benchmark part 8 (#11): Spark Connect against classic."""

from __future__ import annotations

import math
import sys
from typing import Any

from jobs.benchmark_parts.common import ROOT, Bench, iteration_steps, median, parse_train_output, read_run_metrics, row, run_process


def connect(bench: Bench) -> dict[str, Any]:
    """The same config on a classic local[2] session and on a Spark Connect server started inside the process
    (``jobs/train.py --remote local[2]``), whole processes in turn; the first iteration (Python workers start) is
    not measured.  Both sides run jobs/train.py with plain Python and Spark's defaults."""
    sizes, data, rows = bench.sizes, {}, []
    hidden = sizes.connect_hidden
    cases = {
        "CartPole PPO (shipped config)": ("conf/cartpole_ppo.yaml", [], sizes.connect_iterations[0]),
        f"PPO 2x{hidden} (HalfCheetah-v5)": ("conf/halfcheetah_ppo.yaml", [f"ppo.hidden_sizes=[{hidden},{hidden}]"], sizes.connect_iterations[1]),
    }
    from ddrl import config as config_module
    from ddrl import envs
    from ddrl.algorithms import ppo

    for case, (path, overrides, iterations) in cases.items():
        config = config_module.load(ROOT / path, overrides)
        overrides = [*overrides, "train.stop_at_target=false", f"train.total_env_steps={iteration_steps(config) * iterations}"]
        parameters = sum(ppo.PPO(config, envs.describe(config.env)).tensor_sizes)
        runs: dict[str, list[dict[str, Any]]] = {"classic": [], "connect": []}
        for repeat in range(sizes.connect_repeats):
            for kind in runs:
                label = f"connect-{path.split('/')[-1].removesuffix('.yaml')}-{kind}-{repeat}"
                run_dir = bench.work / "runs" / label
                command = [sys.executable, str(ROOT / "jobs" / "train.py"), "--config", path, "--run-dir", str(run_dir)]
                command += [item for override in overrides for item in ("--set", override)]
                command += ["--remote", "local[2]"] if kind == "connect" else []
                result = run_process(command, bench.work / "logs" / f"{label}.log", sizes.subprocess_timeout,
                                     {"PYSPARK_PYTHON": sys.executable, "DDRL_MASTER": "local[2]"})
                measured = read_run_metrics(run_dir)[1:]
                if result["returncode"] != 0 or not measured:
                    raise RuntimeError(f"{label}: exit {result['returncode']}, {len(measured)} measured iterations; see {result['log']}")
                runs[kind].append({key: median([r[key] for r in measured]) for key in ("iteration_s", "ship_s", "tasks_s", "merge_s", "driver_s")}
                                  | {"wall_s": parse_train_output(result["output"]).get("wall_s", math.nan), "log": result["log"]})
        data[case] = {"parameters": parameters, "iterations_measured": iterations - 1, "runs": runs}
        classic_s, connect_s = (median([r["iteration_s"] for r in runs[kind]]) for kind in ("classic", "connect"))
        case = f"{case}, {parameters / 1e6:.2f}M params"
        rows += [
            row(case, "iteration, classic (median)", classic_s, "s"),
            row(case, "iteration, Spark Connect (median)", connect_s, "s"),
            row(case, "Connect's extra time per iteration", connect_s - classic_s, "s", f"Connect / classic = {connect_s / classic_s:.2f}"),
            *(row(case, f"{key} classic / Connect (median)",
                  f"{median([r[key] for r in runs['classic']]):.3f} / {median([r[key] for r in runs['connect']]):.3f}", "s")
              for key in ("ship_s", "tasks_s", "driver_s")),
            row(case, "whole process classic / Connect (median)",
                f"{median([r['wall_s'] for r in runs['classic']]):.1f} / {median([r['wall_s'] for r in runs['connect']]):.1f}", "s"),
        ]
    return {"rows": rows, "data": data}
