"""``clipomaly mine``: find anomalies in many recorded drives with Ray Data, on one machine or a cluster.

:mod:`.plan` cuts bags into shards, :mod:`.shard` mines one shard (plain Python, what each Ray worker runs),
:mod:`.report` writes the Parquet index, thumbnails, summary and report, :mod:`.driver` ties them together on Ray.
"""

from .driver import MineError, MineResult, run_mine

__all__ = ["MineError", "MineResult", "run_mine"]
