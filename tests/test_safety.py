"""Nothing lost, nobody in: each test is one item of the run-directory safety issue, and each failed on the code
before it (export deleting what it did not write, silently incomplete shards, no lock, hostile settings and ids,
bad input that stopped everything or said nothing useful)."""

from __future__ import annotations

import errno
import io
import json
import os
import stat
from pathlib import Path

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pytest
from click.testing import CliRunner
from PIL import Image

from builder.atomic import TMP_PREFIX
from builder.cli import error_line, main
from builder.settings import load_config
from builder.engines import load_engine
from builder.export import ExportError, export, image_file_name
from builder.importer import import_upstream
from builder.pipeline import generate, incomplete_stages, status_rows
from builder.records import SOURCE
from builder.sources import SourceError, Skips, load_source
from builder.stages import mcq
from builder.runtime import IncompleteInput, run_with
from builder.store import RunDir, StoreError
from helpers import UPSTREAM, ReplayEngine, make_source, small_config


def lpt(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> RunDir:
    return import_upstream(UPSTREAM, tmp_path_factory.mktemp("imp") / "run")


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ export


def test_export_refuses_an_out_holding_files_it_did_not_write(imported, tmp_path):
    out = tmp_path / "out"
    (out / "sft").mkdir(parents=True)
    (out / "README.md").write_text("my notes")
    (out / "sft" / "keep.txt").write_text("mine")
    before = _tree(out)
    res = lpt("export", imported.path, out, "--only", "mcq")
    assert res.exit_code == 1 and "did not write" in res.output and "README.md" in res.output
    assert _tree(out) == before  # nothing touched
    res = lpt("export", imported.path, out, "--only", "mcq", "--overwrite")  # nor with --overwrite (issue 18)
    assert res.exit_code == 1 and "did not write" in res.output
    assert _tree(out) == before


@pytest.mark.parametrize("inside", ["", "sub"])
def test_export_into_its_own_run_is_refused_and_the_run_is_intact(imported, tmp_path, inside):
    before = _tree(imported.path)
    res = lpt("export", imported.path, imported.path / inside if inside else imported.path)
    assert res.exit_code == 1 and "inside the run directory" in res.output
    assert _tree(imported.path) == before


def test_export_of_a_non_run_over_an_export_keeps_the_export(imported, tmp_path):
    out = tmp_path / "out"
    export(imported.path, out, configs=["mcq", "raw_mcq"])
    before = _tree(out)
    (tmp_path / "not-a-run").mkdir()
    with pytest.raises(Exception):
        export(tmp_path / "not-a-run", out, configs=["mcq", "raw_mcq"])
    assert _tree(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left beside it


def test_export_adds_configs_to_its_own_earlier_export_and_an_empty_config_removes_nothing_foreign(imported, tmp_path):
    out = tmp_path / "out"
    export(imported.path, out, configs=["mcq"])
    export(imported.path, out, configs=["raw_mcq"])
    report = json.loads((out / "export_report.json").read_text())
    assert set(report["configs"]) == {"mcq", "raw_mcq"} and (out / "mcq").is_dir()
    assert "mcq/train-00000-of-00001.parquet" in report["files"]


def test_llamafactory_image_names_stay_inside_out(tmp_path):
    run = RunDir(tmp_path / "run")
    ids = ["../../../escape", "a/b", "plain"]
    rows = []
    for k, image_id in enumerate(ids):
        img = tmp_path / f"i{k}.png"
        Image.new("RGB", (40, 30), (k * 60, 90, 200)).save(img)
        rows.append({"image_id": image_id, "source": "t", "split": "train", "image_path": str(img),
                     "description": "red and blue things"})
    run.write_table("source", pa.Table.from_pylist(rows, schema=SOURCE))
    run_with(mcq.SPEC, run, ReplayEngine(), small_config(), progress=False)
    export(run.path, tmp_path / "lf", fmt="llamafactory", configs=None)
    written = [p.resolve() for p in (tmp_path / "lf").rglob("*.jpg")]
    assert len(written) == 3 and all((tmp_path / "lf" / "images").resolve() in p.parents for p in written)
    assert not (tmp_path / "escape.jpg").exists()
    assert image_file_name("a/b") != image_file_name("a_b")  # the hash keeps ids apart


def test_llamafactory_without_images_refuses(imported, tmp_path):
    with pytest.raises(ExportError, match="LLaMA-Factory records point at image files"):
        export(imported.path, tmp_path / "lf", fmt="llamafactory")
    assert not (tmp_path / "lf").exists()


# ------------------------------------------------------------------------------------------------ import


def test_import_upstream_refuses_a_non_empty_run(imported, tmp_path):
    run = tmp_path / "run"
    import_upstream(UPSTREAM, run)
    (run / "mcq" / "extra.txt").write_text("x")
    res = lpt("import-upstream", UPSTREAM, run)
    assert res.exit_code == 1 and "not empty" in res.output and (run / "mcq" / "extra.txt").exists()
    res = lpt("import-upstream", UPSTREAM, run, "--overwrite")  # a file a run does not write is never removed
    assert res.exit_code == 1 and "extra.txt" in res.output and (run / "mcq" / "extra.txt").exists()
    (run / "mcq" / "extra.txt").unlink()
    assert lpt("import-upstream", UPSTREAM, run, "--overwrite").exit_code == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    res = lpt("import-upstream", "--example", other, "--overwrite")
    assert res.exit_code == 1 and "not a run directory" in res.output and (other / "thesis.tex").exists()


# -------------------------------------------------------------------------------------------- sharding


REPLAY = [f"stage{k}.engine=helpers:ReplayEngine" for k in (1, 2, 3)]  # the REPLAY engine by module:Class


def _sharded(tmp_path: Path, name: str) -> tuple[RunDir, object]:
    run = RunDir(tmp_path / name)
    make_source(run, tmp_path, n=8)
    return run, small_config().apply_overrides(REPLAY)


def test_a_stage_never_starts_on_an_incomplete_input_and_shards_merge_to_the_whole(tmp_path):
    whole, cfg = _sharded(tmp_path, "whole")
    generate(whole, cfg, progress=False, echo=lambda s: None)
    run, cfg = _sharded(tmp_path, "sharded")
    with pytest.raises(IncompleteInput, match=r"stage1 \(mcq\) has covered \d+ of its 8 inputs.*shard 1/2"):
        generate(run, cfg, shard=(0, 2), progress=False, echo=lambda s: None)
    assert run.has("mcq") and not run.has("simple_cot")  # shard 0 did its stage 1 and stopped there
    assert incomplete_stages(run)
    with pytest.raises(ExportError, match="not complete"):
        export(run.path, tmp_path / "out", configs=["mcq"])
    rows = {r["stage"]: r for r in status_rows(run)}
    assert rows["mcq"]["progress"]["complete"] is False and set(rows["mcq"]["progress"]["shards"]) == {"0/2", "1/2"}
    with pytest.raises(IncompleteInput):  # shard 1: stage 1, stage 2; stage 3 waits for shard 0's stage 2
        generate(run, cfg, shard=(1, 2), progress=False, echo=lambda s: None)
    generate(run, cfg, shard=(0, 2), progress=False, echo=lambda s: None)  # stage 2 and 3 of shard 0
    generate(run, cfg, shard=(1, 2), progress=False, echo=lambda s: None)  # stage 3 of shard 1
    assert not incomplete_stages(run)
    for stage in ("mcq", "simple_cot", "expansion"):
        assert run.read(stage).equals(whole.read(stage)), stage


def test_every_shard_of_a_stage_uses_the_same_count(tmp_path):
    run, cfg = _sharded(tmp_path, "run")
    run_with(mcq.SPEC, run, ReplayEngine(), cfg, shard=(0, 2), progress=False)
    with pytest.raises(StoreError, match="written in 2 shards"):
        run_with(mcq.SPEC, run, ReplayEngine(), cfg, shard=(0, 3), progress=False)


# ----------------------------------------------------------------------------------------------- locks


def test_a_second_writer_of_a_shard_gets_a_clear_error(tmp_path):
    run, cfg = _sharded(tmp_path, "run")
    with run.lock("shard-0-of-1"):
        with pytest.raises(StoreError, match=rf"being written by pid {os.getpid()}"):
            run_with(mcq.SPEC, run, ReplayEngine(), cfg, progress=False)
    run_with(mcq.SPEC, run, ReplayEngine(), cfg, progress=False)  # free again once the holder is gone


def test_readers_never_take_an_inputs_rows_twice(tmp_path):
    run, cfg = _sharded(tmp_path, "run")
    run_with(mcq.SPEC, run, ReplayEngine(), cfg, chunk_size=8, progress=False)
    clean = run.read("mcq")
    twice = ["img_000", "img_001"]  # a second writer (an older version had no lock) redid two inputs
    table = clean.filter(pa.compute.is_in(clean.column("image_id"), pa.array(twice)))
    extra = run.write_chunk("mcq", table, twice, shard="0-of-1")
    with pytest.raises(StoreError, match=r"covers input 'img_000' that .* covers too"):  # one rule: refused, named
        run.read("mcq")
    extra.unlink()
    assert run.read("mcq").equals(clean)


# ------------------------------------------------------------------------------------------- resuming


def test_resume_after_a_template_edit_is_refused(tmp_path):
    from builder.prompts import BUILTIN_DIR

    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "mcq_generation.j2").write_text((BUILTIN_DIR / "mcq_generation.j2").read_text())
    run, _ = _sharded(tmp_path, "run")
    cfg = small_config().apply_overrides([f"template_dir={templates}"])
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_with(mcq.SPEC, run, ReplayEngine(fail_after=2), cfg, chunk_size=2, progress=False)  # after one chunk
    (templates / "mcq_generation.j2").write_text((BUILTIN_DIR / "mcq_generation.j2").read_text() + "\nBe brief.")
    with pytest.raises(StoreError, match=r"differ in \['templates'\]"):
        run_with(mcq.SPEC, run, ReplayEngine(), cfg, chunk_size=2, progress=False)


def test_orphaned_temp_files_are_removed_and_files_follow_the_umask(tmp_path):
    run, cfg = _sharded(tmp_path, "run")
    (run.path / "mcq").mkdir()
    orphan = run.path / "mcq" / f"{TMP_PREFIX}shard-0-of-1-abc.parquet"
    orphan.write_bytes(b"half a chunk")
    old = os.umask(0o022)
    try:
        run_with(mcq.SPEC, run, ReplayEngine(), cfg, progress=False)
    finally:
        os.umask(old)
    assert not orphan.exists()
    modes = {stat.S_IMODE(p.stat().st_mode) for p in run.files("mcq") + [run.manifest_path]}
    assert modes == {0o644}


# ----------------------------------------------------------------------------------------- nobody in


def test_a_module_class_engine_must_be_an_engine(tmp_path, capfd):
    for kind, why in (("os:system", "is not an engine"), ("builtins:print", "cannot be found"),
                      ("no_such_module_lpt:X", "cannot be found"), ("builder.engines:Nope", "defines no class 'Nope'")):
        with pytest.raises(ValueError, match=why):
            load_engine(kind, "echo pwned")
    assert "pwned" not in capfd.readouterr().out
    settings = tmp_path / "s.yaml"
    settings.write_text('stage1: {engine: "os:system", model: "echo pwned"}\n')
    run, _ = _sharded(tmp_path, "run")
    res = lpt("stage1", run.path, "--config", settings)
    assert res.exit_code == 1 and "is not an engine" in res.output and "Traceback" not in res.output


def test_credentials_are_refused_in_settings():
    with pytest.raises(ValueError, match="engine_options: api_key: a key that names a credential"):
        load_config(overrides=["stage1.engine_options={api_key: sk-123}"])
    load_config(overrides=["stage2.engine_options={max_num_batched_tokens: 8192}"])  # not a credential


# ----------------------------------------------------------------------------------------- bad input


def test_a_truncated_jpeg_is_caught_when_the_source_is_read(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 200, 30)).save(buf, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    Image.new("RGB", (30, 20)).save(tmp_path / "ok.jpg")
    lines = [{"image": "cut.jpg", "description": "a green field"}, {"image": "ok.jpg", "description": "black"}]
    (tmp_path / "src.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    with pytest.raises(SourceError, match=r"src\.jsonl.*line 1.*'image'.*cut\.jpg"):
        list(load_source(str(tmp_path / "src.jsonl")))
    skips = Skips()
    assert len(list(load_source(str(tmp_path / "src.jsonl"), skip_bad=True, skips=skips))) == 1 and len(skips) == 1


def test_a_non_utf8_byte_is_one_named_record_and_a_bom_is_fine(tmp_path):
    Image.new("RGB", (30, 20)).save(tmp_path / "a.png")
    good = json.dumps({"image": "a.png", "description": "fine"}).encode()
    (tmp_path / "src.jsonl").write_bytes(good + b"\n" + b'{"image": "a.png", "description": "caf\xe9"}\n' + good
                                         .replace(b"fine", b"also fine").replace(b"a.png", b"a.png", 1) + b"\n")
    with pytest.raises(SourceError, match=r"src\.jsonl.*line 2.*UTF-8"):
        list(load_source(str(tmp_path / "src.jsonl")))
    (tmp_path / "b.csv").write_bytes("\ufeffimage,description\na.png,a black square\n".encode("utf-8"))
    rows = list(load_source(str(tmp_path / "b.csv")))
    assert rows and rows[0]["description"] == "a black square"


@pytest.mark.parametrize("override, message", [
    ("stage2.n=-3", "stage2.n must be at least 1"), ("stage3.n=0", "stage3.n must be at least 1"),
    ("stage2.temperature=-1", "stage2.temperature must be at least 0"), ("stage2.top_p=5", "stage2.top_p must be in"),
    ("stage2.max_pixels=0", "stage2.max_pixels must be at least 784"), ("chunk_size=0", "chunk_size must be at least 1"),
])
def test_settings_out_of_range_are_refused_when_loaded(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(overrides=[override])


def test_errors_are_one_line_with_v_for_the_traceback(tmp_path):
    run, _ = _sharded(tmp_path, "run")
    res = lpt("stage1", run.path, "--engine", "transformers", "--set", f"stage1.model={tmp_path / 'no-model'}")
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert res.exit_code == 1 and "Traceback" not in res.output and res.output.rstrip().endswith(errors[0])
    assert errors == [f"Error: model {tmp_path / 'no-model'}: no such folder or file (a local model path must exist; "
                      f"a Hub id looks like org/name)"]
    res = CliRunner().invoke(main, ["-v", "stage1", str(run.path), "--engine", "transformers", "--set",
                                    f"stage1.model={tmp_path / 'no-model'}"])
    assert res.exit_code == 1 and res.exception is not None  # -v: the exception itself, with its traceback
    src = tmp_path / "up"
    src.mkdir()
    for f in UPSTREAM.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    with open(src / "stage2_qwen2.5-vl-7b_simple_cots.jsonl", "a") as f:
        f.write("[1, 2]\n")
    res = lpt("import-upstream", src, tmp_path / "run2")
    assert res.exit_code == 1 and "stage2_qwen2.5-vl-7b_simple_cots.jsonl: line 41" in res.output
    assert "not a JSON object" in res.output
    loop = tmp_path / "loop"
    loop.mkdir()
    (loop / "mcq_generation.j2").write_text('{% include "mcq_generation.j2" %}')
    res = lpt("stage1", run.path, "--engine", "transformers", "--set", f"template_dir={loop}", "--set",
              "stage1.engine=builder.engines.base:Engine")
    assert res.exit_code == 1 and "Traceback" not in res.output
    for e in (OSError(errno.ENOSPC, "No space left on device", "/data/run/mcq/x.parquet"),
              PermissionError(errno.EROFS, "Read-only file system", "/data/run/manifest.json")):
        line = error_line(e)
        assert e.filename in line and e.strerror in line and "\n" not in line
