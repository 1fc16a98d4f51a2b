"""``clipomaly dataset``: labelled synthetic street scenes (images/ + labels/) for finetune and evaluate."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ...core.model.toy_backend import TOY_LEXICON

    parser = subparsers.add_parser("dataset", help="write synthetic street scenes with pixel labels (images/ + "
                                                   "labels/, for trying finetune and evaluate)")
    parser.add_argument("output", type=Path, metavar="OUT_DIR")
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="another seed gives other scenes (held-out sets)")
    parser.add_argument("--object", choices=sorted(TOY_LEXICON), help="plant this object in each scene (label 255)")
    return parser


def run(args: argparse.Namespace) -> int:
    from ..scenes import write_street_dataset

    if args.count < 1 or args.width < 16 or args.height < 16:
        raise ValueError("--count must be at least 1 and --width/--height at least 16")
    write_street_dataset(args.output, args.count, args.height, args.width, args.seed, args.object)
    planted = f"; the planted {args.object} is 255" if args.object else ""
    print(f"wrote {args.count} labelled street scenes ({args.width}x{args.height}) to {args.output}/images and "
          f"{args.output}/labels (Cityscapes trainIds{planted})")
    return 0
