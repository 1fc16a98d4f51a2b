"""``clipomaly mine``: the driver. It plans the shards, leaves out those already committed, hands the rest to a Ray
Data actor pool (one model per worker, GPUs per worker where there are GPUs), follows their progress, and rebuilds
the outputs from every committed shard.

Without an address, ``ray.init()`` starts a cluster on this machine; with ``--address`` (or ``RAY_ADDRESS``) the
same code runs on a cluster, where OUT_DIR and the bags must be on storage every node sees.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ...core.config import ClipomalyConfig
from ...core.fingerprint import differences, numeric_precision, settings_fingerprint
from .lock import OutDirBusy, hold_out_dir
from .outputs import MinedNow, repaired_commits, write_outputs
from .plan import Shard, plan
from .report import write_staged
from .shard import RETRIES, SHARDS_FOLDER, ShardMiner, _plain, one_line

RUN_FILE = "run.json"
NOT_IN_ROWS = ("device", "window_batch_size", "cache_dir", "publish_unconfirmed", "contact_pixel_error",
               "autoware_labels", "autoware_shape")
"""Settings that change no row: where the model runs and how many windows it takes at once, a cache's folder, and
what only the node's messages hold (unconfirmed tracks, covariances, Autoware's classes and shapes). Every other
setting is part of the resume guard."""
OUTPUTS = (RUN_FILE, f"{RUN_FILE}.unreadable", "anomalies.parquet", "thumbnails", "summary.json", "report.html",
           SHARDS_FOLDER)
"""What a run writes into OUT_DIR; ``--force-new`` removes these and nothing else."""

EXIT_COMPLETE, EXIT_SHARDS_FAILED, EXIT_NOT_STARTED = 0, 1, 2
"""``clipomaly mine``'s exit codes: every planned shard committed; some bag or shard failed (the last line names
them; run the same command again to retry those alone); the run could not start (Ray, the model, the settings)."""


class MineError(RuntimeError):
    """The run cannot start or go on; the message says why and what to do."""


@dataclass
class MineResult:
    """What a run did: its ``summary`` (summary.json's content), the shards mined now, and the table it printed."""

    summary: dict
    mined: int
    table: str

    @property
    def exit_code(self) -> int:
        return EXIT_SHARDS_FAILED if self.summary["failed"] else EXIT_COMPLETE


def run_fingerprint(config: ClipomalyConfig, topics, window_s: float, rate_hz: float | None,
                    gpus_per_worker: float | None = None) -> dict:
    """What must stay the same for a later run to resume into the same OUT_DIR: every setting that changes a row
    (files, and ``local-dir:``/``hf-hub:`` models, by the hash of their bytes), the package's version, the numeric
    precision the workers get (fp16 on CUDA, fp32 on the CPU; ``auto`` counts as CUDA where ``--gpus-per-worker``
    gives GPUs, or, without it, where this machine has one), the topics, the window and the rate."""
    import torch

    from ... import __version__

    try:
        settings = settings_fingerprint(config, NOT_IN_ROWS)
    except FileNotFoundError as error:
        raise MineError(str(error)) from None
    cuda = bool(gpus_per_worker) if gpus_per_worker is not None else torch.cuda.is_available()
    return settings | {"package_version": __version__, "precision": numeric_precision(config.device, cuda),
                       "topics": sorted(topics) if topics else None, "window_s": window_s, "rate_hz": rate_hz}


def _check_run_file(out_dir: Path, fingerprint: dict, run_id: str, log) -> None:
    """Refuse a run whose fingerprint differs from the one OUT_DIR's run.json holds; write it where there is none.
    A run.json that does not parse (a run killed while writing it before it was written staged) is named, set
    aside as run.json.unreadable and written afresh."""
    path = out_dir / RUN_FILE
    earlier = None
    if path.is_file():
        try:
            earlier = json.loads(path.read_text())["fingerprint"]
        except (ValueError, KeyError, TypeError) as error:
            log(f"{path} cannot be read ({one_line(error)}): set aside as {RUN_FILE}.unreadable; this run's "
                "settings are written in its place (give --force-new if the committed shards are of other settings)")
            path.replace(path.with_name(f"{RUN_FILE}.unreadable"))
    if earlier is not None:
        changed = differences(earlier, fingerprint)
        if changed:
            raise MineError(f"{out_dir} holds a run with other settings ({', '.join(changed)} differ): its shards "
                            "would not match this run's rows; mine into a new OUT_DIR, or give --force-new to "
                            "delete that run's outputs and start again")
    else:
        write_staged(path, json.dumps({"fingerprint": fingerprint}, indent=1, default=str), run_id)


def _clear_outputs(out_dir: Path, log) -> None:
    """``--force-new``: the outputs of an earlier run in ``out_dir`` removed (only what :data:`OUTPUTS` names)."""
    removed = []
    for name in OUTPUTS:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(name)
    if removed:
        log(f"--force-new: removed the earlier run's {', '.join(removed)} from {out_dir}")


@dataclass(frozen=True)
class MineOptions:
    """How a run mines: see :func:`run_mine`."""

    topics: list[str] | None
    rate_hz: float | None
    workers: int
    gpus_per_worker: float | None
    address: str | None
    window_s: float
    progress: bool
    retries: int


def run_mine(inputs, out_dir, config: ClipomalyConfig, topics: list[str] | None = None, rate_hz: float | None = None,
             workers: int = 2, gpus_per_worker: float | None = None, address: str | None = None,
             window_s: float = 60.0, progress: bool = True, retries: int = RETRIES, force_new: bool = False,
             log=lambda message: print(message, file=sys.stderr), miner=None) -> MineResult:
    """Mine ``inputs`` into ``out_dir`` (see the module docstring), holding OUT_DIR's lock for the whole run (a
    second run refuses at once). Shards already committed there are not done again. A bag that cannot be opened
    or planned is tried again ``retries`` times; so is a shard whose attempt fails; one whose every attempt fails
    is not committed, is named in the summary's ``failed`` and is mined by the next run; the others go on.
    ``miner`` is the worker class (:class:`~.shard.ShardMiner` by default). Raises :class:`MineError` when the run
    cannot start (another run holds OUT_DIR, bad settings) or no worker can load the model."""
    if workers < 1:
        raise MineError(f"--workers must be at least 1, got {workers}")
    if window_s <= 0:
        raise MineError(f"--window must be positive, got {window_s}")
    if retries < 0:
        raise MineError(f"--retries must be 0 or more, got {retries}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    options = MineOptions(topics, rate_hz, workers, gpus_per_worker, address, window_s, progress, retries)
    try:
        with hold_out_dir(out_dir) as run_id:
            return _run_holding(inputs, out_dir, run_id, config, options, force_new, log, miner or ShardMiner)
    except OutDirBusy as error:
        raise MineError(str(error)) from None


def _run_holding(inputs, out_dir: Path, run_id: str, config: ClipomalyConfig, options: MineOptions,
                 force_new: bool, log, miner) -> MineResult:
    """:func:`run_mine` once OUT_DIR is held."""
    fingerprint = run_fingerprint(config, options.topics, options.window_s, options.rate_hz, options.gpus_per_worker)
    if force_new:
        _clear_outputs(out_dir, log)
    _check_run_file(out_dir, fingerprint, run_id, log)
    (out_dir / "summary.json").unlink(missing_ok=True)  # an earlier run's summary never looks like this run's
    plans, problems = plan(inputs, options.topics, options.window_s, options.retries)
    for path, reason in problems:
        log(f"skipped input {path}: {reason}")
    for bag in plans:
        if bag.failure:
            log(f"skipped a bag: {bag.failure}")
    shards = [shard for bag in plans for shard in bag.shards]
    done = repaired_commits(out_dir, run_id, log)
    todo = [shard for shard in shards if shard.id not in done]
    log(f"{len(plans)} bag(s), {len(shards)} shard(s): {len(shards) - len(todo)} already committed, "
        f"{len(todo)} to mine")
    started = time.perf_counter()
    answers: dict[str, dict] = {}
    startup, stopped = 0.0, None
    if todo:
        answers, startup, stopped = _mine_on_ray(todo, out_dir, config, fingerprint, options, miner, log)
    mined = MinedNow(todo, answers, startup, stopped, time.perf_counter() - started)
    settings = fingerprint | {"workers": options.workers, "retries": options.retries}
    summary, table = write_outputs(out_dir, run_id, plans, problems, mined, settings, log)
    return MineResult(summary, summary["shards"]["mined_this_run"], final_table(summary))


def _mine_on_ray(todo: list[Shard], out_dir: Path, config: ClipomalyConfig, fingerprint: dict,
                 options: MineOptions, miner, log) -> tuple[dict[str, dict], float, str | None]:
    """Mine ``todo`` with a Ray Data actor pool of ``options.workers``; returns each answered shard's answer by id,
    the seconds until the first shard came back less that shard's own time (Ray's start, the workers' start and
    model loads), and why the run stopped early (a lost cluster), or None.

    A worker that dies (the OOM killer, a crash in native code) is restarted and its shard (each worker holds one
    at a time) tried again, at most ``options.retries`` times per shard and ``(retries + 1) * len(todo)`` restarts
    per worker, never Ray's unbounded default; a shard whose every try killed its worker is left unanswered (Ray
    Data drops its block, up to every block) and is named failed while the others go on."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise MineError("clipomaly mine needs Ray Data: pip install 'clipomaly_ros[mine]' "
                        "(or pip install 'ray[data]' pyarrow)") from None

    started = time.perf_counter()
    started_here = _start_ray(ray, options.address)
    answers: dict[str, dict] = {}
    startup = [0.0]
    try:
        pool = _pool_settings(ray, options.workers, options.gpus_per_worker, options.address, log)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours counts frames, Ray's would count shards
        context.max_errored_blocks = len(todo)  # a shard that kills its workers fails alone, named by its absence
        dataset = ray.data.from_items([shard.as_dict() for shard in todo], override_num_blocks=len(todo))
        mined = dataset.map_batches(
            miner, batch_size=1, num_cpus=pool["cpus"], num_gpus=pool["gpus"],
            # one shard in flight per worker: a shard that kills its worker takes no other shard's task with it
            compute=ray.data.ActorPoolStrategy(size=options.workers, max_tasks_in_flight_per_actor=1),
            # Ray Data never replaces an actor past max_restarts: the budget covers every try of every shard
            # (bounded, never Ray's unbounded default), so a killer shard cannot leave healthy ones unworked
            max_restarts=(options.retries + 1) * len(todo), max_task_retries=options.retries,
            fn_constructor_kwargs={
                "config": config.as_dict(), "out_dir": str(out_dir.resolve()), "rate_hz": options.rate_hz,
                "threads": pool["threads"], "retries": options.retries, "fingerprint": fingerprint})
        _collect(mined, sum(s.frames for s in todo), answers, startup, started, options.progress, log)
    except Exception as error:  # noqa: BLE001 - a lost worker or cluster: what was committed stays
        stopped = f"mining stopped early ({one_line(error)[:300]})"
        log(f"{stopped}; the shards committed so far are kept: run the same command again to mine the rest")
        return answers, startup[0], stopped
    finally:
        if started_here:
            ray.shutdown()
    loaded = [a for a in answers.values() if a["outcome"] != "model"]
    if answers and not loaded:
        reasons = sorted({a["failure"] for a in answers.values()})
        raise MineError(f"no worker could load the model: {reasons[0]}")
    return answers, startup[0], None


def _start_ray(ray, address) -> bool:
    """Start Ray here, or join the cluster at ``address`` (or ``RAY_ADDRESS``), unless it runs already; whether
    this call started it (and must shut it down)."""
    if ray.is_initialized():
        return False
    # drives are sensitive data: Ray's usage reports to its makers stay off unless the user turns them on
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # RAY_ADDRESS, when set, is read by ray.init itself: then this joins that cluster too
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="warning")
    except Exception as error:  # noqa: BLE001 - Ray raises many types; the run cannot start
        raise MineError(f"Ray could not start{f' or reach {address}' if address else ''}: "
                        f"{one_line(error)}") from None
    return True


def _pool_settings(ray, workers: int, gpus_per_worker, address, log) -> dict:
    """Each worker's share of the cluster: ``cpus``, ``gpus`` (the GPUs spread over the workers unless given) and
    torch ``threads`` (0: left to torch on a remote cluster)."""
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0.0) if gpus_per_worker is None else gpus_per_worker
    per_worker_gpu = min(1.0, gpus / workers) if gpus_per_worker is None else gpus_per_worker
    cpus = resources.get("CPU", 1.0)
    log(f"ray: {cpus:g} CPU, {resources.get('GPU', 0.0):g} GPU in the cluster; {workers} worker(s), "
        f"{per_worker_gpu:g} GPU each")
    return {"cpus": min(1.0, cpus / workers), "gpus": per_worker_gpu,
            "threads": max(1, int(cpus // workers)) if address is None else 0}


def _collect(mined, frames: int, answers: dict[str, dict], startup: list[float], started: float, progress: bool,
             log) -> None:
    """Each shard's answer into ``answers`` as it comes back, with a progress bar over ``frames``; ``startup[0]``:
    the seconds until the first answer, less that shard's own time."""
    from tqdm import tqdm

    bar = tqdm(total=frames, unit="frame", desc="mining", disable=not progress, file=sys.stderr)
    try:
        for answer in mined.iter_rows():
            answer = {key: _plain(value) for key, value in answer.items()}
            answers[answer["id"]] = answer
            if not startup[0]:
                startup[0] = max(0.0, time.perf_counter() - started - float(answer["seconds"]))
            bar.update(int(answer["frames"]))
            if answer["outcome"] != "committed":
                log(f"shard {answer['id']}: {answer['outcome']}: {answer['failure']}")
    finally:
        bar.close()


def final_table(summary: dict) -> str:
    """The table printed at the end: per bag its topics, shards committed of planned, frames and anomalies; what
    failed and what was cut short."""
    lines = [f"{'bag':<28} {'topics':>6} {'shards':>9} {'frames':>8} {'skipped':>8}",
             "-" * 63]
    for bag in summary["per_bag"]:
        lines.append(f"{bag['bag'][:28]:<28} {len(bag['topics']):>6} "
                     f"{bag['shards_committed']:>4}/{bag['shards']:<4} {bag['frames']:>8} {bag['frames_skipped']:>8}"
                     + ("  (earlier run)" if bag.get("earlier_run") else ""))
    for cut in summary["truncated"]:
        lines.append(f"TRUNCATED {cut['bag']} shard {cut['shard']}: {cut['reason'][:200]}")
    for failure in summary["failed"]:
        where = f" shard {failure['shard']} ({failure['topic']})" if "shard" in failure else ""
        lines.append(f"FAILED {failure.get('bag', failure['path'])}{where}: {failure['reason'].splitlines()[0][:200]}")
    lines.append(f"{summary['anomalies']} anomaly tracks in {summary['bags']} bag(s), {summary['hours']:.3f} h of "
                 f"data; {summary['shards']['mined_this_run']} shard(s) mined now at "
                 f"{summary['frames_per_second']:.1f} frames/s, {summary['shards']['resumed']} already committed")
    names = ", ".join(f"{name} {count}" for name, count in summary["anomalies_per_name"].items())
    if names:
        lines.append(f"by name: {names}")
    return "\n".join(lines)


def failure_line(summary: dict) -> str | None:
    """The run's last line when something failed: the failed bags and shards, and what to do; None otherwise."""
    failed = summary["failed"]
    if not failed:
        return None
    shards: dict[str, list[str]] = {}
    others: dict[str, str] = {}
    for failure in failed:
        bag = failure.get("bag", failure["path"])
        shards.setdefault(bag, []).extend([failure["shard"]] if "shard" in failure else [])
        if failure.get("kind") == "undecodable":
            others[bag] = f"every frame of {failure['topic']} undecodable"
        elif failure.get("kind") == "output":
            others[bag] = failure["reason"]
    named = "; ".join(f"{bag} ({'shards ' + ', '.join(ids) if ids else others.get(bag, 'not read')})"
                      for bag, ids in shards.items())
    count = sum(len(ids) for ids in shards.values())
    undecodable = any(failure.get("kind") == "undecodable" for failure in failed)
    if undecodable and len(others) == len(shards) and not count:  # running again reads the same frames
        return f"FAILED: {named}: no frame decodes; check the topic's encoding (running again gives the same)"
    return (f"FAILED: {named}: {count} shard(s) not committed. Run the same command again to retry them alone "
            "(committed shards are kept)")
