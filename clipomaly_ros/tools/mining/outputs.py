"""The end of a ``clipomaly mine`` run: the committed shards checked and sorted out (damaged ones set aside to be
mined again, those of a bag whose end has since moved superseded), every shard not committed named with why, and
the index, thumbnails, summary and report written from the committed shards through staging paths of this run.
A write that fails (ENOSPC) is a named failure, never a silent one."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from .plan import Shard
from .report import committed_shards, copy_thumbnails, read_rows, report_html, summarise, write_index, write_staged
from .shard import SHARDS_FOLDER, one_line


@dataclass
class MinedNow:
    """What this run's mining did: the shards it had to mine (``todo``), each answered shard's answer by id, Ray's
    start-up seconds, why mining stopped early (or None), and its seconds."""

    todo: list[Shard]
    answers: dict
    startup: float
    stopped: str | None
    seconds: float


def repaired_commits(out_dir: Path, run_id: str, log) -> dict[str, dict]:
    """The committed shards (:func:`committed_shards`); one whose files are empty or do not parse (a write the
    disk lost) is reported, moved aside to ``shards/.damaged-<id>-<run id>`` and left out, to be mined again."""
    damaged: list[tuple[str, str]] = []
    records = committed_shards(out_dir, damaged)
    for shard_id, reason in damaged:
        folder = Path(out_dir) / SHARDS_FOLDER
        (folder / shard_id).rename(folder / f".damaged-{shard_id}-{run_id}")
        log(f"committed shard {shard_id} is damaged ({reason}): set aside as .damaged-{shard_id}-{run_id}, mined "
            "again")
    return records


def superseded_shards(records: dict[str, dict], plans) -> dict[str, str]:
    """The committed shards of an earlier version of a planned bag (the same lineage, i.e. start time and first
    bytes, but another content id: a bag whose end moved), by id, with the planned bag's name: their rows are
    replaced by the new version's, never added to; of two committed versions neither of which is planned now, the
    earlier one's."""
    current = {bag.lineage: bag for bag in plans if bag.lineage and not bag.failure}
    planned_ids = {bag.bag_id for bag in plans if not bag.failure}
    newest = _newest_versions(records)
    found = {}
    for shard_id, record in records.items():
        shard = record["shard"]
        bag = current.get(shard.get("lineage", ""))
        if bag is not None and shard.get("bag_id") not in planned_ids:
            found[shard_id] = bag.name
        elif bag is None and shard.get("lineage") and newest[shard["lineage"]] != shard.get("bag_id"):
            found[shard_id] = shard["bag_name"]  # two earlier versions, neither planned now: the newest stays
    return found


def _newest_versions(records: dict[str, dict]) -> dict[str, str]:
    """Per lineage among the committed shards, the ``bag_id`` of the version that records furthest (the greatest
    window end; a bag whose end moved on)."""
    ends: dict[str, tuple[int, str]] = {}
    for record in records.values():
        shard = record["shard"]
        lineage, key = shard.get("lineage", ""), (shard["stop_ns"], shard.get("bag_id", ""))
        ends[lineage] = max(ends.get(lineage, key), key)
    return {lineage: bag_id for lineage, (_, bag_id) in ends.items()}


def shard_failures(mined: MinedNow, records: dict) -> list[dict]:
    """A record per shard of ``mined.todo`` that is not committed: the failure its worker reported, or why none
    did (a shard whose every worker died is never answered)."""
    failures = []
    for shard in mined.todo:
        if shard.id in records:
            continue
        answer = mined.answers.get(shard.id)
        if answer is not None:
            reason = f"{answer['failure']} ({answer['attempts']} attempt(s))" if answer["attempts"] else \
                answer["failure"]
        else:
            reason = f"not mined: {mined.stopped or 'no worker answered for it (its workers died or were lost)'}"
        failures.append({"bag": shard.bag_name, "path": shard.bag, "shard": shard.id, "topic": shard.topic,
                         "start_ns": shard.start_ns, "stop_ns": shard.stop_ns, "reason": reason})
    return failures


def undecodable_topics(plans, records: dict) -> list[dict]:
    """A failure per planned bag and topic that had frames but decoded none of them (an unsupported codec, all
    damaged): committed, but nothing was mined."""
    failures = []
    for bag in plans:
        for topic in bag.topics:
            mine = [records[s.id] for s in bag.shards if s.topic == topic and s.id in records]
            skipped, processed = sum(r["frames_skipped"] for r in mine), sum(r["frames_processed"] for r in mine)
            if skipped and not processed:
                reasons = [reason for r in mine for reason in r.get("skipped_reasons", [])]
                failures.append({"bag": bag.name, "path": bag.path, "topic": topic, "kind": "undecodable",
                                 "reason": f"all {skipped} frames of {topic} skipped as undecodable"
                                           + (f" (first: {reasons[0]})" if reasons else "")})
    return failures


def write_outputs(out_dir: Path, run_id: str, plans, problems, mined: MinedNow, settings: dict,
                  log) -> tuple[dict, object]:
    """The index, thumbnails, summary.json and report.html from every committed shard but the superseded ones;
    ``(summary, table)``. A write that fails is added to the summary's ``failed``."""
    records = committed_shards(out_dir)
    superseded = superseded_shards(records, plans)
    for shard_id, name in sorted(superseded.items()):
        log(f"committed shard {shard_id} is of an earlier version of bag {name} (its end has moved since): its rows "
            "are replaced by this version's")
        del records[shard_id]
    failures = shard_failures(mined, records) + undecodable_topics(plans, records)
    planned = {shard.id for bag in plans for shard in bag.shards}
    earlier = sorted(set(records) - planned)
    if earlier:
        bags = sorted({records[shard]["shard"]["bag_name"] for shard in earlier})
        log(f"kept {len(earlier)} committed shard(s) of earlier runs that this run's inputs do not cover (bags "
            f"{', '.join(bags)}): their rows stay in the index and the report")
    table = read_rows(out_dir, list(records))
    failures += _written(lambda: (write_index(out_dir, table, run_id), copy_thumbnails(out_dir, list(records))),
                         out_dir / "anomalies.parquet")
    frames_now = sum(records[s.id]["frames_processed"] for s in mined.todo if s.id in records)
    run = {"mined": len([s for s in mined.todo if s.id in records]), "resumed": len(planned) - len(mined.todo),
           "frames_per_second": round(frames_now / mined.seconds, 3) if frames_now and mined.seconds else 0.0,
           "seconds": round(mined.seconds, 3), "ray_startup_s": round(mined.startup, 3), "settings": settings}
    summary = summarise(plans, problems, records, failures, table, run)
    # the summary last: it marks the run's outputs finished, and names a report that could not be written
    summary["failed"] += _written(lambda: write_staged(out_dir / "report.html", report_html(table, summary), run_id),
                                  out_dir / "report.html")
    summary["failed"] += _written(lambda: write_staged(out_dir / "summary.json", json.dumps(
        summary, indent=1, default=str), run_id), out_dir / "summary.json")
    if not summary["failed"]:
        for shard_id in superseded:
            shutil.rmtree(Path(out_dir) / SHARDS_FOLDER / shard_id, ignore_errors=True)
    return summary, table


def _written(write, path: Path) -> list[dict]:
    """``write()`` done: no failure; an ``OSError`` (ENOSPC, EIO): one failure naming ``path``."""
    try:
        write()
    except OSError as error:
        return [{"path": str(path), "kind": "output", "reason": f"writing {path.name} failed: {one_line(error)}"}]
    return []
