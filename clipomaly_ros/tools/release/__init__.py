"""``clipomaly release``: reviewed finds turned into a versioned release (parameter file, provenance, labelled
frames, changelog), and ``clipomaly release diff`` between two releases. See docs/fleet-loop.md."""

from .build import ReleaseOptions, build_release
from .inputs import ReleaseError

__all__ = ["ReleaseError", "ReleaseOptions", "build_release"]
