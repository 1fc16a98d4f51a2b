"""The check's tables, made from its JSONL file alone (so that a killed run's rows rebuild them): the text table
printed at the end and by ``--table``, and the Markdown table for docs/measurements.md (``--markdown``)."""

from __future__ import annotations

import json
from pathlib import Path

TABLE_BEGIN = "<!-- gpu-check table: begin (written by scripts/gpu_check.py --markdown) -->"
TABLE_END = "<!-- gpu-check table: end -->"
NOT_FINISHED = "not finished: the run ended before this row did"


REHEARSAL_EXIT = 3
"""The exit code of a CPU rehearsal whose only rows that did not pass are the CUDA-only ones ("not run: no
CUDA"): no failure found, and no pass either (0 is for a run in which every planned row passed)."""
SAME_RUN = ("device", "model", "size")
"""A rerun (``--only``) merges into the run before it in the same file only where these settings are equal."""


def read_jsonl(path: Path) -> tuple[dict, list[dict], int]:
    """The plan, the row records in order, and how many lines could not be read (a line a kill cut short).

    A file may hold several runs, each starting with its plan record: a rerun of a few rows (``--only``, its plan
    marked ``rerun``) on the same settings is merged into the run before it (the planned rows are the union, a
    row's latest record counts); any other plan starts the table anew. Refuses a file without a plan record, in
    one line."""
    plan, rows, unreadable = None, [], 0
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            unreadable += 1
            continue
        if record.get("kind") == "plan":
            plan, rows = merged_plan(plan, record, rows)
        elif record.get("kind") == "refused" and plan is not None:
            plan["refused"] = record.get("reason", "")
        elif record.get("kind") == "row":
            rows.append(record)
    if plan is None:
        raise ValueError(f"{path} holds no plan record: it was not written by the gpu check")
    return plan, rows, unreadable


def merged_plan(plan: dict | None, record: dict, rows: list[dict]) -> tuple[dict, list[dict]]:
    """The plan after ``record`` (a plan record) and the rows that still count."""
    if plan is None or not record.get("rerun") or any(plan.get(k) != record.get(k) for k in SAME_RUN):
        return {**record, "runs": 1}, []
    names = {row["name"] for row in plan["rows"]}
    added = [row for row in record["rows"] if row["name"] not in names]
    plan = {**plan, "rows": plan["rows"] + added, "runs": plan["runs"] + 1, "rerun_started": record["started"]}
    plan.pop("refused", None)
    return plan, rows


def every_row(plan: dict, rows: list[dict]) -> list[dict]:
    """One record per planned row, in the plan's order: its last record, or one saying it did not finish."""
    finished = {row["row"]: row for row in rows}
    return [finished.get(planned["name"], {"kind": "row", "row": planned["name"], "status": "not run",
                                           "reason": NOT_FINISHED}) for planned in plan["rows"]]


def excused(plan: dict, row: dict) -> bool:
    """A CUDA-only row on a machine without CUDA: the rehearsal marks it and does not count it as a failure."""
    return plan["device"] == "cpu" and row["status"] == "not run" and row.get("reason") == "no CUDA"


def verdict(plan: dict, rows: list[dict]) -> tuple[int, str]:
    """The exit code and the line that says it: 0 only if every planned row passed ("not run" is no pass);
    :data:`REHEARSAL_EXIT` for a CPU rehearsal whose only other rows are its CUDA-only ones, not run; 2 for a
    check that refused to start; else 1."""
    if plan.get("refused"):
        return 2, f"gpu check refused to start: {plan['refused']}"
    complete = every_row(plan, rows)
    failing = [row["row"] for row in complete if row["status"] != "ok" and not excused(plan, row)]
    excused_count = sum(excused(plan, row) for row in complete)
    if failing:
        return 1, f"gpu check FAILED: {len(failing)} of {len(complete)} rows did not pass ({', '.join(failing)})"
    if excused_count:
        return REHEARSAL_EXIT, (f"gpu check rehearsal: {len(complete) - excused_count} rows ok, {excused_count} rows "
                                f"not run: no CUDA (exit {REHEARSAL_EXIT}: no failure found, and no GPU pass)")
    return 0, f"gpu check passed: all {len(complete)} rows ok"


def header(plan: dict, rows: list[dict]) -> str:
    found = next((row.get("versions") for row in rows if row.get("versions")), None)
    if found is None:
        machine = "versions not recorded (the versions row did not finish)"
    else:
        machine = ", ".join(f"{name} {value}" for name, value in found.items() if name != "GPU")
        machine = f"GPU {found['GPU']}; {machine}"
    runs = f" (rows rerun {plan['rerun_started']}: {plan['runs']} runs merged)" if plan.get("runs", 1) > 1 else ""
    return (f"clipomaly gpu check, {plan['started']}{runs}, device {plan['device']}: {machine}; {plan['model']} with "
            f"random weights, {plan['size']} frames")


def _figure(row: dict, key: str, digits: int = 1) -> str:
    value = row.get(key)
    return "-" if value is None else f"{value:.{digits}f}"


def _cells(row: dict) -> list[str]:
    """row, status, p50 ms, p99 ms, 1 / 8 cameras ms, first frame ms, dense cosine, crop cosine, names, what ran or
    why it failed."""
    naming = row.get("naming") or {}
    cameras = row.get("cameras") or {}
    names = (f"{'equal' if naming['names_equal'] else 'DIFFER'} ({naming['crops_decided']}/{naming['crops']}, "
             f"ring waits {naming['staging_waits']})" if naming else "-")
    dense = _figure(row, "cosine_vs_fp32", 6) if "cosine_vs_fp32" in row else (
        "reference" if row.get("frames") else "-")
    status = row["status"] + (f": {row['reason']}" if row.get("reason") else "")
    detail = row.get("ran_on") or row.get("detail") or ""
    for extra in ("typing", "note"):
        if row.get(extra):
            detail += f"; {row[extra]}"
    return [row["row"], _figure(row, "ms_per_frame"), _figure(row, "p99_ms"),
            " / ".join(str(cameras.get(k, "-")) for k in ("1", "8")) if cameras else "-",
            _figure(row, "first_frame_ms", 0), dense, _figure({"c": naming.get("crop_cosine_min")}, "c", 6), names,
            f"{status}" + (f" [{detail}]" if detail else "")]


COLUMNS = ("row", "p50 ms", "p99 ms", "1 / 8 cams ms", "first ms", "dense cos", "crop cos", "names", "status [ran on]")


def text_table(plan: dict, rows: list[dict], unreadable: int = 0) -> str:
    complete = [_cells(row) for row in every_row(plan, rows)]
    widths = [max(len(column), *(len(cells[i]) for cells in complete)) for i, column in enumerate(COLUMNS[:-1])]
    lines = [header(plan, rows), "  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)) + "  " + COLUMNS[-1]]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)) + "  " + cells[-1] for cells in complete]
    if unreadable:
        lines.append(f"note: {unreadable} line(s) of the JSONL could not be read (cut short by a kill)")
    lines.append(verdict(plan, rows)[1])
    return "\n".join(lines)


def markdown_table(plan: dict, rows: list[dict]) -> str:
    """The table for docs/measurements.md's GPU section."""
    lines = [f"{header(plan, rows)}: {verdict(plan, rows)[1]}.", "",
             "| " + " | ".join(COLUMNS) + " |", "| --- |" + " ---: |" * 5 + " --- | --- | --- |"]
    for row in every_row(plan, rows):
        cells = [cell.replace("|", "/") for cell in _cells(row)]
        lines.append(f"| {cells[0]} | " + " | ".join(cells[1:]) + " |")
    return "\n".join(lines) + "\n"


def write_into_markdown(page: Path, table: str) -> None:
    """Replace what lies between ``page``'s gpu-check markers by ``table``."""
    text = page.read_text()
    if TABLE_BEGIN not in text or TABLE_END not in text:
        raise ValueError(f"{page} has no gpu-check markers ({TABLE_BEGIN} ... {TABLE_END}): add them where the "
                         "table belongs")
    before, rest = text.split(TABLE_BEGIN, 1)
    after = rest.split(TABLE_END, 1)[1]
    page.write_text(f"{before}{TABLE_BEGIN}\n{table}{TABLE_END}{after}")


__all__ = ["read_jsonl", "every_row", "verdict", "text_table", "markdown_table", "write_into_markdown", "TABLE_BEGIN",
           "TABLE_END", "NOT_FINISHED", "REHEARSAL_EXIT"]
