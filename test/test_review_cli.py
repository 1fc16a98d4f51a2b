"""The review's verbs: ``review --conflicts``, ``export MINED --format``, ``import FILE --into MINED`` and
``frames MINED -o DIR`` (read back from a real bag)."""

from __future__ import annotations


import cv2
import numpy as np
from helpers import write_image_bag
from review_fixtures import write_mined

from clipomaly_ros.tools.cli import main
from clipomaly_ros.tools.review import decisions
from clipomaly_ros.tools.review.index import frame_key


def test_conflicts_are_listed(tmp_path, capsys):
    write_mined(tmp_path, count=3)
    decisions.append(tmp_path, [decisions.make_decision("c00001", "accept", name="tire", reviewer="ann"),
                                decisions.make_decision("c00001", "reject", reviewer="bob")])
    assert main(["review", str(tmp_path), "--conflicts"]) == 0
    out = capsys.readouterr().out
    assert "1 candidate(s) with disagreeing reviewers" in out and "c00001  bob: reject" in out


def test_export_then_import_into_another_copy(tmp_path, capsys):
    write_mined(tmp_path / "a", count=5)
    write_mined(tmp_path / "b", count=5)
    decisions.append(tmp_path / "a", [decisions.make_decision("c00002", "known_class", known_class="car",
                                                              reviewer="ann")])
    for kind, name in (("coco", "out.json"), ("label-studio", "tasks.json"), ("cvat", "out.xml")):
        assert main(["export", str(tmp_path / "a"), "--format", kind, "-o", str(tmp_path / name)]) == 0
    assert main(["import", str(tmp_path / "out.json"), "--into", str(tmp_path / "b")]) == 0
    assert "imported 1 decision(s)" in capsys.readouterr().out
    assert main(["import", str(tmp_path / "out.xml"), "--into", str(tmp_path / "b"), "--format", "cvat"]) == 0
    latest = decisions.read_log(tmp_path / "b").latest
    assert list(latest) == ["c00002"] and latest["c00002"]["known_class"] == "car"
    assert latest["c00002"]["source"] == "cvat import" and len(decisions.read_log(tmp_path / "b").lines) == 2


def test_user_mistakes_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["review", str(tmp_path), "--port", "0"]) == 2
    assert "has no anomalies.parquet" in capsys.readouterr().err
    assert main(["review", str(tmp_path), "--conflicts"]) == 2
    assert "has no anomalies.parquet" in capsys.readouterr().err
    write_mined(tmp_path, count=2)
    assert main(["export", "--format", "coco", "-o", str(tmp_path / "x.json")]) == 2
    assert "needs both MINED and --format" in capsys.readouterr().err
    (tmp_path / "junk.json").write_text("[1, 2]")
    assert main(["import", str(tmp_path / "junk.json"), "--into", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give --format" in err


def test_frames_are_read_back_from_the_bag(tmp_path, capsys):
    rows = write_mined(tmp_path, count=4, bags=1, frames=False)
    images = [np.random.default_rng(n).integers(0, 255, (48, 64, 3), dtype=np.uint8) for n in range(5)]
    write_image_bag(tmp_path / "bags" / "drive0", images)
    assert main(["frames", str(tmp_path), "-o", str(tmp_path / "frames")]) == 0
    assert "wrote 4 frame(s)" in capsys.readouterr().out
    for number, row in enumerate(rows):
        written = cv2.cvtColor(cv2.imread(str(tmp_path / "frames" / f"{frame_key(row)}.png")), cv2.COLOR_BGR2RGB)
        assert np.array_equal(written, images[number])
    (tmp_path / "frames" / f"{frame_key(rows[0])}.png").unlink()
    assert main(["frames", str(tmp_path), "-o", str(tmp_path / "frames"), "--no-unreported"]) == 0
    assert "wrote 1 frame(s) to" in capsys.readouterr().out


def test_the_page_reads_a_frame_from_its_bag_when_none_was_extracted(tmp_path):
    import threading
    import urllib.request

    from clipomaly_ros.tools.review.frames import extract_frames
    from clipomaly_ros.tools.review.index import load_index
    from clipomaly_ros.tools.review.server import ReviewServer

    rows = write_mined(tmp_path, count=2, bags=1, frames=False)
    images = [np.random.default_rng(n).integers(0, 255, (48, 64, 3), dtype=np.uint8) for n in range(2)]
    write_image_bag(tmp_path / "bags" / "drive0", images)
    server = ReviewServer(load_index(tmp_path), "ann", frame_reader=extract_frames)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host, port = server.server_address[:2]
        request = urllib.request.Request(f"http://{host}:{port}/frame/{rows[1]['candidate_id']}",
                                         headers={"X-Review-Token": server.token})
        png = urllib.request.urlopen(request, timeout=60).read()
    finally:
        server.shutdown()
        server.server_close()
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.array_equal(decoded, images[1])
    assert (tmp_path / "frames" / f"{frame_key(rows[1])}.png").is_file()      # kept for the next view
