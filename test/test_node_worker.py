"""The node's inference thread, in this process: it warms the runtime up on itself before serving (compiled CUDA
graphs are per thread), and one that outlives its join time-out is reported and blocks a second one."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) not installed: run scripts/setup_ros.sh")
pytest.importorskip("lifecycle_msgs.srv", reason="lifecycle_msgs not installed: run scripts/setup_ros.sh")

from lifecycle_msgs.msg import Transition  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from test_lifecycle import Probe  # noqa: E402
from test_ros_node import wait_for  # noqa: E402

from helpers import toy_frames  # noqa: E402


def image_msg(image: np.ndarray, stamp_s: int) -> Image:
    msg = Image(height=image.shape[0], width=image.shape[1], encoding="rgb8", step=image.shape[1] * 3,
                data=image.tobytes())
    msg.header.stamp.sec = stamp_s
    msg.header.frame_id = "camera"
    return msg


TOY = (Parameter("backend", value="toy"), Parameter("inference_size", value=120),
       Parameter("anomaly_vocabulary", value=["tire"]))


@contextlib.contextmanager
def managed_node(namespace: str, *parameters: Parameter):
    """A managed node in this process under ``namespace``, spun by a probe of its own: ``(probe, node, name)``,
    torn down after."""
    from clipomaly_ros.ros.node import ClipomalyNode

    probe = Probe(f"clipomaly_worker_probe{namespace.replace('/', '_')}")
    node = ClipomalyNode(context=probe.context, namespace=namespace,
                         parameter_overrides=[Parameter("managed", value=True), *parameters])
    probe.executor.add_node(node)
    try:
        yield probe, node, f"{namespace}/clipomaly"
    finally:
        probe.executor.remove_node(node)
        node.destroy_node()
        probe.close()


def counters(node):
    return node.cameras[""].counters


def test_runtime_compile_warms_up_and_serves_on_the_inference_thread(tiny_model_name):
    """torch.compile (inductor on the CPU) through the node's own worker: warm-up and every frame on one thread,
    not the executor's, and no batch falls back to eager."""
    with managed_node("/wcompile", Parameter("model", value=tiny_model_name), Parameter("random_weights", value=True),
                      Parameter("runtime", value="compile"), Parameter("inference_size", value=128),
                      Parameter("max_regions", value=2),
                      Parameter("anomaly_vocabulary", value=["tire"])) as (probe, node, name):
        assert probe.change(name, Transition.TRANSITION_CONFIGURE)
        assert "torch.compile" in node.pipeline.backend.runtime.description
        assert node.warm_up_thread is not None and node.warm_up_thread != threading.get_ident()
        assert node.warm_up_thread == node.worker.ident  # not the executor's thread that ran configure
        assert probe.change(name, Transition.TRANSITION_ACTIVATE)
        for second, (image, _, _) in enumerate(toy_frames(2, 120, 160), start=1):
            before = counters(node).processed
            node._on_image(node.cameras[""], image_msg(image, second))
            assert wait_for(lambda: counters(node).processed > before, timeout=300), counters(node)
        assert node.serving_thread == node.warm_up_thread
        assert counters(node).failed == 0 and node.pipeline.runtime_health() == {}


def test_an_inference_thread_that_outlives_its_join_time_out_is_reported_and_blocks_a_second(monkeypatch):
    release, entered = threading.Event(), threading.Event()
    with managed_node("/wlinger", *TOY) as (probe, node, name), contextlib.ExitStack() as cleanup:
        cleanup.callback(release.set)  # a failing assertion must not leave the stuck frame waiting
        assert probe.change(name, Transition.TRANSITION_CONFIGURE)
        assert probe.change(name, Transition.TRANSITION_ACTIVATE)
        node.worker_join_timeout = 0.5
        pipeline, segment_batch = node.pipeline, node.pipeline.segment_batch

        def stuck(images, cameras=None):
            entered.set()
            release.wait(60)  # a frame that hangs in the model (a driver stall)
            return segment_batch(images, cameras)

        monkeypatch.setattr(pipeline, "segment_batch", stuck)
        camera = node.cameras[""]  # cleanup forgets the cameras: their counters are read from here on
        published = dict(camera.counters.published)
        image = toy_frames(1, 120, 160)[0][0]
        node._on_image(node.cameras[""], image_msg(image, 1))
        assert entered.wait(30)
        stuck_worker = node.worker

        assert probe.change(name, Transition.TRANSITION_DEACTIVATE)  # waits 0.5 s for the frame, then gives up
        assert camera.counters.dropped_at_shutdown == 1
        assert probe.change(name, Transition.TRANSITION_CLEANUP)
        assert stuck_worker.is_alive() and node._lingering_worker is stuck_worker
        assert camera.counters.dropped_at_shutdown == 1  # counted once, though both transitions gave up on it

        assert not probe.change(name, Transition.TRANSITION_CONFIGURE)  # no second model beside the stuck one
        assert "still running a frame" in node._failure and node.pipeline is None
        assert probe.state(name) == "unconfigured"

        release.set()
        stuck_worker.join(30)
        assert not stuck_worker.is_alive()
        assert dict(camera.counters.published) == published  # the late frame's outputs were never published
        assert probe.change(name, Transition.TRANSITION_CONFIGURE)
        assert node.worker is not stuck_worker and node.worker.is_alive()


def test_a_runtime_that_fell_back_is_a_warning_in_diagnostics(monkeypatch):
    from diagnostic_msgs.msg import DiagnosticStatus

    sent = []
    with managed_node("/whealth", *TOY) as (probe, node, name):
        assert probe.change(name, Transition.TRANSITION_CONFIGURE)
        monkeypatch.setattr(node.diagnostics_publisher, "publish", sent.append)
        node._publish_diagnostics()
        assert sent[-1].status[0].level == DiagnosticStatus.OK
        monkeypatch.setattr(node.pipeline, "runtime_health", lambda: {
            "batches run eager (recompile limit hit)": 3, "last recompile": "(5, 3, 224, 224): limit 32"})
        node._publish_diagnostics()
        status = sent[-1].status[0]
        values = {value.key: value.value for value in status.values}
        assert status.level == DiagnosticStatus.WARN and status.message.startswith("runtime: batches run eager")
        assert values["batches run eager (recompile limit hit)"] == "3"


def test_a_frame_decoded_on_the_device_is_copied_to_the_host_once(monkeypatch):
    """As nvJPEG hands the node a tensor: the pipeline's host copy is the one the outputs (overlay) read."""
    import torch

    from clipomaly_ros.core.method import pipeline as pipeline_module
    from clipomaly_ros.ros import inference as inference_module

    copies = []

    def counting_on_host(image):
        if isinstance(image, torch.Tensor):
            copies.append(tuple(image.shape))
            return image.cpu().numpy().copy()  # a real copy, as from a device
        return image

    monkeypatch.setattr(pipeline_module, "on_host", counting_on_host)
    monkeypatch.setattr(inference_module, "on_host", counting_on_host)
    with managed_node("/wcopy", *TOY, Parameter("publish_overlay", value=True)) as (probe, node, name):
        assert probe.change(name, Transition.TRANSITION_CONFIGURE)
        image = toy_frames(1, 120, 160)[0][0]
        node._decode = lambda msg, max_pixels: torch.from_numpy(image.copy())  # a frame decoded on the device
        assert probe.change(name, Transition.TRANSITION_ACTIVATE)
        camera = node.cameras[""]
        overlays = []
        probe.node.create_subscription(Image, "/wcopy/overlay", overlays.append, 10)
        assert wait_for(lambda: camera.publishers["overlay"].get_subscription_count() > 0, timeout=30)
        node._on_image(camera, image_msg(image, 1))
        assert wait_for(lambda: camera.counters.processed == 1, timeout=60), camera.counters
        assert camera.counters.published["overlay"] == 1
        assert copies == [(120, 160, 3)]
