import numpy as np
import torch

from clipomaly_ros.core.method.naming import RegionNamer, mask_pooled_embedding, region_crop
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


def test_region_crop_is_square_keeps_the_object_and_fades_the_background():
    image = np.full((100, 200, 3), 50, np.uint8)
    image[40:60, 90:110] = 250
    mask = np.zeros((50, 100), bool)  # a map at half the input's resolution
    mask[20:30, 45:55] = True
    crop = region_crop(image, region_from_mask(mask), margin=1.0, background=0.0, fill=(0, 0, 0))
    assert crop.shape[0] == crop.shape[1] == 40
    assert (crop == 250).all(axis=-1).sum() == 400      # the whole object, untouched
    assert (crop == 0).all(axis=-1).sum() == 1600 - 400  # background replaced by the fill colour
    half = region_crop(image, region_from_mask(mask), margin=1.0, background=0.5, fill=(0, 0, 0))
    assert half[0, 0, 0] == 25


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
