"""The review page's server: ``http.server``'s ThreadingHTTPServer over one mined folder, on 127.0.0.1 unless told
otherwise. Every request must carry the token printed at start (``?token=`` or the ``X-Review-Token`` header).

Routes (all GET but one): ``/`` the page; ``/api/candidates`` every candidate the page lists, best score first,
with the known classes and the names offered for renaming; ``/api/decisions`` the latest decision per candidate;
``/api/outline/<id>`` the mask's outline as polygons; ``/frame/<id>`` the full frame as PNG; ``/files/<path>`` a
file inside the mined folder (thumbnails); POST ``/api/decisions`` records one decision. A malformed request gets
a 4xx with a one-line message in JSON; nothing it sent reaches ``reviews.jsonl``.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from . import decisions, masks
from .index import MinedIndex, frame_key

MAX_BODY = 1 << 20
"""Largest request body accepted, in bytes (a decision with a corrected full-HD mask fits easily)."""
TOKEN_HEADER = "X-Review-Token"


class RequestError(Exception):
    """A request answered with a 4xx: ``status`` and a one-line ``message``."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class ReviewServer(ThreadingHTTPServer):
    """One mined folder served to the page; ``reviewer`` signs the decisions made through it."""

    daemon_threads = True

    def __init__(self, index: MinedIndex, reviewer: str, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None, frame_reader=None):
        self.index = index
        self.reviewer = reviewer
        self.token = token or secrets.token_urlsafe(18)
        self.frame_reader = frame_reader
        self.root = index.folder.resolve()
        self.page = resources.files(__package__).joinpath("static/review.html").read_bytes()
        self.catalogue = json.dumps({
            "candidates": [index.shown(row) for row in index.rows], "known_classes": list(index.known_classes),
            "names": list(index.names), "reviewer": reviewer, "model_version": index.model_version},
            separators=(",", ":")).encode()
        self.frame_lock = threading.Lock()
        super().__init__((host, port), ReviewHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/?token={self.token}"

    def record(self, body: dict) -> dict:
        """Check a decision the page sent and append it; the line written."""
        if not isinstance(body, dict):
            raise decisions.DecisionError("the body must be a JSON object with candidate_id and decision")
        unknown = set(body) - {"candidate_id", "decision", "name", "known_class", "seconds", "mask"}
        if unknown:
            raise decisions.DecisionError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))[:80]}")
        row = self.index.by_id.get(body.get("candidate_id")) if isinstance(body.get("candidate_id"), str) else None
        if row is None:
            raise decisions.DecisionError("candidate_id names no candidate of this index")
        name = body.get("name")
        if body.get("decision") == "accept":
            name = row["name"]
        if body.get("mask") is not None and masks.checked(body["mask"])["size"] != row["mask"]["size"]:
            raise decisions.DecisionError(f"the corrected mask must have the frame's size {row['mask']['size']}")
        line = decisions.make_decision(
            row["candidate_id"], body.get("decision"), reviewer=self.reviewer, name=name,
            known_class=body.get("known_class"), seconds=body.get("seconds"), mask=body.get("mask"),
            known_classes=self.index.known_classes, source="review page",
            model_version=self.index.model_version)
        decisions.append(self.index.folder, [line])
        return line

    def inside(self, relative: str) -> Path | None:
        """The file ``relative`` names if it lies inside the mined folder (after resolving links and ``..``)."""
        try:
            path = (self.root / relative).resolve()
        except (OSError, ValueError):
            return None
        return path if path.is_relative_to(self.root) and path.is_file() else None

    def frame_png(self, candidate_id: str) -> bytes | None:
        """The candidate's full frame as PNG: ``frames/<key>.png`` when extracted, else read from its bag (and kept
        there); None when neither is possible."""
        row = self.index.by_id.get(candidate_id)
        if row is None:
            return None
        path = self.root / "frames" / f"{frame_key(row)}.png"
        if path.is_file():
            return path.read_bytes()
        if self.frame_reader is None:
            return None
        with self.frame_lock:
            written = self.frame_reader(self.index, [row], self.root / "frames")
        return path.read_bytes() if written and path.is_file() else None


def outline(rle: dict) -> dict:
    """The outer and inner boundaries of a mask as polygons ``[[x0, y0, x1, y1, ...], ...]`` in pixels."""
    mask = masks.decode(rle).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    return {"size": rle["size"], "polygons": [c.reshape(-1).tolist() for c in contours]}


class ReviewHandler(BaseHTTPRequestHandler):
    server: ReviewServer
    server_version = "clipomaly-review"
    protocol_version = "HTTP/1.1"
    timeout = 30
    """Seconds a connection may stay silent (a body shorter than its Content-Length) before it is dropped, so no
    client holds a thread forever."""

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass  # a line per thumbnail would bury the start-up line; errors reach the page as JSON

    def do_GET(self):  # noqa: N802 - http.server's name
        self._answer(self._get)

    def do_POST(self):  # noqa: N802
        self._answer(self._post)

    def do_HEAD(self):  # noqa: N802
        self._answer(self._not_allowed)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD

    def _not_allowed(self, path: str):
        raise RequestError(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not served: GET pages and files, "
                                                          "POST /api/decisions")

    def _answer(self, route) -> None:
        try:
            parsed = urllib.parse.urlsplit(self.path)
            self._check_token(parsed.query)
            status, kind, body = route(urllib.parse.unquote(parsed.path))
        except Exception as error:  # noqa: BLE001 - whatever went wrong, the page gets one line in JSON
            if not isinstance(error, RequestError):
                error = RequestError(HTTPStatus.INTERNAL_SERVER_ERROR, f"the server failed on this request "
                                     f"({type(error).__name__}: {str(error)[:120]}); nothing was recorded")
            status, kind = error.status, "application/json"
            body = json.dumps({"error": error.message}).encode()
            self.close_connection = True  # a body it sent may be unread: the connection cannot be reused
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store" if kind == "application/json" else "private, max-age=3600")
        self.send_header("X-Content-Type-Options", "nosniff")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer has headers only
            self.wfile.write(body)

    def _check_token(self, query: str) -> None:
        given = self.headers.get(TOKEN_HEADER) or urllib.parse.parse_qs(query).get("token", [""])[0]
        if not hmac.compare_digest(given.encode(), self.server.token.encode()):
            raise RequestError(HTTPStatus.FORBIDDEN, "this request lacks the review token printed at start: open "
                                                     "the URL the server printed")

    def _get(self, path: str) -> tuple[int, str, bytes]:
        server = self.server
        if path in ("/", "/index.html"):
            return HTTPStatus.OK, "text/html; charset=utf-8", server.page
        if path == "/api/candidates":
            return HTTPStatus.OK, "application/json", server.catalogue
        if path == "/api/decisions":
            log = decisions.read_log(server.index.folder)
            return HTTPStatus.OK, "application/json", json.dumps(
                {"latest": log.latest, "problems": log.problems()}).encode()
        if path.startswith("/api/outline/"):
            row = server.index.by_id.get(path.removeprefix("/api/outline/"))
            if row is None:
                raise RequestError(HTTPStatus.NOT_FOUND, "no candidate with that id")
            return HTTPStatus.OK, "application/json", json.dumps(outline(row["mask"])).encode()
        if path.startswith("/frame/"):
            png = server.frame_png(path.removeprefix("/frame/"))
            if png is None:
                raise RequestError(HTTPStatus.NOT_FOUND, "no full frame for that id (run 'clipomaly frames')")
            return HTTPStatus.OK, "image/png", png
        if path.startswith("/files/"):
            found = server.inside(path.removeprefix("/files/"))
            if found is None:
                raise RequestError(HTTPStatus.NOT_FOUND, "no such file in the mined folder")
            kind = {".jpg": "image/jpeg", ".png": "image/png"}.get(found.suffix.lower(), "application/octet-stream")
            return HTTPStatus.OK, kind, found.read_bytes()
        raise RequestError(HTTPStatus.NOT_FOUND, f"no route {path[:80]!r}")

    def _post(self, path: str) -> tuple[int, str, bytes]:
        if path != "/api/decisions":
            raise RequestError(HTTPStatus.NOT_FOUND, f"no route {path[:80]!r} to post to")
        length = self.headers.get("Content-Length")
        if length is None or not (length.isascii() and length.isdigit()):  # "²" is a digit to isdigit() alone
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "a decision needs a Content-Length")
        if int(length) > MAX_BODY:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a decision is at most {MAX_BODY} bytes")
        try:
            raw = self.rfile.read(int(length))
        except TimeoutError:
            raise RequestError(HTTPStatus.REQUEST_TIMEOUT, f"the body stopped short of its Content-Length for "
                                                           f"{self.timeout} s") from None
        if len(raw) != int(length):
            raise RequestError(HTTPStatus.BAD_REQUEST, "the body is shorter than its Content-Length")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise RequestError(HTTPStatus.BAD_REQUEST, "the body is not JSON (or is nested too deep)") from None
        try:
            line = self.server.record(body)
        except (decisions.DecisionError, masks.MaskError) as error:
            raise RequestError(HTTPStatus.BAD_REQUEST, str(error)) from None
        return HTTPStatus.CREATED, "application/json", json.dumps(line).encode()
