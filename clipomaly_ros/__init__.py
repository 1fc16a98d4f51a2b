"""clipomaly_ros: open-vocabulary road anomaly segmentation and naming with CLIP (Clipomaly, arXiv 2512.01427).

Three layers, imports flowing one way: ``core`` (the ROS-free pipeline) <- ``ros`` (node, message conversions,
bags) <- ``tools`` (the ``clipomaly`` command line). Start with :class:`Clipomaly`.
"""

from .core.config import CITYSCAPES_CLASSES, ClipomalyConfig, ConfigError, load_config
from .core.results import AnomalyRecord, SegmentationResult

__all__ = [
    "CITYSCAPES_CLASSES", "Clipomaly", "ClipomalyConfig", "ConfigError", "load_config", "AnomalyRecord",
    "SegmentationResult",
]
__version__ = "0.1.0"


def __getattr__(name):
    # torch and open_clip load only when the pipeline is first asked for, so `import clipomaly_ros` stays light
    if name == "Clipomaly":
        from .core.pipeline import Clipomaly

        return Clipomaly
    raise AttributeError(name)
