"""Evaluate a saved policy without Spark: ``python jobs/evaluate.py RUN_DIR --episodes 20``.

Loads the policy (no pickle), runs N episodes of the run's environment in parallel and prints the mean and
standard deviation of the return.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import ddrl
from ddrl import config as config_module
from ddrl.envs import evaluate
from ddrl.run import CONFIG_FILE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run directory (with config.yaml and policy/)")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=12345, help="seed of the evaluation episodes")
    args = parser.parse_args(argv)
    try:
        config = config_module.load(args.run_dir / CONFIG_FILE)
        policy = ddrl.load_policy(args.run_dir)
    except (ddrl.ConfigError, FileNotFoundError) as error:
        print(f"ddrl: {error}", file=sys.stderr)
        return 2
    returns, lengths = evaluate(policy.act, config.env, args.episodes, args.seed)
    print(f"{config.env.id}: return {returns.mean():.1f} +- {returns.std():.1f} over {args.episodes} episodes "
          f"(mean length {lengths.mean():.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
