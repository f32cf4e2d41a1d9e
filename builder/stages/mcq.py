"""Stage 1: verifiable multiple-choice questions from dense image descriptions (text LLM).

Per source image: one generating call (``mcq_generation`` prompt), then optionally one re-formatting call
(``mcq_reformat``, T=0) that rewrites the reply into the strict tagged layout::

    1. <question> … </question> <choices> (A) … (B) … (C) … (D) … </choices> <answer> … </answer> <type> … </type>

Each item becomes an MCQ row. It is valid iff its answer resolves to exactly one option: the exact option
text (upstream's rule), else :func:`builder.answers.match_option` (a letter such as ``(B)``, or the text up
to case and punctuation). Invalid rows are kept with the reason. ``mcq_id = content_id(image_id, question,
options, answer_text)``.

Every image leaves a record: a reply with no ``<question>`` at all gives one invalid row (``item_index`` -1,
reason :data:`NO_QUESTION`, empty question and options) that carries the raw replies. So nothing a model
wrote is lost, the image counts as done on resume even after a whole-table rewrite of the stage (done inputs
are then read from the rows), and everything downstream, which reads only ``valid`` rows, ignores it.

A tag opened but not closed inside its item (``<answer> B`` with no ``</answer>``, e.g. a reply cut off by
the token limit) does not count: the item is invalid with reason ``unclosed <answer>`` (likewise
``<question>``, ``<choices>``; an unclosed ``<type>`` leaves the type empty). A gold answer is never guessed
from a truncated tag. (Stages 2 and 3 read a model's *prediction* with :func:`builder.answers.extract_answer`,
which does take an unclosed ``<answer>`` to the end of the text: a truncated prediction is still graded.)
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from builder.answers import match_option, parse_options
from builder.settings import PipelineConfig
from builder.engines.base import Engine, Request, SamplingParams
from builder.prompts import Prompts
import pyarrow as pa

from builder.records import MCQ, content_id, is_placeholder, tally
from builder.store import RunDir, parse_shard

from .common import StageSpec, StageSummary, report, request_seed, run_stage_locally, usable_inputs

NO_QUESTION = "no question in the reply"  # invalid_reason of an image's placeholder row

_FIELDS = ("question", "choices", "answer", "type")
_CLOSED = {tag: re.compile(rf"<{tag}>(.*?)</{tag}>", re.S | re.I) for tag in _FIELDS}
_OPENED = {tag: re.compile(rf"<{tag}>", re.I) for tag in _FIELDS}


@dataclass(frozen=True)
class ParsedItem:
    """One question of a stage-1 reply, as written (``choices`` is the raw text inside ``<choices>``).

    ``unclosed`` names the tags the item opens but never closes (their field is then empty / None)."""

    question: str
    choices: str | None
    answer_text: str | None
    question_type: str
    unclosed: tuple[str, ...] = ()


def _clean(s: str | None) -> str | None:
    return None if s is None else re.sub(r"\s+", " ", s).strip()


def parse_mcq_response(text: str) -> list[ParsedItem]:
    """The tagged items of a reply, in order. Each item runs from one ``<question>`` opening tag to the next
    (so an unclosed tag never swallows the next item); a tag missing from an item gives ``None`` for that
    field, and a tag opened but not closed is listed in ``unclosed`` (the row is then invalid, not silently
    merged or guessed)."""
    text = text or ""
    starts = [m.start() for m in _OPENED["question"].finditer(text)]
    items = []
    for k, start in enumerate(starts):
        segment = text[start: starts[k + 1] if k + 1 < len(starts) else len(text)]
        q = _CLOSED["question"].match(segment)
        after = q.end() if q else len("<question>")
        found, unclosed = {}, [] if q else ["question"]
        for tag in _FIELDS[1:]:
            m = _CLOSED[tag].search(segment, after)
            found[tag] = m.group(1) if m else None
            if m is None and _OPENED[tag].search(segment, after):
                unclosed.append(tag)
        items.append(ParsedItem(question=_clean(q.group(1)) if q else "", choices=_clean(found["choices"]),
                                answer_text=_clean(found["answer"]), question_type=_clean(found["type"]) or "",
                                unclosed=tuple(unclosed)))
    return items


def resolve_answer(answer_text: str, options: list[str]) -> int:
    """Index of the one option the answer names (exact text first, then answers.match_option), else -1."""
    exact = [i for i, o in enumerate(options) if o == answer_text]
    if len(exact) == 1:
        return exact[0]
    if len(exact) > 1:
        return -1
    return match_option(answer_text, options)


def mcq_rows(image_id: str, items: list[ParsedItem], *, model: str, raw_response: str,
             formatted_response: str) -> list[dict[str, Any]]:
    """MCQ-schema rows for one image's parsed items (valid or with an ``invalid_reason``); no item at all
    gives the image's one placeholder row (reason :data:`NO_QUESTION`) carrying the replies."""
    if not items:
        return [{
            "mcq_id": content_id(image_id, "", [], ""), "image_id": image_id, "item_index": -1, "question": "",
            "options": [], "answer_text": "", "answer_index": -1, "question_type": "", "valid": False,
            "invalid_reason": NO_QUESTION, "model": model, "raw_response": raw_response,
            "formatted_response": formatted_response,
        }]
    rows, seen = [], set()
    for k, it in enumerate(items):
        options: list[str] = []
        reason = ""
        if "question" in it.unclosed:
            reason = "unclosed <question>"
        elif not it.question:
            reason = "empty question"
        elif it.choices is None:
            reason = ("unclosed" if "choices" in it.unclosed else "no") + " <choices>"
        elif it.answer_text is None:
            reason = ("unclosed" if "answer" in it.unclosed else "no") + " <answer>"
        if not reason:
            try:
                options = parse_options(it.choices)
            except ValueError:
                reason = "options unparseable"
        if not reason and len(set(options)) != len(options):
            reason = "repeated option"
        idx = resolve_answer(it.answer_text, options) if not reason else -1
        if not reason and idx < 0:
            reason = "answer matches no single option"
        answer_text = it.answer_text or ""
        mcq_id = content_id(image_id, it.question, options, answer_text)
        if not reason and mcq_id in seen:
            reason = "duplicate"
        seen.add(mcq_id)
        rows.append({
            "mcq_id": mcq_id, "image_id": image_id, "item_index": k, "question": it.question, "options": options,
            "answer_text": answer_text, "answer_index": idx if not reason else -1,
            "question_type": it.question_type, "valid": not reason, "invalid_reason": reason, "model": model,
            "raw_response": raw_response, "formatted_response": formatted_response,
        })
    return rows


def prepare(run: RunDir, config: PipelineConfig) -> tuple[list[tuple[str, dict]], None]:
    """Stage 1's inputs: ``(image_id, source row)`` for every source image; no context."""
    source = usable_inputs(run, SPEC)
    if not source:
        raise FileNotFoundError(f"{run.path / 'source'}: no source rows; write the source first")
    return [(r["image_id"], r) for r in source], None


def make_rows(chunk: list[tuple[str, dict]], engine: Engine, config: PipelineConfig, prompts: Prompts,
              context: None = None, *, reformat_engine: Engine | None = None) -> list[dict[str, Any]]:
    """The MCQ rows of a chunk of source images: one generating call per image, then (``stage1.reformat``)
    one re-formatting call on ``reformat_engine`` (default: ``engine``)."""
    cfg = config.stage1
    ref_engine = reformat_engine or engine
    requests = [Request(prompts.mcq_generation(r["description"]),
                        params=cfg.params(seed=request_seed(config.seed, SPEC.name, image_id), n=1))
                for image_id, r in chunk]
    raw = [out[0].text if out else "" for out in engine.generate(requests)]
    formatted = [""] * len(chunk)
    if cfg.reformat:
        ref = [Request(prompts.mcq_reformat(text), params=SamplingParams(
            n=1, temperature=cfg.reformat_temperature, max_new_tokens=cfg.reformat_max_new_tokens,
            seed=request_seed(config.seed, SPEC.name + "/reformat", image_id)))
            for (image_id, _), text in zip(chunk, raw)]
        formatted = [out[0].text if out else "" for out in ref_engine.generate(ref)]
    rows = []
    for (image_id, _), r_text, f_text in zip(chunk, raw, formatted):
        items = parse_mcq_response(f_text) or parse_mcq_response(r_text)  # fall back to the raw reply
        rows += mcq_rows(image_id, items, model=engine.model_id, raw_response=r_text, formatted_response=f_text)
    return rows


def finish(run: RunDir, config: PipelineConfig, rows: list[dict[str, Any]], *, shard: tuple[int, int] | str,
           progress: bool, items_in: int, skipped: int, model_ids: dict[str, str]) -> StageSummary:
    """Stage 1's summary of this shard's rows, recorded in the manifest (and printed when ``progress``)."""
    t = tally(pa.Table.from_pylist(rows, schema=MCQ))
    counts = {"items_in": items_in, "items_already_done": skipped, "images_without_questions": t["placeholders"],
              "questions": t["questions"], "valid": t["valid"]}
    dropped = Counter(r["invalid_reason"] for r in rows if not r["valid"] and not is_placeholder(r))
    summary = StageSummary(stage=SPEC.name, shard=parse_shard(shard), counts=counts, dropped=dict(dropped))
    models = {"mcq": model_ids["engine"]}
    if config.stage1.reformat:
        models["mcq_reformat"] = model_ids.get("reformat_engine", model_ids["engine"])
    return report(summary, run, progress, config=config.to_dict(), models=models, seed=config.seed)


def run(
    run: RunDir,
    engine: Engine,
    config: PipelineConfig,
    *,
    shard: tuple[int, int] | str = (0, 1),
    progress: bool = True,
    chunk_size: int | None = None,
    reformat_engine: Engine | None = None,
    prompts: Prompts | None = None,
) -> StageSummary:
    """Write stage-1 MCQs for this shard's source images that are not done yet; return the summary.

    ``reformat_engine`` does the re-formatting call when ``config.stage1.reformat`` (default: ``engine``).
    """
    return run_stage_locally(SPEC, run, engine, config, shard=shard, progress=progress, chunk_size=chunk_size,
                             prompts=prompts, reformat_engine=reformat_engine)


def _reformat_engine(config: PipelineConfig) -> dict[str, Any]:
    """The re-formatting call's own model, when it has one (else the generating engine re-formats)."""
    cfg = config.stage1
    return {"reformat_engine": cfg.reformat_model_config()} if cfg.reformat and cfg.reformat_model else {}


SPEC = StageSpec(1, "mcq", input="source", usable=None, run=run, extra_engines=_reformat_engine,
                 what="MCQs from the source's descriptions", no_input="the run has no source images",
                 prepare=prepare, make_rows=make_rows, finish=finish,
                 summary_columns=("item_index", "valid", "invalid_reason"), role="question")

__all__ = ["NO_QUESTION", "SPEC", "ParsedItem", "finish", "make_rows", "mcq_rows", "parse_mcq_response", "prepare",
           "resolve_answer", "run"]
