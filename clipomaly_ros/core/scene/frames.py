"""A tree of coordinate frames fed with rigid transforms, as tf2 keeps one, without ROS: enough to find where a
camera sits in the vehicle frame from the robot description that robot_state_publisher sends on ``/tf_static``.

Each frame has at most one parent (tf's rule); a transform ``parent <- child`` maps child coordinates into the
parent's. A lookup composes the chain through the frames' nearest common ancestor. Transforms are kept as the
newest received: a mounting is static, and a moving one (``/tf``) is taken as last sent, not interpolated to the
image's stamp.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation


@dataclass(frozen=True)
class RigidTransform:
    """``rotation`` (3, 3) and ``translation`` (3,) in metres: ``p_parent = rotation @ p_child + translation``."""

    rotation: np.ndarray
    translation: np.ndarray

    @classmethod
    def from_quaternion(cls, translation, quaternion_xyzw) -> "RigidTransform":
        """From a translation (m) and a quaternion (x, y, z, w), as ``geometry_msgs/Transform`` holds them; the
        quaternion is normalised. A zero quaternion raises ``ValueError``."""
        quaternion = np.asarray(quaternion_xyzw, dtype=np.float64)
        if not np.isfinite(quaternion).all() or np.linalg.norm(quaternion) < 1e-9:
            raise ValueError(f"quaternion {quaternion.tolist()} is not a rotation")
        translation = np.asarray(translation, dtype=np.float64)
        if not np.isfinite(translation).all():
            raise ValueError(f"translation {translation.tolist()} is not finite")
        return cls(Rotation.from_quat(quaternion).as_matrix(), translation)

    @classmethod
    def identity(cls) -> "RigidTransform":
        return cls(np.eye(3), np.zeros(3))

    def __matmul__(self, other: "RigidTransform") -> "RigidTransform":
        """``a @ b`` maps through ``b`` first, then ``a``."""
        return RigidTransform(self.rotation @ other.rotation, self.rotation @ other.translation + self.translation)

    def inverse(self) -> "RigidTransform":
        return RigidTransform(self.rotation.T, -self.rotation.T @ self.translation)


class FrameTree:
    """Frames and the transforms between them; thread-safe (a ROS callback feeds it while a worker looks up)."""

    def __init__(self):
        self._parents: dict[str, tuple[str, RigidTransform]] = {}
        self._lock = threading.Lock()

    def set(self, parent: str, child: str, transform: RigidTransform) -> None:
        """The transform from ``child`` into ``parent``; a frame's new parent replaces its old one."""
        parent, child = parent.lstrip("/"), child.lstrip("/")
        if parent == child:
            raise ValueError(f"a frame cannot be its own parent ('{child}')")
        with self._lock:
            self._parents[child] = (parent, transform)

    def __len__(self) -> int:
        return len(self._parents)

    def _ancestry(self, frame: str) -> list[tuple[str, RigidTransform]]:
        """``[(frame, identity), (its parent, frame -> parent), (grandparent, frame -> grandparent), ...]``."""
        chain, seen = [(frame, RigidTransform.identity())], {frame}
        while chain[-1][0] in self._parents:
            parent, step = self._parents[chain[-1][0]]
            if parent in seen:  # a loop: tf forbids it, a faulty publisher may still send one
                break
            seen.add(parent)
            chain.append((parent, step @ chain[-1][1]))
        return chain

    def lookup(self, target: str, source: str) -> tuple[RigidTransform, list[str]] | None:
        """The transform from ``source`` coordinates into ``target``'s and the frames the chain passes, or
        ``None`` when the two are not connected."""
        target, source = target.lstrip("/"), source.lstrip("/")
        with self._lock:
            up_from_source = self._ancestry(source)
            up_from_target = dict(self._ancestry(target))
            target_order = [frame for frame, _ in self._ancestry(target)]
        for position, (frame, source_to_frame) in enumerate(up_from_source):
            if frame in up_from_target:
                target_to_frame = up_from_target[frame]
                frames = [f for f, _ in up_from_source[:position + 1]]
                frames += list(reversed(target_order[:target_order.index(frame)]))
                return target_to_frame.inverse() @ source_to_frame, frames
        return None
