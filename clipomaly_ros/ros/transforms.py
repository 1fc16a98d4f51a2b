"""The camera's mounting from the robot's own transforms (``tf2_msgs/TFMessage`` on ``/tf_static`` and ``/tf``),
without tf2_ros: messages feed a :class:`~clipomaly_ros.core.scene.frames.FrameTree`, and :class:`MountingFinder` turns
the chain from ``base_frame`` to an image's frame into the ``camera_*`` settings, falling back to the parameters.
Plain Python: the node and replay feed it."""

from __future__ import annotations

from typing import Any

from ..core.config import ClipomalyConfig
from ..core.scene.frames import FrameTree, RigidTransform
from ..core.scene.geometry import OPTICAL_TO_BODY, CameraMounting, frame_convention


def add_transforms(tree: FrameTree, message: Any) -> list[str]:
    """Put every ``geometry_msgs/TransformStamped`` of a ``tf2_msgs/TFMessage`` into ``tree``; returns why each
    unusable one (no frame names, a zero quaternion, a frame its own parent) was left out."""
    problems = []
    for stamped in message.transforms:
        parent, child = str(stamped.header.frame_id), str(stamped.child_frame_id)
        t, q = stamped.transform.translation, stamped.transform.rotation
        try:
            if not parent.strip("/") or not child.strip("/"):
                raise ValueError("a frame name is empty")
            tree.set(parent, child, RigidTransform.from_quaternion((t.x, t.y, t.z), (q.x, q.y, q.z, q.w)))
        except ValueError as error:
            problems.append(f"transform '{parent}' -> '{child}': {error}")
    return problems


def recorded_static_transforms(reader, connections, log=lambda message: None) -> FrameTree:
    """A :class:`FrameTree` with every transform of a bag's ``/tf_static`` ``connections`` (static: valid over the
    whole recording, wherever it was recorded); each unusable one is passed to ``log``."""
    tree = FrameTree()
    for connection, _, raw in (reader.messages(connections=connections) if connections else ()):
        for problem in add_transforms(tree, reader.deserialize(raw, connection.msgtype)):
            log(f"left out a recorded {problem}")
    return tree


class MountingFinder:
    """Where a camera sits, for each frame: from ``tree`` when ``config.mounting_from_tf`` and the chain from
    ``config.base_frame`` to the image's ``frame_id`` is known, else the configuration's ``camera_*`` settings."""

    def __init__(self, tree: FrameTree, source_name: str = "/tf_static, /tf"):
        self.tree = tree
        self.source_name = source_name
        self.last_convention = "optical"
        """The convention of the last image frame found in the transforms (see
        :func:`~clipomaly_ros.core.scene.geometry.frame_convention`): anything but ``optical`` deserves a warning."""

    def find(self, frame_id: str, config: ClipomalyConfig) -> tuple[ClipomalyConfig, str]:
        """``(config, source)``: ``config`` with the mounting in force, and what it came from in words (for the
        log and /diagnostics)."""
        self.last_convention = "optical"
        if not config.mounting_from_tf:
            return config, "parameters (mounting_from_tf is false)"
        if not frame_id.strip("/"):
            return config, "parameters (the images have no header.frame_id to look up)"
        found = self.tree.lookup(config.base_frame, frame_id)
        if found is None:
            return config, (f"parameters (no transform from {config.base_frame} to '{frame_id.lstrip('/')}' on "
                            f"{self.source_name})")
        transform, frames = found
        chain = f"{self.source_name}: {' <- '.join(reversed(frames))}"
        rotation = transform.rotation
        convention = self.last_convention = frame_convention(rotation)
        frame = frame_id.lstrip("/")
        if convention == "unknown":
            return config, (f"parameters ('{frame}' is not an optical frame (z forward, x right, y down, REP-103) "
                            f"nor x-forward in {chain}: publish the images in the camera's optical frame)")
        if convention == "body":
            # x forward, z up: a camera_link. Its optical frame is the same point turned by REP-103's rotation
            rotation = rotation @ OPTICAL_TO_BODY
            chain += (f" ('{frame}' is x-forward, not an optical frame: REP-103's optical rotation applied; publish "
                      "the images in its _optical frame)")
        mounting = CameraMounting.from_optical_pose(config.base_frame, rotation, transform.translation,
                                                    config.ground_z)
        return config.replace(**mounting.as_settings()), chain
