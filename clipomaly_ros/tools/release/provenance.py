"""Where a release came from, written down: its id (a content hash of what went in), the content hashes of its
inputs, the parameter file with its provenance in comments, and the DVC-style ``.dvc`` file of its outputs.

Nothing hashed holds a time or a machine path, so the same inputs give the same id and identical files.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import yaml

from ...core.config import CORE_SETTINGS, NODE_NAME, SETTINGS_BY_NAME, ClipomalyConfig
from ...core.fingerprint import file_digest, settings_fingerprint
from ...core.parameter_files import nest_parameters
from ..run_identity import weights_of_fingerprint
from .inputs import MinedRun, tree_hash

PARAMETER_FILE, RELEASE_FILE, CHANGELOG, DVC_FILE = "clipomaly.yaml", "release.json", "CHANGELOG.md", "release.dvc"
MACHINE_SETTINGS = ("device", "cache_dir")
"""Settings of the machine a release was built on, not of the release: written only when the starting file set
them."""
ALWAYS_WRITTEN = ("anomaly_vocabulary", "uncertainty_threshold", "min_region_area", "cleanup_radius", "crop_weight")
"""Settings the release's parameter file always states, default or not: what a release changes."""


def package_version() -> str:
    from ... import __version__

    return __version__


def weights_of(config: ClipomalyConfig) -> dict:
    """Which weights ``config`` runs, as a mining run's fingerprint records them (the checkpoint by its bytes)."""
    return weights_of_fingerprint(settings_fingerprint(config))


def dictionary_digest(config: ClipomalyConfig) -> str:
    """``sha256:<hex>`` of the naming dictionary ``config`` uses (the shipped one when none is set)."""
    if config.naming_dictionary:
        return file_digest(config.naming_dictionary)
    text = resources.files("clipomaly_ros").joinpath("data/naming_dictionary.txt").read_bytes()
    return "sha256:" + hashlib.sha256(text).hexdigest()


def input_hashes(config: ClipomalyConfig, runs: list[MinedRun]) -> dict:
    """The content hashes of everything a release reads: each mined index and reviews file, the checkpoint, the
    tagger weights and the dictionary."""
    return {
        "mined": [{"folder": run.folder.name, "index": run.index_hash, "reviews": run.reviews_hash,
                   "weights": run.weights_id} for run in runs],
        "checkpoint": file_digest(config.checkpoint) if config.checkpoint else None,
        "tagger_weights": file_digest(config.tagger_weights) if config.tagger_weights else None,
        "dictionary": dictionary_digest(config),
    }


RELEASE_RECIPE = 2
"""Raised whenever the same inputs would give a different release (2: calibration and the held-out comparison use
the searched drives' names only), so that two builds that differ never share an id within a package version."""


def release_id(hashes: dict, config: ClipomalyConfig, parent_id: str | None, options: dict) -> str:
    """``rel-<16 hex>``: the hash of the inputs' hashes, the starting settings (files by their bytes), the parent,
    the options, the package version and :data:`RELEASE_RECIPE`; nothing else."""
    content = {"inputs": {**hashes, "mined": sorted((m["index"], m["reviews"]) for m in hashes["mined"])},
               "settings": settings_fingerprint(config, ("device", "cache_dir")), "parent": parent_id,
               "options": options, "version": package_version(), "recipe": RELEASE_RECIPE}
    return "rel-" + hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def node_parameters(path: Path | None) -> dict:
    """The parameters of the starting file's ``clipomaly`` section that are no core setting (``cameras``, each
    camera's ``<cam>.camera_*`` mounting, ``input_transport``, ROS's own ...), and the :data:`MACHINE_SETTINGS` it
    sets, by their dotted names; a release carries them as they are. Empty without a file."""
    from ...core.config import read_parameter_file

    if path is None:
        return {}
    return {name: value for name, value in sorted(read_parameter_file(path).items())
            if name not in CORE_SETTINGS and name != "release_id" or name in MACHINE_SETTINGS}


def parameter_values(config: ClipomalyConfig, identity: str, carried: dict | None = None) -> dict:
    """The ``ros__parameters`` of a release: the starting file's own node parameters (``carried``, dotted names,
    see :func:`node_parameters`), every core setting that differs from its default, the ones a release changes
    (:data:`ALWAYS_WRITTEN`), and ``release_id``."""
    values = nest_parameters(carried or {})
    for name in CORE_SETTINGS:
        value = getattr(config, name)
        if name in MACHINE_SETTINGS:
            continue  # only as the starting file set them (in ``carried``)
        if name in ALWAYS_WRITTEN or value != SETTINGS_BY_NAME[name].default:
            values[name] = list(value) if isinstance(value, tuple) else value
    values["release_id"] = identity
    return values


def parameter_file(config: ClipomalyConfig, identity: str, provenance: dict, carried: dict | None = None) -> str:
    """The release's parameter file: ``/**/clipomaly`` with :func:`parameter_values`, its provenance as YAML in
    comments above it (rcl and :func:`~clipomaly_ros.core.config.read_parameter_file` read only the section)."""
    header = [f"# Release {identity} of clipomaly_ros {package_version()}, made by clipomaly release.",
              "# Use: clipomaly_node --ros-args --params-file THIS_FILE; --config THIS_FILE for replay and evaluate.",
              "# The node logs release_id at start and reports it in /diagnostics. Everything else is in release.json.",
              "# provenance:"]
    comment = yaml.safe_dump(provenance, sort_keys=True, default_flow_style=False, width=1000)
    body = yaml.safe_dump({f"/**/{NODE_NAME}": {"ros__parameters": parameter_values(config, identity, carried)}},
                          sort_keys=False, default_flow_style=False, width=1000)
    return "\n".join(header + [f"#   {line}" for line in comment.splitlines()]) + "\n" + body


def dvc_file(folder: Path, skip: tuple[str, ...] = (DVC_FILE,)) -> str:
    """A DVC ``.dvc`` file listing every file in ``folder`` (paths relative to it) with its md5 and size, in DVC's
    own format (``outs: - md5: ..., size: ..., hash: md5, path: ...``)."""
    outs = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative in skip:
            continue
        outs.append({"md5": tree_hash(path).split(":", 1)[1], "size": path.stat().st_size, "hash": "md5",
                     "path": relative})
    return yaml.safe_dump({"outs": outs}, sort_keys=False, default_flow_style=False)
