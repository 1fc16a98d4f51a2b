"""``clipomaly release MINED... -o RELEASE_DIR [--from PARENT]``: reviewed finds turned into a release the cars
run (see docs/fleet-loop.md).

A release folder holds ``clipomaly.yaml`` (the parameter file), ``release.json`` (provenance and figures),
``CHANGELOG.md``, ``release.dvc``, the labelled frames (``calibration/search`` and ``calibration/held_out``, split
by drive) and, with ``--finetune``, ``finetune/`` in the layout ``clipomaly finetune`` reads.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ...core.config import ClipomalyConfig
from ..calibration import OBJECTIVES, SEARCHED, CalibrationError, SearchSpace
from .frames import ReviewedFrame, calibration_label, finetune_label, read_frame_images, reviewed_frames, split_by_drive
from .inputs import CONFIRMED, CONFLICT_POLICIES, MinedRun, ReleaseError, check_same_weights, read_mined
from .provenance import (CHANGELOG, DVC_FILE, PARAMETER_FILE, RELEASE_FILE, dvc_file, input_hashes, package_version,
                         parameter_file, release_id, weights_of)
from .vocabulary import merge_vocabulary

SEARCH, HELD_OUT, FINETUNE = "calibration/search", "calibration/held_out", "finetune"


@dataclass
class ReleaseOptions:
    """What ``clipomaly release`` was asked: the mined folders, the output folder, the parent release (or None),
    the settings it starts from, whether to write fine-tuning data, what to do with conflicting decisions, whether
    any bad review line refuses the release, the calibration's search space and objective, and labelled frames to
    measure the release against its parent on (else its own held-out drives), and the starting file's own node
    parameters (dotted names, :func:`~.provenance.node_parameters`) the release's file carries."""

    mined: list[Path]
    output: Path
    config: ClipomalyConfig
    parent: Path | None = None
    finetune: bool = False
    conflicts: str = "leave-out"
    strict: bool = False
    space: SearchSpace = field(default_factory=SearchSpace)
    objective: str = "f1"
    eval_data: Path | None = None
    node_parameters: dict = field(default_factory=dict)

    def hashed(self) -> dict:
        """The options that change what is built (part of the release id)."""
        from .inputs import tree_hash

        return {"finetune": self.finetune, "conflicts": self.conflicts, "strict": self.strict,
                "node_parameters": self.node_parameters,
                "eval": tree_hash(self.eval_data) if self.eval_data and self.eval_data.exists() else None,
                "objective": self.objective, "space": [list(v) for v in (
                    self.space.thresholds, self.space.areas, self.space.radii, self.space.crop_weights)]}


def parent_release(parent: Path | None) -> tuple[Path | None, str | None]:
    """The parent release's parameter file and id (``--from``), or ``(None, None)``."""
    if parent is None:
        return None, None
    files = [Path(parent) / PARAMETER_FILE, Path(parent) / RELEASE_FILE]
    if not all(f.is_file() for f in files):
        raise ReleaseError(f"--from {parent}: not a release folder (no {PARAMETER_FILE} and {RELEASE_FILE}); give "
                           "a folder that clipomaly release wrote")
    return files[0], json.loads(files[1].read_text())["release_id"]


def build_release(options: ReleaseOptions, log=print) -> dict:
    """Build the release (see the module docstring); returns ``release.json``'s content."""
    if options.conflicts not in CONFLICT_POLICIES:
        raise ReleaseError(f"--conflicts {options.conflicts}: choose one of {', '.join(CONFLICT_POLICIES)}")
    config = options.config
    _, parent_id = parent_release(options.parent)
    # By content, not by the order or the paths given: the same inputs give the same release.
    runs = sorted((read_mined(folder, options.conflicts) for folder in options.mined),
                  key=lambda run: (run.index_hash, run.reviews_hash, run.folder.name))
    check_same_weights(runs, weights_of(config), str(options.parent or "the settings given"))
    problems = _problems(runs, config)
    if options.strict and problems:
        raise ReleaseError(f"{len(problems)} problems in the reviews (--strict), first {problems[0]}; fix them or "
                           "leave out --strict to build from the valid decisions")
    if not any(d.decision != "skip" for run in runs for d in run.decisions.values()):
        raise ReleaseError("no usable decision in the reviews of " + ", ".join(str(r.folder) for r in runs)
                           + (f" ({len(problems)} problems, first {problems[0]})" if problems else "")
                           + ": review candidates first (clipomaly review MINED)")
    change = _merged_vocabulary(config, runs)
    out = _building_folder(options.output, options.parent)
    try:
        record = _build_into(out, options, runs, change, problems, parent_id)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(options.output, ignore_errors=True)  # an earlier release, replaced only once this one is whole
    out.rename(options.output)
    log(f"release {record['release_id']} in {options.output}: {len(change.added)} names added, {len(problems)} "
        "problems reported")
    return record


def _build_into(out: Path, options: ReleaseOptions, runs: list[MinedRun], change, problems: list[str],
                parent_id: str | None) -> dict:
    """Write the release's files into ``out``; returns ``release.json``'s content."""
    config = options.config
    frames = reviewed_frames(runs)
    held_out_drives = _write_frames(out, frames, config, options.finetune, problems)
    hashes = input_hashes(config, runs) | {"labelled_frames": _frames_digest(out)}
    identity = release_id(hashes, config, parent_id, options.hashed())
    # what is measured on the held-out drives has not learnt from their own reviews: its names are those reviewed
    # on the searched drives
    measured = config.replace(anomaly_vocabulary=_merged_vocabulary(config, runs, held_out_drives).vocabulary)
    calibration = _calibrate(measured, out, options, bool(held_out_drives))
    settings = calibration.pop("settings")
    released = config.replace(anomaly_vocabulary=change.vocabulary, **settings)
    if options.eval_data:
        comparison = _compare(config, released, options.eval_data, out)
    else:
        comparison = _compare(config, measured.replace(**settings), out / HELD_OUT if held_out_drives else None,
                              out)
        if comparison:
            comparison["vocabulary"] = "the names reviewed on the searched drives (the held-out drives' own left out)"
    unmeasured = sorted(set(change.vocabulary) - set(measured.anomaly_vocabulary))
    record = {
        "release_id": identity, "parent": parent_id, "package_version": package_version(), "inputs": hashes,
        "reviews": _review_counts(runs), "problems": problems, "vocabulary": change.as_dict(),
        "thresholds": {name: {"from": getattr(config, name), "to": getattr(released, name)} for name in SEARCHED},
        "calibration": calibration, "labelled_frames": _frame_counts(out), "comparison": comparison,
        "names_not_measured": unmeasured,
        "finetune": _finetune_note(out, options.finetune),
    }
    (out / PARAMETER_FILE).write_text(parameter_file(released, identity, _provenance(record),
                                                     options.node_parameters))
    (out / CHANGELOG).write_text(changelog(record, options.parent))
    (out / RELEASE_FILE).write_text(json.dumps(record, indent=1, sort_keys=True, default=float) + "\n")
    (out / DVC_FILE).write_text(dvc_file(out))
    return record


def _problems(runs: list[MinedRun], config: ClipomalyConfig) -> list[str]:
    """Every problem of the reviews, one line each, naming its folder: bad lines, conflicts, unknown classes."""
    problems = []
    for run in runs:
        problems += [f"{run.folder.name}/reviews.jsonl {p}" for p in run.problems]
        problems += [f"{run.folder.name}: conflicting decisions on {c}" for c in run.conflicts]
        problems += [f"{run.folder.name}: candidate {d.candidate_id} called known class {d.known_class!r}, which is "
                     "not among known_classes; it gives normal pixels only" for d in run.decisions.values()
                     if d.decision == "known_class" and d.known_class not in config.known_classes]
    return problems


def _building_folder(output: Path, parent: Path | None) -> Path:
    """A new empty folder beside ``output`` to build in (renamed to ``output`` once the release is whole, so a
    failed build leaves an earlier release there as it was). Only a release folder, or an empty one, may be
    replaced, and never the parent release."""
    output = Path(output)
    if parent is not None and output.resolve() == Path(parent).resolve():
        raise ReleaseError(f"-o {output} is the parent release (--from): write the new release to another folder")
    if output.exists() and (not output.is_dir() or any(output.iterdir()) and not (output / RELEASE_FILE).is_file()):
        raise ReleaseError(f"-o {output}: the folder holds other files; give a new or empty folder, or an earlier "
                           "release to replace")
    building = output.parent / f".{output.name}.building"
    shutil.rmtree(building, ignore_errors=True)  # left by a build that was killed
    building.mkdir(parents=True)
    return building


def _merged_vocabulary(config: ClipomalyConfig, runs: list[MinedRun], leave_out_drives: frozenset = frozenset()):
    """``config``'s anomaly vocabulary with the confirmed names of ``runs`` added (:func:`merge_vocabulary`),
    leaving out the finds of the drives (``bag_id``) in ``leave_out_drives``."""
    from ...core.method.vocabulary import read_name_list

    names = [decision.name for run in runs for candidate, decision in run.decisions.items()
             if decision.decision in CONFIRMED and run.rows[candidate]["bag_id"] not in leave_out_drives]
    return merge_vocabulary(names, config.anomaly_vocabulary, config.known_classes,
                            read_name_list(config.naming_dictionary or None))


def _write_frames(out: Path, frames: list[ReviewedFrame], config: ClipomalyConfig, finetune: bool,
                  problems: list[str]) -> frozenset:
    """The labelled frames (images, labels, named instances), split by drive, and the fine-tuning frames; the
    drives held out (none when there is one drive)."""
    images = read_frame_images(frames, problems)
    usable = [f for f in frames if f.stem in images]
    search, held_out = split_by_drive(usable)
    searched = {_digest(images[frame.stem]) for frame in search}
    repeated = [frame for frame in held_out if _digest(images[frame.stem]) in searched]
    problems += [f"held-out frame {frame.stem} is the same image as a searched one; left out of the held-out figure"
                 for frame in repeated]
    held_out = [frame for frame in held_out if frame not in repeated]
    for folder, part in ((SEARCH, search), (HELD_OUT, held_out)):
        names = {}
        for frame in part:
            image = images[frame.stem]
            label = calibration_label(frame, image.shape[:2])
            names[frame.stem] = _write_instances(out / folder / "instances" / f"{frame.stem}.png", frame,
                                                 image.shape[:2])
            _write_pair(out / folder, frame.stem, image, label)
        if part:
            (out / folder / "names.json").write_text(json.dumps(names, indent=1, sort_keys=True) + "\n")
    for frame in usable if finetune else []:
        label = finetune_label(frame, images[frame.stem].shape[:2], config.known_classes)
        if label is not None:
            _write_pair(out / FINETUNE, frame.stem, images[frame.stem], label)
    return frozenset(frame.drive for frame in held_out)


def _digest(image: np.ndarray) -> bytes:
    """The sha256 of an image's shape and pixels: compared instead of the pixels, so a frame's bytes are not kept
    twice."""
    return hashlib.sha256(repr(image.shape).encode() + image.tobytes()).digest()


def _write_instances(path: Path, frame: ReviewedFrame, shape: tuple[int, int]) -> dict[str, str]:
    """``instances/<stem>.png``: the confirmed anomalies numbered 1, 2, ...; returns their names by number."""
    from .frames import candidate_mask
    from .vocabulary import normalise

    instances, names = np.zeros(shape, np.uint8), {}
    for row, decision in frame.candidates:
        if decision is not None and decision.decision in CONFIRMED and len(names) < 254:
            names[str(len(names) + 1)] = normalise(decision.name)
            instances[candidate_mask(row, decision, shape)] = len(names)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), instances)
    return names


def _write_pair(folder: Path, stem: str, image: np.ndarray, label: np.ndarray) -> None:
    for sub, picture in (("images", cv2.cvtColor(image, cv2.COLOR_RGB2BGR)), ("labels", label)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / sub / f"{stem}.png"), picture)


def _calibrate(config: ClipomalyConfig, out: Path, options: ReleaseOptions, held_out: bool) -> dict:
    """``calibrate`` on the search frames, with the held-out drives' figure; the chosen ``settings`` and what was
    found. Without frames that hold anomalies the settings are kept, and the record says why."""
    from ...core.datasets import find_samples
    from ...core.method.pipeline import Clipomaly
    from ..calibration import RULE, calibrate, read_frames, seen_frames

    kept = {name: getattr(config, name) for name in SEARCHED}
    try:
        frames = read_frames(find_samples(out / SEARCH), 1, 255)
        val = read_frames(find_samples(out / HELD_OUT), 1, 255) if held_out else None
    except (ValueError, CalibrationError) as error:
        return {"settings": kept, "ran": False, "why_not": str(error)}
    # another drive past the same place can give a near copy of a searched frame: it would not be unseen
    near = seen_frames(frames, val) if val else []
    val = [frame for frame in val if all(frame is not other for other, _, _ in near)] or None if val else None
    left_out = [f"held-out frame {Path(other.sample.image).name} is {how} {Path(frame.sample.image).name}: left "
                "out of the held-out figure" for other, how, frame in near]
    report = calibrate(Clipomaly(config), frames, options.objective, options.space, data=SEARCH, val_frames=val,
                       val_data=HELD_OUT if val else "", progress=False, log=lambda message: None)
    chosen = {name: report.chosen[name] for name in SEARCHED}
    figures = {side: {k: v for k, v in trial.items() if k not in SEARCHED} for side, trial in
               (("chosen", report.chosen), ("starting", report.default))}
    return {"settings": chosen, "ran": True, "objective": report.objective, "decision": report.decision,
            "noise_margin": report.noise_margin, "search_frames": report.images, "settings_tried": len(report.trials),
            "figures": figures, "held_out": report.validation, "held_out_left_out": left_out, "rule": RULE}


def _compare(parent: ClipomalyConfig, released: ClipomalyConfig, data: Path | None, out: Path) -> dict | None:
    """The release against the settings it started from on ``data`` (labelled frames), with the picture of the
    frames where they disagree most."""
    if data is None:
        return None
    from ...core.method.pipeline import Clipomaly
    from .compare import compare, disagreement_picture

    figures, worst = compare(Clipomaly(parent), Clipomaly(released), data)
    picture = disagreement_picture(worst, out / "disagreement.png", "parent", "release")
    return {"data": data.name, **figures,
            "picture": picture.name if picture else None}


def _review_counts(runs: list[MinedRun]) -> dict:
    """The review lines, and per decision and per reviewer the decisions in force and every valid line."""
    keys = ("decisions", "reviewers", "valid_line_decisions", "valid_line_reviewers")
    counts: dict = {"lines": sum(r.lines for r in runs)} | {key: {} for key in keys}
    for run in runs:
        for key in keys:
            for name, value in run.counts[key].items():
                counts[key][name] = counts[key].get(name, 0) + value
    return counts


def _frames_digest(out: Path) -> str:
    """``md5:<hex>`` of every labelled frame written (calibration and fine-tuning): the bags are read, not hashed,
    so a frame missing or decoded otherwise gives another release id."""
    from .inputs import tree_hash

    digest = hashlib.md5()
    for folder in ("calibration", FINETUNE):
        if (out / folder).is_dir():
            digest.update(f"{folder}\0{tree_hash(out / folder)}\0".encode())
    return "md5:" + digest.hexdigest()


def _frame_counts(out: Path) -> dict:
    return {folder: len(list((out / folder / "images").glob("*.png"))) for folder in (SEARCH, HELD_OUT, FINETUNE)}


def _finetune_note(out: Path, asked: bool) -> dict | None:
    if not asked:
        return None
    frames = len(list((out / FINETUNE / "images").glob("*.png")))
    # Relative to the release folder, so that the release's files do not depend on where it was written.
    return {"frames": frames, "run_in": "the release folder",
            "command": f"clipomaly finetune {FINETUNE} -o finetuned.pt --config {PARAMETER_FILE}" if frames else None}


def _provenance(record: dict) -> dict:
    """What the parameter file's comments say of where it came from."""
    calibration = record["calibration"]
    return {"release_id": record["release_id"], "parent": record["parent"],
            "package_version": record["package_version"], "inputs": record["inputs"], "reviews": record["reviews"],
            "calibration": {key: calibration.get(key) for key in ("objective", "decision", "rule", "why_not")
                            if calibration.get(key) is not None} | _calibration_figures(calibration)}


def _calibration_figures(calibration: dict) -> dict:
    """The calibration's objective for the chosen and the starting settings, on the searched frames and on the
    held-out drives, as the parameter file's comments give them."""
    if not calibration.get("ran"):
        return {}
    key = OBJECTIVES[calibration["objective"]][1]
    figures = {"searched": {side: calibration["figures"][side].get(key) for side in ("chosen", "starting")}}
    if calibration.get("held_out"):
        figures["held_out"] = {side: calibration["held_out"][part].get(key) for side, part in
                               (("chosen", "chosen"), ("starting", "default"))}
    return {"figures": figures}


def changelog(record: dict, parent: Path | None) -> str:
    """CHANGELOG.md: this release's changes, then the parent's changelog."""
    from .report import changelog_entry

    text = changelog_entry(record)
    earlier = Path(parent) / CHANGELOG if parent else None
    if earlier is not None and earlier.is_file():
        text += "\n" + earlier.read_text().split("\n", 2)[2]
    return "# Changelog\n\n" + text
