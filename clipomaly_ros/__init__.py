"""clipomaly_ros: open-vocabulary road anomaly segmentation and naming with CLIP (Clipomaly, arXiv 2512.01427).

The core (this package minus ``node`` and ``ros_io``) imports no ROS; start with :class:`Clipomaly`.
"""

from .config import CITYSCAPES_CLASSES, ClipomalyConfig, ConfigError, load_config
from .results import AnomalyRecord, SegmentationResult

__all__ = [
    "CITYSCAPES_CLASSES", "Clipomaly", "ClipomalyConfig", "ConfigError", "load_config", "AnomalyRecord",
    "SegmentationResult",
]
__version__ = "0.1.0"


def __getattr__(name):
    # torch and open_clip load only when the pipeline is first asked for, so `import clipomaly_ros` stays light
    if name == "Clipomaly":
        from .pipeline import Clipomaly

        return Clipomaly
    raise AttributeError(name)
