"""The review server is safe by default: every request needs the token, file routes serve only the mined folder,
malformed requests get a 4xx with a message and never reach reviews.jsonl; good decisions are kept and a restarted
server shows them."""

from __future__ import annotations

import http.client
import json
import os
import threading

import numpy as np
import pytest
from review_fixtures import write_mined

from clipomaly_ros.tools.review import decisions, masks
from clipomaly_ros.tools.review.index import load_index
from clipomaly_ros.tools.review.server import MAX_BODY, ReviewHandler, ReviewServer

SHORT_COUNTS = {"size": [48, 64], "counts": masks.encode(np.zeros((48, 63), bool))["counts"]}
"""A 48 x 63 mask's counts under a 48 x 64 size: well formed, a column short."""


@pytest.fixture
def server(tmp_path):
    write_mined(tmp_path / "mined", count=6)
    (tmp_path / "secret.txt").write_text("outside the mined folder")
    os.symlink(tmp_path / "secret.txt", tmp_path / "mined" / "thumbnails" / "link.jpg")
    running = ReviewServer(load_index(tmp_path / "mined"), "ann")
    threading.Thread(target=running.serve_forever, daemon=True).start()
    yield running
    running.shutdown()
    running.server_close()


def request(server, method, path, body=None, token=True, headers=None):
    """(status, decoded JSON or raw bytes) of one request, sent as written (no client-side path cleaning)."""
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    sent = {"X-Review-Token": server.token} if token else {}
    sent.update(headers or {})
    connection.putrequest(method, path, skip_accept_encoding=True)
    for key, value in sent.items():
        connection.putheader(key, value)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    if data is not None and "Content-Length" not in sent:
        connection.putheader("Content-Length", str(len(data)))
    connection.endheaders()
    if data is not None:
        try:
            connection.send(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered before reading an oversize body, as it should
    answer = connection.getresponse()
    raw = answer.read()
    connection.close()
    is_json = answer.getheader("Content-Type") == "application/json"
    return answer.status, json.loads(raw) if is_json else raw


def reviews(server) -> bytes:
    path = server.index.folder / decisions.REVIEWS_FILE
    return path.read_bytes() if path.exists() else b""


@pytest.mark.parametrize("path", ["/", "/api/candidates", "/api/decisions", "/files/thumbnails/x.jpg",
                                  "/frame/c00001"])
def test_every_route_needs_the_token(server, path):
    status, body = request(server, "GET", path, token=False)
    assert status == 403 and "token" in body["error"]
    status, body = request(server, "GET", path, headers={"X-Review-Token": "wrong"}, token=False)
    assert status == 403
    assert request(server, "GET", f"{path}?token=wrong", token=False)[0] == 403


def test_the_token_in_the_url_opens_the_page(server):
    status, page = request(server, "GET", f"/?token={server.token}", token=False)
    assert status == 200 and b"clipomaly review" in page
    assert server.url.startswith("http://127.0.0.1:")


@pytest.mark.parametrize("path", ["/files/../secret.txt", "/files/%2e%2e/secret.txt", "/files/..%2fsecret.txt",
                                  "/files//etc/passwd", "/files/thumbnails/../../secret.txt",
                                  "/files/thumbnails/link.jpg", "/files/thumbnails", "/files/",
                                  "/frame/../../secret.txt", "/etc/passwd"])
def test_paths_outside_the_mined_folder_are_404(server, path):
    status, body = request(server, "GET", path)
    assert status == 404 and body["error"]


def test_files_inside_are_served(server):
    row = server.index.rows[0]
    status, data = request(server, "GET", "/files/" + row["thumbnail"])
    assert status == 200 and data[:2] == b"\xff\xd8"
    status, data = request(server, "GET", f"/frame/{row['candidate_id']}")
    assert status == 200 and data[:4] == b"\x89PNG"
    status, outline = request(server, "GET", f"/api/outline/{row['candidate_id']}")
    assert status == 200 and outline["size"] == [48, 64] and len(outline["polygons"]) == 4  # 3 islands, a hole


@pytest.mark.parametrize("body, status, message", [
    ({"candidate_id": "c99999", "decision": "accept"}, 400, "names no candidate"),
    ({"candidate_id": "../c00001", "decision": "accept"}, 400, "names no candidate"),
    ({"candidate_id": 7, "decision": "accept"}, 400, "names no candidate"),
    ({"candidate_id": "c00001", "decision": "delete"}, 400, "decision must be one of"),
    ({"candidate_id": "c00001", "decision": "rename"}, 400, "name is required"),
    ({"candidate_id": "c00001", "decision": "known_class", "known_class": "boat"}, 400, "not one of the known"),
    ({"candidate_id": "c00001", "decision": "reject", "reviewer": "mallory"}, 400, "unknown key"),
    ({"candidate_id": "c00001", "decision": "reject", "mask": masks.encode(np.ones((2, 2), bool))}, 400,
     "frame's size"),
    ({"candidate_id": "c00001", "decision": "reject", "seconds": "soon"}, 400, "seconds"),
    ({"candidate_id": "c00001", "decision": "reject", "mask": SHORT_COUNTS}, 400, "counts add up to 3024"),
    ({"candidate_id": "c00001", "decision": "accept", "mask": masks.encode(np.zeros((48, 64), bool))}, 400,
     "must hold pixels"),
    ({"candidate_id": "c00001", "decision": "rename", "name": "car"}, 400, "use known_class"),
    ({"candidate_id": "c00001", "decision": "reject", "mask": {"size": [48, 64], "counts": "0o"}}, 400,
     "end in the middle of a run"),
    ({"candidate_id": "c00001", "decision": "reject", "mask": {"size": [48, 64], "counts": "0 "}}, 400,
     "which no compressed RLE holds"),
    (["c00001", "accept"], 400, "JSON object"),
    (b"{\"candidate_id\": \"c00001\", \"deci", 400, "not JSON"),
    (b"\xff\xfe", 400, "not JSON"),
])
def test_malformed_decisions_get_400_and_never_reach_the_file(server, body, status, message):
    got, answer = request(server, "POST", "/api/decisions", body)
    assert got == status and message in answer["error"]
    assert reviews(server) == b""


def test_oversize_and_unmeasured_bodies_are_refused(server):
    status, answer = request(server, "POST", "/api/decisions", b"x" * (MAX_BODY + 1))
    assert status == 413 and "at most" in answer["error"]
    status, answer = request(server, "POST", "/api/decisions", b"{}", headers={"Content-Length": "-5"})
    assert status == 411
    assert request(server, "POST", "/api/other", {"candidate_id": "c00001"})[0] == 404
    assert request(server, "POST", "/api/decisions", {"candidate_id": "c00001", "decision": "skip"},
                   token=False)[0] == 403
    assert reviews(server) == b""


def test_decisions_are_kept_and_a_restarted_server_shows_them(server, tmp_path):
    status, line = request(server, "POST", "/api/decisions", {"candidate_id": "c00002", "decision": "accept",
                                                              "seconds": 3.25})
    assert status == 201 and line["name"] == server.index.by_id["c00002"]["name"] and line["reviewer"] == "ann"
    assert request(server, "POST", "/api/decisions", {"candidate_id": "c00003", "decision": "known_class",
                                                      "known_class": "car"})[0] == 201
    again = ReviewServer(load_index(tmp_path / "mined"), "bob")
    threading.Thread(target=again.serve_forever, daemon=True).start()
    try:
        status, state = request(again, "GET", "/api/decisions")
        assert status == 200 and set(state["latest"]) == {"c00002", "c00003"} and state["problems"] is None
        assert state["latest"]["c00002"]["seconds"] == 3.25
    finally:
        again.shutdown()
        again.server_close()


@pytest.mark.parametrize("length", ["²", "12 ", "0x10"])
def test_odd_content_lengths_get_411(server, length):
    status, answer = request(server, "POST", "/api/decisions", b"{}", headers={"Content-Length": length})
    assert status == 411 and "Content-Length" in answer["error"]
    assert reviews(server) == b""


def test_deeply_nested_json_gets_400(server):
    status, answer = request(server, "POST", "/api/decisions", b"[" * 200_000 + b"]" * 200_000)
    assert status == 400 and "not JSON" in answer["error"]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_get_405(server, method):
    status, answer = request(server, method, "/api/decisions", {"candidate_id": "c00001", "decision": "skip"})
    assert status == 405 and method in answer["error"]
    assert reviews(server) == b""


def test_head_gets_405_without_a_body(server):
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    connection.request("HEAD", "/", headers={"X-Review-Token": server.token})
    answer = connection.getresponse()
    assert answer.status == 405 and answer.read() == b""
    connection.close()


def test_a_body_shorter_than_its_length_frees_the_thread(server, monkeypatch):
    monkeypatch.setattr(ReviewHandler, "timeout", 1)   # 30 s in use; a short wait here
    status, answer = request(server, "POST", "/api/decisions", b'{"candidate_id"',
                             headers={"Content-Length": "400"})
    assert status == 408 and "stopped short" in answer["error"]
    assert ReviewHandler.timeout == 1 and reviews(server) == b""


def test_the_servers_own_failures_answer_500_in_json(server, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(server, "record", broken)
    monkeypatch.setattr(server, "frame_png", broken)
    status, answer = request(server, "POST", "/api/decisions", {"candidate_id": "c00001", "decision": "skip"})
    assert status == 500 and "OSError: disk full" in answer["error"]
    status, answer = request(server, "GET", "/frame/c00001")
    assert status == 500 and "nothing was recorded" in answer["error"]
