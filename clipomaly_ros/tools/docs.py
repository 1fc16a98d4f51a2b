"""The reference pages that are made from the code, never written by hand: ``docs/parameters.md`` from the settings
table and ``docs/cli-reference.md`` from the command line's parsers. ``python -m clipomaly_ros.tools.docs`` writes
them; a test fails when a page in the repository is not what this module makes."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..core.config import SETTINGS, Setting

DOCS = Path(__file__).resolve().parent.parent.parent / "docs"
HELP_COLUMNS = 110
"""The width the command line's help is laid out at, so the page does not depend on the terminal."""


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
    """``docs/parameters.md``: every setting with its type, default, range, whether it applies live, and meaning."""
    lines = ["# Parameters", "",
             "<!-- made by `python -m clipomaly_ros.tools.docs` from clipomaly_ros/core/config.py: do not edit -->", "",
             "One file, `config/clipomaly.yaml`, in ROS 2 parameter-file form (`/**/clipomaly: ros__parameters:`), is "
             "read by the library, the command line tool and the node; `clipomaly defaults` prints it with every "
             "default. Command line options override it. *Live* settings can change while the node runs "
             "(`ros2 param set`); the others are read at configure. *Node* settings matter to the ROS node only.", "",
             f"{len(SETTINGS)} settings.", "",
             "| name | type | default | range | live | used by | meaning |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for setting in SETTINGS:
        lines.append(f"| `{setting.name}` | {setting.kind} | `{_cell(_default(setting))}` | {_cell(_range(setting))} | "
                     f"{'live' if setting.live else ''} | {'library' if setting.scope == 'core' else setting.scope} | "
                     f"{_cell(setting.description)} |")
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


PAGES = {"parameters.md": parameters_page, "cli-reference.md": cli_reference_page}


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
