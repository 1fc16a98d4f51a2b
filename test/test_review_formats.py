"""The labelling tools' formats both ways: masks with holes and islands come back pixel-identical, reviewed
annotations come back as decisions, and a mask a tool corrected replaces ours in the decision while the index
keeps the original. Label Studio's brush encoding is checked against the output of its own SDK."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import shutil
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from pycocotools.coco import COCO
from review_fixtures import island_mask, write_mined

from clipomaly_ros.tools.mining.report import ROW_SCHEMA, write_index
from clipomaly_ros.tools.review import decisions, masks
from clipomaly_ros.tools.review.exchange import detect, export, import_file
from clipomaly_ros.tools.review.formats import FormatError
from clipomaly_ros.tools.review.index import load_index

EXAMPLE = Path(__file__).parent / "data" / "label_studio_brush.json"


@pytest.fixture
def mined(tmp_path):
    write_mined(tmp_path / "mined", count=9)
    return load_index(tmp_path / "mined")


def corrected(mask: np.ndarray) -> np.ndarray:
    """A reviewer's edit: a third island, and the hole filled."""
    mask = mask.copy()
    mask[30:34, 2:6] = True
    mask[12:16, 10:16] = True
    return mask


def test_brush_rle_equals_label_studio_sdk_output():
    example = json.loads(EXAMPLE.read_text())   # written by the SDK's own mask2rle (label-studio-sdk 2.1.2)
    mask = np.array([[c == "1" for c in row] for row in example["mask_rows"]])
    assert masks.brush_encode(mask) == example["rle"]
    assert np.array_equal(masks.brush_decode(example["rle"], example["height"], example["width"]), mask)


def test_brush_rle_of_whole_bytes_ends_in_a_zero_byte_as_the_sdks():
    mask = np.array([[False, False, False, True, False, False]])   # runs of 12, 4 and 8 values: 53 + 43 = 96 bits
    rle = masks.brush_encode(mask)
    assert len(rle) == 96 // 8 + 1 and rle[-1] == 0   # the SDK pads with 8 - bits % 8 zero bits, so 8 here
    assert np.array_equal(masks.brush_decode(rle, 1, 6), mask)


@pytest.mark.parametrize("index", range(4))
def test_every_mask_form_round_trips_pixel_identical(index):
    mask = island_mask(index)
    assert np.array_equal(masks.decode(masks.encode(mask)), mask)
    assert np.array_equal(masks.brush_decode(masks.brush_encode(mask), *mask.shape), mask)
    runs, box = masks.box_runs(mask)
    assert np.array_equal(masks.from_box_runs(runs, box, *mask.shape), mask)
    big = np.zeros((300, 400), bool)
    big[:, :] = True   # one run longer than the brush's longest run field (2 ** 16 values)
    big[5, 7] = False
    assert np.array_equal(masks.brush_decode(masks.brush_encode(big), 300, 400), big)


def exported_masks(kind: str, path: Path, index) -> dict[str, np.ndarray]:
    """Each candidate's mask as the exported file holds it."""
    if kind == "coco":   # read by pycocotools' own reader, as a training pipeline reads it
        with contextlib.redirect_stdout(io.StringIO()):   # it prints its progress
            document = COCO(str(path))
        return {a["candidate_id"]: document.annToMask(a).astype(bool) for a in document.dataset["annotations"]}
    if kind == "label-studio":
        return {t["data"]["candidate_id"]: masks.brush_decode(t["predictions"][0]["result"][0]["value"]["rle"], 48, 64)
                for t in json.loads(path.read_text())}
    found = {}
    for image in ElementTree.parse(path).getroot().iter("image"):
        for element in image.iter("mask"):
            runs = [int(v) for v in element.get("rle").split(",")]
            box = tuple(int(element.get(k)) for k in ("left", "top", "width", "height"))
            found[element.find("attribute[@name='candidate_id']").text] = masks.from_box_runs(runs, box, 48, 64)
    return found


@pytest.mark.parametrize("kind, suffix", [("coco", "json"), ("label-studio", "json"), ("cvat", "xml")])
def test_export_holds_every_mask_pixel_identical(mined, tmp_path, kind, suffix):
    path = tmp_path / f"out.{suffix}"
    export(mined, kind, path)
    assert detect(path) == kind
    found = exported_masks(kind, path, mined)
    assert set(found) == set(mined.by_id)
    for candidate, row in mined.by_id.items():
        assert np.array_equal(found[candidate], masks.decode(row["mask"])), candidate


def fresh_copy(index, tmp_path):
    """The same mined folder without its reviews, as another reviewer's machine holds it."""
    target = tmp_path / "elsewhere"
    shutil.copytree(index.folder, target, ignore=shutil.ignore_patterns(decisions.REVIEWS_FILE))
    return load_index(target)


@pytest.mark.parametrize("kind, suffix", [("coco", "json"), ("cvat", "xml")])
def test_reviewed_export_imports_back_as_the_same_decisions(mined, tmp_path, kind, suffix):
    fixed = corrected(masks.decode(mined.by_id["c00004"]["mask"]))
    decisions.append(mined.folder, [
        decisions.make_decision("c00001", "rename", name="sofa", reviewer="ann"),
        decisions.make_decision("c00002", "known_class", known_class="car", reviewer="ann"),
        decisions.make_decision("c00003", "reject", reviewer="ann"),
        decisions.make_decision("c00004", "accept", name=mined.by_id["c00004"]["name"], reviewer="ann",
                                mask=masks.encode(fixed))])
    path = tmp_path / f"reviewed.{suffix}"
    export(mined, kind, path)
    if kind == "coco":
        document = json.loads(path.read_text())
        category = {c["id"]: c["name"] for c in document["categories"]}
        named = {a["candidate_id"]: category[a["category_id"]] for a in document["annotations"]}
        assert named["c00003"] == "rejected" and named["c00001"] == "sofa" and named["c00002"] == "car"
    elsewhere = fresh_copy(mined, tmp_path)
    outcome = import_file(elsewhere, path, None, "importer")
    got = {line["candidate_id"]: line for line in outcome.lines}
    assert {c: (line["decision"], line["name"], line["known_class"]) for c, line in got.items()} == {
        "c00001": ("rename", "sofa", None), "c00002": ("known_class", None, "car"), "c00003": ("reject", None, None),
        "c00004": ("accept", mined.by_id["c00004"]["name"], None)}
    assert outcome.without_decision == 5 and outcome.corrected_masks == 1
    assert np.array_equal(masks.decode(got["c00004"]["mask"]), fixed)
    assert np.array_equal(masks.decode(elsewhere.by_id["c00004"]["mask"]), island_mask(4))   # the original stays
    assert all("mask" not in line for c, line in got.items() if c != "c00004")


def test_label_studio_review_imports_with_reviewer_time_and_lead_time(mined, tmp_path):
    path = tmp_path / "tasks.json"
    export(mined, "label-studio", path)
    assert "<BrushLabels" in path.with_suffix(".label_config.xml").read_text()
    tasks = json.loads(path.read_text())
    by_id = {task["data"]["candidate_id"]: task for task in tasks}
    fixed = corrected(island_mask(5))

    def annotate(candidate, result, **extra):
        by_id[candidate]["annotations"] = [{"id": 1, "completed_by": {"email": "ann@example.org"},
                                            "created_at": "2026-12-01T09:00:00.000000Z",
                                            "updated_at": "2026-12-01T10:15:30.250000+01:00", "lead_time": 12.5,
                                            "result": result, **extra}]

    brush = by_id["c00001"]["predictions"][0]["result"]
    annotate("c00001", brush)                                                             # accepted as it is
    renamed = json.loads(json.dumps(brush))
    renamed[0]["value"]["brushlabels"] = ["sofa"]
    renamed[0]["value"]["rle"] = masks.brush_encode(fixed)
    annotate("c00005", renamed)                                                           # renamed, mask redrawn
    known = json.loads(json.dumps(by_id["c00002"]["predictions"][0]["result"]))
    known[0]["value"]["brushlabels"] = ["car"]
    annotate("c00002", known)                                                             # a known class
    annotate("c00003", [{"type": "choices", "from_name": "decision", "to_name": "image",
                         "value": {"choices": ["reject"]}}])
    annotate("c00006", [], was_cancelled=True)
    reviewed = tmp_path / "reviewed.json"
    reviewed.write_text(json.dumps(tasks))
    outcome = import_file(mined, reviewed, None, "importer")
    got = {line["candidate_id"]: line for line in outcome.lines}
    assert {c: (line["decision"], line["name"], line["known_class"]) for c, line in got.items()} == {
        "c00001": ("accept", mined.by_id["c00001"]["name"], None), "c00005": ("rename", "sofa", None),
        "c00002": ("known_class", None, "car"), "c00003": ("reject", None, None), "c00006": ("skip", None, None)}
    assert got["c00005"]["reviewer"] == "ann@example.org" and got["c00005"]["time"] == "2026-12-01T09:15:30.250Z"
    assert got["c00005"]["lead_time"] == 12.5 and got["c00005"]["seconds"] == 12.5
    assert np.array_equal(masks.decode(got["c00005"]["mask"]), fixed) and "mask" not in got["c00001"]
    assert outcome.without_decision == 4 and outcome.corrected_masks == 1


def test_imports_report_what_they_cannot_use(mined, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(FormatError, match="is not JSON"):
        import_file(mined, bad, None, "ann")
    bad.write_text(json.dumps({"something": 1}))
    with pytest.raises(FormatError, match="give --format"):
        import_file(mined, bad, None, "ann")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"images": [], "annotations": [
        {"candidate_id": "nobody", "review": {"decision": "reject"}},
        {"candidate_id": "c00001", "review": {"decision": "maybe"}}]}))
    outcome = import_file(mined, other, None, "ann")
    assert outcome.unknown_candidates == ["nobody"] and "decision must be one of" in outcome.problems[0]
    assert not outcome.lines and "1 named no candidate" in outcome.summary(other)


@pytest.mark.skipif(importlib.util.find_spec("fiftyone") is not None, reason="fiftyone is installed: see below")
def test_fiftyone_export_says_what_it_needs(mined, tmp_path):
    with pytest.raises(FormatError, match="needs the fiftyone package"):
        export(mined, "fiftyone", tmp_path / "dataset")


@pytest.mark.skipif(importlib.util.find_spec("fiftyone") is None,
                    reason="fiftyone is not installed: its database needs a download when installed, so it is no "
                           "test dependency (docs/review.md)")
def test_fiftyone_export_builds_a_dataset(mined, tmp_path):
    message = export(mined, "fiftyone", tmp_path / "clipomaly-test")
    assert "9 detections" in message


def test_imports_refuse_damaged_mask_counts(mined, tmp_path):
    short = masks.encode(np.zeros((48, 63), bool))["counts"]   # a column short of the 48 x 64 frame
    path = tmp_path / "damaged.json"
    path.write_text(json.dumps({"images": [], "annotations": [
        {"candidate_id": "c00001", "review": {"decision": "accept"}, "segmentation": {"size": [48, 64],
                                                                                       "counts": short}},
        {"candidate_id": "c00002", "review": {"decision": "reject"},
         "segmentation": {"size": [48, 64], "counts": short + "1"}}]}))
    outcome = import_file(mined, path, None, "ann")
    assert not outcome.lines and len(outcome.problems) == 2
    assert "counts add up to 3024 pixels" in outcome.problems[0]


def test_an_import_never_overrides_a_later_decision(mined, tmp_path):
    decisions.append(mined.folder, [
        decisions.make_decision("c00001", "rename", name="sofa", reviewer="ann", time="2026-12-01T09:00:00Z"),
        decisions.make_decision("c00002", "reject", reviewer="ann", time="2026-12-01T09:00:00Z")])
    path = tmp_path / "reviewed.json"
    export(mined, "coco", path)
    again = import_file(mined, path, None, "importer")            # the same decisions, read back
    assert again.lines == [] and again.not_newer == 2 and "2 were already recorded" in again.summary(path)
    decisions.append(mined.folder, [decisions.make_decision("c00001", "accept", name=mined.by_id["c00001"]["name"],
                                                            reviewer="bob", time="2026-12-02T09:00:00Z")])
    document = json.loads(path.read_text())
    for annotation in document["annotations"]:
        if annotation["candidate_id"] in ("c00001", "c00002"):   # changed in the tool, before or after bob
            annotation["review"] |= {"reviewer": "cem", "time": "2026-12-01T12:00:00+00:00"}
    path.write_text(json.dumps(document))
    outcome = import_file(mined, path, None, "importer")
    assert [line["candidate_id"] for line in outcome.lines] == ["c00002"] and outcome.not_newer == 1


def test_imports_refuse_masks_of_another_size_or_none(mined, tmp_path):
    path = tmp_path / "odd.json"
    path.write_text(json.dumps({"images": [], "annotations": [
        {"candidate_id": "c00001", "review": {"decision": "accept"},
         "segmentation": masks.encode(np.ones((48, 63), bool))},
        {"candidate_id": "c00002", "review": {"decision": "accept"},
         "segmentation": masks.encode(np.zeros((48, 64), bool))},
        {"candidate_id": "c00003", "review": {"decision": "rename", "name": "car"}}]}))
    outcome = import_file(mined, path, None, "ann")
    assert not outcome.lines and len(outcome.problems) == 3
    assert "63 x 48, the candidate's frame 64 x 48" in outcome.problems[0]
    assert "empty" in outcome.problems[1] and "use known_class" in outcome.problems[2]
    with pytest.raises(decisions.DecisionError, match="must hold pixels"):
        decisions.make_decision("c00001", "reject", reviewer="ann", mask=masks.encode(np.zeros((4, 4), bool)))


def test_label_configs_offer_every_name_the_page_offers(mined, tmp_path):
    export(mined, "label-studio", tmp_path / "tasks.json")
    config = (tmp_path / "tasks.label_config.xml").read_text()
    export(mined, "cvat", tmp_path / "task.xml")
    root = ElementTree.parse(tmp_path / "task.xml").getroot()
    cvat_labels = {label.findtext("name") for label in root.iter("label")}
    assert "rock" not in {row["name"] for row in mined.rows}            # from the vocabulary alone
    for name in {"rock", mined.names[0], "car", *(row["name"] for row in mined.rows)}:
        assert f'<Label value="{name}"/>' in config and name in cvat_labels, name
    assert cvat_labels == set(mined.names) | set(mined.known_classes)
    assert root.findtext("meta/task/size") == str(len(list(root.iter("image")))) == str(len(mined.rows))


def test_cvat_task_size_counts_frames_not_candidates(tmp_path):
    rows = write_mined(tmp_path / "shared", count=4, bags=1)
    for row in rows:
        row["best_stamp_ns"] = rows[0]["best_stamp_ns"]   # four candidates seen in one frame
    shutil.rmtree(tmp_path / "shared" / "anomalies.parquet")
    write_index(tmp_path / "shared", pa.Table.from_pylist(rows, schema=ROW_SCHEMA))
    export(load_index(tmp_path / "shared"), "cvat", tmp_path / "task.xml")
    root = ElementTree.parse(tmp_path / "task.xml").getroot()
    assert len(list(root.iter("mask"))) == 4 and root.findtext("meta/task/size") == "1"


@pytest.mark.parametrize("seed", range(3))
def test_compressed_counts_parse_to_the_masks_runs(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((37, 53)) < 0.3
    mask[:, 20:] = True                                          # long runs, so later runs are coded as differences
    rle = masks.encode(mask)
    assert masks.compressed_runs(rle["counts"]).tolist() == masks.runs(mask.T.ravel())
    assert masks.area(rle) == mask.sum()
