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


LONG_BAG_MINUTES = 30.0
LONG_BAG_SIZE = (24, 32)
"""A long bag's length and its frames' size (height, width): 18,000 small frames at 10 frames/s."""


def shard_cost_by_position(config: ClipomalyConfig, folder: Path, minutes: float = LONG_BAG_MINUTES,
                           window_s: float = 60.0, repeats: int = 3, rate_hz: float | None = 0.01,
                           log=lambda message: print(message, file=sys.stderr)) -> dict:
    """Seconds to mine the first and the last shard of a long vehicle bag (``minutes`` at 10 frames/s, written
    into ``folder`` as mcap and sqlite3 when missing, and a copy of the mcap one cut at 90 %, whose last whole
    shard is taken): the least of ``repeats`` runs each, first and last taken in turn, after one warm-up (a cut
    file's index is built once a process). ``rate_hz`` 0.01 thins each window to one frame through the pipeline
    (the others are read and thinned), so the figure is the shard's reading, which is what could grow with its
    place in the bag; None runs every frame through the pipeline. A shard reads only its window and its look-back,
    so the two should cost the same wherever they lie in the bag."""
    from ...core.method.pipeline import Clipomaly
    from .synthetic import write_vehicle_bag

    folder = Path(folder)
    frames = round(minutes * 60 * 10)
    bags = {"mcap": folder / "long_mcap", "sqlite3": folder / "long_sqlite3", "cut mcap": folder / "long_cut"}
    for storage in ("mcap", "sqlite3"):
        if not (bags[storage] / "metadata.yaml").is_file():
            log(f"writing {frames} frames of {LONG_BAG_SIZE} pixels as {storage} into {bags[storage]}")
            write_vehicle_bag(bags[storage], frames=frames, size=LONG_BAG_SIZE, storage=storage, plain_frames=True)
    if not bags["cut mcap"].is_dir():
        shutil.copytree(bags["mcap"], bags["cut mcap"])
        (recording,) = bags["cut mcap"].glob("*.mcap")
        recording.write_bytes(recording.read_bytes()[: int(recording.stat().st_size * 0.9)])
    pipeline = Clipomaly(config)
    figures = {}
    for name, path in bags.items():
        (bag,) = plan([path], None, window_s)[0]
        ends = {"first": bag.shards[0], "last": bag.shards[-2 if name == "cut mcap" else -1]}
        mine_shard(pipeline, ends["last"], rate_hz)  # warm-up: model caches, the cut file's index
        times: dict[str, list[float]] = {"first": [], "last": []}
        for _ in range(repeats):
            for end, shard in ends.items():
                started = time.perf_counter()
                mine_shard(pipeline, shard, rate_hz)
                times[end].append(time.perf_counter() - started)
        seconds = {end: round(min(values), 3) for end, values in times.items()}
        figures[name] = seconds | {"last / first": round(seconds["last"] / seconds["first"], 3),
                                   "messages": 3 * ends["first"].frames}
        log(f"{name}: {figures[name]}")
    return {"minutes": minutes, "window_s": window_s, "rate_hz": rate_hz, "figures": figures}
