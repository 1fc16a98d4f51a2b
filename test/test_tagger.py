"""The RAM++ tagger: strict loading of the release's layout, each refusal in one line, open-set names."""

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from clipomaly_ros.core.model.tagger import (INITIAL_REWEIGHT_SCALE, RamPlus, TaggerLoadError, TagList, load_tagger,
                                             release_to_ours, tagger_input)
from tagger_fixture import (FINETUNED_REWEIGHT_SCALE, RELEASE_LOGIT_SCALE, TINY, reference_frames, release_state,
                            tiny_model, tiny_tags, write_checkpoint)

TINY_REFERENCE = Path(__file__).parent / "ram_plus_tiny_reference.json"


def frames(count=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 180, 320, 3), dtype=torch.uint8, generator=generator)


def probabilities(model, images):
    with torch.no_grad():
        return model(images)


def test_the_released_tag_list_has_4585_tags_with_thresholds():
    tags = TagList.released()
    assert len(tags.names) == 4585 == len(set(tags.names)) and tags.names[:2] == ("3D CG rendering", "3D glasses")
    assert tags.thresholds.dtype == np.float32 and 0.4 < tags.thresholds.min() < tags.thresholds.max() <= 1.0


def test_a_release_layout_file_loads_strictly_and_gives_the_same_probabilities(tmp_path, caplog):
    model = tiny_model()
    state = release_state(model)
    assert "logit_scale" in state and "reweight_scale" not in state  # the released file's two differences
    with caplog.at_level("INFO", logger="clipomaly_ros.core.model.tagger"):
        loaded = load_tagger(write_checkpoint(tmp_path / "ram.pth", state=state), tiny_tags())
    assert loaded.architecture == TINY and not any(p.requires_grad for p in loaded.parameters())
    assert float(loaded.reweight_scale) == pytest.approx(INITIAL_REWEIGHT_SCALE) == math.log(1 / 0.07)
    images = tagger_input(frames())
    expected = probabilities(model, images)
    assert torch.equal(loaded(images), expected) and expected.shape == (2, TINY.tags)
    assert 0 < float(expected.min()) and float(expected.max()) < 1
    (line,) = [record.getMessage() for record in caplog.records]
    assert "logit_scale 4.605 ignored" in line and "reweight_scale absent" in line and "log(1/0.07)" in line
    assert line.endswith("; ".join(loaded.load_notes)) and len(loaded.load_notes) == 2


@pytest.mark.parametrize("logit_scale", [RELEASE_LOGIT_SCALE, 0.0, -3.0, 50.0])
def test_the_releases_logit_scale_is_never_the_temperature_whatever_its_value(tmp_path, logit_scale):
    state = release_state(tiny_model())
    state["logit_scale"] = torch.tensor(logit_scale)
    loaded = load_tagger(write_checkpoint(tmp_path / "ram.pth", state=state), tiny_tags())
    images = tagger_input(frames())
    default = probabilities(tiny_model(), images)
    assert torch.equal(loaded(images), default)
    # had it been taken for the temperature, every probability would have moved
    as_temperature = probabilities(tiny_model(reweight_scale=logit_scale), images)
    assert bool(((as_temperature - default).abs() > 1e-4).all())


def test_a_fine_tuned_files_reweight_scale_is_used(tmp_path, caplog):
    finetuned = tiny_model(reweight_scale=FINETUNED_REWEIGHT_SCALE)
    state = release_state(finetuned, layout="finetuned")
    assert "logit_scale" not in state and float(state["reweight_scale"]) == pytest.approx(math.log(30))
    with caplog.at_level("INFO", logger="clipomaly_ros.core.model.tagger"):
        loaded = load_tagger(write_checkpoint(tmp_path / "ram.pth", state=state), tiny_tags())
    assert "reweight_scale 3.401 from the file" in caplog.text and "logit_scale" not in caplog.text
    images = tagger_input(frames())
    assert torch.equal(loaded(images), probabilities(finetuned, images))
    assert bool(((loaded(images) - probabilities(tiny_model(), images)).abs() > 1e-4).all())
    state["logit_scale"] = torch.tensor(RELEASE_LOGIT_SCALE)  # both present: the file's reweight_scale still rules
    both = load_tagger(write_checkpoint(tmp_path / "both.pth", state=state), tiny_tags())
    assert torch.equal(both(images), probabilities(finetuned, images))
    with pytest.raises(ValueError, match="use layout='finetuned'"):  # the fixture cannot drop what it needs
        release_state(finetuned)


@pytest.mark.parametrize("layout", ["release", "finetuned"])
def test_the_tiny_fixtures_probabilities_equal_the_authors_code_on_the_same_file(tmp_path, layout):
    """The authors' RAM++ code, built at the fixture's size and loaded by their own loader (strict=False), gave the
    recorded probabilities on these files (scripts/ram_plus_equality.py --tiny-reference)."""
    reference = json.loads(TINY_REFERENCE.read_text())
    theirs = torch.tensor(reference["probabilities"][layout])
    scale = FINETUNED_REWEIGHT_SCALE if layout == "finetuned" else INITIAL_REWEIGHT_SCALE
    weights = write_checkpoint(tmp_path / "ram.pth", tiny_model(reweight_scale=scale), layout=layout)
    images = tagger_input(reference_frames())
    ours = probabilities(load_tagger(weights, tiny_tags()), images)
    assert ours.shape == theirs.shape == (3, TINY.tags)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    if layout == "release":  # the reference tells the two readings of logit_scale apart
        misread = probabilities(tiny_model(reweight_scale=RELEASE_LOGIT_SCALE), images)
        assert bool(((misread - theirs).abs() > 1e-4).all())


def test_the_swin_keys_of_the_release_map_onto_timm_by_renaming_only():
    # the release downsamples at the end of a stage, timm at the start of the next
    assert release_to_ours("visual_encoder.layers.0.downsample.reduction.weight") == \
        "swin.layers.1.downsample.reduction.weight"
    assert release_to_ours("visual_encoder.layers.2.blocks.17.attn.qkv.weight") == \
        "swin.layers.2.blocks.17.attn.qkv.weight"
    assert release_to_ours("vision_multi.encoder.layer.1.output.LayerNorm.bias") == "head.layers.1.ffn_norm.bias"


@pytest.mark.parametrize("damage, message", [
    (lambda s: s.pop("fc.bias"), "missing key fc.bias"),
    (lambda s: s.update({"text_decoder.bias": torch.zeros(3)}), "unexpected key text_decoder.bias"),
    (lambda s: s.update({"fc.weight": torch.zeros(1, TINY.hidden + 1)}), "key fc.weight in"),
    (lambda s: s.update({"visual_encoder.layers.0.blocks.1.attn_mask":
                         s["visual_encoder.layers.0.blocks.1.attn_mask"] + 1.0}),
     "buffer visual_encoder.layers.0.blocks.1.attn_mask"),
    (lambda s: s.update({"visual_encoder.layers.0.blocks.0.attn_mask": torch.zeros(1)}),
     "unexpected key visual_encoder.layers.0.blocks.0.attn_mask"),
    (lambda s: s.update({"label_embed": torch.zeros(TINY.tags * TINY.descriptions + 1, TINY.width)}),
     "not a multiple of the 6 tags"),
    (lambda s: s.update({"logit_scale": torch.ones(2)}), "key logit_scale in"),
    (lambda s: s.update({"reweight_scale": torch.ones(1, 1)}), "key reweight_scale in"),
    (lambda s: s.update({"tagging_head.logit_scale": torch.ones(())}), "unexpected key tagging_head.logit_scale"),
])
def test_a_missing_extra_or_misshaped_key_is_refused_in_one_line_naming_it(tmp_path, damage, message):
    state = release_state(tiny_model())  # the release layout: logit_scale present, reweight_scale absent
    damage(state)
    with pytest.raises(TaggerLoadError) as refused:
        load_tagger(write_checkpoint(tmp_path / "ram.pth", state=state), tiny_tags())
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_the_head_saved_as_vision_multi_loads_too(tmp_path):
    state = {key.replace("tagging_head.", "vision_multi."): value for key, value in release_state(tiny_model()).items()}
    load_tagger(write_checkpoint(tmp_path / "ram.pth", state=state), tiny_tags())


class Foreign:
    pass


@pytest.mark.parametrize("write, message", [
    (lambda path: path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2]), "cannot be read"),
    (lambda path: path.write_bytes(b"<html>404 not found</html>"), "cannot be read"),
    (lambda path: path.write_bytes(pickle.dumps({"model": Foreign()})), "ram.pth"),
    (lambda path: torch.save({"model": {"a": 1}}, path), "no state dict of tensors"),
    (lambda path: path.unlink(), "not found: download ram_plus_swin_large_14m.pth"),
])
def test_a_truncated_foreign_or_missing_file_is_one_clear_line(tmp_path, write, message):
    path = write_checkpoint(tmp_path / "ram.pth")
    write(path)
    with pytest.raises(TaggerLoadError) as refused:
        load_tagger(path, tiny_tags())
    assert message in str(refused.value) and "\n" not in str(refused.value) and str(path) in str(refused.value)


def test_a_file_with_a_different_tag_count_needs_its_tag_list(tmp_path):
    path = write_checkpoint(tmp_path / "ram.pth")
    with pytest.raises(TaggerLoadError, match="not a multiple of the 4585 tags"):
        load_tagger(path)  # the released list: 6 x 51 rows is not a multiple of 4585


def test_open_set_names_are_tagged_from_their_text_embedding_without_changing_the_released_tags():
    model = tiny_model()
    with torch.no_grad():  # tag 2's descriptions all say v: its reweighted query is v, whatever the image
        vector = torch.nn.functional.normalize(torch.randn(TINY.width), dim=0)
        model.label_embed.view(TINY.tags, TINY.descriptions, TINY.width)[2] = vector
    images = tagger_input(frames(3))
    with torch.no_grad():
        released = model(images)
        model.set_open_set(("road debris", "tag two again"), torch.stack([-vector, vector]))
        both = model(images)
    assert both.shape == (3, TINY.tags + 2) and model.open_set_names == ("road debris", "tag two again")
    torch.testing.assert_close(both[:, :TINY.tags], released)  # the queries do not see each other
    torch.testing.assert_close(both[:, TINY.tags + 1], released[:, 2])  # the same query, the same probability
    assert not torch.allclose(both[:, TINY.tags], released[:, 2])
    with pytest.raises(ValueError, match="must be the tagger's 512"):
        model.set_open_set(("x",), torch.zeros(1, 32))


def test_tagger_input_is_an_antialiased_384_square_normalised_as_imagenet():
    white = torch.full((1, 50, 90, 3), 255, dtype=torch.uint8)
    images = tagger_input(white)
    assert images.shape == (1, 3, 384, 384)
    torch.testing.assert_close(images[0, :, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) /
                               torch.tensor([0.229, 0.224, 0.225]))


def test_the_model_is_a_timm_swin_and_a_plain_head():
    model = RamPlus(TINY, tiny_tags())
    assert type(model.swin).__module__ == "timm.models.swin_transformer"
    assert {type(m).__module__.split(".")[0] for m in model.head.modules()} <= {"torch", "clipomaly_ros"}


# --- in the pipeline (the toy backend's text space: synonyms share an axis) -----------------------------------------
def toy_tagger_file(tmp_path, fired, names=("mattress", "automobile", "street", "road", "abacus", "deer")):
    """A tiny tagger over ``names`` whose ``fired`` names always fire (threshold 0) and the others never (1); the
    open-set names (the default ``anomaly_vocabulary``) stay below the default ``tagger_threshold``."""
    import dataclasses

    from clipomaly_ros.core.model.toy_backend import ToyColourBackend

    tags = TagList(tuple(names), np.array([0.0 if name in fired else 1.0 for name in names], dtype=np.float32))
    architecture = dataclasses.replace(TINY, tags=len(names), width=ToyColourBackend().embed_dim)
    model = tiny_model(architecture=architecture, tags=tags)
    with torch.no_grad():  # every probability far below 0.5 (yet above 0): open-set names fire only when asked to
        model.fc.bias.fill_(-8.0)
    return write_checkpoint(tmp_path / "ram.pth", model), tags


def toy_pipeline(monkeypatch, weights, tags, **settings):
    from clipomaly_ros import Clipomaly, ClipomalyConfig
    from clipomaly_ros.core.model import tagger

    monkeypatch.setattr(tagger.TagList, "released", classmethod(lambda cls: tags))
    return Clipomaly(ClipomalyConfig(backend="toy", inference_size=240, tagger_weights=str(weights), **settings))


def placed(planted, left, seed=0):
    """A street with ``planted`` standing ``left`` pixels from the left edge (64 x 54 pixels, on the road)."""
    from clipomaly_ros.tools.scenes import render_street_scene

    return render_street_scene(240, 320, planted=planted, planted_box=(left, 150, left + 64, 204), seed=seed)[0]


def street(planted="mattress", seed=0):
    from clipomaly_ros.tools.scenes import render_street_scene

    return render_street_scene(240, 320, planted=planted, seed=seed)[0]


def test_tags_that_mean_a_known_class_are_not_candidates(tmp_path, monkeypatch):
    from clipomaly_ros.core.method.tagging import FrameTags

    weights, tags = toy_tagger_file(tmp_path, fired=set())
    pipeline = toy_pipeline(monkeypatch, weights, tags)
    vocabulary = pipeline.vocabulary.current
    names, embeddings = pipeline.tagger.candidates(FrameTags(tags.names, (0.9,) * 6, True), vocabulary.known,
                                                   vocabulary.known_embeddings, 0.9)
    # road is a known class; automobile and street mean car and road (the dictionary's exclusion rule)
    assert names == ["mattress", "abacus", "deer"]
    torch.testing.assert_close(embeddings, pipeline.embedder.embed(names))
    assert set(vocabulary.excluded) >= {"automobile", "street"}  # the same rule cleans the dictionary


@pytest.mark.parametrize("fired, expected", [({"mattress", "deer"}, "mattress"), ({"deer", "abacus"}, None)])
def test_under_naming_source_tagger_a_region_is_named_from_the_frames_tags(tmp_path, monkeypatch, fired, expected):
    weights, tags = toy_tagger_file(tmp_path, fired)
    pipeline = toy_pipeline(monkeypatch, weights, tags, naming_source="tagger", anomaly_vocabulary=("rock",))
    result = pipeline(street())
    assert result.tags.fresh and set(result.tags.names) == fired
    names = [anomaly.name for anomaly in result.anomalies]
    if expected:
        assert names == [expected]
    else:  # no tag names the mattress, and the dictionary is not asked
        assert "mattress" not in names and all(name in fired | {"rock"} for name in names)
    pipeline.configure(naming_source="dictionary")  # live: the dictionary names it
    dictionary = pipeline(street())
    assert [a.name for a in dictionary.anomalies] == ["mattress"] and dictionary.tags is None


def test_the_tagger_runs_every_period_frames_per_camera_early_for_a_new_region_and_batched(tmp_path, monkeypatch):
    weights, tags = toy_tagger_file(tmp_path, fired={"mattress"})
    pipeline = toy_pipeline(monkeypatch, weights, tags, naming_source="both", tagger_period=3)
    batches = []
    run = pipeline.tagger.runner

    def counted(images, open_set):
        batches.append(len(images))
        return run(images, open_set)

    pipeline.tagger.runner = counted
    fresh = [pipeline.segment_batch([street()], cameras=["front"])[0].tags.fresh for _ in range(7)]
    assert fresh == [True, False, False, True, False, False, True] and batches == [1, 1, 1]
    reused = pipeline.segment_batch([street()], cameras=["front"])[0]
    assert not reused.tags.fresh and reused.tags.names == ("mattress",)  # the last tags, reused
    assert [a.name for a in reused.anomalies] == ["mattress"]
    # two cameras due together: one tagger batch; an empty street, then a frame with a new object, is tagged at once
    both = pipeline.segment_batch([street(None), street(None)], cameras=["left", "right"])
    assert [r.tags.fresh for r in both] == [True, True] and batches[-1] == 2
    assert not pipeline.segment_batch([street(None)], cameras=["left"])[0].tags.fresh
    assert pipeline.segment_batch([street("deer")], cameras=["left"])[0].tags.fresh
    # the object moving on is no new object; one object going as another comes elsewhere is (the count stays one)
    assert not pipeline.segment_batch([placed("deer", 140)], cameras=["left"])[0].tags.fresh
    assert pipeline.segment_batch([placed("mattress", 20)], cameras=["left"])[0].tags.fresh
    pipeline.configure(tagger_period=1)
    assert pipeline.segment_batch([street(None)], cameras=["left"])[0].tags.fresh


def test_a_new_region_is_one_that_overlaps_none_of_the_previous_frames():
    from clipomaly_ros.core.method.tagging import has_new_region

    def box(x0, y0, x1, y1):
        mask = np.zeros((20, 30), bool)
        mask[y0:y1, x0:x1] = True
        return mask

    assert has_new_region([box(2, 2, 6, 6)], [])  # nothing before
    assert not has_new_region([box(3, 3, 7, 7)], [box(2, 2, 6, 6)])  # moved a little
    assert has_new_region([box(3, 3, 7, 7), box(20, 10, 25, 15)], [box(2, 2, 6, 6)])  # one more
    assert has_new_region([box(20, 10, 25, 15)], [box(2, 2, 6, 6)])  # one gone, another elsewhere
    assert not has_new_region([], [box(2, 2, 6, 6)])  # gone: nothing new to name


def test_a_vocabulary_word_the_release_lacks_is_tagged_open_set_with_its_threshold(tmp_path, monkeypatch):
    weights, tags = toy_tagger_file(tmp_path, fired=set())
    pipeline = toy_pipeline(monkeypatch, weights, tags, naming_source="tagger", anomaly_vocabulary=("garden gnome",),
                            tagger_threshold=0.0, tagger_period=1)
    assert pipeline.tagger.model.open_set_names == ("garden gnome",)
    assert pipeline(street()).tags.names == ("garden gnome",)
    pipeline.configure(tagger_threshold=1.0)
    assert pipeline(street()).tags.names == ()
    pipeline.configure(anomaly_vocabulary=("garden gnome", "lost hubcap"), tagger_threshold=0.0)
    assert set(pipeline(street()).tags.names) == {"garden gnome", "lost hubcap"}


def test_a_tagging_naming_source_without_weights_is_refused_with_what_to_do():
    from clipomaly_ros import ClipomalyConfig, ConfigError

    with pytest.raises(ConfigError, match="naming_source tagger needs the RAM\\+\\+ tagger: give tagger_weights"):
        ClipomalyConfig(backend="toy", naming_source="tagger")
    with pytest.raises(ConfigError, match="naming_source must be one of dictionary, tagger, both"):
        ClipomalyConfig(backend="toy", naming_source="ram")


def test_clipomaly_tag_prints_a_json_line_per_image_and_writes_every_probability(tmp_path, monkeypatch, capsys):
    import json

    import cv2

    from clipomaly_ros.core.model import tagger
    from clipomaly_ros.tools.cli import main

    tags = TagList(("mattress", "deer", "abacus", "zoo", "tire", "rock"), np.array([0.0, 1.0, 0.0, 1.0, 1.0, 0.0],
                                                                                  dtype=np.float32))
    monkeypatch.setattr(tagger.TagList, "released", classmethod(lambda cls: tags))
    model = tiny_model(tags=tags)
    weights = write_checkpoint(tmp_path / "ram.pth", model)  # the released layout
    paths = []
    for index in range(2):
        paths.append(tmp_path / f"street{index}.png")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(street(seed=index), cv2.COLOR_RGB2BGR))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "scores.npy"
    code = main(["tag", str(paths[0]), str(tmp_path / "broken.png"), str(paths[1]), "--tagger-weights", str(weights),
                 "--device", "cpu", "--scores-out", str(out)])
    assert code == 1  # one image was bad; the others were tagged
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [line["image"] for line in lines] == [str(paths[0]), str(paths[1])]
    assert "broken.png: not a readable image" in captured.err
    scores = np.load(out)
    assert scores.shape == (3, 6) and scores.dtype == np.float32 and np.isnan(scores[1]).all()
    with torch.no_grad():
        expected = model(tagger_input(torch.from_numpy(street(seed=0))[None]))[0].numpy()
    np.testing.assert_allclose(scores[0], expected, atol=1e-6)
    assert set(lines[0]["tags"]) == {"mattress", "abacus", "rock"}  # threshold 0 fires, 1 never does
    assert lines[0]["tags"] == sorted(lines[0]["tags"], key=lambda name: -lines[0]["scores"][name])
    assert main(["tag", str(paths[0]), "--tagger-weights", str(tmp_path / "gone.pth")]) == 2
    assert "tagger weights" in capsys.readouterr().err


def test_the_node_publishes_each_frames_tags_on_its_private_tags_topic_and_takes_the_parameters(tmp_path,
                                                                                             monkeypatch):
    pytest.importorskip("rclpy", reason="ROS 2 (rclpy) not installed: run scripts/setup_ros.sh")
    from lifecycle_msgs.msg import Transition
    from rclpy.parameter import Parameter
    from vision_msgs.msg import Classification

    from test_node_worker import TOY, image_msg, managed_node
    from test_ros_node import wait_for

    weights, tags = toy_tagger_file(tmp_path, fired={"mattress", "deer"})
    from clipomaly_ros.core.model import tagger

    monkeypatch.setattr(tagger.TagList, "released", classmethod(lambda cls: tags))
    with managed_node("/wtag", *TOY, Parameter("tagger_weights", value=str(weights)),
                      Parameter("naming_source", value="tagger"), Parameter("tagger_period", value=2)) \
            as (probe, node, name):
        received = []
        probe.node.create_subscription(Classification, f"{name}/tags", received.append, 10)
        assert probe.change(name, Transition.TRANSITION_CONFIGURE)
        assert probe.change(name, Transition.TRANSITION_ACTIVATE)
        assert node.pipeline.tagger is not None and node.pipeline.config.tagger_period == 2
        assert wait_for(lambda: node.count_subscribers(f"{name}/tags") > 0, timeout=10)
        for second in (1, 2):
            before = node.cameras[""].counters.processed
            node._on_image(node.cameras[""], image_msg(street(), second))
            assert wait_for(lambda: node.cameras[""].counters.processed > before, timeout=60)
        assert wait_for(lambda: len(received) >= 2, timeout=10)
        assert [m.header.stamp.sec for m in received[:2]] == [1, 2]
        for message in received[:2]:  # the second frame reuses the first's tags (period 2)
            assert {r.class_id for r in message.results} == {"mattress", "deer"}
            assert all(0 < r.score < 1 for r in message.results)
        result = node.set_parameters([Parameter("naming_source", value="dictionary")])[0]
        assert result.successful and node.pipeline.config.naming_source == "dictionary"
        assert not node.set_parameters([Parameter("naming_source", value="ram")])[0].successful


def test_mining_rows_carry_the_best_frames_tags(tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    import dataclasses

    from clipomaly_ros.tools.mining.report import ROW_SCHEMA
    from clipomaly_ros.tools.mining.shard import _gather, _row

    weights, tags = toy_tagger_file(tmp_path, fired={"mattress", "deer"})
    pipeline = toy_pipeline(monkeypatch, weights, tags, naming_source="tagger")
    image = street()
    result = pipeline(image)
    records = [dataclasses.replace(record, track_id=7) for record in result.anomalies]
    tracks = {}
    _gather(tracks, records, result, image, 1_000, True)
    shard = type("Shard", (), {"bag_name": "drive", "topic": "/cam", "id": "s1", "first": True, "last": True})()
    row = _row(shard, tracks[7], "s1-7")
    assert row["tags"] == list(result.tags.names) and set(row["tags"]) == {"mattress", "deer"}
    assert set(row) == set(ROW_SCHEMA.names)


def test_the_exported_tagger_equals_eager_and_runs_under_runtime_onnx(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    from clipomaly_ros.core.model.backend import ModelLoadError
    from clipomaly_ros.core.model.tagger import OnnxTagger, default_tagger_graph_path, load_tagger
    from clipomaly_ros.tools.cli import main

    few = tiny_tags()
    monkeypatch.setattr(TagList, "released", classmethod(lambda cls: few))
    weights = write_checkpoint(tmp_path / "ram.pth")
    graph = tmp_path / "tagger.onnx"
    assert main(["export", "--tagger", "--tagger-weights", str(weights), "-o", str(graph)]) == 0
    assert "check: ONNX Runtime (CPU) against eager PyTorch" in capsys.readouterr().out
    model = load_tagger(weights)
    runner = OnnxTagger(graph, model, torch.device("cpu"))
    images = tagger_input(frames(3))
    with torch.no_grad():  # no open-set names (the graph takes a blank one), then two
        torch.testing.assert_close(runner(images, model.open_set_embed), model(images), atol=1e-4, rtol=0)
        names = torch.nn.functional.normalize(torch.randn(2, TINY.width), dim=-1)
        torch.testing.assert_close(runner(images, names), model.probabilities(images, names), atol=1e-4, rtol=0)
    other = write_checkpoint(tmp_path / "other.pth", tiny_model(seed=1))
    with pytest.raises(ModelLoadError, match="was exported from other weights"):
        OnnxTagger(graph, load_tagger(other), torch.device("cpu"))
    # runtime onnx: the pipeline's tagger runs an exported graph (exported into the cache on the first start)
    from clipomaly_ros.core.method.pipeline import Clipomaly

    class Pipeline(Clipomaly):  # the toy backend has no windows to export; only the tagger's choice is tested
        def __init__(self, config):
            self.backend = type("Backend", (), {"device": torch.device("cpu")})()
            self.tagger_runner = self._tagger_runner(config, model)

    from clipomaly_ros import ClipomalyConfig

    config = ClipomalyConfig(backend="toy", runtime="onnx", cache_dir=str(tmp_path / "cache"),
                             tagger_weights=str(weights))
    built = Pipeline(config).tagger_runner
    assert isinstance(built, OnnxTagger) and default_tagger_graph_path(tmp_path / "cache", model).is_file()
    with pytest.raises(ModelLoadError, match="not found: write it with 'clipomaly export --tagger'"):
        Pipeline(config.replace(tagger_onnx_model=str(tmp_path / "gone.onnx")))


def test_bench_reports_the_taggers_cost_a_run_and_amortised_per_frame(tmp_path, monkeypatch, capsys):
    import json

    from clipomaly_ros.tools.cli import main

    weights, tags = toy_tagger_file(tmp_path, fired={"mattress"})
    from clipomaly_ros.core.model import tagger

    monkeypatch.setattr(tagger.TagList, "released", classmethod(lambda cls: tags))
    out = tmp_path / "bench.json"
    assert main(["bench", "--backend", "toy", "--size", "200x120", "--frames", "6", "--tagger-weights", str(weights),
                 "--tagger-period", "3", "--json", str(out)]) == 0
    cost = json.loads(out.read_text())["tagger"]
    assert cost["period"] == 3 and cost["frames"] == 6 and 1 <= cost["runs"] <= 3
    assert cost["gflop_per_run"] > 0 and cost["gflop_per_frame"] == pytest.approx(
        cost["gflop_per_run"] * cost["runs"] / 6, abs=0.1)
    assert cost["ms_per_run"] > 0 and cost["ms_per_frame"] <= cost["ms_per_run"]
    assert "RAM++ tagger (every 3 frames" in capsys.readouterr().out


def test_the_demo_hands_the_tagger_to_the_node(monkeypatch, tmp_path):
    from clipomaly_ros.tools import demo
    from clipomaly_ros.tools.cli import main

    handed = {}

    def fake_run_demo(out_dir, seconds, rate_hz, model_parameters, realtime):
        handed.update(model_parameters)
        raise KeyboardInterrupt  # stop here: the node is not started

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    main(["demo", "-o", str(tmp_path), "--tagger-weights", "/models/ram_plus_swin_large_14m.pth"])
    assert handed == {"tagger_weights": "/models/ram_plus_swin_large_14m.pth", "naming_source": "tagger"}
    text = demo.demo_parameters(handed)
    assert 'tagger_weights: "/models/ram_plus_swin_large_14m.pth"' in text and 'naming_source: "tagger"' in text


def test_replay_and_evaluate_name_with_the_tagger_and_replay_records_the_tags(tmp_path, monkeypatch, capsys):
    import json

    import cv2
    from rosbags.highlevel import AnyReader

    from clipomaly_ros.ros.bags import typestore_with_built_msgs
    from clipomaly_ros.tools.cli import main
    from clipomaly_ros.tools.scenes import render_street_scene
    from helpers import toy_frames, write_image_bag

    weights, tags = toy_tagger_file(tmp_path, fired={"mattress", "deer"})
    from clipomaly_ros.core.model import tagger

    monkeypatch.setattr(tagger.TagList, "released", classmethod(lambda cls: tags))
    toy = ["--backend", "toy", "--inference-size", "240", "--tagger-weights", str(weights), "--tagger-period", "1"]
    write_image_bag(tmp_path / "in", [frame for frame, _, _ in toy_frames(3)], topic="/camera/image_raw")
    assert main(["replay", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--namespace", "cam"] + toy) == 0
    with AnyReader([tmp_path / "out"], default_typestore=typestore_with_built_msgs()) as reader:
        connections = [c for c in reader.connections if c.topic == "/cam/tags"]
        assert connections and connections[0].msgtype == "vision_msgs/msg/Classification"
        messages = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages(connections=connections)]
    assert len(messages) == 3 and all({r.class_id for r in m.results} == {"mattress", "deer"} for m in messages)
    (tmp_path / "set" / "images").mkdir(parents=True)
    (tmp_path / "set" / "labels").mkdir()
    for index in range(2):
        image, truth = render_street_scene(240, 320, planted="mattress", seed=index)
        cv2.imwrite(str(tmp_path / "set" / "images" / f"{index}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(tmp_path / "set" / "labels" / f"{index}.png"), truth.astype(np.uint8))
    assert main(["evaluate", str(tmp_path / "set"), "--json", str(tmp_path / "r.json")] + toy) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["instances"] and all(instance["found"] for instance in report["instances"])


def test_runtime_compile_runs_the_tagger_compiled_warmed_up_for_the_cameras(tmp_path, monkeypatch):
    """torch.compile (inductor on the CPU): a graph for one frame and one for a batch, compiled by the warm-up,
    equal to eager."""
    from clipomaly_ros.core.model.tagger import CompiledTagger

    weights, tags = toy_tagger_file(tmp_path, fired={"mattress"})
    pipeline = toy_pipeline(monkeypatch, weights, tags, naming_source="tagger", runtime="compile", tagger_period=1)
    runner = pipeline.tagger.runner
    assert isinstance(runner, CompiledTagger)
    pipeline.warm_up((240, 320), cameras=2)
    images = tagger_input(frames(2))
    with torch.no_grad():
        eager = pipeline.tagger.model(images)
        torch.testing.assert_close(runner(images, pipeline.tagger.model.open_set_embed), eager, atol=1e-4, rtol=0)
        torch.testing.assert_close(runner(images[:1], pipeline.tagger.model.open_set_embed), eager[:1], atol=1e-4,
                                   rtol=0)
    results = pipeline.segment_batch([street(), street(seed=1)], cameras=["left", "right"])
    assert all(result.tags.fresh and result.tags.names == ("mattress",) for result in results)
    assert runner.ran_eager == 0 and pipeline.runtime_health() == {}
