"""A fourth stage registered from one file (tests/stage4_rewrite.py): resume, shards, the Ray runner, status, and
its rows as the long thoughts of the sets."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.engines.base import Engine, Sample
from builder.pipeline import generate, status_rows
from builder.stages import STAGES, get_stage, table_for, unregister
from builder.store import RunDir
from helpers import make_source, small_config

REPLAY = [f"stage{k}.engine=helpers:ReplayEngine" for k in (1, 2, 3)]


class RewriteEngine(Engine):
    """REPLAY engine (not a model) for the rewrite: the thought, upper-cased."""

    name = "rewrite-replay"

    def generate(self, requests, *, progress=False):
        return [[Sample(r.messages[-1]["content"].split("\n\n", 1)[1].upper(), "stop")] * r.params.n
                for r in requests]


@pytest.fixture
def stage4():
    module = importlib.import_module("stage4_rewrite")
    if module.SPEC not in STAGES:  # registered on first import; again after an earlier test took it out
        from builder.stages import register

        register(module.SPEC)
    yield module
    unregister(module.NAME)


def _config(**over):
    return small_config().apply_overrides(REPLAY + ["stage4.engine=test_stage4:RewriteEngine", "chunk_size=3"])


def _run(tmp_path, name: str) -> RunDir:
    run = RunDir(tmp_path / name)
    make_source(run, tmp_path, n=6)
    generate(run, _config(), [get_stage(k) for k in (1, 2, 3)], progress=False, echo=lambda s: None)
    return run


def test_a_fourth_stage_runs_resumes_and_takes_over_its_role(tmp_path, stage4):
    assert table_for("long_thought") == "rewrite" and get_stage(4) is stage4.SPEC
    run = _run(tmp_path, "run")
    kept = [r["expansion_id"] for r in run.read("expansion").to_pylist() if r["keep"]]
    [summary] = generate(run, _config(), [stage4.SPEC], progress=False, echo=lambda s: None)
    rows = run.read("rewrite").to_pylist()
    assert sorted(r["source_expansion_id"] for r in rows) == sorted(kept) and len(run.files("rewrite")) >= 2
    assert all(r["long_thought"].isupper() and r["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" for r in rows)
    assert summary.counts["items_in"] == len(kept) and summary.counts["items_already_done"] == 0
    [again] = generate(run, _config(), [stage4.SPEC], progress=False, echo=lambda s: None)  # resume: nothing left
    assert again.counts["items_already_done"] == again.counts["items_in"] == len(kept)
    assert run.manifest["models"]["rewrite"] == stage4.RewriteSettings().model
    status = {r["stage"]: r for r in status_rows(run)}
    assert status["rewrite"]["progress"]["complete"] and status["rewrite"]["rows"] == len(kept)


def test_a_fourth_stage_in_shards_equals_one_run(tmp_path, stage4):
    one, two = _run(tmp_path, "one"), _run(tmp_path, "two")
    generate(one, _config(), [stage4.SPEC], progress=False, echo=lambda s: None)
    for i in range(2):
        generate(two, _config(), [stage4.SPEC], shard=(i, 2), progress=False, echo=lambda s: None)
    assert two.read("rewrite").equals(one.read("rewrite"))
    assert {p.name.split(".")[0] for p in two.files("rewrite")} == {"shard-0-of-2", "shard-1-of-2"}


def test_the_cli_loads_the_stage_with_plugin_and_reports_it(tmp_path, stage4):
    from builder.cli import main

    run = _run(tmp_path, "run")
    overrides = [a for s in ["stage4.engine=test_stage4:RewriteEngine", "chunk_size=3"] for a in ("--set", s)]
    res = CliRunner().invoke(main, ["--plugin", "stage4_rewrite", "stage4", str(run.path), "-q", *overrides])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["--plugin", "stage4_rewrite", "status", str(run.path), "--json"])
    assert res.exit_code == 0, res.output
    stages = {r["stage"]: r for r in json.loads(res.output)["stages"]}
    assert stages["rewrite"]["progress"]["complete"] and stages["rewrite"]["rows"] > 0


def test_its_rows_are_the_long_thoughts_of_sft(tmp_path, stage4):
    from builder.assemble import AssembleOptions, table

    run = _run(tmp_path, "run")
    generate(run, _config(), [stage4.SPEC], progress=False, echo=lambda s: None)
    rewrites = {r["expansion_id"]: r["long_thought"] for r in run.read("rewrite").to_pylist()}
    sft = table(run, "sft", AssembleOptions(sft_ratio=1.0, sft_balance=False)).to_pylist()
    expanded = [r for r in sft if r["expansion_id"]]
    assert expanded and all(r["expansion_id"] in rewrites for r in expanded)
    assert all(rewrites[r["expansion_id"]] in r["messages"][-1]["content"] for r in expanded)


def test_its_rows_reach_the_exported_sft(tmp_path, stage4):
    """The export builds sft from the sets, which read the long thoughts by role."""
    import pyarrow.parquet as pq

    from builder.export import export

    run = _run(tmp_path, "run")
    generate(run, _config(), [stage4.SPEC], progress=False, echo=lambda s: None)
    rewrites = set(r["expansion_id"] for r in run.read("rewrite").to_pylist())
    out = tmp_path / "out"
    export(run.path, out, embed_images=False, configs=["sft"])
    files = sorted(out.rglob("*.parquet"))
    sft = [r for p in files if "sft" in str(p) for r in pq.read_table(p).to_pylist()]
    assert sft and {r["expansion_id"] for r in sft if r.get("expansion_id")} <= rewrites


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_a_fourth_stage_on_the_ray_runner_writes_the_local_files(tmp_path, stage4, monkeypatch):
    from builder.ray_runner import RayRunner

    tests = Path(__file__).resolve().parent  # the workers import the project and the stage's module from here
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tests.parent), str(tests)]))
    local, remote = _run(tmp_path, "local"), _run(tmp_path, "ray")
    generate(local, _config(), [stage4.SPEC], progress=False, echo=lambda s: None)
    with RayRunner(num_cpus=2, log_to_driver=False, object_store_memory=500 * 1024 * 1024) as runner:
        generate(remote, _config(), [stage4.SPEC], progress=False, echo=lambda s: None, runner=runner)
    assert [p.read_bytes() for p in remote.files("rewrite")] == [p.read_bytes() for p in local.files("rewrite")]


def test_an_installed_package_registers_its_stage_by_entry_point(stage4, monkeypatch):
    from builder.stages import PLUGIN_GROUP, load_stage_plugins

    unregister(stage4.NAME)
    point = importlib.metadata.EntryPoint(name="rewrite", value="stage4_rewrite:SPEC", group=PLUGIN_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [point] if group == PLUGIN_GROUP else [])
    assert load_stage_plugins() == ["rewrite"] and table_for("long_thought") == "rewrite"
    assert load_stage_plugins() == []  # once


def test_the_viewer_shows_its_long_thoughts(tmp_path, stage4):
    from builder.view import write_html

    run = _run(tmp_path, "run")
    generate(run, _config(), [stage4.SPEC], progress=False, echo=lambda s: None)
    page = write_html(run.path, tmp_path / "view.html", images=False).read_text(encoding="utf-8")
    assert "LOOKING AGAIN" in page  # the rewrites (upper-cased) are shown as the run's long thoughts
    assert "looking again, the description says" not in page  # not stage 3's, which they took over from


def test_the_readme_shows_this_stage_file_and_nothing_else():
    """README's "Extend: add a stage" is this file, to the letter (so the example cannot drift from the test)."""
    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Extend: add a stage"):]
    head = "```python\n# stage4_rewrite.py\n"
    start = section.index(head) + len(head)
    assert section[start:section.index("```", start)] == (Path(__file__).parent / "stage4_rewrite.py").read_text()


def test_the_viewer_counts_a_stage_that_took_over_a_role_in_its_summary_boxes(tmp_path, stage4):
    """The page's summary boxes take the three role tables in order (not by the names stage 3 has)."""
    from builder.view import collect

    run = _run(tmp_path, "run")
    generate(run, _config(), [stage4.SPEC], progress=False, echo=lambda s: None)
    counts = collect(run.path, images=False)["meta"]["counts"]
    assert list(counts) == ["mcq", "simple_cot", "rewrite"] and counts["rewrite"]["rows"] > 0
    script = (Path(__file__).resolve().parents[1] / "builder" / "data" / "viewer" / "viewer.js").read_text()
    assert "Object.values(META.counts" in script and "c.expansion" not in script
