"""clipomaly_ros: open-vocabulary road anomaly segmentation and naming with CLIP (Clipomaly, arXiv 2512.01427).

Three layers, imports flowing one way: ``core`` (the ROS-free pipeline) <- ``ros`` (node, message conversions,
bags) <- ``tools`` (the ``clipomaly`` command line). Start with :class:`Clipomaly`.
"""

from .core.config import CITYSCAPES_CLASSES, ClipomalyConfig, ConfigError, load_config

__all__ = [
    "CITYSCAPES_CLASSES", "Clipomaly", "ClipomalyConfig", "ConfigError", "load_config", "AnomalyRecord",
    "SegmentationResult",
]


def _version() -> str:
    # package.xml holds the version: beside the sources in a checkout; an installed copy has it in its metadata,
    # which setup.py wrote from the same file
    import xml.etree.ElementTree as ElementTree
    from pathlib import Path

    manifest = Path(__file__).resolve().parent.parent / "package.xml"
    if manifest.is_file():
        return ElementTree.parse(manifest).getroot().findtext("version").strip()
    from importlib.metadata import version

    return version("clipomaly_ros")


__version__ = _version()


def __getattr__(name):
    # torch, open_clip and opencv load only when the pipeline or its results are first asked for, so `import
    # clipomaly_ros` stays light and the model side (core.model) imports on a machine with PyTorch alone
    if name == "Clipomaly":
        from .core.method.pipeline import Clipomaly

        return Clipomaly
    if name in ("AnomalyRecord", "SegmentationResult"):
        from .core.method import results

        return getattr(results, name)
    raise AttributeError(name)
