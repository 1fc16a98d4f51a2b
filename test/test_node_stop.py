"""One SIGINT ends the node, however it was started and whatever its teardown meets.

``ros2 run`` (Jazzy) starts the node as its child, in its own process group, and on Ctrl-C catches its own
KeyboardInterrupt and waits for the child, which got the same SIGINT from the terminal. By hand, with the real
tools on a loaded 2-core machine, the node logged its stop line and then spent 4.4 s in Python's finalization
(torch, DDS) before it exited; once it was still there 60 s later. These tests hold the teardown up on purpose:
after the stop line (in what the interpreter runs at exit) and inside it (a destroy that never returns), and check
that the node still ends with 130 or 143. No timing is asserted: a hang is what fails them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from clipomaly_ros.core.interrupt import GracefulStop

from test_colcon_install import read_until
from test_ros_node import ROS_ENV

ROS2RUN_LIKE_PARENT = """
import subprocess, sys
# as ros2run's run_executable does: the child shares the process group, a KeyboardInterrupt here is ignored and
# the parent waits until the child has ended on its own
process = subprocess.Popen(sys.argv[1:])
while process.returncode is None:
    try:
        process.communicate()
    except KeyboardInterrupt:
        pass
print("parent: the node exited with", process.returncode, flush=True)
sys.exit(process.returncode)
"""

NODE_WITH_A_SLOW_EXIT = """
import atexit, sys, time
# what the interpreter runs at exit is held up for two minutes, as the finalization of torch and the DDS libraries
# was held up for seconds (and once for good) on a loaded machine
atexit.register(time.sleep, 120.0)
from clipomaly_ros.ros.process import main
sys.exit(main())
"""

NODE_WITH_A_STUCK_DESTROY = """
import sys, time
from clipomaly_ros.ros import node
from clipomaly_ros.ros.process import main

destroy = node.ClipomalyNode.destroy_node

def stuck_destroy(self):
    print("DESTROY STUCK", flush=True)
    time.sleep(600.0)  # a join or a DDS call that does not return
    return destroy(self)

node.ClipomalyNode.destroy_node = stuck_destroy
sys.exit(main())
"""

NODE_ARGUMENTS = ["--ros-args", "-r", "__ns:=/itest_stop", "-p", "backend:=toy", "-p", "inference_size:=240"]


def start_in_own_session(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **ROS_ENV}, start_new_session=True)


def read_until_active(process: subprocess.Popen) -> str:
    output = read_until(process, "active: listening on", timeout=180)
    if "active: listening on" not in output:
        pytest.fail("the node did not become active: " + output[-3000:])
    return output


def finish(process: subprocess.Popen, timeout: float = 60.0) -> tuple[int | str, str]:
    """The exit status (or "hung" after ``timeout`` seconds, when the whole group is killed) and the rest of the
    output."""
    try:
        output, _ = process.communicate(timeout=timeout)
        return process.returncode, output
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return "hung", output
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # nothing of the group is left behind
        except ProcessLookupError:
            pass


def test_ctrl_c_through_a_ros2_run_like_parent_ends_the_node_with_130_though_its_exit_is_slow(tmp_path):
    """Ctrl-C reaches the whole process group: the parent ignores it and waits, the node stops. Before, the node
    ran the interpreter's exit after its stop line and the parent waited with it."""
    process = start_in_own_session([sys.executable, "-c", ROS2RUN_LIKE_PARENT,
                                    sys.executable, "-c", NODE_WITH_A_SLOW_EXIT, *NODE_ARGUMENTS])
    read_until_active(process)
    os.killpg(process.pid, signal.SIGINT)
    code, output = finish(process)
    assert code == 130, output
    assert "parent: the node exited with 130" in output, output
    assert output.count("stopping: SIGINT received") == 1, output
    assert "Traceback" not in output, output


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_a_teardown_that_does_not_return_still_ends_with_the_signals_status(number):
    """A destroy that never returns: the teardown deadline ends the process with 128 + the first signal's number and
    says why; a second signal meanwhile (launch's, after the terminal's) changes nothing."""
    process = start_in_own_session([sys.executable, "-c", NODE_WITH_A_STUCK_DESTROY, *NODE_ARGUMENTS])
    read_until_active(process)
    process.send_signal(number)
    while (line := process.stdout.readline()) and "DESTROY STUCK" not in line:
        pass
    process.send_signal(signal.SIGINT)
    code, output = finish(process)
    assert code == 128 + number, output
    assert f"the teardown did not end within 4 s of the signal; exiting with {128 + number}" in output, output
    assert "Traceback" not in output, output


def test_the_first_signal_is_passed_on_once_to_on_stop():
    seen = []
    with GracefulStop(None, escalate=False, on_stop=seen.append) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # the handlers run between two bytecodes of this thread
    assert seen == [signal.SIGTERM] and stop.exit_code == 143
