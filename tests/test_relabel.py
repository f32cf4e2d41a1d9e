"""Labels are derived data: every chunk records the answer matcher's version, `lpt status` warns when a run's
labels are older than the installed matcher, and `lpt relabel` re-grades them without generating anything."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

from builder.answers import MATCHER_VERSION
from builder.cli import main
from builder.importer import import_upstream
from builder.relabel import relabel, stale_labels
from builder.stages import mcq, simple_cot
from builder.runtime import run_with
from builder.store import MATCHER_KEY, RunDir
from helpers import UPSTREAM, ReplayEngine, make_source, small_config


def test_the_authors_generations_keep_every_label(tmp_path):
    run = import_upstream(UPSTREAM, tmp_path / "run")
    before = {s: run.read(s) for s in ("simple_cot", "expansion")}
    assert stale_labels(run) == {}
    counts = relabel(run)
    assert counts["simple_cot"]["rows"] == 400 and counts["expansion"]["rows"] == 1200
    assert all(c["any field changed"] == 0 for c in counts.values())
    for stage, table in before.items():
        assert run.read(stage).equals(table), stage


def _age(run: RunDir, stage: str, edit) -> None:
    """Make the stage's first file look labelled by matcher version 1, its rows changed by ``edit``."""
    path = run.files(stage)[0]
    table = pq.read_table(path)
    rows = [edit(r) for r in table.to_pylist()]
    meta = {**(table.schema.metadata or {}), MATCHER_KEY: b"1"}
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema).replace_schema_metadata(meta), path)


def test_status_warns_and_relabel_regrades_a_hedge_that_an_old_matcher_credited(tmp_path):
    run = RunDir(tmp_path / "run")
    make_source(run, tmp_path, n=3)
    cfg = small_config()
    run_with(mcq.SPEC, run, ReplayEngine(), cfg, progress=False)
    run_with(simple_cot.SPEC, run, ReplayEngine(), cfg, progress=False)
    before = run.read("simple_cot")
    _age(run, "simple_cot", lambda r: r)
    path = run.files("simple_cot")[0]
    rows = pq.read_table(path).to_pylist()
    k = next(i for i, r in enumerate(rows) if r["parsed"] and not r["correct"])
    shown = {key: rows[k][key] for key in ("options", "answer_index", "option_style", "answer_format")}
    gold = "ABCD"[rows[k]["answer_index"]]
    other = "ABCD"[(rows[k]["answer_index"] + 1) % 4]
    response = f"<think> It could be either. </think>\n<answer>({gold}) or ({other})</answer>"
    made = simple_cot.sample_rows(rows[k], shown, [response], system_prompt=rows[k]["system_prompt"],
                                  user_text=rows[k]["user_text"], model=rows[k]["model"], seed=rows[k]["seed"])[0]
    made.update(sample_index=rows[k]["sample_index"], correct=True, pred_index=rows[k]["answer_index"])  # v1's label
    # (a hedge written by the model: as a version-1 run would hold it, credited)
    replaced, rows[k] = rows[k]["sample_id"], made
    table = pq.read_table(path)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema).replace_schema_metadata(table.schema.metadata),
                   path)

    res = CliRunner().invoke(main, ["status", str(run.path)])
    assert "older answer matcher" in res.output and "lpt relabel" in res.output
    data = json.loads(CliRunner().invoke(main, ["status", str(run.path), "--json"]).output)
    assert data["stale_labels"] == {"simple_cot": [1]} and data["matcher_version"] == MATCHER_VERSION

    res = CliRunner().invoke(main, ["relabel", str(run.path)])
    assert res.exit_code == 0, res.output
    after = {r["sample_id"]: r for r in run.read("simple_cot").to_pylist()}
    assert after[made["sample_id"]]["correct"] is False and after[made["sample_id"]]["pred_index"] == -1
    assert stale_labels(run) == {} and "older answer matcher" not in CliRunner().invoke(
        main, ["status", str(run.path)]).output
    assert {r["sample_id"] for r in before.to_pylist()} - set(after) == {replaced}  # nothing else moved
    assert all(v == MATCHER_VERSION for v in run.matcher_versions("simple_cot").values())
