"""RealWorldQA: real-world spatial understanding, mostly driving scenes (multiple-choice items only).

name: lpt_realworldqa (``lpt_realworldqa_direct``: the direct-answer prompt)
dataset: xai-org/RealworldQA, config ``default``, split ``test`` (765 items; ``question`` holds the question, the
    "A. …" option lines and an instruction, ``answer`` letter, embedded ``image``); open-ended items are dropped
categories (macro): none (one category)
paper: xAI, "Grok-1.5 Vision Preview" (2024); not in the LongPerceptualThoughts paper's table
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

NAME = "lpt_realworldqa"
TITLE = "RealWorldQA"
HF_REPO = "xai-org/RealworldQA"
HF_SUBSET = "default"
HF_SPLIT = "test"
HF_REVISION = None  # no commit of xai-org/RealworldQA could be looked up from here: unpinned
GENERATION_SIZE = 1024
PAPER_QWEN25_VL_7B = None  # not in the paper
_INSTRUCTION = re.compile(r"\s*Please answer.*$", re.S | re.I)
_FIRST_OPTION = re.compile(r"(?m)^\s*\(?A\s*[.):]")


def parse(line: dict, setup: common.Setup) -> common.Item | None:
    at = common.where(NAME, line)
    text = _INSTRUCTION.sub("", str(common.field_of(line, "question", at)))
    m = _FIRST_OPTION.search(text)
    if not m:
        return None  # open-ended item: no lettered options to choose from
    try:
        options = parse_options(text[m.start():])
        gold = common.letter_index(common.field_of(line, "answer", at), len(options), at)
    except (ValueError, common.ItemError):
        return None  # an open-ended answer to lettered-looking text
    return common.Item(text[:m.start()].strip(), options, gold, "all",
                       common.image(common.field_of(line, "image", at), at, setup))


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
