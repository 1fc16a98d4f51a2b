import numpy as np
import pytest
import torch

from clipomaly_ros import ClipomalyConfig
from clipomaly_ros.core.model.open_clip_backend import OpenClipBackend
from clipomaly_ros.core.model.dense import (DenseVisionEncoder, interpolate_positional_embedding, plan_windows,
                                 sliding_window_features)

pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM WEIGHTS")


@pytest.fixture(scope="module")
def backend(tiny_model_name):
    return OpenClipBackend(ClipomalyConfig(model=tiny_model_name, random_weights=True, device="cpu",
                                           inference_size=64))


def test_without_dense_change_pooled_output_equals_encode_image(backend):
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        pooled, patches = DenseVisionEncoder(backend.model.visual, "none")(images)
        reference = backend.model.encode_image(images)
    torch.testing.assert_close(pooled, reference, rtol=1e-5, atol=1e-5)
    assert patches.shape == (3, 4, 4, 32)


@pytest.mark.parametrize("method", ["clearclip", "naclip", "sclip", "maskclip"])
def test_dense_methods_change_the_patch_tokens_and_accept_any_grid(backend, method):
    images = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        _, plain = DenseVisionEncoder(backend.model.visual, "none")(images)
        _, dense = DenseVisionEncoder(backend.model.visual, method)(images)
    assert dense.shape == plain.shape == (1, 6, 10, 32)
    assert torch.isfinite(dense).all()
    assert not torch.allclose(dense, plain, atol=1e-4)


def test_positional_embedding_interpolation_keeps_native_grid_and_resizes_others(backend):
    visual = backend.model.visual
    native = interpolate_positional_embedding(visual.positional_embedding, (4, 4), (4, 4))
    assert native is visual.positional_embedding
    resized = interpolate_positional_embedding(visual.positional_embedding, (4, 4), (6, 10))
    assert resized.shape == (1 + 60, visual.positional_embedding.shape[1])
    torch.testing.assert_close(resized[0], visual.positional_embedding[0])


def test_window_plan_covers_the_whole_resized_image():
    layout = plan_windows((720, 1280), short_side=448, window=224, stride=112, patch=16)
    height, width = layout.resized
    assert height % 16 == 0 and width % 16 == 0 and min(height, width) == 448
    covered = np.zeros(layout.resized, dtype=int)
    for top, left in layout.origins:
        assert top % 16 == 0 and left % 16 == 0
        covered[top:top + 224, left:left + 224] += 1
    assert covered.min() >= 1 and covered.shape == (448, 800)
    small = plan_windows((40, 30), short_side=32, window=64, stride=32, patch=16)
    assert small.resized == (64, 64) and small.origins == ((0, 0),)


def per_window_reference(encoder, image, layout):
    """The straightforward way: embed and run every window on its own, average the windows' unit features."""
    patch = layout.patch
    total = torch.zeros(*layout.grid, encoder.visual.output_dim)
    counts = torch.zeros(*layout.grid, 1)
    g = layout.window // patch
    for top, left in layout.origins:
        _, patches = encoder.forward_pixels(image[None, :, top:top + layout.window, left:left + layout.window])
        total[top // patch:top // patch + g, left // patch:left // patch + g] += torch.nn.functional.normalize(
            patches[0], dim=-1)
        counts[top // patch:top // patch + g, left // patch:left // patch + g] += 1
    return total / counts


def test_sliding_windows_equal_embedding_every_window_alone_and_average_overlaps(backend):
    layout = plan_windows((100, 170), short_side=64, window=64, stride=32, patch=16)
    image = torch.randint(0, 256, (3, *layout.resized)).float()
    with torch.no_grad():
        (grid,) = sliding_window_features(backend.runtime.dense, [image], [layout], batch_size=2)
        (single,) = sliding_window_features(backend.runtime.dense, [image], [layout], batch_size=0)
        reference = per_window_reference(backend.encoder, image, layout)
    assert grid.shape == (layout.resized[0] // 16, layout.resized[1] // 16, 32)
    assert (grid.norm(dim=-1) <= 1 + 1e-5).all() and torch.isclose(grid[0, 0].norm(), torch.tensor(1.0))
    torch.testing.assert_close(grid, single)  # batching must not change the result
    torch.testing.assert_close(grid, reference, rtol=1e-4, atol=1e-5)  # windows cut from the image in one gather


def test_a_location_under_several_identical_windows_scores_as_under_one():
    from clipomaly_ros.core.model.dense import fuse_windows

    layout = plan_windows((96, 160), short_side=96, window=64, stride=32, patch=16)
    text = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    scene = torch.nn.functional.normalize(torch.randn(*layout.grid, 8), dim=-1)  # what every window sees
    g = layout.window // layout.patch
    windows = torch.stack([scene[top // 16:top // 16 + g, left // 16:left // 16 + g] for top, left in layout.origins])
    assert layout.coverage.max() >= 4  # some locations lie under four windows
    torch.testing.assert_close(fuse_windows(windows, layout) @ text.T, scene @ text.T)  # as under one window
    different = torch.nn.functional.normalize(torch.randn(*windows.shape), dim=-1)
    fused = fuse_windows(different, layout)
    # where two windows overlap, the score is the mean of their cosine similarities, not inflated
    expected = (different[0, :, 2:4] @ text.T + different[1, :, 0:2] @ text.T) / 2
    torch.testing.assert_close(fused[0:2, 2:4] @ text.T, expected[0:2])


def test_images_of_different_sizes_share_one_backbone_pass(backend):
    images = [np.random.default_rng(i).integers(0, 255, shape, dtype=np.uint8)
              for i, shape in enumerate([(64, 96, 3), (80, 64, 3), (64, 96, 3)])]
    batched = backend.dense_features_batch(images)
    for image, features in zip(images, batched):
        alone = backend.dense_features(image)
        assert features.working_size == alone.working_size
        torch.testing.assert_close(features.grid, alone.grid, rtol=1e-4, atol=1e-5)


def test_dense_features_of_any_input_size(backend):
    for shape in [(37, 53, 3), (300, 90, 3)]:
        image = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
        features = backend.dense_features(image)
        assert features.grid.shape[0] * 16 == features.working_size[0]
        assert features.grid.shape[1] * 16 == features.working_size[1]


def test_truncated_text_encoding_equals_open_clip_encode_text(backend):
    from clipomaly_ros.core.model.open_clip_backend import encode_text_truncated

    tokens = backend.tokenizer(["a photo of a deer.", "a photo of a very large cardboard box on the road.", "x"])
    with torch.no_grad():
        reference = backend.model.encode_text(tokens)
        truncated = encode_text_truncated(backend.model, tokens)
    torch.testing.assert_close(truncated, reference, rtol=1e-4, atol=1e-5)


def test_the_folded_normalisation_embeds_pixels_as_the_model_embeds_normalised_images(backend):
    pixels = torch.randint(0, 256, (1, 3, 64, 96)).float()
    normalised = (pixels / 255.0 - backend.mean) / backend.std
    with torch.no_grad():
        torch.testing.assert_close(backend.encoder.embed_pixels(pixels), backend.encoder.embed_patches(normalised),
                                   rtol=1e-4, atol=1e-4)


def test_region_crops_are_embedded_as_clip_embeds_images(backend):
    crops = [np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8) for i in range(3)]
    batch = torch.stack([(torch.from_numpy(c).permute(2, 0, 1).float() / 255.0 - backend.mean) / backend.std
                         for c in crops])
    with torch.no_grad():
        expected = torch.nn.functional.normalize(backend.model.encode_image(batch), dim=-1)
    torch.testing.assert_close(backend.encode_images(crops), expected, rtol=1e-4, atol=1e-5)
