"""clipomaly release: reviewed finds to a versioned release, its provenance, bad reviews, and the loop measured on a
generated fleet (toy backend)."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from clipomaly_ros.core.config import read_parameter_file
from clipomaly_ros.tools.calibration import SearchSpace
from clipomaly_ros.tools.release.build import ReleaseOptions, build_release
from clipomaly_ros.tools.release.inputs import REVIEWS, ReleaseError, check_same_weights, read_mined, tree_hash
from clipomaly_ros.tools.release.trial import GNOME, prepare_trial
from clipomaly_ros.tools.release.vocabulary import merge_vocabulary, normalise

SMALL_SPACE = SearchSpace(thresholds=(0.5, 0.6), areas=(100, 400), radii=(2,), crop_weights=(0.5,))


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    """The trial fleet, indexed from its truth with false alarms (every kind of decision), reviewed by the script
    (10 % wrong) and released once."""
    folder = tmp_path_factory.mktemp("trial")
    mined, held_out, config = prepare_trial(folder, error_rate=0.1, held_out=(2, 3), mine=False)
    options = ReleaseOptions([mined], folder / "release", config, space=SMALL_SPACE, eval_data=held_out)
    return {"folder": folder, "mined": mined, "held_out": held_out, "config": config, "options": options,
            "record": build_release(options, log=lambda message: None)}


def test_names_are_normalised_and_covered_names_reported_not_added():
    assert normalise("  Garden   Gnomes ") == "garden gnome"
    assert normalise("Boxes.") == "box" and normalise("puppies") == "puppy" and normalise("glass") == "glass"
    assert normalise("bus") == "bus" and normalise("Dogs", known=("dogs",)) == "dogs"
    change = merge_vocabulary(["Garden Gnomes", "garden gnome", "Tires", "car", "Mattress", "sofa"],
                              vocabulary=("tire", "rock"), known_classes=("road", "car"),
                              dictionary=("mattress", "dog"))
    assert change.added == {"garden gnome": 2, "sofa": 1}
    assert change.vocabulary == ("tire", "rock", "garden gnome", "sofa")
    assert change.covered == {"tire": "already in anomaly_vocabulary", "car": "a known class",
                              "mattress": "in the naming dictionary"}
    assert change.mapping == {"Garden Gnomes": "garden gnome", "Tires": "tire", "Mattress": "mattress"}


def test_words_that_only_look_plural_keep_their_s_and_plural_entries_cover_their_singular():
    for word in ("canvas", "lens", "series", "news", "species"):
        assert normalise(word) == word
    assert normalise("buses") == "bus" and normalise("potatoes") == "potato" and normalise("boxes") == "box"
    change = merge_vocabulary(["traffic cone", "Traffic Cones", "?!", "deer"], vocabulary=("traffic cones",),
                              known_classes=("road",), dictionary=())
    assert change.added == {"deer": 1}  # "traffic cones" in the vocabulary already covers "traffic cone"
    assert change.covered["traffic cone"] == "already in anomaly_vocabulary"
    assert "" in change.covered  # a name of punctuation alone is reported, not silently counted


def test_a_skip_or_another_spelling_of_the_same_name_is_no_conflict():
    from clipomaly_ros.tools.release.inputs import decisions_in_force

    entries = [{"candidate_id": "c1", "decision": "accept", "name": "Garden gnomes", "reviewer": "ann"},
               {"candidate_id": "c1", "decision": "rename", "name": "garden gnome", "reviewer": "bob"},
               {"candidate_id": "c2", "decision": "reject", "reviewer": "ann"},
               {"candidate_id": "c2", "decision": "skip", "reviewer": "bob"}]
    chosen, conflicting = decisions_in_force(entries, "leave-out")
    assert conflicting == [] and set(chosen) == {"c1", "c2"} and chosen["c2"].decision == "reject"


def test_the_release_names_the_gnome_and_beats_its_parent_on_held_out_drives(trial):
    record, release = trial["record"], trial["folder"] / "release"
    assert GNOME in record["vocabulary"]["added"]
    assert record["reviews"]["lines"] == 20 and sum(record["reviews"]["decisions"].values()) == 20
    old, new = record["comparison"]["old"], record["comparison"]["new"]
    assert new["named_accuracy"] > old["named_accuracy"] and new["component_f1"] > old["component_f1"]
    changelog = (release / "CHANGELOG.md").read_text()
    assert f"added {GNOME}" in changelog
    assert f"{100 * (new['named_accuracy'] - old['named_accuracy']):+.1f} points" in changelog
    assert record["calibration"]["ran"] and record["labelled_frames"]["calibration/held_out"] > 0
    assert (release / "disagreement.png").is_file()


def test_the_parameter_file_is_taken_as_it_is_and_carries_the_release_id(trial):
    from clipomaly_ros import load_config

    path = trial["folder"] / "release" / "clipomaly.yaml"
    parameters = read_parameter_file(path)
    assert parameters["release_id"] == trial["record"]["release_id"]
    config = load_config(path)
    assert GNOME in config.anomaly_vocabulary and config.backend == "toy"
    provenance = yaml.safe_load("\n".join(line[4:] for line in path.read_text().splitlines()
                                          if line.startswith("#   ")))
    assert provenance["inputs"]["mined"][0]["reviews"] == tree_hash(trial["mined"] / REVIEWS)
    assert provenance["inputs"]["dictionary"].startswith("sha256:")
    calibration = trial["record"]["calibration"]
    assert provenance["calibration"]["figures"]["searched"]["chosen"] == calibration["figures"]["chosen"]["mean_f1"]
    assert provenance["calibration"]["figures"]["held_out"]["starting"] == calibration["held_out"]["default"]["mean_f1"]


def test_the_dvc_file_lists_every_output_with_its_md5(trial):
    import hashlib

    release = trial["folder"] / "release"
    outs = yaml.safe_load((release / "release.dvc").read_text())["outs"]
    files = sorted(p.relative_to(release).as_posix() for p in release.rglob("*") if p.is_file())
    assert [out["path"] for out in outs] == [f for f in files if f != "release.dvc"]
    for out in outs:
        data = (release / out["path"]).read_bytes()
        assert out["md5"] == hashlib.md5(data).hexdigest() and out["size"] == len(data)


def test_the_same_inputs_give_the_same_id_and_identical_files(trial, tmp_path, monkeypatch):
    """Paths given relative or absolute, in another order, with one bad line and another output name: the same id;
    written under the same name: the same files."""
    first = _copy_mined(trial, tmp_path)
    second = tmp_path / "second"
    shutil.copytree(first, second)
    with open(second / REVIEWS, "a") as stream:
        stream.write("not json\n")
    options = trial["options"]

    def build(mined: list[Path], output: Path) -> dict:
        again = ReleaseOptions(mined, output, options.config, space=options.space, eval_data=options.eval_data,
                               finetune=True)
        return build_release(again, log=lambda message: None)

    monkeypatch.chdir(tmp_path)
    one = build([first, second], tmp_path / "a" / "release")
    two = build([Path("second"), Path("mined")], Path("b") / "release")
    three = build([second, first], tmp_path / "other-name")
    assert one["release_id"] == two["release_id"] == three["release_id"] != trial["record"]["release_id"]
    assert one["problems"] == ["second/reviews.jsonl line 21: not JSON"] and one["finetune"]["command"]
    written = sorted(p.relative_to(tmp_path / "a" / "release") for p in (tmp_path / "a" / "release").rglob("*")
                     if p.is_file())
    for path in written:
        assert (tmp_path / "b" / "release" / path).read_bytes() == (tmp_path / "a" / "release" / path).read_bytes()
    assert sorted(p.relative_to(tmp_path / "b" / "release") for p in (tmp_path / "b" / "release").rglob("*")
                  if p.is_file()) == written


def test_a_child_release_made_by_the_command_names_its_parent(trial, tmp_path, capsys):
    from clipomaly_ros.tools.cli import main

    parent, child = trial["options"].output, tmp_path / "child"
    assert main(["release", str(trial["mined"]), "-o", str(child), "--from", str(parent), "--finetune"]) == 0
    record = json.loads((child / "release.json").read_text())
    assert record["parent"] == trial["record"]["release_id"] != record["release_id"]
    changelog = (child / "CHANGELOG.md").read_text()
    assert changelog.count("## rel-") == 2 and f"parent {trial['record']['release_id']}" in changelog
    printed = capsys.readouterr().out
    assert f"added {GNOME}" not in printed and "already in anomaly_vocabulary" in printed  # the parent has it
    labels = sorted((child / "finetune" / "labels").glob("*.png"))
    assert labels and record["finetune"]["command"].startswith("clipomaly finetune finetune ")
    from clipomaly_ros.core.datasets import read_label

    car = trial["config"].known_classes.index("car")
    assert {int(v) for label in labels for v in set(read_label(label).ravel().tolist())} == {car, 255}


def test_the_command_refuses_with_one_line(trial, tmp_path, capsys):
    from clipomaly_ros.tools.cli import main

    release = str(trial["options"].output)
    for argv, expected in (
            (["release", str(trial["mined"])], "-o RELEASE_DIR"),
            (["release", "diff", release], "two release folders"),
            (["release", str(trial["mined"]), "-o", str(tmp_path / "r"), "--from", release, "--config", "x.yaml"],
             "--from and --config both given"),
            (["release", str(tmp_path / "nowhere"), "-o", str(tmp_path / "r")], "no such folder")):
        assert main(argv) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and expected in error[0], error


def _copy_mined(trial, tmp_path) -> Path:
    mined = tmp_path / "mined"
    shutil.copytree(trial["mined"], mined)
    return mined


def test_bad_review_lines_are_reported_and_the_valid_ones_used(trial, tmp_path):
    mined = _copy_mined(trial, tmp_path)
    candidates = sorted(read_mined(mined).rows)
    with open(mined / REVIEWS, "a") as stream:
        stream.write(json.dumps({"candidate_id": "nowhere-9", "decision": "accept", "name": "sofa"}) + "\n")
        stream.write(json.dumps({"candidate_id": candidates[0], "decision": "maybe"}) + "\n")
        stream.write(json.dumps({"candidate_id": candidates[1], "decision": "reject", "reviewer": "bea"}) + "\n")
        stream.write(json.dumps({"candidate_id": candidates[1], "decision": "accept", "name": GNOME,
                                 "reviewer": "carl"}) + "\n")
        stream.write('{"candidate_id": "' + candidates[2] + '", "deci')  # cut mid-line
    run = read_mined(mined)
    assert any("nowhere-9" in p and "not in the index" in p for p in run.problems)
    assert any("'maybe'" in p for p in run.problems)
    assert any("cut mid-line" in p for p in run.problems)
    assert len(run.problems) == 3 and len(run.conflicts) == 1 and candidates[1] in run.conflicts[0]
    assert run.counts["valid_line_reviewers"]["bea"] == run.counts["valid_line_reviewers"]["carl"] == 1
    assert sum(run.counts["valid_line_decisions"].values()) == 22 and "bea" not in run.counts["reviewers"]
    assert candidates[1] not in run.decisions  # left out by default
    assert read_mined(mined, conflicts="latest").decisions[candidates[1]].decision == "accept"
    with pytest.raises(ReleaseError, match="conflicting decisions on"):
        read_mined(mined, conflicts="refuse")
    options = ReleaseOptions([mined], tmp_path / "strict", trial["config"], strict=True)
    with pytest.raises(ReleaseError, match=r"^4 problems in the reviews \(--strict\), first "):
        build_release(options, log=lambda message: None)


def test_what_is_measured_on_the_held_out_drives_has_not_learnt_their_own_reviews(trial, tmp_path, monkeypatch):
    """A name reviewed only on a held-out drive joins the release, but neither its calibration's held-out figure nor
    its comparison on those drives (no --eval) may use it: they would measure what the reviewers told them."""
    from clipomaly_ros.tools.release.frames import reviewed_frames, split_by_drive

    mined = _copy_mined(trial, tmp_path)
    _, held_out = split_by_drive(reviewed_frames([read_mined(mined)]))
    run = read_mined(mined)
    held_out_drives = {frame.drive for frame in held_out}
    on_held_out = sorted(c for c, row in run.rows.items() if row["bag_id"] in held_out_drives and c in run.decisions)
    with open(mined / REVIEWS, "a") as stream:
        stream.write(json.dumps({"candidate_id": on_held_out[0], "decision": "rename", "name": "lost suitcase",
                                 "reviewer": "dan"}) + "\n")
    import clipomaly_ros.tools.release.build as build

    real_calibrate, real_compare, seen = build._calibrate, build._compare, {}

    def calibrating(config, *args, **kwargs):
        seen.setdefault("calibrated with", config.anomaly_vocabulary)
        return real_calibrate(config, *args, **kwargs)

    def comparing(parent, release, *args, **kwargs):
        seen.setdefault("compared", release.anomaly_vocabulary)
        return real_compare(parent, release, *args, **kwargs)

    monkeypatch.setattr(build, "_calibrate", calibrating)
    monkeypatch.setattr(build, "_compare", comparing)
    record = build_release(ReleaseOptions([mined], tmp_path / "release", trial["config"], space=SMALL_SPACE,
                                          conflicts="latest"), log=lambda message: None)
    assert "lost suitcase" in record["vocabulary"]["added"]  # the release the cars run has it
    assert "lost suitcase" in read_parameter_file(tmp_path / "release" / "clipomaly.yaml")["anomaly_vocabulary"]
    for measured in (seen["calibrated with"], seen["compared"]):
        assert "lost suitcase" not in measured and GNOME in measured
    assert record["comparison"]["vocabulary"].startswith("the names reviewed on the searched drives")
    assert record["names_not_measured"] == ["lost suitcase"]
    changelog = (tmp_path / "release" / "CHANGELOG.md").read_text()
    assert "searched drives" in changelog and "measured on those drives: lost suitcase." in changelog


def test_the_release_id_changes_when_the_recipe_does(monkeypatch):
    from clipomaly_ros.core.config import ClipomalyConfig
    from clipomaly_ros.tools.release import provenance

    inputs = ({"mined": [{"index": "md5:1", "reviews": "md5:2"}]}, ClipomalyConfig(backend="toy"), None, {})
    before = provenance.release_id(*inputs)
    assert provenance.release_id(*inputs) == before
    monkeypatch.setattr(provenance, "RELEASE_RECIPE", provenance.RELEASE_RECIPE + 1)
    assert provenance.release_id(*inputs) != before


def test_reviews_of_a_run_mined_with_other_weights_are_refused_naming_both(trial, tmp_path):
    mined = _copy_mined(trial, tmp_path)
    checkpoint = tmp_path / "other.safetensors"
    checkpoint.write_bytes(b"other weights")
    run_file = mined / "run.json"
    content = json.loads(run_file.read_text())
    content["fingerprint"]["checkpoint"] = "sha256:" + "ab" * 32
    run_file.write_text(json.dumps(content))
    first, other = read_mined(trial["mined"]), read_mined(mined)
    with pytest.raises(ReleaseError) as refused:
        check_same_weights([first, other], None, "")
    assert first.weights_id in str(refused.value) and other.weights_id in str(refused.value)
    with pytest.raises(ReleaseError, match="never mixes weights"):
        build_release(ReleaseOptions([mined], tmp_path / "mixed", trial["config"]), log=lambda message: None)
    line = json.dumps({"candidate_id": sorted(first.rows)[0], "decision": "reject", "weights": "weights:0123456789ab"})
    (mined / REVIEWS).write_text(line + "\n")
    run_file.write_text(json.dumps(json.loads((trial["mined"] / "run.json").read_text())))
    with pytest.raises(ReleaseError, match=f"weights:0123456789ab.*{first.weights_id}"):
        read_mined(mined)
    line = json.dumps({"candidate_id": sorted(first.rows)[0], "decision": "reject", "model_version": "clipomaly-x"})
    (mined / REVIEWS).write_text(line + "\n")
    with pytest.raises(ReleaseError, match="reviewed against clipomaly-x, but .* was mined with clipomaly-"):
        read_mined(mined)


def test_diff_shows_the_vocabulary_the_thresholds_and_both_sides_figures(trial, tmp_path, capsys):
    from clipomaly_ros.tools.release.report import release_diff

    new = trial["options"].output
    old = tmp_path / "old"
    shutil.copytree(new, old)
    parameters_file = old / "clipomaly.yaml"
    document = yaml.safe_load(parameters_file.read_text())
    values = document["/**/clipomaly"]["ros__parameters"]
    values["anomaly_vocabulary"] = [n for n in values["anomaly_vocabulary"] if n != GNOME] + ["sofa"]
    values["min_region_area"], values["release_id"] = 100, "rel-old"
    parameters_file.write_text(yaml.safe_dump(document))
    (old / "release.json").write_text(json.dumps({"release_id": "rel-old"}))
    text = release_diff(old, new, trial["held_out"], tmp_path / "diff.png")
    assert f"rel-old -> {trial['record']['release_id']}" in text
    assert f"vocabulary added: {GNOME}" in text and "vocabulary removed: sofa" in text
    assert f"min_region_area: 100 -> {values_of(new)['min_region_area']}" in text
    assert "| named-anomaly accuracy |" in text and "| component F1 |" in text and "| FPR95" in text
    assert (tmp_path / "diff.png").is_file()
    assert "vocabulary added: none" in release_diff(new, new) and "(unchanged)" in release_diff(new, new)
    from clipomaly_ros.tools.cli import main

    assert main(["release", "diff", str(old), str(new)]) == 0
    assert f"vocabulary added: {GNOME}" in capsys.readouterr().out


def values_of(release: Path) -> dict:
    return yaml.safe_load((release / "clipomaly.yaml").read_text())["/**/clipomaly"]["ros__parameters"]


def test_labels_from_decisions_confirmed_one_known_or_rejected_zero_undecided_ignored():
    import numpy as np

    from clipomaly_ros.tools.release.frames import ReviewedFrame, calibration_label, finetune_label
    from clipomaly_ros.tools.release.inputs import Decision
    from clipomaly_ros.tools.release.trial import encode_mask

    def square(x0: int) -> np.ndarray:
        mask = np.zeros((20, 40), bool)
        mask[5:15, x0:x0 + 8] = True
        return mask

    corrected = square(30)
    corrected[5:15, 30:34] = False  # the reviewer's corrected mask: half the square
    rows = [{"candidate_id": str(i), "mask": encode_mask(square(x0))} for i, x0 in enumerate((0, 10, 20, 30))]
    decisions = [Decision("0", "known_class", "", "car", "ana", None), None,
                 Decision("2", "reject", "", "", "ana", None),
                 Decision("3", "rename", GNOME, "", "ana", encode_mask(corrected))]
    frame = ReviewedFrame("bag", "drive", "/image", 1, list(zip(rows, decisions)))
    label = calibration_label(frame, (20, 40))
    assert (label[square(0)] == 0).all() and (label[square(10)] == 255).all() and (label[square(20)] == 0).all()
    assert (label[corrected] == 1).all() and (label[square(30) & ~corrected] == 0).all()
    assert (label == 1).sum() == corrected.sum()
    tuned = finetune_label(frame, (20, 40), ("road", "car"))
    assert (tuned[square(0)] == 1).all() and (tuned[~square(0)] == 255).all()
    assert finetune_label(frame, (20, 40), ("road",)) is None  # car is no known class there: nothing to learn


def test_an_index_without_bag_id_and_source_path_finds_its_bags_through_the_summary(trial, tmp_path):
    import pyarrow.parquet as pq

    from clipomaly_ros.tools.release.frames import read_frame_images, reviewed_frames

    mined = _copy_mined(trial, tmp_path)
    part = mined / "anomalies.parquet" / "part-0.parquet"
    table = pq.read_table(part)
    paths = dict(zip(table.column("bag").to_pylist(), table.column("source_path").to_pylist()))
    pq.write_table(table.drop_columns(["bag_id", "source_path"]), part)
    summary = json.loads((mined / "summary.json").read_text())
    (mined / "summary.json").write_text(json.dumps(summary | {"per_bag": [{"bag": b, "path": p}
                                                                          for b, p in paths.items()]}))
    problems: list[str] = []
    frames = reviewed_frames([read_mined(mined)])
    assert len(read_frame_images(frames, problems)) == len(frames) > 0 and problems == []
    (mined / "summary.json").write_text(json.dumps(summary))
    problems = []
    assert read_frame_images(reviewed_frames([read_mined(mined)]), problems) == {}
    assert len(problems) == 1 and "no source_path" in problems[0]


def test_the_loop_on_mined_drives_beats_its_parent_on_other_drives(tmp_path):
    """mine -> scripted review (10 % wrong) -> release -> the release against its parent on other drives."""
    mined, held_out, config = prepare_trial(tmp_path, error_rate=0.1, held_out=(2, 3))
    rows = read_mined(mined).rows
    assert any(not row["reported"] for row in rows.values())  # the gnomes: dropped by naming today
    options = ReleaseOptions([mined], tmp_path / "release", config, space=SMALL_SPACE, eval_data=held_out)
    record = build_release(options, log=lambda message: None)
    assert GNOME in record["vocabulary"]["added"]
    old, new = record["comparison"]["old"], record["comparison"]["new"]
    assert new["named_accuracy"] > old["named_accuracy"] and new["component_f1"] > old["component_f1"]
    assert f"{100 * (new['component_f1'] - old['component_f1']):+.1f} points" in (
        options.output / "CHANGELOG.md").read_text()


def test_reviews_made_on_the_review_page_are_refused_in_a_folder_mined_with_other_weights(trial, tmp_path):
    from clipomaly_ros.tools.review.index import load_index
    from clipomaly_ros.tools.review.server import ReviewServer

    import pyarrow as pa
    import pyarrow.parquet as pq

    reviewed = _copy_mined(trial, tmp_path)
    (reviewed / REVIEWS).unlink()
    part = reviewed / "anomalies.parquet" / "part-0.parquet"
    table = pq.read_table(part)
    for column in ("candidates", "on_road", "distance_m", "lateral_m", "thumbnail", "frames"):  # what mining adds
        table = table.append_column(column, pa.nulls(len(table)))
    pq.write_table(table, part)
    server = ReviewServer(load_index(reviewed), "ana")
    try:
        line = server.record({"candidate_id": sorted(read_mined(trial["mined"]).rows)[0], "decision": "reject"})
    finally:
        server.server_close()
    other = tmp_path / "other"
    shutil.copytree(trial["mined"], other)
    content = json.loads((other / "run.json").read_text())
    content["fingerprint"]["checkpoint"] = "sha256:" + "ab" * 32
    (other / "run.json").write_text(json.dumps(content))
    shutil.copy(reviewed / REVIEWS, other / REVIEWS)
    with pytest.raises(ReleaseError, match=f"reviewed against {line['model_version']}, but .*other was mined with "
                                           "clipomaly-"):
        read_mined(other)
    assert read_mined(reviewed).decisions  # in its own folder the line is used


def test_the_release_file_keeps_the_parents_own_node_parameters(trial, tmp_path):
    from clipomaly_ros import load_config
    from clipomaly_ros.tools.cli import main

    parent, child = tmp_path / "parent", tmp_path / "child"
    shutil.copytree(trial["options"].output, parent)
    document = yaml.safe_load((parent / "clipomaly.yaml").read_text())
    document["/**/clipomaly"]["ros__parameters"] |= {
        "cameras": ["front", "rear"], "input_transport": "compressed", "use_sim_time": True,
        "front": {"camera_x": 1.5, "camera_z": 1.2}, "rear": {"camera_x": -0.5, "camera_yaw": 3.14}}
    (parent / "clipomaly.yaml").write_text(yaml.safe_dump(document))
    assert main(["release", str(trial["mined"]), "-o", str(child), "--from", str(parent)]) == 0
    parameters = read_parameter_file(child / "clipomaly.yaml")
    assert parameters["cameras"] == ["front", "rear"] and parameters["input_transport"] == "compressed"
    assert parameters["use_sim_time"] is True
    assert parameters["front.camera_x"] == 1.5 and parameters["front.camera_z"] == 1.2
    assert parameters["rear.camera_x"] == -0.5 and parameters["rear.camera_yaw"] == 3.14
    assert parameters["release_id"] == json.loads((child / "release.json").read_text())["release_id"]
    assert GNOME in load_config(child / "clipomaly.yaml").anomaly_vocabulary


def test_the_tagger_files_are_hashed_by_their_bytes_in_the_settings_fingerprint(tmp_path):
    from clipomaly_ros.core.config import ClipomalyConfig
    from clipomaly_ros.core.fingerprint import settings_fingerprint

    weights, graph = tmp_path / "ram.pth", tmp_path / "ram.onnx"
    weights.write_bytes(b"tagger weights")
    graph.write_bytes(b"tagger graph")
    fingerprint = settings_fingerprint(ClipomalyConfig(tagger_weights=str(weights), tagger_onnx_model=str(graph)))
    assert fingerprint["tagger_weights"].startswith("sha256:")
    assert fingerprint["tagger_onnx_model"].startswith("sha256:")
    weights.write_bytes(b"other tagger weights")  # overwritten in place: other weights, another fingerprint
    changed = settings_fingerprint(ClipomalyConfig(tagger_weights=str(weights), tagger_onnx_model=str(graph)))
    assert changed["tagger_weights"] != fingerprint["tagger_weights"]


def test_bad_candidate_ids_and_masks_are_reported_and_a_failed_build_keeps_the_earlier_release(trial, tmp_path,
                                                                                                monkeypatch):
    from clipomaly_ros.tools.release import build
    from clipomaly_ros.tools.release.trial import encode_mask

    mined = _copy_mined(trial, tmp_path)
    run = read_mined(mined)
    candidate = sorted(run.rows)[0]
    height, width = run.rows[candidate]["mask"]["size"]
    import numpy as np

    with open(mined / REVIEWS, "a") as stream:
        for entry in ({"candidate_id": ["not", "text"], "decision": "reject"},
                      {"candidate_id": {"a": 1}, "decision": ["accept"]},
                      {"candidate_id": candidate, "decision": "rename", "name": "sofa", "mask": {"counts": 3}},
                      {"candidate_id": candidate, "decision": "rename", "name": "sofa",
                       "mask": encode_mask(np.ones((height + 1, width), bool))}):
            stream.write(json.dumps(entry) + "\n")
    problems = read_mined(mined).problems
    assert len(problems) == 4, problems
    assert "not in the index" in problems[0] and "is none of" in problems[1]
    assert "no COCO RLE" in problems[2] and f"not the frame's size [{height}, {width}]" in problems[3]
    assert read_mined(mined).decisions[candidate].name != "sofa"  # the bad masks' lines are left out
    earlier = tmp_path / "release"
    shutil.copytree(trial["options"].output, earlier)
    before = {p: p.read_bytes() for p in earlier.rglob("*") if p.is_file()}

    def broken(*args, **kwargs):
        raise RuntimeError("calibration broke")

    monkeypatch.setattr(build, "_calibrate", broken)
    with pytest.raises(RuntimeError):
        build_release(ReleaseOptions([mined], earlier, trial["config"]), log=lambda message: None)
    assert {p: p.read_bytes() for p in earlier.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mined", "release"]
    with pytest.raises(ReleaseError, match="is the parent release"):
        build_release(ReleaseOptions([mined], earlier, trial["config"], parent=earlier), log=lambda message: None)


def test_frames_recorded_far_from_their_stamp_are_found_by_reading_the_whole_topic(trial, monkeypatch):
    from clipomaly_ros.tools.release import frames as frames_module

    # A window that holds no message: every frame is as if recorded long after its stamp.
    monkeypatch.setattr(frames_module, "FRAME_READ_WINDOW_NS", -10**15)
    problems: list[str] = []
    wanted = frames_module.reviewed_frames([read_mined(trial["mined"])])
    assert len(frames_module.read_frame_images(wanted, problems)) == len(wanted) > 0 and problems == []


def test_tracks_alive_at_a_reviewed_frame_are_ignored_in_their_box_not_called_normal(trial):
    import numpy as np

    from clipomaly_ros.tools.release.frames import calibration_label, reviewed_frames
    from clipomaly_ros.tools.release.inputs import Decision
    from clipomaly_ros.tools.release.trial import encode_mask

    mask = np.zeros((20, 40), bool)
    mask[2:6, 2:6] = True
    rows = {"seen": {"candidate_id": "seen", "bag_id": "d", "source_path": "b", "topic": "/t", "best_stamp_ns": 10,
                     "first_stamp_ns": 10, "last_stamp_ns": 10, "mask": encode_mask(mask), "box": [2, 2, 5, 5]},
            "passing": {"candidate_id": "passing", "bag_id": "d", "source_path": "b", "topic": "/t",
                        "best_stamp_ns": 30, "first_stamp_ns": 5, "last_stamp_ns": 40, "mask": encode_mask(mask),
                        "box": [20, 10, 29, 14]},
            "other topic": {"candidate_id": "other topic", "bag_id": "d", "source_path": "b", "topic": "/u",
                            "best_stamp_ns": 30, "first_stamp_ns": 5, "last_stamp_ns": 40, "mask": encode_mask(mask),
                            "box": [30, 0, 39, 4]}}
    run = read_mined(trial["mined"])
    run.rows, run.decisions = rows, {"seen": Decision("seen", "reject", "", "", "ana", None)}
    frame = next(f for f in reviewed_frames([run]) if f.stamp_ns == 10)
    label = calibration_label(frame, (20, 40))
    assert (label[10:15, 20:30] == 255).all() and (label[mask] == 0).all()
    assert (label[0:5, 30:40] == 0).all() and (label == 255).sum() == 50


def test_the_machine_settings_are_written_only_when_the_starting_file_set_them(tmp_path):
    from clipomaly_ros.core.config import ClipomalyConfig
    from clipomaly_ros.tools.release.provenance import node_parameters, parameter_values

    config = ClipomalyConfig(backend="toy", device="cpu", cache_dir=str(tmp_path / "cache"))
    assert "device" not in parameter_values(config, "rel-x") and "cache_dir" not in parameter_values(config, "rel-x")
    starting = tmp_path / "start.yaml"
    starting.write_text(yaml.safe_dump({"/**/clipomaly": {"ros__parameters": {"device": "cuda:1", "cameras": ["a"]}}}))
    carried = node_parameters(starting)
    assert carried == {"device": "cuda:1", "cameras": ["a"]}
    assert parameter_values(config, "rel-x", carried)["device"] == "cuda:1"


def test_replay_and_evaluate_take_the_release_file_as_it_is(trial, tmp_path):
    from clipomaly_ros.tools.cli import main

    parameters = trial["folder"] / "release" / "clipomaly.yaml"
    assert main(["evaluate", str(trial["held_out"]), "--config", str(parameters), "--backend", "toy",
                 "--json", str(tmp_path / "report.json")]) == 0
    bag = sorted(path.parent for path in trial["folder"].rglob("metadata.yaml"))[0]
    assert main(["replay", str(bag), "-o", str(tmp_path / "replayed"), "--config", str(parameters),
                 "--backend", "toy"]) == 0
    assert (tmp_path / "replayed" / "metadata.yaml").is_file()
