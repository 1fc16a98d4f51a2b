"""``clipomaly replay``: the pipeline over a bag, the node's outputs written to a new bag (no ROS runtime)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_model_options, build_pipeline


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("replay", help="run the pipeline over a bag and write the node's outputs to a "
                                                  "new bag (offline, no ROS runtime)")
    parser.add_argument("bag", type=Path, metavar="IN_BAG", help="rosbag2 folder (.mcap or .db3)")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT_BAG", help="new bag folder")
    parser.add_argument("--image-topic", help="image topic, raw or compressed (default: the bag's only one)")
    parser.add_argument("--camera-info-topic", help="the camera's sensor_msgs/CameraInfo, for the 3D outputs "
                                                    "(default: the image topic's sibling camera_info, if recorded)")
    parser.add_argument("--namespace", default="", help="namespace of the output topics (default: none, as a "
                                                         "node in the root namespace: /anomalies, /semantic, ...)")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    parser.add_argument("--no-overlay", action="store_true", help="leave out the pictures (overlay, "
                                                                    "semantic_color)")
    add_model_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from ...core.interrupt import EXIT_INTERRUPTED
    from ..replay import replay

    pipeline = build_pipeline(args)
    summary = replay(pipeline, args.bag, args.output, image_topic=args.image_topic, namespace=args.namespace,
                     storage=args.storage, overlay=not args.no_overlay, camera_info_topic=args.camera_info_topic)
    print(summary.text())
    print(f"wrote {args.output}")
    if summary.interrupted_at is not None:
        return EXIT_INTERRUPTED
    return 1 if summary.failed else 0
