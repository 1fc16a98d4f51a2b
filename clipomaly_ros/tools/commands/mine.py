"""``clipomaly mine``: anomalies found in many recorded drives with Ray Data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ...core.config import split_names
from .options import add_model_options, config_from_args, positive_float


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "mine", help="find anomalies in many recorded drives with Ray Data (one machine or a cluster)",
        description="Cut bags into shards (one bag, one image topic, one time window), mine them on a Ray Data "
                    "actor pool with one model per worker, and write a Parquet index, thumbnails, summary.json and "
                    "report.html from every shard committed in OUT_DIR. One run at a time holds OUT_DIR; a second "
                    "refuses. A shard is committed whole or not at all. One that raises (an I/O error, out of "
                    "memory) is tried again --retries times; a worker that dies is restarted, and its shard handed "
                    "on, at most --retries times; then the shard is reported as failed and left for the next run. "
                    "Shards already committed are not mined again, also after the bags were moved or remounted (a "
                    "bag is known by its content): after an interruption or a failure, run the same command. A "
                    "single-file MCAP bag cut mid-write keeps its rows up to the cut, marked truncated in "
                    "summary.json, once two reads find the cut at the same byte.",
        epilog="exit status: 0 every planned shard committed; 1 some input, bag, shard or output failed, or a topic "
               "had no frame that decodes (the last line names them); 2 the run could not start (Ray, the model, "
               "the settings, another run holding OUT_DIR, or an OUT_DIR mined with other settings)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="bag folders, their .mcap/.db3 files, or folders "
                                                                  "searched recursively for bags")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT_DIR")
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a cluster on this "
                                          "machine)")
    parser.add_argument("--topics", help="image topics, comma separated (default: every image topic of each bag)")
    parser.add_argument("--rate", type=positive_float, metavar="HZ", help="at most this many frames a second of "
                                                                           "recorded time per topic (default: all)")
    parser.add_argument("--window", type=positive_float, default=60.0, metavar="S",
                        help="seconds of recording per shard (default 60)")
    parser.add_argument("--workers", type=int, default=2, help="Ray actors, one model each (default 2)")
    parser.add_argument("--gpus-per-worker", type=float, metavar="F",
                        help="GPUs per actor (default: the cluster's GPUs shared out, at most 1; 0 without GPUs)")
    parser.add_argument("--retries", type=int, default=2, metavar="N",
                        help="attempts after the first at a shard that raised, 1 s apart and doubling; also how "
                             "often Ray restarts a dead worker and hands its shard on, and how often an I/O error "
                             "while planning a bag is tried again (default 2)")
    parser.add_argument("--force-new", action="store_true",
                        help="delete the outputs of an earlier run in OUT_DIR (shards, index, thumbnails, summary, "
                             "report) and start afresh, even with other settings")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..mining import EXIT_NOT_STARTED, MineError, failure_line, run_mine

    topics = split_names(args.topics) if args.topics else None
    try:
        result = run_mine(args.inputs, args.output, config_from_args(args), topics=list(topics) if topics else None,
                          rate_hz=args.rate, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                          address=args.address, window_s=args.window, progress=not args.no_progress,
                          retries=args.retries, force_new=args.force_new)
    except MineError as error:
        print(f"clipomaly: error: {error}", file=sys.stderr)
        return EXIT_NOT_STARTED
    print(result.table)
    if not any(failure.get("kind") == "output" for failure in result.summary["failed"]):
        print(f"wrote {args.output}/anomalies.parquet, thumbnails/, summary.json and report.html")
    last = failure_line(result.summary)
    if last:
        print(last)
    return result.exit_code
