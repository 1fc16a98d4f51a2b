"""``clipomaly mine``: the driver. It plans the shards, leaves out those already committed, hands the rest to a Ray
Data actor pool (one model per worker, GPUs per worker where there are GPUs), follows their progress, and rebuilds
the outputs from every committed shard.

Without an address, ``ray.init()`` starts a cluster on this machine; with ``--address`` (or ``RAY_ADDRESS``) the
same code runs on a cluster, where OUT_DIR and the bags must be on storage every node sees.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ...core.config import ClipomalyConfig
from .plan import Shard, plan
from .report import (committed_shards, copy_thumbnails, read_rows, report_html, summarise, write_index)

RUN_FILE = "run.json"
MINED_SETTINGS = ("backend", "model", "pretrained", "checkpoint", "random_weights", "dense_method", "inference_size",
                  "window_layout", "known_classes", "anomaly_vocabulary", "naming_dictionary", "uncertainty_threshold",
                  "min_region_area", "max_regions", "track_min_hits", "track_max_misses", "logit_scale")
"""Settings that change what a shard's rows hold: an OUT_DIR mined with others is not resumed with these."""


class MineError(RuntimeError):
    """The run cannot start or go on; the message says why and what to do."""


@dataclass
class MineResult:
    """What a run did: its ``summary`` (summary.json's content), the shards mined now, and the table it printed."""

    summary: dict
    mined: int
    table: str


def run_signature(config: ClipomalyConfig, topics, window_s: float, rate_hz: float | None) -> dict:
    """What must stay the same for a later run to resume into the same OUT_DIR."""
    values = config.as_dict()
    settings = {name: values[name] for name in MINED_SETTINGS}
    settings.update(topics=sorted(topics) if topics else None, window_s=window_s, rate_hz=rate_hz)
    settings["digest"] = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return settings


def _check_run_file(out_dir: Path, signature: dict) -> None:
    path = out_dir / RUN_FILE
    if path.is_file():
        earlier = json.loads(path.read_text())
        if earlier.get("digest") != signature["digest"]:
            changed = sorted(k for k in signature if k != "digest" and earlier.get(k) != signature[k])
            raise MineError(f"{out_dir} holds a run with other settings ({', '.join(changed)} differ): its shards "
                            "would not match; mine into a new OUT_DIR, or delete this one to start again")
    else:
        path.write_text(json.dumps(signature, indent=1, default=str))


def run_mine(inputs, out_dir, config: ClipomalyConfig, topics: list[str] | None = None, rate_hz: float | None = None,
             workers: int = 2, gpus_per_worker: float | None = None, address: str | None = None,
             window_s: float = 60.0, progress: bool = True, log=lambda message: print(message, file=sys.stderr)
             ) -> MineResult:
    """Mine ``inputs`` into ``out_dir`` (see the module docstring). Shards already committed there are not done
    again; a bag that cannot be read is reported in the summary and the others are mined."""
    if workers < 1:
        raise MineError(f"--workers must be at least 1, got {workers}")
    if window_s <= 0:
        raise MineError(f"--window must be positive, got {window_s}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    signature = run_signature(config, topics, window_s, rate_hz)
    _check_run_file(out_dir, signature)
    plans, problems = plan(inputs, topics, window_s)
    for path, reason in problems:
        log(f"skipped input {path}: {reason}")
    for bag in plans:
        if bag.failure:
            log(f"skipped a bag: {bag.failure}")
    shards = [shard for bag in plans for shard in bag.shards]
    done = committed_shards(out_dir)
    todo = [shard for shard in shards if shard.id not in done]
    log(f"{len(plans)} bag(s), {len(shards)} shard(s): {len(shards) - len(todo)} already committed, "
        f"{len(todo)} to mine")
    started = time.perf_counter()
    frames_now, startup = 0, 0.0
    if todo:
        frames_now, startup = _mine_on_ray(todo, out_dir, config, rate_hz, workers, gpus_per_worker, address,
                                           progress, log)
    seconds = time.perf_counter() - started
    records = committed_shards(out_dir)
    wanted = [shard.id for shard in shards if shard.id in records]
    table = read_rows(out_dir, wanted)
    write_index(out_dir, table)
    copy_thumbnails(out_dir, wanted)
    run = {"mined": len([s for s in todo if s.id in records]), "resumed": len(shards) - len(todo),
           "frames_per_second": round(frames_now / seconds, 3) if frames_now and seconds else 0.0,
           "seconds": round(seconds, 3), "ray_startup_s": round(startup, 3),
           "settings": {k: v for k, v in signature.items() if k != "digest"} | {"workers": workers}}
    summary = summarise(plans, problems, {k: v for k, v in records.items() if k in set(wanted)}, table, run)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (out_dir / "report.html").write_text(report_html(table, summary))
    return MineResult(summary, run["mined"], final_table(summary))


def _mine_on_ray(todo: list[Shard], out_dir: Path, config: ClipomalyConfig, rate_hz, workers: int,
                 gpus_per_worker, address, progress: bool, log) -> tuple[int, float]:
    """Mine ``todo`` with a Ray Data actor pool of ``workers``; returns the frames processed and the seconds until
    the first shard came back less that shard's own time (Ray's start, the workers' start and model loads)."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise MineError("clipomaly mine needs Ray Data: pip install 'clipomaly_ros[mine]' "
                        "(or pip install 'ray[data]' pyarrow)") from None
    from tqdm import tqdm

    from .shard import ShardMiner

    started = time.perf_counter()
    startup = 0.0
    started_here = not ray.is_initialized()
    if started_here:
        # drives are sensitive data: Ray's usage reports to its makers stay off unless the user turns them on
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # RAY_ADDRESS, when set, is read by ray.init itself: then this joins that cluster too
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="warning")
    try:
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0.0) if gpus_per_worker is None else gpus_per_worker
        per_worker_gpu = min(1.0, gpus / workers) if gpus_per_worker is None else gpus_per_worker
        cpus = resources.get("CPU", 1.0)
        threads = max(1, int(cpus // workers)) if address is None else 0
        log(f"ray: {cpus:g} CPU, {resources.get('GPU', 0.0):g} GPU in the cluster; {workers} worker(s), "
            f"{per_worker_gpu:g} GPU each")
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours counts frames, Ray's would count shards
        dataset = ray.data.from_items([shard.as_dict() for shard in todo], override_num_blocks=len(todo))
        mined = dataset.map_batches(
            ShardMiner, batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=min(1.0, cpus / workers), num_gpus=per_worker_gpu,
            fn_constructor_kwargs={"config": config.as_dict(), "out_dir": str(out_dir.resolve()), "rate_hz": rate_hz,
                                   "threads": threads})
        frames = 0
        bar = tqdm(total=sum(s.frames for s in todo), unit="frame", desc="mining", disable=not progress,
                   file=sys.stderr)
        try:
            for answer in mined.iter_rows():
                if not startup:
                    startup = max(0.0, time.perf_counter() - started - float(answer["seconds"]))
                frames += int(answer["frames"])
                bar.update(int(answer["frames"]))
                if answer["failure"]:
                    log(f"shard {answer['id']}: {answer['failure'].splitlines()[0]}")
        finally:
            bar.close()
        return frames, startup
    except Exception as error:  # noqa: BLE001 - a lost worker or cluster: what was committed stays
        if isinstance(error, MineError):
            raise
        log(f"mining stopped early ({type(error).__name__}: {str(error).splitlines()[0][:300]}); the shards "
            "committed so far are kept: run the same command again to mine the rest")
        return 0, startup
    finally:
        if started_here:
            ray.shutdown()


def final_table(summary: dict) -> str:
    """The table printed at the end: per bag its topics, shards committed of planned, frames and anomalies."""
    lines = [f"{'bag':<28} {'topics':>6} {'shards':>9} {'frames':>8} {'skipped':>8}",
             "-" * 63]
    for bag in summary["per_bag"]:
        lines.append(f"{bag['bag'][:28]:<28} {len(bag['topics']):>6} "
                     f"{bag['shards_committed']:>4}/{bag['shards']:<4} {bag['frames']:>8} {bag['frames_skipped']:>8}")
    for failure in summary["failed"]:
        lines.append(f"FAILED {failure.get('bag', failure['path'])}: {failure['reason'].splitlines()[0][:200]}")
    lines.append(f"{summary['anomalies']} anomaly tracks in {summary['bags']} bag(s), {summary['hours']:.3f} h of "
                 f"data; {summary['shards']['mined_this_run']} shard(s) mined now at "
                 f"{summary['frames_per_second']:.1f} frames/s, {summary['shards']['resumed']} already committed")
    names = ", ".join(f"{name} {count}" for name, count in summary["anomalies_per_name"].items())
    if names:
        lines.append(f"by name: {names}")
    return "\n".join(lines)
