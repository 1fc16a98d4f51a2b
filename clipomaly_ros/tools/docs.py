"""The reference pages that are made from the code, never written by hand: ``docs/parameters.md`` from the settings
table, ``docs/cli-reference.md`` from the command line's parsers and ``docs/ros-reference.md`` from the node's topic
catalogue and the launch file's arguments. ``python -m clipomaly_ros.tools.docs`` writes
them; a test fails when a page in the repository is not what this module makes."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..core.config import SETTINGS, Setting
from ..ros.launch_logic import LAUNCH_ARGUMENTS
from ..ros.topic_catalogue import IMAGE_DEPTH, PLANNER_DEPTH, SERVICES, TOPICS

DOCS = Path(__file__).resolve().parent.parent.parent / "docs"
HELP_COLUMNS = 110
"""The width the command line's help is laid out at, so the page does not depend on the terminal."""
TABLE_CELL_WORDS = 40
"""The most words a table cell of a page may hold (a test checks every page); longer text goes below the table."""


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default(setting: Setting) -> str:
    value = setting.default
    if setting.kind == "bool":
        return "true" if value else "false"
    if setting.kind == "str_list":
        return "[" + ", ".join(value) + "]" if value else "[]"
    if setting.kind == "str":
        return f'"{value}"'
    return repr(value)


def _range(setting: Setting) -> str:
    if setting.choices:
        return " / ".join(setting.choices)
    low = "" if setting.minimum is None else f"{setting.minimum:g}"
    high = "" if setting.maximum is None else f"{setting.maximum:g}"
    if low or high:
        return f"{low or '-inf'} .. {high or 'inf'}"
    if setting.item_pattern:
        return f"matches `{setting.item_pattern}`"
    return ""


def parameters_page() -> str:
    """``docs/parameters.md``: every setting with its type, default, range, whether it applies live, and, below the
    table, its meaning (a meaning is often longer than a table cell should be)."""
    lines = ["# Parameters", "",
             "<!-- made by `python -m clipomaly_ros.tools.docs` from clipomaly_ros/core/config.py: do not edit -->", "",
             "One file, `config/clipomaly.yaml`, in ROS 2 parameter-file form (`/**/clipomaly: ros__parameters:`), is "
             "read by the library, the command line tool and the node; `clipomaly defaults` prints it with every "
             "default. Command line options override it. *Live* settings can change while the node runs "
             "(`ros2 param set`); the others are read at configure. *Node* settings matter to the ROS node only.", "",
             f"{len(SETTINGS)} settings; what each one means is [below the table](#what-each-setting-means).", "",
             "| name | type | default | range | live | used by |",
             "| --- | --- | --- | --- | --- | --- |"]
    meanings = ["", "## What each setting means", ""]
    for setting in SETTINGS:
        default = _cell(_default(setting))
        meaning = _cell(setting.description)
        if len(default.split()) > TABLE_CELL_WORDS:
            default, meaning = "below", f"{meaning} Default: `{default}`."
        lines.append(f"| `{setting.name}` | {setting.kind} | `{default}` | {_cell(_range(setting))} | "
                     f"{'live' if setting.live else ''} | {'library' if setting.scope == 'core' else setting.scope} |")
        meanings.append(f"- `{setting.name}`: {meaning}")
    return "\n".join(lines + meanings) + "\n"


def _topic_name(topic) -> str:
    return f"`~/{topic.name}`" if topic.private else f"`{topic.name}`"


def _topic_tables() -> list[str]:
    lines = ["## Topics", "",
             "Names are relative to the node's namespace; with `cameras: [front, rear]` each camera's topics get its "
             "prefix (`front/image`, `front/anomalies`, ...), while `/tf_static`, `/tf` and `/diagnostics` are "
             "absolute and shared. `~/` is the node's private namespace (`<namespace>/clipomaly/`). Every output "
             "carries the input image's header; an image output nobody subscribes to is neither computed nor "
             "converted.", "",
             "| topic | in/out | type | QoS | when | what |", "| --- | --- | --- | --- | --- | --- |"]
    for topic in TOPICS:
        optional = " (optional)" if topic.optional else ""
        lines.append(f"| {_topic_name(topic)} | {topic.direction} | {topic.type}{optional} | {topic.qos} | "
                     f"{_cell(topic.when)} | {_cell(topic.what)} |")
    lines += ["", "Notes:", ""]
    lines += [f"- {_topic_name(topic)}: {topic.detail}" for topic in TOPICS if topic.detail]
    lines += ["", "## Services", "", "| service | type | what |", "| --- | --- | --- |"]
    lines += [f"| `{service.name}` | {service.type} | {_cell(service.what)} |" for service in SERVICES]
    return lines


def _launch_table() -> list[str]:
    lines = ["## Launch arguments", "",
             "`ros2 launch clipomaly_ros clipomaly.launch.py NAME:=VALUE ...`, one node per camera. The parameter "
             "file is handed to the node, so rcl reads it as for `ros2 run ... --params-file`: every section that "
             "matches the node applies, in file order, a later one overriding an earlier one; the arguments that "
             "override the file come after it, and only when given (not empty).", "",
             "| argument | default | what |", "| --- | --- | --- |"]
    for argument in LAUNCH_ARGUMENTS:
        default = ("the package's `config/clipomaly.yaml`" if argument.default is None
                   else f"`{argument.default}`" if argument.default else "(empty)")
        lines.append(f"| `{argument.name}` | {default} | {_cell(argument.description)} |")
    return lines


def ros_reference_page() -> str:
    """``docs/ros-reference.md``: the node's topics with their QoS, its services and the launch arguments."""
    lines = ["# The ROS 2 node: reference", "",
             "<!-- made by `python -m clipomaly_ros.tools.docs` from clipomaly_ros/ros/topic_catalogue.py and "
             "clipomaly_ros/ros/launch_logic.py: do not edit -->", "",
             "The node makes its publishers and subscriptions from the same catalogue this page is made from. "
             "Parameters: [parameters.md](parameters.md). How to use them: [ros.md](ros.md) (getting started), "
             "[ros-howto.md](ros-howto.md), [troubleshooting.md](troubleshooting.md).", "",
             *_topic_tables(), "",
             "## The outputs' QoS", "",
             f"Every output is reliable, so a subscriber that asks for best effort matches too. The planners' "
             f"small per-frame messages keep a history of {PLANNER_DEPTH}: a lost fragment of a reliable sample is "
             f"sent again only after the writer's next heartbeat, and a shorter history would have let the sample "
             f"go by then. The image outputs keep {IMAGE_DEPTH}. `label_info` is latched (transient local, depth "
             "1). The image input is depth 1 (the newest frame only) with the reliability `input_reliability` "
             "chooses.", "",
             *_launch_table()]
    return "\n".join(lines) + "\n"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps its subcommands here and nowhere public
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_reference_page() -> str:
    """``docs/cli-reference.md``: ``clipomaly --help`` and each subcommand's ``--help``."""
    from .cli import build_parser

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_COLUMNS)
    try:
        parser = build_parser()
        parts = ["# `clipomaly` command line reference", "",
                 "<!-- made by `python -m clipomaly_ros.tools.docs` from the verbs of clipomaly_ros/tools/commands/: "
                 "do not edit -->",
                 "", "What each command is for, with examples, is in [cli.md](cli.md).", "", "```text",
                 parser.format_help().rstrip(), "```"]
        for name, subparser in _subparsers(parser).items():
            parts += ["", f"## `clipomaly {name}`", "", "```text", subparser.format_help().rstrip(), "```"]
    finally:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns
    return "\n".join(parts) + "\n"


PAGES = {"parameters.md": parameters_page, "cli-reference.md": cli_reference_page,
         "ros-reference.md": ros_reference_page}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write the generated reference pages into docs/.")
    parser.add_argument("--check", action="store_true", help="only say whether the pages are current (exit 1 if not)")
    args = parser.parse_args(argv)
    stale = []
    for name, make in PAGES.items():
        path, text = DOCS / name, make()
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text)
            print(f"wrote {path}")
    if args.check and stale:
        print(f"stale: {', '.join(stale)}: run python -m clipomaly_ros.tools.docs", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
