"""Stages 1-3 end to end: flow, counts, schemas, seeded choices, filters, sharding, resume, config.

Two kinds of engine:

* ``ReplayEngine`` (tests/helpers.py): a REPLAY stand-in for the GPU models. It answers each request with text
  that a real model could have written (tagged MCQs built from the description; thoughts and answers),
  chosen deterministically from the request's content and seed. It is used to test parsing and flow with
  outputs that parse; it never decides a label (that is builder.answers' job on whatever text comes back).
* the real ``transformers`` engine with the tiny random-weight models of ``tests/conftest.py``: the
  end-to-end test. Random weights rarely produce parseable text, so it asserts flow, counts and schema.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

from builder.settings import PipelineConfig, load_config
from builder.engines.base import Engine, Request, Sample
from builder.method import BAD_WORDS
from builder.records import SOURCE, content_id, is_placeholder, stable_int
from builder.stages.expansion import SCHEMA as EXPANSION
from builder.stages.mcq import SCHEMA as MCQ
from builder.stages.simple_cot import SCHEMA as SIMPLE_COT
from builder.stages import expansion, mcq, simple_cot
from builder.runtime import run_with
from builder.store import RunDir
from helpers import COLOURS, ReplayEngine, _text_of, make_source, run_all, small_config

@pytest.fixture
def pipeline(tmp_path):
    run = RunDir(tmp_path / "run")
    src = make_source(run, tmp_path)
    engine = ReplayEngine()
    cfg = small_config()
    summaries = run_all(run, engine, cfg)
    return run, src, engine, cfg, summaries


# ------------------------------------------------------------------------------------------------- stage 1


def test_stage1_parses_validates_and_ids(pipeline):
    run, src, engine, cfg, (s1, _, _) = pipeline
    rows = run.read("mcq").to_pylist()
    assert run.read("mcq").schema == MCQ
    expected_valid = sum(sum(c in r["description"] for c in COLOURS) for r in src)
    assert sum(r["valid"] for r in rows) == expected_valid
    invalid = [r for r in rows if not r["valid"]]
    assert len(invalid) == len(src) and {r["invalid_reason"] for r in invalid} == {"answer matches no single option"}
    for r in rows:
        assert r["mcq_id"] == content_id(r["image_id"], r["question"], r["options"], r["answer_text"])
        if r["valid"]:
            assert r["options"][r["answer_index"]] == r["answer_text"] and len(r["options"]) == 4
            assert r["formatted_response"] and r["question_type"] == "Recognition"
    assert s1.counts["items_in"] == len(src) and s1.counts["valid"] == expected_valid
    assert s1.dropped == {"answer matches no single option": len(src)}
    # the re-format call was made at T=0 with the generating reply inside it
    reformat = [c for c in engine.calls if not c.continue_final_message and "Text:\n" in _text_of(c.messages[-1])]
    assert len(reformat) == len(src) and all(c.params.temperature == 0.0 for c in reformat)


def test_stage1_parser_handles_missing_tags_and_letters():
    text = ("1. <question> Q1? </question> <choices> (A) x (B) y </choices> <answer> (B) </answer> <type> T </type>\n"
            "2. <question> Q2? </question> <answer> x </answer>\n"
            "3. <question> Q3? </question> <choices> A. one B. two C. one </choices> <answer> one </answer>")
    items = mcq.parse_mcq_response(text)
    assert [i.question for i in items] == ["Q1?", "Q2?", "Q3?"]
    assert items[1].choices is None and items[2].question_type == ""
    rows = mcq.mcq_rows("im", items, model="m", raw_response=text, formatted_response="")
    assert [r["valid"] for r in rows] == [True, False, False]
    assert rows[0]["answer_index"] == 1  # a letter resolves through answers.match_option
    assert [r["invalid_reason"] for r in rows[1:]] == ["no <choices>", "repeated option"]


def test_stage1_parser_unclosed_tags_make_invalid_items_and_never_swallow_the_next():
    text = ("1. <question> Q1? </question> <choices> (A) x (B) y </choices> <answer> (B) <type> T </type>\n"
            "2. <question> Q2? <choices> (A) p (B) q </choices> <answer> p </answer>\n"
            "3. <question> Q3? </question> <choices> (A) one (B) two </choices> <answer> two </answer> <type> Count")
    items = mcq.parse_mcq_response(text)
    assert [i.question for i in items] == ["Q1?", "", "Q3?"]
    assert [i.unclosed for i in items] == [("answer",), ("question",), ("type",)]
    rows = mcq.mcq_rows("im", items, model="m", raw_response=text, formatted_response="")
    assert [r["invalid_reason"] for r in rows] == ["unclosed <answer>", "unclosed <question>", ""]
    assert rows[2]["valid"] and rows[2]["answer_index"] == 1 and rows[2]["question_type"] == ""
    cut = mcq.parse_mcq_response("<question> Q? </question> <choices> (A) a (B) b")  # cut off by the token limit
    assert mcq.mcq_rows("im", cut, model="m", raw_response="", formatted_response="")[0]["invalid_reason"] == \
        "unclosed <choices>"


class _NoQuestionsFor(ReplayEngine):
    """REPLAY engine whose stage-1 reply names no question for descriptions containing ``word``."""

    def __init__(self, word: str, **kw) -> None:
        super().__init__(**kw)
        self.word = word

    def _reply(self, req: Request, k: int) -> str:
        if self.word in _text_of(req.messages[-1]):
            return f"Sorry, I cannot write questions about the {self.word}."
        return super()._reply(req, k)


def test_stage1_image_without_questions_leaves_a_record_that_resume_and_downstream_respect(tmp_path):
    from builder import assemble
    from builder.demo import stage_counts
    from builder.export import card_stats, export

    run = RunDir(tmp_path / "run")
    src = make_source(run, tmp_path, n=4)
    src[1]["description"] = "Thick fog; nothing else can be made out."
    run.write_table("source", pa.Table.from_pylist(src, schema=SOURCE))
    cfg = small_config()
    s1 = run_with(mcq.SPEC, run, _NoQuestionsFor("fog"), cfg, progress=False)
    rows = run.read("mcq").to_pylist()
    [ph] = [r for r in rows if r["image_id"] == "img_001"]
    assert (ph["valid"], ph["invalid_reason"], ph["item_index"], ph["question"]) == (False, mcq.NO_QUESTION, -1, "")
    assert ph["raw_response"] == "Sorry, I cannot write questions about the fog." and ph["formatted_response"]
    assert ph["mcq_id"] == content_id("img_001", "", [], "") and is_placeholder(ph)
    assert {r["image_id"] for r in rows} == {r["image_id"] for r in src}  # every input left a record
    assert s1.counts["images_without_questions"] == 1 and s1.counts["questions"] == len(rows) - 1
    assert mcq.NO_QUESTION not in s1.dropped
    # resume: nothing is redone, also after a whole-table rewrite of the stage (the demo's fallback and the
    # importer write whole tables; done inputs are then read from the rows)
    again = ReplayEngine()
    assert run_with(mcq.SPEC, run, again, cfg, progress=False).counts["items_already_done"] == 4 and again.calls == []
    run.write_table("mcq", run.read("mcq"))
    assert run_with(mcq.SPEC, run, again, cfg, progress=False).counts["items_already_done"] == 4 and again.calls == []
    # downstream reads only valid rows: no stage-2 request, MCQ set row, demo count or card number for it
    run_with(simple_cot.SPEC, run, ReplayEngine(), cfg, progress=False)
    assert "img_001" not in set(run.read("simple_cot").column("image_id").to_pylist())
    assert "img_001" not in {r["image_id"] for r in assemble.build_mcq(run)}
    assert ph in assemble.build_raw(run, "mcq")  # the raw records keep it
    counts = stage_counts(run)["stage1 (mcq)"]
    assert counts["questions"] == len(rows) - 1 and counts["images where the model wrote no parseable question"] == 1
    out = export(run.path, tmp_path / "hub", configs=["raw_mcq", "mcq"])
    [stage1] = [s for s in card_stats(out)["stages"] if s["stage"] == "1 MCQ (valid)"]
    assert stage1["records"] == len(rows) - 1 and stage1["kept"] == sum(r["valid"] for r in rows)


# ------------------------------------------------------------------------------------------------- stage 2


def test_stage2_prompts_labels_and_drops(pipeline):
    run, src, engine, cfg, (_, s2, _) = pipeline
    rows = run.read("simple_cot").to_pylist()
    assert run.read("simple_cot").schema == SIMPLE_COT
    valid = {m["mcq_id"]: m for m in run.read("mcq").to_pylist() if m["valid"]}
    assert len(rows) == 3 * len(valid)
    reqs = [c for c in engine.calls if c.continue_final_message and c.messages[-1]["content"] == "<think>"]
    assert len(reqs) == len(valid)
    for req in reqs:
        assert req.params.n == 3 and req.params.temperature == 0.7 and req.params.top_p == 0.8
        assert req.params.repetition_penalty == 1.05 and req.params.max_new_tokens == 1024
        assert req.max_pixels == 512 * 512
        assert req.messages[1]["content"][0]["type"] == "image"  # image first
    styles, formats = set(), set()
    for r in rows:
        m = valid[r["mcq_id"]]
        assert sorted(r["options"]) == sorted(m["options"])
        assert r["options"][r["answer_index"]] == m["answer_text"]
        assert r["response"].startswith("<think>")
        assert '"Recognition"' in r["system_prompt"]
        letters = "".join(ch for ch in "ABCD")
        first = r["user_text"].split("Select from the following choices.\n")[1].splitlines()[0]
        assert first == (f"(A) {r['options'][0]}" if r["option_style"] == "paren" else f"A. {r['options'][0]}")
        styles.add(r["option_style"])
        formats.add(r["answer_format"])
        if r["parsed"]:
            assert r["correct"] == (r["pred_index"] == r["answer_index"])
            assert r["pred_index"] == letters.index(re.search(r"\((\w)\)", r["answer"]).group(1))
        else:
            assert r["drop_reason"] == "unparseable" and not r["keep"] and not r["correct"]
    assert styles == {"paren", "dot"} and formats == {"paren", "dot", "text"}
    reasons = {r["drop_reason"] for r in rows}
    assert {"", "unparseable", "duplicate"} <= reasons
    for mcq_id in valid:  # a duplicate repeats a kept response of the same MCQ
        kept = [r["response"] for r in rows if r["mcq_id"] == mcq_id and r["keep"]]
        assert len(kept) == len(set(kept))
    assert s2.counts["samples_out"] == len(rows) and s2.counts["items_in"] == len(valid)
    assert s2.counts["correct"] == sum(r["correct"] for r in rows)


def test_missing_image_is_a_clear_error(tmp_path):
    run = RunDir(tmp_path / "run")
    src = make_source(run, tmp_path, n=2)
    Path(src[1]["image_path"]).unlink()
    cfg = small_config()
    run_with(mcq.SPEC, run, ReplayEngine(), cfg, progress=False)
    with pytest.raises(FileNotFoundError, match=r"img_1\.png does not exist"):
        run_with(simple_cot.SPEC, run, ReplayEngine(), cfg, progress=False)


# ------------------------------------------------------------------------------------------------- stage 3


def test_stage3_prefill_cues_bad_words_and_labels(pipeline):
    run, src, engine, cfg, (_, _, s3) = pipeline
    rows = run.read("expansion").to_pylist()
    assert run.read("expansion").schema == EXPANSION
    simples = {s["sample_id"]: s for s in run.read("simple_cot").to_pylist()}
    kept = [s for s in simples.values() if s["keep"]]
    assert len(rows) == 2 * len(kept) and {r["sample_id"] for r in rows} == {s["sample_id"] for s in kept}
    reqs = [c for c in engine.calls if c.continue_final_message and c.messages[0]["role"] == "user"]
    assert len(reqs) == len(rows)
    for req in reqs:
        p = req.params
        assert (p.n, p.temperature, p.top_p, p.top_k, p.repetition_penalty, p.max_new_tokens) == \
            (1, 0.7, 0.8, 50, 1.05, 256)
        assert p.bad_words == BAD_WORDS and len(req.messages) == 2  # no system turn
    for r in rows:
        s = simples[r["sample_id"]]
        assert r["cue"] in cfg.stage3.cues and r["separator"] in ("\n", " ")
        assert r["prefill"].endswith(r["separator"] + r["cue"])
        assert s["thought"] in r["prefill"]  # as written, not lower-cased (defect 3)
        assert r["prefill"].startswith("<think>\n") and s["question"] in r["prefill"]
        assert "Image description: A still life" in r["user_text"] and s["question"] in r["user_text"]
        added = r["long_thought"][len(s["thought"]):]
        assert r["long_thought"].startswith(s["thought"]) and "</think>" not in r["long_thought"]
        assert r["simple_correct"] == s["correct"]
        if "description" in added:
            assert r["bad_word"] == "description" and r["drop_reason"] == "bad_word" and not r["keep"]
        else:
            assert r["bad_word"] == ""  # "texture" is not "text" (defect 2)
        if r["keep"]:
            assert r["parsed"] and r["correct"] == (r["pred_index"] == s["answer_index"])
    assert len({r["cue"] for r in rows}) > 1 and len({r["separator"] for r in rows}) == 2
    assert s3.counts["samples_out"] == len(rows)
    assert s3.dropped.get("bad_word") == sum(r["drop_reason"] == "bad_word" for r in rows) > 0


def test_label_expansion_rules():
    s = {"thought": "The ball is red", "options": ["red", "blue"], "answer_index": 0}
    lab = expansion.label_expansion(s, cue="Wait,", separator="\n", continuation=" the texture is red.</think>"
                                 "<answer>(A)</answer>", bad_words=BAD_WORDS)
    assert lab["long_thought"] == "The ball is red.\nWait, the texture is red."
    assert (lab["correct"], lab["drop_reason"], lab["bad_word"]) == (True, "", "")
    sub = expansion.label_expansion(s, cue="Wait,", separator=" ", continuation=" the texture.</think><answer>blue"
                                 "</answer>", bad_words=BAD_WORDS, substring=True)
    assert (sub["bad_word"], sub["drop_reason"], sub["correct"], sub["pred_index"]) == ("text", "bad_word", False, 1)
    open_ = expansion.label_expansion(s, cue="Hmm,", separator=" ", continuation=" still thinking", bad_words=())
    assert open_["drop_reason"] == "no_end_of_thought" and not open_["parsed"]
    noans = expansion.label_expansion(s, cue="Hmm,", separator=" ", continuation=" ok</think> done", bad_words=())
    assert noans["drop_reason"] == "unparseable"


def test_cue_plan_each_mode_and_duplicates(tmp_path):
    run = RunDir(tmp_path / "run")
    make_source(run, tmp_path, n=2)
    cfg = small_config().apply_overrides(["stage3.cue_mode=each", "stage3.n=2"])
    engine = ReplayEngine(continuation=" same.</think><answer>(A)</answer>")
    run_all(run, engine, cfg)
    rows = run.read("expansion").to_pylist()
    kept_simple = [s for s in run.read("simple_cot").to_pylist() if s["keep"]]
    assert len(rows) == len(kept_simple) * 4 * 2
    for sid in {r["sample_id"] for r in rows}:
        mine = [r for r in rows if r["sample_id"] == sid]
        assert sorted(r["cue"] for r in mine) == sorted(list(cfg.stage3.cues) * 2)
        # the same continuation after the same cue and separator is an exact duplicate
        assert len({r["long_thought"] for r in mine if r["keep"]}) == sum(r["keep"] for r in mine)
    assert any(r["drop_reason"] == "duplicate" for r in rows)


# ------------------------------------------------------------------------------------ sharding and resume


def test_shards_merge_to_the_single_run(tmp_path, pipeline):
    run1 = pipeline[0]
    run = RunDir(tmp_path / "sharded")
    make_source(run, tmp_path)
    cfg = small_config()
    for stage in (mcq, simple_cot, expansion):
        for i in (1, 0):  # order does not matter
            run_with(stage.SPEC, run, ReplayEngine(), cfg, shard=(i, 2), progress=False)
    for stage in ("mcq", "simple_cot", "expansion"):
        assert run.read(stage).equals(run1.read(stage)), stage
        names = {p.name.split(".")[0] for p in run.files(stage)}
        assert names == {"shard-0-of-2", "shard-1-of-2"}


def test_crash_in_process_then_resume(tmp_path, pipeline):
    clean = pipeline[0]
    run = RunDir(tmp_path / "crashy")
    make_source(run, tmp_path)
    cfg = small_config()
    run_with(mcq.SPEC, run, ReplayEngine(), cfg, progress=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_with(simple_cot.SPEC, run, ReplayEngine(fail_after=1), cfg, progress=False)
    assert 0 < len(run.done_inputs("simple_cot")) < len([m for m in run.read("mcq").to_pylist() if m["valid"]])
    engine = ReplayEngine()
    summary = run_with(simple_cot.SPEC, run, engine, cfg, progress=False)
    assert summary.counts["items_already_done"] == 4  # one chunk of 4 survived and was skipped
    assert run.read("simple_cot").equals(clean.read("simple_cot"))
    again = ReplayEngine()
    run_with(simple_cot.SPEC, run, again, cfg, progress=False)
    assert again.calls == []  # everything done: nothing generated twice


def test_manifest_records_config_models_counts(pipeline):
    run = pipeline[0]
    m = run.manifest
    assert m["config"]["stage2"]["n"] == 3 and m["seed"] == 42
    assert m["models"] == {"mcq": "replay", "mcq_reformat": "replay", "simple_cot": "replay", "expansion": "replay"}
    assert m["counts"] == {k: run.read(k).num_rows for k in ("source", "mcq", "simple_cot", "expansion")}
    assert "pyarrow" in m["versions"] and "simple_cot/0-of-1" in m["summaries"]


def test_summary_table_renders(pipeline):
    from rich.console import Console

    console = Console(record=True, width=120)
    for s in pipeline[4]:
        console.print(s.table())
    out = console.export_text()
    assert "samples out" in out and "filtered: bad_word" in out and "items in" in out


def test_finish_needs_only_its_summary_columns(pipeline):
    """A stage's summary from the columns it declares (all its runners read back) is the one from whole rows."""
    from builder.runtime import shard_rows
    from builder.stages import STAGES

    run, _, _, cfg, _ = pipeline
    for spec in STAGES:
        ids = run.done_inputs(spec.name)
        some = shard_rows(run, spec.name, ids, spec.summary_columns)
        assert len(some[0]) < len(spec.table.schema)
        assert spec.summary(some, cfg) == spec.summary(shard_rows(run, spec.name, ids), cfg)


# -------------------------------------------------------------------------------------------------- config


def test_presets_and_overrides(tmp_path):
    paper = PipelineConfig.preset("paper")
    assert (paper.seed, paper.stage2.n, paper.stage2.temperature, paper.stage2.top_p) == (42, 3, 0.7, 0.8)
    assert (paper.stage2.repetition_penalty, paper.stage2.max_new_tokens, paper.stage2.max_pixels) == \
        (1.05, 1024, 512 * 512)
    assert (paper.stage3.n, paper.stage3.top_k, paper.stage3.max_new_tokens) == (3, 50, 256)
    assert paper.stage3.cues == ("Wait,", "Hmm,", "Alternatively,", "Let's double-check the details.")
    assert len(paper.stage3.bad_words) == 23 and not paper.stage3.substring_bad_word_filter
    assert paper.stage2.model == "Qwen/Qwen2.5-VL-7B-Instruct" and paper.stage2.engine == "vllm"
    assert paper.stage3.model == "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"
    authors = PipelineConfig.preset("authors")
    assert (authors.stage2.n, authors.stage3.n, authors.stage3.cues) == (10, 5, ("Wait,",))
    assert authors.stage1.reformat_model == "gpt-4o-mini-2024-07-18"
    f = tmp_path / "c.yaml"
    f.write_text("preset: authors\nstage2:\n  n: 4\nstage3:\n  substring_bad_word_filter: true\n")
    cfg = load_config("paper", files=[f], overrides=["stage3.cues=['Hmm,']", "seed=7", "stage2.max_pixels=null"])
    assert (cfg.stage2.n, cfg.stage3.n, cfg.stage3.cues, cfg.seed) == (4, 5, ("Hmm,",), 7)
    assert cfg.stage3.substring_bad_word_filter and cfg.stage2.max_pixels is None
    j = tmp_path / "c.json"
    j.write_text('{"stage3": {"temperature": 0.6, "top_p": 0.95}}')
    assert PipelineConfig.from_file(j).stage3.top_p == 0.95
    assert PipelineConfig.from_dict(cfg.to_dict()) == cfg  # round trip
    for bad, msg in [("stage2.nn=3", "unknown setting 'stage2.nn'"), ("stage2.n=x", "must be a number"),
                     ("stage3.generation_bad_words=3", "true or false"), ("nokey", "key.path=value")]:
        with pytest.raises(ValueError, match=re.escape(msg)):
            paper.apply_overrides([bad])
    (tmp_path / "bad.yaml").write_text("stage2: {n: [1}")
    with pytest.raises(ValueError, match="bad.yaml"):
        PipelineConfig.from_file(tmp_path / "bad.yaml")


# ------------------------------------------------------------------------- real engine, tiny random models


@pytest.fixture
def tiny_models(tiny_vlm, tiny_lm):
    return tiny_vlm, tiny_lm


def _tiny_config(vlm: str, lm: str) -> PipelineConfig:
    return load_config("paper", overrides=[
        "stage1.max_new_tokens=24", "stage1.reformat_max_new_tokens=24", "stage2.n=2",
        "stage2.max_new_tokens=12", "stage2.max_pixels=3136", "stage3.n=2", "stage3.max_new_tokens=8",
        "chunk_size=2"])


def test_end_to_end_with_transformers_tiny_models(tmp_path, tiny_models):
    """All three stages through the real transformers engine (random weights: most samples unparseable).

    Stage 1's random model writes no tagged MCQs, so the MCQ stage is shown to run on it and the stage-2/3
    flow continues from MCQs written into the run (as an import or another model would)."""
    from builder.engines import load_engine

    tiny_vlm, tiny_lm = tiny_models
    run = RunDir(tmp_path / "run")
    src = make_source(run, tmp_path, n=3)
    cfg = _tiny_config(tiny_vlm, tiny_lm)
    lm = load_engine("transformers", str(tiny_lm))
    s1 = run_with(mcq.SPEC, run, lm, cfg, progress=False)
    assert s1.counts["items_in"] == 3 and len(run.done_inputs("mcq")) == 3
    assert run.manifest["models"]["mcq"] == str(tiny_lm)
    # stage 2 needs valid MCQs: write them as stage 1 would have from a well-formed reply
    rows = []
    for r in src:
        reply = ("1. <question> What colour is the table? </question> <choices> (A) Brown (B) Blue (C) Red "
                 "(D) Green </choices> <answer> Brown </answer> <type> Recognition </type>")
        rows += mcq.mcq_rows(r["image_id"], mcq.parse_mcq_response(reply), model="given", raw_response=reply,
                             formatted_response="")
    run.write_table("mcq", pa.Table.from_pylist(rows, schema=MCQ))
    vlm = load_engine("transformers", str(tiny_vlm))
    s2 = run_with(simple_cot.SPEC, run, vlm, cfg, progress=False)
    samples = run.read("simple_cot").to_pylist()
    assert len(samples) == 3 * 2 and s2.counts["samples_out"] == 6
    assert all(s["response"].startswith("<think>") for s in samples)
    assert s2.counts["kept"] + sum(s2.dropped.values()) == 6
    # stage 3 runs on kept simple CoTs; random weights rarely close </think>, so give it one kept row
    if not any(s["keep"] for s in samples):
        s0 = dict(samples[0], keep=True, drop_reason="", thought="The table looks brown", parsed=True)
        samples[0] = s0
        run.write_table("simple_cot", pa.Table.from_pylist(samples, schema=SIMPLE_COT))
    n_kept = sum(s["keep"] for s in run.read("simple_cot").to_pylist())
    s3 = run_with(expansion.SPEC, run, lm, cfg, progress=False)
    exp = run.read("expansion").to_pylist()
    assert len(exp) == 2 * n_kept and s3.counts["samples_out"] == len(exp)
    for e in exp:
        assert e["prefill"].endswith(e["separator"] + e["cue"]) and isinstance(e["continuation"], str)
        assert e["keep"] == (e["drop_reason"] == "")
    assert run.manifest["counts"]["expansion"] == len(exp)


def test_resuming_with_other_settings_is_refused(pipeline):
    from builder.store import StoreError

    run, _, _, cfg, _ = pipeline
    with pytest.raises(StoreError, match=r"simple_cot/shard-0-of-1\.chunk-\w+\.parquet: made with other simple_cot "
                                         r"settings \(differ in \['stage2'\]\)"):
        run_with(simple_cot.SPEC, run, ReplayEngine(), cfg.apply_overrides(["stage2.n=5"]), progress=False)
    with pytest.raises(StoreError, match=r"differ in \['seed'\]"):
        run_with(expansion.SPEC, run, ReplayEngine(), cfg.apply_overrides(["seed=1"]), progress=False)
    # engine choice and chunk size are not part of the settings: resuming with them changed is fine
    run_with(simple_cot.SPEC, run, ReplayEngine(), cfg.apply_overrides(["stage2.engine=transformers", "chunk_size=9"]),
                   progress=False)


def test_a_stage_without_its_input_says_which_stage_to_run_and_reads_only_the_columns_it_needs(tmp_path):
    from builder.runtime import plan_stage

    run = RunDir(tmp_path / "run")
    rows = make_source(run, tmp_path, n=3)
    config = small_config()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{run.path / 'mcq'}: no mcq rows; run stage1 (mcq) first")):
        plan_stage(run, simple_cot.SPEC, config)
    with pytest.raises(FileNotFoundError,
                       match=re.escape(f"{run.path / 'simple_cot'}: no simple_cot rows; run stage2 (simple_cot) first")):
        plan_stage(run, expansion.SPEC, config)
    items = plan_stage(run, mcq.SPEC, config).items
    assert items == [(r["image_id"], {"image_id": r["image_id"], "description": r["description"]}) for r in rows]
    run_with(mcq.SPEC, run, ReplayEngine(), config, progress=False)
    planned = plan_stage(run, simple_cot.SPEC, config).items  # the declared MCQ columns, the source's image path
    assert planned and all(set(r) == {"mcq_id", "image_id", "item_index", *simple_cot.INPUT_COLUMNS, "valid",
                                      "image_path"} for _, r in planned)


def test_a_rerun_reads_each_input_file_once_with_only_the_columns_it_needs(pipeline, monkeypatch):
    """Regression: a stage-3 rerun checked its input three times, read the MCQs three times and the whole
    simple-CoT table to count it. Now the run loop plans a stage once: each file of the tables before it is read
    at most once, never with every column."""
    from builder.pipeline import generate
    from builder.stages import get_stage

    run, _, _, cfg, _ = pipeline
    reads: list[tuple[str, str, int | None]] = []
    original = RunDir._read_file

    def counted(self, stage, path, columns):
        reads.append((stage, path.name, None if columns is None else len(columns)))
        return original(self, stage, path, columns)

    monkeypatch.setattr(RunDir, "_read_file", counted)
    engines = [f"stage{k}.engine=helpers:ReplayEngine" for k in (1, 2, 3)]
    [summary] = generate(run, cfg.apply_overrides(engines), [get_stage(3)], progress=False, echo=lambda s: None)
    assert summary.counts["items_already_done"] == summary.counts["items_in"] > 0
    for table in ("mcq", "simple_cot"):
        files = [name for stage, name, _ in reads if stage == table]
        assert sorted(files) == sorted(p.name for p in run.files(table)), table  # each file once
    assert all(n is not None for stage, _, n in reads if stage != "expansion")  # only the columns needed
    assert len([1 for stage, _, _ in reads if stage == "source"]) == 2  # its ids (completeness), its descriptions
