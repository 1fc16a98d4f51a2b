"""Stopping a long command cleanly: Ctrl-C (or SIGTERM from a job scheduler or ``ros2 launch``) ends it between two
units of work.

A ``KeyboardInterrupt`` raised in the middle of writing a bag or a checkpoint leaves a file that cannot be read.
Inside :class:`GracefulStop` the first SIGINT or SIGTERM only sets ``requested``; the command's loop checks it
between frames (or steps), closes what it writes, says how far it got and exits ``exit_code`` (130 after SIGINT,
143 after SIGTERM), as a shell expects of a command ended by a signal. A second Ctrl-C raises
``KeyboardInterrupt`` at once, for when the user cannot wait, unless the command asked for ``escalate=False`` (the
node: ``ros2 launch`` and the terminal both send SIGINT to it, and its teardown must not be cut short by the second).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable

EXIT_INTERRUPTED = 130
"""The exit status of a command ended by Ctrl-C (128 + SIGINT)."""
EXIT_TERMINATED = 143
"""The exit status of a command ended by SIGTERM (128 + SIGTERM)."""


class StopRequested(BaseException):
    """Raised by a signal while :attr:`GracefulStop.raising` is on (a start-up that cannot check a flag between
    steps). A BaseException, as KeyboardInterrupt is, so that no ``except Exception`` on the way swallows it."""


EXCEPTIONS_DROPPED = {("<frozen importlib._bootstrap>", "cb")}
"""Code whose exceptions Python reports as "Exception ignored in" and drops: the weakref callback of the import
system's module locks (a signal during an import can land there); every ``__del__`` besides."""


def _drops_exceptions(frame) -> bool:
    """Whether an exception raised in ``frame`` would pass through code that drops it."""
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__del__" or (code.co_filename, code.co_name) in EXCEPTIONS_DROPPED:
            return True
        frame = frame.f_back
    return False


class GracefulStop:
    """``with GracefulStop() as stop: ... if stop.requested: break``. Outside the main thread (where signal
    handlers cannot be installed) it never requests a stop.

    ``announce`` is called once, with the first signal's name; None announces nothing (a signal handler of a node
    must not print: the node logs why it stopped). ``on_stop`` is called once, with the first signal's number,
    from the handler (the node starts its teardown deadline there). While ``raising`` is True, a signal raises
    :class:`StopRequested` where the main thread is."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: Callable[[str], None] | None = lambda text: print(text, file=sys.stderr),
                 escalate: bool = True, on_stop: Callable[[int], None] | None = None):
        self.signal_number: int | None = None
        self.signals_received = 0
        self.raising = False
        self.reported = False  # set by whoever says why the command stopped, so that it is said once
        self._announce = announce
        self._escalate = escalate
        self._on_stop = on_stop
        self._previous: dict[int, object] = {}
        self._wakeup: tuple[int, int] | None = None

    @property
    def requested(self) -> bool:
        return self.signal_number is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signal_number).name if self.signal_number is not None else ""

    @property
    def exit_code(self) -> int:
        """128 + the first signal's number (130 for SIGINT, 143 for SIGTERM); 0 when none came."""
        return 128 + self.signal_number if self.signal_number is not None else 0

    def _handle(self, number: int, frame) -> None:
        self.signals_received += 1
        if self.requested:
            if self._escalate and number == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signal_number = self._first_arrived(number)
        if self._announce is not None:
            self._announce(f"{self.signal_name}: stopping after the current item and closing the output "
                           "(Ctrl-C again to stop at once)")
        if self._on_stop is not None:
            self._on_stop(self.signal_number)
        if self.raising:
            self._raise_stop(frame)

    def _raise_stop(self, frame) -> None:
        """Raise :class:`StopRequested` where the main thread is, unless it is where Python drops exceptions (a
        ``__del__``, a weakref callback of the import system): there the stop would be lost, with a traceback
        printed. Then it is raised 10 ms later, by an alarm, wherever the main thread is by then."""
        if not self.raising:
            return
        if _drops_exceptions(frame):
            signal.signal(signal.SIGALRM, lambda number, later: self._raise_stop(later))
            signal.setitimer(signal.ITIMER_REAL, 0.01)
            return
        self.raising = False
        raise StopRequested(self.signal_name)

    def _first_arrived(self, number: int) -> int:
        """The signal that came first. Python runs the handlers of signals that are pending together in the order of
        their numbers, so SIGTERM then SIGINT would read as SIGINT; the wake-up pipe has them in arrival order."""
        if self._wakeup is None:
            return number
        try:
            arrived = os.read(self._wakeup[0], 256)
        except BlockingIOError:
            return number
        return arrived[0] if arrived and arrived[0] in self.SIGNALS else number

    def install(self) -> "GracefulStop":
        """Handle SIGINT and SIGTERM from now on (in the main thread only), for good: for a process whose end is
        also the end of the stop (the node), where ``with`` would hand the signals back too early."""
        if threading.current_thread() is threading.main_thread():
            for number in self.SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
            in_use = signal.set_wakeup_fd(-1)
            if in_use != -1:  # asyncio's, say: it stays, and the order of arrival is not known
                signal.set_wakeup_fd(in_use)
            else:  # ours tells the order of arrival
                self._wakeup = os.pipe()
                for end in self._wakeup:
                    os.set_blocking(end, False)
                signal.set_wakeup_fd(self._wakeup[1], warn_on_full_buffer=False)
        return self

    def __enter__(self) -> "GracefulStop":
        return self.install()

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()
        if self._wakeup is not None:
            signal.set_wakeup_fd(-1)
            for end in self._wakeup:
                os.close(end)
            self._wakeup = None
