"""ROS 2 parameter files read as rcl reads them, without ROS: which sections apply to a node (its full name,
``*`` and ``/**`` wildcards, a plain key for the root namespace), merged in file order, with nested mappings
joined by dots. What the parameters mean is the settings table's business (:mod:`.config`); this module knows
only the file's rules."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import yaml


class ParameterFileError(ValueError):
    """A parameter file rcl would not read: missing, not YAML, not a mapping of sections, or a section without
    ``ros__parameters``."""


ROS_STANDARD_PARAMETERS = ("use_sim_time", "start_type_description_service")
"""Parameters every ROS 2 node has; a parameter file (``ros2 param dump`` writes them) may hold them."""


def is_ros_standard_parameter(name: str) -> bool:
    """Whether ``name`` is a parameter every ROS 2 node has (:data:`ROS_STANDARD_PARAMETERS`, ``qos_overrides.*``)."""
    return name in ROS_STANDARD_PARAMETERS or name.startswith("qos_overrides.")


def node_fqn(node_name: str, namespace: str = "/") -> str:
    """``/front/clipomaly`` for node ``clipomaly`` in namespace ``front`` (or ``/front``)."""
    namespace = "/" + namespace.strip("/") if namespace.strip("/") else ""
    return f"{namespace}/{node_name}"


def _key_pattern(key: str) -> re.Pattern:
    """A parameter-file key as rcl reads it: ``*`` is one name token, ``/**`` any number of them."""
    key = key if key.startswith("/") else "/" + key
    pattern = re.escape(key).replace(r"/\*\*", "(/[^/]+)*").replace(r"\*", "[^/]+")
    return re.compile(pattern + "$")


def section_matches(key: str, fqn: str) -> bool:
    """Whether the parameter-file key ``key`` applies to the node ``fqn`` as rcl decides it: a key without a
    leading slash is taken from the root (``clipomaly`` is ``/clipomaly``), ``*`` is one name token and ``/**``
    any number of them."""
    return bool(_key_pattern(key).match(fqn))


def flatten_parameters(parameters: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested parameter mappings joined with dots, as rcl reads a parameter file: ``{front: {camera_x: 1}}`` ->
    ``{"front.camera_x": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in parameters.items():
        if isinstance(value, Mapping):
            flat.update(flatten_parameters(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def nest_parameters(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`flatten_parameters`, as a parameter file writes them: ``{"front.camera_x": 1}`` ->
    ``{"front": {"camera_x": 1}}``."""
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split(".")
        branch = tree
        for part in parents:
            branch = branch.setdefault(part, {})
        branch[leaf] = value
    return tree


def select_section(document: Mapping, node_name: str, namespace: str = "/") -> tuple[list[str], dict[str, Any]]:
    """The ``ros__parameters`` that rcl gives node ``node_name`` in ``namespace``, and the keys they came from.

    As rcl reads a parameter file: every section whose key matches the node (its full name ``/front/clipomaly``,
    wildcards such as ``/**/clipomaly``, ``/*/clipomaly`` or ``/**``, a plain ``clipomaly`` for a node in the root
    namespace), merged in file order, a later section overriding an earlier one. Sections for other nodes are
    ignored. A matching section without ``ros__parameters`` raises :class:`ParameterFileError`.
    """
    fqn = node_fqn(node_name, namespace)
    chosen = [key for key in map(str, document) if section_matches(key, fqn)]
    parameters: dict[str, Any] = {}
    for key in chosen:
        section = document[key]
        if not isinstance(section, Mapping) or "ros__parameters" not in section:
            raise ParameterFileError(f"section {key!r} has no 'ros__parameters'")
        parameters.update(flatten_parameters(section["ros__parameters"] or {}))
    return chosen, parameters


def read_document(path: Path) -> Mapping:
    """The parameter file at ``path`` as YAML: a mapping of section keys to sections (empty for an empty file).
    Raises :class:`ParameterFileError`, naming the file, when it is missing, a folder, not YAML or not a mapping."""
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParameterFileError(f"parameter file {path} does not exist") from None
    except IsADirectoryError:
        raise ParameterFileError(f"parameter file {path} is a folder: give a .yaml file") from None
    except yaml.YAMLError as error:
        raise ParameterFileError(f"parameter file {path} is not valid YAML: {error}") from None
    if not isinstance(document, Mapping):
        raise ParameterFileError(f"parameter file {path} must map node names to 'ros__parameters'")
    return document


def no_section_message(node_name: str, namespace: str) -> str:
    """What to write so that a parameter file has a section for node ``node_name`` in ``namespace``."""
    fqn = node_fqn(node_name, namespace)
    return (f"no section for node {fqn} (expected '/**/{node_name}:' for any namespace, '{fqn}:', or a plain "
            f"'{node_name}:' for the root namespace only, with 'ros__parameters:')")
