"""Plot learning curves: ``python jobs/plot.py RUN_DIR [RUN_DIR ...] [--out curve.png]``.

Two panels, return against env steps and against wall time; training return (dashed) and evaluation return
(solid, with a +-std band) of every run, overlaid.  Reads RUN_DIR/metrics only: no Spark, works while a run
is still going.  With one run and no --out, writes RUN_DIR/learning_curve.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import ddrl
from ddrl.cli import HelpFormatter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="run directories (or sweep directories) whose metrics to plot")
    parser.add_argument("--out", type=Path, help="the PNG to write (default: RUN_DIR/learning_curve.png for one run, "
                                                 "else learning_curve.png here)")
    parser.add_argument("--label", action="append", help="a legend label per run, in order (default: the directory names)")
    parser.add_argument("--title", help="the plot's title (default: none)")
    args = parser.parse_args(argv)

    from ddrl import extras

    try:
        extras.require("matplotlib", "jobs/plot.py").use("Agg")
    except ddrl.ConfigError as error:
        print(f"ddrl: {error}", file=sys.stderr)
        return 2
    from ddrl.plots import CURVE_FILE, plot_runs

    if args.label is not None and len(args.label) != len(args.run_dirs):
        parser.error(f"--label given {len(args.label)} times for {len(args.run_dirs)} runs")
    out = args.out or (args.run_dirs[0] / CURVE_FILE if len(args.run_dirs) == 1 else Path(CURVE_FILE))
    try:
        plot_runs(args.run_dirs, out, args.label, args.title)
    except FileNotFoundError as error:
        print(f"ddrl: {error}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
