"""``clipomaly scene``: the toy street scene of the docs and tests, with a planted object."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ...core.model.toy_backend import TOY_LEXICON

    parser = subparsers.add_parser("scene", help="write a synthetic street scene with a planted object (for "
                                                 "trying the toy backend)")
    parser.add_argument("output", type=Path, metavar="OUT.png")
    parser.add_argument("--object", default="mattress", choices=sorted(TOY_LEXICON), help="the planted object")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    return parser


def run(args: argparse.Namespace) -> int:
    import cv2

    from ..scenes import render_street_scene

    image, _ = render_street_scene(args.height, args.width, planted=args.object)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.output), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise ValueError(f"could not write {args.output}: use a .png or .jpg name in a writable folder")
    print(f"wrote {args.output} ({args.width}x{args.height}, planted object: {args.object})")
    return 0
