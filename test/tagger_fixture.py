"""A tiny RAM++ checkpoint in the release's on-disk layout (``{"model": state}`` with the authors' module names), for
tests: a small Swin at 384 with the release's window of 12, a narrow head and the first few released tags.

The released file differs from the authors' ``state_dict`` in two keys, and so does this fixture by default
(``layout="release"``): it holds the unused scalar ``logit_scale`` (here log 100, a value that would change every
probability were it taken for the temperature) and lacks ``reweight_scale`` (the authors' model keeps its initial
log(1/0.07)). ``layout="finetuned"`` is the format of a file fine-tuned with the authors' code: ``reweight_scale``
present and used, no ``logit_scale``.

The sizes are ones the authors' code can build (their CLIP width of 512 and 51 descriptions per tag are fixed in
it), and the weights come from NumPy's frozen ``RandomState`` stream per key, not from timm's initialisation, so
that the same file is written on every machine: ``test/ram_plus_tiny_reference.json`` holds the authors' code's
probabilities on it (made by ``scripts/ram_plus_equality.py --tiny-reference``).
"""

from __future__ import annotations

import math
import re
import zlib
from pathlib import Path

import numpy as np
import torch

from clipomaly_ros.core.model.tagger import (DERIVED_BUFFERS, INITIAL_REWEIGHT_SCALE, RELEASE_HEAD_NAMES, RamPlus,
                                             TaggerArchitecture, TagList, release_to_ours)

TINY = TaggerArchitecture(embed_dim=8, depths=(2, 2, 2, 2), heads=(1, 1, 2, 2), window=12, tags=6, descriptions=51,
                          width=512, hidden=16, ffn=32, layers=2)

RELEASE_LOGIT_SCALE = math.log(100.0)
"""The unused ``logit_scale`` the fixture's release layout holds: as a temperature (100) it would move every
probability away from the authors' (1/0.07)."""
FINETUNED_REWEIGHT_SCALE = math.log(30.0)
"""The ``reweight_scale`` of the fine-tuned fixture: not the initial log(1/0.07), so that using it shows."""
LAYOUTS = ("release", "finetuned")

HEAD_NAMES = {ours: release for release, ours in RELEASE_HEAD_NAMES.items()}
HEAD_MODULES = ("head.", "wordvec_proj", "fc", "image_proj")
"""Our modules outside the Swin: their random weights are large, so that tags differ between images."""


def ours_to_release(key: str) -> str:
    """The release's name of one of our keys (the inverse of ``release_to_ours``)."""
    if match := re.match(r"^swin\.layers\.(\d+)\.downsample\.(.*)$", key):
        return f"visual_encoder.layers.{int(match.group(1)) - 1}.downsample.{match.group(2)}"
    if key.startswith("swin."):
        return "visual_encoder." + key[len("swin."):]
    if match := re.match(r"^head\.layers\.(\d+)\.([a-z_]+)\.(.*)$", key):
        return f"tagging_head.encoder.layer.{match.group(1)}.{HEAD_NAMES[match.group(2)]}.{match.group(3)}"
    return key


def tiny_tags(count: int = TINY.tags) -> TagList:
    return TagList.released().head(count)


def normal(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Standard normal float32 noise of ``shape`` for the parameter ``name``: NumPy's legacy stream, frozen across
    versions, seeded by the name, so that one key's values do not depend on the others'."""
    generator = np.random.RandomState((zlib.crc32(name.encode()) + 7919 * seed) % 2 ** 32)
    return torch.from_numpy(generator.standard_normal(shape).astype(np.float32))


def tiny_model(seed: int = 0, architecture: TaggerArchitecture = TINY, tags: TagList | None = None,
               reweight_scale: float = INITIAL_REWEIGHT_SCALE) -> RamPlus:
    """Random weights, the same on every machine: the Swin's near timm's initialisation (std 0.02, LayerNorm scales
    near 1), the head's large (std 0.3) so that tags differ between images, ``label_embed`` unit rows. ``tags``
    default to the first released ones."""
    model = RamPlus(architecture, tags or tiny_tags(architecture.tags))
    layer_norm_scales = {f"{name}.weight" for name, module in model.named_modules()
                         if isinstance(module, torch.nn.LayerNorm)}
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = normal(name, tuple(parameter.shape), seed)
            if name == "label_embed":
                parameter.copy_(torch.nn.functional.normalize(noise, dim=-1))
            elif name == "reweight_scale":
                parameter.fill_(reweight_scale)
            else:
                spread = 0.3 if name.startswith(HEAD_MODULES) else 0.02
                parameter.copy_((1.0 if name in layer_norm_scales else 0.0) + spread * noise)
    return model.eval()


def release_state(model: RamPlus, layout: str = "release") -> dict[str, torch.Tensor]:
    """``model``'s weights as the authors name them, with the Swin buffers the release saves. ``layout``
    ``"release"``: as the released file (``logit_scale`` added, ``reweight_scale`` left out; the model's must then
    be the initial one, which the loader takes); ``"finetuned"``: ``reweight_scale`` kept, no ``logit_scale``."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    state = {ours_to_release(key): value.clone() for key, value in model.state_dict().items()}
    state.update({ours_to_release(key): value.clone() for key, value in model.named_buffers()
                  if DERIVED_BUFFERS.search(key)})
    assert all(release_to_ours(key) in model.state_dict() or DERIVED_BUFFERS.search(key) for key in state)
    if layout == "release":
        if not math.isclose(float(state.pop("reweight_scale")), INITIAL_REWEIGHT_SCALE, rel_tol=1e-6):
            raise ValueError("the release layout has no reweight_scale: this model's is not the initial one, use "
                             "layout='finetuned'")
        state["logit_scale"] = torch.tensor(RELEASE_LOGIT_SCALE)
    return state


def write_checkpoint(path: Path, model: RamPlus | None = None, state: dict | None = None,
                     layout: str = "release") -> Path:
    """``{"model": state}`` at ``path``: ``state``, or ``model``'s (default :func:`tiny_model`) in ``layout``."""
    torch.save({"model": state if state is not None else release_state(model or tiny_model(), layout)}, path)
    return path


def reference_frames(count: int = 3, seed: int = 38) -> np.ndarray:
    """(count, 180, 320, 3) uint8 noise frames, the same on every machine (NumPy's frozen legacy stream): the
    images the recorded reference was computed on."""
    return np.random.RandomState(seed).randint(0, 256, size=(count, 180, 320, 3)).astype(np.uint8)
