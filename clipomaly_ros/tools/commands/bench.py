"""``clipomaly bench``: time per stage, frames per second and memory (or the mining's scaling)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_model_options, config_from_args, write_json


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("bench", help="measure time per stage, frames per second and memory",
                                   description="Runs with random weights (cost does not depend on their values) "
                                               "unless --checkpoint or --pretrained is given. Quick by default; "
                                               "the long parts (--cameras, --soak-frames, --ground-check) are "
                                               "opt-in. Prints its expected duration after the first frame.")
    parser.add_argument("--size", default="1280x720", help="input size WIDTHxHEIGHT (default 1280x720)")
    parser.add_argument("--frames", type=int, default=5, help="frames to time (default 5)")
    parser.add_argument("--cameras", type=int, default=1, help="also time this many cameras batched through "
                                                              "one model (default 1: one camera only)")
    parser.add_argument("--ground-check", action="store_true", help="also check the ground estimates' accuracy "
                                                                      "(10 toy frames at 1280x720)")
    parser.add_argument("--soak-frames", type=int, default=0, help="also run a memory soak of this many frames "
                                                                   "with a small model (default 0: none; 1000 is "
                                                                   "a good soak)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    parser.add_argument("--mining", type=Path, metavar="DIR", help="instead: time `clipomaly mine` over the bags in "
                                                                   "DIR with 1 and 2 local Ray workers, against "
                                                                   "one process and replay (DIR without bags gets "
                                                                   "a generated fleet)")
    add_model_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..bench import format_bench, run_bench

    random_weights = None if (args.checkpoint or args.pretrained) else True
    if args.mining is not None:
        from ..mining.scaling import format_scaling, mining_scaling

        report = mining_scaling(config_from_args(args, random_weights=random_weights), args.mining)
        print(format_scaling(report))
        write_json(args.json, report)
        return 0

    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size {args.size!r}: write WIDTHxHEIGHT, for example 1280x720") from None
    if args.frames < 2:
        raise ValueError("--frames must be at least 2")
    config = config_from_args(args, random_weights=random_weights)
    if args.cameras < 1 or args.soak_frames < 0:
        raise ValueError("--cameras must be at least 1 and --soak-frames at least 0")
    report = run_bench(config, (width, height), args.frames, cameras=args.cameras, soak_frames=args.soak_frames,
                       geometry=args.ground_check)
    print(format_bench(report))
    write_json(args.json, report)
    return 0
