"""A tiny RAM++ checkpoint in the release's on-disk layout (``{"model": state}`` with the authors' module names),
for tests: a small Swin at 384 with the release's window of 12, a narrow head and the first few released tags."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from clipomaly_ros.core.model.tagger import (DERIVED_BUFFERS, RELEASE_HEAD_NAMES, RamPlus, TaggerArchitecture,
                                             TagList, release_to_ours)

TINY = TaggerArchitecture(embed_dim=8, depths=(2, 2, 2, 2), heads=(1, 1, 2, 2), window=12, tags=6, descriptions=3,
                          width=16, hidden=16, ffn=32, layers=2)

HEAD_NAMES = {ours: release for release, ours in RELEASE_HEAD_NAMES.items()}


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


def tiny_model(seed: int = 0, architecture: TaggerArchitecture = TINY, tags: TagList | None = None) -> RamPlus:
    """Random weights (the head's large enough that tags differ between images); ``tags`` default to the first
    released ones."""
    torch.manual_seed(seed)
    model = RamPlus(architecture, tags or tiny_tags(architecture.tags))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith(("head.", "wordvec_proj", "fc", "image_proj")) and parameter.dim() > 1:
                parameter.normal_(0.0, 0.3)
        model.label_embed.normal_(0.0, 1.0)
        model.label_embed.copy_(torch.nn.functional.normalize(model.label_embed, dim=-1))
    return model.eval()


def release_state(model: RamPlus) -> dict[str, torch.Tensor]:
    """``model``'s weights as the release names them, with the Swin buffers the release saves."""
    state = {ours_to_release(key): value.clone() for key, value in model.state_dict().items()}
    state.update({ours_to_release(key): value.clone() for key, value in model.named_buffers()
                  if DERIVED_BUFFERS.search(key)})
    assert all(release_to_ours(key) in model.state_dict() or DERIVED_BUFFERS.search(key) for key in state)
    return state


def write_checkpoint(path: Path, model: RamPlus | None = None, state: dict | None = None) -> Path:
    torch.save({"model": state if state is not None else release_state(model or tiny_model())}, path)
    return path
