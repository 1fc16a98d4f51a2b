"""``clipomaly finetune``: the paper's CLIP, fine-tuned for segmentation on the known classes, open vocabulary kept.

The pipeline's own dense features (the configured dense method) of random crops are compared with the frozen
text embeddings of the known classes (the inference prompt ensemble) and give per-pixel logits; a per-pixel
cross-entropy against the labels (trainIds, 255 ignored) trains low-rank adapters on the query and value
projections of every image-encoder block (:mod:`~clipomaly_ros.core.model.adaptation`); everything else, the text
tower above all, stays frozen.

The run is reproducible and resumable: the crop for data position p (step s covers positions
``s * batch * accumulate`` onwards) depends only on the seed and p, so a run resumed from a checkpoint sees the
same crops, and the checkpoint holds the step, adapters, optimiser, schedule, loss scaler and random state.

Files written next to ``OUT.pt``: ``OUT.pt`` itself (``{"state_dict": merged weights, "clipomaly_training":
resume state}``, which open_clip loads like any checkpoint), ``OUT.json`` (the sidecar), ``OUT.csv`` (one row per
step) and ``OUT.png`` (loss and validation curves).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..core.model.adaptation import add_query_value_adapters, adapter_state, load_adapter_state, merged_state_dict, sidecar_path
from ..core.config import ClipomalyConfig
from ..core.datasets import Sample, find_samples, read_label
from ..core.model.dense import DenseVisionEncoder
from ..core.images import read_rgb
from ..core.method.unknown import class_logits, resample
from ..core.interrupt import GracefulStop
from .metrics import ConfusionMatrix

IGNORE = 255


class FinetuneError(ValueError):
    """Training data or settings that cannot be used; the message says what is wrong and what to do."""


@dataclass
class FinetuneSettings:
    """How to train. ``crop`` 0 = the model's native window; ``warmup`` steps of linear warm-up (None: 5 % of
    the steps), then cosine decay to 0 at ``steps``; ``val_every``/``save_every`` 0 = a fifth of the steps; ``stop_after`` 0 = run to
    ``steps`` (else end this run after that step, resumable); ``scale`` the range of random rescaling around the
    working resolution."""

    data: Path
    output: Path
    val: Path | None = None
    steps: int = 2000
    batch_size: int = 8
    accumulate: int = 1
    crop: int = 0
    lr: float = 5e-4
    weight_decay: float = 0.01
    preserve: float = 1.0
    warmup: int | None = None
    rank: int = 16
    alpha: float = 16.0
    scale: tuple[float, float] = (0.5, 2.0)
    val_every: int = 0
    val_limit: int = 0
    save_every: int = 0
    stop_after: int = 0
    workers: int = 2
    seed: int = 0
    resume: Path | None = None

    def __post_init__(self):
        for name in ("steps", "batch_size", "accumulate", "rank"):
            if getattr(self, name) < 1:
                raise FinetuneError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.weight_decay < 0 or self.preserve < 0 or not 0 < self.scale[0] <= self.scale[1]:
            raise FinetuneError("--lr must be above 0, --weight-decay and --preserve at least 0 and the scale range "
                                "increasing")
        if min(self.crop, self.warmup or 0, self.val_every, self.save_every, self.stop_after, self.val_limit,
               self.workers) < 0:
            raise FinetuneError("--crop, --warmup, --val-every, --save-every, --stop-after, --val-limit and "
                                "--workers cannot be negative")
        if self.warmup is None:
            self.warmup = max(1, self.steps // 20)
        period = max(1, self.steps // 5)
        self.val_every = self.val_every or period
        self.save_every = self.save_every or period


class WarmupCosine:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""

    def __init__(self, warmup: int, total: int):
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# --- data -------------------------------------------------------------------------------------------------------

def check_samples(samples: list[Sample], classes: int, what: str) -> None:
    """Every label is the size of its image and holds only trainIds below ``classes`` or 255; raises
    :class:`FinetuneError` naming the first files that do not."""
    from PIL import Image
    from tqdm import tqdm

    bad_values, bad_sizes = [], []
    for sample in tqdm(samples, desc=f"checking {what} labels", unit="label", leave=False):
        label = read_label(sample.label)
        values = np.unique(label)
        wrong = values[(values >= classes) & (values != IGNORE)]
        if wrong.size:
            bad_values.append(f"{sample.label.name} ({', '.join(map(str, wrong[:5].tolist()))})")
        with Image.open(sample.image) as image:
            if image.size != (label.shape[1], label.shape[0]):
                bad_sizes.append(f"{sample.stem} (image {image.size[0]}x{image.size[1]}, label "
                                 f"{label.shape[1]}x{label.shape[0]})")
    if bad_values:
        raise FinetuneError(f"{what}: labels outside the known classes' ids 0..{classes - 1} (and {IGNORE}, "
                            f"ignored): {'; '.join(bad_values[:5])}{' ...' if len(bad_values) > 5 else ''}. Labels "
                            "are trainIds of known_classes, in their order (for Cityscapes the "
                            "*_gtFine_labelTrainIds.png files); mark other pixels 255")
    if bad_sizes:
        raise FinetuneError(f"{what}: labels of another size than their image: {'; '.join(bad_sizes[:5])}")


class RandomCrops(torch.utils.data.Dataset):
    """Data position -> ``(pixels (3, S, S) float 0..255, labels (S, S) int64)``: a sample (each epoch a new
    permutation), rescaled so its short side is ``short_side`` times a random factor in ``scale``, flipped
    left-right half of the time, and cropped at random (padded with ignored pixels where smaller). Deterministic
    in (seed, position)."""

    def __init__(self, samples: list[Sample], crop: int, short_side: int, scale: tuple[float, float], seed: int):
        self.samples, self.crop, self.short_side, self.scale, self.seed = samples, crop, short_side, scale, seed

    def __len__(self) -> int:
        return 2**62  # positions, not samples: any position is valid

    def __getitem__(self, position: int):
        count = len(self.samples)
        epoch, offset = divmod(position, count)
        sample = self.samples[np.random.default_rng([self.seed, epoch]).permutation(count)[offset]]
        rng = np.random.default_rng([self.seed, 1_000_003, position])
        image, label = read_rgb(sample.image), read_label(sample.label)
        factor = self.short_side / min(image.shape[:2]) * rng.uniform(*self.scale)
        size = (max(1, round(image.shape[1] * factor)), max(1, round(image.shape[0] * factor)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
        if rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        pad_y, pad_x = max(0, self.crop - image.shape[0]), max(0, self.crop - image.shape[1])
        if pad_y or pad_x:
            image = cv2.copyMakeBorder(np.ascontiguousarray(image), 0, pad_y, 0, pad_x, cv2.BORDER_CONSTANT, value=0)
            label = cv2.copyMakeBorder(np.ascontiguousarray(label), 0, pad_y, 0, pad_x, cv2.BORDER_CONSTANT,
                                       value=IGNORE)
        top = int(rng.integers(0, image.shape[0] - self.crop + 1))
        left = int(rng.integers(0, image.shape[1] - self.crop + 1))
        image = image[top:top + self.crop, left:left + self.crop]
        label = label[top:top + self.crop, left:left + self.crop]
        return (torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float(),
                torch.from_numpy(np.ascontiguousarray(label)).long())


# --- model ------------------------------------------------------------------------------------------------------

def crop_features(encoder, pixels: torch.Tensor) -> torch.Tensor:
    """Unit patch features ``(B, h, w, D)`` of crops ``(B, 3, S, S)`` (0..255 pixels), by the dense method."""
    _, patches = encoder.forward_patches(encoder.embed_pixels(pixels))
    return F.normalize(patches.float(), dim=-1)


def crop_logits(features: torch.Tensor, text: torch.Tensor, logit_scale: float, size: tuple[int, int]) -> torch.Tensor:
    """``(B, K, S, S)``: known-class logits of patch features ``(B, h, w, D)`` against the ``(K, D)`` text
    embeddings, bilinearly upsampled to the crop ``size``, as inference does."""
    logits = logit_scale * features @ text.T
    return F.interpolate(logits.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False)


def preservation_loss(features: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - cosine`` between the trained and the original features ``(B, h, w, D)`` on the patches whose
    pixels are mostly unlabelled (255 in ``labels`` ``(B, S, S)``): what the known classes do not cover keeps
    its place in the shared space, so objects never labelled can still be named. 0 without such patches."""
    height, width = features.shape[1:3]
    unlabelled = F.adaptive_avg_pool2d((labels == IGNORE).float()[:, None], (height, width))[:, 0] > 0.5
    if not unlabelled.any():
        return features.sum() * 0.0
    return (1.0 - (features * reference).sum(dim=-1))[unlabelled].mean()


def validate(backend, text: torch.Tensor, samples: list[Sample], logit_scale: float) -> float:
    """Known-class mIoU on ``samples``, segmented as the pipeline does (sliding windows at the working
    resolution, the dense method, logits resampled to the label's size)."""
    confusion = ConfusionMatrix(text.shape[0])
    for sample in samples:
        image, label = read_rgb(sample.image), read_label(sample.label)
        (features,) = backend.dense_features_batch([image])
        logits = resample(class_logits(features.grid, text, logit_scale), label.shape)
        confusion.add(logits.argmax(dim=0).cpu().numpy(), label, IGNORE)
    return float(np.nanmean(confusion.iou()))


# --- the run ----------------------------------------------------------------------------------------------------

@dataclass
class FinetuneReport:
    """What a run did: ``history`` rows (step, loss, lr, images_per_s, val_miou), the first and last
    validation mIoU, the trainable parameter count and the files written."""

    history: list[dict] = field(default_factory=list)
    start_val_miou: float | None = None
    final_val_miou: float | None = None
    trainable_parameters: int = 0
    images_per_second: float = 0.0
    files: list[Path] = field(default_factory=list)
    finished: bool = False
    interrupted: bool = False
    """Ctrl-C or SIGTERM ended the run between two steps; the files hold that step's resumable state."""


class Training:
    """One fine-tuning run's state (see :func:`finetune`): the backend with its adapters, the frozen text embeddings
    of the known classes, the frozen copy of the starting image encoder (with ``preserve``), the optimiser, its
    schedule and the loss scaler."""

    def __init__(self, config: ClipomalyConfig, settings: FinetuneSettings):
        from ..core.method.vocabulary import TextEmbedder
        from ..core.model.open_clip_backend import OpenClipBackend

        self.config, self.settings = config, settings
        torch.manual_seed(settings.seed)
        backend = self.backend = OpenClipBackend(config, precision="fp32")
        self.device = backend.device
        # a copy made outside inference mode: the embeddings are constants of the graph, not inference tensors
        self.text = TextEmbedder(backend, config.prompt_templates).embed(list(config.known_classes)).float().clone()
        self.text_before = {k: v.clone() for k, v in backend.model.state_dict().items()
                            if not k.startswith("visual.")}
        self.original = None
        if settings.preserve > 0:  # a frozen copy of the starting image encoder gives the features to keep
            self.original = DenseVisionEncoder(copy.deepcopy(backend.model.visual),
                                               config.dense_method).requires_grad_(False)
            self.original.normalise_pixels(backend.mean, backend.std)
        self.trainable = add_query_value_adapters(backend.model.visual, settings.rank, settings.alpha)
        self.crop = settings.crop or backend.window
        patch = backend.encoder.patch_size[0]
        if self.crop % patch:
            raise FinetuneError(f"--crop {self.crop} must be a multiple of the model's patch size {patch}")
        self.optimizer = torch.optim.AdamW(self.trainable, lr=settings.lr, weight_decay=settings.weight_decay)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, WarmupCosine(settings.warmup,
                                                                                       settings.steps))
        self.amp_dtype = None
        if self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.trainable)

    def describe(self, images: int) -> str:
        settings = self.settings
        return (f"training {self.parameters:,} adapter parameters (rank {settings.rank}, query and value of "
                f"{len(self.trainable) // 4} blocks) on {images} images, {self.crop}x{self.crop} crops, batch "
                f"{settings.batch_size} x {settings.accumulate}, {settings.steps} steps on {self.device}"
                + (f" with {str(self.amp_dtype).split('.')[-1]} autocast" if self.amp_dtype else ""))

    def resume(self, resumed: dict, report: FinetuneReport) -> int:
        """The adapters, optimiser, schedule, scaler, random state and history of a saved step; returns the step."""
        load_adapter_state(self.backend.model.visual, resumed["adapters"])
        self.optimizer.load_state_dict(resumed["optimizer"])
        self.schedule.load_state_dict(resumed["schedule"])
        self.scaler.load_state_dict(resumed["scaler"])
        torch.set_rng_state(resumed["rng"])
        report.history = list(resumed["history"])
        report.start_val_miou = resumed.get("start_val_miou")
        return int(resumed["step"])

    def batches(self, samples: list, step: int, end: int):
        """An iterator of ``(pixels, labels)`` batches for steps ``step`` to ``end``: the same crops, in the same
        order, as an uninterrupted run draws for them."""
        settings, per_step = self.settings, self.settings.batch_size * self.settings.accumulate
        return iter(torch.utils.data.DataLoader(
            RandomCrops(samples, self.crop, self.config.working_short_side, settings.scale, settings.seed),
            batch_size=settings.batch_size, sampler=range(step * per_step, end * per_step),
            num_workers=settings.workers, pin_memory=self.device.type == "cuda", persistent_workers=False,
            worker_init_fn=_ignore_interrupts))

    def step(self, batches, step: int) -> tuple[float, float]:
        """One optimiser step over ``accumulate`` batches; ``(loss, learning rate)``."""
        settings, device, amp = self.settings, self.device, self.amp_dtype
        total_loss = 0.0
        for _ in range(settings.accumulate):
            pixels, labels = next(batches)
            pixels, labels = pixels.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                features = crop_features(self.backend.encoder, pixels)
                logits = crop_logits(features, self.text, self.config.logit_scale, pixels.shape[-2:])
            loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE)
            if self.original is not None:
                with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    reference = crop_features(self.original, pixels)
                loss = loss + settings.preserve * preservation_loss(features, reference, labels)
            loss = loss / settings.accumulate
            if not torch.isfinite(loss):
                raise FinetuneError(f"the loss became {loss.item()} at step {step + 1}: lower --lr")
            self.scaler.scale(loss).backward()
            total_loss += loss.item()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        learning_rate = self.schedule.get_last_lr()[0]
        self.schedule.step()
        return total_loss, learning_rate

    def validate(self, samples: list) -> float:
        return validate(self.backend, self.text, samples, self.config.logit_scale)

    def validate_before(self, samples: list, report: FinetuneReport, log) -> None:
        """The validation mIoU of the starting weights, as the history's step 0."""
        report.start_val_miou = self.validate(samples)
        report.history.append({"step": 0, "loss": None, "lr": 0.0, "images_per_s": None,
                               "val_miou": report.start_val_miou})
        log(f"validation mIoU before training: {100 * report.start_val_miou:.1f} %")

    def save(self, report: FinetuneReport, step: int) -> list[Path]:
        return _save(self.backend, self.settings, self.config, report, step, self.optimizer, self.schedule,
                     self.scaler, self.text_before)


def finetune(config: ClipomalyConfig, settings: FinetuneSettings, log=lambda m: print(m, file=sys.stderr),
             progress: bool = True) -> FinetuneReport:
    """Train (see the module docstring); returns the :class:`FinetuneReport`."""
    from tqdm import tqdm

    if config.backend != "open_clip":
        raise FinetuneError("finetune trains an open_clip model: set backend to open_clip (not the toy backend)")
    samples = find_samples(settings.data)
    val_samples = find_samples(settings.val, settings.val_limit or None) if settings.val else []
    check_samples(samples, len(config.known_classes), str(settings.data))
    if val_samples:
        check_samples(val_samples, len(config.known_classes), str(settings.val))
    else:
        log("no --val data: the run reports no validation mIoU")
    resumed = _read_resume(settings.resume, config) if settings.resume else None
    training = Training(config, settings)
    report = FinetuneReport(trainable_parameters=training.parameters)
    step = 0
    if resumed is not None:
        step = training.resume(resumed, report)
        log(f"resumed from {settings.resume} at step {step}")
    log(training.describe(len(samples)))
    if val_samples and step == 0:
        training.validate_before(val_samples, report, log)

    end = min(settings.steps, settings.stop_after) if settings.stop_after else settings.steps
    batches = training.batches(samples, step, end)
    bar = tqdm(total=settings.steps, initial=step, desc="finetune", unit="step", disable=not progress)
    started, seen = time.perf_counter(), 0
    with GracefulStop(bar.write) as stop:
        try:
            while step < end and not stop.requested:
                loss, learning_rate = training.step(batches, step)
                step += 1
                seen += settings.batch_size * settings.accumulate
                rate = seen / (time.perf_counter() - started)
                row = {"step": step, "loss": loss, "lr": learning_rate, "images_per_s": rate, "val_miou": None}
                if val_samples and (step % settings.val_every == 0 or step == settings.steps):
                    row["val_miou"] = training.validate(val_samples)
                    bar.write(f"step {step}: validation mIoU {100 * row['val_miou']:.1f} %")
                report.history.append(row)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{learning_rate:.2e}", img_s=f"{rate:.1f}")
                bar.update(1)
                if step % settings.save_every == 0 and step < end:  # the last step is saved below, once
                    training.save(report, step)
        except KeyboardInterrupt:  # a second Ctrl-C: no waiting for the step to end
            bar.write(f"interrupted at step {step}: saving a checkpoint to resume from")
            training.save(report, step)
            raise
        finally:
            bar.close()
    report.interrupted = stop.requested and step < end
    report.images_per_second = seen / max(time.perf_counter() - started, 1e-9)
    report.finished = step >= settings.steps
    report.final_val_miou = next((row["val_miou"] for row in reversed(report.history)
                                  if row["val_miou"] is not None), None)
    report.files = training.save(report, step)
    return report


def _ignore_interrupts(worker_id: int) -> None:
    """Data workers leave Ctrl-C to the main process, which ends the run between two steps (a terminal sends
    SIGINT to every process of the group, and a worker that quits on it would break the step in progress)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _read_resume(path: Path, config: ClipomalyConfig) -> dict:
    if not Path(path).is_file():
        raise FinetuneError(f"--resume {path}: no such file")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    training = saved.get("clipomaly_training") if isinstance(saved, dict) else None
    if training is None:
        raise FinetuneError(f"--resume {path} holds weights but no training state: give the OUT.pt that "
                            "clipomaly finetune wrote")
    base = (config.model, _base_weights(config))
    if tuple(training["base"]) != base:
        raise FinetuneError(f"--resume {path} was trained from {training['base'][0]} ({training['base'][1]}), "
                            f"not {base[0]} ({base[1]}): give the same --model and weights as the first run")
    return training


def _base_weights(config: ClipomalyConfig) -> str:
    if config.checkpoint:
        return str(Path(config.checkpoint).expanduser().resolve())
    return "random weights" if config.random_weights else f"pretrained {config.pretrained}"


def _save(backend, settings: FinetuneSettings, config: ClipomalyConfig, report: FinetuneReport, step: int,
          optimizer, schedule, scaler, text_before: dict) -> list[Path]:
    """Write OUT.pt, OUT.json, OUT.csv and OUT.png for the state at ``step``; returns their paths."""
    weights = merged_state_dict(backend.model)
    unchanged = all(torch.equal(weights[k].cpu(), v.cpu()) for k, v in text_before.items())
    if not unchanged:  # a bug, never a user error: the open vocabulary depends on it
        raise AssertionError("the text tower changed during fine-tuning")
    training = {
        "step": step, "adapters": adapter_state(backend.model.visual), "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(), "scaler": scaler.state_dict(), "rng": torch.get_rng_state(),
        "history": report.history, "start_val_miou": report.start_val_miou,
        "base": [config.model, _base_weights(config)],
    }
    output = settings.output
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    torch.save({"state_dict": weights, "clipomaly_training": training}, partial)
    partial.replace(output)  # never a half-written file where a run resumes from
    measured = [row["val_miou"] for row in report.history if row["val_miou"] is not None]
    recorded = {key: (str(value) if isinstance(value, Path) else value)
                for key, value in asdict(settings).items() if key not in ("output", "resume")}
    sidecar = {
        "format": "clipomaly finetune 1", "base_model": config.model, "base_weights": _base_weights(config),
        "dense_method": config.dense_method, "known_classes": list(config.known_classes),
        "prompt_templates": list(config.prompt_templates), "logit_scale": config.logit_scale,
        "inference_short_side": config.working_short_side,
        "adapters": {"kind": "low-rank query and value of every image-encoder block, merged", "rank": settings.rank,
                     "alpha": settings.alpha, "trainable_parameters": report.trainable_parameters},
        "training": {**recorded, "steps_done": step, "optimizer": "AdamW", "schedule": "linear warm-up, cosine"},
        "start_val_miou": report.start_val_miou, "final_val_miou": measured[-1] if measured else None,
    }
    sidecar["training"]["steps"] = settings.steps
    sidecar_path(output).write_text(json.dumps(sidecar, indent=2) + "\n")
    log_path, plot_path = output.with_suffix(".csv"), output.with_suffix(".png")
    with open(log_path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=["step", "loss", "lr", "images_per_s", "val_miou"])
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in report.history)
    _plot(report.history, plot_path)
    return [output, sidecar_path(output), log_path, plot_path]


def _plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, loss_axis = plt.subplots(figsize=(6, 4), dpi=110)
    trained = [row for row in history if row["loss"] is not None]
    loss_axis.plot([r["step"] for r in trained], [r["loss"] for r in trained], color="tab:blue", linewidth=1)
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("training loss (cross-entropy)", color="tab:blue")
    validated = [row for row in history if row["val_miou"] is not None]
    if validated:
        miou_axis = loss_axis.twinx()
        miou_axis.plot([r["step"] for r in validated], [100 * r["val_miou"] for r in validated], "o-",
                       color="tab:orange")
        miou_axis.set_ylabel("validation mIoU (%)", color="tab:orange")
    loss_axis.set_title("clipomaly finetune")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
