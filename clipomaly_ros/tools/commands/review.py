"""``clipomaly review``: a local web page over a mined folder to decide, candidate by candidate, what mining
found; or, with ``--conflicts``, the candidates on which reviewers disagree."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_reviewer_option


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "review", help="review mined candidates in a local web page (decisions go to MINED/reviews.jsonl)",
        description="Serves a page over MINED (the OUT_DIR of 'clipomaly mine'): the candidates by score with "
                    "thumbnail, full frame and outline, and one decision each: accept (a), rename (r), known class "
                    "(k), reject (x), skip (s). Every decision is appended at once to MINED/reviews.jsonl; a later "
                    "one on the same candidate supersedes the earlier, and both stay. The server listens on "
                    "127.0.0.1 unless --host says otherwise, and every request needs the token in the URL it "
                    "prints.",
        epilog="exit status: 0 stopped with Ctrl-C (or --conflicts listed); 2 MINED is no mined folder")
    parser.add_argument("mined", type=Path, metavar="MINED", help="the OUT_DIR of 'clipomaly mine'")
    parser.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0: any free port)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 exposes it)")
    add_reviewer_option(parser)
    parser.add_argument("--conflicts", action="store_true",
                        help="list the candidates on which reviewers' latest decisions disagree, and exit")
    return parser


def run(args: argparse.Namespace) -> int:
    from ..review import decisions
    from ..review.frames import extract_frames
    from ..review.index import load_index
    from ..review.service import serve

    if args.conflicts:
        load_index(args.mined)  # a folder that is no mined output is the user's mistake, not "no disagreements"
        log = decisions.read_log(args.mined)
        print(decisions.conflict_text(decisions.conflicts(log)))
        if log.problems():
            print(log.problems())
        return 0
    if not 0 <= args.port < 65536:
        raise ValueError(f"--port must be 0 to 65535, got {args.port}")
    try:
        return serve(args.mined, args.reviewer, host=args.host, port=args.port,
                     frame_reader=extract_frames)
    except OSError as error:
        raise ValueError(f"cannot listen on {args.host}:{args.port} ({error.strerror or error}): give another "
                         "--port") from None
