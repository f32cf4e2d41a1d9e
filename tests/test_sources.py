"""Caption sources: DOCCI (and the paper's 500-image selection) and generic JSONL/CSV/parquet/folder sources,
with every kind of bad input named by file, line and field, strictly or as counted skips."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from builder.records import SOURCE
from builder.sources import (
    Skips,
    SourceError,
    docci_subset,
    load_source,
    parse_spec,
    source_table,
)

SAMPLE = Path(__file__).resolve().parents[1] / "builder" / "data" / "sample"


def _image(path: Path, colour=(200, 30, 30), size=(8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _docci(root: Path, n_train: int = 12, extra: list[str] | None = None) -> Path:
    """A DOCCI-shaped folder: train ids in scrambled file order, a test and a qual_dev row, tiny images."""
    lines = []
    ids = [f"train_{i:05d}" for i in range(n_train)]
    random.Random(7).shuffle(ids)  # the file order must not matter for the subset
    for k, eid in enumerate(ids + ["test_00000", "qual_dev_00000"]):
        split = eid.rsplit("_", 1)[0]
        _image(root / "images" / f"{eid}.jpg", colour=(k * 10 % 255, 100, 50))
        lines.append(json.dumps({"example_id": eid, "split": split, "image_file": f"{eid}.jpg",
                                 "description": f"A photo number {k} with a red object on a table."}))
    (root / "docci_descriptions.jsonlines").write_text("\n".join(lines + (extra or [])) + "\n", encoding="utf-8")
    return root


# ------------------------------------------------------------------------------------------------- DOCCI


def test_docci_subset_equals_the_papers_global_seed_procedure():
    ids = [f"train_{i:05d}" for i in range(9647)]
    random.Random(3).shuffle(ids)
    expected = sorted(ids)
    state = random.getstate()
    try:
        random.seed(42)
        random.shuffle(expected)  # the authors' code: global seed, global shuffle
    finally:
        random.setstate(state)
    assert docci_subset(ids) == expected[:500]
    assert docci_subset(ids, n=500) == docci_subset(list(reversed(ids)), n=500)  # input order does not matter
    assert len(set(docci_subset(ids))) == 500
    assert docci_subset(ids, n=10, seed=1) != docci_subset(ids, n=10)


def test_docci_folder_rows_splits_and_subset(tmp_path):
    root = _docci(tmp_path / "docci")
    rows = list(load_source(root))
    assert len(rows) == 14
    assert {r["source"] for r in rows} == {"docci"}
    assert all(Path(r["image_path"]).is_absolute() and Path(r["image_path"]).exists() for r in rows)
    assert {r["split"] for r in rows} == {"train", "test", "qual_dev"}
    assert len(list(load_source(root, split="test"))) == 1

    train_ids = [r["image_id"] for r in rows if r["split"] == "train"]
    sub = [r["image_id"] for r in load_source(f"docci:{root}", subset=5)]
    assert sub == docci_subset(train_ids, n=5)  # the paper's procedure, in selection order
    assert [r["image_id"] for r in load_source(root, subset=5, limit=2)] == sub[:2]
    # the descriptions file itself is a valid spec too
    assert len(list(load_source(root / "docci_descriptions.jsonlines", split="train"))) == 12
    t = source_table(root, subset=3)
    assert t.schema == SOURCE and t.num_rows == 3


def test_docci_bad_lines_strict_and_skipped(tmp_path):
    extra = ['{"example_id": "train_09000", "split": "train", "image_file": "train_09000.jpg"}',  # no description
             "{not json",
             json.dumps({"example_id": "train_09001", "split": "train", "image_file": "missing.jpg",
                         "description": "x y z"})]
    root = _docci(tmp_path / "docci", n_train=3, extra=extra)
    with pytest.raises(SourceError) as e:
        list(load_source(root))
    msg = str(e.value)
    assert "docci_descriptions.jsonlines" in msg and "line 6" in msg and "'description'" in msg and "missing" in msg

    skips = Skips()
    rows = list(load_source(root, skip_bad=True, skips=skips))
    assert len(rows) == 5 and len(skips) == 3
    text = [str(s) for s in skips.records]
    assert any("line 7" in t and "not valid JSON" in t for t in text)
    assert any("line 8" in t and "'image_file'" in t and "does not exist" in t for t in text)
    assert "3 record(s) skipped" in skips.summary()


# ----------------------------------------------------------------------------------------------- generic


def _records(tmp_path: Path) -> list[dict]:
    _image(tmp_path / "imgs" / "a.png", (255, 0, 0))
    _image(tmp_path / "imgs" / "b.png", (0, 255, 0))
    abs_c = _image(tmp_path / "elsewhere" / "c.png", (0, 0, 255))
    return [{"image": "imgs/a.png", "description": "A red square.", "id": "red"},
            {"image": "imgs/b.png", "description": "A green square."},
            {"image": str(abs_c), "description": "A blue square.", "id": "blue", "split": "test"}]


def _check_generic(rows: list[dict], kind: str, tmp_path: Path) -> None:
    assert rows[0]["image_id"] == "red"
    assert rows[2]["image_id"] == "blue" and rows[2]["split"] == "test"
    assert rows[1]["split"] == "train"
    assert len(rows[1]["image_id"]) == 16  # a content hash of the image bytes
    assert rows[1]["image_path"] == str((tmp_path / "imgs" / "b.png").resolve())
    assert {r["source"] for r in rows} == {kind}


def test_generic_jsonl_csv_parquet(tmp_path):
    recs = _records(tmp_path)
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n", encoding="utf-8")
    with open(tmp_path / "m.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["image", "description", "id", "split"])
        w.writeheader()
        w.writerows(recs)
    pq.write_table(pa.Table.from_pylist([{"id": None, "split": None, **r} for r in recs]), tmp_path / "m.parquet")
    for name, kind in (("m.jsonl", "jsonl"), ("m.csv", "csv"), ("m.parquet", "parquet")):
        rows = list(load_source(tmp_path / name))
        _check_generic(rows, kind, tmp_path)
    ids = {name: [r["image_id"] for r in load_source(tmp_path / name)] for name in ("m.jsonl", "m.csv", "m.parquet")}
    assert ids["m.jsonl"] == ids["m.csv"] == ids["m.parquet"]  # the content hash does not depend on the format
    assert [r["image_id"] for r in load_source(tmp_path / "m.jsonl", split="test")] == ["blue"]
    assert len(list(load_source(tmp_path / "m.jsonl", limit=2))) == 2


def test_folder_with_txt_descriptions_and_folder_with_metadata(tmp_path):
    folder = tmp_path / "pics"
    _image(folder / "cat.jpg")
    (folder / "cat.txt").write_text("A cat.\n", encoding="utf-8")
    _image(folder / "sub" / "dog.png")
    (folder / "sub" / "dog.txt").write_text("A dog.", encoding="utf-8")
    rows = list(load_source(folder))
    assert [(r["image_id"], r["description"], r["source"]) for r in rows] == [
        ("cat", "A cat.", "folder"), ("sub/dog", "A dog.", "folder")]
    # an image without its .txt is named
    _image(folder / "owl.png")
    with pytest.raises(SourceError, match=r"owl\.png.*'description'.*owl\.txt"):
        list(load_source(folder))
    # a folder with a metadata file reads that file (the shipped sample: descriptions.jsonl beside mcqs.jsonl)
    sample = list(load_source(SAMPLE))
    assert len(sample) == 5 and all(60 <= len(r["description"].split()) <= 120 for r in sample)
    assert parse_spec(SAMPLE)[0] == "jsonl"


@pytest.mark.parametrize("record, line_field", [
    ({"description": "no image"}, "'image'"),
    ({"image": "imgs/a.png"}, "'description'"),
    ({"image": "imgs/a.png", "description": "   "}, "'description'"),
    ({"image": "imgs/nope.png", "description": "gone"}, "'image'"),
    ({"image": "imgs/broken.png", "description": "corrupt"}, "'image'"),
    ({"image": "imgs/a.png", "description": "dup", "id": "red"}, "'id'"),
    ({"image": 5, "description": "wrong type"}, "'image'"),
])
def test_every_bad_record_names_file_line_and_field(tmp_path, record, line_field):
    recs = _records(tmp_path)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    lines = [json.dumps(r) for r in recs] + [json.dumps(record)]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(SourceError) as e:
        list(load_source(tmp_path / "m.jsonl"))
    msg = str(e.value)
    assert str(tmp_path / "m.jsonl") in msg and "line 4" in msg and line_field in msg, msg
    skips = Skips()
    rows = list(load_source(tmp_path / "m.jsonl", skip_bad=True, skips=skips))
    assert len(rows) == 3 and len(skips) == 1  # nothing else is lost
    assert skips.records[0].line == 4 and f"'{skips.records[0].field}'" == line_field


def test_bad_csv_and_parquet_rows_are_named(tmp_path):
    recs = _records(tmp_path)
    with open(tmp_path / "m.csv", "w", newline="", encoding="utf-8") as f:
        f.write("image,description,id\n")
        f.write('imgs/a.png,"A red square,\nspanning two lines",red\n')  # a quoted newline: line numbers stay true
        f.write("imgs/nope.png,gone,x\n")
    with pytest.raises(SourceError, match=r"m\.csv, line 4, field 'image'.*does not exist"):
        list(load_source(tmp_path / "m.csv"))
    pq.write_table(pa.Table.from_pylist([{"image": r["image"], "description": r["description"]} for r in recs]
                                        + [{"image": "imgs/a.png", "description": None}]), tmp_path / "m.parquet")
    with pytest.raises(SourceError, match=r"m\.parquet, row 4, field 'description': missing"):
        list(load_source(tmp_path / "m.parquet"))


def test_spec_errors_are_clear(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        list(load_source(tmp_path / "nothing"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(SourceError, match="unknown source file type"):
        list(load_source(tmp_path / "x.txt"))
    (tmp_path / "a.jsonl").write_text("")
    (tmp_path / "b.csv").write_text("image,description\n")
    with pytest.raises(SourceError, match="several metadata files"):
        list(load_source(tmp_path))
    with pytest.raises(SourceError, match="subset"):
        list(load_source(tmp_path / "a.jsonl", subset=3))
    with pytest.raises(SourceError, match="no docci_descriptions"):
        list(load_source(f"docci:{tmp_path}"))
