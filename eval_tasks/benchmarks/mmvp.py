"""MMVP: "CLIP-blind" image pairs, two options each; a pair counts when both of its questions are right.

name: lpt_mmvp (``lpt_mmvp_direct``: the direct-answer prompt)
dataset: ``project``: lmms-lab-eval/MMVP, config ``default``, split ``train`` (300 items; ``Index``, ``Question``,
    ``Options`` "(a) Open (b) Closed", ``Correct Answer`` "(a)", embedded ``image``; it corrects the answers of
    Index 99, 100, 279 and 280). ``authors``: MMVP/MMVP, the copy the authors used: ``Questions.csv`` (the same
    columns, no image) beside ``MMVP Images/<Index>.jpg``
categories (macro): none (one category); also ``acc_pair`` from ``Index`` ((Index-1)//2)
paper: Tong et al., "Eyes Wide Shut? Exploring the Visual Shortcomings of Multimodal LLMs" (2024)
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from lighteval.tasks.lighteval_task import LightevalTaskConfig
from lighteval.tasks.requests import Doc

from builder.answers import parse_options
from eval_tasks import common, protocols
from eval_tasks.metrics import METRICS

NAME = "lpt_mmvp"
TITLE = "MMVP"
HF_REPO = "lmms-lab-eval/MMVP"
HF_SUBSET = "default"
HF_SPLIT = "train"
HF_REVISION = None  # no commit of lmms-lab-eval/MMVP could be looked up from here: unpinned
AUTHORS_HF_REPO = "MMVP/MMVP"  # the copy the authors evaluated on (protocol "authors")
AUTHORS_HF_REVISION = None  # no commit of MMVP/MMVP could be looked up from here: unpinned
AUTHORS_QUESTIONS = "Questions.csv"
AUTHORS_IMAGES = "MMVP Images"
GENERATION_SIZE = 1024
PAPER_QWEN25_VL_7B = 73.67  # the paper's macro accuracy (%) of the base model


def parse(line: dict, setup: common.Setup) -> common.Item:
    at = common.where(NAME, line)
    options = parse_options(str(common.field_of(line, "Options", at)))
    index = int(common.field_of(line, "Index", at))
    img = line.get("image")
    if img is None:  # MMVP/MMVP: the image is a file named after the Index
        img = common.file_path(f"{AUTHORS_IMAGES}/{index}.jpg", at, setup)
    return common.Item(str(common.field_of(line, "Question", at)).strip(), options,
                       common.letter_index(common.field_of(line, "Correct Answer", at), len(options), at), "all",
                       common.image(img, at, setup), {"pair": (index - 1) // 2, "id": str(index)})


def load(task: Any, setup: common.Setup) -> Any:
    """MMVP/MMVP (or a local copy of it) is a CSV beside an image folder, which ``datasets`` would read as an
    image folder alone: read the CSV. None: let lighteval load the dataset (lmms-lab-eval/MMVP)."""
    from datasets import load_dataset

    if setup.root is not None:
        csv = Path(setup.root) / AUTHORS_QUESTIONS
        if not csv.is_file():
            return None
    elif task.dataset_path == AUTHORS_HF_REPO:
        from huggingface_hub import hf_hub_download

        csv = hf_hub_download(AUTHORS_HF_REPO, AUTHORS_QUESTIONS, repo_type="dataset", revision=AUTHORS_HF_REVISION)
    else:
        return None
    return load_dataset("csv", data_files={HF_SPLIT: str(csv)})


def prompt(line: dict, task: str, setup: common.Setup = common.DEFAULT) -> Doc | None:
    return common.doc_for(parse, line, task, setup)


def task(variant: str = "think", data_dir: str | os.PathLike | None = None, max_pixels: int | None = None,
         protocol: str = "authors", max_rows: int | None = None) -> LightevalTaskConfig:
    authors = protocols.get(protocol).sources == "authors"
    repo, revision = (AUTHORS_HF_REPO, AUTHORS_HF_REVISION) if authors else (HF_REPO, HF_REVISION)
    setup = common.setup_for(NAME, variant, data_dir, max_pixels, protocol, (repo, revision), max_rows)
    return LightevalTaskConfig(
        name=common.task_name(NAME, variant),
        prompt_function=functools.partial(prompt, setup=setup),
        hf_repo=setup.root or repo,
        hf_subset=common.local_subset(setup.root, HF_SUBSET),
        hf_revision=None if setup.root else revision,
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
