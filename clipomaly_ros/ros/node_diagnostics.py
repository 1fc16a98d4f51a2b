"""The node's ``/diagnostics``: one status per camera with its counters, rates and latencies, what the runtime
gave up on, and the checks that input topics exist and the inference thread lives; and the start-up lines on
the loaded weights."""

from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from sensor_msgs.msg import CompressedImage

from ..core.model.adaptation import describe_sidecar


class NodeDiagnostics:
    """The diagnostics side of :class:`~clipomaly_ros.ros.node.ClipomalyNode` (a mixin of it)."""

    def _publish_diagnostics(self) -> None:
        problem = self._check_worker()
        vocabulary = self.pipeline.vocabulary.current
        runtime_health = self.pipeline.runtime_health()
        runtime_health.update(getattr(self._decode, "health", dict)())
        common = {"known classes": len(vocabulary.known), "anomaly vocabulary": len(vocabulary.anomaly),
                  "dictionary names": len(vocabulary.dictionary), "device": self.device, "enabled": self.enabled,
                  "lifecycle state": "active" if self.active else "inactive", "release": self.release_id,
                  "inference thread restarts": self.worker_restarts, "transforms known": len(self.frame_tree),
                  "transforms left out": self.transforms_rejected,
                  "outputs off (message type not installed)": ", ".join(sorted(self._outputs_off)) or "none",
                  **runtime_health}
        statuses = []
        for name, camera in self.cameras.items():
            values = {**camera.report(), **common}
            problems = (values["bad inputs"], values["failed frames"])
            status = DiagnosticStatus(name=f"{self.get_fully_qualified_name()}: camera {name or 'image'}",
                                      hardware_id=self.device,
                                      values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
            last = self._last_reported.get(name, (0, 0))
            if problem is not None:
                status.level, status.message = DiagnosticStatus.ERROR, problem
            elif problems != last:
                status.level = DiagnosticStatus.WARN
                status.message = (f"{problems[0] - last[0]} bad inputs, {problems[1] - last[1]} failed frames since "
                                  "the last report")
            elif runtime_health:
                status.level = DiagnosticStatus.WARN
                status.message = "runtime: " + "; ".join(f"{key} {value}" for key, value in runtime_health.items())
            else:
                status.level = DiagnosticStatus.OK
                status.message = ("inactive (lifecycle): nothing is processed" if not self.active
                                  else "processing" if self.enabled else "paused")
            if camera.follower.no_3d_reason is not None and problem is None:
                status.message += f"; no 3D output: {camera.follower.no_3d_reason}"
            self._last_reported[name] = problems
            statuses.append(status)
        array = DiagnosticArray(status=statuses)
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_publisher.publish(array)

    def _check_input_topics(self) -> None:
        """Every 2 s: match the input's reliability to the publishers again (``input_reliability: auto``), and
        warn once per topic when an input topic exists with another message type (a compressed stream on the raw
        topic, say): then no data would ever arrive."""
        expected = "sensor_msgs/msg/CompressedImage" if self.input_type is CompressedImage else "sensor_msgs/msg/Image"
        types = dict(self.get_topic_names_and_types())
        for image_input in list(self.image_inputs.values()):
            topic = image_input.topic
            image_input.rematch()  # publishers come and go; a best-effort one gives a reliable reader no event
            found = [kind for kind in types.get(topic, []) if kind != expected]
            if found and topic not in self._warned_topics:
                self._warned_topics.add(topic)
                self.get_logger().warning(
                    f"{topic} carries {', '.join(found)}, but this node reads {expected} there: check "
                    "input_transport (compressed input reads <image>/compressed) and the image_topic remapping")


def log_loaded_weights(logger, config, pipeline) -> None:
    """Say at start what the loaded weights are: how the RAM++ file's layout was read (the release's unused keys)
    and a fine-tuned checkpoint's record, warning when it was trained with another dense method."""
    if pipeline.tagger is not None:
        logger.info(f"tagger {config.tagger_weights}: {'; '.join(pipeline.tagger.model.load_notes)}")
    if pipeline.finetuned is not None:
        logger.info(f"checkpoint {config.checkpoint}: {describe_sidecar(pipeline.finetuned)}")
        trained = pipeline.finetuned.get("dense_method")
        if trained != config.dense_method:
            logger.warning(f"the checkpoint was fine-tuned with dense_method {trained} but this node runs "
                           f"{config.dense_method}: its accuracy is the trained method's only with it")
