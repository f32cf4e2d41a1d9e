"""MMVP: "CLIP-blind" image pairs, two options each; a pair counts when both of its questions are right.

name: lpt_mmvp (``lpt_mmvp_direct``: the direct-answer prompt)
dataset: lmms-lab-eval/MMVP, config ``default``, split ``train`` (300 items; ``Index``, ``Question``, ``Options``
    "(a) Open (b) Closed", ``Correct Answer`` "(a)", embedded ``image``)
categories (macro): none (one category); also ``acc_pair`` from ``Index`` ((Index-1)//2)
paper: Tong et al., "Eyes Wide Shut? Exploring the Visual Shortcomings of Multimodal LLMs" (2024)
"""

from __future__ import annotations

import functools
import os

from lighteval.tasks.lighteval_task import LightevalTaskConfig
from lighteval.tasks.requests import Doc

from builder.answers import parse_options
from eval_tasks import common
from eval_tasks.metrics import METRICS

NAME = "lpt_mmvp"
TITLE = "MMVP"
HF_REPO = "lmms-lab-eval/MMVP"
HF_SUBSET = "default"
HF_SPLIT = "train"
HF_REVISION = None  # no commit of lmms-lab-eval/MMVP could be looked up from here: unpinned
GENERATION_SIZE = 1024
PAPER_QWEN25_VL_7B = 73.67  # the paper's macro accuracy (%) of the base model


def parse(line: dict, setup: common.Setup) -> common.Item:
    at = common.where(NAME, line)
    options = parse_options(str(common.field_of(line, "Options", at)))
    index = int(common.field_of(line, "Index", at))
    return common.Item(str(common.field_of(line, "Question", at)).strip(), options,
                       common.letter_index(common.field_of(line, "Correct Answer", at), len(options), at), "all",
                       common.image(common.field_of(line, "image", at), at, setup),
                       {"pair": (index - 1) // 2, "id": str(index)})


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
