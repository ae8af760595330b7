"""Train a policy from a YAML config: ``./spark-submit.sh jobs/train.py --config conf/cartpole_ppo.yaml``.

The config is validated (and the env built once) before Spark starts; a bad config stops with one line and
exit code 2.  Prints one progress line per iteration, then the final evaluation, env steps and wall time.
"""

from __future__ import annotations

import time

PYTHON_STARTED = time.time()  # before the imports, which are a phase of --timings

import argparse
import logging
import math
import os
import sys
import warnings

import ddrl
from ddrl.run import Run
from ddrl.cli import HelpFormatter

STARTED_AT = float(os.environ.get("DDRL_STARTED_AT", time.time()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--config", help="YAML config (optional with --resume: the run's own config)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. ppo.learning_rate=0.001")
    parser.add_argument("--run-dir", help="run directory (default: output.root/<name>-<timestamp>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    parser.add_argument("--remote", metavar="URL", help="train on a Spark Connect server (sc://HOST:PORT), or on one this "
                        "process starts (local[N]); default: a classic session")
    parser.add_argument("--verbose", action="store_true", help="show Spark's own log lines")
    parser.add_argument("--timings", action="store_true", help="end with where the process's time went outside the iterations")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout)
    logging.getLogger("py4j").setLevel(logging.WARNING)

    marks = {"launch": STARTED_AT, "python": PYTHON_STARTED, "imports": time.time()}
    try:
        run = Run.open(args.config, args.set, args.run_dir, args.resume)
    except ddrl.ConfigError as error:
        print(f"ddrl: {error}", file=sys.stderr)
        return 2

    if args.remote and "PYSPARK_GATEWAY_PORT" in os.environ:
        print("ddrl: --remote: run jobs/train.py with the venv's Python (.venv/bin/python jobs/train.py --remote ...), "
              "not through spark-submit, which starts a classic driver", file=sys.stderr)
        return 2
    marks["run"] = time.time()
    try:
        spark = build_connect_session(args.remote, args.verbose) if args.remote else build_spark_session(run.config.name, args.verbose)
    except ddrl.ConfigError as error:
        print(f"ddrl: {error}", file=sys.stderr)
        return 2
    marks["session"] = time.time()
    try:
        result = ddrl.train(spark, run)
    except ddrl.TrainingError as error:
        print(f"ddrl: training stopped: {error}. The last checkpoint in {run.directory} is valid: "
              f"continue with --resume {run.directory}", file=sys.stderr)
        return 1
    except ddrl.ConfigError as error:  # what only a started session can tell (e.g. a model too large for it)
        print(f"ddrl: {error}", file=sys.stderr)
        return 2
    finally:
        marks["trained"] = time.time()
        stop_session(spark)
        marks["stopped"] = time.time()

    verdict = "solved" if result.solved else "not solved"
    print(f"final evaluation: {result.eval_return_mean:.1f} +- {result.eval_return_std:.1f} over "
          f"{run.config.train.final_eval_episodes} episodes ({verdict})")
    print(f"env steps: {result.env_steps} in {result.iterations} iterations")
    if math.isfinite(result.useful_tasks):
        print(f"useful tasks: ~{result.useful_tasks:.1f} (the gradient noise scale over one task's batch, last 10 iterations; "
              f"this run had {run.config.spark.num_tasks}): more tasks than that add samples per iteration but barely cut "
              "the iterations to the target (README, Choosing the number of tasks)")
    print(f"wall time: {time.time() - STARTED_AT:.1f} s, whole process")
    if args.timings:  # a resumed run's metrics hold the earlier processes' iterations too
        print("fixed time: measured for fresh runs only" if run.resumed or not result.metrics.num_rows else fixed_time_line(marks, result))
    print(f"run directory: {result.run_dir}")
    return 0


def fixed_time_line(marks: dict[str, float], result: ddrl.TrainResult) -> str:
    """One line: the process's seconds outside the iterations, phase by phase (the JVM's own exit comes after)."""
    iteration_s = result.metrics.column("iteration_s").to_pylist()
    wall_s = result.metrics.column("wall_s").to_pylist()
    later = sorted(iteration_s[1:])[len(iteration_s[1:]) // 2] if len(iteration_s) > 1 else 0.0
    phases = {
        "launch to Python (script and spark-submit's JVM)": marks["python"] - marks["launch"],
        "imports": marks["imports"] - marks["python"],
        "config and env check": marks["run"] - marks["imports"],
        "Spark session": marks["session"] - marks["run"],
        "before iteration 1": wall_s[0] - iteration_s[0],
        "first job beyond a later iteration": iteration_s[0] - later,
        "final evaluation and saving": result.wall_seconds - wall_s[-1],
        "Spark stop": marks["stopped"] - marks["trained"],
    }
    # outside the iterations: the whole process less every iteration at a later iteration's time
    outside = marks["stopped"] - marks["launch"] - sum(iteration_s) + iteration_s[0] - later
    phases["other"] = outside - sum(phases.values())
    listed = " | ".join(f"{name} {seconds:.2f}" for name, seconds in phases.items())
    return f"fixed time: {outside:.2f} s outside the iterations, in s: {listed}"


def stop_session(spark) -> None:
    """``spark.stop()`` for a job about to exit.  pyspark's stop then waits for its accumulator server, whose
    handler polls its socket once a second (up to 1 s here, every run); the server's thread is a daemon that ends
    with the process, so the job lets it be."""
    context = getattr(spark, "_sc", None)  # a Connect session has no SparkContext
    if context is not None:
        context._accumulatorServer = None
    spark.stop()


def build_spark_session(name: str, verbose: bool):
    """The job's own session: spark-submit's master if it set one, else $DDRL_MASTER or local[*]."""
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    conf = SparkConf()
    # Under spark-submit the JVM runs first (PYSPARK_GATEWAY_PORT is set) and holds --master, which a SparkConf
    # made before the SparkContext cannot see: setting a master here would override it with local[*].
    if not conf.contains("spark.master") and "PYSPARK_GATEWAY_PORT" not in os.environ:
        conf.setMaster(os.environ.get("DDRL_MASTER", "local[*]"))
    spark = SparkSession.builder.appName(f"ddrl-{name}").config(conf=conf).getOrCreate()
    spark.sparkContext.setLogLevel("INFO" if verbose else "ERROR")
    return spark


def build_connect_session(url: str, verbose: bool):
    """A Spark Connect session: a server's ``sc://`` URL, or ``local[N]`` for a server inside this process."""
    from pyspark.sql import SparkSession

    from ddrl import extras

    try:
        from pyspark.sql.connect.utils import check_dependencies

        check_dependencies()
    except ImportError as error:  # pyspark's own message names the pip package, not ddrl's extra
        raise ddrl.ConfigError(f"--remote: the Spark Connect client is not installed ({' '.join(str(error).split())}): "
                               f"{extras.install_hint('grpc')}") from None
    builder = SparkSession.builder.remote(url)
    if not url.startswith("local"):
        return builder.getOrCreate()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # the in-process server's Python workers
    with warnings.catch_warnings():  # the client also tries, and fails, to set the server's static settings
        warnings.simplefilter("ignore", UserWarning)
        spark = builder.config("spark.ui.showConsoleProgress", str(verbose).lower()).getOrCreate()
    from pyspark import SparkContext

    SparkContext._active_spark_context.setLogLevel("INFO" if verbose else "ERROR")  # the server's own context
    return spark


if __name__ == "__main__":
    sys.exit(main())
