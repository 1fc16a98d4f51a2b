import threading

import numpy as np
import pytest

from clipomaly_ros import Clipomaly, ClipomalyConfig, ConfigError
from clipomaly_ros.core.model.backend import ModelLoadError
from clipomaly_ros.core.images import InvalidImageError
from clipomaly_ros.tools.scenes import render_street_scene


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


@pytest.mark.parametrize("planted", ["mattress", "tire", "deer"])
def test_planted_object_is_segmented_and_named(toy_pipeline, planted):
    image, truth = render_street_scene(240, 320, planted=planted)
    result = toy_pipeline(image)
    assert iou(result.anomaly_mask, truth) >= 0.9
    assert [a.name for a in result.anomalies] == [planted]
    assert result.labels[: result.known_count] == list(toy_pipeline.config.known_classes)
    assert result.labels[result.known_count:] == [planted]
    assert (result.semantic[truth] == result.labels.index(planted)).mean() > 0.9


def test_scene_without_object_has_no_anomaly(toy_pipeline):
    image, _ = render_street_scene(240, 320, planted=None)
    result = toy_pipeline(image)
    assert result.anomalies == [] and not result.anomaly_mask.any()
    assert result.labels == list(toy_pipeline.config.known_classes)
    assert result.anomaly_score.max() < toy_pipeline.config.uncertainty_threshold


def test_adding_the_name_to_the_known_classes_at_run_time_removes_the_anomaly(toy_pipeline):
    image, truth = render_street_scene(240, 320, planted="mattress")
    assert toy_pipeline(image).anomalies
    encoded_before = toy_pipeline.embedder.encoded_names
    toy_pipeline.set_vocabulary(known_classes=list(toy_pipeline.config.known_classes) + ["mattress"])
    assert toy_pipeline.embedder.encoded_names == encoded_before + 1  # only the new name was encoded
    result = toy_pipeline(image)
    assert result.anomalies == [] and not result.anomaly_mask.any()
    assert (result.semantic[truth] == result.labels.index("mattress")).mean() > 0.9


def test_result_maps_have_the_input_resolution_and_consistent_ids(toy_pipeline):
    image, truth = render_street_scene(300, 500, planted="tire", planted_box=(60, 200, 140, 260))
    result = toy_pipeline(image)
    assert result.semantic.shape == result.anomaly_score.shape == result.instances.shape == (300, 500)
    assert result.semantic.dtype == np.uint16 and result.instances.dtype == np.uint16
    assert result.anomaly_score.dtype == np.float32
    assert 0.0 <= result.anomaly_score.min() and result.anomaly_score.max() <= 1.0
    assert result.semantic.max() < len(result.labels)
    assert np.array_equal(result.anomaly_mask, result.instances > 0)
    assert sorted(np.unique(result.instances[result.instances > 0])) == [a.id for a in result.anomalies]
    (record,) = result.anomalies
    ys, xs = np.nonzero(result.instances == record.id)
    assert record.area == len(xs)
    assert record.bbox == (xs.min(), ys.min(), xs.max(), ys.max())
    assert record.centroid == pytest.approx((xs.mean(), ys.mean()))
    assert record.candidates[0][0] == record.name and 0 < record.score <= 1
    assert iou(result.anomaly_mask, truth) >= 0.9
    assert set(result.timings_ms) == {"features", "tagging", "unknown", "naming", "extension", "output", "backbone",
                                      "total"}
    assert result.timings_ms["tagging"] < 1.0 and result.tags is None  # no tagger: nothing to run


def test_anomaly_score_means_the_same_with_and_without_regions(toy_pipeline):
    image, truth = render_street_scene(240, 320, planted="mattress")
    before = toy_pipeline(image).anomaly_score
    toy_pipeline.configure(min_region_area=10**7)  # no region can be kept now
    after = toy_pipeline(image)
    assert after.anomalies == []
    np.testing.assert_array_equal(before, after.anomaly_score)
    assert np.median(before[truth]) > 0.9 and np.median(before[~truth]) < 0.1


def test_region_explained_by_a_known_class_is_not_an_anomaly(toy_config):
    # threshold 0 makes every pixel "unknown": the whole scene is one region, and naming finds it is best
    # described by a known class, so it must be rejected rather than reported as an anomaly
    pipeline = Clipomaly(toy_config.replace(uncertainty_threshold=0.0, logit_scale=1.0))
    image, _ = render_street_scene(240, 320, planted=None)
    result = pipeline(image)
    assert result.anomalies == [] and result.rejected


def test_live_settings_are_validated_and_fixed_ones_refused(toy_pipeline):
    with pytest.raises(ConfigError, match="uncertainty_threshold"):
        toy_pipeline.configure(uncertainty_threshold=2.0)
    with pytest.raises(ConfigError, match="cannot change while running"):
        toy_pipeline.configure(model="ViT-L-14")
    with pytest.raises(ConfigError, match="known_classes is empty"):
        toy_pipeline.set_vocabulary(known_classes=[])
    assert toy_pipeline.config.uncertainty_threshold == ClipomalyConfig().uncertainty_threshold
    assert len(toy_pipeline.vocabulary.current.known) == 19


@pytest.mark.parametrize("image, words", [
    (np.zeros((10, 10, 3), dtype=np.float32), "uint8"),
    (np.zeros((10, 10), dtype=np.uint8), r"\(H, W, 3\)"),
    (np.zeros((10, 10, 4), dtype=np.uint8), "RGB"),
    (np.zeros((0, 10, 3), dtype=np.uint8), "empty"),
    ([[1, 2, 3]], "numpy array"),
])
def test_bad_images_are_clear_errors(toy_pipeline, image, words):
    with pytest.raises(InvalidImageError, match=words):
        toy_pipeline(image)


def test_vocabulary_change_while_segmenting(toy_pipeline):
    image, truth = render_street_scene(240, 320, planted="deer")
    known = list(toy_pipeline.config.known_classes)
    failures = []

    def segment():
        for _ in range(6):
            result = toy_pipeline(image)
            if result.semantic.max() >= len(result.labels):
                failures.append("id outside labels")

    thread = threading.Thread(target=segment)
    thread.start()
    for index in range(20):
        toy_pipeline.set_vocabulary(anomaly_vocabulary=["rock"] if index % 2 else ["dog", "rock"],
                                    known_classes=known + (["curb"] if index % 2 else []))
    thread.join()
    assert failures == []


def test_a_corrupt_checkpoint_says_the_file_is_not_weights(tmp_path, tiny_model_name):
    junk = tmp_path / "weights.pt"
    junk.write_bytes(b"\x00not a checkpoint" * 100)
    with pytest.raises(ModelLoadError, match="weights.pt could not be read as weights"):
        Clipomaly(ClipomalyConfig(model=tiny_model_name, checkpoint=str(junk), device="cpu"))
    import torch

    listing = tmp_path / "listing.pt"
    torch.save([1, 2, 3], listing)
    with pytest.raises(ModelLoadError, match="listing.pt could not be read as weights"):
        Clipomaly(ClipomalyConfig(model=tiny_model_name, checkpoint=str(listing), device="cpu"))


@pytest.mark.filterwarnings("ignore:.*RANDOM WEIGHTS")
def test_text_embeddings_are_keyed_by_the_weights_content(tmp_path, tiny_model_name):
    import torch

    from clipomaly_ros.core.model.open_clip_backend import OpenClipBackend

    random_model = OpenClipBackend(ClipomalyConfig(model=tiny_model_name, random_weights=True, device="cpu"))
    path = tmp_path / "weights.pt"
    torch.save(random_model.model.state_dict(), path)
    first = OpenClipBackend(ClipomalyConfig(model=tiny_model_name, checkpoint=str(path), device="cpu")).identity
    state = random_model.model.state_dict()
    state["logit_scale"] = state["logit_scale"] + 1.0  # other weights, same size, same path
    torch.save(state, path)
    second = OpenClipBackend(ClipomalyConfig(model=tiny_model_name, checkpoint=str(path), device="cpu")).identity
    assert first != second and str(path.name) in first


def test_missing_checkpoint_names_the_setting(tmp_path):
    with pytest.raises(ModelLoadError, match="checkpoint .*does not exist.*'checkpoint'"):
        Clipomaly(ClipomalyConfig(checkpoint=str(tmp_path / "nope.safetensors"), device="cpu"))


def test_unavailable_pretrained_weights_name_the_alternatives(tiny_model_name):
    # the tiny architecture has no pretrained tag, and HF_HUB_OFFLINE is set: nothing reaches the network
    with pytest.raises(ModelLoadError, match="no pretrained tag 'openai'.*checkpoint: PATH.*random_weights: true"):
        Clipomaly(ClipomalyConfig(model=tiny_model_name, pretrained="openai", device="cpu"))
    # the default weights, not cached, no model hub: one message with the way out, at once, in the words of
    # whoever reads it: a parameter file (the default), the command line or the node's parameters
    with pytest.raises(ModelLoadError, match="not in the local cache") as missing:
        Clipomaly(ClipomalyConfig(model="ViT-B-32", pretrained="openai", device="cpu"))
    assert "--checkpoint PATH" in missing.value.render("cli") and "--backend toy" in missing.value.render("cli")
    assert "--random-weights (a smoke test)" in missing.value.render("cli")
    assert "-p checkpoint:=PATH" in missing.value.render("ros") and "{" not in str(missing.value)
    with pytest.raises(ModelLoadError, match="not an open_clip architecture"):
        Clipomaly(ClipomalyConfig(model="ViT-Imaginary", device="cpu"))


def test_random_weights_only_when_asked_and_loudly(tiny_model_name, tmp_path):
    config = ClipomalyConfig(model=tiny_model_name, random_weights=True, device="cpu", inference_size=64,
                             cache_dir=str(tmp_path))
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        pipeline = Clipomaly(config)
    image = np.random.default_rng(1).integers(0, 255, (90, 150, 3), dtype=np.uint8)
    result = pipeline(image)
    assert result.semantic.shape == (90, 150)
    assert result.semantic.max() < len(result.labels)
    assert np.array_equal(result.anomaly_mask, result.instances > 0)


def test_open_clip_checkpoint_file_loads(tiny_model_name, tmp_path):
    import open_clip
    import torch

    model = open_clip.create_model(tiny_model_name)
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)
    pipeline = Clipomaly(ClipomalyConfig(model=tiny_model_name, checkpoint=str(path), device="cpu",
                                         inference_size=64, cache_dir=str(tmp_path)))
    state = pipeline.backend.model.state_dict()
    torch.testing.assert_close(state["visual.proj"], model.state_dict()["visual.proj"])


# --- device-side, coarse region finding against the straightforward full-resolution algorithm -------------------

def reference_anomaly_mask(pipeline, image):
    """The algorithm done the plain way, every map at the working resolution and scipy on the host: similarity
    maps, entropy, threshold, opening and closing, components, naming, then each new name's components where it
    beats every known class, resized to the input with nearest neighbours."""
    import math

    import cv2
    import torch
    from scipy import ndimage

    from clipomaly_ros.core.method.unknown import CandidateRegion, class_statistics, similarity_maps

    config, vocabulary = pipeline.config, pipeline.vocabulary.current
    features = pipeline.backend.dense_features(image)
    working = features.working_size
    known = class_statistics(config.logit_scale * similarity_maps(features.grid, vocabulary.known_embeddings,
                                                                  working))
    per_input = working[0] * working[1] / (image.shape[0] * image.shape[1])
    min_area = max(1, math.ceil(config.min_region_area * per_input))
    mask = known.uncertainty.numpy() > config.uncertainty_threshold
    disk = np.hypot(*np.ogrid[-2:3, -2:3]) <= config.cleanup_radius
    mask = ndimage.binary_closing(ndimage.binary_opening(mask, disk), disk)
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    areas = np.bincount(labels.ravel())
    regions = []
    for index in sorted(range(1, count + 1), key=lambda i: -areas[i])[:config.max_regions]:
        if areas[index] >= min_area:
            ys, xs = np.nonzero(labels == index)
            regions.append(CandidateRegion(labels == index, int(areas[index]), (xs.min(), ys.min(), xs.max(),
                                                                                ys.max())))
    named = pipeline.namer.name_regions(image, features.grid, regions, vocabulary, top_k=config.naming_top_k,
                                        logit_scale=config.logit_scale, crop_margin=config.crop_margin,
                                        crop_background=config.crop_background, crop_weight=config.crop_weight,
                                        reported=1)
    names = {v.name: v.embedding for v in named if not v.is_known}
    anomaly = np.zeros(working, bool)
    if names:
        new = config.logit_scale * similarity_maps(features.grid, torch.stack(list(names.values())), working)
        best, which = new.max(dim=0)
        wins = (best > known.best_logit).numpy()
        for offset in range(len(names)):
            components, count = ndimage.label(wins & (which.numpy() == offset), structure=np.ones((3, 3)))
            sizes = np.bincount(components.ravel())
            anomaly |= np.isin(components, [i for i in range(1, count + 1) if sizes[i] >= min_area])
    return cv2.resize(anomaly.astype(np.uint8), image.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0


def end_to_end_scenes():
    from clipomaly_ros.tools.scenes import synthetic_drive

    scenes = [render_street_scene(240, 320, planted=name)[0] for name in ("mattress", "tire", "deer")]
    scenes += [frame.image for frame in synthetic_drive(seconds=4.0)[10::12]]
    return scenes


def test_device_side_coarse_regions_give_the_anomalies_of_the_full_resolution_algorithm(toy_pipeline):
    for image in end_to_end_scenes():
        reference = reference_anomaly_mask(toy_pipeline, image)
        result = toy_pipeline(image)
        assert reference.any()
        assert iou(result.anomaly_mask, reference) >= 0.95


def test_max_regions_and_min_region_area_hold_for_the_final_instances(toy_config):
    from clipomaly_ros.tools.scenes import render_street

    objects = []
    names = ["mattress", "tire", "deer", "cardboard box", "traffic cone", "dog"]
    rng = np.random.default_rng(3)
    for index in range(24):  # many small odd objects, some far below the minimum area
        side = int(rng.integers(6, 30))
        x, y = int(rng.integers(40, 560)), int(rng.integers(180, 330))
        objects.append((names[index % len(names)], (x, y, x + side, y + side)))
    image, _ = render_street(360, 640, objects, seed=1)
    pipeline = Clipomaly(toy_config.replace(max_regions=4, min_region_area=300))
    result = pipeline(image)
    assert 1 <= len(result.anomalies) <= 4
    assert all(record.area >= 300 for record in result.anomalies)
    assert sorted(np.unique(result.instances[result.instances > 0])) == [a.id for a in result.anomalies]
    unlimited = Clipomaly(toy_config.replace(max_regions=255, min_region_area=1))(image)
    assert len(unlimited.anomalies) > 4  # the limits, not the scene, kept the first result small


def test_records_need_no_full_resolution_map(toy_pipeline):
    image, truth = render_street_scene(240, 320, planted="deer")
    result = toy_pipeline(image)
    assert [a.name for a in result.anomalies] == ["deer"] and result.anomalies[0].area > 1000
    assert result.computed_maps == []  # nothing at full resolution was made for the records
    assert result.anomaly_mask[truth].mean() > 0.9
    assert "instances" in result.computed_maps and "semantic" not in result.computed_maps
    assert result.semantic.shape == truth.shape and "semantic" in result.computed_maps


def test_a_batch_of_frames_gives_what_each_frame_gives_alone(toy_pipeline):
    images = [render_street_scene(240, 320, planted=name)[0] for name in ("mattress", None, "tire")]
    images.append(render_street_scene(180, 300, planted="deer")[0])
    batched = toy_pipeline.segment_batch(images)
    for image, result in zip(images, batched):
        alone = toy_pipeline(image)
        assert [(a.name, a.bbox, a.area) for a in result.anomalies] == [(a.name, a.bbox, a.area)
                                                                         for a in alone.anomalies]
        assert np.array_equal(result.semantic, alone.semantic)


def test_sampling_pixels_equals_resampling_the_whole_map():
    import torch

    from clipomaly_ros.core.method.maps import sample_points
    from clipomaly_ros.core.method.unknown import resample

    grid = torch.randn(5, 7, 11)
    full = resample(grid, (45, 100))
    ys, xs = torch.randint(0, 45, (300,)), torch.randint(0, 100, (300,))
    torch.testing.assert_close(sample_points(grid, (45, 100), ys, xs), full[:, ys, xs], rtol=1e-5, atol=1e-5)


def test_every_frame_of_the_synthetic_drive_finds_what_is_in_view(toy_config):
    from clipomaly_ros.tools.scenes import synthetic_drive

    pipeline = Clipomaly(toy_config)
    for frame in synthetic_drive(seconds=4.0)[::2]:  # small and far objects included: no flicker
        in_view = {name for name, mask in frame.objects.items() if mask.sum() >= toy_config.min_region_area}
        assert {a.name for a in pipeline(frame.image).anomalies} == in_view, frame.stamp_ns


@pytest.mark.parametrize("seed", range(4))
def test_the_semantic_map_resampled_along_class_edges_equals_resampling_every_pixel(seed):
    import torch

    from clipomaly_ros.core.method.maps import EDGE_SHARE_FOR_FULL_RESAMPLING, best_class_map
    from clipomaly_ros.core.method.unknown import resample

    generator = torch.Generator().manual_seed(seed)
    height, width = 100 + 7 * seed, 180 + 5 * seed
    # a scene's map: a few large regions, each class ahead inside its own, and small noise everywhere
    blocks = torch.randint(0, 19, (3, 4), generator=generator)
    owner = blocks.repeat_interleave(-(-height // 3), 0)[:height].repeat_interleave(-(-width // 4), 1)[:, :width]
    logits = torch.randn(19, height, width, generator=generator) * 0.3
    logits += 4.0 * torch.nn.functional.one_hot(owner, 19).permute(2, 0, 1)
    output = (720 - 37 * seed, 1280 - 91 * seed)
    best = logits.argmax(dim=0)
    edges = (best[:-1, :-1] != best[1:, :-1]) | (best[:-1, :-1] != best[:-1, 1:]) | (best[:-1, :-1] != best[1:, 1:])
    assert edges.float().mean() < EDGE_SHARE_FOR_FULL_RESAMPLING  # the edge-by-edge path is the one tested
    assert torch.equal(best_class_map(logits, output), resample(logits, output).argmax(dim=0))
