"""``clipomaly mine``: find anomalies in many recorded drives with Ray Data, on one machine or a cluster.

:mod:`.plan` cuts bags into shards, :mod:`.shard` mines one shard (plain Python, what each Ray worker runs),
:mod:`.report` writes the Parquet index, thumbnails, summary and report, :mod:`.driver` ties them together on Ray.
"""

from .driver import (EXIT_COMPLETE, EXIT_NOT_STARTED, EXIT_SHARDS_FAILED, MineError, MineResult, failure_line,
                     run_mine)

__all__ = ["EXIT_COMPLETE", "EXIT_NOT_STARTED", "EXIT_SHARDS_FAILED", "MineError", "MineResult", "failure_line",
           "run_mine"]
