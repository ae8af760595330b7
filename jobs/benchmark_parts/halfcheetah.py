"""Benchmark part 6: HalfCheetah at equal wall time."""

from __future__ import annotations

import math
import sys
from typing import Any

from jobs.benchmark_parts.common import ROOT, Bench, load_average, parse_train_output, row, run_process, train_command
from jobs.benchmark_parts.sb3 import require_sb3


ARS_STEPS_PER_S_DEFAULT = 40_000.0  # local[2] here (BENCHMARKS.md, scaling); the breakdown part measures it when it runs first
ARS_ITERATION_STEPS = 64_000


def halfcheetah(bench: Bench) -> dict[str, Any]:
    require_sb3()
    sizes = bench.sizes
    minutes = sizes.halfcheetah_minutes
    args = bench.args
    rate = ARS_STEPS_PER_S_DEFAULT
    measured = bench.results["parts"].get("breakdown", {}).get("data", {}).get("HalfCheetah ARS (conf/halfcheetah_ars.yaml)")
    if measured:
        rate = measured["whole_iteration_steps_per_s"]
    startup_s = 12.0  # start-up (~5 s here), the first iteration's warm-up and the final evaluation
    steps = getattr(args, "halfcheetah_steps", None) or max(int(rate * (minutes * 60 - startup_s)) // ARS_ITERATION_STEPS, 1) * ARS_ITERATION_STEPS
    run_dir = bench.work / "runs" / "halfcheetah-ddrl-ars"
    overrides = ["train.stop_at_target=false", f"train.total_env_steps={steps}"]
    timeout = minutes * 60 * 2 + 300
    ddrl_result = run_process(train_command(None, "conf/halfcheetah_ars.yaml", run_dir, overrides), bench.work / "logs" / "halfcheetah-ddrl.log", timeout)
    ddrl_parsed = parse_train_output(ddrl_result["output"])
    command = [sys.executable, str(ROOT / "jobs" / "benchmark.py"), "sb3-mujoco", "--env", "HalfCheetah-v5", "--seed", "1", "--minutes", str(minutes)]
    sb3_result = run_process(command, bench.work / "logs" / "halfcheetah-sb3.log", timeout)
    sb3_parsed = parse_train_output(sb3_result["output"])
    ddrl_eval, sb3_eval = ddrl_parsed.get("final_eval", math.nan), sb3_parsed.get("final_eval", math.nan)
    rows = [
        row("ddrl ARS (2 cores)", "final evaluation (20 episodes)", ddrl_eval, "", ">= SB3's", ddrl_eval >= sb3_eval if math.isfinite(ddrl_eval) and math.isfinite(sb3_eval) else False),
        row("ddrl ARS (2 cores)", "wall time / env steps", f"{ddrl_parsed.get('wall_s', math.nan):.0f} s / {ddrl_parsed.get('env_steps', 0):,}"),
        row("SB3 PPO rl-zoo (1 core)", "final evaluation (20 episodes)", sb3_eval),
        row("SB3 PPO rl-zoo (1 core)", "wall time / env steps", f"{sb3_parsed.get('wall_s', math.nan):.0f} s / {sb3_parsed.get('env_steps', 0):,}"),
    ]
    data = {"minutes": minutes, "ddrl_steps_budget": steps, "ddrl_rate_used_for_budget": rate,
            "ddrl": {**ddrl_parsed, "returncode": ddrl_result["returncode"], "wall_parent_s": ddrl_result["wall_parent_s"], "log": ddrl_result["log"]},
            "sb3": {**sb3_parsed, "returncode": sb3_result["returncode"], "wall_parent_s": sb3_result["wall_parent_s"], "log": sb3_result["log"]},
            "load_average": load_average()}
    return {"rows": rows, "data": data}
