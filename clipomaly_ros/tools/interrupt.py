"""Stopping a long command cleanly: Ctrl-C (or SIGTERM from a job scheduler) ends it between two units of work.

A ``KeyboardInterrupt`` raised in the middle of writing a bag or a checkpoint leaves a file that cannot be read.
Inside :class:`GracefulStop` the first SIGINT or SIGTERM only sets ``requested``; the command's loop checks it
between frames (or steps), closes what it writes, says how far it got and exits 130, as a shell expects of a
command ended by Ctrl-C. A second Ctrl-C raises ``KeyboardInterrupt`` at once, for when the user cannot wait.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Callable

EXIT_INTERRUPTED = 130
"""The exit status of a command ended by Ctrl-C (128 + SIGINT)."""


class GracefulStop:
    """``with GracefulStop() as stop: ... if stop.requested: break``. Outside the main thread (where signal
    handlers cannot be installed) it never requests a stop."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: Callable[[str], None] = lambda text: print(text, file=sys.stderr)):
        self.requested = False
        self._announce = announce
        self._previous: dict[int, object] = {}

    def _handle(self, number: int, frame) -> None:
        if self.requested and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self._announce(f"{signal.Signals(number).name}: stopping after the current item and closing the output "
                       "(Ctrl-C again to stop at once)")

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for number in self.SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()
