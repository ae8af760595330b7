"""Part 9, simulated_cluster (#12): iteration speed-up with 1 to 32 tasks on local[N], N = tasks, when the env's
step waits 4 ms (``slow_envs.SlowPendulum``) instead of using a core.

Every task does the same work whatever N (weak scaling): PPO 200 env steps and a small update (4 epochs of 4
minibatches), ES one direction (two 200-step episodes).  The speed-up of N tasks is N x (iteration time of 1
task) / (iteration time of N tasks); the first iteration (Python workers start and import torch) is not
measured.  What the tasks compute still shares this machine's cores, which is what limits large N here.
"""

from __future__ import annotations

from typing import Any

from jobs.benchmark_parts.common import AVERAGING, Bench, load_average, median, read_run_metrics, row, run_process, train_command

STEP_SECONDS = 0.004
SLOW_ENV = ["env.id=jobs.benchmark_parts.slow_envs:SlowPendulum", f"env.kwargs.step_seconds={STEP_SECONDS}", "env.max_episode_steps=200"]
QUIET = ["train.stop_at_target=false", "train.eval_every=1000000", "train.eval_episodes=1", "train.final_eval_episodes=1", "train.keep_best=false"]
TARGET_AT_16 = 0.9


def overrides(algo: str, tasks: int, iterations: int) -> tuple[str, list[str]]:
    """The config and overrides of one run: ``tasks`` tasks, each with the same work, for ``iterations`` iterations."""
    if algo == "ppo":
        path, per_task, steps = "conf/pendulum_ppo.yaml", [*AVERAGING, "env.num_envs=1", "ppo.num_steps=200", "ppo.update_epochs=4", "ppo.num_minibatches=4"], 200
    else:  # one direction per task: its 2 episodes one after the other
        path, per_task, steps = "conf/pendulum_es.yaml", ["env.num_envs=1", f"es.num_directions={tasks}"], 2 * 200
    return path, [*SLOW_ENV, *QUIET, *per_task, f"spark.num_tasks={tasks}", f"train.total_env_steps={steps * tasks * iterations}"]


def simulated_cluster(bench: Bench) -> dict[str, Any]:
    sizes, data, rows = bench.sizes, {}, []
    for algo in ("ppo", "es"):
        runs = {}
        for tasks in sizes.simulated_tasks:
            label = f"simulated_cluster-{algo}-{tasks}"
            path, run_overrides = overrides(algo, tasks, sizes.simulated_iterations)
            run_dir = bench.work / "runs" / label
            result = run_process(train_command(f"local[{tasks}]", path, run_dir, run_overrides), bench.work / "logs" / f"{label}.log",
                                 sizes.subprocess_timeout)
            measured = read_run_metrics(run_dir)[1:]
            if result["returncode"] != 0 or not measured:
                raise RuntimeError(f"{label}: exit {result['returncode']}, {len(measured)} measured iterations; see {result['log']}")
            runs[tasks] = {
                "iteration_s": median([r["iteration_s"] for r in measured]),
                "tasks_s": median([r["tasks_s"] for r in measured]),
                "task_work_s": median([r.get("rollout_s", 0.0) + r.get("update_s", 0.0) for r in measured]),
                "iterations_measured": len(measured),
                "log": result["log"],
                "load_average": load_average(),
            }
        one = runs[min(runs)]["iteration_s"]
        for tasks, run in runs.items():
            run["speed_up"] = tasks * one / run["iteration_s"]
            target = f">= {TARGET_AT_16 * tasks:.1f} ({TARGET_AT_16:.0%} of {tasks})" if tasks == 16 else ""
            rows += [
                row(f"{algo.upper()}, {tasks} tasks on local[{tasks}]", "iteration, median", run["iteration_s"], "s"),
                row(f"{algo.upper()}, {tasks} tasks on local[{tasks}]", "speed-up against 1 task", run["speed_up"], "x", target,
                    run["speed_up"] >= TARGET_AT_16 * tasks if tasks == 16 else None),
            ]
        data[algo] = runs
    return {"rows": rows, "data": data}
