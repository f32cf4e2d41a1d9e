"""CV-Bench: 2D (counting, spatial relations) and 3D (depth order, relative distance) vision-centric questions.

name: lpt_cvbench (``lpt_cvbench_direct``: the direct-answer prompt)
dataset: nyu-visionx/CV-Bench, config ``default``, split ``test`` (2,638 items; ``choices`` list, ``answer``
    "(B)", ``task``, ``source`` ADE20K / COCO / Omni3D, embedded ``image``)
categories (macro): task: Count, Relation, Depth, Distance; also ``acc_cvbench_official`` by ``source``
paper: Tong et al., "Cambrian-1: A Fully Open, Vision-Centric Exploration of Multimodal LLMs" (2024)
"""

from __future__ import annotations

import functools
import os

from lighteval.tasks.lighteval_task import LightevalTaskConfig
from lighteval.tasks.requests import Doc

from eval_tasks import common, protocols
from eval_tasks.metrics import METRICS

NAME = "lpt_cvbench"
TITLE = "CV-Bench"
HF_REPO = "nyu-visionx/CV-Bench"
HF_SUBSET = "default"
HF_SPLIT = "test"
HF_REVISION = "bc284db50d036958861cb60cdd7b77612052ce0d"
GENERATION_SIZE = 1024
PAPER_QWEN25_VL_7B = 74.74  # the paper's macro accuracy (%) of the base model


def parse(line: dict, setup: common.Setup) -> common.Item:
    at = common.where(NAME, line)
    options = [str(c) for c in common.field_of(line, "choices", at)]
    return common.Item(str(common.field_of(line, "question", at)).strip(), options,
                       common.letter_index(common.field_of(line, "answer", at), len(options), at),
                       str(common.field_of(line, "task", at)),
                       common.image(common.field_of(line, "image", at), at, setup),
                       {"source": str(line.get("source") or ""), "id": str(line.get("idx", ""))})


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
