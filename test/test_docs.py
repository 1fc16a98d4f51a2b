"""The documentation: the README is a landing page, the generated reference pages are current, and every link
between the pages leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, fenced = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            found.add(heading_anchor(line.lstrip("#")))
    return found


def test_the_readme_is_a_landing_page_that_opens_with_the_two_commands():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    assert [line.split()[:2] for line in first_block.strip().splitlines()] == [["make", "demo"], ["make", "test"]]
    assert (REPO / ".ci" / "run").read_text().strip().endswith("make test")


@pytest.mark.parametrize("name", ["parameters.md", "cli-reference.md", "ros-reference.md"])
def test_the_generated_reference_pages_are_current(name):
    from clipomaly_ros.tools.docs import PAGES as GENERATED

    assert (REPO / "docs" / name).read_text() == GENERATED[name](), (
        f"docs/{name} is stale: run python -m clipomaly_ros.tools.docs")


def test_every_setting_is_on_the_parameters_page_once():
    from clipomaly_ros.core.config import SETTINGS

    page = (REPO / "docs" / "parameters.md").read_text()
    for setting in SETTINGS:
        assert page.count(f"| `{setting.name}` |") == 1, setting.name


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_link_between_the_pages_leads_somewhere(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target} does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{page.name}: {target}: no heading with that anchor"


def table_cells(page: Path):
    """``(line number, cell text)`` of every Markdown table cell on ``page`` (code blocks left out)."""
    fenced = False
    for number, line in enumerate(page.read_text().splitlines(), start=1):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.lstrip().startswith("|"):
            for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]:
                yield number, cell.strip()


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_no_table_cell_holds_more_than_forty_words(page):
    from clipomaly_ros.tools.docs import TABLE_CELL_WORDS

    long_cells = [f"{page.name}:{number}: {len(cell.split())} words: {cell[:60]}..."
                  for number, cell in table_cells(page) if len(cell.split()) > TABLE_CELL_WORDS]
    assert not long_cells, "move the detail below the table:\n" + "\n".join(long_cells)


def test_the_table_cell_check_sees_a_long_cell_and_an_escaped_bar(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("| a | b |\n| --- | --- |\n| `x \\| y` | " + "word " * 41 + "|\n```\n| " + "w " * 50 + "|\n```\n")
    cells = dict(table_cells(page))
    assert len(cells[3].split()) == 41 and ("`x \\| y`" in [cell for _, cell in table_cells(page)])
    assert all(number != 5 for number, _ in table_cells(page))


def test_the_topic_table_is_the_catalogue_the_node_publishes_from():
    from clipomaly_ros.ros.messages import OPTIONAL_OUTPUTS, OUTPUT_TYPES, PRIVATE_OUTPUTS
    from clipomaly_ros.ros.topic_catalogue import SERVICES, TOPICS, camera_outputs

    assert list(OUTPUT_TYPES) == [entry.name for entry in camera_outputs()]
    assert set(OPTIONAL_OUTPUTS) == {"anomalies_objects", "anomaly_markers"} and PRIVATE_OUTPUTS == ("tags",)
    page = (REPO / "docs" / "ros-reference.md").read_text()
    for entry in TOPICS:
        name = f"~/{entry.name}" if entry.private else entry.name
        row = next(line for line in page.splitlines() if line.startswith(f"| `{name}` |"))
        assert entry.type in row and entry.qos in row, row
    for service in SERVICES:
        row = next(line for line in page.splitlines() if line.startswith(f"| `{service.name}` |"))
        assert service.type in row, row


NODE_MODULES = ("node.py", "topics.py", "image_input.py")
"""The modules that make the node's subscriptions, publishers and service."""


def test_the_node_takes_every_topic_name_and_depth_from_the_catalogue():
    """No topic or service name and no history depth written into the node's modules as a literal: each comes from
    the catalogue, so the page generated from it is what the node does."""
    import ast

    from clipomaly_ros.ros.topic_catalogue import SERVICES, TOPICS

    names = {entry.name for entry in TOPICS} | {service.name for service in SERVICES}
    literals = []
    for module in NODE_MODULES:
        path = REPO / "clipomaly_ros" / "ros" / module
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                    "create_publisher", "create_subscription", "create_service", "resolve_topic_name", "QoSProfile"):
                for argument in [*node.args, *(keyword.value for keyword in node.keywords)]:
                    for part in ast.walk(argument):
                        text = part.value if isinstance(part, ast.Constant) else None
                        if (isinstance(text, str) and text.rstrip("/").split("/", 1)[-1] in names | {"compressed"}
                                or text in names or isinstance(text, int) and not isinstance(text, bool)):
                            literals.append(f"{module}:{part.lineno}: {text!r}")
    assert not literals, "take these from clipomaly_ros/ros/topic_catalogue.py:\n" + "\n".join(literals)


def test_the_launch_arguments_on_the_page_are_the_ones_the_launch_file_declares(monkeypatch):
    """The launch file run against stand-ins for launch and launch_ros (neither is on the package index): what it
    declares is the table the page is made from, in order, with the same defaults and descriptions."""
    import importlib.util
    import sys
    import types

    from clipomaly_ros.ros.launch_logic import LAUNCH_ARGUMENTS

    declared = []

    def record(*args, **kwargs):
        declared.append((args, kwargs))
        return ("declared", args, kwargs)

    fakes = {"launch": {"LaunchDescription": list}, "launch.actions": {
        "DeclareLaunchArgument": record, "LogInfo": object, "OpaqueFunction": lambda function: ("opaque", function)},
        "launch.substitutions": {"LaunchConfiguration": object}, "launch_ros.actions": {"Node": object},
        "launch_ros": {}, "ament_index_python.packages": {"get_package_share_directory": lambda name: f"/share/{name}"}}
    for name, attributes in fakes.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attributes))
    spec = importlib.util.spec_from_file_location("clipomaly_launch", REPO / "launch" / "clipomaly.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert description[-1][0] == "opaque"
    assert [(args[0], kwargs["default_value"], kwargs["description"]) for args, kwargs in declared] == [
        (argument.name, "/share/clipomaly_ros/config/clipomaly.yaml" if argument.default is None else argument.default,
         argument.description) for argument in LAUNCH_ARGUMENTS]
    page = (REPO / "docs" / "ros-reference.md").read_text()
    assert all(f"| `{argument.name}` |" in page for argument in LAUNCH_ARGUMENTS)


def test_the_ros2_run_line_starts_the_node_the_launch_example_starts():
    """The getting-started page's ``ros2 run`` line against its ``ros2 launch`` line: the same namespace, the
    parameter file the launch file defaults to (the installed share folder), the same remappings."""
    from clipomaly_ros.ros.launch_logic import image_remappings

    page = (REPO / "docs" / "ros.md").read_text()
    launch = re.search(r"ros2 launch clipomaly_ros clipomaly\.launch\.py (.*)", page).group(1).split()
    arguments = dict(argument.split(":=", 1) for argument in launch)
    run_line = re.search(r"ros2 run clipomaly_ros clipomaly_node (.*?)\n```", page, re.S).group(1)
    words = run_line.replace("\\\n", " ").split()
    remaps = dict(words[index + 1].split(":=", 1) for index, word in enumerate(words) if word == "-r")
    assert words[:1] == ["--ros-args"], words
    assert remaps.pop("__ns") == "/" + arguments["namespace"]
    assert remaps == dict(image_remappings(arguments["image_topic"], "raw"))
    params = " ".join(words[words.index("--params-file") + 1:words.index("--params-file") + 5])
    assert params == "$(ros2 pkg prefix clipomaly_ros)/share/clipomaly_ros/config/clipomaly.yaml"
    launch_file = (REPO / "launch" / "clipomaly.launch.py").read_text()
    assert 'get_package_share_directory("clipomaly_ros"), "config", "clipomaly.yaml"' in launch_file
