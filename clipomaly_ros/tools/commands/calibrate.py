"""``clipomaly calibrate``: thresholds chosen for the weights from labelled frames, written as a parameter file."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_model_options, build_pipeline, model_description, number_list


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ..calibration import OBJECTIVES

    parser = subparsers.add_parser(
        "calibrate", help="choose the thresholds for your weights from labelled frames (writes a parameter file)",
        description="Searches uncertainty_threshold, min_region_area, cleanup_radius and crop_weight on DATA "
                    "(images/ + labels/, as evaluate reads) for the --objective, with the dense features computed "
                    "once per image; writes OUT.yaml (a parameter file for the node and every command) and OUT.json "
                    "(the whole search). The current settings are always a candidate and win ties. Another setting "
                    "is chosen only when its lead exceeds the lead the best of all settings reaches by chance "
                    "(bootstrap of the maximum) and the search, re-run by cross-validation over drives, gains on the "
                    "frames that did not choose it (the lower end of the 95 % interval above 0); the output and the "
                    "file say which happened, the expected gain on unseen frames and its interval. Under "
                    "--naming-source tagger or both, regions are named from each frame's RAM++ tags, as the node "
                    "names them.")
    parser.add_argument("dataset", type=Path, metavar="DATA")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="TUNED.yaml")
    parser.add_argument("--objective", choices=tuple(OBJECTIVES), default="f1",
                        help="f1 or siou (component level; default f1), ap or fpr95 (pixel level, on the published "
                             "continuous score: no searched setting changes them, so the current values are kept "
                             "and the run says so)")
    parser.add_argument("--val", type=Path, metavar="DATA2", help="held-out frames: the chosen settings' figures "
                                                                  "on data the search did not see (refused when "
                                                                  "a frame of it is one of DATA's: the same bytes, "
                                                                  "a re-encoded or resized copy, or the same drive "
                                                                  "within 5 s by the names or EXIF stamps)")
    parser.add_argument("--anomaly-id", type=int, default=1, help="label value of anomaly pixels (default 1)")
    parser.add_argument("--ignore-id", type=int, default=255, help="label value of ignored pixels (default 255)")
    parser.add_argument("--limit", type=int, help="only the first N images (of DATA and of DATA2)")
    parser.add_argument("--plots", type=Path, metavar="DIR", help="write calibration_curves.png into DIR")
    parser.add_argument("--thresholds", type=number_list(float),
                        help="uncertainty_threshold values (default 0.30..0.95 every 0.05)")
    parser.add_argument("--areas", type=number_list(int),
                        help="min_region_area values in pixels (default 25,100,400,1600)")
    parser.add_argument("--radii", type=number_list(int), help="cleanup_radius values (default 0,2,8)")
    parser.add_argument("--crop-weights", type=number_list(float),
                        help="crop_weight values (default 0,0.25,0.5,0.75,1)")
    parser.add_argument("--memory-budget", type=float, default=2048.0, metavar="MB",
                        help="what the run keeps in memory, in MB: every cache (images, labels, dense features, "
                             "known-class scores, crop embeddings on the model's device, named regions, each "
                             "setting's result and each frame's scores; default 2048); what does not fit is computed "
                             "or read again when needed (slower, same result)")
    add_model_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..calibration import SearchSpace, calibrate, format_report, read_frames, write_outputs
    from ..evaluation import find_samples

    space = SearchSpace(**{name: value for name, value in (
        ("thresholds", args.thresholds), ("areas", args.areas), ("radii", args.radii),
        ("crop_weights", args.crop_weights)) if value is not None})
    frames = read_frames(find_samples(args.dataset, args.limit), args.anomaly_id, args.ignore_id)
    val_frames = (read_frames(find_samples(args.val, args.limit), args.anomaly_id, args.ignore_id)
                  if args.val else None)
    pipeline = build_pipeline(args)
    report = calibrate(pipeline, frames, args.objective, space, data=str(args.dataset), val_frames=val_frames,
                       val_data=str(args.val or ""), memory_budget_mb=args.memory_budget)
    written = write_outputs(report, pipeline.config, model_description(pipeline), args.output, args.plots)
    print(format_report(report))
    if not args.val:
        print("no --val: the figures are on the data searched; give held-out frames to see what the settings do "
              "on data they were not chosen on")
    print("wrote " + ", ".join(map(str, written)))
    return 0
