"""The ``clipomaly`` command line tool: it declares the verbs and dispatches to them.

Each verb is a module of :mod:`clipomaly_ros.tools.commands`, listed in ``commands.VERBS``, with
``add_parser(subparsers)`` and ``run(args) -> int``. This module builds the parser from that registry, sets up
logging, and turns the errors that are the user's to fix (bad settings, vocabulary, bag, data, weights) into one
line on stderr and exit status 2; an interrupt exits 130.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from ..core.config import ConfigError
from ..core.interrupt import EXIT_INTERRUPTED
from .commands import VERBS, module_name

EXIT_USER_ERROR = 2
"""The exit status of a run stopped by what the user gave it (as argparse's for a bad option)."""
MODEL_LOAD_ERROR = "clipomaly_ros.core.model.backend:ModelLoadError"
USER_RUNTIME_ERRORS = (MODEL_LOAD_ERROR, "clipomaly_ros.tools.demo:DemoError")
"""The user's errors that are not :class:`ValueError`: missing or foreign weights, a demo that cannot start."""


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: the common options and one subparser per verb of :data:`VERBS`, in its order."""
    parser = argparse.ArgumentParser(prog="clipomaly", description="Find, segment and name road anomalies with "
                                                                   "CLIP (Clipomaly).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for verb in VERBS:
        module = importlib.import_module(f"{__package__}.commands.{module_name(verb)}")
        module.add_parser(subparsers).set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if not args.verbose:  # libraries (open_clip) say only what went wrong; our own loggers say what they do
        logging.getLogger().handlers[0].addFilter(
            lambda record: record.levelno >= logging.WARNING or record.name.startswith("clipomaly"))
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("clipomaly: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if not is_user_error(error):
            raise
        text = error.render("cli") if isinstance(error, _loaded(MODEL_LOAD_ERROR)) else str(error)
        print(f"clipomaly: error: {text}", file=sys.stderr)
        return EXIT_USER_ERROR


def _loaded(qualified: str) -> tuple[type, ...]:
    """The class ``module:Class`` if its module is already imported, else no class: an error of a class whose module
    was never imported cannot have been raised, so looking it up this way imports nothing (a verb that never touched
    the model, such as ``review``, keeps torch out of its process)."""
    module, name = qualified.split(":")
    return (getattr(sys.modules[module], name),) if module in sys.modules else ()


def is_user_error(error: BaseException) -> bool:
    """Whether ``error`` is the user's to fix (bad settings, vocabulary, bag, data, weights): :class:`ValueError`
    and its kind (every refusal of input in the package), or one of :data:`USER_RUNTIME_ERRORS`."""
    return isinstance(error, (ValueError, ConfigError)) or any(
        isinstance(error, _loaded(qualified)) for qualified in USER_RUNTIME_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
