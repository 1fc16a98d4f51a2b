#!/usr/bin/env python3
"""The GPU check: every runtime, precision and window layout of the model side on one machine, in one call
(``make gpu-check``; the rows and what each proves are in ``clipomaly_ros/tools/gpu_check``).

Made for a bare CUDA machine with Python and PyTorch but no network: open_clip and the other pure model-side
packages come from ``.gpu-wheels`` (``make gpu-wheels`` fills it on a connected machine), unpacked into
``.gpu-site`` only where the machine lacks them, before anything of this package is imported. Each row then runs
in a process of its own under its own time limit, and its record goes to ``gpu-check.jsonl`` the moment it ends;
``--table FILE`` rebuilds the table from that file. ``--device cpu`` rehearses the same plan on a CPU.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WHEEL_MODULES = {"open_clip_torch": "open_clip", "pyyaml": "yaml", "protobuf": "google.protobuf",
                 "opencv_python_headless": "cv2"}
"""Distribution names whose import name differs (the others import as the distribution's name)."""


def can_import(*modules: str) -> bool:
    def found(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # its parent package is missing
            return False

    return all(found(module) for module in modules)


def unpack_missing_wheels(wheels: Path, site: Path) -> list[str]:
    """Unpack every wheel in ``wheels`` whose module this Python cannot import into ``site`` (a wheel is a zip of
    site-packages; these have no build step), and put ``site`` first on the path. Returns what was unpacked."""
    if site.is_dir() and str(site) not in sys.path:  # unpacked by an earlier run
        sys.path.insert(0, str(site))
        importlib.invalidate_caches()
    unpacked = []
    for wheel in sorted(wheels.glob("*.whl")):
        distribution = wheel.name.split("-")[0].lower()
        if can_import(WHEEL_MODULES.get(distribution, distribution)):
            continue
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
        unpacked.append(wheel.name)
    if unpacked:
        if str(site) not in sys.path:
            sys.path.insert(0, str(site))
        importlib.invalidate_caches()
    return unpacked


def wheels_folder(argv: list[str]) -> Path:
    """``--wheels DIR`` (or ``--wheels=DIR``) from the command line, else ``.gpu-wheels``."""
    for index, argument in enumerate(argv):
        if argument == "--wheels" and index + 1 < len(argv):
            return Path(argv[index + 1])
        if argument.startswith("--wheels="):
            return Path(argument.split("=", 1)[1])
    return REPO / ".gpu-wheels"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    wheels = wheels_folder(argv)
    unpacked = unpack_missing_wheels(wheels, REPO / ".gpu-site") if wheels.is_dir() else []
    if unpacked:
        print(f"gpu check: unpacked from {wheels.name}: {', '.join(unpacked)}", flush=True)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from clipomaly_ros.tools.gpu_check.runner import main as check

    return check(argv)


if __name__ == "__main__":
    sys.exit(main())
