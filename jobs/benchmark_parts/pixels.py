"""Benchmark part pixels (#13): PPO from pixels, whole processes on local[2], at budgets this machine runs.

MinAtar Breakout (``conf/minatar_breakout_ppo.yaml``: 10x10x4 frames, MinAtar's small CNN) and, with
``--atari-steps``, Atari Breakout (``conf/breakout_ppo.yaml``: ale-py, the standard preprocessing, the Nature CNN,
CleanRL's settings).  Each run reports its evaluations on the way (whole greedy games, unclipped: the life-loss and
reward-clipping wrappers are training-only), its final evaluation, wall time and env steps per second, beside the
raw vector env's rate with random actions.  Atari Breakout runs once per ``--atari-local-rounds`` value (a
training game lasts at most 128 x local_rounds agent steps) and then SB3 PPO with rl-zoo's Atari settings on one
core for the same agent steps (``benchmark.py sb3-atari``: SB3's AtariWrapper, which is CleanRL's preprocessing).
CleanRL's ``ppo_atari.py`` publishes 414.66 +- 28.09 on BreakoutNoFrameskip-v4 after 10M agent steps (40M frames;
its docs, docs/rl-algorithms/ppo.md); its curve at smaller budgets is only on its W&B reports, which this machine
cannot reach, hence SB3 in the same run.  Env steps here are agent steps (4 frames each on Atari).  The part also
measures EnvPool against gymnasium's vector env on Breakout: raw stepping, the cost of a newly seeded start, and
PPO iterations with either as the training envs (``env.envpool``).
"""

from __future__ import annotations

import re
import sys
from typing import Any

from jobs.benchmark_parts.common import (ROOT, Bench, load_average, median, parse_train_output, read_run_metrics, row, run_process,
                                         train_command)
from jobs.benchmark_parts.sb3 import require_sb3
from jobs.benchmark_parts.throughput import raw_env_rate

CLEANRL_BREAKOUT_10M_STEPS = "414.66 +- 28.09"


def pixels(bench: Bench) -> dict[str, Any]:
    sizes, rows, data = bench.sizes, [], {}
    cases = [("MinAtar Breakout", "conf/minatar_breakout_ppo.yaml", sizes.pixels_minatar_steps, [])]
    if sizes.pixels_atari_steps:
        require_sb3()
        cases += [(f"Atari Breakout, local_rounds {rounds}", "conf/breakout_ppo.yaml", sizes.pixels_atari_steps, [f"ppo.local_rounds={rounds}"])
                  for rounds in sizes.pixels_atari_local_rounds]
    for name, path, steps, overrides in cases:
        if steps:
            case_rows, data[name] = _train(bench, name, path, steps, overrides)
            rows += case_rows
    if sizes.pixels_atari_steps:
        case_rows, data["SB3 Atari Breakout"] = _sb3_breakout(bench, sizes.pixels_atari_steps)
        rows += case_rows
        rows.append(row("Atari Breakout", "CleanRL ppo_atari.py, published, 10M agent steps (40M frames)", CLEANRL_BREAKOUT_10M_STEPS))
    if sizes.pixels_envpool_iterations:
        rows += envpool_against_gymnasium(sizes)
        rows += envpool_iterations(bench)
    data["load_average"] = load_average()
    return {"rows": rows, "data": data}


def _train(bench: Bench, name: str, path: str, steps: int, overrides: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One jobs/train.py process on local[2] for ``steps`` env steps, about ten evaluations on the way."""
    from ddrl import config as config_module

    config = config_module.load(path, overrides)
    raw = raw_env_rate(config.env, config.env.num_envs, bench.sizes.raw_seconds, bench.sizes.repetitions)
    hp = config.hyperparameters
    eval_every = max(steps // (config.env.num_envs * config.spark.num_tasks * hp.num_steps * hp.local_rounds * 10), 1)
    run_dir = bench.work / "runs" / ("pixels-" + "".join(c if c.isalnum() else "-" for c in name.lower()))
    command = train_command("local[2]", path, run_dir, [*overrides, f"train.total_env_steps={steps}", f"train.eval_every={eval_every}"])
    result = run_process(command, bench.work / "logs" / f"{run_dir.name}.log", bench.sizes.subprocess_timeout * 8)
    parsed = parse_train_output(result["output"])
    evaluations = [(int(r["eval_env_steps"]), round(r["eval_return_mean"], 1)) for r in read_run_metrics(run_dir) if r["eval_return_mean"] == r["eval_return_mean"]]
    wall = parsed.get("wall_s", float("nan"))
    rows = [
        row(name, "final evaluation (whole games)", f"{parsed.get('final_eval', float('nan')):.1f} +- {parsed.get('final_eval_std', float('nan')):.1f}"),
        row(name, "env steps / wall time", f"{parsed.get('env_steps', 0):,} / {wall:.0f} s"),
        row(name, "training env steps per second, whole process", parsed.get("env_steps", 0) / wall if wall == wall and wall else float("nan"), "steps/s"),
        row(name, f"raw vector env, random actions ({config.env.num_envs} envs, one process)", raw, "steps/s"),
        row(name, "evaluations on the way (env steps, return)", "; ".join(f"{s:,}: {r}" for s, r in evaluations[-6:])),
    ]
    return rows, {**parsed, "returncode": result["returncode"], "log": result["log"], "raw_steps_per_s": raw, "evaluations": evaluations}


def _sb3_breakout(bench: Bench, steps: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``benchmark.py sb3-atari`` for ``steps`` agent steps on one core: its final greedy evaluation and its
    training games (whole games, unclipped) on the way."""
    command = [sys.executable, str(ROOT / "jobs" / "benchmark.py"), "sb3-atari", "--steps", str(steps)]
    result = run_process(command, bench.work / "logs" / "pixels-sb3-atari-breakout.log", bench.sizes.subprocess_timeout * 8)
    parsed = parse_train_output(result["output"])
    games = [(int(s), float(r)) for s, r in re.findall(r"training games at (\d+) steps: (-?[\d.]+)", result["output"])]
    name, wall = "SB3 PPO rl-zoo Atari (1 core)", parsed.get("wall_s", float("nan"))
    rows = [
        row(name, "final evaluation (whole games)", f"{parsed.get('final_eval', float('nan')):.1f} +- {parsed.get('final_eval_std', float('nan')):.1f}"),
        row(name, "env steps / wall time", f"{parsed.get('env_steps', 0):,} / {wall:.0f} s"),
        row(name, "training games on the way (env steps, mean of the last 20)", "; ".join(f"{s:,}: {r}" for s, r in games[-6:])),
    ]
    return rows, {**parsed, "returncode": result["returncode"], "log": result["log"], "training_games": games}


ENVPOOL_BREAKOUT = ("{id: Breakout-v5, kwargs: {episodic_life: true, reward_clip: true, noop_max: 30, "
                    "repeat_action_probability: 0.0}}")
"""``env.envpool`` for conf/breakout_ppo.yaml: EnvPool's Breakout with CleanRL's preprocessing."""


def envpool_iterations(bench: Bench) -> list[dict[str, Any]]:
    """PPO iterations of conf/breakout_ppo.yaml (2 tasks x 4 envs x 128 steps) with gymnasium's and with EnvPool's
    training envs, whole processes in turn; the first iteration (workers start, evaluation) is not measured, and
    evaluation games are cut at 2,000 steps so that an untrained policy's games end."""
    sizes, medians = bench.sizes, {}
    steps = 2 * 4 * 128 * sizes.pixels_envpool_iterations
    for backend in ("gymnasium", "envpool"):
        overrides = [f"train.total_env_steps={steps}", "ppo.local_rounds=1", "train.eval_episodes=2", "env.max_episode_steps=2000"]
        overrides += ["ppo.carry_episodes=false"] + ([f"env.envpool={ENVPOOL_BREAKOUT}"] if backend == "envpool" else [])
        run_dir = bench.work / "runs" / f"pixels-breakout-{backend}"
        result = run_process(train_command("local[2]", "conf/breakout_ppo.yaml", run_dir, overrides), bench.work / "logs" / f"{run_dir.name}.log",
                             sizes.subprocess_timeout)
        measured = read_run_metrics(run_dir)[1:]
        if result["returncode"] != 0 or not measured:
            raise RuntimeError(f"Breakout on {backend}: exit {result['returncode']}; see {result['log']}")
        medians[backend] = {key: median([r[key] for r in measured]) for key in ("iteration_s", "rollout_s", "update_s")}
    gym_s, pool_s = medians["gymnasium"]["iteration_s"], medians["envpool"]["iteration_s"]
    return [
        row("Atari Breakout PPO, 2 tasks x 4 envs x 128 steps", "iteration, gymnasium / EnvPool training envs (median)", f"{gym_s:.2f} / {pool_s:.2f}", "s",
            f"EnvPool / gymnasium = {pool_s / gym_s:.2f}"),
        row("Atari Breakout PPO, 2 tasks x 4 envs x 128 steps", "rollout in a task, gymnasium / EnvPool (median)",
            f"{medians['gymnasium']['rollout_s']:.2f} / {medians['envpool']['rollout_s']:.2f}", "s"),
    ]


def envpool_against_gymnasium(sizes: Any, num_envs: int = 4) -> list[dict[str, Any]]:
    """Breakout's preprocessed training env (a lost life ends an episode, rewards clipped, 4 stacked 84x84 frames)
    stepped with random actions by EnvPool on one thread (a task's one CPU) and by ddrl's gymnasium vector env, and
    what each costs to get to a newly seeded start: EnvPool takes seeds only when it is made (its reset ignores
    them), while a task reseeds its cached gymnasium envs with ``reset(seed=...)``."""
    import time

    import envpool
    import numpy as np

    from ddrl import config as config_module
    from ddrl import envs

    config = config_module.load("conf/breakout_ppo.yaml")
    options = {"num_envs": num_envs, "num_threads": 1, "episodic_life": True, "reward_clip": True, "noop_max": 30,
               "repeat_action_probability": 0.0, "stack_num": 4, "img_height": 84, "img_width": 84, "frame_skip": 4}
    pool = envpool.make_gymnasium("Breakout-v5", seed=0, **options)
    pool.reset()
    actions = np.random.default_rng(0).integers(0, 4, (256, num_envs))
    rates = []
    for _ in range(sizes.repetitions + 1):  # the first is a warm-up
        steps, started = 0, time.perf_counter()
        while time.perf_counter() - started < sizes.raw_seconds:
            for action in actions:
                pool.step(action)
            steps += actions.size
        rates.append(steps / (time.perf_counter() - started))
    started = time.perf_counter()
    envpool.make_gymnasium("Breakout-v5", seed=1, **options).reset()
    remake = time.perf_counter() - started
    vector_env = envs.make_vector_env(config.env, num_envs)
    vector_env.reset(seed=0)
    started = time.perf_counter()
    vector_env.reset(seed=[1 + index for index in range(num_envs)])
    reseed = time.perf_counter() - started
    vector_env.close()
    gymnasium_rate = raw_env_rate(config.env, num_envs, sizes.raw_seconds, sizes.repetitions)
    return [
        row("Atari Breakout, training env", f"EnvPool 1 thread / gymnasium vector env, random actions ({num_envs} envs)",
            f"{sorted(rates[1:])[len(rates[1:]) // 2]:,.0f} / {gymnasium_rate:,.0f}", "steps/s"),
        row("Atari Breakout, training env", "to a newly seeded start: EnvPool made anew / gymnasium reset(seed=...)", f"{remake:.3f} / {reseed:.3f}", "s"),
    ]
