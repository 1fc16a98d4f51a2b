"""Fine-tuned weights: low-rank adapters on the image encoder's query and value projections, and the JSON sidecar
that travels with a fine-tuned weights file.

Adapters are parametrizations of each attention block's packed ``in_proj_weight`` (``torch.nn.utils.parametrize``):
every reader of the weight (``nn.MultiheadAttention`` and the dense methods, which read it directly) sees
``W + delta`` while ``W`` stays frozen. Saving merges them, so the file is a plain open_clip state dict of the same
architecture. The text tower is never touched: new names keep landing in the space the known classes were trained
against.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..config import ClipomalyConfig, ConfigError


class LowRankQueryValue(nn.Module):
    """A parametrization of a packed ``(3C, C)`` query-key-value weight: ``W + [Bq Aq; 0; Bv Av] * alpha / rank``.

    The up-projections start at zero, so an adapted model starts exactly where the original was."""

    def __init__(self, width: int, rank: int, alpha: float):
        super().__init__()
        self.width, self.rank, self.scale = width, rank, alpha / rank
        self.query_down = nn.Parameter(torch.empty(rank, width))
        self.value_down = nn.Parameter(torch.empty(rank, width))
        for down in (self.query_down, self.value_down):
            nn.init.kaiming_uniform_(down, a=math.sqrt(5))
        self.query_up = nn.Parameter(torch.zeros(width, rank))
        self.value_up = nn.Parameter(torch.zeros(width, rank))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        keys = torch.zeros(self.width, self.width, device=weight.device, dtype=weight.dtype)
        delta = torch.cat([(self.query_up @ self.query_down) * self.scale, keys,
                           (self.value_up @ self.value_down) * self.scale]).to(weight.dtype)
        return weight + delta


def attention_modules(visual: nn.Module) -> list[nn.Module]:
    """The image encoder's attention modules with a packed ``in_proj_weight``, first block first."""
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is None or not all(hasattr(block.attn, "in_proj_weight") for block in blocks):
        raise NotImplementedError("fine-tuning needs an open_clip VisionTransformer whose blocks use "
                                  "nn.MultiheadAttention (a ViT model, for example ViT-B-16)")
    return [block.attn for block in blocks]


def add_query_value_adapters(visual: nn.Module, rank: int, alpha: float) -> list[nn.Parameter]:
    """Freeze ``visual`` and give every attention block a :class:`LowRankQueryValue` adapter; returns the
    adapters' parameters (the only trainable ones)."""
    for parameter in visual.parameters():
        parameter.requires_grad_(False)
    trainable = []
    for attention in attention_modules(visual):
        width = attention.in_proj_weight.shape[1]
        adapter = LowRankQueryValue(width, rank, alpha).to(attention.in_proj_weight.device)
        parametrize.register_parametrization(attention, "in_proj_weight", adapter)
        trainable += list(adapter.parameters())
    return trainable


def adapter_state(visual: nn.Module) -> list[dict[str, torch.Tensor]]:
    """The adapters' tensors, one dict per block (for a training checkpoint)."""
    return [{name: tensor.detach().clone() for name, tensor in
             attention.parametrizations.in_proj_weight[0].state_dict().items()}
            for attention in attention_modules(visual)]


def load_adapter_state(visual: nn.Module, state: list[dict[str, torch.Tensor]]) -> None:
    for attention, tensors in zip(attention_modules(visual), state, strict=True):
        attention.parametrizations.in_proj_weight[0].load_state_dict(tensors)


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict with every adapter merged into its weight: the keys and shapes of the plain
    architecture, loadable by ``open_clip.create_model(..., pretrained=path)``."""
    merged = {}
    adapted = {f"{prefix}.in_proj_weight": module for prefix, module in model.named_modules()
               if parametrize.is_parametrized(module, "in_proj_weight")}
    for key, tensor in model.state_dict().items():
        if ".parametrizations.in_proj_weight." not in key:
            merged[key] = tensor.detach().clone()
    for key, module in adapted.items():
        merged[key] = module.in_proj_weight.detach().clone()
    return merged


# --- the sidecar ------------------------------------------------------------------------------------------------

def sidecar_path(weights: str | Path) -> Path:
    """``model.pt`` -> ``model.json``: where a fine-tuned weights file's description lies."""
    return Path(weights).with_suffix(".json")


def read_sidecar(weights: str | Path) -> dict[str, Any] | None:
    """The sidecar of a weights file, or None when it has none (weights that were not fine-tuned here)."""
    path = sidecar_path(weights)
    if not path.is_file():
        return None
    try:
        sidecar = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path} (the description of the fine-tuned weights) is unreadable: {error}") from None
    if not isinstance(sidecar, dict) or "known_classes" not in sidecar:
        raise ConfigError(f"{path} is not a clipomaly finetune sidecar (no known_classes); remove it or write it "
                          "again with clipomaly finetune")
    return sidecar


def check_sidecar(config: ClipomalyConfig, sidecar: dict[str, Any] | None) -> None:
    """Raise :class:`ConfigError` when ``config`` uses fine-tuned weights with known classes other than those
    they were trained for (the image encoder learnt those names in that order)."""
    if sidecar is None:
        return
    trained = tuple(sidecar["known_classes"])
    if tuple(config.known_classes) != trained:
        raise ConfigError(f"checkpoint {config.checkpoint} was fine-tuned for the known classes "
                          f"[{', '.join(trained)}] but known_classes is [{', '.join(config.known_classes)}]: set "
                          "known_classes to the trained ones (new names belong in anomaly_vocabulary), or fine-tune "
                          "for the new list")


def describe_sidecar(sidecar: dict[str, Any]) -> str:
    """One line for the log: what the weights were fine-tuned from, on what, and how well."""
    miou = sidecar.get("final_val_miou")
    return (f"fine-tuned from {sidecar.get('base_model')} ({sidecar.get('base_weights')}) with dense method "
            f"{sidecar.get('dense_method')} for {len(sidecar['known_classes'])} known classes, "
            f"{sidecar.get('training', {}).get('steps')} steps on {sidecar.get('training', {}).get('data')}; "
            f"validation mIoU {'%.1f %%' % (100 * miou) if miou is not None else 'not measured'}")
