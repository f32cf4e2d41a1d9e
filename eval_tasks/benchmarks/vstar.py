"""V* Bench: visual search on high-resolution images.

name: lpt_vstar (``lpt_vstar_direct``: the direct-answer prompt)
dataset: craigwu/vstar_bench, config ``default``, split ``test`` (191 items; ``text`` holds the question and
    ``(A) …`` option lines, ``label`` the letter, ``image`` a file path in the repository)
categories (macro): direct_attributes, relative_position
paper: Wu & Xie, "V*: Guided Visual Search as a Core Mechanism in Multimodal LLMs" (2023)
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

NAME = "lpt_vstar"
TITLE = "V* Bench"
HF_REPO = "craigwu/vstar_bench"
HF_SUBSET = "default"
HF_SPLIT = "test"
HF_REVISION = "d9ae62c903da0c98336e85c5ee89cd863b04b4da"
GENERATION_SIZE = 1024
PAPER_QWEN25_VL_7B = 48.51  # the paper's macro accuracy (%) of the base model


def parse(line: dict, setup: common.Setup) -> common.Item:
    at = common.where(NAME, line)
    text = str(common.field_of(line, "text", at))
    question, sep, rest = text.partition("\n(A)")
    if not sep:
        raise common.ItemError(f"{at}: field 'text' has no '(A)' option line: {text[:100]!r}", "bad_options")
    option_lines = [ln for ln in ("(A)" + rest).splitlines() if re.match(r"\s*\([A-J]\)", ln)]
    options = parse_options("\n".join(option_lines))
    path = common.file_path(str(common.field_of(line, "image", at)), at, setup)
    return common.Item(question.strip(), options, common.letter_index(common.field_of(line, "label", at),
                                                                       len(options), at),
                       str(common.field_of(line, "category", at)), common.image(path, at, setup),
                       {"id": str(line.get("question_id", ""))})


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
