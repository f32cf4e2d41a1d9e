"""MMLU-Pro: text-only, up to ten options, 14 subject categories (a check that perception training keeps
general reasoning).

name: lpt_mmlu_pro (``lpt_mmlu_pro_direct``: the direct-answer prompt)
dataset: TIGER-Lab/MMLU-Pro, config ``default``, split ``test`` (12,032 items; ``options`` list, ``answer``
    letter, ``answer_index``, ``category``)
categories (macro): the 14 subjects
paper: Wang et al., "MMLU-Pro: A More Robust and Challenging Multi-Task Language Understanding Benchmark" (2024)
"""

from __future__ import annotations

import functools
import os

from lighteval.tasks.lighteval_task import LightevalTaskConfig
from lighteval.tasks.requests import Doc

from eval_tasks import common, protocols
from eval_tasks.metrics import METRICS

NAME = "lpt_mmlu_pro"
TITLE = "MMLU-Pro"
HF_REPO = "TIGER-Lab/MMLU-Pro"
HF_SUBSET = "default"
HF_SPLIT = "test"
HF_REVISION = "3373e0b32277875b8db2aa555a333b78a08477ea"
GENERATION_SIZE = 2048
PAPER_QWEN25_VL_7B = 48.07  # the paper's macro accuracy (%) of the base model


def parse(line: dict, setup: common.Setup) -> common.Item:
    at = common.where(NAME, line)
    options = [str(o) for o in common.field_of(line, "options", at)]
    gold = line.get("answer_index")
    if gold is None or not 0 <= int(gold) < len(options):
        gold = common.letter_index(common.field_of(line, "answer", at), len(options), at)
    category = str(common.field_of(line, "category", at))  # the subject the authors' template names
    return common.Item(str(common.field_of(line, "question", at)).strip(), options, int(gold),
                       category, None, {"id": str(line.get("question_id", "")), "subject": category})


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
