"""The check's tables, made from its JSONL file alone (so that a killed run's rows rebuild them): the text table
printed at the end and by ``--table``, and the Markdown table for docs/measurements.md (``--markdown``)."""

from __future__ import annotations

import json
from pathlib import Path

TABLE_BEGIN = "<!-- gpu-check table: begin (written by scripts/gpu_check.py --markdown) -->"
TABLE_END = "<!-- gpu-check table: end -->"
NOT_FINISHED = "not finished: the run ended before this row did"


def read_jsonl(path: Path) -> tuple[dict, list[dict], int]:
    """The plan record, the row records in order, and how many lines could not be read (a line a kill cut
    short). Refuses a file without a plan record, in one line."""
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
            plan = record
        elif record.get("kind") == "row":
            rows.append(record)
    if plan is None:
        raise ValueError(f"{path} holds no plan record: it was not written by the gpu check")
    return plan, rows, unreadable


def every_row(plan: dict, rows: list[dict]) -> list[dict]:
    """One record per planned row, in the plan's order: its last record, or one saying it did not finish."""
    finished = {row["row"]: row for row in rows}
    return [finished.get(planned["name"], {"kind": "row", "row": planned["name"], "status": "not run",
                                           "reason": NOT_FINISHED}) for planned in plan["rows"]]


def excused(plan: dict, row: dict) -> bool:
    """A CUDA-only row on a machine without CUDA: the rehearsal marks it and does not count it."""
    return plan["device"] == "cpu" and row["status"] == "not run" and row.get("reason") == "no CUDA"


def verdict(plan: dict, rows: list[dict]) -> tuple[bool, str]:
    """Whether every planned row passed ("not run" is no pass; on a CPU the CUDA-only rows are excused), and the
    line that says so."""
    complete = every_row(plan, rows)
    failing = [row["row"] for row in complete if row["status"] != "ok" and not excused(plan, row)]
    excused_count = sum(excused(plan, row) for row in complete)
    if failing:
        return False, f"gpu check FAILED: {len(failing)} of {len(complete)} rows did not pass ({', '.join(failing)})"
    if plan["device"] == "cpu":
        return True, (f"gpu check rehearsal passed on the CPU: {len(complete) - excused_count} rows ok, "
                      f"{excused_count} not run: no CUDA (this is no GPU pass)")
    return True, f"gpu check passed: all {len(complete)} rows ok"


def header(plan: dict, rows: list[dict]) -> str:
    found = next((row.get("versions") for row in rows if row.get("versions")), None)
    if found is None:
        machine = "versions not recorded (the versions row did not finish)"
    else:
        machine = ", ".join(f"{name} {value}" for name, value in found.items() if name != "GPU")
        machine = f"GPU {found['GPU']}; {machine}"
    return (f"clipomaly gpu check, {plan['started']}, device {plan['device']}: {machine}; {plan['model']} with random "
            f"weights, {plan['size']} frames")


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


__all__ = ["read_jsonl", "every_row", "verdict", "text_table", "markdown_table", "write_into_markdown",
           "TABLE_BEGIN", "TABLE_END", "NOT_FINISHED"]
