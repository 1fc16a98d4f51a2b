import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipomaly_ros.core.method import naming
from clipomaly_ros.core.method.naming import RegionNamer, crop_box, mask_pooled_embedding, region_crops
from clipomaly_ros.tools.scenes import render_street_scene
from clipomaly_ros.core.model.toy_backend import ToyColourBackend
from clipomaly_ros.core.method.unknown import CandidateRegion
from clipomaly_ros.core.method.vocabulary import TextEmbedder, VocabularyManager


def region_from_mask(mask):
    ys, xs = np.nonzero(mask)
    return CandidateRegion(mask=mask, area=int(mask.sum()), box=(xs.min(), ys.min(), xs.max(), ys.max()))


def test_mask_pooled_embedding_is_the_normalised_mean_under_the_mask():
    features = torch.nn.functional.normalize(torch.randn(4, 6, 8), dim=-1)
    mask = np.zeros((8, 12), bool)
    mask[2:6, 4:8] = True  # exactly grid cells (1..2, 2..3)
    expected = torch.nn.functional.normalize(features[1:3, 2:4].reshape(-1, 8).mean(0), dim=0)
    torch.testing.assert_close(mask_pooled_embedding(features, mask), expected)


def test_region_crops_are_square_keep_the_object_and_fade_the_background():
    image = np.full((100, 200, 3), 50, np.uint8)
    image[40:60, 90:110] = 250
    mask = np.zeros((50, 100), bool)  # a map at half the input's resolution
    mask[20:30, 45:55] = True
    frame = torch.from_numpy(image)
    crop, = region_crops(frame, [region_from_mask(mask)], margin=1.0, background=0.0, fill=(0, 0, 0), side=40)
    assert crop_box((100, 200), region_from_mask(mask), 1.0) == (80, 30, 120, 70)  # 40 x 40: no resampling
    assert crop.shape == (3, 40, 40)
    assert (crop == 250).all(dim=0).sum() == 400      # the whole object, untouched
    assert (crop == 0).all(dim=0).sum() == 1600 - 400  # background replaced by the fill colour
    half, = region_crops(frame, [region_from_mask(mask)], margin=1.0, background=0.5, fill=(0, 0, 0), side=40)
    assert half[0, 0, 0] == 25


def host_crop(image, region, margin, background, fill, side):
    """The crop as the naming cut it before (per crop, on the host): OpenCV bicubic when enlarging, antialiased
    bilinear when shrinking, the background faded with uint8 rounding."""
    left, top, right, bottom = crop_box(image.shape[:2], region, margin)
    crop = image[top:bottom, left:right]
    if side * side >= crop.shape[0] * crop.shape[1]:
        crop = cv2.resize(crop, (side, side), interpolation=cv2.INTER_CUBIC)
    else:
        crop = F.interpolate(torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None], size=(side, side),
                             mode="bilinear", antialias=True)[0].permute(1, 2, 0).numpy()
    rows = np.minimum(((top + (np.arange(side) + 0.5) * (bottom - top) / side) * region.mask.shape[0]
                       / image.shape[0]).astype(int), region.mask.shape[0] - 1)
    cols = np.minimum(((left + (np.arange(side) + 0.5) * (right - left) / side) * region.mask.shape[1]
                       / image.shape[1]).astype(int), region.mask.shape[1] - 1)
    keep = region.mask[np.ix_(rows, cols)].astype(np.uint8)
    faded = cv2.addWeighted(crop, background, np.full_like(crop, fill), 1.0 - background, 0.0)
    return cv2.copyTo(crop, keep, faded)


def coarse_regions(image, seed):
    """Regions on a 90 x 160 map as the pipeline finds them: the planted object, a few cells, a wide block."""
    rng = np.random.default_rng(seed)
    regions = []
    for _ in range(4):
        mask = np.zeros((90, 160), bool)
        h, w = rng.integers(2, 60), rng.integers(2, 120)
        y, x = rng.integers(0, 90 - h), rng.integers(0, 160 - w)
        mask[y:y + h, x:x + w] = rng.random((h, w)) < 0.8
        mask[y, x] = True
        regions.append(region_from_mask(mask))
    return regions


@pytest.mark.parametrize("method", ["roi_align", "host"])
@pytest.mark.parametrize("side", [64, 224])
def test_batched_crops_equal_the_host_crops_within_interpolation_error(side, method):
    """One batched resampling of all crops (roi_align over a box-filter pyramid) against the per-crop host resize
    it replaced: crops that shrink (by up to 20x), that enlarge and that keep their size, at the toy model's and a
    ViT-B/16's crop size."""
    from clipomaly_ros.tools.scenes import render_street_scene

    image, _ = render_street_scene(720, 1280, planted="garden gnome")
    for seed in range(3):
        regions = coarse_regions(image, seed)
        crops = region_crops(torch.from_numpy(image), regions, 0.25, 0.3, (122, 116, 104), side, method)
        for region, crop in zip(regions, crops):
            expected = host_crop(image, region, 0.25, 0.3, (122, 116, 104), side).astype(np.float32)
            difference = np.abs(crop.permute(1, 2, 0).numpy() - expected)
            # grey levels (0..255): bilinear against bicubic and antialiased filters, rounding, edges of the mask
            assert difference.mean() < 2.5, (seed, region.box, difference.mean())
            assert np.percentile(difference, 90) < 6.0, (seed, region.box)


def test_batched_crops_do_not_change_the_names_on_the_test_scenes(monkeypatch):
    """The whole pipeline over street scenes with the batched crops and with the host crops: the same regions get
    the same names, with scores within 0.02."""
    from clipomaly_ros.core.config import ClipomalyConfig
    from clipomaly_ros.core.method.pipeline import Clipomaly
    from clipomaly_ros.tools.scenes import labelled_street_scene

    pipeline = Clipomaly(ClipomalyConfig(backend="toy", inference_size=240, anomaly_vocabulary=[]))
    scenes = [labelled_street_scene(360, 640, seed=seed, planted=["mattress", "garden gnome", "tire", "deer"],
                                    planted_size=0.15)[0] for seed in range(8)]
    batched = [pipeline(image) for image in scenes]

    def host_crops(frame, regions, margin, background, fill, side):
        image = frame.cpu().numpy()
        return torch.stack([torch.from_numpy(host_crop(image, region, margin, background, fill, side)).permute(
            2, 0, 1).float() for region in regions])

    monkeypatch.setattr(naming, "region_crops", host_crops)
    host = [pipeline(image) for image in scenes]
    named = 0
    for ours, theirs in zip(batched, host):
        assert [a.name for a in ours.anomalies] == [a.name for a in theirs.anomalies]
        assert ours.rejected == theirs.rejected
        for a, b in zip(ours.anomalies, theirs.anomalies):
            assert abs(a.score - b.score) < 0.02
        named += len(ours.anomalies)
    assert named >= 6  # the scenes do hold named anomalies


def test_regions_are_named_and_known_looking_regions_rejected(tmp_path):
    backend = ToyColourBackend(inference_size=240)
    manager = VocabularyManager(TextEmbedder(backend, ("a photo of a {}.",)), ["mattress", "tire", "automobile"],
                                0.9, tmp_path)
    vocabulary = manager.set(["road", "car", "sky"], ["garden gnome"])
    image, planted = render_street_scene(240, 320, planted="garden gnome")
    features = backend.dense_features(image)
    road = np.zeros((240, 320), bool)
    road[200:230, 20:60] = True
    named = RegionNamer(backend).name_regions(
        image, features.grid, [region_from_mask(planted), region_from_mask(road)],
        vocabulary, top_k=2, logit_scale=50.0, crop_margin=0.25, crop_background=0.3, crop_weight=0.5, reported=3)
    gnome, asphalt = named
    assert (gnome.name, gnome.is_known) == ("garden gnome", False) and gnome.score > 0.9
    assert gnome.candidates[0][0] == "garden gnome" and len(gnome.candidates) == 3
    torch.testing.assert_close(gnome.embedding, vocabulary.anomaly_embeddings[0])
    assert (asphalt.name, asphalt.is_known) == ("road", True)
