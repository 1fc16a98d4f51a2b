"""``clipomaly demo``: the ROS 2 node on a synthetic drive over local DDS."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo", help="run the ROS 2 node on a synthetic drive over local DDS and print its anomalies",
        description="Generates a few seconds of street scenes with a mattress and a tyre, publishes them into a "
                    "real clipomaly_node process (toy backend unless --pretrained or --checkpoint is given), "
                    "prints each processed frame's anomalies as a planner sees them and writes an overlay GIF. "
                    "The drive is paced (each frame once the node has answered the one before), so it shows the "
                    "same on any machine; --realtime publishes at the camera rate instead. Needs ROS 2 "
                    "(scripts/setup_ros.sh).")
    parser.add_argument("-o", "--output", type=Path, default=Path("demo_out"), metavar="OUT_DIR",
                        help="folder for drive.gif, anomalies.jsonl and node.log (default: demo_out)")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of the drive (default 4)")
    parser.add_argument("--rate", type=float, default=10.0, help="camera frame rate in Hz (default 10): the stamps' "
                                                                  "spacing, and the publishing rate with --realtime")
    parser.add_argument("--realtime", action="store_true",
                        help="publish at the camera rate without waiting for the node, as a camera does: a slower "
                             "machine then answers fewer frames")
    parser.add_argument("--model", help="open_clip architecture, with --pretrained or --checkpoint (default "
                                        "ViT-B-16)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", help="open_clip pretrained tag: real CLIP instead of the toy backend")
    weights.add_argument("--checkpoint", help="local weights file: real CLIP instead of the toy backend")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--inference-size", type=int, help="short side of the working resolution (default 240)")
    parser.add_argument("--tagger-weights", help="RAM++ checkpoint: the node names anomalies from the frames' tags "
                                                 "(naming_source tagger) and publishes them on ~/tags")
    return parser


def run(args: argparse.Namespace) -> int:
    from ...core.interrupt import EXIT_INTERRUPTED
    from ..demo import run_demo

    if args.seconds <= 0 or args.rate <= 0:
        raise ValueError("--seconds and --rate must be positive")
    model = {name: value for name, value in (("model", args.model), ("pretrained", args.pretrained),
                                             ("checkpoint", args.checkpoint), ("device", args.device),
                                             ("inference_size", args.inference_size),
                                             ("tagger_weights", args.tagger_weights)) if value is not None}
    if args.pretrained or args.checkpoint:
        model["backend"] = "open_clip"
    if args.tagger_weights:
        model["naming_source"] = "tagger"  # the regions named from the frames' RAM++ tags (published on ~/tags)
    summary = run_demo(args.output, seconds=args.seconds, rate_hz=args.rate, model_parameters=model,
                       realtime=args.realtime)
    found = ", ".join(f"{name} in {count} frames" for name, count in sorted(summary.anomalies_by_name.items()))
    if summary.paced:
        how = "each once the node had answered the one before (a camera does not wait: --realtime)"
    else:
        how = (f"at {args.rate:g} Hz; only the newest frame is processed, so frames that arrive while one is being "
               "segmented are dropped")
    print(f"\npublished {summary.published} frames, {how}; the node answered {summary.answered}; anomalies: "
          f"{found or 'none'}")
    if summary.resent:
        print(f"sent {summary.resent} frames again: the node's counters showed the first copy never arrived")
    if summary.pipeline_ms is not None:
        print(f"node cost per frame (mean): {summary.pipeline_ms:.0f} ms in the pipeline, "
              f"{summary.output_ms or 0.0:.0f} ms tracking and publishing its outputs")
    print("wrote " + ", ".join(str(path) for path in summary.files))
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return 0 if summary.answered else 1
