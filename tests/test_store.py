"""The run directory: atomic chunk files with their input ids, deterministic merged reads, manifest, errors."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from builder.records import SOURCE
from builder.stages.mcq import SCHEMA as MCQ
from builder.store import INPUT_IDS_KEY, RunDir, StoreError, parse_shard, shard_name


def mcq_rows(image_id: str, n: int, start: int = 0) -> list[dict]:
    return [{"mcq_id": f"{image_id}-{k}", "image_id": image_id, "item_index": k, "question": f"q{k}?",
             "options": ["a", "b"], "answer_text": "a", "answer_index": 0, "question_type": "Recognition",
             "valid": True, "invalid_reason": "", "model": "m", "raw_response": "r", "formatted_response": ""}
            for k in range(start, start + n)]


def table(rows):
    return pa.Table.from_pylist(rows, schema=MCQ)


def test_chunks_record_inputs_and_merge_in_key_order(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.read("mcq").num_rows == 0 and run.read("mcq").schema == MCQ  # empty stage: empty table
    assert run.done_inputs("mcq") == set()
    p1 = run.write_chunk("mcq", table(mcq_rows("img_b", 2) + mcq_rows("img_c", 1)), ["img_b", "img_c", "img_z"],
                         shard=(1, 2))
    p0 = run.write_chunk("mcq", table(mcq_rows("img_a", 3)), ["img_a"], shard="0/2")
    assert p1.name.startswith("shard-1-of-2.chunk-") and p0.name.startswith("shard-0-of-2.chunk-")
    # img_z made no rows but is done; read is ordered by (image_id, item_index), not by file
    assert run.done_inputs("mcq") == {"img_a", "img_b", "img_c", "img_z"}
    t = run.read("mcq")
    assert t.column("image_id").to_pylist() == ["img_a"] * 3 + ["img_b"] * 2 + ["img_c"]
    assert t.column("item_index").to_pylist() == [0, 1, 2, 0, 1, 0]
    assert json.loads(pq.read_schema(p1).metadata[INPUT_IDS_KEY]) == ["img_b", "img_c", "img_z"]
    assert run.counts()["mcq"] == 6
    assert not [p for p in (tmp_path / "r" / "mcq").iterdir() if p.name.startswith(".")]  # no temp left


def test_rewriting_the_same_inputs_replaces_not_duplicates(tmp_path):
    run = RunDir(tmp_path / "r")
    run.write_chunk("mcq", table(mcq_rows("a", 2)), ["a"])
    run.write_chunk("mcq", table(mcq_rows("a", 2)), ["a"])
    assert run.read("mcq").num_rows == 2 and len(run.files("mcq")) == 1


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "r")
    run.write_chunk("mcq", table(mcq_rows("a", 1)), ["a"])

    def boom(t, where, **kw):
        with open(where, "wb") as f:
            f.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        run.write_chunk("mcq", table(mcq_rows("b", 1)), ["b"])
    assert [p.name for p in (tmp_path / "r" / "mcq").iterdir()] == [run.files("mcq")[0].name]
    assert run.done_inputs("mcq") == {"a"}


def test_leftover_temp_files_are_ignored(tmp_path):
    run = RunDir(tmp_path / "r")
    run.write_chunk("mcq", table(mcq_rows("a", 1)), ["a"])
    (tmp_path / "r" / "mcq" / ".tmp-abc.parquet").write_bytes(b"garbage from a killed process")
    assert run.read("mcq").num_rows == 1 and run.done_inputs("mcq") == {"a"}


def test_corrupt_or_foreign_file_is_a_clear_error(tmp_path):
    run = RunDir(tmp_path / "r")
    p = run.write_chunk("mcq", table(mcq_rows("a", 1)), ["a"])
    p.write_bytes(p.read_bytes()[:40])
    with pytest.raises(StoreError, match=rf"{p.name}: unreadable parquet file"):
        run.read("mcq")
    with pytest.raises(StoreError, match=p.name):
        run.done_inputs("mcq")
    p.unlink()
    other = tmp_path / "r" / "mcq" / "shard-0-of-1.chunk-x.parquet"
    pq.write_table(pa.table({"x": [1]}), other)
    with pytest.raises(StoreError, match=r"shard-0-of-1\.chunk-x\.parquet: columns \['x'\]"):
        run.read("mcq")


def test_reading_some_columns(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.read("mcq", ["valid"]).column_names == ["mcq_id", "image_id", "item_index", "valid"]  # empty
    run.write_chunk("mcq", table(mcq_rows("b", 2)), ["b"])
    run.write_chunk("mcq", table(mcq_rows("a", 1)), ["a"])
    t = run.read("mcq", ["valid", "question"])  # and the key and input columns, in schema order
    assert t.column_names == ["mcq_id", "image_id", "item_index", "question", "valid"]
    assert t.equals(run.read("mcq").select(t.column_names))
    with pytest.raises(ValueError, match="no column 'nope'"):
        run.read("mcq", ["nope"])
    pq.write_table(pa.table({"x": [1]}), tmp_path / "r" / "mcq" / "shard-0-of-1.chunk-x.parquet")
    with pytest.raises(StoreError, match=r"shard-0-of-1\.chunk-x\.parquet: columns \['x'\]"):
        run.read("mcq", ["valid"])


def test_wrong_schema_and_empty_chunks_are_refused(tmp_path):
    run = RunDir(tmp_path / "r")
    with pytest.raises(StoreError, match="do not match the stage schema"):
        run.write_chunk("mcq", pa.table({"x": [1]}), ["a"])
    with pytest.raises(ValueError, match="at least one input id"):
        run.write_chunk("mcq", table([]), [])
    with pytest.raises(ValueError, match="unknown stage"):
        run.read("nope")


def test_write_table_replaces_the_stage(tmp_path):
    run = RunDir(tmp_path / "r")
    run.write_chunk("mcq", table(mcq_rows("a", 2)), ["a"])
    run.write_table("mcq", table(mcq_rows("b", 1)))
    assert run.read("mcq").column("image_id").to_pylist() == ["b"]
    assert run.done_inputs("mcq") == {"b"}  # a whole-table write: its rows' inputs count as done
    src = pa.Table.from_pylist([{"image_id": "x", "source": "s", "split": "train", "image_path": "/p",
                                 "description": "d"}], schema=SOURCE)
    run.write_table("source", src)
    assert run.read("source").equals(src) and run.manifest["counts"]["source"] == 1


def test_manifest_merges_and_is_valid_json(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.manifest == {}
    run.update_manifest(models={"mcq": "m1"}, seed=42)
    run.update_manifest(models={"simple_cot": "m2"}, note="x")
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert m["models"] == {"mcq": "m1", "simple_cot": "m2"} and m["seed"] == 42 and m["note"] == "x"
    assert "pyarrow" in m["versions"] and m["created"] <= m["updated"]
    (tmp_path / "r" / "manifest.json").write_text("{oops")
    with pytest.raises(StoreError, match="manifest.json: not valid JSON"):
        run.manifest


def test_shard_parsing():
    assert parse_shard("2/4") == parse_shard("2-of-4") == parse_shard((2, 4)) == (2, 4)
    assert shard_name((0, 1)) == "0-of-1"
    for bad in ("4/4", "x", (1, 0)):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_parquet_bytes_are_deterministic(tmp_path):
    a, b = RunDir(tmp_path / "a"), RunDir(tmp_path / "b")
    pa_, pb = (r.write_chunk("mcq", table(mcq_rows("a", 3)), ["a"]) for r in (a, b))
    assert pa_.name == pb.name and pa_.read_bytes() == pb.read_bytes()
    assert os.path.getsize(pa_) > 0
