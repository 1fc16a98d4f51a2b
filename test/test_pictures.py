"""What people look at: the overlay's legend and labels, the synthetic drive, the Foxglove layout."""

import json
from pathlib import Path

import numpy as np
import pytest

from clipomaly_ros.core.method.overlay import class_colour, colour_semantic, label_position, render_overlay
from clipomaly_ros.core.method.results import AnomalyRecord, SegmentationResult
from clipomaly_ros.tools.scenes import synthetic_drive
from clipomaly_ros.ros.messages import OUTPUT_TYPES

REPOSITORY = Path(__file__).parent.parent


def result_with_anomaly(bbox, size=(120, 160)):
    height, width = size
    semantic = np.zeros(size, dtype=np.uint16)
    semantic[60:] = 1
    instances = np.zeros(size, dtype=np.uint16)
    x0, y0, x1, y1 = bbox
    semantic[y0:y1 + 1, x0:x1 + 1] = 2
    instances[y0:y1 + 1, x0:x1 + 1] = 1
    record = AnomalyRecord(id=1, name="mattress", score=0.9, bbox=bbox, area=int(instances.sum()),
                           centroid=((x0 + x1) / 2, (y0 + y1) / 2), candidates=(("mattress", 0.9),))
    return SegmentationResult(semantic=semantic, labels=["sky", "road", "mattress"],
                              anomaly_score=np.zeros(size, np.float32), anomaly_mask=instances > 0,
                              instances=instances, anomalies=[record], known_count=2)


@pytest.mark.parametrize("bbox", [(0, 0, 30, 10), (150, 110, 159, 119), (0, 0, 159, 119), (70, 50, 90, 70),
                                  (140, 0, 159, 119)])
def test_labels_stay_inside_the_image_next_to_their_region(bbox):
    image_size = (120, 160)
    text_size, baseline = (60, 10), 3
    x, y = label_position(text_size, baseline, bbox, image_size)
    left, top, right, bottom = x, y - text_size[1] - 1, x + text_size[0], y + baseline
    assert 0 <= left and right < image_size[1] and 0 <= top and bottom < image_size[0]
    x0, y0, x1, y1 = bbox
    # next to the region (within a few pixels of its box, or inside it), never somewhere else in the image
    assert top <= y1 + 4 and bottom >= y0 - 4 and left <= x1 + 1


def test_overlay_draws_a_legend_of_the_classes_present_and_the_label():
    image = np.full((120, 160, 3), 90, np.uint8)
    result = result_with_anomaly((60, 80, 100, 100))
    plain = render_overlay(image, result, legend=False)
    drawn = render_overlay(image, result)
    legend_area = np.s_[0:40, 80:]  # top right quarter: OpenCV's font metrics differ between versions
    assert (plain[legend_area] != drawn[legend_area]).any()
    for name in ("sky", "road", "mattress"):  # each present class has its swatch colour in the legend
        colour = np.array(class_colour(name))
        assert (drawn[legend_area] == colour).all(axis=-1).sum() >= 9, name


def test_legend_lists_only_classes_in_the_frame():
    image = np.full((120, 160, 3), 90, np.uint8)
    result = result_with_anomaly((60, 80, 100, 100))
    result.labels.append("truck")  # a known label not in the frame gets no swatch
    drawn = render_overlay(image, result)
    assert not (drawn == np.array(class_colour("truck"))).all(axis=-1).any()


def test_colour_semantic_uses_the_class_colours():
    result = result_with_anomaly((60, 80, 100, 100))
    colours = colour_semantic(result)
    assert (colours[0, 0] == class_colour("sky")).all() and (colours[90, 80] == class_colour("mattress")).all()


def test_synthetic_drive_has_a_mattress_then_a_rolling_tyre():
    frames = synthetic_drive(seconds=3.0, rate_hz=10.0, height=180, width=320)
    assert len(frames) == 30 and all(b.stamp_ns - a.stamp_ns == 100_000_000 for a, b in zip(frames, frames[1:]))
    assert frames[0].objects == {} and set(frames[10].objects) == {"mattress"}
    assert set(frames[-1].objects) == {"mattress", "tire"}
    mattress_areas = [f.objects["mattress"].sum() for f in frames[5:]]
    assert mattress_areas == sorted(mattress_areas) and mattress_areas[-1] > 2 * mattress_areas[0]  # approaching
    tyre_x = [np.flatnonzero(f.objects["tire"].any(axis=0)).mean() for f in frames[15:]]
    assert all(b > a for a, b in zip(tyre_x, tyre_x[1:]))  # rolling left to right
    again = synthetic_drive(seconds=3.0, rate_hz=10.0, height=180, width=320)
    assert all((a.image == b.image).all() for a, b in zip(frames, again))


def test_foxglove_layout_shows_the_nodes_topics():
    layout = json.loads((REPOSITORY / "foxglove" / "clipomaly_layout.json").read_text())
    panels = layout["configById"]

    def leaves(node):
        return [node] if isinstance(node, str) else leaves(node["first"]) + leaves(node["second"])

    assert sorted(leaves(layout["layout"])) == sorted(panels)
    topics = set()
    for config in panels.values():
        topic = config.get("imageMode", {}).get("imageTopic") or config.get("topicPath") or config.get("topicToRender")
        topics |= {topic.split(".")[0]} if topic else set(config["topics"])  # a 3D panel lists its topics
    outputs = {f"/{name}" for name in OUTPUT_TYPES}
    assert {"/overlay", "/semantic_color", "/anomaly_score", "/anomalies", "/anomaly_markers", "/diagnostics"} <= topics
    assert topics - outputs == {"/camera/image_raw", "/diagnostics"}


def test_overlay_outlines_only_the_anomalies_given():
    from clipomaly_ros.core.method.overlay import ANOMALY_COLOUR

    image = np.full((120, 160, 3), 90, np.uint8)
    result = result_with_anomaly((60, 80, 100, 100))
    yellow = np.array(ANOMALY_COLOUR)
    assert (render_overlay(image, result) == yellow).all(axis=-1).sum() > 20
    assert not (render_overlay(image, result, records=[]) == yellow).all(axis=-1).any()


def test_replayed_overlay_outlines_no_unconfirmed_track(tmp_path, capsys):
    """publish_unconfirmed: false keeps a track off the overlay until it is confirmed (its third frame)."""
    from rosbags.highlevel import AnyReader

    from clipomaly_ros.core.method.overlay import ANOMALY_COLOUR
    from clipomaly_ros.ros.bags import typestore_with_built_msgs
    from clipomaly_ros.ros.decoding import image_msg_to_rgb
    from clipomaly_ros.tools.cli import main

    from helpers import toy_frames, write_image_bag

    image, planted, _ = toy_frames(1, planted=("mattress",))[0]
    write_image_bag(tmp_path / "in", [image] * 4)
    assert main(["replay", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--backend", "toy",
                 "--inference-size", "240"]) == 0
    with AnyReader([tmp_path / "out"], default_typestore=typestore_with_built_msgs()) as reader:
        overlays = [image_msg_to_rgb(reader.deserialize(raw, c.msgtype)) for c, _, raw in reader.messages()
                    if c.topic == "/overlay"]
        published = [len(reader.deserialize(raw, c.msgtype).detections) for c, _, raw in reader.messages()
                     if c.topic == "/anomalies"]
    outlined = [int((overlay == np.array(ANOMALY_COLOUR)).all(axis=-1).sum()) for overlay in overlays]
    assert published == [0, 0, 1, 1] and outlined[0] == outlined[1] == 0 and min(outlined[2:]) > 20, outlined


def test_gif_keeps_the_legend_colours_exact(tmp_path):
    """A GIF holds 256 colours: the legend's class colours are kept as they are, whatever the frames hold."""
    from PIL import Image

    from clipomaly_ros.tools.demo import write_gif

    rng = np.random.default_rng(0)
    result = result_with_anomaly((60, 80, 100, 100))
    # scenes in shades near the class colours, as camera images are: a palette made from them alone would hold
    # averages of those shades, not the class colours themselves
    shades = np.array([class_colour(name) for name in result.labels])[result.semantic]
    frames = [render_overlay(np.clip(shades + rng.integers(-12, 13, shades.shape), 0, 255).astype(np.uint8), result)
              for _ in range(3)]
    colours = [class_colour(name) for name in result.labels]
    write_gif(tmp_path / "a.gif", frames, [100.0] * 3, exact_colours=colours)
    gif = Image.open(tmp_path / "a.gif")
    for index in range(3):
        gif.seek(index)
        picture = np.asarray(gif.convert("RGB"))
        for name in result.labels:  # each swatch keeps every pixel of its exact colour
            colour = np.array(class_colour(name))
            drawn = (frames[index][:40, 80:] == colour).all(axis=-1).sum()
            kept = (picture[:40, 80:] == colour).all(axis=-1) & (frames[index][:40, 80:] == colour).all(axis=-1)
            assert drawn >= 9 and kept.sum() == drawn, (index, name)
