"""lighteval metrics for the LPT tasks. Right or wrong is decided by :func:`builder.answers.grade` only.

Two metrics go on every task:

``acc``
    per-item accuracy (sample level, so lighteval reports it with a standard error): micro accuracy.
``lpt`` (corpus level, returns a dict; lighteval reports every key as its own metric)
    ``acc_macro``  mean over the benchmark's categories of the per-category accuracy: the paper's number;
    ``acc_micro``  mean over items;
    ``acc_<cat>``  one per category (name lower-cased, non-alphanumerics turned into ``_``);
    ``acc_cvbench_official``  CV-Bench's own formula ½·((acc ADE20K + acc COCO)/2 + acc Omni3D), by ``source``,
                   when the items carry sources;
    ``acc_pair``   MMVP pair accuracy: items ``Index`` 2k+1 and 2k+2 form a pair ((Index-1)//2), a pair counts
                   when both are right; pairs with a missing member (e.g. ``--max-samples``) are left out;
    ``matcher_version``  ``builder.answers.MATCHER_VERSION``, so that a results file records the rule that scored it.

Both read the response's raw text (``model_response.text``, before lighteval strips ``<think>``), because
the matcher itself knows where the thought ends. The item's options, category, source and pair id come from
``doc.specific`` (filled by :mod:`eval_tasks.tasks`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import numpy as np
from lighteval.metrics.metrics_corpus import CorpusLevelComputation
from lighteval.metrics.metrics_sample import SampleLevelComputation
from lighteval.metrics.utils.metric_utils import CorpusLevelMetric, SampleLevelMetric
from lighteval.tasks.requests import Doc, SamplingMethod

from builder.answers import MATCHER_VERSION, grade

CVBENCH_2D_SOURCES = ("ADE20K", "COCO")
CVBENCH_3D_SOURCE = "Omni3D"


def response_text(model_response: Any) -> str:
    """The first generated text of a lighteval ``ModelResponse`` (raw, reasoning tags kept)."""
    texts = getattr(model_response, "text", None) or [""]
    return texts[0] or ""


def grade_doc(doc: Doc, text: str) -> bool:
    """Whether ``text`` answers ``doc`` right (``builder.answers.grade`` on the item's options)."""
    return grade(text, doc.specific["options"], doc.gold_index if isinstance(doc.gold_index, int)
                 else doc.gold_index[0]).correct


def category_key(category: str) -> str:
    """``"coarse perception"`` -> ``"acc_coarse_perception"``."""
    return "acc_" + (re.sub(r"[^0-9a-z]+", "_", str(category).lower()).strip("_") or "none")


class ItemAccuracy(SampleLevelComputation):
    """1.0 when the response names the gold option, else 0.0."""

    def compute(self, doc: Doc, model_response: Any, **kwargs: Any) -> float:
        return float(grade_doc(doc, response_text(model_response)))


class ItemRecord(SampleLevelComputation):
    """Per-item record for the corpus metric; a dict of plain types so lighteval can save it with Arrow."""

    def compute(self, doc: Doc, model_response: Any, **kwargs: Any) -> dict:
        spec = doc.specific or {}
        return {
            "category": str(spec.get("category", "all")),
            "correct": float(grade_doc(doc, response_text(model_response))),
            "source": str(spec.get("source") or ""),
            "pair": int(spec["pair"]) if spec.get("pair") is not None else -1,
        }


def summarize(items: list[dict]) -> dict[str, float]:
    """Macro, micro, per-category, CV-Bench-official and MMVP-pair accuracies of ItemRecord dicts."""
    if not items:
        return {"acc_macro": 0.0, "acc_micro": 0.0, "matcher_version": float(MATCHER_VERSION)}
    by_cat: dict[str, list[float]] = defaultdict(list)
    by_source: dict[str, list[float]] = defaultdict(list)
    pairs: dict[int, list[float]] = defaultdict(list)
    for it in items:
        by_cat[it["category"]].append(it["correct"])
        if it.get("source"):
            by_source[it["source"]].append(it["correct"])
        if it.get("pair", -1) >= 0:
            pairs[it["pair"]].append(it["correct"])
    out = {category_key(c): float(np.mean(v)) for c, v in sorted(by_cat.items())}
    out["acc_macro"] = float(np.mean([np.mean(v) for v in by_cat.values()]))
    out["acc_micro"] = float(np.mean([it["correct"] for it in items]))
    if all(s in by_source for s in (*CVBENCH_2D_SOURCES, CVBENCH_3D_SOURCE)):
        acc = {s: float(np.mean(v)) for s, v in by_source.items()}
        out["acc_cvbench_official"] = 0.5 * ((acc["ADE20K"] + acc["COCO"]) / 2 + acc["Omni3D"])
    full = [v for v in pairs.values() if len(v) == 2]
    if full:
        out["acc_pair"] = float(np.mean([float(all(x == 1.0 for x in v)) for v in full]))
    out["matcher_version"] = float(MATCHER_VERSION)
    return out


class CategoryBreakdown(CorpusLevelComputation):
    def compute_corpus(self, items: list[dict]) -> dict[str, float]:
        return summarize(items)


acc = SampleLevelMetric(
    metric_name="acc",
    higher_is_better=True,
    category=SamplingMethod.GENERATIVE,
    sample_level_fn=ItemAccuracy(),
    corpus_level_fn=np.mean,
)

breakdown = CorpusLevelMetric(
    metric_name="lpt",
    higher_is_better=True,
    category=SamplingMethod.GENERATIVE,
    sample_level_fn=ItemRecord(),
    corpus_level_fn=CategoryBreakdown(),
)

METRICS = [acc, breakdown]

__all__ = ["METRICS", "acc", "breakdown", "category_key", "grade_doc", "summarize"]
