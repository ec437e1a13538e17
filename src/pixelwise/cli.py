"""The `pixelwise` command line. Every subcommand is a thin layer over the library.

User errors (bad files, bad options) print one line naming the problem and the fix and exit
with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pixelwise.checkpoint import CheckpointError


class UserError(Exception):
    """An error caused by the user's input; printed as one line, exit status 2."""


def _cmd_info(args: argparse.Namespace) -> int:
    """Print the geometry and size of the registered models."""
    from pixelwise.models import UNet, build

    unet = UNet()
    print("U-Net (paper): 1 input channel, 2 classes, depth 5, valid padding")
    print(f"  parameters       {sum(p.numel() for p in unet.parameters()):,}")
    print(f"  input → output   572 → {unet.output_size(572)}  (margin {unet.margin} per side)")
    print(f"  valid inputs     {unet.valid_input_sizes(500, 600)} (in 500..600)")
    for name in ("fcn32s", "fcn16s", "fcn8s"):
        fcn = build(name)
        n = sum(p.numel() for p in fcn.parameters())
        print(f"{name}: VGG16 backbone, 21 classes, {n:,} parameters, any input size → same size")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixelwise",
        description="Per-pixel segmentation with FCN and U-Net.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("info", help="print the models' geometry and parameter counts")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UserError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
