"""Training-free dense CLIP: per-patch embeddings from an open_clip VisionTransformer.

CLIP's last attention block mixes every patch with global context, so its patch tokens do not describe their own
location. The training-free methods change the end of the network (:mod:`.dense_methods` says how each does it).

Images of any size are covered by sliding windows (all windows of all frames in one batch) whose positional
embeddings are resized as the official code does when the window is not the model's native size. The windows are
cut from the resized image in one gather and go through a window encoder (pixels in, per-patch features out), the
same graph whatever runs it: eager PyTorch, ``torch.compile`` or an exported ONNX model (:mod:`.runtimes`).
Overlapping windows are fused by averaging their
normalised patch features without normalising again, which averages the windows' cosine similarities (and so
their class logits): a location covered by several identical windows scores exactly as it would under one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .dense_methods import attention_block, interpolate_positional_embedding, last_block, scclip_head


class DenseVisionEncoder(nn.Module):
    """Wraps an open_clip ``VisionTransformer`` to return pooled and per-patch embeddings.

    ``forward(images)`` takes normalised images ``(B, 3, H, W)`` with ``H`` and ``W`` multiples of the patch size
    and returns ``(pooled (B, D), patches (B, H/p, W/p, D))`` in the joint image-text space (not normalised).
    """

    def __init__(self, visual: nn.Module, method: str = "clearclip"):
        super().__init__()
        for attribute in ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post"):
            if not hasattr(visual, attribute):
                raise NotImplementedError(
                    f"dense features need an open_clip VisionTransformer; {type(visual).__name__} has no "
                    f"'{attribute}'. Choose a ViT model (for example ViT-B-16).")
        if getattr(visual, "attn_pool", None) is not None:
            raise NotImplementedError("dense features are not supported for ViTs with attentional pooling (CoCa)")
        if not getattr(visual.transformer, "batch_first", True):
            raise NotImplementedError("dense features need open_clip's batch-first transformer (open_clip >= 2.24)")
        self.visual = visual
        self.method = method
        self.explicit_attention = False
        self.patch_size = tuple(visual.patch_size)
        self.native_grid = tuple(visual.grid_size)

    @property
    def weight(self) -> torch.Tensor:
        """The patch embedding's weight: its dtype and device are the encoder's."""
        return self.visual.conv1.weight

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embeddings ``(B, C, H/p, W/p)`` of normalised images ``(B, 3, H, W)``.

        The embedding is a stride-p convolution, so windows aligned to the patch grid can share one embedding of
        the whole image (see :func:`sliding_window_features`)."""
        return self.visual.conv1(images)

    @torch.no_grad()
    def normalise_pixels(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Fold the input normalisation ((x / 255 - mean) / std, per RGB channel) into a copy of the patch
        embedding, so :meth:`embed_pixels` takes 0..255 pixels and no pass over the image normalises them (a
        constant copy: the patch embedding is never trained)."""
        weight = self.visual.conv1.weight.float()
        scale = (1.0 / (255.0 * std.float().flatten().to(weight.device)))[None, :, None, None]
        shift = (mean.float().flatten().to(weight.device) / std.float().flatten().to(weight.device))
        self._pixel_weight = (weight * scale).to(self.visual.conv1.weight.dtype)
        self._pixel_bias = (-(weight * shift[None, :, None, None]).sum(dim=(1, 2, 3))).to(weight.dtype)

    def embed_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """:meth:`embed_patches` of images given as 0..255 pixels ``(B, 3, H, W)`` (see
        :meth:`normalise_pixels`)."""
        stride = self.visual.conv1.stride
        return F.conv2d(images.to(self._pixel_weight.dtype), self._pixel_weight,
                        self._pixel_bias.to(self._pixel_weight.dtype), stride=stride)

    def forward_patches(self, x: torch.Tensor,
                        clip_embedding: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The transformer on patch embeddings ``(B, C, gh, gw)``: ``(pooled (B, D), patches (B, gh, gw, D))``.

        ``pooled`` is the method's own pooling, or with ``clip_embedding`` the unchanged network's image embedding
        (what a crop is scored with; one more pass through the last block, shared with the method's blocks).
        With ``explicit_attention`` set, every block's attention is matmul and softmax (see
        :func:`.dense_methods.attention_block`), as an export needs."""
        visual = self.visual
        batch, width, grid_h, grid_w = x.shape
        x = x.reshape(batch, width, grid_h * grid_w).permute(0, 2, 1)
        class_token = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(batch, -1, -1)
        x = torch.cat([class_token, x], dim=1)
        x = x + interpolate_positional_embedding(visual.positional_embedding, self.native_grid,
                                                 (grid_h, grid_w)).to(x.dtype)
        x = visual.ln_pre(x)
        *blocks, last = visual.transformer.resblocks
        run = attention_block if self.explicit_attention else (lambda block, tokens: block(tokens))
        outputs = []
        for block in blocks:
            x = run(block, x)
            outputs.append(x)
        if self.method == "scclip":
            patches = visual.ln_post(scclip_head(last, outputs, (grid_h, grid_w)))
            pooled = patches.mean(dim=1)
        else:
            tokens = run(last, x) if self.method == "none" else last_block(last, x, self.method, (grid_h, grid_w))
            pooled, _ = visual._pool(tokens)
            patches = visual.ln_post(tokens[:, 1:])
        if clip_embedding and self.method != "none":
            pooled, _ = visual._pool(run(last, x))
        if visual.proj is not None:
            pooled = pooled @ visual.proj
            patches = patches @ visual.proj
        return pooled, patches.reshape(batch, grid_h, grid_w, -1)

    def forward_pixels(self, windows: torch.Tensor,
                       clip_embedding: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward_patches` of windows given as 0..255 pixels ``(B, 3, S, S)`` (see
        :meth:`normalise_pixels`): the window encoder that every runtime runs (:mod:`.runtimes`)."""
        return self.forward_patches(self.embed_pixels(windows), clip_embedding)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_patches(self.embed_patches(images))


@dataclass(frozen=True)
class WindowLayout:
    """Where sliding windows lie on the resized image.

    ``resized`` is the (height, width) in pixels that the input is resized to (multiples of ``patch``),
    ``window`` and ``stride`` are in pixels, ``origins`` are the windows' (top, left) corners, all multiples of
    ``patch`` pixels.
    """

    resized: tuple[int, int]
    window: int
    stride: int
    origins: tuple[tuple[int, int], ...]
    patch: int = 16

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, columns) of patches covering the resized image."""
        return self.resized[0] // self.patch, self.resized[1] // self.patch

    @functools.cached_property
    def token_index(self) -> torch.Tensor:
        """``(windows, g*g)`` int64: for every window, the flat grid index of each of its ``g x g`` patches."""
        g = self.window // self.patch
        columns = self.grid[1]
        offsets = (torch.arange(g)[:, None] * columns + torch.arange(g)[None, :]).flatten()
        starts = torch.tensor([(top // self.patch) * columns + left // self.patch for top, left in self.origins])
        return starts[:, None] + offsets[None, :]

    @functools.cached_property
    def coverage(self) -> torch.Tensor:
        """``(rows * columns, 1)`` float32: how many windows cover each patch (at least 1)."""
        counts = torch.bincount(self.token_index.flatten(), minlength=self.grid[0] * self.grid[1])
        return counts.float().clamp(min=1)[:, None]


def _starts(length: int, window: int, stride: int) -> list[int]:
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    starts.append(length - window)
    return starts


@functools.lru_cache(maxsize=64)
def plan_windows(image_size: tuple[int, int], short_side: int, window: int, stride: int,
                 patch: int) -> WindowLayout:
    """Resize ``image_size`` (height, width) so its short side is about ``short_side`` (rounded to the patch
    size, and at least one window), then tile it with ``window``-pixel windows every ``stride`` pixels.

    Cached: a camera's frames share one layout and its index tensors."""
    height, width = image_size
    scale = short_side / min(height, width)
    resized_h = max(window, patch * round(height * scale / patch))
    resized_w = max(window, patch * round(width * scale / patch))
    stride = max(patch, patch * (stride // patch))
    origins = tuple((top, left) for top in _starts(resized_h, window, stride)
                    for left in _starts(resized_w, window, stride))
    return WindowLayout((resized_h, resized_w), window, stride, origins, patch)


def window_pixels(image: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
    """An image ``(3, H, W)`` at its layout's ``resized`` size cut into its windows: ``(windows, 3, S, S)``, one
    gather of patch-sized tiles, no loop over windows."""
    channels, patch = image.shape[0], layout.patch
    rows, columns = layout.grid
    g = layout.window // patch
    tiles = image.reshape(channels, rows, patch, columns, patch).permute(1, 3, 0, 2, 4).reshape(-1, channels, patch,
                                                                                               patch)
    picked = tiles[layout.token_index.to(image.device)]  # (windows, g * g, 3, p, p)
    return picked.reshape(-1, g, g, channels, patch, patch).permute(0, 3, 1, 4, 2, 5).reshape(
        -1, channels, layout.window, layout.window)


def fuse_windows(patches: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
    """Per-window patch features ``(windows, g, g, D)``, each normalised, averaged where windows overlap:
    ``(rows, columns, D)`` in the features' dtype (summed in float32). Not normalised again: its dot product with a
    text embedding is the mean of the windows' cosine similarities."""
    dtype = patches.dtype
    patches = F.normalize(patches.float(), dim=-1)
    depth = patches.shape[-1]
    index = layout.token_index.to(patches.device).flatten()
    total = torch.zeros(layout.grid[0] * layout.grid[1], depth, device=patches.device)
    total.index_add_(0, index, patches.reshape(-1, depth))
    total /= layout.coverage.to(patches.device)
    return total.reshape(*layout.grid, depth).to(dtype)  # fp16 where the model runs fp16


def sliding_window_features(run_windows: Callable[[torch.Tensor], torch.Tensor], images: list[torch.Tensor],
                            layouts: list[WindowLayout], batch_size: int = 0) -> list[torch.Tensor]:
    """Dense features of images ``(3, H, W)``, each already resized to its layout's ``resized``.

    The windows of all images go through ``run_windows`` together (windows ``(B, 3, S, S)`` in, per-patch
    features ``(B, S/p, S/p, D)`` out: a runtime's window encoder, :mod:`.runtimes`), ``batch_size`` at a time (0:
    all in one batch). Returns one ``(H/p, W/p, D)`` grid per image (see :func:`fuse_windows`).
    """
    windows = torch.cat([window_pixels(image, layout) for image, layout in zip(images, layouts)])
    chunks = windows.split(batch_size) if batch_size else (windows,)
    patches = torch.cat([run_windows(chunk) for chunk in chunks])
    counts = [len(layout.origins) for layout in layouts]
    return [fuse_windows(part, layout) for part, layout in zip(patches.split(counts), layouts)]


@dataclass(frozen=True)
class LayoutCost:
    """What one frame's windows cost the vision transformer: ``windows``, ``tokens`` (patches and class tokens of
    all windows) and ``gflop`` (multiply-adds counted as two; the dense method's end counted as one ordinary
    block)."""

    windows: int
    tokens: int
    gflop: float


def layout_cost(encoder: DenseVisionEncoder, layout: WindowLayout) -> LayoutCost:
    """The :class:`LayoutCost` of ``layout`` for ``encoder``'s ViT: per window of ``L`` tokens of width ``C``,
    each block costs ``2 L (4 C^2 + 2 C M)`` for its projections and MLP (width ``M``) and ``4 L^2 C`` for
    attention; the patch embedding ``2 (L - 1) C 3 p^2``."""
    blocks = encoder.visual.transformer.resblocks
    width = encoder.visual.transformer.width
    mlp = blocks[0].mlp.c_fc.out_features
    patches = (layout.window // layout.patch) ** 2
    length = patches + 1
    per_block = 2 * length * (4 * width * width + 2 * width * mlp) + 4 * length * length * width
    per_window = len(blocks) * per_block + 2 * patches * width * 3 * layout.patch ** 2
    windows = len(layout.origins)
    return LayoutCost(windows, windows * length, windows * per_window / 1e9)


def native_window(encoder: DenseVisionEncoder) -> int:
    """The model's native input side in pixels."""
    return encoder.native_grid[0] * encoder.patch_size[0]


__all__ = ["DenseVisionEncoder", "LayoutCost", "layout_cost", "WindowLayout", "plan_windows", "sliding_window_features", "native_window",
           "window_pixels", "fuse_windows"]
