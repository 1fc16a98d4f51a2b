"""The ``clipomaly`` command line tool.

Subcommands: ``segment`` (images to maps, overlays and JSON), ``scene`` (write the toy street scene used in the
docs and tests), ``defaults`` (print a parameter file with every setting at its default); more are added by the
offline-processing tools.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..core.config import BACKENDS, DENSE_METHODS, RUNTIMES, WINDOW_LAYOUTS, ConfigError, default_parameter_file, load_config, split_names
from ..core.images import read_rgb
from ..core.interrupt import EXIT_INTERRUPTED, GracefulStop

LOG = logging.getLogger("clipomaly")

SUBCOMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {}


def subcommand(register: Callable[[argparse._SubParsersAction], None]):
    """Register a function that adds one subparser (with ``set_defaults(run=...)``)."""
    SUBCOMMANDS[register.__name__] = register
    return register


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Options that choose and configure the pipeline; shared by every subcommand that runs it."""
    group = parser.add_argument_group("model (override the parameter file)")
    group.add_argument("--config", type=Path, help="ROS 2 parameter file (default: built-in defaults, the same as "
                                                   "config/clipomaly.yaml)")
    group.add_argument("--backend", choices=BACKENDS, help="open_clip (real CLIP) or toy (colour demo model)")
    group.add_argument("--model", help="open_clip architecture, for example ViT-B-16")
    weights = group.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", help="open_clip pretrained tag (downloaded on first use)")
    weights.add_argument("--checkpoint", help="local weights file, for machines without network")
    weights.add_argument("--random-weights", action="store_true", default=None,
                         help="random weights: smoke test only, the output means nothing")
    group.add_argument("--vocab", help="anomaly vocabulary, comma separated: 'tire,deer,mattress'")
    group.add_argument("--known", help="known classes, comma separated (default: Cityscapes' 19)")
    group.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    group.add_argument("--inference-size", type=int, help="short side in pixels of the working resolution")
    group.add_argument("--dense-method", choices=DENSE_METHODS, help="training-free dense CLIP method (default: "
                                                                     "the parameter file's, scclip)")
    group.add_argument("--window-layout", choices=WINDOW_LAYOUTS, help="official (the method's published sliding "
                                                                       "windows) or light (a quarter of the tokens)")
    group.add_argument("--runtime", choices=RUNTIMES, help="torch, compile (torch.compile) or onnx (ONNX Runtime)")
    group.add_argument("--onnx-model", help="ONNX model for --runtime onnx (written by 'clipomaly export')")
    group.add_argument("--tagger-weights", help="RAM++ checkpoint (ram_plus_swin_large_14m.pth): name anomalies "
                                                "from the frame's tags (with --naming-source tagger or both)")
    group.add_argument("--naming-source", choices=("dictionary", "tagger", "both"),
                       help="candidate names from the naming dictionary, the RAM++ tags, or both (default: tagger "
                            "when --tagger-weights is given, else dictionary)")
    group.add_argument("--tagger-period", type=int, help="frames per camera between tagger runs (default 5)")


def config_from_args(args: argparse.Namespace, **extra):
    """The settings from the parameter file, then the model options given on the command line, then ``extra``."""
    overrides = dict(backend=args.backend, model=args.model, pretrained=args.pretrained, checkpoint=args.checkpoint,
                     random_weights=args.random_weights, anomaly_vocabulary=split_names(args.vocab),
                     known_classes=split_names(args.known), device=args.device, inference_size=args.inference_size,
                     dense_method=args.dense_method, window_layout=args.window_layout, runtime=args.runtime,
                     onnx_model=args.onnx_model, tagger_weights=getattr(args, "tagger_weights", None),
                     naming_source=getattr(args, "naming_source", None),
                     tagger_period=getattr(args, "tagger_period", None))
    if overrides["tagger_weights"] and not overrides["naming_source"]:
        overrides["naming_source"] = "tagger"  # weights given on the command line: the paper's best variant
    overrides.update(extra)
    return load_config(args.config, **overrides)


def build_pipeline(args: argparse.Namespace):
    """A :class:`Clipomaly` from the parameter file and the command line overrides."""
    from ..core.method.pipeline import Clipomaly

    return Clipomaly(config_from_args(args), progress=True)


def write_json(path: Path | None, report: dict) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}")


def write_outputs(out_dir: Path, stem: str, image: np.ndarray, result) -> None:
    """``<stem>_semantic.png`` (16-bit ids), ``<stem>_score.png`` (16-bit, score x 65535),
    ``<stem>_overlay.png`` and ``<stem>_anomalies.json``."""
    import cv2

    from ..core.method.overlay import render_overlay

    cv2.imwrite(str(out_dir / f"{stem}_semantic.png"), result.semantic)
    score = np.round(result.anomaly_score * 65535.0).astype(np.uint16)
    cv2.imwrite(str(out_dir / f"{stem}_score.png"), score)
    overlay = render_overlay(image, result)
    cv2.imwrite(str(out_dir / f"{stem}_overlay.png"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    (out_dir / f"{stem}_anomalies.json").write_text(json.dumps(result.summary(), indent=2) + "\n")


def run_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    args.output.mkdir(parents=True, exist_ok=True)
    pipeline = build_pipeline(args)
    LOG.info("model: %s", getattr(pipeline.backend, "description", pipeline.backend.identity))
    failed = []
    stems: dict[str, int] = {}
    follower = None
    if args.sequence_rate is not None:
        from ..core.scene.planning import AnomalyFollower

        follower = AnomalyFollower(pipeline.name_embeddings)
    done, interrupted = 0, False
    with GracefulStop(tqdm.write) as stop:
        for index, path in enumerate(tqdm(args.images, unit="image", disable=len(args.images) < 2)):
            if stop.requested:
                interrupted = True
                break
            done += _segment_one(args, pipeline, follower, index, path, stems, failed)
    if interrupted:
        print(f"interrupted after {done + len(failed)} of {len(args.images)} images; the outputs of the {done} "
              f"segmented ones are complete in {args.output}")
        return EXIT_INTERRUPTED
    print(f"segmented {done} of {len(args.images)} images into {args.output}" +
          (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _segment_one(args, pipeline, follower, index: int, path: Path, stems: dict[str, int], failed: list[str]) -> int:
    """Segment one image of ``clipomaly segment`` and write its outputs; 1 when done, 0 when it failed (its path
    appended to ``failed``)."""
    from tqdm import tqdm

    from ..core.method.overlay import anomaly_label

    try:
        image = read_rgb(path)
        result = pipeline(image)
    except ValueError as error:
        failed.append(str(path))
        tqdm.write(f"error: {error}", file=sys.stderr)
        return 0
    if follower is not None:  # a failed image still takes its place in time
        follower.update(result, round(index * 1e9 / args.sequence_rate), pipeline.config)
    stem = path.stem
    stems[stem] = stems.get(stem, 0) + 1
    if stems[stem] > 1:  # two inputs with one name must not overwrite each other
        stem = f"{stem}_{stems[stem]}"
    write_outputs(args.output, stem, image, result)
    names = ", ".join(anomaly_label(a) for a in result.anomalies) or "none"
    tqdm.write(f"{path}: {len(result.anomalies)} anomalies: {names}; {result.timings_ms['total']:.0f} ms")
    return 1


@subcommand
def segment(subparsers) -> None:
    parser = subparsers.add_parser("segment", help="segment images and name their anomalies",
                                   description="For each image write <stem>_semantic.png (16-bit class ids), "
                                               "<stem>_score.png (16-bit, anomaly score x 65535), "
                                               "<stem>_overlay.png and <stem>_anomalies.json.")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT_DIR")
    parser.add_argument("--sequence-rate", type=positive_float, metavar="HZ",
                        help="the images, in the order given, are frames of one camera at HZ: track their anomalies "
                             "(track ids in the JSON and overlays)")
    add_model_options(parser)
    parser.set_defaults(run=run_segment)


def run_tag(args: argparse.Namespace) -> int:
    """One JSON line per image with its RAM++ tags; ``--scores-out``: every image's probabilities of the released
    tags, (N, T) float32 in the tag list's order (a row of NaN for an image that could not be read)."""
    from ..core.images import read_rgb
    from ..core.model.backend import resolve_device
    from ..core.model.tagger import load_tagger, tagger_input

    device = resolve_device(args.device or "auto")
    model = load_tagger(args.tagger_weights, device=device)
    names, thresholds = model.tags.names, torch_tensor(model.tags.thresholds, device)
    rows, failed = [], 0
    for path in args.images:
        try:
            image = read_rgb(path)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            failed += 1
            rows.append(np.full(len(names), np.nan, dtype=np.float32))
            continue
        probabilities = tag_probabilities(model, tagger_input, image, device)
        fired = np.flatnonzero(probabilities > thresholds.cpu().numpy())
        fired = fired[np.argsort(-probabilities[fired], kind="stable")]
        print(json.dumps({"image": str(path), "tags": [names[i] for i in fired],
                          "scores": {names[i]: round(float(probabilities[i]), 4) for i in fired}}))
        rows.append(probabilities)
    if args.scores_out:
        args.scores_out.parent.mkdir(parents=True, exist_ok=True)
        np.save(args.scores_out, np.stack(rows).astype(np.float32))
        print(f"wrote {args.scores_out}", file=sys.stderr)
    return 1 if failed else 0


def torch_tensor(array: np.ndarray, device):
    import torch

    return torch.from_numpy(array).to(device)


def tag_probabilities(model, tagger_input, image: np.ndarray, device) -> np.ndarray:
    """The released tags' probabilities (T,) float32 of one RGB uint8 image."""
    import torch

    with torch.inference_mode():
        return model(tagger_input(torch.from_numpy(image).to(device)[None]))[0].float().cpu().numpy()


@subcommand
def tag(subparsers) -> None:
    parser = subparsers.add_parser("tag", help="tag images with RAM++ (what the tagger naming source sees)",
                                   description="Prints one JSON line per image: {\"image\": ..., \"tags\": [...], "
                                               "\"scores\": {...}}, the tags above their released thresholds, best "
                                               "first. An unreadable image is one error line; the others go on and "
                                               "the exit status is 1.")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    parser.add_argument("--tagger-weights", required=True, help="RAM++ checkpoint (ram_plus_swin_large_14m.pth)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--scores-out", type=Path, metavar="OUT.npy",
                        help="also write every image's probabilities of the 4,585 released tags, (N, 4585) float32 "
                             "in the tag list's order")
    parser.set_defaults(run=run_tag)


def run_scene(args: argparse.Namespace) -> int:
    import cv2

    from .scenes import render_street_scene

    image, _ = render_street_scene(args.height, args.width, planted=args.object)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.output), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise ValueError(f"could not write {args.output}: use a .png or .jpg name in a writable folder")
    print(f"wrote {args.output} ({args.width}x{args.height}, planted object: {args.object})")
    return 0


@subcommand
def scene(subparsers) -> None:
    from ..core.model.toy_backend import TOY_LEXICON

    parser = subparsers.add_parser("scene", help="write a synthetic street scene with a planted object (for "
                                                 "trying the toy backend)")
    parser.add_argument("output", type=Path, metavar="OUT.png")
    parser.add_argument("--object", default="mattress", choices=sorted(TOY_LEXICON), help="the planted object")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.set_defaults(run=run_scene)


def run_dataset(args: argparse.Namespace) -> int:
    from .scenes import write_street_dataset

    if args.count < 1 or args.width < 16 or args.height < 16:
        raise ValueError("--count must be at least 1 and --width/--height at least 16")
    write_street_dataset(args.output, args.count, args.height, args.width, args.seed, args.object)
    print(f"wrote {args.count} labelled street scenes ({args.width}x{args.height}) to {args.output}/images and "
          f"{args.output}/labels (Cityscapes trainIds{'; the planted ' + args.object + ' is 255' if args.object else ''})")
    return 0


@subcommand
def dataset(subparsers) -> None:
    from ..core.model.toy_backend import TOY_LEXICON

    parser = subparsers.add_parser("dataset", help="write synthetic street scenes with pixel labels (images/ + "
                                                   "labels/, for trying finetune and evaluate)")
    parser.add_argument("output", type=Path, metavar="OUT_DIR")
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="another seed gives other scenes (held-out sets)")
    parser.add_argument("--object", choices=sorted(TOY_LEXICON), help="plant this object in each scene (label 255)")
    parser.set_defaults(run=run_dataset)


def run_finetune(args: argparse.Namespace) -> int:
    from .finetune import FinetuneSettings, finetune

    config = config_from_args(args)
    settings = FinetuneSettings(
        data=args.data, output=args.output, val=args.val, steps=args.steps, batch_size=args.batch_size,
        accumulate=args.accumulate, crop=args.crop, lr=args.lr, weight_decay=args.weight_decay,
        preserve=args.preserve, warmup=args.warmup,
        rank=args.rank, val_every=args.val_every, val_limit=args.val_limit, save_every=args.save_every,
        stop_after=args.stop_after, workers=args.workers, seed=args.seed, resume=args.resume)
    report = finetune(config, settings)
    if report.start_val_miou is not None:
        print(f"validation mIoU: {100 * report.start_val_miou:.1f} % before, {100 * report.final_val_miou:.1f} % "
              "after")
    how = "interrupted" if report.interrupted else "stopped"
    last_step = report.history[-1]["step"] if report.history else 0
    print(f"{report.images_per_second:.1f} training images/s; "
          + ("finished" if report.finished else f"{how} at step {last_step} (--resume {args.output} continues)"))
    print("wrote " + ", ".join(str(path) for path in report.files))
    return EXIT_INTERRUPTED if report.interrupted else 0


@subcommand
def finetune(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune", help="fine-tune CLIP's image encoder for segmentation on the known classes (text tower "
                         "frozen: the open vocabulary stays)",
        description="Train low-rank adapters on the query and value projections of the image encoder with the "
                    "pipeline's dense features against the known classes' text embeddings. DATA: images/ + "
                    "labels/ (trainIds of known_classes, 255 ignored) or Cityscapes' leftImg8bit/ + gtFine/. "
                    "Writes OUT.pt (open_clip weights), OUT.json (sidecar), OUT.csv and OUT.png.")
    parser.add_argument("data", type=Path, metavar="DATA")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.pt")
    parser.add_argument("--val", type=Path, metavar="DATA", help="held-out data for the validation mIoU")
    parser.add_argument("--steps", type=int, default=2000, help="optimiser steps (default 2000)")
    parser.add_argument("--batch-size", type=int, default=8, help="crops per micro-batch (default 8)")
    parser.add_argument("--accumulate", type=int, default=1, help="micro-batches per step (gradient accumulation)")
    parser.add_argument("--crop", type=int, default=0, help="crop side in pixels (default: the model's window)")
    parser.add_argument("--lr", type=float, default=5e-4, help="peak learning rate of AdamW (default 5e-4)")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--preserve", type=float, default=1.0,
                        help="weight of keeping the original features on unlabelled (255) patches, so objects no "
                             "label covers can still be named (default 1; 0 = cross-entropy only)")
    parser.add_argument("--warmup", type=int, help="warm-up steps (default 5 %% of --steps)")
    parser.add_argument("--rank", type=int, default=16, help="rank of the query and value adapters (default 16)")
    parser.add_argument("--val-every", type=int, default=0, help="steps between validations (default: a fifth)")
    parser.add_argument("--val-limit", type=int, default=0, help="validate on the first N images only")
    parser.add_argument("--save-every", type=int, default=0, help="steps between checkpoints (default: a fifth)")
    parser.add_argument("--stop-after", type=int, default=0, help="end this run after step N (resume later)")
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", type=Path, metavar="OUT.pt", help="continue the run saved in this file")
    add_model_options(parser)
    parser.set_defaults(run=run_finetune)


def run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

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


@subcommand
def demo(subparsers) -> None:
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
    parser.set_defaults(run=run_demo)


def run_play(args: argparse.Namespace) -> int:
    from ..ros.player import play

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


@subcommand
def play(subparsers) -> None:
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
    parser.set_defaults(run=run_play)


def run_replay(args: argparse.Namespace) -> int:
    from .replay import replay

    pipeline = build_pipeline(args)
    summary = replay(pipeline, args.bag, args.output, image_topic=args.image_topic, namespace=args.namespace,
                     storage=args.storage, overlay=not args.no_overlay, camera_info_topic=args.camera_info_topic)
    print(summary.text())
    print(f"wrote {args.output}")
    if summary.interrupted_at is not None:
        return EXIT_INTERRUPTED
    return 1 if summary.failed else 0


@subcommand
def replay(subparsers) -> None:
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
    parser.set_defaults(run=run_replay)


def run_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate, find_samples, format_report

    from ..core.datasets import dataset_ground_locator

    samples = find_samples(args.dataset, args.limit)
    locator = dataset_ground_locator(args.dataset)
    pipeline = build_pipeline(args)
    report = evaluate(pipeline, samples, anomaly_id=args.anomaly_id, ignore_id=args.ignore_id,
                      known_classes_miou=args.known_classes_miou, plots=args.plots, locator=locator)
    report["config"] = {k: v for k, v in pipeline.config.as_dict().items()
                        if k in ("backend", "model", "pretrained", "checkpoint", "random_weights", "dense_method",
                                 "inference_size", "uncertainty_threshold", "logit_scale")}
    print(format_report(report))
    write_json(args.json, report)
    return 0


@subcommand
def evaluate(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="score the pipeline on images/ and labels/ (pixel and "
                                                    "component metrics, or known-class mIoU)")
    parser.add_argument("dataset", type=Path, metavar="DATASET_DIR")
    parser.add_argument("--anomaly-id", type=int, default=1, help="label value of anomaly pixels (default 1)")
    parser.add_argument("--ignore-id", type=int, default=255, help="label value of ignored pixels (default 255)")
    parser.add_argument("--known-classes-miou", action="store_true",
                        help="labels are trainIds of the known classes (Cityscapes-style): report IoU per class")
    parser.add_argument("--json", type=Path, help="also write the report as JSON")
    parser.add_argument("--plots", type=Path, metavar="DIR", help="write precision_recall.png, "
                                                                  "score_histogram.png and instance_recall.png "
                                                                  "(anomaly mode) into DIR")
    parser.add_argument("--limit", type=int, help="only the first N images")
    add_model_options(parser)
    parser.set_defaults(run=run_evaluate)


def number_list(kind: type) -> Callable[[str], tuple]:
    """An argparse type for ``"0.3,0.4"``: a tuple of ``kind`` (int or float)."""

    def parse(text: str) -> tuple:
        try:
            return tuple(kind(part) for part in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: give {'whole ' if kind is int else ''}numbers separated "
                                             "by commas") from None

    return parse


def run_calibrate(args: argparse.Namespace) -> int:
    from .calibration import SearchSpace, calibrate, format_report, read_frames, write_outputs
    from .evaluation import find_samples

    space = SearchSpace(**{name: value for name, value in (
        ("thresholds", args.thresholds), ("areas", args.areas), ("radii", args.radii),
        ("crop_weights", args.crop_weights)) if value is not None})
    frames = read_frames(find_samples(args.dataset, args.limit), args.anomaly_id, args.ignore_id)
    val_frames = (read_frames(find_samples(args.val, args.limit), args.anomaly_id, args.ignore_id)
                  if args.val else None)
    pipeline = build_pipeline(args)
    report = calibrate(pipeline, frames, args.objective, space, data=str(args.dataset), val_frames=val_frames,
                       val_data=str(args.val or ""), memory_budget_mb=args.memory_budget)
    identity = getattr(pipeline.backend, "description", pipeline.backend.identity)
    written = write_outputs(report, pipeline.config, identity, args.output, args.plots)
    print(format_report(report))
    if not args.val:
        print("no --val: the figures are on the data searched; give held-out frames to see what the settings do "
              "on data they were not chosen on")
    print("wrote " + ", ".join(map(str, written)))
    return 0


@subcommand
def calibrate(subparsers) -> None:
    from .calibration import OBJECTIVES

    parser = subparsers.add_parser(
        "calibrate", help="choose the thresholds for your weights from labelled frames (writes a parameter file)",
        description="Searches uncertainty_threshold, min_region_area, cleanup_radius and crop_weight on DATA "
                    "(images/ + labels/, as evaluate reads) for the --objective, with the dense features computed "
                    "once per image; writes OUT.yaml (a parameter file for the node and every command) and OUT.json "
                    "(the whole search). The current settings are always a candidate and win ties; another setting "
                    "is chosen only when it beats them by more than the noise margin (the spread over 200 bootstrap "
                    "resamples of the frames), and the output says which happened.")
    parser.add_argument("dataset", type=Path, metavar="DATA")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="TUNED.yaml")
    parser.add_argument("--objective", choices=tuple(OBJECTIVES), default="f1",
                        help="f1 or siou (component level; default f1), ap or fpr95 (pixel level, on the published "
                             "continuous score: no searched setting changes them, so the current values are kept "
                             "and the run says so)")
    parser.add_argument("--val", type=Path, metavar="DATA2", help="held-out frames: the chosen settings' figures "
                                                                  "on data the search did not see (refused when "
                                                                  "an image of it is also in DATA)")
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
                        help="what the run keeps in memory, in MB: images, labels, known-class scores and dense "
                             "features (default 2048); frames beyond it are read again from their files and the "
                             "disk cache for each setting (slower, same result)")
    add_model_options(parser)
    parser.set_defaults(run=run_calibrate)


def run_bench(args: argparse.Namespace) -> int:
    from .bench import format_bench, run_bench

    random_weights = None if (args.checkpoint or args.pretrained) else True
    if args.mining is not None:
        from .mining.scaling import format_scaling, mining_scaling

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


@subcommand
def bench(subparsers) -> None:
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
    parser.set_defaults(run=run_bench)


def run_export_tagger(args: argparse.Namespace) -> int:
    """``clipomaly export --tagger``: the RAM++ tagger as ONNX, checked against eager PyTorch on the CPU."""
    import importlib.util

    import torch

    from ..core.model.tagger import OnnxTagger, export_tagger, load_tagger, tagger_digest

    if not args.tagger_weights:
        raise ValueError("export --tagger needs --tagger-weights (the RAM++ checkpoint)")
    if args.dtype != "fp32":
        raise ValueError("export --tagger writes fp32 only (ONNX Runtime's GPU provider runs it as it is)")
    model = load_tagger(args.tagger_weights)
    path = export_tagger(model, args.output)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MB): RAM++ with {len(model.tags.names)} tags, weights "
          f"{tagger_digest(model)}. Run it with runtime: onnx, tagger_onnx_model: {path}")
    if importlib.util.find_spec("onnxruntime") is None:
        print("not checked against eager PyTorch: onnxruntime is not installed")
        return 0
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, model.image_size, model.image_size, generator=generator)
    open_set = torch.nn.functional.normalize(torch.randn(1, model.architecture.width, generator=generator), dim=-1)
    with torch.inference_mode():
        eager = model.probabilities(images, open_set)
    worst = float((OnnxTagger(path, model, torch.device("cpu"))(images, open_set) - eager).abs().max())
    print(f"check: ONNX Runtime (CPU) against eager PyTorch on 2 random inputs, max |dp| {worst:.2e}")
    return 0 if worst <= 1e-4 else 1


def run_export(args: argparse.Namespace) -> int:
    import torch

    from ..core.model.export import describe_graph, export_onnx
    from ..core.model.open_clip_backend import OpenClipBackend

    if args.tagger:
        return run_export_tagger(args)
    config = config_from_args(args, runtime="torch")  # the export itself traces the eager graph
    if config.backend != "open_clip":
        raise ValueError("export needs the open_clip backend (--backend open_clip): the toy backend has no network")
    backend = OpenClipBackend(config, precision=args.dtype)
    spec = describe_graph(config.model, backend.encoder, backend.window)
    path = export_onnx(backend.encoder, spec, args.output)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MB): {spec.model}, weights {spec.weights}, dense method "
          f"{spec.dense_method}, window {spec.window}, {args.dtype}. Run it with runtime: onnx, onnx_model: {path}")
    if args.dtype == "fp32":
        import importlib.util

        from ..core.model.runtimes import OnnxGraphRuntime

        if importlib.util.find_spec("onnxruntime") is None:
            print("not checked against eager PyTorch: onnxruntime is not installed")
            return 0
        engine = OnnxGraphRuntime(path, spec, torch.device("cpu"), config.cache_path)
        windows = torch.rand(2, 3, spec.window, spec.window, generator=torch.Generator().manual_seed(0)) * 255
        with torch.inference_mode():
            eager = backend.encoder.forward_pixels(windows.to(backend.device))[1].float().cpu()
        cosine = torch.nn.functional.cosine_similarity(engine.dense(windows), eager, dim=-1).min()
        print(f"check: ONNX Runtime (CPU) against eager PyTorch on 2 random windows, per-patch cosine >= "
              f"{float(cosine):.6f}")
    return 0


@subcommand
def export(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="write the dense image encoder as ONNX (for runtime: onnx, TensorRT or a Jetson)",
        description="Writes the configured dense method's window encoder (windows of RGB pixels in; CLIP's pooled "
                    "embedding and the per-patch features out; batch size dynamic; opset 18; attention as matmul "
                    "and softmax) with metadata that ties it to the model, its weights, the dense method and the "
                    "window. An fp32 export is checked against eager PyTorch with ONNX Runtime when installed.")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the .onnx file to write")
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32",
                        help="precision of the weights and the input (fp16 for TensorRT on a GPU; LayerNorm and "
                             "softmax stay fp32 inside)")
    parser.add_argument("--tagger", action="store_true",
                        help="write the RAM++ tagger of --tagger-weights instead (normalised 384 x 384 images and "
                             "open-set name embeddings in, tag probabilities out; checked against eager PyTorch)")
    add_model_options(parser)
    parser.set_defaults(run=run_export)


def run_mine(args: argparse.Namespace) -> int:
    from .mining import EXIT_NOT_STARTED, MineError, failure_line, run_mine as mine

    topics = split_names(args.topics) if args.topics else None
    try:
        result = mine(args.inputs, args.output, config_from_args(args), topics=list(topics) if topics else None,
                      rate_hz=args.rate, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                      address=args.address, window_s=args.window, progress=not args.no_progress,
                      retries=args.retries, force_new=args.force_new)
    except MineError as error:
        print(f"clipomaly: error: {error}", file=sys.stderr)
        return EXIT_NOT_STARTED
    print(result.table)
    print(f"wrote {args.output}/anomalies.parquet, thumbnails/, summary.json and report.html")
    last = failure_line(result.summary)
    if last:
        print(last)
    return result.exit_code


@subcommand
def mine(subparsers) -> None:
    parser = subparsers.add_parser(
        "mine", help="find anomalies in many recorded drives with Ray Data (one machine or a cluster)",
        description="Cut bags into shards (one bag, one image topic, one time window), mine them on a Ray Data "
                    "actor pool with one model per worker, and write a Parquet index, thumbnails, summary.json and "
                    "report.html from every shard committed in OUT_DIR. A shard is committed whole or not at all; "
                    "one that raises (an I/O error, out of memory, a lost worker) is tried again --retries times, "
                    "then reported as failed and left for the next run. Shards already committed are not mined "
                    "again: after an interruption or a failure, run the same command. A bag whose file ends early "
                    "(rosbags finds it cut) keeps its rows up to the cut, marked truncated in summary.json.",
        epilog="exit status: 0 every planned shard committed; 1 some input, bag or shard failed (the last line "
               "names them); 2 the run could not start (Ray, the model, the settings, or an OUT_DIR mined with "
               "other settings)")
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
                        help="attempts after the first at a shard that raised, 1 s apart and doubling (default 2)")
    parser.add_argument("--force-new", action="store_true",
                        help="delete the outputs of an earlier run in OUT_DIR (shards, index, thumbnails, summary, "
                             "report) and start afresh, even with other settings")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_options(parser)
    parser.set_defaults(run=run_mine)


@subcommand
def defaults(subparsers) -> None:
    parser = subparsers.add_parser("defaults", help="print a parameter file with every setting at its default")
    parser.set_defaults(run=lambda args: print(default_parameter_file(), end="") or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipomaly", description="Find, segment and name road anomalies with "
                                                                   "CLIP (Clipomaly).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for register in SUBCOMMANDS.values():
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if not args.verbose:  # libraries (open_clip) say only what went wrong; our own loggers say what they do
        logging.getLogger().handlers[0].addFilter(
            lambda record: record.levelno >= logging.WARNING or record.name.startswith("clipomaly"))
    from ..core.model.backend import ModelLoadError
    from ..core.method.vocabulary import VocabularyError
    from ..ros.bags import BagError
    from .calibration import CalibrationError
    from .demo import DemoError
    from .metrics import MetricError

    try:
        return args.run(args)
    except ModelLoadError as error:
        print(f"clipomaly: error: {error.render('cli')}", file=sys.stderr)
        return 2
    except (ConfigError, VocabularyError, BagError, MetricError, DemoError, CalibrationError,
            ValueError) as error:
        print(f"clipomaly: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clipomaly: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
