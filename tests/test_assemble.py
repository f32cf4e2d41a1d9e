"""Assembly from the authors' real generations imported as a run: counts, labels, pairs, sampling."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from builder import assemble
from builder.answers import grade, parse_thought
from builder.assemble import AssembleOptions, length_weighted_subsample
from builder.importer import import_upstream

from helpers import UPSTREAM  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return import_upstream(UPSTREAM, tmp_path_factory.mktemp("run") / "upstream")


@pytest.fixture(scope="module")
def labels(run):
    """Trace counts derived here from the raw labels, independently of builder.assemble."""
    samples = {s["sample_id"]: s for s in run.read("simple_cot").to_pylist() if s["keep"]}
    exp_of = defaultdict(lambda: defaultdict(list))
    for e in run.read("expansion").to_pylist():
        s = samples.get(e["sample_id"])
        if e["keep"] and s:
            exp_of[e["sample_id"]][("O" if s["correct"] else "X") + "_" + ("O" if e["correct"] else "X")].append(e)
    return samples, exp_of


def _expected_pairs(samples, exp_of):
    named = lambda r: r["pred_index"] >= 0  # a rejected side must name an option (normalised answers)
    by_prompt = defaultdict(lambda: {"O": [], "X": []})
    for s in samples.values():
        by_prompt[(s["mcq_id"], s["system_prompt"], s["user_text"])]["O" if s["correct"] else "X"].append(s)
    want = Counter()
    for g in by_prompt.values():
        want["O>X"] += len(g["O"]) * sum(map(named, g["X"]))
    for sid, s in samples.items():
        e = exp_of[sid]
        if s["correct"]:
            want["O>O_X"] += sum(map(named, e["O_X"]))
            want["O>O_O"] += len(e["O_O"])
        else:
            want["X_O>X"] += len(e["X_O"]) * named(s)
            want["X_O>X_X"] += len(e["X_O"]) * sum(map(named, e["X_X"]))
    return +want


def test_dpo_counts_per_kind_match_the_labels(run, labels):
    rows = assemble.build_dpo(run, AssembleOptions(dpo_pairs="all"))
    assert Counter(r["kind"] for r in rows) == _expected_pairs(*labels)


def test_dpo_by_default_keeps_each_chosen_once_as_the_authors_did(run, labels):
    """The authors' rule on their own example outputs: of every candidate pair of a kind, each chosen response
    once (X→O kinds: each rejected response once too); which pair survives is seeded."""
    every = assemble.build_dpo(run, AssembleOptions(dpo_pairs="all"))
    rows = assemble.build_dpo(run)
    by_kind = lambda rs: {k: [r for r in rs if r["kind"] == k] for k in {r["kind"] for r in rs}}
    everything, kept = by_kind(every), by_kind(rows)
    assert set(kept) == set(everything)
    for kind, pairs in kept.items():
        chosen = [r["chosen_id"] for r in pairs]
        assert len(chosen) == len(set(chosen)), kind
        assert {(r["chosen_id"], r["rejected_id"]) for r in pairs} <= \
            {(r["chosen_id"], r["rejected_id"]) for r in everything[kind]}
        if kind.startswith("X_O>"):
            rejected = [r["rejected_id"] for r in pairs]
            assert len(rejected) == len(set(rejected)) and 0 < len(pairs) <= len({r["rejected_id"] for r in everything[kind]})
        else:  # each distinct chosen response of the candidates is in exactly one pair
            assert len(pairs) == len({r["chosen_id"] for r in everything[kind]}), kind
    assert len(rows) < len(every)
    assert assemble.build_dpo(run) == rows  # seeded: the same pairs again
    other = assemble.build_dpo(run, AssembleOptions(seed=1))
    assert Counter(r["kind"] for r in other)["O>X"] == Counter(r["kind"] for r in rows)["O>X"]
    assert {r["example_id"] for r in other} != {r["example_id"] for r in rows}  # another seed, other survivors


def test_dpo_chosen_correct_rejected_wrong_no_duplicates(run):
    """Re-graded from the pair's own prompt: the gold is the stage-1 answer text located in the shown options."""
    from builder.answers import parse_options

    mcqs = {m["mcq_id"]: m for m in run.read("mcq").to_pylist()}
    rows = assemble.build_dpo(run, AssembleOptions(pair_kinds=assemble.PAIR_KINDS))
    assert {r["kind"] for r in rows} >= {"O>X", "X_O>X", "X_O>X_X", "O>O_O"}
    fmt = lambda a: "paren" if a.startswith("(") else "dot" if len(a) == 2 and a.endswith(".") else "text"
    for r in rows:
        m = mcqs[r["mcq_id"]]
        shown = parse_options(r["prompt"][1]["content"].split("Select from the following choices.")[1])
        gold = shown.index(m["options"][m["answer_index"]])
        chosen, rejected = r["chosen"][0]["content"], r["rejected"][0]["content"]
        assert grade(chosen, shown, gold).correct, r["kind"]
        g = grade(rejected, shown, gold)
        if r["kind"] == "O>O_O":  # compactness: both right, the rejected one is the longer thought
            assert g.correct and len(parse_thought(rejected)[0]) > len(parse_thought(chosen)[0])
        else:
            assert not g.correct and g.pred_index >= 0, r["kind"]
        # defect 5: both answers rendered in the same (requested) format
        assert fmt(parse_thought(chosen)[1]) == fmt(parse_thought(rejected)[1])
    keys = [(tuple(m["content"] for m in r["prompt"]), r["chosen"][0]["content"], r["rejected"][0]["content"])
            for r in rows]
    assert len(keys) == len(set(keys))
    assert len({r["example_id"] for r in rows}) == len(rows)


def test_pair_kinds_are_a_parameter(run):
    only = assemble.build_dpo(run, AssembleOptions(pair_kinds=("X_O>X",)))
    assert only and {r["kind"] for r in only} == {"X_O>X"}
    with pytest.raises(ValueError, match="unknown pair kinds"):
        AssembleOptions(pair_kinds=("O>Z",))


def test_sft_is_half_corrected_by_construction(run, labels):
    samples, exp_of = labels
    n_o = sum(s["correct"] for s in samples.values()) + sum(len(e["O_O"]) for e in exp_of.values())
    n_xo = sum(len(e["X_O"]) for e in exp_of.values())
    n = min(int(n_o * 0.1), n_xo)
    rows = assemble.build_sft(run)
    types = Counter(r["cot_type"] for r in rows)
    assert types["X_O"] == n and types["O"] + types["O_O"] == n and set(types) <= {"O", "O_O", "X_O"}
    for r in rows:
        thought, answer = parse_thought(r["messages"][-1]["content"])
        assert r["messages"][-1]["content"] == f"<think> {thought} </think> <answer> {answer} </answer>"
        if r["cot_type"] == "X_O":  # carries the wrong simple thought it started from
            s = samples[r["sample_id"]]
            assert not s["correct"] and r["simple_thought"] == s["thought"] and thought.startswith(s["thought"])
        else:
            assert samples[r["sample_id"]]["correct"]
    again = assemble.build_sft(run)
    assert [r["example_id"] for r in again] == [r["example_id"] for r in rows]  # seeded
    other = assemble.build_sft(run, AssembleOptions(seed=1))
    assert {r["example_id"] for r in other} != {r["example_id"] for r in rows}
    bigger = assemble.build_sft(run, AssembleOptions(sft_ratio=0.2))
    assert len(bigger) > len(rows)


def test_answer_format_override_and_simple_cot_set(run, labels):
    rows = assemble.build_sft(run, AssembleOptions(answer_format="paren"))
    assert all(parse_thought(r["messages"][-1]["content"])[1].startswith("(") for r in rows)
    samples, _ = labels
    sc = assemble.build_simple_cot(run)
    assert len(sc) == int(sum(s["correct"] for s in samples.values()) / 3.75)
    assert {r["cot_type"] for r in sc} == {"O"}


def test_mcq_set_uses_the_prompt_stage2_saw(run):
    rows = assemble.build_mcq(run)
    assert len(rows) == 40
    for r in rows:
        assert grade(r["messages"][-1]["content"], r["options"], r["answer_index"]).correct
        assert "<think>" in r["messages"][0]["content"]


def test_length_weighted_subsample_properties():
    items = [(g, i) for g in "abcd" for i in range(10)]  # length = i
    kw = dict(group=lambda t: t[0], length=lambda t: t[1], key=lambda t: f"{t[0]}{t[1]:02d}", seed=3, tag="t")
    for n in (0, 4, 7, 13, 40, 99):
        got = length_weighted_subsample(items, n, **kw)
        assert len(got) == min(n, 40) and len(set(got)) == len(got)
    assert length_weighted_subsample(items, 13, **kw) == length_weighted_subsample(list(reversed(items)), 13, **kw)
    # per group floor(n/groups) drawn with weight 0.5**rank: the longest item dominates
    firsts = Counter()
    for seed in range(200):
        for g, i in length_weighted_subsample(items, 4, **{**kw, "seed": seed}):
            firsts[i] += 1
    assert firsts[9] > firsts[8] > firsts[7] and firsts[9] > 350


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_the_authors_rule_keeps_the_pairs_its_definition_keeps(seed):
    """The authors' rule, vectorised, against its definition: per kind, shuffle the pairs' numbers with
    ``rng_for(seed, "dpo-pairs", kind)``; walk them keeping each chosen trace's first pair (X→O kinds: then each
    rejected trace's first survivor)."""
    import random

    import numpy as np

    from builder.records import rng_for

    rng = random.Random(seed)
    opts = AssembleOptions(seed=seed, pair_kinds=assemble.PAIR_KINDS)
    n = 3000
    kind = np.array([rng.randrange(len(assemble.PAIR_KINDS)) for _ in range(n)], np.int8)
    c = np.array([rng.randrange(300) for _ in range(n)], np.int64)
    r = np.array([rng.randrange(300) for _ in range(n)], np.int64)
    want = np.zeros(n, bool)
    for k, name in enumerate(opts.pair_kinds):
        at = [i for i in range(n) if kind[i] == k]
        order = list(range(len(at)))
        rng_for(seed, "dpo-pairs", name).shuffle(order)
        seen_c, survivors = set(), []
        for i in (at[j] for j in order):
            if c[i] not in seen_c:
                seen_c.add(c[i])
                survivors.append(i)
        if name.startswith("X_O>"):
            seen_r: set = set()
            survivors = [i for i in survivors if not (r[i] in seen_r or seen_r.add(r[i]))]
        want[survivors] = True
    got = assemble._authors_rule(kind, c, r, opts)
    assert (got == want).all() and 0 < got.sum() < n
