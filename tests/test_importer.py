"""The authors' published raw generations import as a run, relabelled with our rules (offline, real files)."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest

from builder.answers import grade, parse_thought
from builder.importer import UpstreamFormatError, import_upstream, parse_qwen_prompt
from builder.stages.expansion import first_bad_word

from helpers import UPSTREAM  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return import_upstream(UPSTREAM, tmp_path_factory.mktemp("run") / "upstream")


def _jsonl(name):
    return [json.loads(l) for l in (UPSTREAM / name).read_text().splitlines() if l.strip()]


def test_every_stage_is_written_with_its_schema(run):
    from builder.records import TABLES

    for stage, schema in ((n, t.schema) for n, t in TABLES.items()):
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
    from builder.method import BAD_WORDS as UPSTREAM_BAD_WORDS

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
    with pytest.raises(UpstreamFormatError, match=r"stage2_qwen2\.5-vl-7b_simple_cots\.jsonl: line 3: field 'metadata"):
        import_upstream(src, tmp_path / "run")


def test_import_applies_the_stages_own_rules(tmp_path):
    """Each rule lives in one place: the importer's records are what stages 1-3's own row functions give.
    Three inputs where a second copy of a rule would disagree: an MCQ with a repeated option, a sample with an
    answer but no closed thought, and a continuation repeated after the other separator."""
    import csv

    from builder.method import BAD_WORDS as UPSTREAM_BAD_WORDS
    from builder.stages import expansion, mcq, simple_cot

    src = tmp_path / "up"
    shutil.copytree(UPSTREAM, src)
    with open(src / "docci_mcq.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["mcq_answer"] == "Blue"
    rows[0]["mcq_choices"] = "(A) Red (B) Blue (C) Green (D) Red"  # "Blue" still names one option
    with open(src / "docci_mcq.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    s2 = src / "stage2_qwen2.5-vl-7b_simple_cots.jsonl"
    recs = [json.loads(line) for line in s2.read_text().splitlines()]
    unclosed = "<think> It is hard to say. <answer>(B)</answer>"
    recs[1]["predict"].append(unclosed)
    s2.write_text("".join(json.dumps(r) + "\n" for r in recs))
    s3 = src / "stage3_r1-distill-qwen-32b_wait_expansions.jsonl"
    recs3 = [json.loads(line) for line in s3.read_text().splitlines()]
    first = recs3[1]["predict"][1]
    other = {" ": "\n", "\n": " "}
    i = first.index("Wait,")
    recs3[1]["predict"].append(first[:i - 1] + other[first[i - 1]] + first[i:])  # same text, other separator
    s3.write_text("".join(json.dumps(r) + "\n" for r in recs3))

    run = import_upstream(src, tmp_path / "run")
    # stage 1: mcq.mcq_rows' validity (a repeated option is invalid even when the answer names one option)
    image0 = [m for m in run.read("mcq").to_pylist() if m["image_id"] == rows[0]["image_id"]]
    items = [mcq.ParsedItem(r["mcq_question"].strip(), r["mcq_choices"], r["mcq_answer"].strip(),
                            r["mcq_question_type"].strip()) for r in rows if r["image_id"] == rows[0]["image_id"]]
    assert image0 == mcq.mcq_rows(rows[0]["image_id"], items, model=rows[0]["_mcq_gen_model_id"],
                                  raw_response=rows[0]["_mcq_gen_raw_response"],
                                  formatted_response=rows[0]["_parse_to_mcq_response"])
    assert (image0[0]["valid"], image0[0]["invalid_reason"]) == (False, "repeated option")
    # stage 2: simple_cot.sample_rows (no closed thought: unparseable, and it names no option)
    samples = run.read("simple_cot").to_pylist()
    [odd] = [s for s in samples if s["response"] == unclosed]
    mine = [s for s in samples if s["mcq_id"] == odd["mcq_id"]]
    shown = {k: odd[k] for k in ("options", "answer_index", "option_style", "answer_format")}
    m = next(x for x in run.read("mcq").to_pylist() if x["mcq_id"] == odd["mcq_id"])
    assert mine == simple_cot.sample_rows(m, shown, [s["response"] for s in mine], system_prompt=odd["system_prompt"],
                                          user_text=odd["user_text"], model=odd["model"], seed=odd["seed"])
    assert (odd["parsed"], odd["pred_index"], odd["drop_reason"]) == (False, -1, "unparseable")
    # stage 3: expansion.expansion_rows (a duplicate is the same long thought; the separator is part of it)
    by_sample = {}
    for e in run.read("expansion").to_pylist():
        by_sample.setdefault(e["sample_id"], []).append(e)
    simples = {s["sample_id"]: s for s in samples}
    [four] = [es for es in by_sample.values() if len(es) == 4]
    four.sort(key=lambda e: e["expansion_index"])
    conts = [expansion.Continuation(e["expansion_index"], e["cue"], e["separator"], e["user_text"], e["prefill"],
                                 e["continuation"], e["seed"]) for e in four]
    assert four == expansion.expansion_rows(simples[four[0]["sample_id"]], conts, bad_words=UPSTREAM_BAD_WORDS,
                                         model=four[0]["model"])
    assert four[3]["continuation"] == four[1]["continuation"] and four[3]["separator"] != four[1]["separator"]
    assert four[1]["keep"] and four[3]["keep"]  # not a duplicate: the long thoughts differ
