"""What ``clipomaly review`` does, apart from its command line: start the server over a mined folder and say
where; list the reviewers' disagreements."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Callable

from . import decisions
from .index import load_index
from .server import ReviewServer


def reviewed_count(log: decisions.ReviewLog, candidate_ids) -> int:
    """Candidates whose latest decision is one (a skip is not)."""
    return sum(1 for candidate in candidate_ids if candidate in log.latest
               and log.latest[candidate]["decision"] != "skip")


def start(folder: Path, reviewer: str, host: str = "127.0.0.1", port: int = 8765, frame_reader=None,
          announce: Callable[[str], None] = print) -> ReviewServer:
    """A review server over ``folder``, bound and announced (its URL with the token, where the review stands);
    the caller runs ``serve_forever``."""
    index = load_index(folder)
    server = ReviewServer(index, reviewer, host=host, port=port, frame_reader=frame_reader)
    log = decisions.read_log(folder)
    done = reviewed_count(log, index.by_id)
    announce(f"reviewing {folder}: {len(index.rows):,} candidates, {done:,} reviewed, as {reviewer}")
    if log.problems():
        announce(log.problems())
    if not _loopback(host):
        announce(f"listening on {host}: anyone who can reach it and has the token below can record decisions")
    announce(f"open {server.url}")
    return server


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(folder: Path, reviewer: str, host: str = "127.0.0.1", port: int = 8765, frame_reader=None,
          announce: Callable[[str], None] = lambda line: print(line, flush=True)) -> int:
    """Run the review server until Ctrl-C; 0."""
    server = start(folder, reviewer, host, port, frame_reader, announce)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
