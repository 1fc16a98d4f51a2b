"""The check's driver. The parent prints the plan, runs each row in a process of its own under the row's time
limit, appends the row's record to the JSONL file the moment it ends (flushed and synced, so a kill keeps it),
prints it, and ends with the table made from that file. A row's process (``--child``) runs one row and writes its
record; it ends itself when its parent is gone."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .plan import CPU_TIME_SCALE, PLAN_BUDGET_S, Row, plan_rows, row_by_name
from .rows import Settings, run_row
from .tables import markdown_table, read_jsonl, text_table, verdict, write_into_markdown

REPO = Path(__file__).resolve().parents[3]
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""What ``timeout``, Ctrl-C and a closed terminal send: the current row is recorded as killed, then the table."""


class Stopped(Exception):
    """A signal asked the check to stop (``timeout`` sends TERM): the current row is recorded as killed."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpu_check.py", description="Every runtime, precision and layout of the "
                                     "model side on this machine, one row at a time, each under its own limit.")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (the rehearsal: the tiny ViT, a few "
                        "frames, the CUDA-only rows recorded 'not run: no CUDA')")
    parser.add_argument("--model", help="open_clip architecture (default ViT-B-16; on cpu clipomaly-tiny-vit)")
    parser.add_argument("--frames", type=int, help="frames timed per row at most (default 50; on cpu 3)")
    parser.add_argument("--size", default="1280x720", help="frame size WIDTHxHEIGHT (default 1280x720)")
    parser.add_argument("--window-size", type=int, help="window side in pixels (default: the model's; on cpu 128, "
                        "where the tiny ViT's 16 patches a window would leave SC-CLIP's outlier factor a tie)")
    parser.add_argument("--budget-s", type=float, help=f"the whole plan's time budget (default {PLAN_BUDGET_S:.0f} "
                        "s, times --time-scale)")
    parser.add_argument("--time-scale", type=float, help="every row's budget times this (default 1; on cpu "
                        f"{CPU_TIME_SCALE:g})")
    parser.add_argument("--only", default="", help="comma-separated row names: run only these (to rerun a few)")
    parser.add_argument("--jsonl", type=Path, help="where the rows go as they finish (default "
                        "gpu-check.jsonl in --out)")
    parser.add_argument("--out", type=Path, help="folder for the JSONL, each row's log and gpu_check.md (default "
                        "$OUT where it is set, else gpu_check_out)")
    parser.add_argument("--cache-dir", type=Path, help="ONNX exports and TensorRT engines, shared by the rows and "
                        "kept for the next run (default: cache in --out)")
    parser.add_argument("--markdown", type=Path, help="also write the table into this Markdown file between its "
                        "gpu-check markers (docs/measurements.md)")
    parser.add_argument("--table", type=Path, metavar="JSONL", help="print the table of this JSONL file (a finished "
                        "or a killed run's) and exit: 0 if every planned row passed")
    parser.add_argument("--wheels", type=Path, help="folder of wheels to unpack where a module is missing "
                        "(default .gpu-wheels; read by scripts/gpu_check.py before anything is imported)")
    for hidden in ("--child", "--settings", "--result"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    cpu = args.device == "cpu"
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size {args.size!r} is not WIDTHxHEIGHT (e.g. 1280x720)") from None
    window = args.window_size if args.window_size is not None else (128 if cpu and not args.model else 0)
    cache = args.cache_dir or args.out / "cache"  # one for every row and every run: exports, TensorRT engines
    cache.mkdir(parents=True, exist_ok=True)
    return Settings(device=args.device, model=args.model or ("clipomaly-tiny-vit" if cpu else "ViT-B-16"),
                    size=(width, height), frames=args.frames or (3 if cpu else 50), window_size=window,
                    cache_dir=str(cache), repo=str(REPO))


def startup_problem(device: str) -> str:
    """Why the check cannot start here, in one line, or "": a torch without what ``compile`` needs, no CUDA."""
    import torch

    from ...core.model.runtimes import compile_features_missing

    missing = compile_features_missing()
    if missing:
        return missing
    if device != "cpu" and not torch.cuda.is_available():
        return (f"no CUDA device here (torch {torch.__version__}): run with DEVICE=cpu (--device cpu) for the CPU "
                "rehearsal")
    return ""


class RowLog:
    """The JSONL file: one record a line, appended (a run after another, e.g. a rerun of a few rows, keeps the
    earlier rows: the table merges them), each flushed and synced to disk as it is written, with the stop signals
    held back meanwhile so that a TERM never cuts a record short."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            with open(self.path, "a") as stream:
                stream.write(json.dumps(record) + "\n")
                stream.flush()
                os.fsync(stream.fileno())
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)


def child_environment() -> dict:
    """This process's environment with its import path (the repository, unpacked wheels) for a row's process."""
    paths = [str(REPO)] + [p for p in sys.path if p and Path(p).name == ".gpu-site"]
    inherited = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths + ([inherited] if inherited else []))}


def row_command(row: Row, settings: Settings, result: Path, deadline: float) -> list[str]:
    """The command that runs ``row`` alone and writes its record to ``result``; ``deadline`` is the parent's
    ``time.monotonic()`` (one clock for every process here) at which it kills the row, so that the row's own
    reserve for its comparisons counts the time its imports took."""
    return [sys.executable, "-m", "clipomaly_ros.tools.gpu_check", "--child", row.name, "--settings",
            json.dumps(dataclasses.asdict(settings)), "--result", str(result), "--deadline", f"{deadline:.3f}"]


def run_in_process(row: Row, settings: Settings, limit_s: float, out: Path) -> dict:
    """``row`` in a process of its own, killed (with what it started) after ``limit_s`` seconds."""
    slug = row.name.replace(" ", "-").replace("/", "-")
    result, log = out / "rows" / f"{slug}.json", out / "rows" / f"{slug}.log"
    result.parent.mkdir(parents=True, exist_ok=True)
    progress = Path(f"{result}.progress")
    result.unlink(missing_ok=True)
    progress.unlink(missing_ok=True)
    deadline = time.monotonic() + limit_s
    with open(log, "w") as stream:
        process = subprocess.Popen(row_command(row, settings, result, deadline), stdout=stream,
                                   stderr=subprocess.STDOUT, cwd=REPO, env=child_environment(),
                                   start_new_session=True)
        try:
            code = process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill_group(process)
            # what the row had measured before it was killed (load, warm-up, timing), and where it was
            reached = json.loads(progress.read_text()) if progress.is_file() else {}
            reached.pop("problems", None)
            stage = f", {reached.pop('stage')}" if "stage" in reached else ""
            return {**reached, "status": "FAIL",
                    "reason": f"timed out after {limit_s:.0f} s{stage} (log rows/{log.name})"}
        except BaseException:  # stopped by a signal (Stopped): the row's processes go with the check
            kill_group(process)
            raise
    if result.is_file():
        return json.loads(result.read_text())
    last = (log.read_text().strip().splitlines() or ["no output"])[-1][:300]
    return {"status": "FAIL", "reason": f"its process exited with {code} and no record: {last} (log rows/{log.name})"}


def kill_group(process: subprocess.Popen) -> None:
    """Kill a row's process and everything it started (its own session), and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def plan_record(rows: tuple[Row, ...], settings: Settings, scale: float, budget_s: float, rerun: bool) -> dict:
    """The run's first record. ``rerun``: a few rows (``--only``), merged into the run before it by the table."""
    return {"kind": "plan", "rerun": rerun, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "device": settings.device, "model": settings.model, "size": "x".join(map(str, settings.size)),
            "frames": settings.frames, "time_scale": scale, "budget_s": budget_s,
            "rows": [{**row.as_dict(), "budget_s": row.budget_s * scale} for row in rows]}


def print_plan(plan: dict, jsonl: Path) -> None:
    print(f"gpu check plan on {plan['device']}: {len(plan['rows'])} rows, {plan['budget_s']:.0f} s in all "
          f"({plan['model']}, {plan['size']}); rows go to {jsonl} as they finish", flush=True)
    for row in plan["rows"]:
        cuda_only = "  (needs CUDA)" if row["cuda_only"] else ""
        print(f"  {row['name']:<30}{row['budget_s']:>6.0f} s{cuda_only}", flush=True)


def run_plan(rows: tuple[Row, ...], settings: Settings, plan: dict, log: RowLog, out: Path) -> None:
    """Each row in turn, recorded and printed as it ends; a stop signal (handled by :func:`stop`) records the
    current row as killed, then stops (:class:`Stopped`)."""
    deadline = time.monotonic() + plan["budget_s"]
    for row, planned in zip(rows, plan["rows"]):
        started = time.monotonic()
        left = deadline - started
        if row.cuda_only and not settings.cuda:
            record = {"status": "not run", "reason": "no CUDA"}
        elif left < 5:
            record = {"status": "not run", "reason": f"no time left of the {plan['budget_s']:.0f} s budget"}
        else:
            try:
                record = run_in_process(row, settings, min(planned["budget_s"], left), out)
            except Stopped as stopped:
                log.write(row_record(row, {"status": "FAIL", "reason": f"killed by {stopped} during this row"},
                                     started))
                raise
        record = row_record(row, record, started)
        log.write(record)
        print(f"[{record['elapsed_s']:>5.0f} s] {row.name}: {record['status']}"
              + (f": {record['reason']}" if record.get("reason") else ""), flush=True)


def stop(signum, frame):
    """The stop signals' handler: from now on they are ignored (a second TERM while the killed row and the table
    are written would lose them), and the check stops."""
    for each in STOP_SIGNALS:
        signal.signal(each, signal.SIG_IGN)
    raise Stopped(signum)


def row_record(row: Row, record: dict, started: float) -> dict:
    return {"kind": "row", "row": row.name, "layout": row.layout, "runtime": row.runtime,
            "precision": row.precision, **record, "elapsed_s": round(time.monotonic() - started, 1)}


def finish(jsonl: Path, out: Path, markdown: Path | None) -> int:
    """The table from the JSONL file (printed, in ``out``/gpu_check.md, and into ``markdown``) and the exit code
    (:func:`.tables.verdict`: 0 only if every planned row passed)."""
    plan, rows, unreadable = read_jsonl(jsonl)
    print(text_table(plan, rows, unreadable), flush=True)
    table = markdown_table(plan, rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.md").write_text(table)
    if markdown is not None:
        write_into_markdown(markdown, table)
    return verdict(plan, rows)[0]


def watch_parent() -> None:
    """End this row's process and what it started when the check that started it is gone (killed)."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="gpu-check-parent-watch", daemon=True).start()


def child_main(args: argparse.Namespace) -> int:
    watch_parent()
    values = json.loads(args.settings)
    settings = Settings(**{**values, "size": tuple(values["size"])})
    record = run_row(row_by_name(args.child), settings, args.deadline,
                     lambda reached: write_atomically(Path(f"{args.result}.progress"), reached))
    write_atomically(Path(args.result), record)
    return 0


def write_atomically(path: Path, record: dict) -> None:
    """``record`` as JSON at ``path``, whole or not at all (a kill mid-write leaves the former file)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record))
    partial.replace(path)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    args.out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "gpu_check_out")
    try:
        if args.table:
            return finish(args.table, args.out, args.markdown)
        rows, settings = plan_rows(args.only), settings_from(args)
    except (ValueError, OSError) as error:
        print(f"gpu check: {error}", file=sys.stderr)
        return 2
    scale = args.time_scale or (CPU_TIME_SCALE if not settings.cuda else 1.0)
    plan = plan_record(rows, settings, scale, args.budget_s or PLAN_BUDGET_S * scale, rerun=bool(args.only))
    jsonl = args.jsonl or args.out / "gpu-check.jsonl"
    log = RowLog(jsonl)
    log.write(plan)  # first, so that even a refused start leaves its plan and why in the folder copied back
    problem = startup_problem(args.device)
    if problem:
        log.write({"kind": "refused", "reason": problem})
        print(f"gpu check: {problem}", file=sys.stderr)
        return 2
    print_plan(plan, jsonl)
    previous = {each: signal.signal(each, stop) for each in STOP_SIGNALS}
    try:
        run_plan(rows, settings, plan, log, args.out)
        return finish(jsonl, args.out, args.markdown)
    except Stopped as stopped:
        print(f"gpu check: stopped by {stopped}; the rows that finished are in {jsonl}", file=sys.stderr, flush=True)
        finish(jsonl, args.out, None)
        return 128 + stopped.signum
    finally:
        for each, handler in previous.items():
            signal.signal(each, handler)


__all__ = ["main", "parse_args", "startup_problem", "REPO"]
