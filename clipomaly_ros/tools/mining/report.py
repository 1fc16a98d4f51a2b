"""The outputs of a mining run, rebuilt from the committed shards every time: ``anomalies.parquet`` (partitioned by
bag), ``thumbnails/``, ``summary.json`` and ``report.html``. Rebuilding from the shards is what makes an
interrupted and resumed run write exactly what an uninterrupted one writes."""

from __future__ import annotations

import collections
import datetime
import html
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

ROW_SCHEMA = pa.schema([
    ("bag", pa.string()), ("topic", pa.string()), ("shard", pa.string()), ("track", pa.int64()),
    ("first_stamp_ns", pa.int64()), ("last_stamp_ns", pa.int64()), ("best_stamp_ns", pa.int64()),
    ("frames", pa.int64()), ("name", pa.string()),
    ("candidates", pa.list_(pa.struct([("name", pa.string()), ("score", pa.float64())]))),
    ("peak_score", pa.float64()), ("mean_score", pa.float64()), ("box", pa.list_(pa.int64())),
    ("on_road", pa.bool_()), ("distance_m", pa.float64()), ("lateral_m", pa.float64()),
    ("cut_at_start", pa.bool_()), ("cut_at_end", pa.bool_()), ("thumbnail", pa.string()),
    ("tags", pa.list_(pa.string())), ("bag_id", pa.string()), ("source_path", pa.string()),
])
"""One row per anomaly track per shard; docs/mining.md documents every column."""
ROW_SCHEMA = pa.schema(list(ROW_SCHEMA) + [
    ("candidate_id", pa.string()), ("reported", pa.bool_()),
    ("mask", pa.struct([("size", pa.list_(pa.int64())), ("counts", pa.string())])),
])
"""With the review's columns: ``candidate_id`` (stable over runs), ``reported`` (false for a region naming dropped)
and ``mask`` (COCO compressed RLE of the best frame's mask, full-frame pixels)."""


PARTITIONING = ds.partitioning(pa.schema([("bag", pa.string()), ("bag_id", pa.string())]), flavor="hive")
"""``anomalies.parquet/bag=<name>/bag_id=<content id>/``: two bags of one folder name never share a partition."""


def committed_shards(out_dir: Path, damaged: list | None = None) -> dict[str, dict]:
    """The committed shards in ``OUT_DIR/shards`` by id: each one's ``shard.json``. A committed folder whose
    ``shard.json`` or ``rows.parquet`` is missing, empty or does not parse (a disk that lost a write) is left out,
    and ``(id, reason)`` appended to ``damaged`` when given."""
    folder = Path(out_dir) / "shards"
    if not folder.is_dir():
        return {}
    found = {}
    for entry in sorted(folder.iterdir()):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        try:
            record = json.loads((entry / "shard.json").read_text())
            pq.read_metadata(entry / "rows.parquet")
        except (OSError, ValueError, pa.ArrowException) as error:
            if damaged is not None:
                damaged.append((entry.name, f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"))
            continue
        found[entry.name] = record
    return found


def read_rows(out_dir: Path, shard_ids) -> pa.Table:
    """The rows of the given committed shards, in a stable order (bag, topic, first stamp, track)."""
    tables = [pq.read_table(Path(out_dir) / "shards" / shard / "rows.parquet", schema=ROW_SCHEMA)
              for shard in sorted(shard_ids)]
    table = pa.concat_tables(tables) if tables else ROW_SCHEMA.empty_table()
    return table.sort_by([("bag", "ascending"), ("topic", "ascending"), ("first_stamp_ns", "ascending"),
                          ("track", "ascending")])


def write_index(out_dir: Path, table: pa.Table, run_id: str = "") -> None:
    """``anomalies.parquet``: a Parquet dataset partitioned by bag name and content id (:data:`PARTITIONING`),
    written into a staging folder of this run (``run_id``) and put in place whole."""
    target = Path(out_dir) / "anomalies.parquet"
    staging = Path(out_dir) / f".anomalies.parquet.{run_id or 'new'}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        if table.num_rows:
            ds.write_dataset(table, staging, format="parquet", partitioning=PARTITIONING,
                             basename_template="part-{i}.parquet")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    os.rename(staging, target)


def write_staged(path: Path, text: str, run_id: str) -> None:
    """``text`` into ``path`` through a staging file of this run (``run_id``), flushed and renamed into place: a
    reader sees the old file or the new one, never a part. A failed write leaves no staging file behind."""
    staging = path.with_name(f".{path.name}.{run_id}")
    try:
        with staging.open("w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.rename(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def read_index(out_dir: Path) -> pa.Table:
    """``anomalies.parquet`` read back, with its ``bag`` and ``bag_id`` columns, sorted as :func:`read_rows` sorts."""
    folder = Path(out_dir) / "anomalies.parquet"
    if not any(folder.rglob("*.parquet")):
        return ROW_SCHEMA.empty_table()
    table = ds.dataset(folder, format="parquet", partitioning=PARTITIONING).to_table()
    table = table.select(ROW_SCHEMA.names).cast(ROW_SCHEMA)
    return table.sort_by([("bag", "ascending"), ("topic", "ascending"), ("first_stamp_ns", "ascending"),
                          ("track", "ascending")])


def copy_thumbnails(out_dir: Path, shard_ids) -> None:
    """``thumbnails/<shard>-<track>.jpg`` from the committed shards (hard links where the filesystem allows)."""
    target = Path(out_dir) / "thumbnails"
    target.mkdir(exist_ok=True)
    for shard in shard_ids:
        for source in (Path(out_dir) / "shards" / shard / "thumbnails").glob("*.jpg"):
            destination = target / source.name
            if destination.exists():
                continue
            try:
                os.link(source, destination)
            except OSError:
                shutil.copyfile(source, destination)


def summarise(plans, input_problems, records: dict[str, dict], shard_failures: list[dict], table: pa.Table,
              run: dict) -> dict:
    """``summary.json``'s content: bags (those of this run's plan, then those only earlier runs committed), frames,
    hours, anomalies per name, what failed and why, what was cut short, and the speed."""
    failed = [{"path": path, "reason": reason} for path, reason in input_problems]
    failed += [{"bag": plan.name, "path": plan.path, "reason": plan.failure} for plan in plans if plan.failure]
    failed += shard_failures
    bags, covered = [], set()
    for plan in plans:
        if plan.failure:
            continue
        mine = [records[s.id] for s in plan.shards if s.id in records]
        covered.update(s.id for s in plan.shards)
        bags.append(_bag_entry(plan.name, plan.path, list(plan.topics), plan.seconds, len(plan.shards), mine))
    earlier: dict[str, list[dict]] = {}
    for shard_id, record in records.items():
        if shard_id not in covered:
            earlier.setdefault(record["shard"].get("bag_id") or record["shard"]["bag"], []).append(record)
    for mine in (earlier[key] for key in sorted(earlier)):
        shards = [record["shard"] for record in mine]
        path = shards[0]["bag"]
        seconds = sum(shard["stop_ns"] - shard["start_ns"] for shard in shards) / 1e9 / max(
            1, len({shard["topic"] for shard in shards}))
        bags.append(_bag_entry(shards[0]["bag_name"], path, sorted({shard["topic"] for shard in shards}), seconds,
                               len(mine), mine) | {"earlier_run": True})
    truncated = [{"bag": record["shard"]["bag_name"], "shard": shard_id, "topic": record["shard"]["topic"],
                  "reason": record.get("truncated") or record.get("failure")}
                 for shard_id, record in sorted(records.items()) if record.get("truncated") or record.get("failure")]
    reported = [flag is not False for flag in table.column("reported").to_pylist()]  # null: mined before the column
    names = collections.Counter(name for name, flag in zip(table.column("name").to_pylist(), reported) if flag)
    return {
        "bags": len(bags), "bags_failed": len({f.get("path") for f in failed}),
        "frames": sum(b["frames"] for b in bags), "frames_skipped": sum(b["frames_skipped"] for b in bags),
        "hours": round(sum(b["seconds"] for b in bags) / 3600, 6),
        "anomalies": sum(reported), "dropped_by_naming": len(reported) - sum(reported),
        "anomalies_per_name": dict(sorted(names.items(), key=lambda kv: (-kv[1], kv[0]))),
        "shards": {"planned": sum(len(p.shards) for p in plans), "committed": len(records),
                   "committed_of_plan": len(covered & set(records)), "from_earlier_runs": len(records) - len(
                       covered & set(records)), "failed": len(shard_failures),
                   "mined_this_run": run["mined"], "resumed": run["resumed"]},
        "frames_per_second": run["frames_per_second"], "seconds": run["seconds"],
        "ray_startup_s": run["ray_startup_s"],
        "settings": run["settings"], "failed": failed, "truncated": truncated, "per_bag": bags,
    }


def _bag_entry(name: str, path: str, topics: list[str], seconds: float, planned: int, mine: list[dict]) -> dict:
    return {"bag": name, "path": path, "topics": topics, "seconds": round(seconds, 3),
            "shards": planned, "shards_committed": len(mine),
            "frames": sum(r["frames_processed"] for r in mine),
            "frames_skipped": sum(r["frames_skipped"] for r in mine),
            "frames_thinned": sum(r.get("frames_thinned", 0) for r in mine)}


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>clipomaly: anomalies mined</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; background: #fafafa; color: #222; }}
header {{ display: flex; gap: 1em; align-items: center; flex-wrap: wrap; margin-bottom: 1em; }}
#gallery {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 12px; }}
.card {{ background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 6px; }}
.card img {{ width: 100%; height: 160px; object-fit: contain; background: #333; }}
.card h3 {{ margin: 4px 0; font-size: 1em; }} .card p {{ margin: 2px 0; font-size: 0.85em; }}
.cut {{ color: #a60; }}
</style></head>
<body>
<h1>Anomalies mined from {bags} bag(s), {duration} of data</h1>
<p>{anomalies} anomaly tracks, sorted by peak score. Generated by clipomaly mine.</p>
<header>
<label>name <select id="name"><option value="">all</option>{options}</select></label>
<label>on the road <select id="road"><option value="">any</option><option value="true">on the road</option>
<option value="false">off the road</option></select></label>
<label>kind <select id="reported"><option value="true">reported by the node</option>
<option value="false">dropped by naming</option><option value="">both</option></select></label>
<label>search <input id="search" type="search" placeholder="name, bag or topic"></label>
<span id="count"></span>
</header>
<div id="gallery">
{cards}
</div>
<script>
const controls = ["name", "road", "search", "reported"].map(id => document.getElementById(id));
function apply() {{
  const [name, road, search, reported] = controls.map(c => c.value.toLowerCase());
  let shown = 0;
  for (const card of document.querySelectorAll(".card")) {{
    const ok = (!name || card.dataset.name === name) && (!road || card.dataset.road === road)
      && (!search || card.dataset.text.includes(search)) && (!reported || card.dataset.reported === reported);
    card.style.display = ok ? "" : "none";
    shown += ok;
  }}
  document.getElementById("count").textContent = shown + " shown";
}}
controls.forEach(c => ["input", "change"].forEach(kind => c.addEventListener(kind, apply)));
apply();
</script>
</body></html>
"""


def stamp_text(stamp_ns: int) -> str:
    """A header stamp as UTC date and time to the millisecond."""
    moment = datetime.datetime.fromtimestamp(stamp_ns // 1_000_000_000, datetime.timezone.utc)
    return f"{moment:%Y-%m-%d %H:%M:%S}.{stamp_ns // 1_000_000 % 1000:03d} UTC"


def report_html(table: pa.Table, summary: dict) -> str:
    """A static page (no server, no network) with a gallery of every track sorted by peak score: its thumbnail,
    name, score, bag, topic, stamp, road and distance; filters by name, road and kind (reported by the node, the
    default, or dropped by naming) and a search box."""
    rows = sorted(table.to_pylist(), key=lambda r: (-r["peak_score"], r["bag"], r["best_stamp_ns"]))
    cards = []
    for row in rows:
        road = "" if row["on_road"] is None else str(bool(row["on_road"])).lower()
        where = "" if row["distance_m"] is None else f"{row['distance_m']:.1f} m ahead, {row['lateral_m']:+.1f} m left"
        cut = " ".join(word for word, flag in (("cut at start", row["cut_at_start"]), ("cut at end", row["cut_at_end"]))
                       if flag)
        text = f"{row['name']} {row['bag']} {row['topic']}".lower()
        cards.append(
            f'<div class="card" data-name="{html.escape(row["name"].lower())}" data-road="{road}" '
            f'data-reported="{str(row.get("reported") is not False).lower()}" '
            f'data-text="{html.escape(text)}">'
            f'<img src="{html.escape(row["thumbnail"])}" alt="{html.escape(row["name"])}">'
            f'<h3>{html.escape(row["name"])} {row["peak_score"]:.2f}</h3>'
            f'<p>{html.escape(row["bag"])} {html.escape(row["topic"])}</p>'
            f'<p>{stamp_text(row["best_stamp_ns"])}, {row["frames"]} frames'
            + (f', {"on" if road == "true" else "off"} the road' if road else "") + "</p>"
            + (f"<p>{where}</p>" if where else "") + (f'<p class="cut">{cut}</p>' if cut else "") + "</div>")
    options = "".join(f'<option value="{html.escape(n.lower())}">{html.escape(n)} ({c})</option>'
                      for n, c in summary["anomalies_per_name"].items())
    hours = summary["hours"]
    duration = f"{hours:.2f} h" if hours >= 1 else f"{hours * 60:.1f} min"
    return PAGE.format(bags=summary["bags"], duration=duration, anomalies=summary["anomalies"],
                       options=options, cards="\n".join(cards))
