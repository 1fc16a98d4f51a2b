"""``clipomaly import``: a labelling tool's reviewed export (COCO, Label Studio, CVAT) read back into
MINED/reviews.jsonl as decisions."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_reviewer_option


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "import", help="read a labelling tool's reviewed export back into MINED/reviews.jsonl",
        description="Reads COCO instances JSON, Label Studio tasks JSON or CVAT for images 1.1 XML (as 'clipomaly "
                    "export MINED --format' wrote them, after review in the tool) and appends one decision per "
                    "reviewed candidate to MINED/reviews.jsonl, with the tool's reviewer, time and lead time where "
                    "it has them. A mask drawn anew in the tool becomes the decision's mask; the index keeps the "
                    "original. Annotations that name no candidate or carry no decision are counted and left out.",
        epilog="exit status: 0 imported; 2 the file or MINED cannot be read")
    parser.add_argument("file", type=Path, metavar="FILE", help="the tool's export")
    parser.add_argument("--into", type=Path, required=True, metavar="MINED", help="the mined folder")
    parser.add_argument("--format", choices=("coco", "label-studio", "cvat"),
                        help="the file's format (default: detected)")
    add_reviewer_option(parser, ", where the file names no reviewer")
    return parser


def run(args: argparse.Namespace) -> int:
    from ..review import decisions
    from ..review.exchange import import_file
    from ..review.index import load_index

    outcome = import_file(load_index(args.into), args.file, args.format, args.reviewer)
    decisions.append(args.into, outcome.lines)
    print(outcome.summary(args.file))
    return 0
