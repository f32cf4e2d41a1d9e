"""MMStar-V: the three vision-centric categories of MMStar (the other three are dropped).

name: lpt_mmstar_v (``lpt_mmstar_v_direct``: the direct-answer prompt)
dataset: Lin-Chen/MMStar, config ``val``, split ``val`` (1,500 items, 750 in MMStar-V; ``answer`` letter,
    ``category``, embedded ``image``; ``question`` in one of two layouts: "… Options: A: …, B: …", or MathVista's
    "Hint: … Question: … Choices: (A) … (B) …"; options padded with "nan" are dropped, as the authors and
    VLMEvalKit do)
categories (macro): coarse perception, fine-grained perception, instance reasoning
paper: Chen et al., "Are We on the Right Way for Evaluating Large Vision-Language Models?" (2024)
"""

from __future__ import annotations

import functools
import os
import re

from lighteval.tasks.lighteval_task import LightevalTaskConfig
from lighteval.tasks.requests import Doc

from builder.answers import parse_options
from eval_tasks import common, protocols
from eval_tasks.metrics import METRICS

NAME = "lpt_mmstar_v"
TITLE = "MMStar-V"
HF_REPO = "Lin-Chen/MMStar"
HF_SUBSET = "val"
HF_SPLIT = "val"
HF_REVISION = None  # no commit of Lin-Chen/MMStar could be looked up from here: unpinned
GENERATION_SIZE = 1024
PAPER_QWEN25_VL_7B = 63.73  # the paper's macro accuracy (%) of the base model
CATEGORIES = ("coarse perception", "fine-grained perception", "instance reasoning")


_HINT = re.compile(r"^\s*Hint:\s*(.*?)\s*Question:\s*", re.S)
_GENERIC_HINT = re.compile(r"^Please answer the question", re.I)


def split_question(text: str, at: str) -> tuple[str, str]:
    """``(question, option text)`` of either layout; an :class:`~eval_tasks.common.ItemError` for neither."""
    question, sep, rest = text.partition("Options:")
    if sep:
        return question.strip(), rest
    question, sep, rest = text.partition("Choices:")
    if not sep:
        raise common.ItemError(f"{at}: field 'question' has neither 'Options:' nor 'Choices:': {text[:100]!r}",
                               "bad_options")
    hint = _HINT.match(question)
    if hint:  # MathVista's layout: a generic "Please answer …" hint is an instruction, not part of the question
        kept = "" if _GENERIC_HINT.match(hint.group(1)) else f"Hint: {hint.group(1)}\n"
        question = kept + question[hint.end():]
    return question.removeprefix("Question:").strip(), rest


def parse(line: dict, setup: common.Setup) -> common.Item | None:
    at = common.where(NAME, line)
    category = str(common.field_of(line, "category", at))
    if category not in CATEGORIES:
        return None  # MMStar-V keeps the three vision-centric categories
    question, option_text = split_question(str(common.field_of(line, "question", at)), at)
    try:
        padded = parse_options(option_text)
    except ValueError as e:
        raise common.ItemError(f"{at}: field 'question' has options that cannot be read ({e})", "bad_options") from None
    gold = common.letter_index(common.field_of(line, "answer", at), len(padded), at)
    kept = [i for i, o in enumerate(padded) if o.strip().casefold() != "nan"]
    if gold not in kept:
        raise common.ItemError(f"{at}: answer {line['answer']!r} names a 'nan' padding option", "bad_answer")
    return common.Item(question, [padded[i] for i in kept], kept.index(gold), category,
                       common.image(common.field_of(line, "image", at), at, setup), {"id": str(line.get("index", ""))})


def prompt(line: dict, task: str, setup: common.Setup = common.DEFAULT) -> Doc | None:
    return common.doc_for(parse, line, task, setup)


def task(variant: str = "think", data_dir: str | os.PathLike | None = None, max_pixels: int | None = None,
         protocol: str = "authors", max_rows: int | None = None) -> LightevalTaskConfig:
    setup = common.setup_for(NAME, variant, data_dir, max_pixels, protocol, (HF_REPO, HF_REVISION), max_rows)
    return LightevalTaskConfig(
        name=common.task_name(NAME, variant),
        prompt_function=functools.partial(prompt, setup=setup),
        hf_repo=setup.root or HF_REPO,
        hf_subset=common.local_subset(setup.root, HF_SUBSET),
        hf_revision=None if setup.root else HF_REVISION,
        hf_avail_splits=[HF_SPLIT],
        evaluation_splits=[HF_SPLIT],
        few_shots_split=None,
        few_shots_select=None,
        generation_size=protocols.generation_size(protocol, GENERATION_SIZE),
        stop_sequence=[],
        metrics=METRICS,
        version=common.TASK_VERSION,
    )


TASKS_TABLE = [task(variant) for variant in common.VARIANTS]
