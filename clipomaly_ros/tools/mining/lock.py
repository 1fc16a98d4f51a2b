"""One ``clipomaly mine`` per OUT_DIR: a kernel lock (``fcntl.flock``) on ``OUT_DIR/.mine.lock`` held for the whole
run. The kernel releases it when the process ends, however it ends, so a killed run never blocks the next one;
the file only says who holds it (pid, host, start time), for the refusal."""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK_FILE = ".mine.lock"


class OutDirBusy(RuntimeError):
    """Another run holds OUT_DIR; the message names it."""


@contextmanager
def hold_out_dir(out_dir: Path) -> Iterator[str]:
    """``with hold_out_dir(out_dir) as run_id:`` OUT_DIR locked for this run, ``run_id`` unique to it (host, pid,
    start time: the name of its staging files). Raises :class:`OutDirBusy` at once when another run holds it."""
    path = Path(out_dir) / LOCK_FILE
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutDirBusy(f"{out_dir} is being mined by another run ({_holder(descriptor)}): wait for it to end, "
                             "or mine into another OUT_DIR") from None
        started = datetime.datetime.now(datetime.timezone.utc)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": started.isoformat(timespec="seconds")}
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(holder).encode(), 0)
        yield f"{holder['host']}-{holder['pid']}-{started:%Y%m%dT%H%M%S}"
    finally:
        os.close(descriptor)  # releases the lock


def _holder(descriptor: int) -> str:
    """Who holds the lock, in words, from what it wrote into the lock file."""
    try:
        holder = json.loads(os.pread(descriptor, 4096, 0).decode())
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (OSError, ValueError, KeyError):
        return "a run that has not yet said who it is"
