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

import pyarrow as pa

from builder.answers import match_option, parse_options
from builder.engines.base import Request, SamplingParams
from builder.records import TableSpec, content_id, is_placeholder, tally

from .contract import Answers, Item, ModelConfig, Round, StageSpec, check, request_seed

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


def _checked(it: ParsedItem) -> tuple[list[str], int, str]:
    """``(options, answer index, invalid reason)`` of one parsed item: "" and the index of the one option its
    answer names when it is a whole question (every tag closed, options that parse and differ), else the reason."""
    if "question" in it.unclosed:
        return [], -1, "unclosed <question>"
    if not it.question:
        return [], -1, "empty question"
    if it.choices is None:
        return [], -1, ("unclosed" if "choices" in it.unclosed else "no") + " <choices>"
    if it.answer_text is None:
        return [], -1, ("unclosed" if "answer" in it.unclosed else "no") + " <answer>"
    try:
        options = parse_options(it.choices)
    except ValueError:
        return [], -1, "options unparseable"
    if len(set(options)) != len(options):
        return options, -1, "repeated option"
    idx = resolve_answer(it.answer_text, options)
    return options, idx, "" if idx >= 0 else "answer matches no single option"


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
        options, idx, reason = _checked(it)
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


@dataclass
class McqSettings(ModelConfig):
    """Stage 1 (``stage1``): one generating call per image, then an optional re-formatting call (T=0)."""

    model: str = "Qwen/Qwen2.5-7B-Instruct"
    temperature: float = 0.7
    max_new_tokens: int = 2048
    reformat: bool = True  # second call that rewrites the reply into the strict tagged structure
    reformat_model: str | None = None  # None: the generating engine re-formats too
    reformat_engine: str | None = None  # None: same kind as ``engine``
    reformat_temperature: float = 0.0
    reformat_max_new_tokens: int = 2048

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.reformat_temperature >= 0, "reformat_temperature", self.reformat_temperature, "at least 0")
        check(self.reformat_max_new_tokens >= 1, "reformat_max_new_tokens", self.reformat_max_new_tokens,
              "at least 1")

    def reformat_model_config(self) -> ModelConfig:
        """The model of the re-formatting call (when ``reformat_model`` is set; else the generating one)."""
        return ModelConfig(model=self.reformat_model or self.model, engine=self.reformat_engine or self.engine,
                           engine_options=self.engine_options, temperature=self.reformat_temperature,
                           max_new_tokens=self.reformat_max_new_tokens)


_STR, _BOOL, _INT = pa.string(), pa.bool_(), pa.int32()

# Multiple-choice questions (valid and invalid ones; invalid ones say why). An image whose reply holds no question
# at all has one invalid placeholder row (item_index -1, empty question) that keeps the replies.
SCHEMA = pa.schema(
    [
        ("mcq_id", _STR),  # content_id(image_id, question, options, answer_text)
        ("image_id", _STR),
        ("item_index", _INT),  # position of the question in the LLM's reply (-1: the no-question placeholder)
        ("question", _STR),
        ("options", pa.list_(_STR)),  # option texts in the order the LLM wrote them (letters A, B, ... by position)
        ("answer_text", _STR),  # the answer as the LLM wrote it
        ("answer_index", _INT),  # index into options, -1 when it does not resolve to exactly one option
        ("question_type", _STR),
        ("valid", _BOOL),
        ("invalid_reason", _STR),  # "" when valid
        ("model", _STR),
        ("raw_response", _STR),  # the generating call's reply
        ("formatted_response", _STR),  # the re-formatting call's reply ("" when not used)
    ]
)
TABLE = TableSpec("mcq", SCHEMA, ("image_id", "item_index", "mcq_id"), input_column="image_id", repeated=(
    "image_id", "question_type", "invalid_reason", "model", "raw_response", "formatted_response"))
REFORMAT = "mcq_reformat"  # the re-formatting round: its answers' and its model's name


def requests(items: list[Item], settings: Any, prompts: Any) -> list[Request]:
    """One generating request per source image."""
    cfg = settings.stage1
    return [Request(prompts.mcq_generation(r["description"]),
                    params=cfg.params(seed=request_seed(settings.seed, TABLE.name, image_id), n=1))
            for image_id, r in items]


def reformat_requests(items: list[Item], answers: dict[str, Answers], settings: Any, prompts: Any) -> list[Request]:
    """One re-formatting request per image, on its generating call's reply."""
    cfg = settings.stage1
    return [Request(prompts.mcq_reformat(text), params=SamplingParams(
        n=1, temperature=cfg.reformat_temperature, max_new_tokens=cfg.reformat_max_new_tokens,
        seed=request_seed(settings.seed, TABLE.name + "/reformat", image_id)))
        for (image_id, _), text in zip(items, answers[TABLE.name].first_texts())]


def _reformat_model(settings: Any) -> ModelConfig:
    """The re-formatting call's own model, when it has one (else the generating model re-formats)."""
    cfg = settings.stage1
    return cfg.reformat_model_config() if cfg.reformat_model else cfg


def _reformats(settings: Any) -> bool:
    """Whether the re-formatting round is made (``stage1.reformat``)."""
    return settings.stage1.reformat


def rows(items: list[Item], answers: dict[str, Answers], settings: Any) -> list[dict[str, Any]]:
    """The MCQ rows of a chunk of source images, from the replies (the re-formatted one first, else the raw)."""
    generated = answers[TABLE.name]
    raw = generated.first_texts()
    formatted = answers[REFORMAT].first_texts() if REFORMAT in answers else [""] * len(items)
    out = []
    for (image_id, _), r_text, f_text in zip(items, raw, formatted):
        parsed = parse_mcq_response(f_text) or parse_mcq_response(r_text)  # fall back to the raw reply
        out += mcq_rows(image_id, parsed, model=generated.model, raw_response=r_text, formatted_response=f_text)
    return out


def summary(rows: list[dict[str, Any]], settings: Any) -> tuple[dict[str, int], dict[str, int]]:
    """Images without questions, questions, valid ones; the invalid questions by reason."""
    t = tally(pa.Table.from_pylist(rows, schema=SCHEMA))
    counts = {"images_without_questions": t["placeholders"], "questions": t["questions"], "valid": t["valid"]}
    dropped = Counter(r["invalid_reason"] for r in rows if not r["valid"] and not is_placeholder(r))
    return counts, dict(dropped)


SPEC = StageSpec(1, TABLE, reads="source", settings=McqSettings, requests=requests, rows=rows, summary=summary,
                 summary_columns=("item_index", "valid", "invalid_reason"),
                 description="MCQs from the source's descriptions", when_empty="the run has no source images",
                 role="question", input_columns=("description",),
                 follow_ups=(Round(REFORMAT, reformat_requests, _reformat_model, when=_reformats),),
                 # the authors' code: GPT-4o writes, GPT-4o-mini re-formats at T=0
                 presets={"authors": {"model": "gpt-4o-2024-08-06", "engine": "openai",
                                      "reformat_model": "gpt-4o-mini-2024-07-18", "reformat_engine": "openai"}})

__all__ = ["NO_QUESTION", "REFORMAT", "SCHEMA", "SPEC", "TABLE", "McqSettings", "ParsedItem", "mcq_rows",
           "parse_mcq_response", "requests", "resolve_answer", "rows", "summary"]
