"""Stage 2: simple chains of thought from the VLM, with the assistant turn forced to start with ``<think>``.

Per valid MCQ (one seeded generator per item: ``records.rng_for(seed, "simple_cot", mcq_id)``): shuffle and
re-letter the options, pick the option style (``(A) x`` / ``A. x``) and the requested answer format
(``(X)`` / ``X.`` / option text) at random, render the system prompt (think variant, question type, answer
format) and the user turn (image, question, options), and sample ``n`` continuations of ``<think>``.
Each sample is parsed (``answers.parse_thought``) and labelled (``answers.match_option`` against the gold
letter); unparseable samples and exact duplicates are kept as rows with ``keep=False`` and a reason.
"""

from __future__ import annotations

from typing import Any, Sequence

from builder.answers import ANSWER_FORMATS, OPTION_STYLES, match_option, parse_thought, shuffle_options
from builder.settings import PipelineConfig
from builder.engines.base import Engine, Request
from builder.prompts import THINK_PREFILL, Prompts
from builder.records import content_id, rng_for
from builder.store import RunDir

from .common import (StageSpec, StageSummary, keyed_inputs, load_image, report, request_seed, run_stage_locally,
                     source_values, summarise)

STAGE = "simple_cot"  # its table, and the name its seeds are drawn under
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


def build_request(mcq: dict[str, Any], shown: dict[str, Any], image: Any, config: PipelineConfig,
                  prompts: Prompts) -> Request:
    """The stage-2 request of one MCQ (continues the assistant turn ``<think>``)."""
    cfg = config.stage2
    messages = prompts.vlm_messages(
        mcq["question"], shown["options"], image=image, question_type=mcq["question_type"],
        option_style=shown["option_style"], answer_format=shown["answer_format"], variant=cfg.system_variant,
        prefill=THINK_PREFILL)
    return Request(messages, params=cfg.params(seed=request_seed(config.seed, STAGE, mcq["mcq_id"])),
                   continue_final_message=True, max_pixels=cfg.max_pixels)


def prepare(run: RunDir, config: PipelineConfig) -> tuple[list[tuple[str, dict]], dict[str, str]]:
    """Stage 2's inputs, ``(mcq_id, MCQ row)`` for every valid MCQ, and its context: image id -> image path."""
    return (keyed_inputs(run, SPEC, INPUT_COLUMNS, missing="no stage-1 MCQs; run stage 1 first"),
            source_values(run, "image_path"))


def make_rows(chunk: list[tuple[str, dict]], engine: Engine, config: PipelineConfig, prompts: Prompts,
              context: dict[str, str]) -> list[dict[str, Any]]:
    """The SIMPLE_COT rows of a chunk of MCQs (``context``: image id -> image path, from :func:`prepare`)."""
    images = context
    loaded: dict[str, Any] = {}
    plans, requests = [], []
    for mcq_id, m in chunk:
        if m["image_id"] not in loaded:
            if m["image_id"] not in images:
                raise KeyError(f"mcq {mcq_id}: image_id {m['image_id']!r} is not in the run's source")
            loaded[m["image_id"]] = load_image(images[m["image_id"]], f"mcq {mcq_id} (image {m['image_id']})")
        shown = presentation(m, config.seed)
        req = build_request(m, shown, loaded[m["image_id"]], config, prompts)
        plans.append((m, shown, req))
        requests.append(req)
    outputs = engine.generate(requests)
    rows = []
    for (m, shown, req), samples in zip(plans, outputs):
        rows += sample_rows(
            m, shown, [THINK_PREFILL + s.text for s in samples], system_prompt=req.messages[0]["content"],
            user_text=req.messages[1]["content"][1]["text"], model=engine.model_id, seed=req.params.seed)
    return rows


def finish(run: RunDir, config: PipelineConfig, rows: list[dict[str, Any]], *, shard: tuple[int, int] | str,
           progress: bool, items_in: int, skipped: int, model_ids: dict[str, str]) -> StageSummary:
    """Stage 2's summary of this shard's rows, recorded in the manifest (and printed when ``progress``)."""
    summary = summarise(STAGE, shard, rows, items_in=items_in, skipped=skipped)
    return report(summary, run, progress, config=config.to_dict(), models={STAGE: model_ids["engine"]},
                  seed=config.seed)


def run(
    run: RunDir,
    engine: Engine,
    config: PipelineConfig,
    *,
    shard: tuple[int, int] | str = (0, 1),
    progress: bool = True,
    chunk_size: int | None = None,
    prompts: Prompts | None = None,
) -> StageSummary:
    """Write simple CoTs for this shard's valid MCQs that are not done yet; return the summary."""
    return run_stage_locally(SPEC, run, engine, config, shard=shard, progress=progress, chunk_size=chunk_size,
                             prompts=prompts)


SPEC = StageSpec(2, STAGE, input="mcq", usable="valid", run=run, what="simple CoTs from the VLM for the valid MCQs",
                 no_input="stage 1 wrote no valid MCQ", prepare=prepare, make_rows=make_rows, finish=finish,
                 summary_columns=("parsed", "correct", "keep", "drop_reason"), role="short_thought")

__all__ = ["SPEC", "build_request", "finish", "label_response", "make_rows", "prepare", "presentation", "run",
           "sample_rows"]
