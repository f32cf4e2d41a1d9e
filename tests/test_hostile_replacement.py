"""Hostile round, replacement: nothing replaced holds something the project did not write. ``export --overwrite``,
``import-upstream --overwrite`` and ``demo`` never remove a folder that holds a run, the input, or any file or
folder (empty ones and links included) the project did not write; the refusal names what would have gone."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from builder.cli import main
from builder.demo import run_demo
from builder.importer import import_upstream
from builder.store import RunDir
from helpers import UPSTREAM


def lpt(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def _tree(folder) -> list[str]:
    """Every entry (files, folders, links) under ``folder``, with a file's bytes and a link's target."""
    out = []
    for p in sorted(folder.rglob("*")):
        what = (f"-> {p.readlink()}" if p.is_symlink() else p.read_bytes().hex() if p.is_file() else "/")
        out.append(f"{p.relative_to(folder)} {what}")
    return out


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> RunDir:
    return import_upstream(UPSTREAM, tmp_path_factory.mktemp("imp") / "run")


@pytest.mark.parametrize("overwrite", [False, True])
def test_export_into_the_folder_holding_the_run_refuses_and_keeps_the_run(tmp_path, overwrite):
    parent = tmp_path / "parent"
    run = import_upstream(UPSTREAM, parent / "run")
    before = _tree(parent)
    res = lpt("export", run.path, parent, "--only", "mcq", *(["--overwrite"] if overwrite else []))
    assert res.exit_code == 1 and "holds the run directory" in res.output, res.output
    assert _tree(parent) == before and run.read("mcq").num_rows > 0


@pytest.mark.parametrize("kind, overwrite", [("empty folder", False), ("empty folder", True),
                                             ("link to a folder", False), ("link to a folder", True),
                                             ("link to a file", True)])
def test_an_out_holding_an_empty_folder_or_a_link_of_the_users_is_never_replaced(imported, tmp_path, kind, overwrite):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_text("mine")
    {"empty folder": lambda: (out / "mine").mkdir(),
     "link to a folder": lambda: (out / "mine").symlink_to(elsewhere, target_is_directory=True),
     "link to a file": lambda: (out / "mine").symlink_to(elsewhere / "notes.txt")}[kind]()
    before, kept = _tree(out), _tree(elsewhere)
    res = lpt("export", imported.path, out, "--only", "mcq", *(["--overwrite"] if overwrite else []))
    assert res.exit_code == 1 and "mine" in res.output and "did not write" in res.output, res.output
    assert _tree(out) == before and _tree(elsewhere) == kept


def test_an_out_that_is_a_link_is_never_replaced(imported, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "out").symlink_to(real, target_is_directory=True)
    res = lpt("export", imported.path, tmp_path / "out", "--only", "mcq", "--overwrite")
    assert res.exit_code == 1 and "is a link" in res.output, res.output
    assert (tmp_path / "out").is_symlink() and list(real.iterdir()) == []


def test_export_overwrite_replaces_an_earlier_export_of_its_own(imported, tmp_path):
    out = tmp_path / "out"
    assert lpt("export", imported.path, out, "--only", "mcq").exit_code == 0
    assert lpt("export", imported.path, out, "--only", "raw_mcq", "--overwrite").exit_code == 0
    report = json.loads((out / "export_report.json").read_text())
    assert set(report["configs"]) == {"raw_mcq"} and not (out / "mcq").exists()


@pytest.mark.parametrize("kind", ["file", "empty folder", "link"])
def test_import_overwrite_never_removes_what_a_run_does_not_write(tmp_path, kind):
    run = import_upstream(UPSTREAM, tmp_path / "run")
    {"file": lambda: (run.path / "notes.md").write_text("mine"),
     "empty folder": lambda: (run.path / "simple_cot" / "mine").mkdir(),
     "link": lambda: (run.path / "mine").symlink_to(tmp_path, target_is_directory=True)}[kind]()
    before = _tree(run.path)
    res = lpt("import-upstream", UPSTREAM, run.path, "--overwrite")
    assert res.exit_code == 1 and "which a run does not write" in res.output, res.output
    assert ("notes.md" if kind == "file" else "mine") in res.output
    assert _tree(run.path) == before
    for p in (run.path / "notes.md", run.path / "simple_cot" / "mine", run.path / "mine"):  # once it is gone ...
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.is_dir():
            p.rmdir()
    assert lpt("import-upstream", UPSTREAM, run.path, "--overwrite").exit_code == 0  # ... the run is replaced
    assert run.read("mcq").num_rows > 0 and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_import_overwrite_never_removes_its_own_input(tmp_path):
    run = import_upstream(UPSTREAM, tmp_path / "run")
    src = run.path / "upstream"  # the input, kept (by a user) inside the run it is imported into
    shutil.copytree(UPSTREAM, src)
    shutil.rmtree(src / "__pycache__", ignore_errors=True)
    before = _tree(src)
    res = lpt("import-upstream", src, run.path, "--overwrite")
    assert res.exit_code == 1 and "holds the input" in res.output, res.output
    assert _tree(src) == before


def test_demo_never_removes_a_file_of_the_users_in_its_run(tmp_path):
    out = tmp_path / "D"
    run = RunDir(out / "run")
    run.update_manifest(demo=True)  # an earlier demo's run ...
    (run.path / "mcq").mkdir()
    (run.path / "mcq" / "my-notes.txt").write_text("mine")  # ... where the user put a file
    before = _tree(out)
    with pytest.raises(FileExistsError, match="my-notes.txt"):
        run_demo(out, tiny=True, export=False, progress=False, dataset=tmp_path / "dataset")
    assert _tree(out) == before


def test_demo_never_overwrites_a_summary_it_did_not_write(tmp_path):
    out = tmp_path / "D"
    out.mkdir()
    (out / "summary.json").write_text("my own summary")
    with pytest.raises(FileExistsError, match="summary.json"):
        run_demo(out, tiny=True, export=False, progress=False, dataset=tmp_path / "dataset")
    assert (out / "summary.json").read_text() == "my own summary" and not (out / "run").exists()


def test_demo_export_never_removes_a_file_of_the_users_in_an_earlier_demo_export(imported, tmp_path):
    from builder.demo import _export

    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "run_manifest.json").write_text(json.dumps({"demo": True}))  # an earlier demo's export ...
    (dataset / "mine").mkdir()
    (dataset / "mine" / "thesis.tex").write_text("precious")  # ... with the user's work in it
    result = _export(imported, dataset)
    assert "error" in result or result["skipped"], result
    assert (dataset / "mine" / "thesis.tex").read_text() == "precious"
