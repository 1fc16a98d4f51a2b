"""The words of a release: its CHANGELOG entry, and ``clipomaly release diff``'s account of two releases."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ...core.config import NODE_NAME
from ..calibration import SEARCHED
from .compare import figures_table
from .inputs import ReleaseError
from .provenance import PARAMETER_FILE, RELEASE_FILE


def changelog_entry(record: dict) -> str:
    """One release's section of CHANGELOG.md: what it adds and changes, on what reviews, and by how much it does
    better than its parent where it was measured."""
    change, reviews = record["vocabulary"], record["reviews"]
    lines = [f"## {record['release_id']} (parent {record['parent'] or 'none'}, clipomaly_ros "
             f"{record['package_version']})", ""]
    lines += [f"- Vocabulary: added {_names(change['added'])}." if change["added"] else
              "- Vocabulary: nothing added."]
    lines += [f"- Already covered, not added: " + ", ".join(f"{n} ({why})" for n, why in change["covered"].items())
              + "."] if change["covered"] else []
    lines += [f"- Names normalised: " + ", ".join(f"{a!r} -> {b!r}" for a, b in change["normalised"].items())
              + "."] if change["normalised"] else []
    moved = [f"{n} {v['from']} -> {v['to']}" for n, v in record["thresholds"].items() if v["from"] != v["to"]]
    lines.append("- Thresholds: " + (", ".join(moved) if moved else "unchanged") + ".")
    calibration = record["calibration"]
    lines.append(f"- Calibration: {calibration['decision']}." if calibration.get("ran") else
                 f"- Calibration: not run ({calibration.get('why_not')}).")
    if record.get("names_not_measured"):
        lines.append("- Reviewed only on the held-out drives, so in the release but not in calibration nor in what "
                     "was measured on those drives: " + ", ".join(record["names_not_measured"]) + ".")
    lines.append(f"- Reviews: {reviews['lines']} lines; decisions in force " + _counts(reviews["decisions"])
                 + "; reviewers " + _counts(reviews["reviewers"]) + "; every valid line: decisions "
                 + _counts(reviews.get("valid_line_decisions", {})) + ", reviewers "
                 + _counts(reviews.get("valid_line_reviewers", {})) + ".")
    if record["problems"]:
        lines.append(f"- Problems reported ({len(record['problems'])}), left out of the release: "
                     + "; ".join(record["problems"][:5]) + (" ..." if len(record["problems"]) > 5 else "") + ".")
    comparison = record.get("comparison")
    if comparison:
        how = f" (this release with {comparison['vocabulary']})" if comparison.get("vocabulary") else ""
        lines += ["", f"Measured against the parent on {comparison['data']}{how}:", "",
                  figures_table(comparison, "parent", "this release")]
    if record.get("finetune") and record["finetune"]["command"]:
        lines += ["", f"Fine-tuning data: {record['finetune']['frames']} frames; in the release folder run "
                      f"`{record['finetune']['command']}`"
                      " (a GPU job) to use it."]
    return "\n".join(lines) + "\n"


def _names(counts: dict) -> str:
    return ", ".join(f"{name} ({finds} confirmed finds)" for name, finds in counts.items())


def _counts(counts: dict) -> str:
    return ", ".join(f"{name or '(unnamed)'} {value}" for name, value in counts.items()) or "none"


def read_release(folder: Path) -> tuple[dict, dict]:
    """A release's ``release.json`` and its parameter file's ``ros__parameters``."""
    files = [Path(folder) / RELEASE_FILE, Path(folder) / PARAMETER_FILE]
    if not all(f.is_file() for f in files):
        raise ReleaseError(f"{folder}: not a release folder (no {RELEASE_FILE} and {PARAMETER_FILE}); give folders "
                           "that clipomaly release wrote")
    parameters = yaml.safe_load(files[1].read_text())[f"/**/{NODE_NAME}"]["ros__parameters"]
    return json.loads(files[0].read_text()), parameters


def diff_text(old: Path, new: Path, figures: dict | None = None) -> str:
    """What changed from release ``old`` to ``new``: vocabulary added and removed, every searched threshold from
    and to, other settings changed; with ``figures`` (:func:`~.compare.compare`) both sides' figures."""
    (old_record, old_values), (new_record, new_values) = read_release(old), read_release(new)
    old_vocabulary, new_vocabulary = old_values["anomaly_vocabulary"], new_values["anomaly_vocabulary"]
    lines = [f"{old_record['release_id']} -> {new_record['release_id']}",
             "vocabulary added: " + (", ".join(n for n in new_vocabulary if n not in old_vocabulary) or "none"),
             "vocabulary removed: " + (", ".join(n for n in old_vocabulary if n not in new_vocabulary) or "none")]
    for name in SEARCHED:
        before, after = old_values.get(name), new_values.get(name)
        lines.append(f"{name}: {before} -> {after}" + ("" if before != after else " (unchanged)"))
    shown = (*SEARCHED, "anomaly_vocabulary", "release_id")
    others = sorted(n for n in set(old_values) | set(new_values)
                    if n not in shown and old_values.get(n) != new_values.get(n))
    lines += [f"{name}: {old_values.get(name)} -> {new_values.get(name)}" for name in others]
    if figures is not None:
        lines += ["", figures_table(figures, old_record["release_id"], new_record["release_id"])]
    return "\n".join(lines)


def release_diff(old: Path, new: Path, eval_data: Path | None = None, picture: Path | None = None) -> str:
    """``clipomaly release diff``: :func:`diff_text`, with ``eval_data`` both releases run over its labelled frames
    (figures side by side) and the frames where they disagree most drawn into ``picture``."""
    if eval_data is None:
        return diff_text(old, new)
    from ...core.config import load_config
    from ...core.method.pipeline import Clipomaly
    from .compare import compare, disagreement_picture

    pipelines = [Clipomaly(load_config(Path(folder) / PARAMETER_FILE)) for folder in (old, new)]
    figures, worst = compare(*pipelines, eval_data)
    text = diff_text(old, new, figures)
    written = disagreement_picture(worst, picture or Path("diff.png"), Path(old).name, Path(new).name)
    return text + (f"\nthe frames where they disagree most: {written}" if written else
                   "\nthe two releases agree on every frame")
