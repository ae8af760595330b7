"""Benchmark part sweep (#14): 16 CartPole trials (4 learning rates x 4 seeds) in one ``jobs/sweep.py`` process
on local[2], every live trial's tasks sharing each iteration's Spark job, against one trial
(``jobs/train.py``, the shipped config), whole processes through ./spark-submit.sh in the same run.

Two sweeps: every trial to its target or budget (a plain grid), and synchronous successive halving (eta 2,
first rung at 8,192 env steps).  The one trial runs before and after them; their mean is the reference."""

from __future__ import annotations

import json
import math
from typing import Any

from jobs.benchmark_parts.common import ROOT, Bench, load_average, parse_train_output, row, run_process

TARGET_RATIO = 4.0
"""The issue's target: the 16-trial sweep within 4 x one trial's wall time, whole process."""


def sweep(bench: Bench) -> dict[str, Any]:
    sizes, rows, data = bench.sizes, [], {}
    config = "conf/cartpole_ppo.yaml"
    grid = ",".join(f"{rate:g}" for rate in sizes.sweep_learning_rates)
    budget = [] if sizes.sweep_budget is None else ["--set", f"train.total_env_steps={sizes.sweep_budget}"]
    cases = {
        "one trial, before": ["jobs/train.py", "--config", config, *budget],
        "grid sweep": ["jobs/sweep.py", "--config", config, "--grid", f"ppo.learning_rate={grid}", "--seeds", str(sizes.sweep_seeds), *budget],
        "successive halving sweep": ["jobs/sweep.py", "--config", config, "--grid", f"ppo.learning_rate={grid}", "--seeds", str(sizes.sweep_seeds),
                                     "--halving-min-steps", str(sizes.sweep_halving_min_steps), "--eta", "2", *budget],
        "one trial, after": ["jobs/train.py", "--config", config, *budget],
    }
    for case, arguments in cases.items():
        label = "sweep-" + case.replace(" ", "-").replace(",", "")
        target = ["--run-dir" if arguments[0] == "jobs/train.py" else "--out", str(bench.work / "runs" / label)]
        result = run_process([str(ROOT / "spark-submit.sh"), "--master", "local[2]", *arguments, *target], bench.work / "logs" / f"{label}.log",
                             sizes.subprocess_timeout * 4)
        if result["returncode"] != 0:
            raise RuntimeError(f"{case}: exit {result['returncode']}; see {result['log']}")
        parsed = parse_train_output(result["output"])
        if arguments[0] == "jobs/sweep.py":
            outcomes = [json.loads(path.read_text()) for path in sorted((bench.work / "runs" / label / "trials").glob("*/result.json"))]
            parsed.update(env_steps=sum(outcome["env_steps"] for outcome in outcomes), trials=len(outcomes),
                          solved=sum(outcome["solved"] for outcome in outcomes), best=max(outcome["eval_return_mean"] for outcome in outcomes))
        data[case] = {**parsed, "log": result["log"]}
    one = (data["one trial, before"]["wall_s"] + data["one trial, after"]["wall_s"]) / 2
    one_rate = sum(data[case]["env_steps"] / data[case]["wall_s"] for case in ("one trial, before", "one trial, after")) / 2
    rows += [row("one trial (lr 1e-3, seed 1)", "wall time, whole process (before / after)",
                 f"{data['one trial, before']['wall_s']:.1f} / {data['one trial, after']['wall_s']:.1f}", "s"),
             row("one trial (lr 1e-3, seed 1)", "env steps; final evaluation", f"{data['one trial, before']['env_steps']:,}; {data['one trial, before'].get('final_eval', math.nan):.1f}")]
    for case in ("grid sweep", "successive halving sweep"):
        found = data[case]
        ratio = found["wall_s"] / one
        name = f"{case}, {found['trials']} trials"
        rows += [
            row(name, "wall time, whole process", found["wall_s"], "s"),
            row(name, "wall time / one trial's", ratio, "x", f"<= {TARGET_RATIO:g}", ratio <= TARGET_RATIO),
            row(name, "env steps of all trials; trials solved; best final evaluation", f"{found['env_steps']:,}; {found['solved']}/{found['trials']}; {found['best']:.1f}"),
            row(name, "env steps per second, whole process / one trial's", found["env_steps"] / found["wall_s"] / one_rate, "x"),
        ]
    data["load_average"] = load_average()
    return {"rows": rows, "data": data}
