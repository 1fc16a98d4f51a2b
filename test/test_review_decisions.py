"""reviews.jsonl: checked lines, atomic appends from concurrent processes, the latest decision wins, a cut line is
reported, disagreements are listed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from clipomaly_ros.tools.review import decisions
from clipomaly_ros.tools.review.decisions import DecisionError, append, conflicts, make_decision, read_log

WRITER = """
import sys
from clipomaly_ros.tools.review.decisions import append, make_decision
folder, reviewer, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
for number in range(count):
    append(folder, [make_decision(f"c{number:05d}", "rename", name=f"{reviewer} name {number} " + "x" * 150,
                                  reviewer=reviewer, seconds=1.5)])
"""


def test_two_concurrent_reviewers_lose_no_line(tmp_path):
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), reviewer, "500"])
               for reviewer in ("ann", "bob")]
    for writer in writers:
        assert writer.wait(timeout=300) == 0
    raw = (tmp_path / decisions.REVIEWS_FILE).read_bytes().splitlines()
    assert len(raw) == 1000
    lines = [json.loads(line) for line in raw]   # every line whole: none interleaved with another
    for reviewer in ("ann", "bob"):
        mine = [line["name"] for line in lines if line["reviewer"] == reviewer]
        assert mine == [f"{reviewer} name {n} " + "x" * 150 for n in range(500)]
    log = read_log(tmp_path)
    assert not log.bad_lines and len(log.lines) == 1000 and len(log.latest) == 500


def test_a_later_decision_supersedes_and_both_lines_stay(tmp_path):
    append(tmp_path, [make_decision("c1", "accept", name="tire", reviewer="ann")])
    append(tmp_path, [make_decision("c1", "reject", reviewer="ann", seconds=2)])
    log = read_log(tmp_path)
    assert [line["decision"] for line in log.lines] == ["accept", "reject"]
    assert log.latest["c1"]["decision"] == "reject"
    assert list(log.latest["c1"])[:7] == list(decisions.FIXED_KEYS)
    assert log.latest["c1"]["time"].endswith("Z")


def test_a_cut_last_line_is_reported_and_the_next_append_stays_whole(tmp_path):
    append(tmp_path, [make_decision("c1", "accept", name="tire", reviewer="ann")])
    with (tmp_path / decisions.REVIEWS_FILE).open("a") as stream:
        stream.write('{"candidate_id": "c2", "decis')           # a writer killed mid-line
    log = read_log(tmp_path)
    assert list(log.latest) == ["c1"] and log.bad_lines == [(2, "is cut (no end of line)")]
    assert "line 2 is cut" in log.problems()
    append(tmp_path, [make_decision("c3", "skip", reviewer="bob")])
    log = read_log(tmp_path)
    assert sorted(log.latest) == ["c1", "c3"] and [n for n, _ in log.bad_lines] == [2]


@pytest.mark.parametrize("arguments, message", [
    ({"candidate_id": "c1", "decision": "maybe"}, "decision must be one of"),
    ({"candidate_id": "", "decision": "accept", "name": "x"}, "candidate_id"),
    ({"candidate_id": "c1", "decision": "rename"}, "name is required"),
    ({"candidate_id": "c1", "decision": "rename", "name": "a\nb"}, "printable"),
    ({"candidate_id": "c1", "decision": "known_class", "known_class": "boat", "known_classes": ("car",)},
     "not one of the known classes"),
    ({"candidate_id": "c1", "decision": "reject", "seconds": -1}, "seconds"),
    ({"candidate_id": "c1", "decision": "reject", "mask": {"size": [2, 2], "counts": [1, 1]}}, "adding up"),
    ({"candidate_id": "c1", "decision": "reject", "time": "yesterday"}, "ISO 8601"),
])
def test_bad_decisions_are_refused_with_a_reason(arguments, message):
    with pytest.raises(DecisionError, match=message):
        make_decision(reviewer="ann", **arguments)


def test_disagreements_are_listed(tmp_path):
    append(tmp_path, [make_decision("c1", "accept", name="tire", reviewer="ann"),
                      make_decision("c1", "known_class", known_class="car", reviewer="bob"),
                      make_decision("c2", "reject", reviewer="ann"), make_decision("c2", "reject", reviewer="bob"),
                      make_decision("c3", "rename", name="sofa", reviewer="ann"),
                      make_decision("c3", "skip", reviewer="bob"),
                      make_decision("c4", "reject", reviewer="ann"), make_decision("c4", "accept", name="x",
                                                                                   reviewer="bob"),
                      make_decision("c4", "reject", reviewer="bob")])
    found = conflicts(read_log(tmp_path))
    assert [c["candidate_id"] for c in found] == ["c1"]
    assert set(found[0]["reviewers"]) == {"ann", "bob"}
    assert "c1  bob: known_class car" in decisions.conflict_text(found)


@pytest.mark.parametrize("given", ["2026-12-01T09:15:30.25Z", "2026-12-01T09:15:30.250000z",
                                   "2026-12-01T10:15:30.250+01:00", "2026-12-01T09:15:30.250"])
def test_times_with_a_zulu_zone_are_read_as_utc(given):
    assert decisions.iso_utc(given) == "2026-12-01T09:15:30.250Z"
    with pytest.raises(DecisionError, match="not ISO 8601"):
        decisions.iso_utc("yesterday Z")
