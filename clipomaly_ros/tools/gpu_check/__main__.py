"""``python -m clipomaly_ros.tools.gpu_check``: the check (``scripts/gpu_check.py`` first unpacks wheels a bare
GPU machine lacks, then runs this)."""

import sys

from .runner import main

sys.exit(main())
