"""``clipomaly release``: reviewed mined folders turned into a versioned release; ``clipomaly release diff OLD NEW``
compares two (see docs/fleet-loop.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..release.inputs import CONFLICT_POLICIES
from .options import add_model_options, config_from_args

DESCRIPTION = (
    "clipomaly release MINED... -o RELEASE_DIR [--from PARENT]: the names reviewers confirmed join anomaly_vocabulary, "
    "the reviewed frames become labelled frames (split by drive) that calibrate the thresholds, and RELEASE_DIR gets "
    "clipomaly.yaml (a parameter file for the node, replay and evaluate), release.json (provenance and figures), "
    "CHANGELOG.md, release.dvc and the frames. clipomaly release diff OLD NEW [--eval DATA]: vocabulary and "
    "thresholds from OLD to NEW, with --eval both releases' figures on the same labelled frames and the frames they "
    "disagree on.")


def add_parser(subparsers) -> argparse.ArgumentParser:
    summary = ("turn reviewed finds into a release (parameter file, provenance, changelog); 'release diff OLD NEW' "
               "compares two")
    parser = subparsers.add_parser("release", help=summary, description=DESCRIPTION)
    parser.add_argument("inputs", nargs="+", metavar="MINED", help="reviewed mined folders (clipomaly mine's "
                                                                   "OUT_DIR with reviews.jsonl); or: diff OLD NEW")
    parser.add_argument("-o", "--output", type=Path, metavar="RELEASE_DIR", help="the release folder to write")
    parser.add_argument("--from", dest="parent", type=Path, metavar="PARENT",
                        help="the release this one starts from: its settings, and its id as the parent")
    parser.add_argument("--finetune", action="store_true", help="also write the known-class decisions as "
                                                                "fine-tuning data (clipomaly finetune's layout)")
    parser.add_argument("--eval", type=Path, metavar="DATA", help="labelled frames (images/ + labels/, names in "
                                                                  "instances/ + names.json) to measure on; a release "
                                                                  "without it measures on its held-out drives")
    parser.add_argument("--picture", type=Path, metavar="PNG",
                        help="diff: where to draw the frames the two releases disagree on (default diff.png in the "
                             "current folder, so a release folder stays as its release.dvc lists it)")
    parser.add_argument("--conflicts", choices=CONFLICT_POLICIES, default="leave-out",
                        help="reviewers who disagree on a candidate: leave it out (default), take the latest "
                             "decision, or refuse the release")
    parser.add_argument("--strict", action="store_true", help="refuse the release when any review line is bad "
                                                              "(default: report it and use the valid lines)")
    add_model_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..release.build import ReleaseOptions, build_release, parent_release
    from ..release.inputs import ReleaseError
    from ..release.provenance import node_parameters
    from ..release.report import changelog_entry, release_diff

    if args.inputs[0] == "diff":
        if len(args.inputs) != 3:
            raise ReleaseError("release diff takes two release folders: clipomaly release diff OLD NEW [--eval DATA]")
        print(release_diff(Path(args.inputs[1]), Path(args.inputs[2]), args.eval, args.picture))
        return 0
    if args.output is None:
        raise ReleaseError("give the release folder to write with -o RELEASE_DIR")
    parent_file, _ = parent_release(args.parent)
    if parent_file is not None and args.config is not None:
        raise ReleaseError("--from and --config both given: a release starts from its parent's parameter file; "
                           "give one of them")
    args.config = parent_file or args.config
    options = ReleaseOptions([Path(p) for p in args.inputs], args.output, config_from_args(args), parent=args.parent,
                             finetune=args.finetune, conflicts=args.conflicts, strict=args.strict,
                             eval_data=args.eval, node_parameters=node_parameters(args.config))
    record = build_release(options, log=lambda message: None)
    for problem in record["problems"]:
        print(f"clipomaly: reported: {problem}", file=sys.stderr)
    print(changelog_entry(record), end="")
    print(f"wrote {args.output} (release {record['release_id']})")
    return 0
