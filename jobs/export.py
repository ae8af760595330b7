"""Export a trained policy for serving without ddrl: ``python jobs/export.py RUN_DIR --out policy.pt2``.

The format follows the file name: ``.pt2`` writes a torch.export program (``torch.export.load(path).module()``),
``.pt`` / ``.ts`` a TorchScript file (``torch.jit.load(path)``).  Either maps a batch of observations (one tensor,
or for Dict and Tuple spaces a dict of tensors by part name) to actions, feature encoding, observation
normalization and masks included (``ddrl.export``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import ddrl
from ddrl.export import export_program, export_torchscript
from ddrl.cli import HelpFormatter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run directory (or its policy/ directory)")
    parser.add_argument("--out", type=Path, required=True, help="policy.pt2 (torch.export) or policy.pt (TorchScript)")
    parser.add_argument("--best", action="store_true", help="the run's best-evaluated policy (best/) instead of its final one")
    args = parser.parse_args(argv)
    if args.out.suffix not in (".pt2", ".pt", ".ts"):
        parser.error("--out must end in .pt2 (torch.export) or .pt/.ts (TorchScript)")
    try:
        policy = ddrl.load_policy(args.run_dir, best=args.best)
    except FileNotFoundError as error:
        print(f"ddrl: {error}", file=sys.stderr)
        return 2
    export = export_program if args.out.suffix == ".pt2" else export_torchscript
    path = export(policy, args.out)
    kind = "torch.export program" if args.out.suffix == ".pt2" else "TorchScript"
    print(f"{policy.env.id}: {kind} written to {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
