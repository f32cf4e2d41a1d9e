"""`lpt stats`: the numbers of a run directory and of an exported folder (counted with builder.records.tally),
and the PNG figures (valid files, a title and labelled axes on every plot)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from click.testing import CliRunner
from PIL import Image

from builder import assemble
from builder.cli import stats_cmd
from builder.export import export
from builder.importer import import_upstream
from builder.records import tally
from builder.stats import FIGURES, compute, describe, make_figures, write_figures
from builder.store import RunDir

from helpers import UPSTREAM, ReplayEngine, make_source, run_all, small_config  # noqa: E402


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stats")
    import_upstream(UPSTREAM, tmp / "run")
    export(tmp / "run", tmp / "hub")
    return tmp


@pytest.fixture(scope="module")
def replay_run(tmp_path_factory):
    """A run made by the pipeline (REPLAY engine): invalid questions, unparseable samples, duplicates, bad words."""
    tmp = tmp_path_factory.mktemp("stats_replay")
    run = RunDir(tmp / "run")
    make_source(run, tmp)
    run_all(run, ReplayEngine(), small_config())
    return run


def test_numbers_of_a_run(made):
    run = RunDir(made / "run")
    s = compute(run)
    assert s["input"] == {"kind": "run", "path": str(made / "run"), "label": f"run directory {made / 'run'}"}
    e = run.read("expansion")
    assert s["counts"]["expansion"] == tally(e) and s["counts"]["simple_cot"] == tally(run.read("simple_cot"))
    funnel = {f["stage"]: f for f in s["funnel"]}
    assert (funnel["expansion"]["items"], funnel["expansion"]["parsed"], funnel["expansion"]["correct"],
            funnel["expansion"]["kept"]) == (1200, 1120, 1093, 517)
    assert funnel["mcq"]["items"] == 40 and funnel["mcq"]["kept"] == 40
    rows = e.to_pylist()
    assert s["drops"]["expansion"] == dict(Counter(r["drop_reason"] for r in rows if not r["keep"]))
    assert sum(s["drops"]["expansion"].values()) == 1200 - 517
    assert s["bad_words"] == dict(Counter(r["bad_word"] for r in rows if r["bad_word"]))
    assert s["counts"]["expansion_of_X"]["rows"] + s["counts"]["expansion_of_O"]["rows"] == 1200

    samples = run.read("simple_cot").to_pylist()
    recog = [r for r in samples if r["question_type"] == "Recognition" and r["keep"]]
    acc = s["accuracy_by_question_type"]["simple_cot"]["Recognition"]
    assert acc["kept"] == len(recog) and acc["accuracy"] == pytest.approx(sum(r["correct"] for r in recog) / len(recog))

    L = s["lengths"]
    assert L["simple"]["n"] == sum(r["keep"] for r in samples) and L["expanded"]["n"] == 517
    assert L["expanded"]["median"] > L["simple"]["median"] and set(L["added_by_cue"]) == {"Wait,"}
    assert sum(v["n"] for v in L["by_type"].values()) == L["simple"]["n"] + L["expanded"]["n"]

    traces = assemble.load_traces(run)
    assert s["sft"]["cot_type"] == dict(Counter(t.cot_type for t in assemble.sft_traces(traces)))
    assert s["dpo"]["kind"] == dict(sorted(Counter(k for k, _, _ in assemble.dpo_pairs(traces)).items()))
    assert s["sft"]["from"].startswith("assembled from the run")
    json.dumps(s)  # JSON-able, for a card


def test_numbers_of_an_export_match_the_run_and_read_its_sets(made):
    run_stats, out_stats = compute(made / "run"), compute(made / "hub")
    assert out_stats["input"]["kind"] == "export"
    for key in ("counts", "funnel", "drops", "bad_words", "accuracy_by_question_type", "lengths"):
        assert out_stats[key] == run_stats[key], key
    import datasets

    dpo = datasets.load_dataset(str(made / "hub"), "dpo", split="train")
    assert out_stats["dpo"]["kind"] == dict(sorted(Counter(dpo["kind"]).items()))
    assert out_stats["dpo"]["from"] == "the export's dpo config" and out_stats["sft"]["rows"] == 112


def test_an_export_without_its_sets_says_so_and_assembles_nothing(made, tmp_path):
    """An export of the raw configs alone: its sets are counted as absent (the export's own words), never
    assembled from its raw configs as if it were a run."""
    export(made / "run", tmp_path / "raw", configs=["raw_mcq", "raw_simple_cot", "raw_expansion"])
    got = compute(tmp_path / "raw")
    assert got["sft"] == {"rows": 0, "from": "the export has no sft config", "cot_type": {}}
    assert got["dpo"]["rows"] == 0 and got["dpo"]["from"] == "the export has no dpo config"
    assert got["counts"] == compute(made / "run")["counts"]


def test_what_each_filter_removed_in_a_pipeline_run(replay_run):
    s = compute(replay_run)
    mcq = [r for r in replay_run.read("mcq").to_pylist() if r["item_index"] >= 0]
    assert s["drops"]["mcq"] == dict(Counter(r["invalid_reason"] for r in mcq if not r["valid"])) != {}
    samples = replay_run.read("simple_cot").to_pylist()
    assert s["drops"]["simple_cot"] == dict(Counter(r["drop_reason"] for r in samples if not r["keep"]))
    assert {"unparseable", "duplicate"} <= set(s["drops"]["simple_cot"])
    assert s["funnel"][0]["parsed"] == sum(r["valid"] for r in mcq)


def test_every_figure_has_a_title_and_labelled_axes(made, replay_run):
    import matplotlib.pyplot as plt

    for source in (made / "run", made / "hub", replay_run):
        figs = make_figures(source)
        assert set(figs) <= set(FIGURES) and {"funnel", "drop_reasons", "thought_lengths",
                                               "accuracy_by_question_type", "dpo_composition"} <= set(figs)
        for stem, fig in figs.items():
            axes = describe(fig)
            assert axes, stem
            for ax in axes:
                assert ax["title"] == FIGURES[stem] and ax["xlabel"] and ax["ylabel"], (stem, ax)
            plt.close(fig)


def test_write_figures_writes_valid_pngs(made, tmp_path):
    paths = write_figures(made / "hub", tmp_path / "figs")
    assert [p.stem for p in paths] == [s for s in FIGURES if s in {p.stem for p in paths}] and len(paths) >= 8
    for p in paths:
        assert p.parent == tmp_path / "figs"
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width >= 500 and im.height >= 200
            im.verify()


def test_stats_command(made, tmp_path):
    runner = CliRunner()
    r = runner.invoke(stats_cmd, [str(made / "run"), "-o", str(tmp_path / "plots")])
    assert r.exit_code == 0, r.output
    assert f"run directory {made / 'run'}: records per stage" in r.output
    assert "what each filter removed" in r.output and "bad_word" in r.output and "X→O ≻ X" in r.output
    assert "wrote 9 plots to" in r.output and len(list((tmp_path / "plots").glob("*.png"))) == 9
    r = runner.invoke(stats_cmd, [str(made / "hub"), "--json", "--no-plots"])
    assert r.exit_code == 0 and json.loads(r.output)["input"]["kind"] == "export"
    r = runner.invoke(stats_cmd, [str(tmp_path / "plots")])
    assert r.exit_code == 1 and "neither a run directory" in r.output


def test_stats_and_view_read_the_table_the_registry_names_for_a_role(made, tmp_path):
    """The products ask the stage registry for the long-thought table (builder.stages.table_for): a later stage
    that provides the role (here a stage 4 whose table is a copy of the expansions) is what they count and
    show, under its own name and number."""
    import dataclasses
    import shutil

    import builder.stages as stages
    from builder.view import collect

    run = tmp_path / "run"
    shutil.copytree(made / "run", run)
    shutil.copytree(run / "expansion", run / "rewrite")
    three = stages.get_stage("expansion")
    stages.register(dataclasses.replace(three, number=4, table=dataclasses.replace(three.table, name="rewrite"),
                                        reads="long_thought"))
    try:
        _counted_and_shown_as_stage_4(run, stages, collect)
    finally:
        stages.unregister("rewrite")


def _counted_and_shown_as_stage_4(run, stages, collect):
    assert stages.table_for("long_thought") == "rewrite"

    s = compute(RunDir(run))
    assert [f["stage"] for f in s["funnel"]] == ["mcq", "simple_cot", "rewrite"]
    assert s["funnel"][2]["title"] == "stage 4 · expansions" and s["funnel"][2]["items"] == 1200
    assert s["counts"]["rewrite"] == tally(RunDir(run).read("rewrite")) and "expansion" not in s["counts"]
    assert {"rewrite_of_O", "rewrite_of_X"} <= set(s["counts"]) and set(s["drops"]) == {"mcq", "simple_cot", "rewrite"}
    page = collect(run, images=False)
    assert list(page["meta"]["counts"]) == ["mcq", "simple_cot", "rewrite"] and len(page["exp"]["id"]) == 1200


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 1001])
def test_lengths_are_counted_exactly_without_a_list(n):
    """The figures' lengths are counts per length (memory flat in the run's size); every number they give is the
    one a sorted list gives: statistics' mean and median, the card's p90, matplotlib's box (quartiles, whiskers,
    notch), and the histogram's bars."""
    import statistics

    import numpy as np
    from matplotlib import cbook

    from builder.stats import Lengths, _summary

    rng = np.random.default_rng(n)
    words = np.concatenate([rng.integers(0, 300, n), rng.integers(5000, 5003, n // 100)])  # a far tail: fliers
    lengths = Lengths()
    for part in np.array_split(words, 3):
        lengths.add(part)
    s = sorted(words.tolist())
    assert len(lengths) == len(s) and lengths.max() == s[-1]
    assert [lengths.nth(k) for k in range(len(s))] == s
    assert _summary(lengths) == {"n": len(s), "mean": statistics.fmean(s), "median": statistics.median(s),
                                 "p90": s[min(len(s) - 1, int(0.9 * len(s)))], "max": s[-1]}
    ours, theirs = lengths.box(), cbook.boxplot_stats(np.array(s))[0]
    for key in ("mean", "med", "q1", "q3", "iqr", "cilo", "cihi", "whislo", "whishi"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-12, abs=1e-12), key
    values, counts = lengths.values()
    bins = list(range(0, s[-1] + 40, 40))
    assert (np.histogram(values, bins, weights=counts)[0] == np.histogram(s, bins)[0]).all()


def test_long_thoughts_take_their_question_type_from_their_own_simple_thought(made):
    """The long thoughts' accuracy per question type joins them to their simple thoughts on hashed ids: every
    long thought counted once, under its own simple thought's type."""
    run = RunDir(made / "run")
    s = compute(run)["accuracy_by_question_type"]["expansion"]
    qt = {r["sample_id"]: r["question_type"] for r in run.read("simple_cot").to_pylist()}
    rows = run.read("expansion").to_pylist()
    want = Counter(qt.get(r["sample_id"]) or "(none)" for r in rows)
    assert {k: v["rows"] for k, v in s.items()} == dict(want)
    kept = Counter(qt.get(r["sample_id"]) or "(none)" for r in rows if r["keep"])
    assert {k: v["kept"] for k, v in s.items()} == {k: kept.get(k, 0) for k in want}


def test_a_stage_is_tallied_part_by_part_as_it_is_whole(made):
    """The viewer's header counts each stage part by part (no order, no ids): the same numbers as the stage read
    whole, for a run and for its export."""
    from builder.stats import open_input, stage_tables, tally_columns

    for path in (made / "run", made / "hub"):
        o = open_input(path)
        for s in stage_tables():
            assert o.tally(s) == tally(o.read(s, tally_columns(s))), (path, s)
        assert o.tally(stage_tables()[2])["rows"] == 1200
