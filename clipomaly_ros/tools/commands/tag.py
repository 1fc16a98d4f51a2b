"""``clipomaly tag``: what the RAM++ tagger sees in each image, one JSON line per image."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
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
    return parser


def run(args: argparse.Namespace) -> int:
    """One JSON line per image with its RAM++ tags; ``--scores-out``: every image's probabilities of the released
    tags, (N, T) float32 in the tag list's order (a row of NaN for an image that could not be read)."""
    import numpy as np

    from ...core.images import read_rgb
    from ...core.model.backend import resolve_device
    from ...core.model.tagger import load_tagger, tagger_input

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


def torch_tensor(array, device):
    """A numpy array as a torch tensor on ``device``."""
    import torch

    return torch.from_numpy(array).to(device)


def tag_probabilities(model, tagger_input, image, device):
    """The released tags' probabilities (T,) float32 of one (H, W, 3) RGB uint8 image."""
    import torch

    with torch.inference_mode():
        return model(tagger_input(torch.from_numpy(image).to(device)[None]))[0].float().cpu().numpy()
