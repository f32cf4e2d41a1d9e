"""Tiny stand-in datasets in each benchmark's real on-disk schema, made locally (no download).

For offline tests, smoke runs (``lpt eval MODEL --data-dir DIR``) and the GPU throughput benchmark:
``write_sample_data(DIR)`` writes ``DIR/<task>/`` for all seven tasks, laid out like the Hub repositories
(V*: ``test_questions.jsonl`` + image files; CV-Bench: ``test_2d.parquet``/``test_3d.parquet``; MMVP:
``data/train-*.parquet``, or ``write_mmvp_authors``: MMVP/MMVP's ``Questions.csv`` + image files; MMStar:
``mmstar.parquet`` + a README declaring config/split ``val``, in both of its layouts, with "nan"-padded options
and one row without options (skipped and counted by the tasks); MME-RealWorld:
the Hub mirror's ``data/train-*.parquet`` with base64 images (``write_mme_rw_json``: the original ``test.json`` +
image files); RealWorldQA and MMLU-Pro: ``data/test-*.parquet``). Images are flat colours.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from builder.answers import LETTERS


@dataclass
class Spec:
    """One item, benchmark-neutral; a writer turns it into its benchmark's row format."""

    question: str
    options: list[str]
    gold: int
    category: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # source (CV-Bench), index (MMVP), task (MME) ...


def _png(size: tuple[int, int], seed: int) -> Image.Image:
    rng = random.Random(seed)
    return Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))


def _parquet(rows: list[dict], path: Path, image_column: str | None = "image") -> None:
    from datasets import Dataset, Image as ImageFeature

    ds = Dataset.from_list(rows)
    if image_column:
        ds = ds.cast_column(image_column, ImageFeature())
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))


def write_vstar(folder: Path, specs: Sequence[Spec], size=(64, 48)) -> None:
    folder = Path(folder)
    lines = []
    for i, s in enumerate(specs):
        rel = f"{s.category}/sa_{i}.jpg"
        (folder / s.category).mkdir(parents=True, exist_ok=True)
        _png(size, i).save(folder / rel)
        opts = "\n".join(f"({LETTERS[j]}) {o}" for j, o in enumerate(s.options))
        lines.append({"image": rel, "text": f"{s.question}\n{opts}\nAnswer with the option's letter from the "
                      "given choices directly.", "label": LETTERS[s.gold], "category": s.category,
                      "question_id": s.extra.get("id", i)})
    (folder / "test_questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def write_cvbench(folder: Path, specs: Sequence[Spec], size=(64, 48)) -> None:
    rows = {"2D": [], "3D": []}
    for i, s in enumerate(specs):
        kind = "3D" if s.category in ("Depth", "Distance") else "2D"
        opts = "\n".join(f"({LETTERS[j]}) {o}" for j, o in enumerate(s.options))
        rows[kind].append({
            "idx": i, "type": kind, "task": s.category, "image": _png(size, i), "question": s.question,
            "choices": s.options, "answer": f"({LETTERS[s.gold]})",
            "prompt": f"{s.question} Select from the following choices.\n{opts}", "filename": f"img/{kind}/{i}.png",
            "source": s.extra.get("source", "Omni3D" if kind == "3D" else "COCO"),
            "source_dataset": "", "source_filename": "", "target_class": None, "target_size": None, "bbox": None})
    for kind, r in rows.items():
        if r:
            _parquet(r, Path(folder) / f"test_{kind.lower()}.parquet")


def write_mmvp(folder: Path, specs: Sequence[Spec], size=(64, 48)) -> None:
    rows = [{"Index": int(s.extra.get("index", i + 1)), "Question": s.question,
             "Options": " ".join(f"({LETTERS[j].lower()}) {o}" for j, o in enumerate(s.options)),
             "Correct Answer": f"({LETTERS[s.gold].lower()})", "image": _png(size, i)} for i, s in enumerate(specs)]
    _parquet(rows, Path(folder) / "data" / "train-00000-of-00001.parquet")


MMSTAR_README = """---
configs:
- config_name: val
  data_files:
  - split: val
    path: mmstar.parquet
---
"""


def _mmstar_question(s: Spec) -> tuple[str, str]:
    """``(question field, answer letter)`` in the layout ``s.extra`` asks for: ``layout`` "mathvista" ("Hint: …
    Question: … Choices: (A) …"), ``nan_pad`` n "nan" options appended, ``broken`` no options at all."""
    options = list(s.options) + ["nan"] * int(s.extra.get("nan_pad", 0))
    if s.extra.get("broken"):
        return f"{s.question}\nPick one.", LETTERS[s.gold]
    if s.extra.get("layout") == "mathvista":
        choices = "\n".join(f"({LETTERS[j]}) {o}" for j, o in enumerate(options))
        return (f"Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the "
                f"end.\nQuestion: {s.question}\nChoices:\n{choices}"), LETTERS[s.gold]
    return f"{s.question}\nOptions: {', '.join(f'{LETTERS[j]}: {o}' for j, o in enumerate(options))}", LETTERS[s.gold]


def write_mmstar(folder: Path, specs: Sequence[Spec], size=(64, 48)) -> None:
    """``mmstar.parquet`` + a README declaring config/split ``val``; rows in either of MMStar's two layouts."""
    rows = []
    for i, s in enumerate(specs):
        question, answer = _mmstar_question(s)
        rows.append({"index": i, "question": question, "image": _png(size, i), "answer": answer,
                     "category": s.category, "l2_category": s.extra.get("l2", "x"),
                     "meta_info": {"source": "fixture", "split": "val", "image_path": f"{i}.png"}})
    _parquet(rows, Path(folder) / "mmstar.parquet")
    (Path(folder) / "README.md").write_text(MMSTAR_README)


def write_mmvp_authors(folder: Path, specs: Sequence[Spec], size=(64, 48)) -> None:
    """MMVP/MMVP's layout (the copy the authors used): ``Questions.csv`` (Index, Question, Options, Correct Answer)
    beside ``MMVP Images/<Index>.jpg``."""
    import csv

    folder = Path(folder)
    (folder / "MMVP Images").mkdir(parents=True, exist_ok=True)
    with open(folder / "Questions.csv", "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["Index", "Question", "Options", "Correct Answer"])
        for i, s in enumerate(specs):
            index = int(s.extra.get("index", i + 1))
            out.writerow([index, s.question, " ".join(f"({LETTERS[j].lower()}) {o}" for j, o in enumerate(s.options)),
                          f"({LETTERS[s.gold].lower()})"])
            _png(size, i).save(folder / "MMVP Images" / f"{index}.jpg")


def write_mme_rw(folder: Path, specs: Sequence[Spec], size=(64, 48)) -> None:
    """The Hub's parquet mirror (yifanzhang114/MME-RealWorld-Lmms-eval): ``category`` "Perception/Monitoring",
    ``l2-category``, ``multi-choice options`` ["(A) …", …], ``answer`` letter, image as base64 text in ``bytes``."""
    import base64
    import io

    rows = []
    for i, s in enumerate(specs):
        task, _, subtask = s.category.partition(".")
        png = io.BytesIO()
        _png(size, i).save(png, format="PNG")
        rows.append({"index": i, "question": s.question,
                     "multi-choice options": [f"({LETTERS[j]}) {o}" for j, o in enumerate(s.options)],
                     "answer": LETTERS[s.gold], "category": f"{task}/{subtask}", "l2-category": "fixture/attribute",
                     "bytes": base64.b64encode(png.getvalue()).decode("ascii")})
    _parquet(rows, Path(folder) / "data" / "train-00000-of-00001.parquet", image_column=None)


def write_mme_rw_json(folder: Path, specs: Sequence[Spec], size=(64, 48)) -> None:
    """The original release: ``MME_RealWorld.json`` saved as ``test.json`` next to the extracted image folders."""
    folder = Path(folder)
    rows = []
    for i, s in enumerate(specs):
        task, _, subtask = s.category.partition(".")
        rel = f"images/{subtask.replace(' ', '_')}/{i}.jpg"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        _png(size, i).save(folder / rel)
        rows.append({"Question_id": f"q{i}", "Image": rel, "Text": s.question, "Question Type": "Multiple Choice",
                     "Answer choices": [f"({LETTERS[j]}) {o}" for j, o in enumerate(s.options)],
                     "Ground truth": LETTERS[s.gold], "Category": "fixture", "Subtask": subtask, "Task": task})
    (folder / "test.json").write_text(json.dumps(rows))


def write_realworldqa(folder: Path, specs: Sequence[Spec], size=(64, 48)) -> None:
    rows = []
    for i, s in enumerate(specs):
        if s.options:
            opts = "\n".join(f"{LETTERS[j]}. {o}" for j, o in enumerate(s.options))
            q = f"{s.question}\n\n{opts}\nPlease answer directly with only the letter of the correct option and nothing else."
            a = LETTERS[s.gold]
        else:  # open-ended item, as in the real set
            q, a = f"{s.question}\nPlease answer directly with a single word or number.", str(s.extra.get("answer", "2"))
        rows.append({"image": _png(size, i), "question": q, "answer": a})
    _parquet(rows, Path(folder) / "data" / "test-00000-of-00001.parquet")


def write_mmlu_pro(folder: Path, specs: Sequence[Spec], size=None) -> None:
    rows = [{"question_id": i, "question": s.question, "options": s.options, "answer": LETTERS[s.gold],
             "answer_index": s.gold, "cot_content": "", "category": s.category, "src": "fixture"}
            for i, s in enumerate(specs)]
    _parquet(rows, Path(folder) / "data" / "test-00000-of-00001.parquet", image_column=None)


WRITERS = {
    "lpt_vstar": write_vstar, "lpt_cvbench": write_cvbench, "lpt_mmvp": write_mmvp, "lpt_mmstar_v": write_mmstar,
    "lpt_mme_rw_v": write_mme_rw, "lpt_realworldqa": write_realworldqa, "lpt_mmlu_pro": write_mmlu_pro,
}

CATEGORIES = {
    "lpt_vstar": ["direct_attributes", "relative_position"],
    "lpt_cvbench": ["Count", "Relation", "Depth", "Distance"],
    "lpt_mmvp": [""],
    "lpt_mmstar_v": ["coarse perception", "fine-grained perception", "instance reasoning", "math"],
    "lpt_mme_rw_v": ["Perception.Remote Sensing", "Perception.Monitoring", "Perception.Autonomous_Driving",
                     "Reasoning.Monitoring", "Reasoning.Autonomous_Driving", "Perception.OCR with complex context"],
    "lpt_realworldqa": [""],
    "lpt_mmlu_pro": ["biology", "law", "math"],
}
_WORDS = ["red", "blue", "green", "yellow", "left", "right", "above", "below", "two", "three"]


def default_specs(task: str, n: int, seed: int = 0) -> list[Spec]:
    """``n`` seeded items for ``task``, cycling through its categories (some of MMStar's and MME's are not
    in the -V subsets, so those tasks keep fewer items)."""
    rng = random.Random(f"{seed}:{task}")
    cats = CATEGORIES[task]
    n_opts = {"lpt_mmvp": 2, "lpt_mmlu_pro": 10, "lpt_mme_rw_v": 5}.get(task, 4)
    out = []
    for i in range(n):
        options = rng.sample(_WORDS, n_opts)
        cat = cats[i % len(cats)]
        extra: dict[str, Any] = {"index": i + 1}
        if task == "lpt_mmstar_v":  # both layouts and a "nan"-padded item
            extra.update([{}, {"layout": "mathvista"}, {"nan_pad": 2}, {"layout": "mathvista", "nan_pad": 1}][i % 4])
        if task == "lpt_cvbench":
            extra["source"] = {"Count": "ADE20K", "Relation": "COCO"}.get(cat, "Omni3D")
        out.append(Spec(f"Question {i} about the picture: which word fits?", options, rng.randrange(n_opts), cat, extra))
    return out


def write_sample_data(out_dir: str | Path, n: int = 4, size: tuple[int, int] = (64, 48), seed: int = 0,
                      tasks: Sequence[str] | None = None) -> Path:
    """Write ``n`` items per task under ``out_dir/<task>`` (``LPT_EVAL_DATA_DIR`` layout); return ``out_dir``."""
    out = Path(out_dir)
    for task in tasks or WRITERS:
        specs = default_specs(task, n, seed)
        if task == "lpt_mmstar_v":  # and one row that cannot be parsed (no options): skipped and counted
            specs.append(Spec("A question whose options went missing?", ["x", "y"], 0, "coarse perception",
                              {"broken": True}))
        WRITERS[task](out / task, specs, size=size)
    return out


__all__ = ["CATEGORIES", "Spec", "WRITERS", "default_specs", "write_mme_rw_json", "write_mmvp_authors",
           "write_sample_data"]
