"""What every benchmark file under :mod:`eval_tasks.benchmarks` shares: the item, the row helpers, the image
loader, where the data comes from (Hub or a local copy) and the one function that turns an item into a lighteval
``Doc`` (the prompt rendering lives in :mod:`eval_tasks.protocols`, on top of :mod:`builder.prompts`).

A benchmark file parses a dataset row into an :class:`Item` (or None to leave the row out of the benchmark);
:func:`to_doc` does the rest. A row that cannot be parsed raises :class:`ItemError`, whose message names the
task, the row and the field; :func:`doc_for` turns it into a *skipped* Doc that the metrics count with its reason
(a broken row never ends the task).
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from lighteval.tasks.requests import Doc
from PIL import Image

from builder.answers import LETTERS
from builder.engines.base import cap_pixels

MAX_PIXELS_ENV = "LPT_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 512 * 512
VARIANTS = ("think", "direct")
TASK_VERSION = 2  # part of lighteval's cache key: bump it when a prompt or parser changes


class ItemError(ValueError):
    """A dataset row that cannot be turned into an item; the message names task, row and field.

    ``reason`` is a short key (``missing_field``, ``bad_answer``, ``bad_options``, ``bad_image``) under which
    the metrics count the skipped rows."""

    def __init__(self, message: str, reason: str = "unparsable") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Item:
    question: str
    options: list[str]
    gold_index: int
    category: str
    image: Image.Image | None = None
    extra: dict[str, Any] | None = None  # more keys for Doc.specific (source, pair, id)


@dataclass(frozen=True)
class Setup:
    """How one task builds its Docs: prompt variant, protocol, local copy (None: the Hub), image area cap
    (None: ``LPT_MAX_PIXELS``, else 512·512)."""

    bench: str = ""  # the benchmark's NAME (its task file's own loader is found by it)
    variant: str = "think"
    protocol: str = "authors"
    root: str | None = None
    max_pixels: int | None = None
    hub: tuple[str, str | None] = field(default=("", None))  # (repo, revision) for files rows name by path
    max_rows: int | None = None  # a task file that streams its data stops after this many usable rows


DEFAULT = Setup()


def max_pixels() -> int:
    """The image area cap of ``LPT_MAX_PIXELS`` (``lighteval custom``'s way in), else 512·512."""
    return int(os.environ.get(MAX_PIXELS_ENV) or DEFAULT_MAX_PIXELS)


def task_name(bench: str, variant: str = "think") -> str:
    return bench if variant == "think" else f"{bench}_{variant}"


# ----------------------------------------------------------------------------------------------- rows


def where(bench: str, line: dict) -> str:
    return f"{bench} row {line.get('__index', '?')}"


def field_of(line: dict, name: str, at: str) -> Any:
    """``line[name]``; an :class:`ItemError` naming ``at`` and the row's fields when it is missing."""
    if name not in line or line[name] is None:
        raise ItemError(f"{at}: missing field {name!r} (fields: {sorted(k for k in line if not k.startswith('__'))})",
                        "missing_field")
    return line[name]


def letter_index(value: Any, n: int, at: str) -> int:
    """``"B"``, ``"(b)"``, ``"(B)"`` -> 1; an :class:`ItemError` naming ``at`` when it is not a letter among ``n``."""
    m = re.fullmatch(r"\s*\(?\s*([A-Ja-j])\s*\)?\s*\.?\s*", str(value))
    if not m or LETTERS.index(m.group(1).upper()) >= n:
        raise ItemError(f"{at}: answer {value!r} is not the letter of one of {n} options", "bad_answer")
    return LETTERS.index(m.group(1).upper())


def load_image(img: Any, cap: int | None = None) -> Image.Image:
    """RGB copy of a PIL image (or an image file path, encoded bytes, base64 text), capped at ``cap`` area."""
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


def image(value: Any, at: str, setup: Setup) -> Image.Image:
    """The item's image, capped; a value that cannot be read as an image is an :class:`ItemError`."""
    try:
        return load_image(value, setup.max_pixels)
    except (OSError, ValueError) as e:
        raise ItemError(f"{at}: image cannot be read ({type(e).__name__}: {e})", "bad_image") from None


def file_path(relative: str, at: str, setup: Setup) -> str:
    """A file a row names by relative path: in the local copy, else downloaded from the task's Hub repository."""
    if setup.root is not None:
        p = Path(setup.root) / relative
        if not p.is_file():
            raise ItemError(f"{at}: image file {p} not found (field 'image' relative to {setup.root})", "bad_image")
        return str(p)
    repo, revision = setup.hub
    if not repo:
        raise ItemError(f"{at}: the row names the file {relative}; give a local copy with --data-dir", "bad_image")
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id=repo, filename=relative, repo_type="dataset", revision=revision)


# ---------------------------------------------------------------------------------------------- data


def local_dir(bench: str, data_dir: str | os.PathLike | None) -> str | None:
    """``data_dir/<bench>`` when it exists, else None (use the Hub)."""
    if not data_dir:
        return None
    p = Path(data_dir) / bench
    return str(p.resolve()) if p.is_dir() else None


def local_subset(folder: str | None, wanted: str) -> str:
    """The config to load: ``wanted`` on the Hub; from a local folder, the Hub's name if its README declares it,
    else its first config, else 'default'."""
    if folder is None:
        return wanted
    from datasets import get_dataset_config_names

    try:
        names = get_dataset_config_names(folder)
    except Exception:  # noqa: BLE001 - an unreadable folder fails later, in load_dataset, with a clear message
        return "default"
    return wanted if wanted in names else (names[0] if names else "default")


def setup_for(bench: str, variant: str, data_dir: str | os.PathLike | None, max_pixels: int | None,
              protocol: str, hub: tuple[str, str | None], max_rows: int | None = None) -> Setup:
    from eval_tasks.protocols import get

    return Setup(bench=bench, variant=variant, protocol=get(protocol).name, root=local_dir(bench, data_dir),
                 max_pixels=max_pixels, hub=hub, max_rows=max_rows)


def setup_of(task: Any) -> Setup | None:
    """The :class:`Setup` bound into a lighteval task's prompt function (None for a task not built here)."""
    return (getattr(getattr(task, "formatter", None), "keywords", None) or {}).get("setup")


# ----------------------------------------------------------------------------------------------- Doc


def to_doc(item: Item, task: str, setup: Setup) -> Doc:
    """The item as a lighteval Doc under ``setup.protocol`` (:mod:`eval_tasks.protocols` renders it): system text
    in ``instruction``, user text in ``query``, the image in ``images`` (the model puts it first); ``specific``
    carries options, category, protocol (and source, pair, id) for the metrics."""
    from eval_tasks.protocols import benchmark_turns

    extra = dict(item.extra or {})
    system, user = benchmark_turns(setup.protocol, item.question, item.options, setup.variant,
                                   extra.pop("subject", None))
    specific = {"category": item.category, "options": list(item.options), "protocol": setup.protocol, **extra}
    return Doc(task_name=task, query=user, choices=list(item.options), gold_index=item.gold_index,
               instruction=system, images=[item.image] if item.image is not None else None, specific=specific)


def skipped_doc(error: ItemError, task: str, setup: Setup) -> Doc:
    """A Doc standing for a row that cannot be parsed: the model is not asked (:mod:`eval_tasks.model`), the
    metrics count it under its reason (``skipped``, ``skipped_<reason>``) and leave it out of every accuracy."""
    return Doc(task_name=task, query="", choices=["-"], gold_index=0, instruction="",
               specific={"skipped": error.reason, "skipped_why": str(error), "protocol": setup.protocol,
                         "category": "", "options": []})


def doc_for(parse: Callable[[dict, Setup], Item | None], line: dict, task: str, setup: Setup) -> Doc | None:
    """``parse`` the row into a Doc; None for a row outside the benchmark; a skipped Doc for a broken row (so
    that one odd row never ends the task, also with ``--max-samples``)."""
    try:
        item = parse(line, setup)
    except ItemError as e:
        return skipped_doc(e, task, setup)
    return None if item is None else to_doc(item, task, setup)


def with_root(setup: Setup, root: str | None) -> Setup:
    return replace(setup, root=root)


__all__ = ["DEFAULT", "Item", "ItemError", "Setup", "TASK_VERSION", "VARIANTS", "doc_for", "field_of", "file_path",
           "image", "letter_index", "load_image", "local_dir", "local_subset", "max_pixels", "setup_for",
           "setup_of", "skipped_doc", "task_name", "to_doc", "where"]
