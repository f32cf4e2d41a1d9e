"""lighteval 0.13 task definitions for the paper's evaluation (``--custom-tasks eval_tasks.tasks``).

Tasks (think prompt; add ``_direct`` for the direct-answer prompt, e.g. ``lpt_vstar_direct``):

================== ================================= ======= ================================================
task               Hub dataset (config / split)      n       categories (macro)
================== ================================= ======= ================================================
``lpt_vstar``      craigwu/vstar_bench (default/test) 191     direct_attributes, relative_position
``lpt_cvbench``    nyu-visionx/CV-Bench (default/test) 2638   task: Count, Relation, Depth, Distance
``lpt_mmvp``       lmms-lab-eval/MMVP (default/train) 300     none (+ pair accuracy from ``Index``)
``lpt_mmstar_v``   Lin-Chen/MMStar (val/val)          750     coarse perception, fine-grained perception,
                                                              instance reasoning (the other 3 are dropped)
``lpt_mme_rw_v``   yifanzhang114/MME-RealWorld-Lmms-  ?       Perception × Remote Sensing, Monitoring,
                   eval (default/train; images                Autonomous_Driving; Reasoning × Monitoring,
                   embedded), or a local JSON copy            Autonomous_Driving (5 categories)
``lpt_realworldqa`` xai-org/RealworldQA (default/test) ≤765   none; open-ended items (no lettered options) dropped
``lpt_mmlu_pro``   TIGER-Lab/MMLU-Pro (default/test)  12032   14 categories; text only, 2048 new tokens
================== ================================= ======= ================================================

Every item becomes the paper's prompt through :meth:`builder.prompts.Prompts.benchmark_messages`: the
system text goes to ``Doc.instruction``, the user text (question, "Select from the following choices.",
``(A) …`` lines) to ``Doc.query``, the image (capped at ``max_pixels``: ``make_tasks(max_pixels=…)``, else
``LPT_MAX_PIXELS``, default 512·512 area) to
``Doc.images``. ``Doc.specific`` carries ``options``, ``category`` (and ``source`` for CV-Bench, ``pair``
for MMVP), which :mod:`eval_tasks.metrics` scores with ``builder.answers.grade``.

Local copies: with ``LPT_EVAL_DATA_DIR`` set, a folder ``$LPT_EVAL_DATA_DIR/<task>`` (``<task>`` without
``_direct``) replaces the Hub dataset. It is read with ``datasets.load_dataset(folder)``, so a snapshot of the
Hub repository (``hf download <repo> --repo-type dataset --local-dir …``) works as is, as does any folder with
data files named after the split (``test.jsonl``, ``val.parquet``, ``train-*.parquet`` …). Image paths
(V*, MME-RealWorld JSON) are resolved relative to that folder. MME-RW-V loads from the Hub's parquet mirror
(``question``, ``multi-choice options``, ``answer``, ``category`` "Perception/Monitoring" …, image as base64
``bytes``); a local folder may instead hold the original annotation file as ``test.json``
(``MME_RealWorld.json`` renamed or linked) and the extracted image folders. Without a local copy, V* images are
fetched with ``huggingface_hub.hf_hub_download`` at the pinned revision.

:data:`PAPER_QWEN25_VL_7B` holds the paper's scores for the base model, which ``lpt eval`` prints next to a run's.

``make_tasks(data_dir)`` builds the table for another data folder (tests, ``lpt eval --data-dir``).
"""

from __future__ import annotations

import functools
import os
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from eval_tasks._offline import data_dir_hint, hub_dataset_problem, prepare_lighteval

prepare_lighteval()

from lighteval.tasks.lighteval_task import LightevalTaskConfig  # noqa: E402
from lighteval.tasks.requests import Doc  # noqa: E402
from PIL import Image  # noqa: E402

from builder.answers import LETTERS, normalize_text, parse_options  # noqa: E402
from builder.engines.base import cap_pixels  # noqa: E402
from builder.prompts import Prompts  # noqa: E402
from eval_tasks.metrics import METRICS  # noqa: E402

DATA_DIR_ENV = "LPT_EVAL_DATA_DIR"
MAX_PIXELS_ENV = "LPT_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 512 * 512
VARIANTS = ("think", "direct")
TASK_VERSION = 1  # part of lighteval's cache key: bump it when a prompt or parser changes

MMSTAR_V_CATEGORIES = ("coarse perception", "fine-grained perception", "instance reasoning")
MME_RW_V_SUBTASKS = ("Autonomous_Driving", "Monitoring", "Remote Sensing")

# The paper's macro accuracy (%) of Qwen2.5-VL-7B-Instruct, the base model (None: not in the paper).
PAPER_QWEN25_VL_7B: dict[str, float | None] = {
    "lpt_cvbench": 74.74, "lpt_vstar": 48.51, "lpt_mmvp": 73.67, "lpt_mmstar_v": 63.73, "lpt_mme_rw_v": 31.68,
    "lpt_realworldqa": None, "lpt_mmlu_pro": 48.07,
}
TITLES = {"lpt_cvbench": "CV-Bench", "lpt_vstar": "V* Bench", "lpt_mmvp": "MMVP", "lpt_mmstar_v": "MMStar-V",
          "lpt_mme_rw_v": "MME-RealWorld-V", "lpt_realworldqa": "RealWorldQA", "lpt_mmlu_pro": "MMLU-Pro"}


class ItemError(ValueError):
    """A dataset row that cannot be turned into an item; the message names task, row and field."""


@dataclass(frozen=True)
class Item:
    question: str
    options: list[str]
    gold_index: int
    category: str
    image: Image.Image | None = None
    extra: dict[str, Any] | None = None  # more keys for Doc.specific (source, pair, id)


@dataclass(frozen=True)
class Benchmark:
    name: str
    repo: str
    subset: str
    split: str
    revision: str | None  # None: no commit found to pin (said so in the report)
    parse: Callable[[dict, "Resolver"], Item | None]
    generation_size: int = 1024


# --------------------------------------------------------------------------------------------- helpers


def max_pixels() -> int:
    """The image area cap of ``LPT_MAX_PIXELS`` (``lighteval custom``'s way in), else 512·512."""
    return int(os.environ.get(MAX_PIXELS_ENV) or DEFAULT_MAX_PIXELS)


def _image(img: Any, cap: int | None = None) -> Image.Image:
    """RGB copy of a PIL image (or an image file path, encoded bytes, base64 text), capped at ``cap`` area."""
    import io

    if isinstance(img, dict) and img.get("bytes"):  # undecoded datasets Image value
        img = img["bytes"]
    if isinstance(img, str) and not os.path.isfile(img):  # base64 (MME-RealWorld's parquet mirror)
        import base64

        img = base64.b64decode(img)
    if isinstance(img, (bytes, bytearray)):
        with Image.open(io.BytesIO(img)) as im:
            img = im.convert("RGB")
    elif isinstance(img, (str, Path)):
        with Image.open(img) as im:
            img = im.convert("RGB")
    else:
        img = img.convert("RGB")
    return cap_pixels(img, cap or max_pixels())


def _letter_index(value: Any, n: int, where: str) -> int:
    """``"B"``, ``"(b)"``, ``"(B)"`` -> 1; error naming ``where`` when it is not a letter among ``n`` options."""
    m = re.fullmatch(r"\s*\(?\s*([A-Ja-j])\s*\)?\s*\.?\s*", str(value))
    if not m or LETTERS.index(m.group(1).upper()) >= n:
        raise ItemError(f"{where}: answer {value!r} is not the letter of one of {n} options")
    return LETTERS.index(m.group(1).upper())


def _field(line: dict, name: str, where: str) -> Any:
    if name not in line or line[name] is None:
        raise ItemError(f"{where}: missing field {name!r} (fields: {sorted(k for k in line if not k.startswith('__'))})")
    return line[name]


def _where(bench: str, line: dict) -> str:
    return f"{bench} row {line.get('__index', '?')}"


@dataclass(frozen=True)
class Resolver:
    """Finds the files that rows name by relative path: in a local folder, else on the Hub (V*)."""

    bench: str
    repo: str
    revision: str | None
    root: str | None  # local folder, or None for the Hub
    max_pixels: int | None = None  # None: max_pixels()

    def image(self, value: Any, where: str) -> Image.Image:
        """The item's image, capped; a field value that cannot be read as an image is an ItemError."""
        try:
            return _image(value, self.max_pixels)
        except (OSError, ValueError) as e:
            raise ItemError(f"{where}: image cannot be read ({type(e).__name__}: {e})") from None

    def path(self, relative: str, where: str) -> str:
        if self.root is not None:
            p = Path(self.root) / relative
            if not p.is_file():
                raise ItemError(f"{where}: image file {p} not found (field 'image' relative to {self.root})")
            return str(p)
        if self.bench == "lpt_mme_rw_v":
            raise ItemError(f"{where}: an MME-RealWorld JSON row names an image file; give the extracted images "
                            f"with the annotation file in DIR/lpt_mme_rw_v and pass --data-dir DIR")
        from huggingface_hub import hf_hub_download

        return hf_hub_download(repo_id=self.repo, filename=relative, repo_type="dataset", revision=self.revision)


# ------------------------------------------------------------------------------------- row parsers


def parse_vstar(line: dict, res: Resolver) -> Item:
    where = _where("lpt_vstar", line)
    text = str(_field(line, "text", where))
    question, sep, rest = text.partition("\n(A)")
    if not sep:
        raise ItemError(f"{where}: field 'text' has no '(A)' option line: {text[:100]!r}")
    option_lines = [ln for ln in ("(A)" + rest).splitlines() if re.match(r"\s*\([A-J]\)", ln)]
    options = parse_options("\n".join(option_lines))
    return Item(question.strip(), options, _letter_index(_field(line, "label", where), len(options), where),
                str(_field(line, "category", where)),
                res.image(res.path(str(_field(line, "image", where)), where), where),
                {"id": str(line.get("question_id", ""))})


def parse_cvbench(line: dict, res: Resolver) -> Item:
    where = _where("lpt_cvbench", line)
    options = [str(c) for c in _field(line, "choices", where)]
    return Item(str(_field(line, "question", where)).strip(), options,
                _letter_index(_field(line, "answer", where), len(options), where),
                str(_field(line, "task", where)), res.image(_field(line, "image", where), where),
                {"source": str(line.get("source") or ""), "id": str(line.get("idx", ""))})


def parse_mmvp(line: dict, res: Resolver) -> Item:
    where = _where("lpt_mmvp", line)
    options = parse_options(str(_field(line, "Options", where)))
    index = int(_field(line, "Index", where))
    return Item(str(_field(line, "Question", where)).strip(), options,
                _letter_index(_field(line, "Correct Answer", where), len(options), where), "all",
                res.image(_field(line, "image", where), where), {"pair": (index - 1) // 2, "id": str(index)})


def parse_mmstar(line: dict, res: Resolver) -> Item | None:
    where = _where("lpt_mmstar_v", line)
    category = str(_field(line, "category", where))
    if category not in MMSTAR_V_CATEGORIES:
        return None  # MMStar-V keeps the three vision-centric categories
    text = str(_field(line, "question", where))
    question, sep, rest = text.partition("Options:")
    if not sep:
        raise ItemError(f"{where}: field 'question' has no 'Options:' part: {text[:100]!r}")
    options = parse_options(rest)
    return Item(question.strip(), options, _letter_index(_field(line, "answer", where), len(options), where),
                category, res.image(_field(line, "image", where), where), {"id": str(line.get("index", ""))})


def _mme_subtask(name: str) -> str | None:
    """``"Remote Sensing"`` / ``"remote_sensing"`` / ``"Autonomous_Driving"`` -> the MME_RW_V_SUBTASKS spelling, or
    None for a subtask outside MME-RW-V (OCR, Diagram and Table)."""
    key = re.sub(r"[\s_]+", " ", name).strip().casefold()
    return next((s for s in MME_RW_V_SUBTASKS if s.replace("_", " ").casefold() == key), None)


def parse_mme_rw(line: dict, res: Resolver) -> Item | None:
    """MME-RealWorld, either the Hub's parquet mirror (``category`` "Perception/Monitoring", ``multi-choice
    options``, ``answer``, base64 ``bytes``) or the original JSON (``Task``, ``Subtask``, ``Answer choices``,
    ``Ground truth``, ``Image`` path). Category ``Task.Subtask``; rows outside MME-RW-V's subtasks are dropped."""
    where = _where("lpt_mme_rw_v", line)
    if "multi-choice options" in line or "category" in line:  # parquet mirror
        category = str(_field(line, "category", where))
        task = "Perception" if "perception" in category.casefold() else "Reasoning"
        subtask = _mme_subtask(category.split("/")[-1])
        if subtask is None:
            return None
        options = parse_options(normalize_text("\n".join(str(c) for c in _field(line, "multi-choice options", where))))
        image = line.get("bytes") if line.get("bytes") is not None else _field(line, "image", where)
        return Item(str(_field(line, "question", where)).strip(), options,
                    _letter_index(_field(line, "answer", where), len(options), where), f"{task}.{subtask}",
                    res.image(image, where), {"id": str(line.get("index", ""))})
    subtask = _mme_subtask(str(_field(line, "Subtask", where)))
    if subtask is None:
        return None
    options = parse_options(normalize_text("\n".join(str(c) for c in _field(line, "Answer choices", where))))
    return Item(str(_field(line, "Text", where)).strip(), options,
                _letter_index(_field(line, "Ground truth", where), len(options), where),
                f"{_field(line, 'Task', where)}.{subtask}",
                res.image(res.path(str(_field(line, "Image", where)), where), where),
                {"id": str(line.get("Question_id", ""))})


_RWQA_INSTRUCTION = re.compile(r"\s*Please answer.*$", re.S | re.I)
_FIRST_OPTION = re.compile(r"(?m)^\s*\(?A\s*[.):]")


def parse_realworldqa(line: dict, res: Resolver) -> Item | None:
    where = _where("lpt_realworldqa", line)
    text = _RWQA_INSTRUCTION.sub("", str(_field(line, "question", where)))
    m = _FIRST_OPTION.search(text)
    if not m:
        return None  # open-ended item: no lettered options to choose from
    try:
        options = parse_options(text[m.start():])
        gold = _letter_index(_field(line, "answer", where), len(options), where)
    except (ValueError, ItemError):
        return None
    return Item(text[:m.start()].strip(), options, gold, "all", res.image(_field(line, "image", where), where))


def parse_mmlu_pro(line: dict, res: Resolver) -> Item:
    where = _where("lpt_mmlu_pro", line)
    options = [str(o) for o in _field(line, "options", where)]
    gold = line.get("answer_index")
    if gold is None or not 0 <= int(gold) < len(options):
        gold = _letter_index(_field(line, "answer", where), len(options), where)
    return Item(str(_field(line, "question", where)).strip(), options, int(gold),
                str(_field(line, "category", where)), None, {"id": str(line.get("question_id", ""))})


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("lpt_vstar", "craigwu/vstar_bench", "default", "test",
              "d9ae62c903da0c98336e85c5ee89cd863b04b4da", parse_vstar),
    Benchmark("lpt_cvbench", "nyu-visionx/CV-Bench", "default", "test",
              "bc284db50d036958861cb60cdd7b77612052ce0d", parse_cvbench),
    Benchmark("lpt_mmvp", "lmms-lab-eval/MMVP", "default", "train", None, parse_mmvp),
    Benchmark("lpt_mmstar_v", "Lin-Chen/MMStar", "val", "val", None, parse_mmstar),
    Benchmark("lpt_mme_rw_v", "yifanzhang114/MME-RealWorld-Lmms-eval", "default", "train", None, parse_mme_rw),
    Benchmark("lpt_realworldqa", "xai-org/RealworldQA", "default", "test", None, parse_realworldqa),
    Benchmark("lpt_mmlu_pro", "TIGER-Lab/MMLU-Pro", "default", "test",
              "3373e0b32277875b8db2aa555a333b78a08477ea", parse_mmlu_pro, generation_size=2048),
)}


# ------------------------------------------------------------------------------------------ prompt


@functools.lru_cache(maxsize=1)
def _prompts() -> Prompts:
    return Prompts()


def build_doc(item: Item, task_name: str, variant: str = "think") -> Doc:
    """The paper's prompt for ``item`` as a lighteval Doc (system text in ``instruction``)."""
    system, user = _prompts().benchmark_messages(item.question, item.options, image=item.image, variant=variant)
    content = user["content"]
    text = content if isinstance(content, str) else next(p["text"] for p in content if p.get("type") == "text")
    specific = {"category": item.category, "options": list(item.options), **(item.extra or {})}
    return Doc(task_name=task_name, query=text, choices=list(item.options), gold_index=item.gold_index,
               instruction=system["content"], images=[item.image] if item.image is not None else None,
               specific=specific)


def prompt(bench: str, variant: str, root: str | None, line: dict, task_name: str, *,
           max_pixels: int | None = None) -> Doc | None:
    """lighteval prompt function (bound with functools.partial): dataset row -> Doc, or None to skip."""
    b = BENCHMARKS[bench]
    item = b.parse(line, Resolver(bench, b.repo, b.revision, root, max_pixels))
    return None if item is None else build_doc(item, task_name, variant)


# ------------------------------------------------------------------------------------------- table


def local_dir(bench: str, data_dir: str | os.PathLike | None) -> str | None:
    """``data_dir/<bench>`` when it exists, else None (use the Hub)."""
    if not data_dir:
        return None
    p = Path(data_dir) / bench
    return str(p.resolve()) if p.is_dir() else None


def _local_subset(folder: str, wanted: str) -> str:
    """The config to load from a local folder: the Hub's name if its README declares it, else 'default'."""
    from datasets import get_dataset_config_names

    try:
        names = get_dataset_config_names(folder)
    except Exception:  # noqa: BLE001 - an unreadable folder fails later, in load_dataset, with a clear message
        return "default"
    return wanted if wanted in names else (names[0] if names else "default")


def task_name(bench: str, variant: str = "think") -> str:
    return bench if variant == "think" else f"{bench}_{variant}"


def make_task(bench: str, variant: str = "think", data_dir: str | os.PathLike | None = None,
              max_pixels: int | None = None) -> LightevalTaskConfig:
    """The lighteval config of one benchmark × prompt variant; a local copy in ``data_dir/<bench>`` replaces the
    Hub dataset; images are capped at ``max_pixels`` area (None: ``LPT_MAX_PIXELS``, else 512·512)."""
    b = BENCHMARKS[bench]
    root = local_dir(bench, data_dir)
    split = b.split
    if root and bench == "lpt_mme_rw_v" and (Path(root) / "test.json").is_file():
        split = "test"  # the original annotation file (MME_RealWorld.json) saved as test.json
    return LightevalTaskConfig(
        name=task_name(bench, variant),
        prompt_function=functools.partial(prompt, bench, variant, root, max_pixels=max_pixels),
        hf_repo=root or b.repo,
        hf_subset=_local_subset(root, b.subset) if root else b.subset,
        hf_revision=None if root else b.revision,
        hf_avail_splits=[split],
        evaluation_splits=[split],
        few_shots_split=None,
        few_shots_select=None,
        generation_size=b.generation_size,
        stop_sequence=[],
        metrics=METRICS,
        version=TASK_VERSION,
    )


def make_tasks(data_dir: str | os.PathLike | None = None, variants: tuple[str, ...] = VARIANTS,
               max_pixels: int | None = None) -> list[LightevalTaskConfig]:
    """All task configs (every benchmark × variant), reading local copies from ``data_dir`` where present."""
    return [make_task(b, v, data_dir, max_pixels) for v in variants for b in BENCHMARKS]


def tasks_module(data_dir: str | os.PathLike | None = None, max_pixels: int | None = None) -> types.ModuleType:
    """A module object holding ``TASKS_TABLE`` for ``data_dir`` (lighteval accepts it as custom tasks)."""
    mod = types.ModuleType("eval_tasks.tasks_for_data_dir")
    mod.TASKS_TABLE = make_tasks(data_dir, max_pixels=max_pixels)
    return mod


class DataUnavailable(RuntimeError):
    """Benchmark data that cannot be loaded now; the message is one line naming the Hub ids and ``--data-dir``."""


def base_name(task: str) -> str:
    """``"lpt_vstar_direct|0"`` -> ``"lpt_vstar"``."""
    name = task.split("|")[0].split(":")[0].strip()
    return name.removesuffix("_direct")


def check_data(benches: list[str], data_dir: str | os.PathLike | None = None) -> None:
    """Raise :class:`DataUnavailable` when a benchmark has no local copy in ``data_dir`` and its Hub dataset
    cannot be loaded now (offline and not cached, or the Hub unreachable); seconds, not a minute of retries."""
    problems = []
    for bench in dict.fromkeys(base_name(b) for b in benches):
        if bench in BENCHMARKS and local_dir(bench, data_dir) is None:
            why = hub_dataset_problem(BENCHMARKS[bench].repo)
            if why:
                problems.append((bench, why))
    if problems:
        names = ", ".join(f"{b} ({BENCHMARKS[b].repo})" for b, _ in problems)
        where = f" ({data_dir} has no folder {' or '.join(b for b, _ in problems)})" if data_dir else ""
        raise DataUnavailable(f"cannot load the Hub dataset{'s' if len(problems) > 1 else ''} of {names}: "
                              f"{problems[0][1]}{where}; {data_dir_hint()}")


def task_string(benches: list[str] | None = None, variant: str = "think") -> str:
    """``"lpt_vstar|0,lpt_cvbench|0,..."`` for lighteval."""
    return ",".join(f"{task_name(b, variant)}|0" for b in (benches or list(BENCHMARKS)))


TASKS_TABLE = make_tasks(os.environ.get(DATA_DIR_ENV))

__all__ = ["BENCHMARKS", "PAPER_QWEN25_VL_7B", "TITLES", "Benchmark", "DataUnavailable", "Item", "ItemError",
           "TASKS_TABLE", "base_name", "build_doc", "check_data", "make_task", "make_tasks", "task_name", "task_string",
           "tasks_module"]
