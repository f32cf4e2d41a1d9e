"""Hostile round, duplicates: one reader rule. Every reader of a run (status, export, stats, view, relabel, the
stages) goes through :meth:`builder.store.RunDir.chunks`, which takes each input once and refuses a chunk present
under two names, a chunk from another run, and an extra or wrong-typed column the same way: one line naming the
file. ``status`` checks what ``export`` checks; ``import-upstream`` refuses a stage-2 file given twice."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from builder.cli import main
from builder.importer import import_upstream
from builder.records import SOURCE
from builder.store import RunDir, StoreError
from helpers import UPSTREAM, ReplayEngine, make_source, small_config
from builder.runtime import run_with
from builder.stages import mcq

READERS = [("status",), ("export", "{out}", "--only", "raw_mcq", "--only", "sft"), ("stats", "--json"),
           ("relabel",), ("view", "-o", "{out}.html")]


def lpt(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line(res) -> str:
    """The one error line of a refused command (a reader may have said what it reads before)."""
    lines = [line for line in res.output.splitlines() if line.startswith("Error")]
    assert res.exit_code != 0 and len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


def _readers_refuse(run: RunDir, tmp_path, bad_name: str, why: str) -> None:
    """Every reader refuses in one line naming the file and the same reason; nothing is written."""
    for k, reader in enumerate(READERS):
        out = tmp_path / f"out{k}"
        args = [a.format(out=out) for a in reader]
        line = _one_line(lpt(args[0], run.path, *args[1:]))
        assert bad_name in line and why in line, (reader, line)
        assert not out.exists() and not (tmp_path / f"out{k}.html").exists()


@pytest.fixture
def imported(tmp_path) -> RunDir:
    return import_upstream(UPSTREAM, tmp_path / "run")


def test_a_chunk_present_under_two_names_is_refused_by_every_reader_naming_it(imported, tmp_path):
    whole = imported.path / "simple_cot" / "table.parquet"
    copy = imported.path / "simple_cot" / "shard-0-of-1.chunk-copy.parquet"
    shutil.copyfile(whole, copy)
    _readers_refuse(imported, tmp_path, "simple_cot/", "covers too")
    with pytest.raises(StoreError, match="covers too"):
        imported.read("simple_cot")


def test_a_chunk_from_another_run_is_refused_by_status_and_export(tmp_path):
    runs = []
    for name in ("a", "b"):
        run = RunDir(tmp_path / name)
        (tmp_path / f"img-{name}").mkdir()
        rows = make_source(run, tmp_path / f"img-{name}", n=4)
        rows = [{**r, "image_id": f"{name}_{r['image_id']}"} for r in rows]  # another run's images
        run.write_table("source", pa.Table.from_pylist(rows, schema=SOURCE))
        run_with(mcq.SPEC, run, ReplayEngine(), small_config(), progress=False)
        runs.append(run)
    a, b = runs
    foreign = b.files("mcq")[0]
    stray = a.path / "mcq" / ("shard-0-of-1.chunk-from-b" + foreign.suffix)
    shutil.copyfile(foreign, stray)
    for reader in (("status",), ("export", tmp_path / "out")):
        line = _one_line(lpt(reader[0], a.path, *reader[1:]))
        assert stray.name in line and "another run" in line, line


def test_a_stage2_file_given_twice_to_import_upstream_is_refused_in_one_line(tmp_path):
    src = tmp_path / "upstream"
    shutil.copytree(UPSTREAM, src)
    stage2 = sorted(src.glob("stage2_*.jsonl"))[0]
    shutil.copyfile(stage2, src / ("stage2_zz_copy" + stage2.suffix))
    line = _one_line(lpt("import-upstream", src, tmp_path / "run"))
    assert "stage2_zz_copy" in line and stage2.name in line and "given twice" in line, line
    assert not (tmp_path / "run").exists()


def _rewrite(path, change) -> None:
    t = pq.read_table(path)
    pq.write_table(change(t).replace_schema_metadata(t.schema.metadata), path)


@pytest.mark.parametrize("kind, why", [
    ("extra column", "extra column 'mine'"),
    ("wrong type", "column 'item_index' is string"),
])
def test_an_extra_or_wrong_typed_column_is_refused_by_every_reader_naming_the_file(imported, tmp_path, kind, why):
    path = imported.path / "mcq" / "table.parquet"
    if kind == "extra column":
        _rewrite(path, lambda t: t.append_column("mine", pa.array(["x"] * t.num_rows)))
    else:
        _rewrite(path, lambda t: t.set_column(t.schema.get_field_index("item_index"), "item_index",
                                              t.column("item_index").cast(pa.string())))
    _readers_refuse(imported, tmp_path, "mcq/table.parquet", why)


def _split_in_chunks(run: RunDir, stage: str, parts: int) -> list:
    """``stage``'s whole-table file rewritten as ``parts`` chunk files, each covering its own inputs."""
    from builder.stages import TABLES

    whole = run.files(stage)[0]
    t = pq.read_table(whole)
    col = TABLES[stage].input_column
    inputs = sorted(set(t.column(col).to_pylist()))
    whole.unlink()
    out = []
    for k in range(parts):
        mine = inputs[k::parts]
        out.append(run.write_chunk(stage, t.filter(pa.compute.is_in(t.column(col), pa.array(mine))), mine,
                                   shard="0-of-1"))
    return out


def test_ids_that_only_share_a_hash_are_not_a_repeat_and_a_real_copy_is_still_named(imported, monkeypatch):
    """The reader rule holds covered ids as 64-bit hashes; two files whose ids share a hash (here every id of one
    length does: a hash made weak on purpose) are compared in full, so only a real repeat is refused."""
    import numpy as np
    import builder.store as store

    files = _split_in_chunks(imported, "simple_cot", 4)
    assert len(imported.chunks("simple_cot")) == 4
    monkeypatch.setattr(store, "id_hash", lambda ids: pa.compute.utf8_length(ids).to_numpy().astype(np.uint64))
    imported.check()  # every MCQ id covered by one file; the hashes collide across all four files: no error
    assert len(imported.done_hashes("simple_cot")) == 1
    copy = files[1].with_name("shard-0-of-1.chunk-zz-copy.parquet")
    shutil.copyfile(files[1], copy)  # sorts last: the copy is the later file
    first = imported._covered("simple_cot", files[1])[0]  # a chunk lists its inputs sorted
    with pytest.raises(StoreError, match=rf"{copy.name}: covers input '{first}' that {files[1].name} covers too"):
        imported.chunks("simple_cot")
