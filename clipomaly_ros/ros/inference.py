"""The node's inference thread: it warms the runtime up on itself, then takes the newest frame of every camera,
runs them through the pipeline in one batch and publishes each camera's outputs. Every frame gets exactly one
outcome in its camera's counters (:meth:`InferenceLoop._settle`); a thread that outlives its join time-out is
reported and blocks a second one."""

from __future__ import annotations

import threading
import time
import traceback

import numpy as np

from ..core.config import ClipomalyConfig, ConfigError
from ..core.images import on_host
from .camera import CameraStream, LatestFrames, decode_frame
from .decoding import ImageConversionError

WARM_UP_SIZE = (720, 1280)
"""(height, width) of the frames a compiled runtime is warmed up for at start: the common vehicle camera; other
sizes compile once on their first frame."""


class InferenceLoop:
    """The inference side of :class:`~clipomaly_ros.ros.node.ClipomalyNode` (a mixin of it)."""

    def _warm_up(self, cameras: int, first: bool = True) -> None:
        """Compile or build the runtime for ``cameras`` and run one frame, on the calling thread: the inference
        thread, which serves the frames after (a CUDA graph recorded on one thread is not replayed on another,
        pytorch#123177). A restarted thread (``first`` false) warms the runtime up again, without the log."""
        started = time.perf_counter()
        self.warm_up_thread = threading.get_ident()
        if self.pipeline.config.runtime != "torch":
            if first:
                self.get_logger().info(f"warming up runtime {self.pipeline.config.runtime} for {cameras} camera(s) "
                                       f"at {WARM_UP_SIZE[1]}x{WARM_UP_SIZE[0]} ...")
            self.pipeline.warm_up(WARM_UP_SIZE, cameras)
        self.pipeline(np.full((480, 640, 3), 128, dtype=np.uint8))
        if not first:
            return
        vocabulary = self.pipeline.vocabulary.current
        self.get_logger().info(
            f"ready: {getattr(self.pipeline.backend, 'description', self.pipeline.backend.identity)}; "
            f"device {self.device}; vocabulary: {len(vocabulary.known)} known "
            f"classes, {len(vocabulary.anomaly)} anomaly names, {len(vocabulary.dictionary)} dictionary names "
            f"({len(vocabulary.excluded)} excluded as known); warm-up {1000 * (time.perf_counter() - started):.0f} ms")

    def _on_image(self, camera: CameraStream, msg) -> None:
        camera.frame_arrived(msg.header)
        if not self.enabled:
            camera.count("skipped_paused")
            return
        self.watchdog.frame_waiting()
        if self.frames.put(camera.name, (msg, time.perf_counter())):
            camera.count("dropped")

    def _start_worker(self, first: bool = False) -> threading.Thread:
        """The inference thread, warmed up on itself before it serves. At configure (``first``) this waits for the
        warm-up and raises what it raised. Refused while a thread that outlived its join time-out still runs a
        frame: two would share the device."""
        self._refuse_while_lingering()
        warmed, outcome = threading.Event(), {}
        worker = threading.Thread(target=self._work, args=(self.frames, first, warmed, outcome),
                                  name="clipomaly-inference", daemon=True)
        if first:
            # held before the thread starts: a signal that stops the start-up as soon as it runs leaves a thread in
            # the model, which shut_down must join (one left running in native code when Python exits aborts the
            # process). Held after start(), a signal between the two left it unjoined (seen in CI, under load).
            self.worker = worker
        worker.start()
        if first:
            warmed.wait()
            if "error" in outcome:
                raise outcome["error"]
        return worker

    def _refuse_while_lingering(self) -> None:
        lingering = self._lingering_worker
        if lingering is not None and lingering.is_alive():
            raise ConfigError("the previous inference thread is still running a frame (it did not stop within "
                              f"{self.worker_join_timeout:g} s at the last cleanup): no second model is loaded and "
                              "no second thread started on the device while it lives; configure again once it has "
                              "ended")
        self._lingering_worker = None

    def _work(self, frames: LatestFrames, first: bool, warmed: threading.Event, outcome: dict) -> None:
        try:
            try:
                self._warm_up(self.warm_up_cameras, first)
            except Exception as error:  # noqa: BLE001 - handed to the thread that configures
                outcome["error"] = error
                if not first and self._running:
                    self.get_logger().error(f"the restarted inference thread failed to warm up: "
                                            f"{type(error).__name__}: {error}")
                return
            finally:
                warmed.set()
            self._serve(frames)
        except Exception:
            if self._running:
                raise  # the watchdog sees the thread gone, says so and starts another
            # stopping: the node and its context may be gone under a frame that outlived the join time-out

    def _serve(self, frames: LatestFrames) -> None:
        while self._running:
            waiting = frames.take_all(timeout=0.2)
            if not waiting:
                continue
            self.serving_thread = threading.get_ident()
            try:
                with self._batch_lock:
                    if not self.active:  # deactivated while the frames waited
                        for name in waiting:
                            self.cameras[name].count("dropped_at_shutdown")
                        continue
                    with self._in_work_lock:
                        self._in_work = set(waiting)
                    self._work_on(waiting)
            except Exception as error:  # a bug here must cost one batch, never the thread
                for name in waiting:
                    if self._settle(name):
                        self.cameras[name].count("failed")
                if not self._running:
                    continue
                self.get_logger().error(f"processing failed: {type(error).__name__}: {error}",
                                        throttle_duration_sec=5.0)
            finally:
                for name in waiting:  # a frame that no branch above counted is dropped, never lost
                    if self._settle(name):
                        self.cameras[name].count("dropped_at_shutdown")
                self.watchdog.progress()  # every waiting frame was processed, rejected or failed

    def _work_on(self, waiting: dict) -> None:
        frames = []
        for name, (msg, received) in waiting.items():
            camera = self.cameras[name]
            try:
                frames.append((camera, msg, received, decode_frame(self._decode, msg, self.max_input_pixels)))
            except ImageConversionError as error:
                if self._settle(camera.name):
                    camera.count("bad_inputs")
                self.get_logger().warning(f"{camera.name or 'image'}: skipped a bad input image: {error}",
                                          throttle_duration_sec=5.0)
        if frames:
            self._process(frames)

    def _process(self, frames: list) -> None:
        """Segment the frames of several cameras in one batch and publish each camera's outputs. When the batch
        fails, each frame is tried alone, so one camera's bad frame cannot take another camera's output."""
        try:
            results = self.pipeline.segment_batch([image for _, _, _, image in frames],
                                                  cameras=[camera.name for camera, _, _, _ in frames])
        except Exception:  # noqa: BLE001 - isolated below, frame by frame
            if len(frames) > 1:
                for frame in frames:
                    self._process([frame])
                return
            camera = frames[0][0]
            if not self._running:  # stopping: the frame is dropped at shutdown, not failed
                self._drop_in_work()
                return
            if self._settle(camera.name):
                camera.count("failed")
            self.get_logger().error(f"{camera.name or 'image'}: segmentation failed: "
                                    f"{traceback.format_exc(limit=1).strip().splitlines()[-1]}",
                                    throttle_duration_sec=5.0)
            return
        if not self._running or not self.active:  # stopped or deactivated while the batch ran
            self._drop_in_work()
            return
        for (camera, msg, received, image), result in zip(frames, results):
            if camera.name not in self._in_work:  # dropped by a deactivate that timed out while it ran
                continue
            started = time.perf_counter()
            try:
                host_image = result.image if result.image is not None else on_host(image)  # the pipeline's copy
                camera.publish(msg.header, host_image, result, self._camera_config(camera, msg.header.frame_id),
                               self.publish_overlay)
            except Exception as error:  # the node must outlive any one frame
                if self._settle(camera.name):
                    camera.count("failed")
                self.get_logger().error(f"{camera.name or 'image'}: publishing failed: {type(error).__name__}: "
                                        f"{error}", throttle_duration_sec=5.0)
                continue
            done = time.perf_counter()
            if self._settle(camera.name):
                camera.record_processed(result.timings_ms["total"], 1000.0 * (done - started),
                                        1000.0 * (done - received))

    def _settle(self, camera: str) -> bool:
        """True the first time ``camera``'s frame in work gets its outcome: exactly one counter counts it."""
        with self._in_work_lock:
            if camera not in self._in_work:
                return False
            self._in_work.discard(camera)
            return True

    def _drop_in_work(self) -> None:
        """Count every frame in work that has no outcome yet as dropped at shutdown."""
        with self._in_work_lock:
            names, self._in_work = self._in_work, set()
        for name in names:
            self.cameras[name].count("dropped_at_shutdown")

    def _camera_config(self, camera: CameraStream, frame_id: str) -> ClipomalyConfig:
        """The settings for one camera's frame: its own mounting parameters over the node's, then the mounting
        from the robot's transforms when known (:class:`MountingFinder`); a change of source is logged."""
        config = self.pipeline.config
        mounting = self.mountings.get(camera.name)
        config, source = self.mounting_finder.find(frame_id, config.replace(**mounting) if mounting else config)
        if source != camera.mounting_source:
            camera.mounting_source = source
            log = self.get_logger().info if self.mounting_finder.last_convention == "optical" \
                else self.get_logger().warning
            log(f"{camera.name or 'image'}: camera mounting from {source}")
        return config

    def _check_worker(self) -> str | None:
        """The watchdog's verdict: None when all is well, else why /diagnostics must say ERROR."""
        if self._running and not self.worker.is_alive():
            self.worker_restarts += 1
            self.get_logger().error("the inference thread ended; restarting it")
            self.worker = self._start_worker()
            self.watchdog.progress()
            return "the inference thread had ended and was restarted"
        stalled = self.watchdog.stalled_for()
        if stalled is not None:
            message = (f"frames are waiting but none was processed for {stalled:.1f} s (stall_timeout "
                       f"{self.stall_timeout:g} s)")
            self.get_logger().error(message, throttle_duration_sec=5.0)
            return message
        return None
