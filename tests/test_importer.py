"""The authors' published raw generations import as a run, relabelled with our rules (offline, real files)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from builder.answers import grade, parse_thought
from builder.importer import ImportError_, first_bad_word, import_upstream, parse_qwen_prompt

UPSTREAM = Path(__file__).resolve().parents[2] / "shared/reference/upstream-example-outputs"
if not UPSTREAM.is_dir():  # the checkout may sit elsewhere; the reference copy is at /work/shared
    UPSTREAM = Path("/work/shared/reference/upstream-example-outputs")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return import_upstream(UPSTREAM, tmp_path_factory.mktemp("run") / "upstream")


def _jsonl(name):
    return [json.loads(l) for l in (UPSTREAM / name).read_text().splitlines() if l.strip()]


def test_every_stage_is_written_with_its_schema(run):
    from builder.records import STAGE_SCHEMAS

    for stage, schema in STAGE_SCHEMAS.items():
        table = run.read(stage)
        assert table.schema.names == schema.names, stage
    assert run.read("source").num_rows == 5
    assert run.read("mcq").num_rows == 40
    assert run.read("simple_cot").num_rows == 400  # 40 MCQs x 10 samples
    assert run.read("expansion").num_rows == 1200  # 400 simple CoTs x 3 continuations


def test_gold_answers_agree_with_the_authors_label_turns(run):
    """Our gold index (from the MCQ's answer text, located in the shown options) is what the authors'
    own label turn names, for every prompt; labels of samples are re-graded by answers.grade."""
    by_prompt = {}
    for r in run.read("simple_cot").to_pylist():
        by_prompt.setdefault((r["system_prompt"], r["user_text"]), r)
    for rec in _jsonl("stage2_qwen2.5-vl-7b_simple_cots.jsonl"):
        p = parse_qwen_prompt(rec["prompt"])
        ours = by_prompt[(p["system_prompt"], p["user_text"])]
        assert grade(rec["label"], ours["options"], ours["answer_index"]).correct
    for r in run.read("simple_cot").to_pylist():
        assert r["correct"] == grade(r["response"], r["options"], r["answer_index"]).correct
    acc = sum(r["correct"] for r in run.read("simple_cot").to_pylist()) / 400
    assert 0.5 < acc < 0.65  # "about 58 % correct" (reference README)


def test_long_thought_keeps_the_original_case_and_word_boundaries(run):
    samples = {r["sample_id"]: r for r in run.read("simple_cot").to_pylist()}
    rows = run.read("expansion").to_pylist()
    for e in rows:
        simple = samples[e["sample_id"]]["thought"]
        assert e["long_thought"].startswith(simple.rstrip())  # defect 3: not lower-cased
        assert e["cue"] == "Wait,"
        assert "</think>" not in e["long_thought"]
        if e["keep"]:
            assert e["bad_word"] == "" and e["parsed"]
    reasons = Counter(e["drop_reason"] for e in rows)
    assert reasons["bad_word"] > 0 and reasons[""] > 0
    # defect 2: substrings of longer words are not bad words
    assert first_bad_word("a fine texture; a statement", ["text", "state"]) == ""
    assert first_bad_word("the Text says", ["says", "text"]) == "text"  # case-insensitive, first by position
    assert first_bad_word("as described above", ["described"]) == "described"
    # on the real data: kept expansions that upstream's substring filter would have thrown away
    from builder.importer import UPSTREAM_BAD_WORDS

    rescued = [e for e in rows if e["keep"] and any(
        w in e["long_thought"][len(samples[e["sample_id"]]["thought"]):] for w in UPSTREAM_BAD_WORDS)]
    assert rescued


def test_stage3_labels_are_regraded_not_copied(run):
    samples = {r["sample_id"]: r for r in run.read("simple_cot").to_pylist()}
    for e in run.read("expansion").to_pylist():
        s = samples[e["sample_id"]]
        assert e["simple_correct"] == s["correct"]
        if e["parsed"]:
            full = f"<think> {e['long_thought']} </think> <answer> {e['answer']} </answer>"
            assert parse_thought(full)[1] == e["answer"]
            assert e["correct"] == grade(full, s["options"], s["answer_index"]).correct


def test_bad_input_names_file_line_and_field(tmp_path):
    src = tmp_path / "up"
    shutil.copytree(UPSTREAM, src)
    path = src / "stage2_qwen2.5-vl-7b_simple_cots.jsonl"
    lines = path.read_text().splitlines()
    rec = json.loads(lines[2])
    rec["metadata"]["metadata"]["mcq_unique_id"] = "nope"
    lines[2] = json.dumps(rec)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ImportError_, match=r"stage2_qwen2\.5-vl-7b_simple_cots\.jsonl: line 3: field 'metadata"):
        import_upstream(src, tmp_path / "run")
