"""``clipomaly frames``: the full frames the mined candidates were found in, read back from their bags as PNG."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "frames", help="extract the full frames of the mined candidates from their bags as PNG",
        description="For each candidate of MINED's index, reads the frame it names (bag, topic, header stamp of "
                    "its best frame) from its bag and writes DIR/<bag>_<topic>_<stamp>.png, the file names the "
                    "exports refer to (frames/...: give -o MINED/frames for them). Frames already in DIR are kept.",
        epilog="exit status: 0 every frame written; 1 some could not be (each named); 2 MINED cannot be read")
    parser.add_argument("mined", type=Path, metavar="MINED", help="the OUT_DIR of 'clipomaly mine'")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="DIR")
    parser.add_argument("--unreported", action=argparse.BooleanOptionalAction, default=True,
                        help="also the frames of the regions naming dropped (default: yes)")
    return parser


def run(args: argparse.Namespace) -> int:
    from ..review.frames import extract_frames
    from ..review.index import load_index

    index = load_index(args.mined)
    rows = [row for row in index.rows if args.unreported or row.get("reported") is not False]
    problems: list[str] = []
    written = extract_frames(index, rows, args.output, problems)
    for problem in problems:
        print(f"not extracted: {problem}")
    print(f"wrote {written} frame(s) to {args.output} for {len(rows)} candidate(s)")
    return 1 if problems else 0
