"""Which weights mined a folder, read one way for every command that needs it (review stamps it on each decision
line as ``model_version``; release refuses a decision line stamped with another run's).

A mined folder's run fingerprint is ``run.json``'s ``fingerprint`` (what ``clipomaly mine`` writes), else
``summary.json``'s ``settings``; the weights are its :data:`WEIGHTS_KEYS`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

WEIGHTS_KEYS = ("backend", "model", "pretrained", "checkpoint", "random_weights")
"""The run fingerprint's entries that say which weights mined it (the checkpoint by the hash of its bytes)."""
FINGERPRINT_FILES = (("run.json", "fingerprint"), ("summary.json", "settings"))
"""Where a mined folder's run fingerprint is, in the order looked at: file name and key."""


def run_fingerprint(folder: Path) -> dict | None:
    """The run fingerprint of the mined ``folder`` (see the module docstring), or None when neither file holds one
    (or the file is not JSON)."""
    for name, key in FINGERPRINT_FILES:
        path = Path(folder) / name
        try:
            content = json.loads(path.read_text()) if path.is_file() else None
        except (ValueError, UnicodeDecodeError):
            content = None
        if isinstance(content, dict) and isinstance(content.get(key), dict) and content[key]:
            return content[key]
    return None


def weights_of_fingerprint(fingerprint: dict | None) -> dict:
    """The :data:`WEIGHTS_KEYS` entries of a run fingerprint (None where absent)."""
    return {key: (fingerprint or {}).get(key) for key in WEIGHTS_KEYS}


def model_version(fingerprint: dict | None) -> str:
    """``clipomaly-<12 hex>``: a short name of the weights a run fingerprint records; two runs mined with the same
    weights share it, whatever their other settings."""
    weights = json.dumps(weights_of_fingerprint(fingerprint), sort_keys=True)
    return "clipomaly-" + hashlib.sha256(weights.encode()).hexdigest()[:12]
