"""``clipomaly defaults``: a parameter file with every setting at its default."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    return subparsers.add_parser("defaults", help="print a parameter file with every setting at its default")


def run(args: argparse.Namespace) -> int:
    from ...core.config import default_parameter_file

    print(default_parameter_file(), end="")
    return 0
