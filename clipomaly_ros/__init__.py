"""clipomaly_ros: open-vocabulary road anomaly segmentation and naming with CLIP (Clipomaly, arXiv 2512.01427).

Three layers, imports flowing one way: ``core`` (the ROS-free pipeline) <- ``ros`` (node, message conversions,
bags) <- ``tools`` (the ``clipomaly`` command line). Start with :class:`Clipomaly`.
"""

from .core.config import CITYSCAPES_CLASSES, ClipomalyConfig, ConfigError, load_config

__all__ = [
    "CITYSCAPES_CLASSES", "Clipomaly", "ClipomalyConfig", "ConfigError", "load_config", "AnomalyRecord",
    "SegmentationResult",
]
__version__ = "0.1.0"


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
