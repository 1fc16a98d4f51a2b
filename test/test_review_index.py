"""The index's review columns, written by mining: ``candidate_id`` (unique, the same when the drive is mined
again), ``mask`` (COCO RLE at the best frame, full-frame pixels), ``reported``, and the regions naming dropped as
rows of their own."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pytest

from clipomaly_ros import Clipomaly, ClipomalyConfig
from clipomaly_ros.tools.mining.plan import plan
from clipomaly_ros.tools.mining.report import ROW_SCHEMA, report_html, summarise, write_index
from clipomaly_ros.tools.mining.shard import candidate_id, mine_shard
from clipomaly_ros.tools.mining.synthetic import Appearance, write_fleet
from clipomaly_ros.tools.review import masks
from clipomaly_ros.tools.review.index import MinedFolderError, load_index

DRIVE = (Appearance("drive_a", "/front/image_raw", "mattress", 1, 4, (120, 150, 200, 200)),
         Appearance("drive_a", "/front/image_raw", "deer", 6, 9, (90, 140, 150, 210)))


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fleet")
    write_fleet(folder, DRIVE, frames=10)
    plans, _ = plan([folder], None, window_s=60.0)
    (only,) = [s for bag in plans for s in bag.shards]
    return only


def pipeline(tmp_path, **settings):
    return Clipomaly(ClipomalyConfig(backend="toy", cache_dir=str(tmp_path / "cache"), **settings))


def test_rows_carry_a_stable_unique_id_and_the_best_frames_mask(shard, tmp_path):
    rows = mine_shard(pipeline(tmp_path), shard).rows
    assert sorted(row["name"] for row in rows) == ["deer", "mattress"]
    assert all(row["reported"] for row in rows)
    assert len({row["candidate_id"] for row in rows}) == len(rows)
    for row in rows:
        mask = masks.decode(row["mask"])
        assert mask.shape == (240, 320) and row["mask"]["size"] == [240, 320]
        x0, y0, x1, y1 = row["box"]
        assert masks.box_of(mask) == (x0, y0, x1 - x0 + 1, y1 - y0 + 1)
    again = mine_shard(pipeline(tmp_path), shard).rows
    assert [row["candidate_id"] for row in again] == [row["candidate_id"] for row in rows]
    table = pa.Table.from_pylist(rows, schema=ROW_SCHEMA)     # the schema holds every column a row has
    assert table.column("mask").type == ROW_SCHEMA.field("mask").type


def test_candidate_ids_stay_when_the_drive_is_mined_again_from_another_path(shard, tmp_path):
    moved = tmp_path / "archive" / "renamed_drive"
    shutil.copytree(shard.bag, moved)                           # the same content, another path and folder name
    plans, _ = plan([moved.parent], None, window_s=60.0)
    (elsewhere,) = [s for bag in plans for s in bag.shards]
    assert elsewhere.bag != shard.bag
    here, there = (mine_shard(pipeline(tmp_path), s).rows for s in (shard, elsewhere))
    assert {"bag_id", "source_path"} <= set(ROW_SCHEMA.names)             # the frame reference in the row itself
    assert sorted(row["candidate_id"] for row in there) == sorted(row["candidate_id"] for row in here)
    assert {row["source_path"] for row in there} == {str(moved)} and {row["bag_id"] for row in there} == {
        row["bag_id"] for row in here}
    # the first stamp, not the best one, which another model or threshold may move to another frame
    assert all(row["candidate_id"] == candidate_id(row["bag_id"], row["topic"], row["track"], row["first_stamp_ns"])
               for row in here)


def test_regions_naming_dropped_are_rows_not_reported(shard, tmp_path):
    (tmp_path / "names.txt").write_text("car\nperson\n")    # nothing but known classes can name the objects
    rows = mine_shard(pipeline(tmp_path, anomaly_vocabulary=(), naming_dictionary=str(tmp_path / "names.txt")),
                      shard).rows
    assert rows and not any(row["reported"] for row in rows)
    assert all(row["candidates"] and row["candidates"][0]["name"] == row["name"] for row in rows)
    assert len(rows) == 2                                      # one chain per object over its frames
    assert {row["first_stamp_ns"] for row in rows} == {1_700_000_000_100_000_000, 1_700_000_000_600_000_000}
    assert all(masks.decode(row["mask"]).sum() > 100 for row in rows)
    out = tmp_path / "mined"
    out.mkdir()
    (out / "thumbnails").mkdir()
    write_index(out, pa.Table.from_pylist(rows, schema=ROW_SCHEMA))
    table = pa.Table.from_pylist(rows, schema=ROW_SCHEMA)
    summary = summarise([], [], {}, [], table, {"mined": 1, "resumed": 0, "frames_per_second": 1.0, "seconds": 1.0,
                                               "ray_startup_s": 0.0, "settings": {}})
    assert (summary["anomalies"], summary["dropped_by_naming"], summary["anomalies_per_name"]) == (0, 2, {})
    assert report_html(table, summary).count('data-reported="false"') == 2
    index = load_index(out)
    assert [index.shown(row)["reported"] for row in index.rows] == [False, False]
    assert np.array_equal(masks.decode(index.rows[0]["mask"]),
                          masks.decode(next(r for r in rows if r["candidate_id"] == index.rows[0]["candidate_id"])[
                              "mask"]))


def test_an_index_partitioned_by_bag_and_content_id_reads_the_id_as_text(tmp_path):
    import pyarrow.dataset as ds
    from review_fixtures import write_mined

    rows = write_mined(tmp_path, count=3, frames=False)
    for row in rows:
        row["bag_id"] = "0123456789012345"                      # digits alone: inferred, it would be a number
    folder = tmp_path / "anomalies.parquet"
    for part in folder.rglob("*.parquet"):
        part.unlink()
    ds.write_dataset(pa.Table.from_pylist(rows, schema=ROW_SCHEMA), folder, format="parquet", existing_data_behavior=
                     "overwrite_or_ignore", partitioning=ds.partitioning(
                         pa.schema([("bag", pa.string()), ("bag_id", pa.string())]), flavor="hive"))
    index = load_index(tmp_path)
    assert {row["bag_id"] for row in index.rows} == {"0123456789012345"} and len(index.rows) == 3


def test_rows_of_shards_mined_by_an_older_version_are_reported(tmp_path):
    import pyarrow.parquet as pq
    from review_fixtures import write_mined

    from clipomaly_ros.tools.mining.report import read_rows

    rows = write_mined(tmp_path, count=4, frames=False)
    older = [name for name in ROW_SCHEMA.names if name not in ("candidate_id", "reported", "mask")]
    for shard, part in (("old", rows[:2]), ("new", rows[2:])):       # a run that resumed an older run's shards
        (tmp_path / "shards" / shard).mkdir(parents=True)
        table = pa.Table.from_pylist(part, schema=ROW_SCHEMA)
        pq.write_table(table.select(older) if shard == "old" else table, tmp_path / "shards" / shard / "rows.parquet")
    write_index(tmp_path, read_rows(tmp_path, ["old", "new"]))
    with pytest.raises(MinedFolderError, match="2 of 4 rows have no candidate_id or mask: .* older version; mine "
                                               "again"):
        load_index(tmp_path)
