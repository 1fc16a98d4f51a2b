"""Each dense method against a straightforward, independent implementation of its published formula, written
here sequence-first as the official code bases do, on a small random 12-block ViT (so SC-CLIP's layer indices are
the official ones). Per-patch cosine >= 0.9999 keeps a future change from drifting silently."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clipomaly_ros.core.model.dense import DenseVisionEncoder

TEST_DIR = Path(__file__).parent


@pytest.fixture(scope="module")
def visual():
    import open_clip

    open_clip.add_model_config(TEST_DIR / "model_configs")
    torch.manual_seed(0)
    model = open_clip.create_model("clipomaly-small-vit-12", pretrained=None)
    return model.visual.eval()


def official_positions(visual, rows, cols):
    """DINO-style resizing as in the official repositories: bicubic by the scale factor (n + 0.1) / n0."""
    table = visual.positional_embedding
    side = int(math.sqrt(table.shape[0] - 1))
    if (rows, cols) == (side, side):
        return table
    grid = table[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((rows + 0.1) / side, (cols + 0.1) / side), mode="bicubic")
    return torch.cat([table[:1], grid.permute(0, 2, 3, 1).reshape(rows * cols, -1)])


def tokens_before_last_block(visual, image):
    """(L, 1, C) sequence-first tokens after all blocks but the last, and every block's output."""
    x = visual.conv1(image)
    rows, cols = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.view(1, 1, -1), x], dim=1) + official_positions(visual, rows, cols)
    x = visual.ln_pre(x)
    outputs = []
    for block in visual.transformer.resblocks[:-1]:
        x = block(x)
        outputs.append(x.transpose(0, 1))
    return x.transpose(0, 1), outputs, (rows, cols)


def heads(attention, x):
    length, batch, width = x.shape
    count = attention.num_heads
    q, k, v = F.linear(x, attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.contiguous().view(length, batch * count, width // count).transpose(0, 1) for t in (q, k, v))
    return q, k, v, (width // count) ** -0.5


def out(attention, weights, v, length, batch, width):
    return attention.out_proj(torch.bmm(weights, v).transpose(0, 1).contiguous().view(length, batch, width))


def gaussian_addition(rows, cols, sigma):
    """NACLIP's neighbourhood as its code builds it: a Gaussian window convolved over one-hot patch maps."""
    c = 1 / (sigma * math.sqrt(2))
    ys = torch.linspace(-(2 * rows - 2) / 2 * c, (2 * rows - 2) / 2 * c, 2 * rows - 1)
    xs = torch.linspace(-(2 * cols - 2) / 2 * c, (2 * cols - 2) / 2 * c, 2 * cols - 1)
    window = torch.exp(-(torch.stack(torch.meshgrid(ys, xs, indexing="ij")) ** 2).sum(0))
    one_hot = torch.eye(rows * cols).view(rows * cols, 1, rows, cols)
    near = F.conv2d(one_hot, window[None, None], padding="same").view(rows * cols, rows * cols)
    return F.pad(near, (1, 0, 1, 0))


def reference_patches(visual, image, method):
    x, outputs, (rows, cols) = tokens_before_last_block(visual, image)
    block = visual.transformer.resblocks[-1]
    attention = block.attn
    length, batch, width = x.shape
    if method == "scclip":
        x = reference_scclip(visual, x, outputs, rows, cols)
    else:
        q, k, v, scale = heads(attention, block.ln_1(x))
        if method == "naclip":
            weights = F.softmax(torch.bmm(k, k.transpose(1, 2)) * scale + gaussian_addition(rows, cols, 5.0), -1)
            x = out(attention, weights, v, length, batch, width)
        elif method == "clearclip":
            x = out(attention, F.softmax(torch.bmm(q, q.transpose(1, 2)) * scale, -1), v, length, batch, width)
        elif method == "sclip":
            weights = (F.softmax(torch.bmm(q, q.transpose(1, 2)) * scale, -1)
                       + F.softmax(torch.bmm(k, k.transpose(1, 2)) * scale, -1))
            x = x + out(attention, weights, v, length, batch, width)
            x = x + block.mlp(block.ln_2(x))
        elif method == "maskclip":
            x = x + out(attention, torch.eye(length).expand(batch * attention.num_heads, -1, -1), v, length, batch,
                        width)
            x = x + block.mlp(block.ln_2(x))
        x = x[1:]
    return (visual.ln_post(x.transpose(0, 1)) @ visual.proj).reshape(rows, cols, -1)


def reference_scclip(visual, x, outputs, rows, cols, beta=0.4, res_cls=0.3):
    """SC-CLIP's forward after the penultimate block (batch of one), step by step as its paper's code goes."""
    tokens = x[1:, 0]
    squared = ((tokens[:, None] - tokens[None, :]) ** 2).sum(-1)
    near, index = torch.topk(squared, k=31, largest=False)
    near, index = near[:, 1:], index[:, 1:]
    reach = torch.max(near, near[:, -1:].expand_as(near))
    density = 30 / reach.mean(dim=1)
    factor = (density[index] / density[:, None]).mean(dim=1)
    outliers = torch.where(factor > torch.quantile(factor, 0.95))[0].tolist()

    def mend(patch_tokens):
        grid = patch_tokens.reshape(rows, cols, -1).clone()
        source = grid.clone()
        bad = {(i // cols, i % cols) for i in outliers}
        for r, c in bad:
            around = [source[rr, cc] for rr in range(r - 1, r + 2) for cc in range(c - 1, c + 2)
                      if (rr, cc) != (r, c) and 0 <= rr < rows and 0 <= cc < cols and (rr, cc) not in bad]
            if around:
                grid[r, c] = torch.stack(around).mean(0)
        return grid.reshape(rows * cols, -1)

    def similarity(patch_tokens):
        unit = patch_tokens / patch_tokens.norm(dim=-1, keepdim=True)
        return unit @ unit.T

    def aggregate(features, corr):
        corr = corr.clone()
        corr[corr < beta] = 0
        return (corr / (corr.sum(-1, keepdim=True) + 1e-6)) @ features

    block = visual.transformer.resblocks[-1]

    def calibrated(patch_tokens, middle):
        q, k, v, scale = heads(block.attn, block.ln_1(patch_tokens[:, None]))
        m = (middle - middle.mean()) * 3.0
        m[m < 0] = float("-inf")
        weights = (F.softmax(m, -1)[None] + F.softmax(torch.bmm(k, k.transpose(1, 2)) * scale, -1)) / 2
        return out(block.attn, weights, v, len(patch_tokens), 1, patch_tokens.shape[-1])[:, 0]

    cls = x[0, 0]
    patches = mend(tokens)
    middle = similarity(mend(outputs[8][1:, 0]))
    patches = aggregate(patches, middle)
    patches = calibrated(patches, middle) + res_cls * cls
    early = similarity(outputs[3][1:, 0])
    patches = aggregate(patches, early)
    fused = sum(outputs[i][:, 0] for i in range(3, 10))
    detail = calibrated(fused[1:], middle) + res_cls * fused[0]
    return (patches + aggregate(detail, early))[:, None]


@pytest.mark.parametrize("method", ["scclip", "naclip", "clearclip", "sclip", "maskclip"])
@pytest.mark.parametrize("size", [(128, 128), (96, 160)])
def test_each_method_equals_its_published_formula(visual, method, size):
    torch.manual_seed(1)
    image = torch.randn(1, 3, *size)
    with torch.no_grad():
        _, ours = DenseVisionEncoder(visual, method)(image)
        reference = reference_patches(visual, image, method)
    cosine = F.cosine_similarity(ours[0], reference, dim=-1)
    assert cosine.min() >= 0.9999, (method, float(cosine.min()))


def test_the_methods_differ_from_each_other_and_from_plain_clip(visual):
    torch.manual_seed(2)
    image = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        outputs = {m: DenseVisionEncoder(visual, m)(image)[1] for m in ("scclip", "naclip", "clearclip", "sclip",
                                                                         "maskclip", "none")}
    names = list(outputs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert F.cosine_similarity(outputs[a], outputs[b], dim=-1).mean() < 0.999, (a, b)


def test_a_batch_of_windows_gives_what_each_window_gives_alone(visual):
    torch.manual_seed(3)
    image = torch.randn(3, 3, 96, 128)
    encoder = DenseVisionEncoder(visual, "scclip")
    with torch.no_grad():
        batched = encoder(image)[1]
        alone = torch.cat([encoder(image[i:i + 1])[1] for i in range(3)])
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)


def test_pamr_sharpens_a_blurred_class_boundary_along_the_image_edge():
    from clipomaly_ros.core.method.pamr import PixelAdaptiveRefinement

    image = torch.zeros(3, 40, 80)
    image[:, :, 40:] = 1.0  # the edge lies between columns 39 and 40
    ramp = ((50 - torch.arange(80).float()) / 20).clamp(0, 1)  # class 0 fades out across the edge, 30..50
    maps = torch.stack([ramp, 1 - ramp])[:, None, :].expand(2, 40, 80).clone()

    def jump_at_the_edge(m):
        return float(m[0, :, 39].mean() - m[0, :, 40].mean())

    refined = PixelAdaptiveRefinement(image, steps=10, dilations=(1, 2)).refine(maps)
    assert jump_at_the_edge(maps) < 0.1 and jump_at_the_edge(refined) > 0.3  # the transition snaps to the edge
    assert (refined[0, :, :40] > refined[1, :, :40]).all() and (refined[0, :, 40:] < refined[1, :, 40:]).all()
    flat = PixelAdaptiveRefinement(torch.zeros(3, 40, 80), steps=10, dilations=(1, 2)).refine(maps)
    assert jump_at_the_edge(flat) < 0.1  # without an edge in the image it only smooths


def test_the_pipeline_with_pamr_still_finds_and_names_the_object(toy_config):
    import numpy as np

    from clipomaly_ros import Clipomaly
    from clipomaly_ros.tools.scenes import render_street_scene

    image, truth = render_street_scene(240, 320, planted="tire")
    result = Clipomaly(toy_config.replace(pamr_steps=3))(image)
    assert [a.name for a in result.anomalies] == ["tire"]
    assert (result.anomaly_mask & truth).sum() / (result.anomaly_mask | truth).sum() >= 0.9
    assert np.isfinite(result.anomaly_score).all()
