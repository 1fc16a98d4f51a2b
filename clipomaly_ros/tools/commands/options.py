"""What several verbs share: the model options and the settings they make, argparse types, and the JSON report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

from ...core.config import BACKENDS, DENSE_METHODS, RUNTIMES, WINDOW_LAYOUTS, load_config, split_names


def positive_float(text: str) -> float:
    """An argparse type: a number above 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def number_list(kind: type) -> Callable[[str], tuple]:
    """An argparse type for ``"0.3,0.4"``: a tuple of ``kind`` (int or float)."""

    def parse(text: str) -> tuple:
        try:
            return tuple(kind(part) for part in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: give {'whole ' if kind is int else ''}numbers separated "
                                             "by commas") from None

    return parse


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
    from ...core.method.pipeline import Clipomaly

    return Clipomaly(config_from_args(args), progress=True)


def model_description(pipeline) -> str:
    """The pipeline's model in words, for the output and the reports."""
    return getattr(pipeline.backend, "description", pipeline.backend.identity)


def write_json(path: Path | None, report: dict) -> None:
    """Write ``report`` as indented JSON to ``path`` (its folder made) and say so; nothing when ``path`` is None."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}")
