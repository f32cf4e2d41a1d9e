"""lighteval metrics for the LPT tasks. Right or wrong is decided by :func:`builder.answers.grade` only.

Two metrics go on every task:

``acc``
    per-item accuracy (sample level, so lighteval reports it with a standard error): micro accuracy.
``lpt`` (corpus level, returns a dict; lighteval reports every key as its own metric)
    ``acc_macro``  mean over the benchmark's categories of the per-category accuracy (our matcher);
    ``acc_micro``  mean over items;
    ``acc_macro_authors`` / ``acc_micro_authors``  the same generations scored by the authors' rule
                   (:func:`builder.answers.authors_hit`: any option's text counts): the number comparable with
                   the paper's table;
    ``skipped``    rows that could not be parsed (left out of every accuracy), and ``skipped_<reason>`` per
                   reason (``missing_field``, ``bad_answer``, ``bad_options``, ``bad_image``);
    ``protocol_<name>``  1.0: the evaluation protocol whose prompts the items had (authors or project);
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

from builder.answers import MATCHER_VERSION, authors_hit, grade

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


def _gold(doc: Doc) -> int:
    return doc.gold_index if isinstance(doc.gold_index, int) else doc.gold_index[0]


class ItemAccuracy(SampleLevelComputation):
    """1.0 when the response names the gold option, else 0.0; NaN for a skipped row (left out of the mean)."""

    def compute(self, doc: Doc, model_response: Any, **kwargs: Any) -> float:
        if (doc.specific or {}).get("skipped"):
            return float("nan")
        return float(grade_doc(doc, response_text(model_response)))


class ItemRecord(SampleLevelComputation):
    """Per-item record for the corpus metric; a dict of plain types so lighteval can save it with Arrow."""

    def compute(self, doc: Doc, model_response: Any, **kwargs: Any) -> dict:
        spec = doc.specific or {}
        skipped = str(spec.get("skipped") or "")
        text = response_text(model_response)
        return {
            "category": str(spec.get("category", "all")),
            "correct": 0.0 if skipped else float(grade_doc(doc, text)),
            "correct_authors": 0.0 if skipped else float(authors_hit(text, spec["options"], _gold(doc))),
            "source": str(spec.get("source") or ""),
            "pair": int(spec["pair"]) if spec.get("pair") is not None else -1,
            "protocol": str(spec.get("protocol") or ""),
            "skipped": skipped,
        }


def _macro_micro(items: list[dict], key: str) -> tuple[float, float, dict[str, float]]:
    by_cat: dict[str, list[float]] = defaultdict(list)
    for it in items:
        by_cat[it["category"]].append(it[key])
    per_cat = {c: float(np.mean(v)) for c, v in sorted(by_cat.items())}
    return float(np.mean(list(per_cat.values()))), float(np.mean([it[key] for it in items])), per_cat


def _special(items: list[dict]) -> dict[str, float]:
    """CV-Bench's official formula (by source) and MMVP's pair accuracy, where the items allow them."""
    out = {}
    by_source: dict[str, list[float]] = defaultdict(list)
    pairs: dict[int, list[float]] = defaultdict(list)
    for it in items:
        if it.get("source"):
            by_source[it["source"]].append(it["correct"])
        if it.get("pair", -1) >= 0:
            pairs[it["pair"]].append(it["correct"])
    if all(s in by_source for s in (*CVBENCH_2D_SOURCES, CVBENCH_3D_SOURCE)):
        acc = {s: float(np.mean(v)) for s, v in by_source.items()}
        out["acc_cvbench_official"] = 0.5 * ((acc["ADE20K"] + acc["COCO"]) / 2 + acc["Omni3D"])
    full = [v for v in pairs.values() if len(v) == 2]
    if full:
        out["acc_pair"] = float(np.mean([float(all(x == 1.0 for x in v)) for v in full]))
    return out


def summarize(items: list[dict]) -> dict[str, float]:
    """Macro, micro, per-category, authors'-rule, CV-Bench-official and MMVP-pair accuracies of ItemRecord
    dicts, the skipped rows by reason and the protocol."""
    scored = [it for it in items if not it.get("skipped")]
    out: dict[str, float] = {"acc_macro": 0.0, "acc_micro": 0.0}
    if scored:
        out["acc_macro"], out["acc_micro"], per_cat = _macro_micro(scored, "correct")
        out.update({category_key(c): v for c, v in per_cat.items()})
        if all("correct_authors" in it for it in scored):
            out["acc_macro_authors"], out["acc_micro_authors"], _ = _macro_micro(scored, "correct_authors")
        out.update(_special(scored))
    skipped = [it["skipped"] for it in items if it.get("skipped")]
    out["skipped"] = float(len(skipped))
    for reason in sorted(set(skipped)):
        out[f"skipped_{reason}"] = float(skipped.count(reason))
    for protocol in sorted({it.get("protocol") for it in items if it.get("protocol")}):
        out[f"protocol_{protocol}"] = 1.0
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
    corpus_level_fn=np.nanmean,
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
