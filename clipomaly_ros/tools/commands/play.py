"""``clipomaly play``: a bag's messages published with rclpy at their recorded timing."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...core.config import split_names


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("play", help="publish a bag's messages with rclpy at their recorded timing",
                                   description="Replays a rosbag2 (.mcap or .db3) into a running ROS 2 graph where "
                                               "the ros2 command line is absent. Needs rclpy.")
    parser.add_argument("bag", type=Path, metavar="BAG", help="rosbag2 folder or its .mcap/.db3 file")
    parser.add_argument("--topics", type=split_names, action="extend", metavar="TOPIC[,TOPIC]",
                        help="only these topics, comma separated or --topics repeated (default: all)")
    parser.add_argument("--rate", type=float, default=1.0, help="speed factor (default 1: as recorded)")
    parser.add_argument("--loop", action="store_true", help="start again at the end, until interrupted")
    parser.add_argument("--reliable", action="store_true", help="publish with reliable QoS (default: best effort, "
                                                                "as camera drivers publish)")
    parser.add_argument("--remap", nargs="+", default=[], metavar="FROM:=TO",
                        help="publish a topic under another name, for example /camera/image_raw:=/cam1/image")
    return parser


def run(args: argparse.Namespace) -> int:
    from ...core.interrupt import GracefulStop
    from ...ros.player import play

    if any(not topic for topic in args.topics or ()):
        raise ValueError("--topics: a topic name is empty; list the topics without empty items, for example "
                         "--topics /camera/image_raw,/camera/camera_info")
    bad = [item for item in args.remap if ":=" not in item]
    if bad:
        raise ValueError(f"--remap {bad[0]!r}: write FROM:=TO, for example /camera/image_raw:=/cam1/image")
    remap = dict(item.split(":=", 1) for item in args.remap)
    with GracefulStop(announce=None) as stop:
        counts = play(args.bag, topics=args.topics, rate=args.rate, loop=args.loop, remap=remap,
                      reliable=args.reliable, stop=stop)
    print("published " + (", ".join(f"{n} on {t}" for t, n in sorted(counts.items())) or "nothing")
          + (f" (stopped by {stop.signal_name})" if stop.requested else ""))
    return stop.exit_code
