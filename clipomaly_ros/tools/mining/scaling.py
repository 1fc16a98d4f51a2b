"""``clipomaly bench --mining DIR``: frames per second mining the same bags with 1 and 2 local Ray workers, against
the same shards mined in this one process without Ray and against ``clipomaly replay``. Figures to print, never
to assert: they depend on the machine and its load."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from ...core.config import ClipomalyConfig
from .plan import plan
from .shard import mine_shard
from .synthetic import write_fleet

BENCH_FRAMES = 300
"""Frames per topic of the generated fleet: 30 s at 10 frames/s, 1,200 frames over its 4 topics."""


def mining_scaling(config: ClipomalyConfig, folder: Path, workers=(1, 2), window_s: float = 10.0,
                   log=lambda message: print(message, file=sys.stderr)) -> dict:
    """Time the ways to mine the bags in ``folder`` (written there as a synthetic fleet first when it holds none):
    ``replay`` bag by bag, topic by topic; :func:`mine_shard` over every shard in this process; and ``run_mine``
    with each count of ``workers``. Each figure: wall seconds including model loads and Ray's start, frames,
    frames/s."""
    from ...core.method.pipeline import Clipomaly
    from ..replay import replay
    from .driver import run_mine

    folder = Path(folder)
    if not (folder.exists() and any(folder.rglob("metadata.yaml"))):
        log(f"writing a synthetic fleet into {folder} ({BENCH_FRAMES} frames a topic)")
        write_fleet(folder, frames=BENCH_FRAMES)
    plans, _ = plan([folder], None, window_s)
    shards = [shard for bag in plans for shard in bag.shards]
    figures: dict[str, dict] = {}
    scratch = Path(tempfile.mkdtemp(prefix="clipomaly-mining-bench-"))
    try:
        started = time.perf_counter()
        pipeline = Clipomaly(config)
        frames = 0
        for bag in plans:
            for topic in bag.topics:
                summary = replay(pipeline, bag.path, scratch / f"replay-{bag.name}-{topic.replace('/', '_')}",
                                 image_topic=topic, overlay=False, progress=False, log=lambda _: None)
                frames += summary.processed
        figures["replay, one process"] = _figure(started, frames)
        log(f"replay: {figures['replay, one process']}")

        started = time.perf_counter()
        pipeline = Clipomaly(config)
        frames = sum(mine_shard(pipeline, shard).frames_processed for shard in shards)
        figures["shards in one process, no Ray"] = _figure(started, frames)
        log(f"one process: {figures['shards in one process, no Ray']}")
        del pipeline

        for count in workers:
            started = time.perf_counter()
            result = run_mine([folder], scratch / f"mine-{count}", config, workers=count, window_s=window_s,
                              progress=False, log=lambda _: None)
            name = f"mine, {count} Ray worker{'s' if count > 1 else ''}"
            figures[name] = _figure(started, result.summary["frames"])
            figures[name]["startup s"] = result.summary["ray_startup_s"]
            log(f"{name}: {figures[name]}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"bags": len(plans), "shards": len(shards), "window_s": window_s, "figures": figures}


def _figure(started: float, frames: int) -> dict:
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "frames": frames, "frames/s": round(frames / seconds, 2) if seconds else 0.0}


def format_scaling(report: dict) -> str:
    """The figures as a table, with each run's speed against the one-process shards."""
    base = report["figures"]["shards in one process, no Ray"]["frames/s"] or 1.0
    lines = [f"mining {report['bags']} bag(s) in {report['shards']} shard(s) of {report['window_s']:g} s",
             f"{'run':<32} {'wall s':>8} {'frames':>7} {'frames/s':>9} {'vs one process':>15} {'Ray start s':>12}",
             "-" * 88]
    for name, figure in report["figures"].items():
        startup = figure.get("startup s")
        lines.append(f"{name:<32} {figure['seconds']:>8.1f} {figure['frames']:>7} {figure['frames/s']:>9.1f} "
                     f"{figure['frames/s'] / base:>15.2f} {'' if startup is None else f'{startup:.1f}':>12}")
    return "\n".join(lines)
