"""The ``clipomaly`` command line tool: it declares the verbs and dispatches to them.

Each verb is a module of :mod:`clipomaly_ros.tools.commands` (``segment``, ``tag``, ``scene``, ``dataset``,
``finetune``, ``demo``, ``play``, ``replay``, ``evaluate``, ``calibrate``, ``bench``, ``export``, ``mine``,
``defaults``), listed in ``commands.VERBS``, with ``add_parser(subparsers)`` and ``run(args) -> int``. This module
builds the parser from that registry, sets up logging, and turns the errors that are the user's to fix (bad
settings, vocabulary, bag, data, weights) into one line on stderr and exit status 2; an interrupt exits 130.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from ..core.config import ConfigError
from ..core.interrupt import EXIT_INTERRUPTED
from .commands import VERBS

EXIT_USER_ERROR = 2
"""The exit status of a run stopped by what the user gave it (as argparse's for a bad option)."""


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: the common options and one subparser per verb of :data:`VERBS`, in its order."""
    parser = argparse.ArgumentParser(prog="clipomaly", description="Find, segment and name road anomalies with "
                                                                   "CLIP (Clipomaly).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for verb in VERBS:
        module = importlib.import_module(f"{__package__}.commands.{verb}")
        module.add_parser(subparsers).set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if not args.verbose:  # libraries (open_clip) say only what went wrong; our own loggers say what they do
        logging.getLogger().handlers[0].addFilter(
            lambda record: record.levelno >= logging.WARNING or record.name.startswith("clipomaly"))
    from ..core.method.vocabulary import VocabularyError
    from ..core.model.backend import ModelLoadError
    from ..ros.bags import BagError
    from .calibration import CalibrationError
    from .demo import DemoError
    from .metrics import MetricError

    try:
        return args.run(args)
    except ModelLoadError as error:
        print(f"clipomaly: error: {error.render('cli')}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (ConfigError, VocabularyError, BagError, MetricError, DemoError, CalibrationError,
            ValueError) as error:
        print(f"clipomaly: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("clipomaly: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
