"""Benchmarks (#6): ``./spark-submit.sh jobs/benchmark.py [--only PART] [--quick] [--out benchmark.json]``.

Parts (``--only`` takes one or more, comma-separated or repeated; default all, in this order):

* ``throughput``  raw vector-env step rate (random actions, one process, the config's num_envs) against ddrl's
                  rollout rate inside a task and the whole-iteration rate, for CartPole-v1 and HalfCheetah-v5 PPO;
* ``breakdown``   where an iteration's time goes (broadcast, scheduling, rollout, update, merge, driver apply and
                  evaluation) for CartPole PPO and HalfCheetah ARS, and the size/time of one task's pickled result;
* ``cost_model``  broadcast and treeReduce (the real ``ddrl.merge`` fixed-point format) at 10k, 1M and 10M parameters over 2, 4
                  and 8 partitions and tree depths 1-3, fitted to a model of iteration time (see BENCHMARKS.md);
* ``scaling``     local[1] against local[2], local-cluster[1,1,1024] against local-cluster[2,1,1024] (each run a
                  separate ./spark-submit.sh process, equal step budgets, warm-up iteration excluded);
* ``vs_sb3``      whole-process time to solve CartPole-v1 (README command) against Stable-Baselines3 PPO with rl-zoo
                  hyperparameters, several seeds;
* ``halfcheetah`` equal wall time (15 min each): ddrl ARS on both cores against SB3 PPO (rl-zoo) on one core;
* ``rounds``      CartPole-v1 env steps and training time to the first 20-episode evaluation >= 475 against local
                  rounds, task count and Adam's moments, several seeds each (#10);
* ``large_model`` a 2.1M-parameter PPO (HalfCheetah-v5, 1024x1024, 8 tasks): iteration time against the tasks'
                  own work, in the 8-byte format and with Adam's moments averaged (56 bytes a parameter) (#10);
* ``connect``     per-iteration time on a Spark Connect session against a classic one, same config and cores, for
                  CartPole PPO and a 1M-parameter PPO (#11);
* ``simulated_cluster`` iteration speed-up of PPO and ES with 1, 4, 16 and 32 tasks on local[N] when each env step
                  waits 4 ms instead of using a core (#12);
* ``scaling_law`` iterations and env steps to a target return at 1 to 32 tasks, the default rule of
                  ``ppo.task_scaling`` and plain averaging, and the projected time-to-target speed-up on a cluster
                  with a core per task, with a plot (#21);
* ``data``        the cost of recording trajectories, ``ddrl.score``'s rows per second against ``Policy.act``, and
                  CartPole to the target by BC on recorded episodes then PPO, against PPO from scratch (#23);
* ``time_to_target`` wall time to SB3's 15-minute return on HalfCheetah-v5 and Hopper-v5: SB3 PPO (rl-zoo) on one
                  core against ddrl's tuned PPO on local[2] and local[1] (#12);
* ``pixels``      PPO from pixels on MinAtar Breakout and, with ``--atari-steps``, Atari Breakout (once per
                  ``--atari-local-rounds``) against SB3 PPO (rl-zoo's Atari settings) on one core at the same agent
                  steps: returns, wall time and env steps per second against the raw env's rate; EnvPool against
                  gymnasium's vector env (#13);
* ``carry``       the cost per iteration of carrying episodes from job to job against resetting every job, on
                  CartPole, HalfCheetah and Breakout PPO: bytes carried per task, seconds to restore, replays (#20);
* ``sync``        spark.sync: gradients at a fixed global batch: CartPole env steps to 475 at 1 and 4 tasks against
                  SB3, Pendulum env steps to -200 at 1, 2 and 4 tasks, HalfCheetah and Breakout iteration time at 1, 2
                  and 4 tasks split into collection, compute, all-reduce and overhead, projected S(8) and S(16); needs
                  4 task slots: DDRL_MASTER='local[4]' (#29);
* ``sync_mujoco`` HalfCheetah-v5 and Hopper-v5 PPO at 1M steps, ddrl at 1 and 4 tasks against SB3 with the same 4 envs
                  x 128 steps and seeds (``--seeds``), two processes at a time (#29);
* ``sweep``       16 CartPole trials (4 learning rates x 4 seeds) in one jobs/sweep.py process against one trial,
                  whole processes on local[2]: a plain grid and successive halving (#14).

The in-process parts (throughput, breakdown, cost_model) share one Spark session, stopped before the parts that
start their own processes, so that at most one Spark session runs at a time.  ``--quick`` shrinks every part to
a smoke-size run.  Results go to stdout as markdown tables and to a JSON file (default
``runs/benchmark-<timestamp>/benchmark.json``, next to the runs it made).  Targets are checked, never asserted.
SB3 comes from ``requirements-bench.txt``: ``.venv/bin/pip install -r requirements-bench.txt``.

Internal subcommands (started as subprocesses by the parts above; whole-process timing from DDRL_STARTED_AT):
``python jobs/benchmark.py sb3-cartpole --seed S`` and
``python jobs/benchmark.py sb3-mujoco --env ENV --minutes M [--eval-every STEPS]`` and
``python jobs/benchmark.py sb3-atari --steps N``.

Each part is a module of ``jobs/benchmark_parts/`` named after it, holding the part's function of the same name;
what several parts share (sizes, result rows, the benchmark context and its Spark session, in-process training with
probes, subprocesses) is in ``jobs/benchmark_parts/common.py``, the SB3 subcommands in ``jobs/benchmark_parts/sb3.py``.
This file runs them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

_CHECKOUT = str(Path(__file__).resolve().parent.parent)
if _CHECKOUT not in sys.path:  # run as a script: import jobs.benchmark_parts and ddrl from this checkout
    sys.path.insert(0, _CHECKOUT)

from jobs.benchmark_parts.breakdown import breakdown
from jobs.benchmark_parts.carry import carry
from jobs.benchmark_parts.common import CARRIED_ROUND_VARIANTS, ROOT, STARTED_AT, Bench, Sizes, load_average, log, markdown_table, row
from jobs.benchmark_parts.connect import connect
from jobs.benchmark_parts.cost_model import cost_model
from jobs.benchmark_parts.halfcheetah import halfcheetah
from jobs.benchmark_parts.large_model import large_model
from jobs.benchmark_parts.pixels import pixels
from jobs.benchmark_parts.rounds import rounds
from jobs.benchmark_parts.sb3 import sb3_atari, sb3_cartpole, sb3_mujoco
from jobs.benchmark_parts.scaling import scaling
from jobs.benchmark_parts.data import data
from jobs.benchmark_parts.scaling_law import scaling_law
from jobs.benchmark_parts.simulated_cluster import simulated_cluster
from jobs.benchmark_parts.sweep import sweep
from jobs.benchmark_parts.sync import sync
from jobs.benchmark_parts.sync_mujoco import sync_mujoco
from jobs.benchmark_parts.throughput import throughput
from jobs.benchmark_parts.time_to_target import time_to_target
from jobs.benchmark_parts.vs_sb3 import vs_sb3

PARTS = ("throughput", "breakdown", "carry", "cost_model", "rounds", "large_model", "sync", "scaling", "vs_sb3", "sync_mujoco", "halfcheetah", "connect",
         "simulated_cluster", "scaling_law", "data", "time_to_target", "pixels", "sweep")
"""In running order: the in-process parts first (one Spark session), then those that start their own."""
IN_PROCESS = ("throughput", "breakdown", "carry", "cost_model", "rounds", "large_model", "sync", "scaling_law", "data")

RUNNERS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "throughput": throughput,
    "breakdown": breakdown,
    "carry": carry,
    "cost_model": cost_model,
    "scaling": scaling,
    "vs_sb3": vs_sb3,
    "halfcheetah": halfcheetah,
    "rounds": rounds,
    "large_model": large_model,
    "connect": connect,
    "simulated_cluster": simulated_cluster,
    "scaling_law": scaling_law,
    "data": data,
    "time_to_target": time_to_target,
    "pixels": pixels,
    "sweep": sweep,
    "sync": sync,
    "sync_mujoco": sync_mujoco,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], metavar="PART", help=f"one or more of {', '.join(PARTS)} (comma-separated or repeated)")
    parser.add_argument("--quick", action="store_true", help="smoke-size run of every part")
    parser.add_argument("--out", type=Path, help="JSON results (default runs/benchmark-<timestamp>/benchmark.json)")
    parser.add_argument("--seeds", help="vs_sb3 seeds, comma-separated (default 1,2,3; --quick: 1)")
    parser.add_argument("--ddrl-venv", type=Path, help="vs_sb3: run ddrl's processes in this venv (e.g. one of requirements.txt alone; default .venv)")
    parser.add_argument("--halfcheetah-minutes", type=float, help="halfcheetah: wall time of each side (default 15; --quick: 1)")
    parser.add_argument("--halfcheetah-steps", type=int, help="halfcheetah: ddrl's step budget (default: sized for the minutes)")
    parser.add_argument("--minatar-steps", type=int, help="pixels: MinAtar Breakout's step budget (default 500k)")
    parser.add_argument("--atari-steps", type=int, help="pixels: Atari Breakout's step budget (default 0: not run)")
    parser.add_argument("--atari-local-rounds", help="pixels: Atari Breakout's local_rounds, one run each (default 4), comma-separated")
    parser.add_argument("--rounds-seeds", help="rounds: seeds, comma-separated (default 1-12)")
    parser.add_argument("--rounds-carried", action="store_true", help="rounds: only the variants with carried episodes (#20)")
    parser.add_argument("--law-cases", help="scaling_law: cases, comma-separated (default: CartPole PPO, Pendulum PPO, HalfCheetah ARS, HalfCheetah PPO)")
    parser.add_argument("--simulated-from", type=Path, help="scaling_law: take the simulated cluster's overhead from this earlier benchmark JSON")
    parser.add_argument("--time-to-target-envs", help="time_to_target: env ids, comma-separated (default HalfCheetah-v5,Hopper-v5)")
    args = parser.parse_args(argv)
    parts = [part for item in args.only for part in item.split(",") if part]
    unknown = [part for part in parts if part not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    args.parts = [part for part in PARTS if part in parts] if parts else list(PARTS)
    return args


def run_parts(bench: Bench, parts: list[str]) -> dict[str, Any]:
    """Run the parts in order (in-process ones first), printing each table and rewriting the JSON after each."""
    failures = {}
    for part in parts:
        if part not in IN_PROCESS:
            bench.stop_spark()  # at most one Spark session at a time: the subprocess parts start their own
        log(f"part {part} (load average {load_average()})")
        started = time.perf_counter()
        try:
            result = RUNNERS[part](bench)
        except Exception as error:  # one failing part must not lose the others' results
            log(f"part {part} failed: {type(error).__name__}: {error}")
            failures[part] = f"{type(error).__name__}: {error}"
            result = {"rows": [row(part, "error", f"{type(error).__name__}: {error}")], "data": {}}
        result["seconds"] = time.perf_counter() - started
        result["load_average_after"] = load_average()
        bench.record(part, result)
        print(f"\n## {part} ({result['seconds']:.0f} s, load average {result['load_average_after']})\n", flush=True)
        print(markdown_table(result["rows"]), flush=True)
    bench.results["meta"]["failures"] = failures
    bench.results["meta"]["load_average_1min_at_end"] = load_average()
    bench.results["meta"]["seconds"] = time.time() - STARTED_AT
    bench.save()
    return bench.results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    subcommands = {"sb3-cartpole": sb3_cartpole, "sb3-mujoco": sb3_mujoco, "sb3-atari": sb3_atari}
    if argv and argv[0] in subcommands:
        return subcommands[argv[0]](argv[1:])
    args = parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.seeds:
        sizes.sb3_seeds = tuple(int(seed) for seed in args.seeds.split(","))
    if args.halfcheetah_minutes:
        sizes.halfcheetah_minutes = args.halfcheetah_minutes
    if args.rounds_seeds:
        sizes.rounds_seeds = tuple(int(seed) for seed in args.rounds_seeds.split(","))
    if args.law_cases:
        wanted = [case.strip() for case in args.law_cases.split(",")]
        unknown = [case for case in wanted if case not in sizes.scaling_law_cases]
        if unknown:
            raise SystemExit(f"--law-cases: unknown {unknown}; choose from {', '.join(sizes.scaling_law_cases)}")
        sizes.scaling_law_cases = {case: sizes.scaling_law_cases[case] for case in wanted}
    if args.rounds_carried:
        sizes.rounds_variants = CARRIED_ROUND_VARIANTS
    if args.time_to_target_envs:
        sizes.time_to_target_envs = tuple(args.time_to_target_envs.split(","))
    if args.minatar_steps is not None:
        sizes.pixels_minatar_steps = args.minatar_steps
    if args.atari_steps is not None:
        sizes.pixels_atari_steps = args.atari_steps
    if args.atari_local_rounds:
        sizes.pixels_atari_local_rounds = tuple(int(rounds) for rounds in args.atari_local_rounds.split(","))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = ROOT / "runs" / f"benchmark-{stamp}"
    out = args.out.resolve() if args.out else work / "benchmark.json"
    bench = Bench(sizes, work, out, args.quick, args=args)
    if args.simulated_from:
        bench.results["parts"]["simulated_cluster"] = json.loads(args.simulated_from.read_text())["parts"]["simulated_cluster"]
    log(f"parts {', '.join(args.parts)}{' (quick)' if args.quick else ''}; outputs in {work}, results in {out}")
    try:
        results = run_parts(bench, args.parts)
    finally:
        bench.stop_spark()
    log(f"done in {results['meta']['seconds']:.0f} s; results in {out}")
    return 1 if results["meta"]["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
