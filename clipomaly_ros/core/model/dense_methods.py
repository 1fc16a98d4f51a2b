"""The training-free dense CLIP methods: how each one changes the end of an open_clip ViT.

Each follows its paper's official code (the formulas, not the code, are reproduced here):

============  ===================================================================================================
scclip        SC-CLIP (Bai et al. 2024): anomaly tokens found by a local outlier factor after the penultimate
              block and replaced by their neighbours' mean; the last block attends with the intermediate layers'
              feature similarity and k-k attention, features are aggregated by that similarity, and a multi-level
              fusion of blocks 4-10 adds detail. No residual, no feed-forward in the last block.
naclip        NACLIP (Hajimiri et al. 2024): softmax(k k^T / sqrt(d) + Gaussian neighbourhood) with the Gaussian
              exp(-d^2 / (2 sigma^2)), sigma = 5 patches; no residual, no feed-forward.
clearclip     ClearCLIP (Lan et al. 2024): softmax(q q^T / sqrt(d)); no residual, no feed-forward.
sclip         SCLIP (Wang et al. 2024): softmax(q q^T / sqrt(d)) + softmax(k k^T / sqrt(d)); residual and
              feed-forward kept.
maskclip      MaskCLIP (Zhou et al. 2022): the value embedding through the output projection; residual and
              feed-forward kept.
none          the unchanged last block (for checks).
============  ===================================================================================================

Tokens are batch first: ``(B, 1 + N, C)``, the class token first, then the ``gh x gw`` patches row by row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NACLIP_SIGMA = 5.0  # patches: the width of NACLIP's Gaussian neighbourhood (its default)
SCCLIP_BETA = 0.4  # similarities below this do not aggregate features
SCCLIP_RESIDUAL_CLASS = 0.3  # weight of the class token added back after the last block
SCCLIP_NEIGHBOURS = 30  # local outlier factor: neighbours per token
SCCLIP_CONTAMINATION = 0.05  # local outlier factor: share of tokens taken as anomalies
SCCLIP_LAYERS_OF_12 = {"pre": 8, "post": 3, "fusion": (3, 10)}  # feature indices of the official ViT-B/16 setting


def split_heads(block: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """q, k, v ``(B, heads, L, d)`` of an open_clip block's attention for normalised ``tokens`` ``(B, L, C)``,
    and the scale ``1 / sqrt(d)``."""
    attention = block.attn
    if not isinstance(attention, nn.MultiheadAttention):
        raise NotImplementedError(
            f"the dense methods need a ViT whose blocks use nn.MultiheadAttention (open_clip's default block); this "
            f"model's last block has {type(attention).__name__}. Use dense_method 'none' or another model.")
    batch, length, channels = tokens.shape
    heads = attention.num_heads
    q, k, v = F.linear(tokens, attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(batch, length, heads, channels // heads).transpose(1, 2) for t in (q, k, v))
    return q, k, v, (channels // heads) ** -0.5


def merge_heads(block: nn.Module, weights: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``out_proj(weights @ v)`` with the heads merged back: ``(B, L, C)``."""
    out = weights @ v
    batch, heads, length, dim = out.shape
    return block.attn.out_proj(out.transpose(1, 2).reshape(batch, length, heads * dim))


def softmax32(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis computed in fp32 and returned in ``logits``' dtype: an fp16 model (and its fp16
    export) keeps the exponentials' sums from overflowing."""
    return torch.softmax(logits.float(), dim=-1).to(logits.dtype)


def self_softmax(t: torch.Tensor, scale: float) -> torch.Tensor:
    return softmax32((t @ t.transpose(-2, -1)) * scale)


def neighbourhood_prior(grid: tuple[int, int], sigma: float, device, dtype) -> torch.Tensor:
    """NACLIP's additive prior ``(1 + N, 1 + N)``: exp(-|p_i - p_j|^2 / (2 sigma^2)) between patches (values in
    (0, 1]), zero in the class token's row and column. Squared distances of integer positions are exact, so no
    distance routine is needed (one an ONNX export could not express)."""
    ys, xs = torch.meshgrid(torch.arange(grid[0], device=device), torch.arange(grid[1], device=device),
                            indexing="ij")
    ys, xs = ys.flatten().float(), xs.flatten().float()
    squared = (ys[:, None] - ys[None, :]) ** 2 + (xs[:, None] - xs[None, :]) ** 2
    prior = torch.zeros(1 + ys.shape[0], 1 + ys.shape[0], device=device)
    prior[1:, 1:] = torch.exp(-squared / (2 * sigma ** 2))
    return prior.to(dtype)


def attention_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An unchanged open_clip residual block with its attention written out as matmul and softmax: what an ONNX
    export traces, because TensorRT has computed wrong results for an exported fused attention
    (NVIDIA/TensorRT #4333, #4328). The softmax runs in fp32 also in an fp16 model. Equal to ``block(x)`` up to
    float rounding."""
    q, k, v, scale = split_heads(block, block.ln_1(x))
    x = x + block.ls_1(merge_heads(block, softmax32((q @ k.transpose(-2, -1)) * scale), v))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def last_block(block: nn.Module, x: torch.Tensor, method: str, grid: tuple[int, int]) -> torch.Tensor:
    """The last block of ``method`` (all but ``scclip``, see :func:`scclip_head`) on tokens ``(B, 1 + N, C)``."""
    if method == "none":
        return block(x)
    q, k, v, scale = split_heads(block, block.ln_1(x))
    if method == "clearclip":
        return block.ls_1(merge_heads(block, self_softmax(q, scale), v))
    if method == "naclip":
        prior = neighbourhood_prior(grid, NACLIP_SIGMA, x.device, k.dtype)
        weights = softmax32((k @ k.transpose(-2, -1)) * scale + prior)
        return block.ls_1(merge_heads(block, weights, v))
    if method == "sclip":
        x = x + block.ls_1(merge_heads(block, self_softmax(q, scale) + self_softmax(k, scale), v))
        return x + block.ls_2(block.mlp(block.ln_2(x)))
    if method == "maskclip":
        batch, heads, length, dim = v.shape
        x = x + block.ls_1(block.attn.out_proj(v.transpose(1, 2).reshape(batch, length, heads * dim)))
        return x + block.ls_2(block.mlp(block.ln_2(x)))
    raise ValueError(f"unknown dense method {method!r}")


# --- SC-CLIP ---------------------------------------------------------------------------------------------------

def upper_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(values, q, dim=-1, keepdim=True)`` (linear interpolation) by a sort, which ONNX expresses
    (TopK) and ``torch.quantile`` is not exported as."""
    count = values.shape[-1]
    position = q * (count - 1)
    low = int(position)
    ordered = torch.sort(values, dim=-1).values
    below, above = ordered[..., low:low + 1], ordered[..., min(low + 1, count - 1):min(low + 1, count - 1) + 1]
    return below + (above - below) * (position - low)


def local_outliers(tokens: torch.Tensor, neighbours: int = SCCLIP_NEIGHBOURS,
                   contamination: float = SCCLIP_CONTAMINATION) -> torch.Tensor:
    """``(B, N)`` bool: the tokens ``(B, N, C)`` whose local outlier factor lies in the top ``contamination`` of
    their image, with SC-CLIP's reachability (a token's own k-distance) on squared Euclidean distances.

    Written in operators an ONNX export keeps (matmul, TopK, Gather, a sorted quantile), so the whole SC-CLIP
    method runs inside an exported model."""
    count = tokens.shape[1]
    neighbours = min(neighbours, count - 1)
    tokens = tokens.float()
    norms = (tokens * tokens).sum(dim=-1)
    distances = (norms[:, :, None] + norms[:, None, :] - 2 * tokens @ tokens.transpose(1, 2)).clamp(min=0)
    near, index = torch.topk(distances, neighbours + 1, dim=-1, largest=False)
    near, index = near[..., 1:], index[..., 1:]
    reach = torch.maximum(near, near[..., -1:])
    density = neighbours / torch.nan_to_num(reach.mean(dim=-1), nan=1e-6)
    factor = (torch.gather(density[:, None, :].expand(-1, count, -1), 2, index) / density[..., None]).mean(-1)
    return factor > upper_quantile(factor, 1 - contamination)


def replace_by_neighbours(patches: torch.Tensor, outliers: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(B, N, C)`` patches with each outlier replaced by the mean of its non-outlier 8-neighbours (kept when it
    has none)."""
    batch, count, channels = patches.shape
    maps = patches.transpose(1, 2).reshape(batch, channels, *grid)
    keep = (~outliers).to(patches.dtype).reshape(batch, 1, *grid)
    ring = torch.ones(1, 1, 3, 3, device=patches.device, dtype=patches.dtype)
    ring[0, 0, 1, 1] = 0
    sums = F.conv2d((maps * keep).reshape(batch * channels, 1, *grid), ring, padding=1).reshape(maps.shape)
    valid = F.conv2d(keep, ring, padding=1)
    replace = outliers.reshape(batch, 1, *grid) & (valid > 0)
    mean = sums / valid.clamp(min=1)
    return torch.where(replace, mean, maps).reshape(batch, channels, count).transpose(1, 2)


def _similarity(patches: torch.Tensor) -> torch.Tensor:
    normalised = F.normalize(patches, dim=-1)
    return normalised @ normalised.transpose(-2, -1)


def _aggregate(features: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    weights = similarity.masked_fill(similarity < SCCLIP_BETA, 0.0)
    return (weights / (weights.sum(dim=-1, keepdim=True) + 1e-6)) @ features


def _calibrated_attention(block: nn.Module, tokens: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    """The last block's attention on patch tokens: the mean of softmax(3 (S - mean S), negatives masked) from the
    intermediate similarity S and softmax(k k^T / sqrt(d))."""
    q, k, v, scale = split_heads(block, block.ln_1(tokens))
    centred = (similarity - similarity.mean(dim=(-2, -1), keepdim=True)) * 3.0
    prior = softmax32(centred.masked_fill(centred < 0, float("-inf")))[:, None]
    return merge_heads(block, (prior + self_softmax(k, scale)) / 2, v)


def scclip_layers(depth: int) -> dict:
    """The official feature indices (for 12 blocks) scaled to a ViT with ``depth`` blocks."""
    def scale(index):
        return min(depth - 2, max(0, round(index * depth / 12)))

    start, stop = SCCLIP_LAYERS_OF_12["fusion"]
    return {"pre": scale(SCCLIP_LAYERS_OF_12["pre"]), "post": scale(SCCLIP_LAYERS_OF_12["post"]),
            "fusion": (scale(start), max(scale(start) + 1, scale(stop)))}


def scclip_head(last: nn.Module, outputs: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
    """SC-CLIP's end of the network: the tokens ``(B, 1 + N, C)`` after each block but the last (``outputs``) in,
    calibrated patch tokens ``(B, N, C)`` out (before ``ln_post``); ``last`` is the last block."""
    layers = scclip_layers(len(outputs) + 1)
    x = outputs[-1]
    class_token = x[:, :1]
    outliers = local_outliers(x[:, 1:])
    patches = replace_by_neighbours(x[:, 1:], outliers, grid)
    middle = _similarity(replace_by_neighbours(outputs[layers["pre"]][:, 1:], outliers, grid))
    patches = _aggregate(patches, middle)
    patches = _calibrated_attention(last, patches, middle) + SCCLIP_RESIDUAL_CLASS * class_token
    early = _similarity(outputs[layers["post"]][:, 1:])
    patches = _aggregate(patches, early)
    start, stop = layers["fusion"]
    fused = torch.stack(outputs[start:stop]).sum(dim=0)
    detail = _calibrated_attention(last, fused[:, 1:], middle) + SCCLIP_RESIDUAL_CLASS * fused[:, :1]
    return patches + _aggregate(detail, early)


def interpolate_positional_embedding(positional_embedding: torch.Tensor, native_grid: tuple[int, int],
                                     grid: tuple[int, int]) -> torch.Tensor:
    """A ViT positional embedding ``(1 + gh0*gw0, C)`` resized to ``(1 + gh*gw, C)`` as the official dense-CLIP code
    does: bicubic by the scale factor ``(g + 0.1) / g0``."""
    if tuple(grid) == tuple(native_grid):
        return positional_embedding
    class_pos, patch_pos = positional_embedding[:1], positional_embedding[1:]
    channels = patch_pos.shape[-1]
    patch_pos = patch_pos.reshape(1, native_grid[0], native_grid[1], channels).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos.float(), mode="bicubic",
                              scale_factor=((grid[0] + 0.1) / native_grid[0], (grid[1] + 0.1) / native_grid[1]))
    if tuple(patch_pos.shape[-2:]) != tuple(grid):  # pragma: no cover - the +0.1 makes the floor land on grid
        raise AssertionError(f"positional embedding resized to {tuple(patch_pos.shape[-2:])}, not {grid}")
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], channels).to(positional_embedding.dtype)
    return torch.cat([class_pos, patch_pos], dim=0)


__all__ = ["last_block", "scclip_head", "attention_block", "upper_quantile", "interpolate_positional_embedding", "local_outliers",
           "replace_by_neighbours", "neighbourhood_prior"]
