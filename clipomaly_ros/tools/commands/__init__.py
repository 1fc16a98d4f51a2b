"""The ``clipomaly`` command's verbs, one module each, in the manner of ros2cli: ``commands/<verb>.py`` has
``add_parser(subparsers) -> argparse.ArgumentParser`` (the verb's arguments and help) and
``run(args) -> int`` (the exit code). Options and helpers that several verbs share are in ``options``.

A new verb is one new module here plus its name in :data:`VERBS`. The modules import only argparse-level names at
the top, so building the whole parser (``clipomaly --help``) stays cheap; the work is imported inside ``run``."""

VERBS = ("segment", "tag", "scene", "dataset", "finetune", "demo", "play", "replay", "evaluate", "calibrate", "bench",
         "export", "mine", "review", "import", "frames", "release", "defaults")
"""Every verb, in the order ``clipomaly --help`` lists them; each names its module in this package (a verb that
is a Python keyword, ``import``, its module with a trailing underscore: see :func:`module_name`)."""


def module_name(verb: str) -> str:
    """The module of ``verb`` in this package: the verb itself, with ``_`` after a Python keyword."""
    import keyword

    return f"{verb}_" if keyword.iskeyword(verb) else verb
