"""The fleet loop on a generated fleet whose truth is known: synthetic drives with garden gnomes (a name no naming
dictionary holds, so today they are dropped as unnamed regions), mined with ``clipomaly mine`` (or, for tests that
need every kind of decision, an index built from the truth), a scripted reviewer that answers from the truth with a stated error rate, a release, and the release measured
against its parent on other generated drives (toy backend; data and a measurement, not runtime code).

``python -m clipomaly_ros.tools.release.trial OUT_DIR`` runs it and prints the figures.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import cv2
import numpy as np

from ...core.config import ClipomalyConfig
from ..mining.synthetic import FIRST_STAMP_NS, RATE_HZ, SIZE, Appearance, write_fleet
from ..scenes import render_street
from .inputs import REVIEWS, RUN_FILE, tree_hash

GNOME = "garden gnome"
TRIAL_FLEET = tuple(
    item for index, bag in enumerate(("gnome_a", "gnome_b", "gnome_c", "gnome_d", "gnome_e"))
    for item in (Appearance(bag, "/front/image_raw", GNOME, 2, 8, (60 + 25 * index, 150, 100 + 25 * index, 205)),
                 Appearance(bag, "/front/image_raw", "mattress", 11, 17, (150 - 10 * index, 160, 220 - 10 * index,
                                                                          200))))
"""Five drives of 20 frames, each with a gnome and a mattress in view one after the other."""
TRIAL_FRAMES = 20
FALSE_ALARMS = (("car", (226, 108, 272, 168)), ("road", (40, 200, 80, 230)))
"""Candidates on things that are no anomaly, as a detector's false alarms: a car (called a known class by the
reviewer) and a patch of road (rejected)."""
WRONG_NAMES = ("rock", "dog", "traffic cone")


def encode_mask(mask: np.ndarray) -> dict:
    """COCO compressed RLE of an ``(H, W)`` bool mask, as the index and reviews.jsonl hold it."""
    from pycocotools import mask as coco_mask

    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode()}


def _row(bag: Path, topic: str, index: int, name: str, mask: np.ndarray, reported: bool, number: int) -> dict:
    ys, xs = np.nonzero(mask)
    stamp = FIRST_STAMP_NS + index * round(1e9 / RATE_HZ)
    return {"candidate_id": f"{bag.name}-{number}", "bag": bag.name, "bag_id": tree_hash(bag)[4:],
            "source_path": str(bag), "topic": topic, "track": number, "best_stamp_ns": stamp,
            "first_stamp_ns": stamp, "last_stamp_ns": stamp, "name": name if reported else "",
            "box": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())], "reported": reported,
            "peak_score": 0.9, "mask": encode_mask(mask)}


def truth_index(out_dir: Path, bags: list[Path], config: ClipomalyConfig) -> dict[str, str]:
    """``OUT_DIR`` as ``clipomaly mine`` with the review issue's columns would write it for the trial fleet: one
    candidate per appearance at its middle frame (the gnomes unreported: no name fits them today) plus the
    :data:`FALSE_ALARMS` in the frame of each drive's first candidate; returns each candidate's true name (a known
    class for false alarms on one, "" for nothing)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..mining.driver import run_fingerprint

    rows, truth = [], {}
    for bag in bags:
        mine = [a for a in TRIAL_FLEET if a.bag == bag.name]
        for number, appearance in enumerate(mine, 1):
            index = (appearance.first + appearance.last) // 2
            shift = index - appearance.first
            box = (appearance.box[0] + shift, appearance.box[1], appearance.box[2] + shift, appearance.box[3])
            _, masks = render_street(*SIZE, [(appearance.name, box)], seed=index)
            rows.append(_row(bag, appearance.topic, index, appearance.name, masks[appearance.name],
                             appearance.name != GNOME, number))
            truth[rows[-1]["candidate_id"]] = appearance.name
        for number, (what, (x0, y0, x1, y1)) in enumerate(FALSE_ALARMS, len(mine) + 1):
            mask = np.zeros(SIZE, bool)
            mask[y0:y1, x0:x1] = True
            rows.append(_row(bag, mine[0].topic, (mine[0].first + mine[0].last) // 2, "rock", mask, True, number))
            truth[rows[-1]["candidate_id"]] = what if what == "car" else ""
    (out_dir / "anomalies.parquet").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out_dir / "anomalies.parquet" / "part-0.parquet")
    fingerprint = run_fingerprint(config, None, 60.0, None)
    (out_dir / RUN_FILE).write_text(json.dumps({"fingerprint": fingerprint}, indent=1))
    (out_dir / "summary.json").write_text(json.dumps({"anomalies": len(rows), "settings": fingerprint}, indent=1))
    return truth


def mined_truth(rows: dict[str, dict]) -> dict[str, str]:
    """Each mined candidate's true name: the trial fleet's object in view in its bag at its best frame whose box
    overlaps the candidate's most, or "" (a false alarm)."""
    period = round(1e9 / RATE_HZ)
    truth = {}
    for candidate, row in rows.items():
        index = (int(row["best_stamp_ns"]) - FIRST_STAMP_NS) // period
        x0, y0, x1, y1 = row["box"]
        best, name = 0, ""
        for item in (a for a in TRIAL_FLEET if a.bag == row["bag"] and a.first <= index <= a.last):
            shift = index - item.first
            overlap = (max(0, min(x1 + 1, item.box[2] + shift) - max(x0, item.box[0] + shift))
                       * max(0, min(y1 + 1, item.box[3]) - max(y0, item.box[1])))
            if overlap > best:
                best, name = overlap, item.name
        truth[candidate] = name
    return truth


def scripted_reviews(truth: dict[str, str], error_rate: float, seed: int = 0, reviewer: str = "script") -> list[dict]:
    """One decision per candidate from the ``truth``: accept or rename to the true name, known_class for a known
    class, reject for nothing; for ``error_rate`` of the candidates (rounded, chosen at random by ``seed``) a wrong
    answer instead (a real find rejected or misnamed, a false alarm accepted)."""
    chooser = random.Random(seed)
    candidates = sorted(truth)
    mistaken = set(chooser.sample(candidates, round(error_rate * len(candidates))))
    lines = []
    for number, candidate in enumerate(candidates):
        name, wrong = truth[candidate], candidate in mistaken
        if name in ("", "car"):
            line = ({"decision": "accept", "name": "rock"} if wrong else
                    {"decision": "known_class", "known_class": name} if name else {"decision": "reject"})
        elif wrong:
            line = chooser.choice([{"decision": "reject"}, {"decision": "rename", "name": chooser.choice(WRONG_NAMES)}])
        else:
            line = {"decision": "rename" if name == GNOME else "accept", "name": name}
        lines.append({"candidate_id": candidate, **line, "reviewer": reviewer,
                      "time": f"2026-01-01T00:{number // 60:02d}:{number % 60:02d}Z", "seconds": 2.0})
    return lines


def write_reviews(folder: Path, lines: list[dict]) -> None:
    with open(folder / REVIEWS, "a", encoding="utf-8") as stream:
        for line in lines:
            stream.write(json.dumps(line) + "\n")


def held_out_drives(folder: Path, drives: int = 3, frames: int = 4, seed: int = 100) -> Path:
    """Labelled frames of other generated drives (gnomes and mattresses elsewhere, other noise): ``images/``,
    ``labels/`` (1 anomaly), ``instances/`` and ``names.json``, as :mod:`.compare` reads them."""
    rng = np.random.default_rng(seed)
    names = {}
    for sub in ("images", "labels", "instances"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for drive in range(drives):
        for index in range(frames):
            x = int(rng.integers(20, 200))
            objects = [(GNOME, (x, 140, x + 40, 200)), ("mattress", (x + 60, 170, x + 110, 210))][: 1 + index % 2]
            image, masks = render_street(*SIZE, objects, seed=seed + 10 * drive + index)
            stem = f"drive{drive}_{index:02d}"
            instances = np.zeros(SIZE, np.uint8)
            for number, (name, _) in enumerate(objects, 1):
                instances[masks[name]] = number
            names[stem] = {str(n): name for n, (name, _) in enumerate(objects, 1)}
            cv2.imwrite(str(folder / "images" / f"{stem}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(folder / "labels" / f"{stem}.png"), (instances > 0).astype(np.uint8))
            cv2.imwrite(str(folder / "instances" / f"{stem}.png"), instances)
    (folder / "names.json").write_text(json.dumps(names, indent=1, sort_keys=True))
    return folder


TRIAL_CONFIG = dict(backend="toy", inference_size=SIZE[0])
"""The parent's settings: the toy backend at the drives' own size, its shipped vocabulary (no gnome)."""


def prepare_trial(folder: Path, error_rate: float = 0.1, seed: int = 0, held_out: tuple[int, int] = (3, 4),
                  mine: bool = True) -> tuple[Path, Path, ClipomalyConfig]:
    """In ``folder``: the trial fleet's bags, its reviewed index (``mined/``: ``clipomaly mine``'s own output, or
    with ``mine`` false :func:`truth_index`'s; reviewed by the script with ``error_rate`` wrong) and ``held_out``
    (drives, frames each) other drives (``held_out/``); returns those two folders and the parent's settings."""
    config = ClipomalyConfig(**TRIAL_CONFIG)
    bags = write_fleet(folder / "bags", TRIAL_FLEET, TRIAL_FRAMES)
    mined = folder / "mined"
    if mine:
        from ..mining.driver import run_mine
        from .inputs import read_index

        run_mine(bags, mined, config, workers=1, progress=False, log=lambda message: None)
        truth = mined_truth(read_index(mined))
    else:
        truth = truth_index(mined, bags, config)
    write_reviews(mined, scripted_reviews(truth, error_rate, seed))
    return mined, held_out_drives(folder / "held_out", *held_out), config


def run_trial(folder: Path, error_rate: float = 0.1, seed: int = 0, space=None, log=print) -> dict:
    """The whole loop in ``folder``: :func:`prepare_trial`, then the release, measured against its parent on the
    held-out drives; returns release.json's content."""
    from .build import ReleaseOptions, build_release

    mined, held_out, config = prepare_trial(folder, error_rate, seed)
    options = ReleaseOptions([mined], folder / "release", config, eval_data=held_out)
    if space is not None:
        options.space = space
    return build_release(options, log)


if __name__ == "__main__":
    record = run_trial(Path(sys.argv[1]))
    print(json.dumps({key: record[key] for key in ("release_id", "vocabulary", "thresholds", "comparison")},
                     indent=1, default=float))
