"""The bench's memory soak: resident memory after the first and the last frame of a long run with a small model,
every map and message built each frame, to show that a long-running node does not grow."""

from __future__ import annotations

import gc
import resource

from ...core.config import ClipomalyConfig
from .outputs import offline_publish_ms, offline_step
from .timing import street_frame

SOAK_MODEL = "clipomaly-tiny-vit"


def resident_mb() -> float:
    """This process's resident memory now, in MB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def soak(config: ClipomalyConfig, size: tuple[int, int], frames: int, log=print) -> dict:
    """Resident memory after frame 1 and after frame ``frames`` of a small model (the bundled tiny ViT, or the
    toy backend when that is the configured one) on ``size`` = (width, height) scenes, every map and message
    built each frame."""
    from tqdm import tqdm

    from ...core.method.pipeline import Clipomaly

    small = config if config.backend == "toy" else config.replace(model=SOAK_MODEL, random_weights=True,
                                                                   checkpoint="")
    pipeline = Clipomaly(small)
    step = offline_step(pipeline)
    scenes = [street_frame(size, planted) for planted in ("mattress", "tire", "deer", None)]
    resident = []
    for index in tqdm(range(frames), desc=f"memory soak ({small.model if small.backend != 'toy' else 'toy'})",
                      unit="frame", leave=False):
        image = scenes[index % len(scenes)]
        result = pipeline(image)
        offline_publish_ms(image, result, True, step, small, index * 100_000_000)
        if index == 0 or index == frames - 1:
            gc.collect()
            resident.append(resident_mb())
    return {"model": "toy" if small.backend == "toy" else SOAK_MODEL, "frames": frames,
            "resident_mb_first": round(resident[0], 1), "resident_mb_last": round(resident[-1], 1),
            "growth_mb": round(resident[-1] - resident[0], 1)}


def format_soak(memory: dict) -> str:
    """The soak's line of the bench report."""
    return (f"memory ({memory['model']}, {memory['frames']} frames): resident {memory['resident_mb_first']:.0f} MB "
            f"after frame 1, {memory['resident_mb_last']:.0f} MB after frame {memory['frames']} "
            f"({memory['growth_mb']:+.1f} MB)")
