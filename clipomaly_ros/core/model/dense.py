"""Training-free dense CLIP: per-patch embeddings from an open_clip VisionTransformer.

CLIP's last attention block mixes every patch with global context, so its patch tokens do not describe their own
location. The training-free methods change the end of the network (:mod:`.dense_methods` says how each does it).

Images of any size are covered by sliding windows (all windows of all frames in one batch) whose positional
embeddings are resized as the official code does when the window is not the model's native size. The patch
embedding runs once over the whole image and the windows are cut from it, which equals embedding every window on
its own because windows are aligned to the patch grid. Overlapping windows are fused by averaging their
normalised patch features without normalising again, which averages the windows' cosine similarities (and so
their class logits): a location covered by several identical windows scores exactly as it would under one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .dense_methods import interpolate_positional_embedding, last_block, scclip_tail


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
        self.patch_size = tuple(visual.patch_size)
        self.native_grid = tuple(visual.grid_size)

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

    def forward_patches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The transformer on patch embeddings ``(B, C, gh, gw)``: ``(pooled (B, D), patches (B, gh, gw, D))``."""
        visual = self.visual
        batch, width, grid_h, grid_w = x.shape
        x = x.reshape(batch, width, grid_h * grid_w).permute(0, 2, 1)
        class_token = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(batch, -1, -1)
        x = torch.cat([class_token, x], dim=1)
        x = x + interpolate_positional_embedding(visual.positional_embedding, self.native_grid,
                                                 (grid_h, grid_w)).to(x.dtype)
        x = visual.ln_pre(x)
        blocks = visual.transformer.resblocks
        if self.method == "scclip":
            patches = visual.ln_post(scclip_tail(blocks, x, (grid_h, grid_w)))
            pooled = patches.mean(dim=1)
        else:
            for block in blocks[:-1]:
                x = block(x)
            x = last_block(blocks[-1], x, self.method, (grid_h, grid_w))
            pooled, _ = visual._pool(x)
            patches = visual.ln_post(x[:, 1:])
        if visual.proj is not None:
            pooled = pooled @ visual.proj
            patches = patches @ visual.proj
        return pooled, patches.reshape(batch, grid_h, grid_w, -1)

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


def window_tokens(patch_embeddings: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
    """The patch embeddings ``(C, rows, columns)`` of a whole image cut into its windows: ``(windows, C, g, g)``,
    one gather, no loop over windows."""
    channels = patch_embeddings.shape[0]
    g = layout.window // layout.patch
    rows = patch_embeddings.reshape(channels, -1).T  # (rows * columns, C)
    index = layout.token_index.to(rows.device)
    return rows[index].reshape(len(layout.origins), g, g, channels).permute(0, 3, 1, 2)


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


def sliding_window_features(encoder: DenseVisionEncoder, images: list[torch.Tensor],
                            layouts: list[WindowLayout], batch_size: int = 0,
                            pixels: bool = False) -> list[torch.Tensor]:
    """Dense features of normalised images ``(3, H, W)`` (or 0..255 ``pixels`` for an encoder told its
    normalisation, :meth:`DenseVisionEncoder.normalise_pixels`), each already resized to its layout's
    ``resized``.

    The patch embedding runs once per image; the windows of all images then go through the transformer
    together, ``batch_size`` at a time (0: all in one batch). Returns one ``(H/p, W/p, D)`` grid per
    image (see :func:`fuse_windows`).
    """
    embed = encoder.embed_pixels if pixels else encoder.embed_patches
    windows = torch.cat([window_tokens(embed(image[None])[0], layout) for image, layout in zip(images, layouts)])
    chunks = windows.split(batch_size) if batch_size else (windows,)
    patches = torch.cat([encoder.forward_patches(chunk)[1] for chunk in chunks])
    counts = [len(layout.origins) for layout in layouts]
    return [fuse_windows(part, layout) for part, layout in zip(patches.split(counts), layouts)]


def native_window(encoder: DenseVisionEncoder) -> int:
    """The model's native input side in pixels."""
    return encoder.native_grid[0] * encoder.patch_size[0]


__all__ = ["DenseVisionEncoder", "WindowLayout", "plan_windows", "sliding_window_features", "native_window",
           "window_tokens", "fuse_windows"]
