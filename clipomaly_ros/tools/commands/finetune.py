"""``clipomaly finetune``: low-rank adapters on CLIP's image encoder for the known classes."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_model_options, config_from_args


def add_parser(subparsers) -> argparse.ArgumentParser:
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
    return parser


def run(args: argparse.Namespace) -> int:
    from ...core.interrupt import EXIT_INTERRUPTED
    from ..finetune import FinetuneSettings, finetune

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
