"""Part 15 (#23), data: experience as Spark data.

* **Recording** (``output.record_experience``): each config trains in process on the shared session for the same
  iterations with and without recording (evaluation only in the first, which is not measured): the median
  iteration time of each, a task's rollout (which builds the table when recording) and its time writing the
  file, recording's cost as their difference plus the writing against the plain iteration, and the bytes per
  transition.
* **Scoring** (``ddrl.score``): rows per second through a ``mapInArrow`` on the shared session (local[2]) for an
  MLP policy (CartPole) and a CNN policy (84x84x4 frames, Breakout's), against ``Policy.act`` on the same rows
  in batches in this one process.  The table is written as Parquet first, then read, scored and written to
  Spark's ``noop`` sink; the second of two passes is timed (the first starts the Python workers).
* **BC, then PPO** on CartPole, per seed: PPO from scratch (the README's config) to the target, whose policy then
  plays ``teacher_episodes`` recorded greedy episodes; BC on them (``algo: bc``) to the target; PPO from the BC
  policy (``init.policy``) to the target.  Env steps and wall time to the target of PPO from scratch against BC
  plus PPO from BC (the recorded transitions are logged data, counted apart).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from jobs.benchmark_parts.common import ROOT, Bench, log, median, row, train_in_process

RECORDED_CONFIGS = {"CartPole PPO": "conf/cartpole_ppo.yaml", "HalfCheetah PPO": "conf/halfcheetah_ppo.yaml"}
SCORED_CONFIGS = {"MLP (CartPole)": "conf/cartpole_ppo.yaml", "CNN (Breakout, 84x84x4)": "conf/breakout_ppo.yaml"}


def data(bench: Bench) -> dict[str, Any]:
    sizes = bench.sizes
    rows, results = [], {"recording": {}, "scoring": {}, "bc_then_ppo": {}}
    for case, path in RECORDED_CONFIGS.items():
        result = _recording(bench, case, path, sizes.data_iterations)
        results["recording"][case] = result
        rows += [
            row(case, f"iteration, recorded / not (median of {sizes.data_iterations - 1})", f"{result['recorded_s']:.3f} / {result['plain_s']:.3f}", "s"),
            row(case, "  recorded / not", result["recorded_s"] / result["plain_s"], "x"),
            row(case, "a task's rollout, recorded / not (median)", f"{result['recorded_rollout_s'] * 1e3:.1f} / {result['plain_rollout_s'] * 1e3:.1f}", "ms"),
            row(case, "a task writing its file (median)", result["record_s"] * 1e3, "ms"),
            row(case, "recording's cost (rollout difference + writing) / iteration", (result["recorded_rollout_s"] - result["plain_rollout_s"] + result["record_s"]) / result["plain_s"] * 100, "%"),
            row(case, "bytes per transition (Parquet, snappy)", result["bytes_per_row"], "B"),
        ]
    for case, path in SCORED_CONFIGS.items():
        result = _scoring(bench, path, sizes.data_score_rows[case])
        results["scoring"][case] = result
        rows += [
            row(case, f"ddrl.score on local[2], {result['rows']:,} rows", result["score_rows_per_s"], "rows/s"),
            row(case, "Policy.act in one process, same rows", result["act_rows_per_s"], "rows/s"),
            row(case, "  score / act", result["score_rows_per_s"] / result["act_rows_per_s"], "x"),
        ]
    for seed in sizes.data_bc_seeds:
        results["bc_then_ppo"][seed] = _bc_then_ppo(bench, seed, sizes.data_teacher_episodes)
    runs = results["bc_then_ppo"].values()
    case = f"CartPole to 475, seeds {', '.join(map(str, sizes.data_bc_seeds))}"
    rows += [
        row(case, "PPO from scratch: env steps / wall (median)", f"{median([r['scratch_env_steps'] for r in runs]):,.0f} / {median([r['scratch_s'] for r in runs]):.1f}", "steps / s"),
        row(case, "BC on the recorded episodes: wall (median)", median([r["bc_s"] for r in runs]), "s", f"{median([r['recorded_rows'] for r in runs]):,.0f} logged transitions"),
        row(case, "PPO from the BC policy: env steps / wall (median)", f"{median([r['init_env_steps'] for r in runs]):,.0f} / {median([r['init_s'] for r in runs]):.1f}", "steps / s"),
        row(case, "env steps: scratch / from BC (per seed)", " / ".join(f"{r['scratch_env_steps']:,}:{r['init_env_steps']:,}" for r in runs)),
    ]
    return {"rows": rows, "data": results}


def _recording(bench: Bench, case: str, path: str, iterations: int) -> dict[str, Any]:
    stem = Path(path).stem
    experience = bench.work / "experience" / stem
    config, recorded = train_in_process(bench, path, ["train.eval_every=100000", f"output.record_experience={experience}"], iterations, f"data-{stem}-recorded")
    _, plain = train_in_process(bench, path, ["train.eval_every=100000"], iterations, f"data-{stem}-plain")
    files = sorted(experience.glob("*.parquet"))
    import pyarrow.parquet as pq

    transitions = sum(pq.read_metadata(file).num_rows for file in files)
    def rollout_s(rows: list[dict[str, Any]]) -> float:  # a task's rollout, which builds the table when recording
        return median([float(np.mean([task["rollout_s"] for task in r["tasks"]])) for r in rows[1:]])

    return {
        "recorded_s": median([r["iteration_s"] for r in recorded[1:]]),
        "plain_s": median([r["iteration_s"] for r in plain[1:]]),
        "recorded_rollout_s": rollout_s(recorded),
        "plain_rollout_s": rollout_s(plain),
        "record_s": median([r["record_s"] for r in recorded[1:]]),
        "bytes_per_row": sum(file.stat().st_size for file in files) / transitions,
        "files": len(files),
        "tasks": config.spark.num_tasks,
    }


def _scoring(bench: Bench, path: str, rows: int) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    import ddrl
    from ddrl import config as config_module, envs
    from ddrl.algorithms import ppo
    from ddrl.data import trajectories

    config = config_module.load(ROOT / path)
    algorithm = ppo.PPO(config, envs.describe(config.env))
    policy = algorithm.policy(algorithm.initial_state())
    space = envs.make_env(config.env)
    rng = np.random.default_rng(0)
    if np.issubdtype(space.observation_space.dtype, np.integer):
        observations = rng.integers(0, 256, size=(rows, *space.observation_space.shape), dtype=space.observation_space.dtype)
    else:
        observations = rng.normal(size=(rows, *space.observation_space.shape)).astype(space.observation_space.dtype)
    table_path = bench.work / "scoring" / f"{Path(path).stem}.parquet"
    table_path.parent.mkdir(parents=True, exist_ok=True)
    # Small row groups: Spark's vectorized reader decodes a row group's lists 4,096 rows at a time, 460 MB of
    # frames for the CNN's table, over the default 1 GB driver heap of local mode.
    pq.write_table(pa.table({"observation": trajectories.space_array(space.observation_space, observations)}), table_path, row_group_size=256)
    space.close()

    spark = bench.spark()
    frame = spark.read.parquet(str(table_path))
    seconds = []
    for _ in range(2):
        started = time.perf_counter()
        ddrl.score(frame, policy).write.format("noop").mode("overwrite").save()
        seconds.append(time.perf_counter() - started)
    started = time.perf_counter()
    for start in range(0, rows, 1024):
        policy.act(observations[start : start + 1024])
    act_seconds = time.perf_counter() - started
    log(f"data: scoring {path}: {rows} rows in {seconds[-1]:.2f} s (first pass {seconds[0]:.2f} s), Policy.act {act_seconds:.2f} s")
    return {"rows": rows, "score_rows_per_s": rows / seconds[-1], "act_rows_per_s": rows / act_seconds, "first_pass_s": seconds[0]}


def _bc_then_ppo(bench: Bench, seed: int, teacher_episodes: int) -> dict[str, Any]:
    import pyarrow.parquet as pq

    import ddrl
    from jobs import evaluate

    spark, work = bench.spark(), bench.work / "bc" / f"seed-{seed}"
    config = ROOT / "conf" / "cartpole_ppo.yaml"
    scratch = ddrl.train(spark, config, overrides=[f"seed={seed}"], run_dir=work / "scratch", observers=[])
    episodes = work / "episodes"
    evaluate.main([str(scratch.run_dir), "--episodes", str(teacher_episodes), "--seed", str(1000 + seed), "--record", str(episodes)])
    bc_config = {
        "name": "cartpole_bc", "seed": seed, "algo": "bc", "env": {"id": "CartPole-v1", "num_envs": 1}, "spark": {"num_tasks": 2},
        "train": {"total_env_steps": 40 * teacher_episodes * 500 * 4, "eval_every": 2, "eval_episodes": 10},
        "output": {"run_dir": str(work / "bc")}, "bc": {"data": str(episodes), "epochs": 4},
    }
    cloned = ddrl.train(spark, bc_config, observers=[])
    from_bc = ddrl.train(spark, config, overrides=[f"seed={seed}", f"init.policy={cloned.run_dir}"], run_dir=work / "from_bc", observers=[])
    result = {
        "scratch_env_steps": _steps_to_target(scratch), "scratch_s": scratch.wall_seconds, "scratch_solved": scratch.solved,
        "recorded_rows": pq.read_table(episodes).num_rows, "bc_s": cloned.wall_seconds, "bc_solved": cloned.solved,
        "bc_iterations": cloned.iterations, "init_env_steps": _steps_to_target(from_bc), "init_s": from_bc.wall_seconds,
        "init_solved": from_bc.solved,
    }
    log(f"data: BC then PPO, seed {seed}: {result}")
    return result


def _steps_to_target(result: Any) -> int:
    """Env steps when the run's last evaluation (the one that solved it) was taken, or all it ran."""
    evaluated = [r for r in result.metrics.to_pylist() if r.get("eval_return_mean") == r.get("eval_return_mean") and r.get("eval_return_mean") is not None]
    return int(evaluated[-1]["eval_env_steps"]) if result.solved and evaluated else int(result.env_steps)
