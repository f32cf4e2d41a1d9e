"""MMStar-V: the three vision-centric categories of MMStar (the other three are dropped).

name: lpt_mmstar_v (``lpt_mmstar_v_direct``: the direct-answer prompt)
dataset: Lin-Chen/MMStar, config ``val``, split ``val`` (1,500 items, 750 in MMStar-V; ``question`` holds the
    question and "Options: A: …, B: …", ``answer`` letter, ``category``, embedded ``image``)
categories (macro): coarse perception, fine-grained perception, instance reasoning
paper: Chen et al., "Are We on the Right Way for Evaluating Large Vision-Language Models?" (2024)
"""

from __future__ import annotations

import functools
import os

from lighteval.tasks.lighteval_task import LightevalTaskConfig
from lighteval.tasks.requests import Doc

from builder.answers import parse_options
from eval_tasks import common
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


def parse(line: dict, setup: common.Setup) -> common.Item | None:
    at = common.where(NAME, line)
    category = str(common.field_of(line, "category", at))
    if category not in CATEGORIES:
        return None  # MMStar-V keeps the three vision-centric categories
    text = str(common.field_of(line, "question", at))
    question, sep, rest = text.partition("Options:")
    if not sep:
        raise common.ItemError(f"{at}: field 'question' has no 'Options:' part: {text[:100]!r}", "bad_options")
    options = parse_options(rest)
    return common.Item(question.strip(), options,
                       common.letter_index(common.field_of(line, "answer", at), len(options), at), category,
                       common.image(common.field_of(line, "image", at), at, setup), {"id": str(line.get("index", ""))})


def prompt(line: dict, task: str, setup: common.Setup = common.DEFAULT) -> Doc | None:
    return common.doc_for(parse, line, task, setup)


def task(variant: str = "think", data_dir: str | os.PathLike | None = None, max_pixels: int | None = None,
         protocol: str = "authors") -> LightevalTaskConfig:
    setup = common.setup_for(NAME, variant, data_dir, max_pixels, protocol, (HF_REPO, HF_REVISION))
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
        generation_size=GENERATION_SIZE,
        stop_sequence=[],
        metrics=METRICS,
        version=common.TASK_VERSION,
    )


TASKS_TABLE = [task(variant) for variant in common.VARIANTS]
