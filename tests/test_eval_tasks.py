"""The LPT lighteval tasks and metrics through the real lighteval 0.13 Pipeline, on fixtures in each
benchmark's real schema (written by eval_tasks.samples; images made with PIL).

One Pipeline runs every task: for the think tasks a canned "oracle" model answers the gold letter (100 %);
for the ``_direct`` tasks it answers with the *text of a wrong option* (0 %); extra tasks on unbalanced
fixtures get hand-picked right/wrong answers to check macro vs micro, CV-Bench's formula and MMVP pairs.
The model is a canned-answer LightevalModel (named so): the engine-backed model is tested in test_eval_model.py.
"""

from __future__ import annotations

import dataclasses
import re
import types
from pathlib import Path

import pytest

pytest.importorskip("lighteval")

from builder.answers import LETTERS, MATCHER_VERSION  # noqa: E402
from builder.prompts import Prompts  # noqa: E402
from eval_tasks import samples  # noqa: E402
from eval_tasks.metrics import summarize  # noqa: E402
from eval_tasks.samples import Spec  # noqa: E402
from eval_tasks import common, tasks  # noqa: E402
from eval_tasks.common import ItemError  # noqa: E402
from eval_tasks.tasks import BENCHMARKS, make_task, make_tasks  # noqa: E402


def prompt(bench, variant, root, line, task, *, max_pixels=None):
    """The task file's ``prompt(line, task)`` with a variant, local root and pixel cap bound (as ``task()`` binds)."""
    info = BENCHMARKS[bench]
    hub = (info["HF_REPO"], info["HF_REVISION"]) if bench != "lpt_mme_rw_v" else ("", None)
    setup = common.Setup(variant=variant, protocol="project", root=root, max_pixels=max_pixels, hub=hub)
    return tasks.module(bench).prompt(line, task, setup)

# Unbalanced fixtures: (spec, answered right?)
VSTAR_UNBALANCED = [
    (Spec("What colour is the cup?", ["red", "blue", "green", "white"], 1, "direct_attributes", {"id": "a1"}), True),
    (Spec("What colour is the hat?", ["red", "blue", "green", "white"], 2, "direct_attributes", {"id": "a2"}), True),
    (Spec("What colour is the car?", ["red", "blue", "green", "white"], 3, "direct_attributes", {"id": "a3"}), False),
    (Spec("Is the dog left or right of the cat?", ["left", "right"], 0, "relative_position", {"id": "p1"}), False),
]
# by hand: direct_attributes 2/3, relative_position 0/1 -> macro (2/3 + 0)/2 = 1/3, micro 2/4 = 1/2
CVBENCH_SOURCES = [
    (Spec("How many cups?", ["1", "2", "3", "4"], 0, "Count", {"source": "ADE20K", "id": 0}), True),
    (Spec("How many hats?", ["1", "2", "3", "4"], 1, "Count", {"source": "ADE20K", "id": 1}), False),
    (Spec("Is the cup left of the hat?", ["yes", "no"], 0, "Relation", {"source": "COCO", "id": 2}), True),
    (Spec("Which is closer, cup or hat?", ["cup", "hat"], 1, "Depth", {"source": "Omni3D", "id": 3}), False),
    (Spec("Which is farther, cup or hat?", ["cup", "hat"], 0, "Distance", {"source": "Omni3D", "id": 4}), False),
]
# by hand: official = ½((ADE20K 1/2 + COCO 1/1)/2 + Omni3D 0/2) = 0.375; micro 2/5; macro (1/2+1+0+0)/4 = 0.375
MMVP_PAIRS = [  # Index 1,2 = pair 0; Index 3,4 = pair 1 (written in a shuffled order on purpose)
    (Spec("Is the door open or closed?", ["Open", "Closed"], 0, "", {"index": 3}), True),
    (Spec("Is the door open or closed?", ["Open", "Closed"], 1, "", {"index": 1}), True),
    (Spec("Is the cup full or empty?", ["Full", "Empty"], 1, "", {"index": 4}), False),
    (Spec("Is the cup full or empty?", ["Full", "Empty"], 0, "", {"index": 2}), True),
]
# by hand: acc 3/4; pair 0 = Index 1,2 both right -> 1; pair 1 = Index 3 right, 4 wrong -> 0; pair acc 1/2

N_ITEMS = 6
AUTHORS_DIR = Path(__file__).resolve().parent / "data" / "authors_ab1a9a0"  # their files at the pinned commit


@pytest.fixture(scope="module", autouse=True)
def authors_files(tmp_path_factory):
    """The authors' files (prepare.py, MMLU-Pro templates) from the test data, as a user's checkout would give;
    and a datasets cache of this module's own (datasets keys a local folder's prepared copy by its layout, so a
    shared cache can hand back another run's stand-ins)."""
    from datasets import config

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LPT_AUTHORS_DIR", str(AUTHORS_DIR))
        mp.setattr(config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("datasets-cache"))
        yield AUTHORS_DIR


def _right_ids():
    return {("lpt_vstar_unbalanced", str(s.extra["id"])) for s, ok in VSTAR_UNBALANCED if ok} | \
        {("lpt_cvbench_sources", str(s.extra["id"])) for s, ok in CVBENCH_SOURCES if ok} | \
        {("lpt_mmvp_pairs", str(s.extra["index"])) for s, ok in MMVP_PAIRS if ok}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaldata")
    samples.write_sample_data(root / "main", n=N_ITEMS)
    samples.write_vstar(root / "unbalanced" / "lpt_vstar", [s for s, _ in VSTAR_UNBALANCED])
    samples.write_cvbench(root / "unbalanced" / "lpt_cvbench", [s for s, _ in CVBENCH_SOURCES])
    samples.write_mmvp(root / "unbalanced" / "lpt_mmvp", [s for s, _ in MMVP_PAIRS])
    # MME-RealWorld's original release (annotation JSON + image files) next to the Hub mirror's parquet in main/
    samples.write_mme_rw_json(root / "json" / "lpt_mme_rw_v", samples.default_specs("lpt_mme_rw_v", N_ITEMS))
    # MMVP/MMVP's layout (Questions.csv + image files), which the authors protocol reads
    samples.write_mmvp_authors(root / "csv" / "lpt_mmvp", samples.default_specs("lpt_mmvp", N_ITEMS))
    return root


@pytest.fixture(scope="module")
def results(data_dir, tmp_path_factory):
    """Run one lighteval Pipeline over every task with the canned-answer model; return its results dict."""
    from lighteval.logging.evaluation_tracker import EvaluationTracker
    from lighteval.models import abstract_model as am
    from lighteval.models.model_output import ModelResponse
    from lighteval.pipeline import ParallelismManager, Pipeline, PipelineParameters
    from lighteval.utils.cache_management import SampleCache

    right = _right_ids()

    class CannedConfig(am.ModelConfig):
        model_name: str = "canned-oracle"

    class CannedAnswers(am.LightevalModel):
        """Canned answers (no weights): gold letter on think tasks, a wrong option's text on _direct tasks."""

        def __init__(self, config):
            self.config = config
            self._cache = SampleCache(config)

        tokenizer = property(lambda self: None)
        add_special_tokens = property(lambda self: False)
        max_length = property(lambda self: 4096)

        def answer(self, d):
            task = d.task_name.split("|")[0]
            gold, opts = d.gold_index, d.specific["options"]
            if d.specific.get("skipped"):
                return ""  # as eval_tasks.model: a row that could not be parsed is not asked
            if task.endswith("_direct"):
                return f"<answer> {opts[(gold + 1) % len(opts)]} </answer>"  # text of a wrong option
            if task in ("lpt_vstar_unbalanced", "lpt_cvbench_sources", "lpt_mmvp_pairs"):
                ok = (task, str(d.specific["id"])) in right
                return f"<think>look</think> <answer> ({LETTERS[gold if ok else (gold + 1) % len(opts)]}) </answer>"
            return f"<think>I look closely.</think> <answer> ({LETTERS[gold]}) </answer>"

        def greedy_until(self, docs):
            return [ModelResponse(text=[self.answer(d)]) for d in docs]

        def loglikelihood(self, docs):
            raise NotImplementedError

        def loglikelihood_rolling(self, docs):
            raise NotImplementedError

    extra = [
        dataclasses.replace(make_task("lpt_vstar", "think", data_dir / "unbalanced"), name="lpt_vstar_unbalanced"),
        dataclasses.replace(make_task("lpt_cvbench", "think", data_dir / "unbalanced"), name="lpt_cvbench_sources"),
        dataclasses.replace(make_task("lpt_mmvp", "think", data_dir / "unbalanced"), name="lpt_mmvp_pairs"),
        dataclasses.replace(make_task("lpt_mme_rw_v", "think", data_dir / "json"), name="lpt_mme_rw_v_json"),
        dataclasses.replace(make_task("lpt_mmvp", "think", data_dir / "csv"), name="lpt_mmvp_csv"),
        dataclasses.replace(make_task("lpt_vstar", "think", data_dir / "main", protocol="project"),
                            name="lpt_vstar_project"),
    ]
    module = types.ModuleType("lpt_test_tasks")
    module.TASKS_TABLE = make_tasks(data_dir / "main") + extra
    names = [c.name for c in module.TASKS_TABLE]
    out = tmp_path_factory.mktemp("out")
    pipeline = Pipeline(
        tasks=",".join(f"{n}|0" for n in names),
        pipeline_parameters=PipelineParameters(launcher_type=ParallelismManager.NONE, custom_tasks_directory=module),
        evaluation_tracker=EvaluationTracker(output_dir=str(out), save_details=True),
        model=CannedAnswers(CannedConfig(cache_dir=str(out / "cache"))),
    )
    pipeline.evaluate()
    pipeline.save_and_push_results()  # details parquet: per-sample dicts must be Arrow-serialisable
    res = pipeline.get_results()["results"]
    return {k.split(":")[0].split("|")[0]: v for k, v in res.items()}, out


@pytest.mark.parametrize("bench", list(BENCHMARKS))
def test_oracle_scores_100_and_wrong_option_text_scores_0(results, bench):
    res, _ = results
    think, direct = res[bench], res[f"{bench}_direct"]
    assert think["acc"] == 1.0 and think["acc_macro"] == 1.0 and think["acc_micro"] == 1.0
    assert direct["acc"] == 0.0 and direct["acc_macro"] == 0.0 and direct["acc_micro"] == 0.0


def test_categories_are_reported_per_benchmark(results):
    res, _ = results
    assert {"acc_direct_attributes", "acc_relative_position"} <= set(res["lpt_vstar"])
    assert {"acc_count", "acc_relation", "acc_depth", "acc_distance"} <= set(res["lpt_cvbench"])
    # MMStar-V keeps only its 3 vision-centric categories; the fixture's "math" rows are dropped
    overall = ("acc_macro", "acc_micro", "acc_stderr", "acc_macro_authors", "acc_micro_authors")
    assert {k for k in res["lpt_mmstar_v"] if k.startswith("acc_") and k not in overall} == {
        "acc_coarse_perception", "acc_fine_grained_perception", "acc_instance_reasoning"}
    mme = {k for k in res["lpt_mme_rw_v"] if k.startswith("acc_perception") or k.startswith("acc_reasoning")}
    assert mme == {"acc_perception_remote_sensing", "acc_perception_monitoring", "acc_perception_autonomous_driving",
                   "acc_reasoning_monitoring", "acc_reasoning_autonomous_driving"}
    assert len({k for k in res["lpt_mmlu_pro"] if k.startswith("acc_")} - set(overall)) == 3
    assert res["lpt_cvbench"]["acc_cvbench_official"] == 1.0 and res["lpt_mmvp"]["acc_pair"] == 1.0
    assert res["lpt_mmvp_direct"]["acc_pair"] == 0.0


def test_mme_realworld_hub_mirror_and_original_json_give_the_same_items(results, data_dir):
    res, _ = results
    hub, local_json = res["lpt_mme_rw_v"], res["lpt_mme_rw_v_json"]
    cats = {"acc_perception_remote_sensing", "acc_perception_monitoring", "acc_perception_autonomous_driving",
            "acc_reasoning_monitoring", "acc_reasoning_autonomous_driving"}
    assert {k for k in local_json if k.startswith(("acc_perception", "acc_reasoning"))} == cats
    assert local_json["acc_macro"] == hub["acc_macro"] == 1.0
    assert list(make_task("lpt_mme_rw_v", "think", data_dir / "json").evaluation_splits) == ["test"]
    assert make_task("lpt_mme_rw_v").hf_repo == "yifanzhang114/MME-RealWorld-Lmms-eval"
    assert list(make_task("lpt_mme_rw_v").evaluation_splits) == ["train"]


def test_macro_and_micro_differ_as_computed_by_hand(results):
    res, _ = results
    r = res["lpt_vstar_unbalanced"]
    assert r["acc_direct_attributes"] == pytest.approx(2 / 3)
    assert r["acc_relative_position"] == 0.0
    assert r["acc_macro"] == pytest.approx(1 / 3)
    assert r["acc_micro"] == pytest.approx(1 / 2) == r["acc"]


def test_cvbench_official_formula_by_source(results):
    r = results[0]["lpt_cvbench_sources"]
    assert r["acc_cvbench_official"] == pytest.approx(0.5 * ((1 / 2 + 1) / 2 + 0))
    assert r["acc_micro"] == pytest.approx(2 / 5)
    assert r["acc_macro"] == pytest.approx((1 / 2 + 1 + 0 + 0) / 4)


def test_mmvp_pairs_come_from_index_not_doc_order(results):
    r = results[0]["lpt_mmvp_pairs"]
    assert r["acc"] == pytest.approx(3 / 4)
    assert r["acc_pair"] == pytest.approx(1 / 2)


def test_details_hold_the_protocols_prompt_and_category(results):
    import pyarrow.parquet as pq

    from eval_tasks import protocols

    _, out = results
    for task, system, lead in (("lpt_vstar", protocols.system_prompt("authors"),
                                " Select the correct answer from the following options:\n(A) "),
                               ("lpt_vstar_project", Prompts().benchmark_system("think"),
                                "\nSelect from the following choices.\n(A) ")):
        files = sorted(out.glob(f"details/**/details_{task}|0_*.parquet"))
        assert files, list(out.rglob("*.parquet"))
        doc = pq.read_table(files[0]).to_pylist()[0]["doc"]
        assert doc["instruction"] == system and lead in doc["query"]
        assert doc["specific"]["category"] in ("direct_attributes", "relative_position")


def test_results_record_protocol_and_both_scores(results):
    res, _ = results
    assert res["lpt_vstar"]["protocol_authors"] == 1.0 and "protocol_project" not in res["lpt_vstar"]
    assert res["lpt_vstar_project"]["protocol_project"] == 1.0
    for bench in BENCHMARKS:
        assert res[bench]["acc_macro_authors"] == 1.0  # the gold letter: right by both rules
        # a wrong option's text: wrong for our matcher, right for the authors' rule (any option text counts)
        assert res[f"{bench}_direct"]["acc_macro"] == 0.0 and res[f"{bench}_direct"]["acc_macro_authors"] == 1.0


def test_mmstar_layouts_nan_padding_and_a_broken_row(results):
    """The stand-in MMStar holds both layouts, "nan"-padded items and one row without options: the task ends
    normally, every parsable item is scored (the oracle gets all right) and the broken row is counted."""
    r = results[0]["lpt_mmstar_v"]
    assert r["acc"] == 1.0 and r["acc_macro"] == 1.0
    assert r["skipped"] == 1.0 and r["skipped_bad_options"] == 1.0


def test_mmvp_from_the_authors_csv_layout(results):
    r = results[0]["lpt_mmvp_csv"]
    assert r["acc"] == 1.0 and r["acc_pair"] == 1.0 and r["skipped"] == 0.0


def test_summarize_by_hand():
    items = [{"category": "a", "correct": 1.0}, {"category": "a", "correct": 1.0}, {"category": "a", "correct": 0.0},
             {"category": "b", "correct": 0.0}]
    out = summarize(items)
    assert out["acc_macro"] == pytest.approx((2 / 3 + 0) / 2) and out["acc_micro"] == 0.5
    assert "acc_pair" not in out and "acc_cvbench_official" not in out
    assert out["matcher_version"] == MATCHER_VERSION  # the results file records the rule that scored it


# ---------------------------------------------------------------------------------- prompt functions


def _line(**kw):
    return {"__index": 7, "__few_shots": False, **kw}


def test_vstar_prompt_caps_pixels_and_builds_paper_prompt(tmp_path):
    spec = Spec("What is the material of the glove?", ["leather", "cotton", "rubber", "wool"], 2, "direct_attributes")
    samples.write_vstar(tmp_path / "lpt_vstar", [spec], size=(2000, 1500))
    import json

    line = json.loads((tmp_path / "lpt_vstar" / "test_questions.jsonl").read_text().splitlines()[0])
    doc = prompt("lpt_vstar", "direct", str(tmp_path / "lpt_vstar"), _line(**line), "lpt_vstar_direct")
    w, h = doc.images[0].size
    assert w * h <= 512 * 512 and abs(w / h - 2000 / 1500) < 0.01
    assert doc.instruction == Prompts().benchmark_system("direct")
    assert doc.query == ("What is the material of the glove?\nSelect from the following choices.\n"
                         "(A) leather\n(B) cotton\n(C) rubber\n(D) wool")
    assert doc.gold_index == 2 and doc.specific["category"] == "direct_attributes"


def test_inline_option_parsing_mmvp_mmstar_realworldqa():
    from PIL import Image

    img = Image.new("RGB", (8, 8))
    mmvp = prompt("lpt_mmvp", "think", None, _line(Index=5, Question="Is the flag waving?",
                                                     Options="(a) Yes (b) No", **{"Correct Answer": "(b)"}, image=img),
                  "lpt_mmvp")
    assert mmvp.specific["options"] == ["Yes", "No"] and mmvp.gold_index == 1 and mmvp.specific["pair"] == 2
    star = prompt("lpt_mmstar_v", "think", None, _line(
        index=1, question="Which colour is the ball?\nOptions: A: dark red, B: blue, C: green, D: white",
        answer="A", category="fine-grained perception", image=img), "lpt_mmstar_v")
    assert star.specific["options"] == ["dark red", "blue", "green", "white"] and star.gold_index == 0
    assert star.query.startswith("Which colour is the ball?\nSelect from the following choices.")
    # MathVista's layout (the old parser raised on it and ended the task) and "nan" padding options dropped
    vista = prompt("lpt_mmstar_v", "think", None, _line(
        index=2, question="Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, "
                          "at the end.\nQuestion: How many balls are there?\nChoices:\n(A) 1\n(B) 2\n(C) nan\n(D) nan",
        answer="B", category="instance reasoning", image=img), "lpt_mmstar_v")
    assert vista.specific["options"] == ["1", "2"] and vista.gold_index == 1
    assert vista.query.startswith("How many balls are there?\nSelect from")
    padded = prompt("lpt_mmstar_v", "think", None, _line(
        index=3, question="Which?\nOptions: A: nan, B: cat, C: dog", answer="C", category="coarse perception",
        image=img), "lpt_mmstar_v")
    assert padded.specific["options"] == ["cat", "dog"] and padded.gold_index == 1
    on_nan = prompt("lpt_mmstar_v", "think", None, _line(
        index=4, question="Which?\nOptions: A: cat, B: dog, C: nan", answer="C", category="coarse perception",
        image=img), "lpt_mmstar_v")
    assert on_nan.specific["skipped"] == "bad_answer"
    rwqa = prompt("lpt_realworldqa", "think", None, _line(
        question="Which way does the road bend?\n\nA. Left\nB. Right\nC. Straight\nPlease answer directly with only "
                 "the letter of the correct option and nothing else.", answer="C", image=img), "lpt_realworldqa")
    assert rwqa.specific["options"] == ["Left", "Right", "Straight"] and rwqa.gold_index == 2
    open_ended = prompt("lpt_realworldqa", "think", None, _line(
        question="How many cars are there?\nPlease answer directly with a single word or number.", answer="3",
        image=img), "lpt_realworldqa")
    assert open_ended is None


def test_mme_realworld_parquet_rows():
    import base64
    import io

    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (300, 200), (9, 9, 9)).save(png, format="PNG")
    line = _line(index=3, question="What colour is the car?", answer="B", category="Reasoning/Autonomous_Driving",
                 **{"multi-choice options": ["\uff08A\uff09 red", "\uff08B\uff09 blue", "(C) green"],
                    "l2-category": "vehicle/attribute", "bytes": base64.b64encode(png.getvalue()).decode()})
    doc = prompt("lpt_mme_rw_v", "think", None, line, "lpt_mme_rw_v", max_pixels=50 * 50)
    assert doc.specific["options"] == ["red", "blue", "green"] and doc.gold_index == 1  # full-width letters too
    assert doc.specific["category"] == "Reasoning.Autonomous_Driving"
    w, h = doc.images[0].size
    assert w * h <= 50 * 50 and abs(w / h - 1.5) < 0.1  # capped by the argument, not the environment
    ocr = dict(line, category="Perception/OCR with Complex Context")
    assert prompt("lpt_mme_rw_v", "think", None, ocr, "lpt_mme_rw_v") is None  # not in MME-RW-V
    broken = prompt("lpt_mme_rw_v", "think", None, dict(line, bytes="not an image"), "lpt_mme_rw_v")
    assert broken.specific["skipped"] == "bad_image"
    assert broken.specific["skipped_why"].startswith("lpt_mme_rw_v row 7: image cannot be read")


def test_mmlu_pro_is_text_only():
    doc = prompt("lpt_mmlu_pro", "think", None, _line(question="2+2?", options=["3", "4", "5"], answer="B",
                                                        answer_index=1, category="math"), "lpt_mmlu_pro")
    assert doc.images is None and doc.gold_index == 1 and doc.specific["category"] == "math"


def test_bad_row_is_skipped_with_a_reason_naming_task_row_and_field(tmp_path):
    """A row that cannot be parsed becomes a skipped Doc (counted by the metrics), never an exception that would
    end the task; its message names task, row and field."""
    cases = [("lpt_cvbench", None, _line(question="q", answer="(A)"), "missing_field",
              r"lpt_cvbench row 7: missing field 'choices'"),
             ("lpt_mmlu_pro", None, _line(question="q", options=["a", "b"], answer="Z", category="x"), "bad_answer",
              r"lpt_mmlu_pro row 7: answer 'Z'"),
             ("lpt_vstar", str(tmp_path), _line(image="x/missing.jpg", text="q?\n(A) a\n(B) b", label="A",
                                                category="c"), "bad_image", "image file .* not found")]
    for bench, root, line, reason, message in cases:
        doc = prompt(bench, "think", root, line, bench)
        assert doc.specific["skipped"] == reason and re.search(message, doc.specific["skipped_why"])
    with pytest.raises(ItemError, match=r"lpt_cvbench row 7: missing field 'choices'"):
        tasks.module("lpt_cvbench").parse(_line(question="q", answer="(A)"), common.DEFAULT)


def test_readme_example_benchmark_is_one_new_file(tmp_path, monkeypatch):
    """The README's "Extend: add a benchmark" file, dropped in a folder of eval_tasks.benchmarks, is a task
    (catalog, make_task, lighteval's Docs from a local copy) without touching any other file."""
    import re as _re
    from pathlib import Path

    from datasets import Dataset, Image as ImageFeature
    from lighteval.tasks.lighteval_task import LightevalTask
    from PIL import Image

    from eval_tasks import benchmarks, catalog

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("#### Extend: add a benchmark", 1)[1]
    code = _re.search(r"```python\n(.*?)```", section, _re.S).group(1)
    extra = tmp_path / "more"
    extra.mkdir()
    (extra / "blink_depth.py").write_text(code)
    monkeypatch.setattr(benchmarks, "__path__", [*benchmarks.__path__, str(extra)])
    catalog.refresh()
    try:
        assert "lpt_blink_depth" in catalog.names() and catalog.titles()["lpt_blink_depth"] == "BLINK depth"
        rows = [{"question": "Which point is closer?", "choices": ["A", "B"], "answer": "(B)",
                 "image_1": Image.new("RGB", (8, 8))}]
        folder = tmp_path / "data" / "lpt_blink_depth"
        folder.mkdir(parents=True)
        Dataset.from_list(rows).cast_column("image_1", ImageFeature()).to_parquet(str(folder / "depth.parquet"))
        (folder / "README.md").write_text("---\nconfigs:\n- config_name: Relative_Depth\n  data_files:\n"
                                          "  - split: val\n    path: depth.parquet\n---\n")
        config = make_task("lpt_blink_depth", "think", tmp_path / "data")
        (doc,) = LightevalTask(config).eval_docs()
        assert doc.gold_index == 1 and doc.specific["options"] == ["A", "B"] and doc.images
    finally:
        monkeypatch.undo()
        catalog.refresh()


def test_plain_import_has_no_side_effects(tmp_path):
    """Importing the aggregating module loads neither lighteval nor the offline fixes; a task file imports
    lighteval (its shape needs it) but changes nothing either. The table is built when lighteval asks for it."""
    import subprocess
    import sys

    code = ("import sys, eval_tasks.tasks as t; from eval_tasks import _offline; "
            "print('lighteval' in sys.modules, _offline._done); "
            "import eval_tasks.benchmarks.vstar as v; print(_offline._done, [c.name for c in v.TASKS_TABLE]); "
            "print(len(t.TASKS_TABLE), _offline._done)")
    env = {**__import__("os").environ, "LPT_EVAL_DATA_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "False False"
    assert lines[1] == "False ['lpt_vstar', 'lpt_vstar_direct']"
    assert lines[2] == f"{2 * len(BENCHMARKS)} True"


def test_mme_rw_v_streams_only_the_rows_max_samples_asks_for(tmp_path, monkeypatch):
    """With max_rows, MME-RW-V streams the mirror and stops: a shard after the rows it needs is never opened (the
    third shard here is not even parquet). The Hub repository is replaced by a local folder of the mirror's
    layout (no network here)."""
    from eval_tasks.benchmarks import mme_rw_v

    monkeypatch.setattr(mme_rw_v, "HF_REPO", str(_mirror_with_a_broken_last_shard(tmp_path)))
    monkeypatch.setattr(mme_rw_v, "HF_REVISION", None)
    setup = common.Setup(bench="lpt_mme_rw_v", max_rows=4)
    data = mme_rw_v.load(None, setup)
    rows = list(data[mme_rw_v.HF_SPLIT])
    assert len(rows) == 4 and all(mme_rw_v.subtask_of(r["category"].split("/")[-1]) for r in rows)
    assert mme_rw_v.load(None, common.Setup(bench="lpt_mme_rw_v")) is None  # the whole benchmark: lighteval loads it


def test_a_local_copy_is_read_afresh_not_from_another_folders_cache(tmp_path):
    """datasets keys a local folder's prepared copy by its name and layout: two --data-dir folders with the same
    layout shared one cached copy, so the second run scored the first one's items."""
    from lighteval.tasks.lighteval_task import LightevalTask

    counts = []
    for n in (3, 5):  # MMStar's layout: a README declaring config and split
        root = tmp_path / f"run{n}"
        specs = [samples.Spec(f"Question {i}?", ["a", "b"], 0, "coarse perception") for i in range(n)]
        samples.write_mmstar(root / "lpt_mmstar_v", specs)
        counts.append(len(LightevalTask(make_task("lpt_mmstar_v", "think", root)).eval_docs()))
    assert counts == [3, 5]


def _mirror_with_a_broken_last_shard(tmp_path) -> Path:
    """A local folder in the MME-RealWorld Hub mirror's layout (six rows in two parquet shards), whose third shard
    is not parquet at all: a loader that reads past the rows it needs fails on it."""
    specs = samples.default_specs("lpt_mme_rw_v", 6)  # 5 of 6 categories are MME-RW-V's
    samples.write_mme_rw(tmp_path / "a", specs[:3])
    samples.write_mme_rw(tmp_path / "b", specs[3:])
    mirror = tmp_path / "mirror" / "data"
    mirror.mkdir(parents=True)
    (tmp_path / "a" / "data" / "train-00000-of-00001.parquet").rename(mirror / "train-00000-of-00003.parquet")
    (tmp_path / "b" / "data" / "train-00000-of-00001.parquet").rename(mirror / "train-00001-of-00003.parquet")
    (mirror / "train-00002-of-00003.parquet").write_bytes(b"not a parquet file")
    return mirror.parent


def test_lighteval_custom_max_samples_reaches_mme_rw_vs_streaming_loader(tmp_path, monkeypatch):
    """`lighteval custom … --max-samples N` (a lighteval Pipeline with max_samples, as lighteval's CLI builds it):
    MME-RW-V's loader learns N and streams only the rows it needs (the broken third shard is never opened); with
    neither that nor LPT_MAX_SAMPLES it reads the whole mirror and meets the broken shard. The Hub repository is
    replaced by a local folder of the mirror's layout (no network here); the model is a stand-in that is never
    asked (no weights)."""
    from lighteval.logging.evaluation_tracker import EvaluationTracker
    from lighteval.models import abstract_model as am
    from lighteval.pipeline import ParallelismManager, Pipeline, PipelineParameters
    from lighteval.utils.cache_management import SampleCache

    from eval_tasks import _offline
    from eval_tasks.benchmarks import mme_rw_v

    monkeypatch.setattr(mme_rw_v, "HF_REPO", str(_mirror_with_a_broken_last_shard(tmp_path)))
    monkeypatch.delenv(_offline.MAX_SAMPLES_ENV, raising=False)

    class StandInConfig(am.ModelConfig):
        model_name: str = "stand-in"

    class StandInModel(am.LightevalModel):
        def __init__(self, config):
            self.config, self._cache = config, SampleCache(config)

        tokenizer = property(lambda self: None)
        add_special_tokens = property(lambda self: False)
        max_length = property(lambda self: 4096)

        def greedy_until(self, docs):
            raise AssertionError("not asked here")

        loglikelihood = loglikelihood_rolling = greedy_until

    def pipeline(max_samples):
        module = types.ModuleType("lpt_mme_tasks")
        module.TASKS_TABLE = [make_task("lpt_mme_rw_v")]
        return Pipeline(tasks="lpt_mme_rw_v|0", pipeline_parameters=PipelineParameters(
            launcher_type=ParallelismManager.NONE, custom_tasks_directory=module, max_samples=max_samples),
            evaluation_tracker=EvaluationTracker(output_dir=str(tmp_path / "out")),
            model=StandInModel(StandInConfig(cache_dir=str(tmp_path / "cache"))))

    (docs,) = pipeline(4).documents_dict.values()
    assert len(docs) == 4 and all(d.specific["category"].split(".")[1] in mme_rw_v.SUBTASKS for d in docs)
    with pytest.raises(Exception, match="error occurred while generating the dataset"):
        pipeline(None)  # the whole mirror: lighteval's own load reads the broken shard
    monkeypatch.setenv(_offline.MAX_SAMPLES_ENV, "3")
    (docs,) = pipeline(None).documents_dict.values()
    assert len(docs) == 3
    monkeypatch.setenv(_offline.MAX_SAMPLES_ENV, "three")
    with pytest.raises(ValueError, match="LPT_MAX_SAMPLES must be a positive whole number of rows, got 'three'"):
        pipeline(None)
