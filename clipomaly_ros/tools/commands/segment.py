"""``clipomaly segment``: images to maps, overlays and JSON."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .options import add_model_options, build_pipeline, model_description, positive_float

LOG = logging.getLogger("clipomaly")


def add_parser(subparsers) -> argparse.ArgumentParser:
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
    return parser


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ...core.interrupt import EXIT_INTERRUPTED, GracefulStop

    args.output.mkdir(parents=True, exist_ok=True)
    pipeline = build_pipeline(args)
    LOG.info("model: %s", model_description(pipeline))
    failed = []
    stems: dict[str, int] = {}
    follower = None
    if args.sequence_rate is not None:
        from ...core.scene.planning import AnomalyFollower

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

    from ...core.images import read_rgb
    from ...core.method.overlay import anomaly_label

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


def write_outputs(out_dir: Path, stem: str, image, result) -> None:
    """``<stem>_semantic.png`` (16-bit ids), ``<stem>_score.png`` (16-bit, score x 65535),
    ``<stem>_overlay.png`` and ``<stem>_anomalies.json``; ``image`` is the (H, W, 3) uint8 RGB input."""
    import cv2
    import numpy as np

    from ...core.method.overlay import render_overlay

    cv2.imwrite(str(out_dir / f"{stem}_semantic.png"), result.semantic)
    score = np.round(result.anomaly_score * 65535.0).astype(np.uint16)
    cv2.imwrite(str(out_dir / f"{stem}_score.png"), score)
    overlay = render_overlay(image, result)
    cv2.imwrite(str(out_dir / f"{stem}_overlay.png"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    (out_dir / f"{stem}_anomalies.json").write_text(json.dumps(result.summary(), indent=2) + "\n")
