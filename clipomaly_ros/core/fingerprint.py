"""What a result depends on, written down so that a later run can tell whether it would compute the same thing:
the settings that change it, with every file a setting names (weights, an exported graph, a dictionary) taken by
the hash of its bytes, not by its path (a checkpoint overwritten in place is other weights; one moved is not)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

from .config import CORE_SETTINGS, ClipomalyConfig

FILE_SETTINGS = ("checkpoint", "onnx_model", "naming_dictionary", "tagger_weights", "tagger_onnx_model")
"""Settings whose value is a file: the fingerprint holds the hash of its bytes."""

_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | Path) -> str:
    """``sha256:<hex>`` of the file's bytes (remembered per path, size and modification time, so that a big
    checkpoint is read once a process). A missing or unreadable file raises ``FileNotFoundError``/``OSError``."""
    path = Path(path).expanduser()
    status = path.stat()
    key = (str(path.resolve()), status.st_size, status.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 22), b""):
                digest.update(block)
        _DIGESTS[key] = f"sha256:{digest.hexdigest()}"
    return _DIGESTS[key]


def settings_fingerprint(config: ClipomalyConfig, leave_out: Iterable[str] = ()) -> dict[str, object]:
    """Every core setting but ``leave_out``, as plain JSON values, with the :data:`FILE_SETTINGS` that are set
    replaced by their :func:`file_digest`."""
    left_out = set(leave_out)
    values = config.as_dict()
    fingerprint = {}
    for name in CORE_SETTINGS:
        if name in left_out:
            continue
        value = values[name]
        if name in FILE_SETTINGS and value:
            try:
                value = file_digest(value)
            except OSError as error:
                raise FileNotFoundError(f"{name} {value}: {error.strerror or error}: give a file that exists") \
                    from None
        fingerprint[name] = value
    return fingerprint


def differences(earlier: dict, now: dict) -> list[str]:
    """The names whose values differ between two fingerprints (also those only one of them has)."""
    return sorted(name for name in set(earlier) | set(now) if earlier.get(name) != now.get(name))
