"""The columnar assembly gives byte-identical rows to the former row-by-row code (tests/_assemble_v1.py, frozen):
same rows, same order, same values, on (a) the authors' generations imported as a run and (b) a synthetic run
with many MCQs and every corner the row code had (duplicate targets, prompts shared across MCQs, ties in
length, MCQs without a sample, unicode, unkept samples with kept expansions, several chunk files)."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pytest

import _assemble_v1 as v1
import longperceptualthoughts as lpt
from builder import assemble
from builder.importer import import_upstream
from builder.records import content_id
from builder.stages.expansion import SCHEMA as EXPANSION
from builder.stages.mcq import SCHEMA as MCQ
from builder.stages.simple_cot import SCHEMA as SIMPLE_COT
from builder.store import RunDir

from helpers import UPSTREAM  # noqa: E402

OPTIONS = [  # the frozen row code built every candidate pair: compared under dpo_pairs="all"
    assemble.AssembleOptions(dpo_pairs="all"),
    assemble.AssembleOptions(seed=7, answer_format="text", dpo_pairs="all"),
    assemble.AssembleOptions(seed=3, answer_format="dot", sft_balance=False, sft_ratio=0.5, dpo_pairs="all"),
    assemble.AssembleOptions(pair_kinds=tuple(reversed(assemble.PAIR_KINDS)), answer_format="paren", dpo_pairs="all"),
    assemble.AssembleOptions(seed=11, sft_ratio=1.0, simple_cot_ratio=1.0, pair_kinds=("O>O_O", "O>X_X"),
                             dpo_pairs="all"),
]
SETS = ("sft", "dpo", "simple_cot", "mcq", "mcq_direct")


def _old(opts: assemble.AssembleOptions) -> v1.AssembleOptions:
    return v1.AssembleOptions(**dataclasses_asdict(opts))


def dataclasses_asdict(opts) -> dict:
    import dataclasses

    return {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts) if f.name != "dpo_pairs"}


def _rows(mod, run, name, opts):
    if name in ("mcq", "mcq_direct"):
        return mod.build_mcq(run, opts, "think" if name == "mcq" else "direct")
    return getattr(mod, f"build_{name}")(run, opts)


def _same(new, old):
    """Byte-identical: the JSON text (types included: True is not 1) and the order."""
    assert len(new) == len(old)
    assert json.dumps(new, ensure_ascii=False) == json.dumps(old, ensure_ascii=False)


# ----------------------------------------------------------------------------------------------- the runs

WORDS = ["the", "red", "ball", "is", "left", "of", "a", "café", "naïve", "Straße", "😀", "two", "cats", "under",
         "blue", "sky", "\u2028", "quote\"d", "back\\slash"]


def _sentence(rng: random.Random, k: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(k))


def synthetic_run(path, seed: int = 0, cross_kind: bool = False) -> RunDir:
    """~250 MCQs on 40 images, ~1,000 samples, ~2,000 expansions, written as shuffled chunk files.

    ``cross_kind``: few texts, and simple thoughts that read like another sample's long thought, so that pairs of
    two kinds often have equal prompts and targets (an X sample and an X→X expansion rejected for one O)."""
    rng = random.Random(seed)
    questions = [_sentence(rng, 5) + "?" for _ in range(40)]  # few: several MCQs share a question
    option_pool = ["red", "blue", "green", "two", "three", "a café", "Straße", "none"]
    thoughts = [_sentence(rng, rng.randint(0, 30)) for _ in range(120)]  # repeats: equal targets
    continuations = [_sentence(rng, rng.randint(1, 12)) for _ in range(60)]
    if cross_kind:
        thoughts, continuations = thoughts[:3], continuations[:2]
        thoughts += [(t + " Wait, " + c).strip() for t in thoughts for c in continuations]
    systems = [assemble._THINK_PREAMBLE + ' The following question requires the capability of "Counting".',
               assemble._THINK_PREAMBLE + " Please answer with the full text of the correct option.",
               "You are a helpful assistant."]
    mcqs, samples, expansions = [], [], []
    for i in range(40):
        image_id = f"img_{i:03d}"
        if i == 7:  # an image whose reply held no question: the placeholder row
            mcqs.append({"mcq_id": content_id(image_id, "", [], ""), "image_id": image_id, "item_index": -1,
                         "question": "", "options": [], "answer_text": "", "answer_index": -1, "question_type": "",
                         "valid": False, "invalid_reason": "no question", "model": "m", "raw_response": "",
                         "formatted_response": ""})
            continue
        for k in range(rng.randint(1, 14)):
            q = rng.choice(questions)
            options = rng.sample(option_pool, rng.randint(2, 5))
            gold = rng.randrange(len(options))
            valid = rng.random() > 0.12
            mcq_id = content_id(image_id, q, options, k)
            qtype = rng.choice(["Counting", "Recognition", "Spatial"])
            mcqs.append({"mcq_id": mcq_id, "image_id": image_id, "item_index": k, "question": q, "options": options,
                         "answer_text": options[gold], "answer_index": gold if valid else -1, "question_type": qtype,
                         "valid": valid, "invalid_reason": "" if valid else "answer not an option", "model": "m",
                         "raw_response": "r", "formatted_response": ""})
            if not valid or rng.random() < 0.2:
                continue  # no stage-2 sample: the MCQ set renders a fresh seeded prompt
            shows = []
            for _ in range(rng.choice([1, 1, 2])):  # one or two shuffles of this MCQ
                perm = options[:] if rng.random() < 0.5 else rng.sample(options, len(options))
                shows.append((perm, perm.index(options[gold]), rng.choice(["paren", "dot", "text"]),
                               rng.choice(systems)))
            for j in range(rng.randint(1, 9)):
                perm, g, fmt, system = rng.choice(shows)
                pred = g if rng.random() < 0.55 else rng.choice([-1] + [x for x in range(len(perm)) if x != g])
                thought = rng.choice(thoughts)
                sample_id = content_id(mcq_id, j, thought, rng.random())
                keep = rng.random() > 0.12
                samples.append({
                    "sample_id": sample_id, "mcq_id": mcq_id, "image_id": image_id,
                    "sample_index": j if rng.random() > 0.1 else 0,  # repeated indices: ties broken by sample_id
                    "question": q, "question_type": qtype, "options": perm, "answer_index": g,
                    "option_style": "paren", "answer_format": fmt, "system_prompt": system,
                    "user_text": q + "\nSelect from the following choices.\n" + "\n".join(perm),
                    "response": "<think>" + thought, "thought": thought, "answer": "x", "pred_index": pred,
                    "parsed": pred >= 0, "correct": pred == g, "keep": keep, "drop_reason": "" if keep else "dup",
                    "model": "vlm", "seed": 1})
                for e in range(rng.randint(0, 4)):
                    epred = g if rng.random() < 0.5 else rng.choice([-1] + [x for x in range(len(perm)) if x != g])
                    cont = rng.choice(continuations)
                    ekeep = rng.random() > 0.25
                    expansions.append({
                        "expansion_id": content_id(sample_id, e, cont, rng.random()), "sample_id": sample_id,
                        "mcq_id": mcq_id, "image_id": image_id, "expansion_index": e, "cue": "Wait,",
                        "separator": " ", "user_text": "u", "prefill": "p", "continuation": cont,
                        "long_thought": (thought + " Wait, " + cont).strip(), "answer": "a", "pred_index": epred,
                        "parsed": epred >= 0, "correct": epred == g, "simple_correct": pred == g, "bad_word": "",
                        "keep": ekeep, "drop_reason": "" if ekeep else "bad_word", "model": "r1", "seed": 2})
    run = RunDir(path)
    for stage, rows, schema, input_col in (("mcq", mcqs, MCQ, "image_id"), ("simple_cot", samples, SIMPLE_COT, "mcq_id"),
                                           ("expansion", expansions, EXPANSION, "sample_id")):
        by_input: dict[str, list] = {}
        for r in rows:
            by_input.setdefault(r[input_col], []).append(r)
        inputs = list(by_input)
        rng.shuffle(inputs)
        for c in range(5):  # five chunk files, each input's rows in one of them (as a stage writes), no order
            part = [r for k in inputs[c::5] for r in by_input[k]]
            rng.shuffle(part)
            run.write_chunk(stage, pa.Table.from_pylist(part, schema=schema), [r[input_col] for r in part] or ["-"])
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("equiv")
    return {"upstream": import_upstream(UPSTREAM, tmp / "upstream"), "synthetic": synthetic_run(tmp / "synthetic")}


# ----------------------------------------------------------------------------------------------- the tests


def test_the_synthetic_run_has_the_corners(runs):
    run = runs["synthetic"]
    assert len(run.files("expansion")) == 5 and run.counts()["mcq"] > 200
    traces = v1.load_traces(run)
    kinds = {t.cot_type for t in traces}
    assert kinds == set(v1.TRACE_TYPES)
    pairs = v1.dpo_pairs(traces, v1.AssembleOptions(pair_kinds=v1.PAIR_KINDS))
    keys = [(c.prompt_key, c.target(), r.target()) for _, c, r in pairs]
    assert len(set(keys)) == len(keys)
    # the row code did drop repeated pairs here (equal targets of one prompt), and MCQs lack samples
    raw = sum(len(v) for v in _candidate_counts(traces).values())
    assert raw > len(pairs)
    no_sample = {m["mcq_id"] for m in run.read("mcq").to_pylist() if m["valid"]} - \
        {s["mcq_id"] for s in run.read("simple_cot").to_pylist()}
    assert len(no_sample) > 10


def test_pairs_of_two_kinds_with_equal_targets_are_dropped_as_the_row_code_did(tmp_path):
    """A pair equal to one of an earlier kind (same prompt, same chosen and rejected targets) is dropped: the
    planner holds one kind at a time and carries over only the pairs that could repeat in a later kind."""
    run = synthetic_run(tmp_path / "cross", seed=5, cross_kind=True)
    traces = v1.load_traces(run)
    kinds_of: dict = {}
    for kind, pairs in _candidate_counts(traces).items():
        for c, r in pairs:
            kinds_of.setdefault((c.prompt_key, c.target(), r.target()), set()).add(kind)
    assert sum(len(k) > 1 for k in kinds_of.values()) > 5  # the corner is there
    for opts in (assemble.AssembleOptions(pair_kinds=assemble.PAIR_KINDS, dpo_pairs="all"),
                 assemble.AssembleOptions(pair_kinds=tuple(reversed(assemble.PAIR_KINDS)), answer_format="text",
                                          dpo_pairs="all")):
        _same(_rows(assemble, run, "dpo", opts), _rows(v1, run, "dpo", _old(opts)))


def _candidate_counts(traces):
    """Candidate pairs before dropping repeats (as the row code enumerated them)."""
    from collections import defaultdict

    by_mcq, by_sample = defaultdict(lambda: defaultdict(list)), defaultdict(lambda: defaultdict(list))
    for t in traces:
        by_mcq[(t.mcq_id, t.prompt_key)][t.cot_type].append(t)
        by_sample[t.sample_id][t.cot_type].append(t)
    out = {}
    for kind in v1.PAIR_KINDS:
        a, b = kind.split(">")
        groups = by_mcq if v1._KIND_SCOPE[kind] == "mcq" else by_sample
        out[kind] = [(c, r) for g in groups.values() for c in g.get(a, []) for r in g.get(b, []) if r.pred_index >= 0]
    return out


@pytest.mark.parametrize("which", ["upstream", "synthetic"])
@pytest.mark.parametrize("k", range(len(OPTIONS)))
def test_every_set_is_byte_identical(runs, which, k):
    run, opts = runs[which], OPTIONS[k]
    for name in SETS:
        new = _rows(assemble, run, name, opts)
        _same(new, _rows(v1, run, name, _old(opts)))
        assert new or name == "sft"  # every set has rows (a run's sft may be empty by construction)
        assert assemble.why_empty(run, name, opts) == v1.why_empty(run, name, _old(opts))


@pytest.mark.parametrize("which", ["upstream", "synthetic"])
def test_raw_stages_and_trace_helpers_are_identical(runs, which):
    run = runs[which]
    for stage in ("source", "mcq", "simple_cot", "expansion"):
        _same(assemble.build_raw(run, stage), v1.build_raw(run, stage))
    traces = assemble.load_traces(run)
    assert traces == [assemble.Trace(**t.__dict__) for t in v1.load_traces(run)]
    old_traces = v1.load_traces(run)
    for opts in OPTIONS:
        got = assemble.sft_traces(traces, opts)
        assert [t.trace_id for t in got] == [t.trace_id for t in v1.sft_traces(old_traces, _old(opts))]
        pairs = assemble.dpo_pairs(traces, opts)
        assert [(k, c.trace_id, r.trace_id) for k, c, r in pairs] == \
            [(k, c.trace_id, r.trace_id) for k, c, r in v1.dpo_pairs(old_traces, _old(opts))]
    shuffled = traces[:]
    random.Random(1).shuffle(shuffled)  # a list in another order: groups and pairs follow that order
    opts = assemble.AssembleOptions(pair_kinds=assemble.PAIR_KINDS, dpo_pairs="all")
    old_shuffled = [v1.Trace(**t.__dict__) for t in shuffled]
    assert [(k, c.trace_id, r.trace_id) for k, c, r in assemble.dpo_pairs(shuffled, opts)] == \
        [(k, c.trace_id, r.trace_id) for k, c, r in v1.dpo_pairs(old_shuffled, _old(opts))]
    assert [t.trace_id for t in assemble.sft_traces(shuffled, opts)] == \
        [t.trace_id for t in v1.sft_traces(old_shuffled, _old(opts))]


def test_length_weighted_subsample_is_the_same_draw():
    rng = random.Random(5)
    for trial in range(60):
        items = [(rng.choice("abcdefg"), rng.randint(0, 9), f"k{rng.randint(0, 400):03d}")
                 for _ in range(rng.randint(0, 80))]  # repeated keys and equal lengths included
        n = rng.randint(0, 90)
        kw = dict(group=lambda t: t[0], length=lambda t: t[1], key=lambda t: t[2], seed=trial, tag="t")
        try:
            want = v1.length_weighted_subsample(items, n, **kw)
        except ValueError:  # a repeated key drawn leaves too few to top up: the row code fails, and so do we
            with pytest.raises(ValueError, match="Sample larger than population"):
                assemble.length_weighted_subsample(items, n, **kw)
            continue
        assert assemble.length_weighted_subsample(items, n, **kw) == want


def test_raw_sort_paths_agree(runs, tmp_path):
    """In memory, through spill files, and streamed when the files are already in order: RunDir.read's rows."""
    run = runs["synthetic"]
    for stage in ("mcq", "simple_cot", "expansion"):
        want = run.read(stage)
        spilled = pa.Table.from_batches(list(assemble.raw_batches(run, stage, 100, sort_memory_bytes=20_000)))
        assert spilled.equals(want)
        ordered = RunDir(tmp_path / stage)
        ordered.write_table(stage, want)
        assert pa.Table.from_batches(list(assemble.raw_batches(ordered, stage, 64))).equals(want)


def test_tables_have_the_config_schemas(runs):
    run = runs["upstream"]
    for name in lpt.run_configs():
        if name == "images":
            continue
        t = assemble.table(run, name)
        assert t.schema.equals(lpt.CONFIGS[name].features.arrow_schema, check_metadata=True), name
        assert t.num_rows == len(list(lpt.CONFIGS[name].build(lpt.LPTConfig(name=name, run_dir=str(run.path)))))
    assert assemble.sft_table(run).equals(assemble.table(run, "sft"))
    assert assemble.mcq_table(run, variant="direct").equals(assemble.table(run, "mcq_direct"))
    assert assemble.raw_table(run, "expansion").to_pylist() == run.read("expansion").to_pylist()


def test_one_trace_read_serves_every_trace_set(runs):
    run = runs["synthetic"]
    tr = assemble.trace_index(run)
    for name in ("sft", "dpo", "simple_cot"):
        shared = pa.Table.from_batches(list(assemble.batches(run, name, OPTIONS[1], 50, traces=tr)))
        assert shared.to_pylist() == assemble.table(run, name, OPTIONS[1]).to_pylist()


def test_sets_planned_ahead_render_the_same_rows_from_an_index_without_its_planner_columns(runs):
    run = runs["synthetic"]
    tr = assemble.trace_index(run, plan=["sft", "dpo", "simple_cot"], opts=OPTIONS[1])
    assert all(getattr(tr, c) is None for c in ("key", "mcq", "prompt", "length", "added", "thought_bytes"))
    for name in ("simple_cot", "sft", "dpo"):  # in another order than planned
        shared = pa.Table.from_batches(list(assemble.batches(run, name, OPTIONS[1], 50, traces=tr)))
        assert shared.to_pylist() == assemble.table(run, name, OPTIONS[1]).to_pylist()
    assert not tr.plans  # each plan went once it was taken
    with pytest.raises(RuntimeError, match="'sft' was planned"):  # a set it was not planned for is refused
        list(assemble.batches(run, "sft", OPTIONS[1], 50, traces=tr))


def test_an_empty_run(tmp_path):
    run = RunDir(tmp_path / "empty")
    for name in SETS:
        assert _rows(assemble, run, name, OPTIONS[0]) == []
        assert assemble.why_empty(run, name) == v1.why_empty(run, name)
    assert assemble.build_raw(run, "expansion") == [] and assemble.load_traces(run) == []


def test_a_run_with_stage_1_only(runs, tmp_path):
    """No stage-2 sample at all: every MCQ row has a fresh seeded prompt, as the row code renders it."""
    import shutil

    run = RunDir(tmp_path / "stage1")
    shutil.copytree(runs["synthetic"].path / "mcq", run.path / "mcq")
    for name in SETS:
        _same(_rows(assemble, run, name, OPTIONS[1]), _rows(v1, run, name, _old(OPTIONS[1])))
        assert assemble.why_empty(run, name) == v1.why_empty(run, name)
    assert len(assemble.build_mcq(run)) > 200


def test_content_ids_match_the_row_code():
    tricky = pa.array(["abc", "é😀", 'q"uote', "back\\slash", "tab\there", "line\u2028sep", "\x01", ""])
    got = assemble._content_ids("pair", tricky, pa.array(list(reversed(tricky.to_pylist()))), None)
    want = [content_id("pair", a, b, None) for a, b in zip(tricky.to_pylist(), reversed(tricky.to_pylist()))]
    assert got == want
    assert assemble._content_ids("mcq", pa.array(["x"]), "think", "text") == [content_id("mcq", "x", "think", "text")]
    from builder.records import rng_for

    for g in tricky.to_pylist():
        for seed in (0, -3, 12345678901234567890):
            assert assemble._group_rng(seed, "sft-O", g).random() == rng_for(seed, "sft-O", "group", g).random()


def test_a_broken_stage_file_is_named(runs, tmp_path):
    """A truncated or foreign parquet file in a stage: a StoreError naming it, as RunDir.read gives."""
    import shutil

    from builder.store import StoreError

    run = RunDir(tmp_path / "broken")
    shutil.copytree(runs["synthetic"].path, run.path)
    victim = run.files("expansion")[2]
    victim.write_bytes(victim.read_bytes()[:200])
    for build in (assemble.build_sft, assemble.build_dpo, lambda r: assemble.build_raw(r, "expansion")):
        with pytest.raises(StoreError, match=victim.name):
            build(run)
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"sample_id": ["x"]}), victim)
    with pytest.raises(StoreError, match="do not match"):
        assemble.build_sft(run)
