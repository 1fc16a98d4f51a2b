"""The node's process (``clipomaly_node``): signals and exit status.

Exits 0 when ROS shuts the node down, 1 when it cannot start, and 128 + the signal's number when a signal stops
it: 130 after SIGINT, 143 after SIGTERM, as ``ros2 launch`` and a shell expect.

The handlers are installed before torch and rclpy are imported, so a signal at any moment of the start is
caught. rclpy's own handlers stay off. They would raise KeyboardInterrupt wherever the main thread is after the
first signal, and under ``ros2 launch`` the node gets SIGINT twice: once from the terminal, once from launch. The
second one would land in the teardown. Here a signal while the node starts raises
:class:`~clipomaly_ros.core.interrupt.StopRequested`, which is caught. After that, a signal only sets a flag,
which the spin loop reads within 0.1 s. The handler prints nothing: the node's last log line says why it stopped.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from ..core.interrupt import GracefulStop, StopRequested


def main(args=None) -> int:
    stop = GracefulStop(announce=None, escalate=False).install()
    stop.raising = True
    try:
        from .node import spin_until_stopped  # torch, rclpy and the model code: seconds to import

        code = spin_until_stopped(stop, args)
    except StopRequested:  # before the node existed: nothing to tear down
        print(f"clipomaly_node: stopping: {stop.signal_name} received while starting", file=sys.stderr, flush=True)
        code = stop.exit_code
    finally:
        stop.raising = False
        # the process ends now. Python's finalization puts the default action back on a signal it handles (death
        # by the signal, exit -2) for one that comes while torch and DDS are torn down, as launch's second SIGINT
        # can; an ignored one it leaves alone
        for number in GracefulStop.SIGNALS:
            signal.signal(number, signal.SIG_IGN)
    exit_before_finalization_if_threads_run(code)
    return code


def exit_before_finalization_if_threads_run(code: int) -> None:
    """End the process with ``code`` at once when a thread other than the main one still runs (an inference
    thread in a frame or a warm-up that outlived its join time-out). Python's finalization would stop it wherever
    it is, inside torch's native code, and the C++ runtime aborts the process there ("terminate called without an
    active exception", exit -6) instead of ending it with ``code``. Everything that needs closing is closed."""
    running = [thread.name for thread in threading.enumerate()
               if thread is not threading.main_thread() and thread.is_alive()]
    if not running:
        return
    print(f"clipomaly_node: exiting with {code} while {', '.join(running)} still runs", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
