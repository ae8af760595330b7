"""Sweep a config's hyperparameters, the trials sharing each iteration's Spark job:
``./spark-submit.sh jobs/sweep.py --config conf/cartpole_ppo.yaml --grid ppo.learning_rate=3e-4,1e-3 --seeds 4``.

Each trial is a normal run under OUT/trials (the same outputs as jobs/train.py).  ``--halving-min-steps`` stops
the weaker trials by synchronous successive halving; ``--pbt-interval`` trains them as a population (PBT).  The
sweep and every trial config are validated before Spark starts (one line, exit code 2).  At the end: a ranked
summary, OUT/sweep.parquet (one row per trial and iteration), OUT/sweep.png; a killed sweep continues with
``--resume OUT``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import ddrl
from ddrl.sweeps import driver, spec
from train import STARTED_AT, build_connect_session, build_spark_session, stop_session
from ddrl.cli import HelpFormatter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--config", help="YAML config of every trial (not with --resume)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override of the base config")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="values tried, crossed with the other --grid keys")
    parser.add_argument("--random", action="append", default=[], metavar="KEY=LOW:HIGH[:log]", help="a range sampled --trials times")
    parser.add_argument("--trials", type=int, default=1, help="random samples per grid point (with --random)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per point: the config's seed + 0, 1, ...")
    parser.add_argument("--halving-min-steps", type=int, metavar="STEPS", help="successive halving, first rung at STEPS env steps")
    parser.add_argument("--eta", type=int, default=3, help="successive halving keeps the top 1/eta at each rung")
    parser.add_argument("--pbt-interval", type=int, metavar="K", help="population-based training: exploit and explore every K iterations")
    parser.add_argument("--pbt-quantile", type=float, default=0.25, help="PBT: the bottom quantile takes the top quantile's state")
    parser.add_argument("--pbt-hyperparameters", metavar="KEY,KEY", help="PBT: the keys perturbed (default: the algorithm's)")
    parser.add_argument("--trials-per-job", type=int, help="trials whose tasks share one Spark job (default: every live trial)")
    parser.add_argument("--out", help="sweep directory (default: output.root/<name>-sweep-<timestamp>)")
    parser.add_argument("--resume", metavar="OUT", help="continue the sweep in OUT")
    parser.add_argument("--remote", metavar="URL", help="run on a Spark Connect server (sc://HOST:PORT), or one this process starts (local[N])")
    parser.add_argument("--verbose", action="store_true", help="show Spark's own log lines")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout)
    logging.getLogger("py4j").setLevel(logging.WARNING)

    try:
        sweep_plan = driver.SweepPlan.open(args.config, **_options(args))
    except ddrl.ConfigError as error:
        print(f"ddrl: {error}", file=sys.stderr)
        return 2
    if args.remote and "PYSPARK_GATEWAY_PORT" in os.environ:
        print("ddrl: --remote: run jobs/sweep.py with the venv's Python, not through spark-submit", file=sys.stderr)
        return 2
    try:
        spark = build_connect_session(args.remote, args.verbose) if args.remote else build_spark_session(f"{sweep_plan.base.name}-sweep", args.verbose)
    except ddrl.ConfigError as error:
        print(f"ddrl: {error}", file=sys.stderr)
        return 2
    try:
        result = ddrl.sweep(spark, sweep_plan)
    except driver.SweepFailed as error:
        print(f"ddrl: sweep failed: {error}", file=sys.stderr)
        return 1
    except ddrl.TrainingError as error:
        print(f"ddrl: sweep stopped: {error}. Continue with --resume {sweep_plan.directory}", file=sys.stderr)
        return 1
    except ddrl.ConfigError as error:
        print(f"ddrl: {error}", file=sys.stderr)
        return 2
    finally:
        stop_session(spark)
    print(result.summary, end="")
    print(f"sweep table: {result.directory / 'sweep.parquet'}")
    print(f"wall time: {time.time() - STARTED_AT:.1f} s, whole process")
    return 0


def _options(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``ddrl.sweep`` the command line gives; ``ConfigError`` on a bad one."""
    if args.resume:
        if args.config or args.grid or args.random or args.set:
            raise ddrl.ConfigError("--resume: the sweep's own config and spec are used; give no --config, --set, --grid or --random")
        return {"resume": args.resume}
    if not args.config:
        raise ddrl.ConfigError("--config: a config is required to start a sweep")
    options: dict = {"grid": spec.parse_grid(args.grid), "random": spec.parse_random(args.random), "trials": args.trials,
                     "seeds": args.seeds, "overrides": args.set, "out": args.out, "trials_per_job": args.trials_per_job}
    if args.halving_min_steps is not None:
        options["halving"] = {"eta": args.eta, "min_steps": args.halving_min_steps}
    if args.pbt_interval is not None:
        pbt: dict = {"interval": args.pbt_interval, "quantile": args.pbt_quantile}
        if args.pbt_hyperparameters:
            pbt["hyperparameters"] = [key.strip() for key in args.pbt_hyperparameters.split(",") if key.strip()]
        options["pbt"] = pbt
    return options


if __name__ == "__main__":
    sys.exit(main())
