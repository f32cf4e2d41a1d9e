"""Stage 2: simple chains of thought from the VLM, with the assistant turn forced to start with ``<think>``.

Per valid MCQ (one seeded generator per item: ``records.rng_for(seed, "simple_cot", mcq_id)``): shuffle and
re-letter the options, pick the option style (``(A) x`` / ``A. x``) and the requested answer format
(``(X)`` / ``X.`` / option text) at random, render the system prompt (think variant, question type, answer
format) and the user turn (image, question, options), and sample ``n`` continuations of ``<think>``.
Each sample is parsed (``answers.parse_thought``) and labelled (``answers.match_option`` against the gold
letter); unparseable samples and exact duplicates are kept as rows with ``keep=False`` and a reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import pyarrow as pa

from builder.answers import ANSWER_FORMATS, OPTION_STYLES, match_option, parse_thought, shuffle_options
from builder.engines.base import Request
from builder.method import MAX_PIXELS
from builder.prompts import THINK_PREFILL
from builder.records import TableSpec, content_id, rng_for

from .contract import Answers, Item, ModelConfig, StageSpec, check, load_image, request_seed, sample_counts

STAGE = "simple_cot"  # its table, and the name its seeds are drawn under


@dataclass
class SimpleCotSettings(ModelConfig):
    """Stage 2 (``stage2``): simple CoTs from the VLM with a forced ``<think>``."""

    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    n: int = 3
    temperature: float = 0.7
    top_p: float = 0.8
    repetition_penalty: float = 1.05
    max_new_tokens: int = 1024
    max_pixels: int | None = MAX_PIXELS  # cap on an image's area (w*h)
    system_variant: str = "think"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.max_pixels is None or self.max_pixels >= 28 * 28, "max_pixels", self.max_pixels,
              "at least 784 (28×28) or null for no cap")


_STR, _BOOL, _INT = pa.string(), pa.bool_(), pa.int32()

# Simple chain-of-thought samples from the VLM (every sample, parsed and labelled).
SCHEMA = pa.schema(
    [
        ("sample_id", _STR),  # content_id(mcq_id, sample_index, response)
        ("mcq_id", _STR),
        ("image_id", _STR),
        ("sample_index", _INT),
        ("question", _STR),
        ("question_type", _STR),
        ("options", pa.list_(_STR)),  # shuffled, as shown
        ("answer_index", _INT),  # gold index into the shuffled options
        ("option_style", _STR),  # "paren" -> "(A) text", "dot" -> "A. text"
        ("answer_format", _STR),  # "paren" -> "(X)", "dot" -> "X.", "text" -> option text
        ("system_prompt", _STR),
        ("user_text", _STR),
        ("response", _STR),  # full assistant text including the forced "<think>"
        ("thought", _STR),  # text inside <think> ... </think>
        ("answer", _STR),  # text inside <answer> ... </answer> (or the fallback)
        ("pred_index", _INT),  # -1 when the answer matches no option
        ("parsed", _BOOL),
        ("correct", _BOOL),
        ("keep", _BOOL),
        ("drop_reason", _STR),  # "", "unparseable", "duplicate"
        ("model", _STR),
        ("seed", pa.int64()),
    ]
)
TABLE = TableSpec(STAGE, SCHEMA, ("mcq_id", "sample_index", "sample_id"), input_column="mcq_id", repeated=(
    "mcq_id", "image_id", "question", "question_type", "option_style", "answer_format", "system_prompt", "user_text",
    "answer", "drop_reason", "model"))
# the columns of an MCQ that stage 2 reads (with its keys: not the stage-1 replies)
INPUT_COLUMNS = ("question", "options", "answer_index", "question_type")


def presentation(mcq: dict[str, Any], seed: int) -> dict[str, Any]:
    """The seeded per-item choices for one MCQ: shuffled options, gold index, option style, answer format."""
    rng = rng_for(seed, STAGE, mcq["mcq_id"])
    options, gold = shuffle_options(mcq["options"], mcq["answer_index"], rng)
    return {"options": options, "answer_index": gold, "option_style": rng.choice(OPTION_STYLES),
            "answer_format": rng.choice(ANSWER_FORMATS)}


def label_response(response: str, options: Sequence[str], gold_index: int) -> dict[str, Any]:
    """Parse ``<think>…</think>…<answer>…</answer>`` and grade the answer against the gold option.

    ``parsed``: a thought and an answer were found; ``pred_index``: the option the answer names (-1: none,
    which is wrong); ``correct``: parsed and the named option is the gold one.
    """
    thought, answer = parse_thought(response)
    parsed = thought is not None and answer is not None
    pred = match_option(answer, options) if parsed else -1
    return {"thought": thought or "", "answer": answer or "", "pred_index": pred, "parsed": parsed,
            "correct": parsed and pred >= 0 and pred == gold_index}


def sample_rows(mcq: dict[str, Any], shown: dict[str, Any], responses: Sequence[str], *, system_prompt: str,
                user_text: str, model: str, seed: int) -> list[dict[str, Any]]:
    """SIMPLE_COT rows for one MCQ's responses (each response includes the forced ``<think>``)."""
    rows, seen = [], set()
    for i, response in enumerate(responses):
        lab = label_response(response, shown["options"], shown["answer_index"])
        drop = "" if lab["parsed"] else "unparseable"
        if not drop and response in seen:
            drop = "duplicate"
        if not drop:
            seen.add(response)
        rows.append({
            "sample_id": content_id(mcq["mcq_id"], i, response), "mcq_id": mcq["mcq_id"],
            "image_id": mcq["image_id"], "sample_index": i, "question": mcq["question"],
            "question_type": mcq["question_type"], **shown, "system_prompt": system_prompt, "user_text": user_text,
            "response": response, **lab, "keep": not drop, "drop_reason": drop, "model": model, "seed": seed,
        })
    return rows


def build_request(mcq: dict[str, Any], shown: dict[str, Any], image: Any, settings: Any,
                  prompts: Any) -> Request:
    """The stage-2 request of one MCQ (continues the assistant turn ``<think>``)."""
    cfg = settings.stage2
    messages = prompts.vlm_messages(
        mcq["question"], shown["options"], image=image, question_type=mcq["question_type"],
        option_style=shown["option_style"], answer_format=shown["answer_format"], variant=cfg.system_variant,
        prefill=THINK_PREFILL)
    return Request(messages, params=cfg.params(seed=request_seed(settings.seed, STAGE, mcq["mcq_id"])),
                   continue_final_message=True, max_pixels=cfg.max_pixels)


def requests(items: list[Item], settings: Any, prompts: Any) -> list[Request]:
    """One request per MCQ of the chunk (its image loaded once per chunk)."""
    loaded: dict[str, Any] = {}
    out = []
    for mcq_id, m in items:
        if m["image_id"] not in loaded:
            loaded[m["image_id"]] = load_image(m["image_path"], f"mcq {mcq_id} (image {m['image_id']})")
        out.append(build_request(m, presentation(m, settings.seed), loaded[m["image_id"]], settings, prompts))
    return out


def rows(items: list[Item], answers: dict[str, Answers], settings: Any) -> list[dict[str, Any]]:
    """The SIMPLE_COT rows of a chunk of MCQs, from the samples of each MCQ's request."""
    answered = answers[STAGE]
    out = []
    for (_, m), req, samples in zip(items, answered.requests, answered.samples):
        out += sample_rows(
            m, presentation(m, settings.seed), [THINK_PREFILL + s.text for s in samples],
            system_prompt=req.messages[0]["content"], user_text=req.messages[1]["content"][1]["text"],
            model=answered.model, seed=req.params.seed)
    return out


def summary(rows: list[dict[str, Any]], settings: Any) -> tuple[dict[str, int], dict[str, int]]:
    """Samples out, parsed, correct, kept; the dropped samples by reason."""
    return sample_counts(rows, SCHEMA)


SPEC = StageSpec(2, TABLE, reads="question", settings=SimpleCotSettings, requests=requests, rows=rows,
                 summary=summary, summary_columns=("parsed", "correct", "keep", "drop_reason"),
                 description="simple CoTs from the VLM for the valid MCQs", when_empty="stage 1 wrote no valid MCQ",
                 role="short_thought", select="valid", input_columns=INPUT_COLUMNS, source_columns=("image_path",),
                 presets={"authors": {"n": 10}})  # the authors' code: ten samples per MCQ

__all__ = ["SCHEMA", "SPEC", "TABLE", "SimpleCotSettings", "build_request", "label_response", "presentation",
           "requests", "rows", "sample_rows", "summary"]
