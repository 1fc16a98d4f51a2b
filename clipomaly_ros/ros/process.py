"""The node's process (``clipomaly_node``): signals and exit status.

Exits 0 when ROS shuts the node down, 1 when it cannot start, and 128 + the signal's number when a signal stops
it: 130 after SIGINT, 143 after SIGTERM, as ``ros2 launch`` and a shell expect.

The handlers are installed before torch and rclpy are imported, so a signal at any moment of the start is
caught. rclpy's own handlers stay off. They would raise KeyboardInterrupt wherever the main thread is after the
first signal, and under ``ros2 launch`` the node gets SIGINT twice: once from the terminal, once from launch. The
second one would land in the teardown. Here a signal while the node starts raises
:class:`~clipomaly_ros.core.interrupt.StopRequested`, which is caught. After that, a signal only sets a flag,
which the spin loop reads within 0.1 s. The handler prints nothing: the node's last log line says why it stopped.

The teardown is bounded. The process ends with ``os._exit`` once the node, its executor and its ROS context are
destroyed: Python's own finalization (torch, DDS libraries, every module) took 4.4 s after the last log line on
a loaded 2-core machine, longer than ``ros2 launch`` waits before it escalates, and a second signal cannot cut
it short. And :data:`TEARDOWN_LIMIT_S` after the first signal the process ends with its exit status wherever the
teardown is (a join, a DDS call that does not return), or the start-up, should a signal have been lost in it.
The deadline's thread needs the interpreter: native code that holds it (a library loaded while torch is imported
on a loaded machine) delays it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from ..core.interrupt import GracefulStop, StopRequested

TEARDOWN_LIMIT_S = 4.0
"""Seconds from the first signal to the end of the process at the latest: under ``ros2 launch``'s 5 s from its
SIGINT to its SIGTERM (which would not change the exit status) and far under its SIGKILL 5 s after that."""


class TeardownDeadline:
    """Ends the process with the stop's exit status :data:`TEARDOWN_LIMIT_S` after the first signal, saying why
    when the node has not said it yet. The thread that waits is started before any signal can come: one started
    inside a signal handler could wait for a lock of ``threading`` that the interrupted main thread holds."""

    def __init__(self, limit_s: float = TEARDOWN_LIMIT_S):
        self.limit_s = limit_s
        self._armed = threading.Event()
        self._stop: GracefulStop | None = None

    def watch(self, stop: GracefulStop) -> None:
        self._stop = stop
        threading.Thread(target=self._watch, name="clipomaly-teardown-deadline", daemon=True).start()

    def arm(self, signal_number: int) -> None:
        """Called by the signal handler, once, with the first signal's number."""
        self._armed.set()

    def _watch(self) -> None:
        self._armed.wait()
        time.sleep(self.limit_s)
        stop = self._stop
        why = "" if stop.reported else f"stopping: {stop.signal_name} received; "
        print(f"clipomaly_node: {why}the teardown did not end within {self.limit_s:g} s of the signal; exiting "
              f"with {stop.exit_code} now", file=sys.stderr, flush=True)
        end_process(stop.exit_code)


def main(args=None) -> int:
    deadline = TeardownDeadline()
    stop = GracefulStop(announce=None, escalate=False, on_stop=deadline.arm)
    deadline.watch(stop)
    stop.install()
    stop.raising = True
    try:
        from .node import spin_until_stopped  # torch, rclpy and the model code: seconds to import

        code = spin_until_stopped(stop, args)
    except StopRequested:  # before the node existed: nothing to tear down
        print(f"clipomaly_node: stopping: {stop.signal_name} received while starting", file=sys.stderr, flush=True)
        stop.reported = True
        code = stop.exit_code
    finally:
        stop.raising = False
        # a signal from here on (launch's second SIGINT, its SIGTERM) changes nothing: the process ends now
        for number in GracefulStop.SIGNALS:
            signal.signal(number, signal.SIG_IGN)
    end_process(code)
    return code  # not reached


def end_process(code: int) -> None:
    """End the process with ``code`` at once, without Python's finalization: everything that needs closing is
    closed (the node, its executor and its ROS context are destroyed, the log is flushed). The finalization took
    seconds (see the module's docstring); and an inference thread still in a frame or a warm-up that outlived its
    join time-out would be stopped inside torch's native code, where the C++ runtime aborts the process
    ("terminate called without an active exception", exit -6) instead of ending it with ``code``."""
    running = [thread.name for thread in threading.enumerate()
               if thread is not threading.main_thread() and thread.is_alive()
               and thread.name != "clipomaly-teardown-deadline"]
    if running:
        print(f"clipomaly_node: exiting with {code} while {', '.join(running)} still runs", file=sys.stderr,
              flush=True)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said there
            pass
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
