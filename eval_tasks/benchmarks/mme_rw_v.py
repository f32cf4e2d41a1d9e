"""MME-RealWorld-V: the vision-centric subtasks of MME-RealWorld (Perception and Reasoning on remote sensing,
monitoring and autonomous driving).

name: lpt_mme_rw_v (``lpt_mme_rw_v_direct``: the direct-answer prompt)
dataset: yifanzhang114/MME-RealWorld-Lmms-eval, config ``default``, split ``train`` (the Hub's parquet mirror:
    ``question``, ``multi-choice options``, ``answer`` letter, ``category`` "Perception/Monitoring", image as
    base64 ``bytes``), or a local folder holding the original ``MME_RealWorld.json`` as ``test.json`` next to
    the extracted image folders (``Task``, ``Subtask``, ``Answer choices``, ``Ground truth``, ``Image`` path)
categories (macro): Perception × Remote Sensing, Monitoring, Autonomous_Driving; Reasoning × Monitoring,
    Autonomous_Driving (5 categories; rows of other subtasks are dropped)
paper: Zhang et al., "MME-RealWorld: Could Your Multimodal LLM Challenge High-Resolution Real-World Scenarios
    that are Difficult for Humans?" (2024)
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

from lighteval.tasks.lighteval_task import LightevalTaskConfig
from lighteval.tasks.requests import Doc

from builder.answers import normalize_text, parse_options
from eval_tasks import common, protocols
from eval_tasks.metrics import METRICS

NAME = "lpt_mme_rw_v"
TITLE = "MME-RealWorld-V"
HF_REPO = "yifanzhang114/MME-RealWorld-Lmms-eval"
HF_SUBSET = "default"
HF_SPLIT = "train"
HF_REVISION = None  # no commit of the mirror could be looked up from here: unpinned
LOCAL_JSON_SPLIT = "test"  # a local folder with the original annotation file saved as test.json
GENERATION_SIZE = 1024
PAPER_QWEN25_VL_7B = 31.68  # the paper's macro accuracy (%) of the base model
SUBTASKS = ("Autonomous_Driving", "Monitoring", "Remote Sensing")


def subtask_of(name: str) -> str | None:
    """``"Remote Sensing"`` / ``"remote_sensing"`` / ``"Autonomous_Driving"`` -> the SUBTASKS spelling, or None for
    a subtask outside MME-RW-V (OCR, Diagram and Table)."""
    key = re.sub(r"[\s_]+", " ", name).strip().casefold()
    return next((s for s in SUBTASKS if s.replace("_", " ").casefold() == key), None)


def _options(values) -> list[str]:
    return parse_options(normalize_text("\n".join(str(c) for c in values)))


def parse_mirror(line: dict, setup: common.Setup) -> common.Item | None:
    """A row of the Hub's parquet mirror."""
    at = common.where(NAME, line)
    category = str(common.field_of(line, "category", at))
    subtask = subtask_of(category.split("/")[-1])
    if subtask is None:
        return None
    kind = "Perception" if "perception" in category.casefold() else "Reasoning"
    options = _options(common.field_of(line, "multi-choice options", at))
    img = line.get("bytes") if line.get("bytes") is not None else common.field_of(line, "image", at)
    return common.Item(str(common.field_of(line, "question", at)).strip(), options,
                       common.letter_index(common.field_of(line, "answer", at), len(options), at),
                       f"{kind}.{subtask}", common.image(img, at, setup), {"id": str(line.get("index", ""))})


def parse_original(line: dict, setup: common.Setup) -> common.Item | None:
    """A row of the original annotation file (image files next to it)."""
    at = common.where(NAME, line)
    subtask = subtask_of(str(common.field_of(line, "Subtask", at)))
    if subtask is None:
        return None
    options = _options(common.field_of(line, "Answer choices", at))
    path = common.file_path(str(common.field_of(line, "Image", at)), at, setup)
    return common.Item(str(common.field_of(line, "Text", at)).strip(), options,
                       common.letter_index(common.field_of(line, "Ground truth", at), len(options), at),
                       f"{common.field_of(line, 'Task', at)}.{subtask}", common.image(path, at, setup),
                       {"id": str(line.get("Question_id", ""))})


def parse(line: dict, setup: common.Setup) -> common.Item | None:
    mirror = "multi-choice options" in line or "category" in line
    return (parse_mirror if mirror else parse_original)(line, setup)


def load(task: Any, setup: common.Setup) -> Any:
    """With ``max_rows`` (``--max-samples`` of ``lpt eval`` or of ``lighteval custom``, else ``LPT_MAX_SAMPLES``:
    see :func:`eval_tasks._offline.lighteval_max_samples`), stream the Hub mirror and stop after that many MME-RW-V
    rows, so that only the parquet shards holding them are read (the whole mirror is ~70 shards of ~200 MB).
    None: let lighteval load the dataset (a local copy, or the whole benchmark)."""
    if setup.root is not None or not setup.max_rows:
        return None
    from datasets import Dataset, DatasetDict, load_dataset
    from tqdm import tqdm

    stream = load_dataset(HF_REPO, HF_SUBSET, split=HF_SPLIT, revision=HF_REVISION, streaming=True)
    rows = []
    with tqdm(total=setup.max_rows, desc=f"{NAME}: rows from the Hub mirror", unit="row") as bar:
        for row in stream:
            if subtask_of(str(row.get("category") or "").split("/")[-1]) is not None:
                rows.append(row)
                bar.update()
            if len(rows) >= setup.max_rows:
                break
    return DatasetDict({HF_SPLIT: Dataset.from_list(rows)})


def prompt(line: dict, task: str, setup: common.Setup = common.DEFAULT) -> Doc | None:
    return common.doc_for(parse, line, task, setup)


def task(variant: str = "think", data_dir: str | os.PathLike | None = None, max_pixels: int | None = None,
         protocol: str = "authors", max_rows: int | None = None) -> LightevalTaskConfig:
    # the mirror embeds its images; a row naming an image file needs the local copy (no Hub download)
    setup = common.setup_for(NAME, variant, data_dir, max_pixels, protocol, ("", None), max_rows)
    split = LOCAL_JSON_SPLIT if setup.root and (Path(setup.root) / "test.json").is_file() else HF_SPLIT
    return LightevalTaskConfig(
        name=common.task_name(NAME, variant),
        prompt_function=functools.partial(prompt, setup=setup),
        hf_repo=setup.root or HF_REPO,
        hf_subset=common.local_subset(setup.root, HF_SUBSET),
        hf_revision=None if setup.root else HF_REVISION,
        hf_avail_splits=[split],
        evaluation_splits=[split],
        few_shots_split=None,
        few_shots_select=None,
        generation_size=protocols.generation_size(protocol, GENERATION_SIZE),
        stop_sequence=[],
        metrics=METRICS,
        version=common.TASK_VERSION,
    )


TASKS_TABLE = [task(variant) for variant in common.VARIANTS]
