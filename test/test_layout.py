"""The package's layers: core <- ros <- tools, imports flowing one way and no import cycles."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).parent.parent / "clipomaly_ros"
LAYERS = ("core", "ros", "tools")  # each may import only the ones before it


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports() -> dict[str, set[str]]:
    """Every module of the package -> the package modules it imports anywhere (top level or inside functions)."""
    modules = {module_name(path): path for path in PACKAGE_DIR.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                candidates = [source] + [f"{source}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            targets |= {c for c in candidates if c in modules and c != name}
        graph[name] = targets
    return graph


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_imports_flow_from_tools_to_ros_to_core_only():
    graph = package_imports()
    assert {"clipomaly_ros.core.method.pipeline", "clipomaly_ros.ros.node", "clipomaly_ros.tools.cli"} <= set(graph)
    upward = [(module, target) for module, targets in graph.items() for target in targets
              if layer_of(module) is not None and layer_of(target) is not None and layer_of(target) > layer_of(module)]
    assert upward == [], f"a lower layer imports a higher one: {upward}"


def test_no_import_cycles():
    graph = package_imports()
    # the package root re-exports the core's public names; edges into a package's own __init__ are not cycles
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module):
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(target):] + [target]))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_model_room_reads_only_the_settings_from_the_rest_of_the_core():
    graph = package_imports()
    model = {m for m in graph if m.startswith("clipomaly_ros.core.model")}
    assert {"clipomaly_ros.core.model.dense", "clipomaly_ros.core.model.open_clip_backend"} <= model
    outside = sorted((m, t) for m in model for t in graph[m]
                     if not t.startswith("clipomaly_ros.core.model") and t != "clipomaly_ros.core.config")
    assert outside == [], f"the model side imports the pipeline's stages: {outside}"


CORE_ROOMS = ("model", "method", "scene")
"""The core's rooms by kind, each may import only the ones before it (and the core's own helpers: settings,
images, interrupt, datasets)."""


def core_room(module: str) -> int | None:
    parts = module.split(".")
    return CORE_ROOMS.index(parts[2]) if len(parts) > 2 and parts[1] == "core" and parts[2] in CORE_ROOMS else None


def test_the_core_has_rooms_by_kind_with_imports_flowing_model_method_scene():
    graph = package_imports()
    for room, member in (("method", "pipeline"), ("method", "naming"), ("scene", "tracking"), ("scene", "geometry")):
        assert f"clipomaly_ros.core.{room}.{member}" in graph
    upward = sorted((m, t) for m, targets in graph.items() for t in targets
                    if core_room(m) is not None and core_room(t) is not None and core_room(t) > core_room(m))
    assert upward == [], f"a room of the core imports one after it: {upward}"
    helpers = {m for m in graph if m.startswith("clipomaly_ros.core.") and core_room(m) is None}
    into_rooms = sorted((m, t) for m in helpers for t in graph[m] if core_room(t) is not None
                        and m != "clipomaly_ros.core.datasets")
    assert into_rooms == [], f"a helper of the core imports a room: {into_rooms}"
    # the synthetic scenes are test and demo data, outside the runtime core
    assert not any(m.startswith("clipomaly_ros.core.") and "scenes" in m for m in graph)


def test_the_parameter_file_rules_are_a_room_of_their_own_that_the_settings_use():
    graph = package_imports()
    assert graph["clipomaly_ros.core.parameter_files"] == set()  # the file's rules know no setting
    assert "clipomaly_ros.core.parameter_files" in graph["clipomaly_ros.core.config"]
    config = ast.parse((PACKAGE_DIR / "core" / "config.py").read_text())
    defined = {node.name for node in ast.walk(config) if isinstance(node, ast.FunctionDef)}
    rules = {"select_section", "section_matches", "node_fqn", "flatten_parameters", "is_ros_standard_parameter"}
    assert defined & rules == set(), "rcl's parameter-file rules are back in core/config.py"


def test_importing_the_whole_core_pulls_in_neither_rclpy_nor_rosbags():
    code = ("import pkgutil, sys, importlib, clipomaly_ros.core as core; "
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(core.__path__, 'clipomaly_ros.core.')]; "
            "from clipomaly_ros import Clipomaly, load_config; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('rclpy', 'rosbags', 'mcap')))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


def test_offline_tools_and_message_conversions_import_without_a_ros_runtime():
    code = ("import sys; sys.modules.update({m: None for m in ('rclpy', 'sensor_msgs', 'vision_msgs', "
            "'std_msgs', 'diagnostic_msgs', 'std_srvs')}); "
            "import clipomaly_ros.tools.cli, clipomaly_ros.tools.replay, clipomaly_ros.tools.evaluation, "
            "clipomaly_ros.tools.bench, clipomaly_ros.ros.messages, clipomaly_ros.ros.bags; print('ok')")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert completed.stdout.strip() == "ok", completed.stderr


def test_console_scripts_point_at_existing_functions():
    from importlib.metadata import entry_points

    scripts = {e.name: e for e in entry_points(group="console_scripts") if e.value.startswith("clipomaly_ros.")}
    assert set(scripts) == {"clipomaly", "clipomaly_node"}
    assert callable(scripts["clipomaly"].load())
    assert scripts["clipomaly_node"].value == "clipomaly_ros.ros.process:main"


ROS_FILE_LINES, FILE_LINES, FUNCTION_LINES = 350, 600, 60
"""The house's limits: lines of a file in ros/, of any other file (the package's, the tests', the launch file's, the
scripts'), and of one function."""
SCANNED = ("clipomaly_ros", "test", "launch", "scripts")
"""The folders of the repository whose Python files the limits apply to."""
KNOWN_OVERSIZE: set[str] = set()
"""Files of the package known to break a limit, each with the issue that fixes it."""


def oversize_code() -> list[str]:
    """Every file over its line limit and every function (or method) over :data:`FUNCTION_LINES`, counted from
    its ``def`` to its last line, as ``path`` or ``path:line name (lines)``, in the folders of :data:`SCANNED`."""
    found = []
    repository = PACKAGE_DIR.parent
    for path in sorted(path for folder in SCANNED for path in (repository / folder).rglob("*.py")):
        relative = path.relative_to(repository).as_posix()
        text = path.read_text()
        in_ros = path.is_relative_to(PACKAGE_DIR / "ros")
        limit = ROS_FILE_LINES if in_ros else FILE_LINES
        if len(text.splitlines()) > limit:
            found.append(f"{relative} ({len(text.splitlines())} lines, limit {limit})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > FUNCTION_LINES:
                    found.append(f"{relative}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_file_or_function_is_over_the_house_limits():
    found = oversize_code()
    over = [entry for entry in found if entry.split(" ")[0].split(":")[0] not in KNOWN_OVERSIZE]
    assert over == [], f"over the limits ({ROS_FILE_LINES} lines in ros/, {FILE_LINES} elsewhere, " \
                       f"{FUNCTION_LINES} a function): {over}"
    still_over = {entry.split(" ")[0].split(":")[0] for entry in found}
    assert KNOWN_OVERSIZE <= still_over, f"no longer over the limits, drop from KNOWN_OVERSIZE: " \
                                         f"{sorted(KNOWN_OVERSIZE - still_over)}"
