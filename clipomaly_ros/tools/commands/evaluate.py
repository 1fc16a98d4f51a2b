"""``clipomaly evaluate``: the pipeline scored on a labelled folder (anomaly metrics or known-class mIoU), and the
ground placement's accuracy on rendered scenes (``--ground-check``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_model_options, build_pipeline, write_json


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("evaluate", help="score the pipeline on images/ and labels/ (pixel and "
                                                    "component metrics, or known-class mIoU)")
    parser.add_argument("dataset", type=Path, metavar="DATASET_DIR", nargs="?",
                        help="a folder of images/ and labels/ (may be left out with --ground-check)")
    parser.add_argument("--anomaly-id", type=int, default=1, help="label value of anomaly pixels (default 1)")
    parser.add_argument("--ignore-id", type=int, default=255, help="label value of ignored pixels (default 255)")
    parser.add_argument("--known-classes-miou", action="store_true",
                        help="labels are trainIds of the known classes (Cityscapes-style): report IoU per class")
    parser.add_argument("--json", type=Path, help="also write the report as JSON")
    parser.add_argument("--plots", type=Path, metavar="DIR", help="write precision_recall.png, "
                                                                  "score_histogram.png and instance_recall.png "
                                                                  "(anomaly mode) into DIR")
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument("--ground-check", action="store_true",
                        help="also check the ground estimates' accuracy: distance and lateral errors of an object "
                             "at 5 to 40 m on rendered 1280x720 scenes, toy backend (as bench --ground-check)")
    add_model_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.dataset is None and not args.ground_check:
        raise ValueError("evaluate needs a DATASET_DIR (images/ and labels/), or --ground-check alone")
    report = score_dataset(args) if args.dataset is not None else {}
    if args.ground_check:
        from ..ground_accuracy import format_ground_errors, ground_errors

        report["ground_errors"] = ground_errors()
        print(format_ground_errors(report["ground_errors"]))
    write_json(args.json, report)
    return 0


def score_dataset(args: argparse.Namespace) -> dict:
    """The data set's report (printed), with the settings that decide it under ``config``."""
    from ...core.datasets import dataset_ground_locator
    from ..evaluation import evaluate, find_samples, format_report

    samples = find_samples(args.dataset, args.limit)
    locator = dataset_ground_locator(args.dataset)
    pipeline = build_pipeline(args)
    report = evaluate(pipeline, samples, anomaly_id=args.anomaly_id, ignore_id=args.ignore_id,
                      known_classes_miou=args.known_classes_miou, plots=args.plots, locator=locator)
    report["config"] = {k: v for k, v in pipeline.config.as_dict().items()
                        if k in ("backend", "model", "pretrained", "checkpoint", "random_weights", "dense_method",
                                 "inference_size", "uncertainty_threshold", "logit_scale")}
    print(format_report(report))
    return report
