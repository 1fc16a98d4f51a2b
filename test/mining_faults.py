"""Workers for `clipomaly mine` that fail on purpose, for test_mine_faults.py. Ray ships this module to its workers
by value (see ``ship_to_ray``), so the faults happen where they would in a real run: inside the Ray actors."""

from __future__ import annotations

from pathlib import Path

from clipomaly_ros.tools.mining.shard import ShardMiner


class FailingBag(ShardMiner):
    """Every attempt at a shard of the bag named ``drive_b`` raises, as a pipeline that always breaks on it."""

    failing_bag = "drive_b"

    def mine(self, shard):
        if shard.bag_name == self.failing_bag:
            raise RuntimeError(f"injected: the pipeline breaks on {shard.bag_name}")
        return super().mine(shard)


class ExitingOnBag(ShardMiner):
    """The worker process dies (``os._exit``, as the OOM killer or a segfault in native code ends it) whenever it
    reads a shard of the bag named ``drive_b``."""

    failing_bag = "drive_b"

    def mine(self, shard):
        if shard.bag_name == self.failing_bag:
            import os

            os._exit(137)
        return super().mine(shard)


class ExitingOnFirstBag(ExitingOnBag):
    """:class:`ExitingOnBag` on ``drive_a``, whose shards Ray hands out first: the healthy ones come after them."""

    failing_bag = "drive_a"


class RaisingOnceAtFrame(ShardMiner):
    """The pipeline raises once, on the ``frame``-th frame it is given, then works (a passing CUDA out of memory)."""

    frame = 7

    def build_pipeline(self, config):
        pipeline = super().build_pipeline(config)
        calls = {"count": 0}
        original = pipeline.__class__.__call__

        class Flaky(pipeline.__class__):
            def __call__(self, image):
                calls["count"] += 1
                if calls["count"] == RaisingOnceAtFrame.frame:
                    raise MemoryError("injected: out of memory once")
                return original(self, image)

        pipeline.__class__ = Flaky
        return pipeline


def ship_to_ray() -> None:
    """Have Ray pickle this module's classes by value: its workers cannot import a test module by name."""
    import sys

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def rows_of(out_dir: Path) -> list[dict]:
    """The committed rows of ``out_dir`` without the shard-private parts, sorted."""
    from clipomaly_ros.tools.mining.report import committed_shards, read_rows

    table = read_rows(out_dir, list(committed_shards(out_dir)))
    return sorted(table.to_pylist(), key=lambda r: (r["bag"], r["topic"], r["first_stamp_ns"], r["track"]))
