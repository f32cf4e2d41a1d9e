"""The dataset configs: their features, how each is built from a run directory, and the registry.

One :class:`ConfigSpec` per config (``sft``, ``dpo``, ``mcq``, ``mcq_direct``, ``simple_cot``, ``images``,
the raw stage records, and ``lpt30k``, the authors' release). The ``datasets`` builder in
``longperceptualthoughts.py`` and ``lpt export`` both read :data:`CONFIGS`; :func:`register` adds one.
"""

from __future__ import annotations

import itertools
import io
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features, Image, List, Value
from huggingface_hub import snapshot_download
from PIL import Image as PILImage

from builder import assemble, plugins
from builder.assemble import AssembleOptions
from builder.engines.base import cap_pixels
from builder.method import MAX_PIXELS
from builder.records import TABLES
from builder.stages import get_stage, table_for
from builder.store import RunDir

log = logging.getLogger(__name__)
LPT30K_REPO = "andrewliao11/LongPerceptualThoughts-30k"

# ---------------------------------------------------------------------------------------------- features

_S = Value("string")
MESSAGES = List({"role": _S, "content": _S})
SFT_FEATURES = Features({
    "example_id": _S, "image_id": _S, "mcq_id": _S, "sample_id": _S, "expansion_id": _S, "cot_type": _S,
    "question_type": _S, "messages": MESSAGES, "simple_thought": _S,
})
DPO_FEATURES = Features({
    "example_id": _S, "image_id": _S, "mcq_id": _S, "kind": _S, "question_type": _S, "prompt": MESSAGES,
    "chosen": MESSAGES, "rejected": MESSAGES, "chosen_id": _S, "rejected_id": _S, "chosen_type": _S,
    "rejected_type": _S,
})
MCQ_FEATURES = Features({
    "example_id": _S, "image_id": _S, "mcq_id": _S, "question": _S, "question_type": _S, "options": List(_S),
    "answer_index": Value("int32"), "answer": _S, "messages": MESSAGES,
})
IMAGES_FEATURES = Features({"image_id": _S, "image": Image()})

FIELD_DOCS = {
    "example_id": "a stable id of the row (content hash)",
    "image_id": "the source image (DOCCI example_id); its pixels are in the `images` config",
    "mcq_id": "the question (content hash of image, question, options, answer)",
    "sample_id": "the simple chain of thought the trace starts from (stage 2)",
    "expansion_id": "the expansion (stage 3); empty for a simple thought",
    "cot_type": "O / X: a correct / wrong simple thought; O_O, X_O, …: a simple thought and its expansion's outcome",
    "question_type": "the reasoning type stage 1 gave the question",
    "messages": "the chat: system prompt, user turn (question and options), assistant turn (<think>…</think> "
                "<answer>…</answer>)",
    "simple_thought": "the simple thought an expansion grew from",
    "kind": "the pair kind, chosen>rejected (O>X, O>O_X, X_O>X, X_O>X_X, O>O_O)",
    "prompt": "the shared prompt (system and user turns)",
    "chosen": "the preferred assistant turn", "rejected": "the other assistant turn",
    "chosen_id": "the chosen trace's id", "rejected_id": "the rejected trace's id",
    "chosen_type": "the chosen trace's cot_type", "rejected_type": "the rejected trace's cot_type",
    "question": "the question", "options": "the options, in the order shown",
    "answer_index": "the gold option's index", "answer": "the gold answer, formatted as the prompt asks",
    "image": "the image (JPEG, area at most 512×512 pixels)",
}
"""What each exported field means (the card's field tables); raw configs use the run-directory schema's names."""
LPT30K_FEATURES = Features({"example_id": _S, "image_id": _S, "messages": MESSAGES, "cot_type": _S,
                            "image": Image()})


# ------------------------------------------------------------------------------------------------ configs


@dataclass
class LPTConfig(datasets.BuilderConfig):
    """A config of the dataset: which set to build, from which run directory, with which assembly options."""

    run_dir: str | None = None
    """The run directory (``lpt generate`` / ``lpt import-upstream``) the set is assembled from."""

    options: AssembleOptions = field(default_factory=AssembleOptions)
    """Ratios, DPO pair kinds, answer format and seed of the assembly (:class:`builder.assemble.AssembleOptions`)."""

    embed_images: bool = True
    """``images`` config: store resized JPEG bytes (True) or the original file's absolute path (False)."""

    max_pixels: int | None = MAX_PIXELS
    """``images`` config: a stored image's area is capped at this many pixels (512×512, as the models saw it)."""

    release: str | None = None
    """``lpt30k``: a local copy of the authors' release, or its Hub repo id (default :data:`LPT30K_REPO`)."""

    docci_dir: str | None = None
    """``lpt30k``: a local DOCCI folder (``images/`` and/or the image files) to join the images from."""

    def run(self) -> RunDir:
        """The run directory, checked to exist."""
        if not self.run_dir:
            raise ValueError(f"config {self.name!r} needs run_dir=<a run directory>")
        if not Path(self.run_dir).is_dir():
            raise FileNotFoundError(f"run directory {self.run_dir} does not exist")
        return RunDir(self.run_dir)


@dataclass(frozen=True)
class ConfigSpec:
    """How to build one config: its features and a function from the config to rows."""

    name: str
    """The config's name (``load_dataset(OUT, name)``, ``lpt export --config``)."""

    features: Features
    """The features of its rows."""

    build: Callable[[LPTConfig], Iterable[dict[str, Any]]]
    """The config's rows, as dicts of its features."""

    description: str = ""
    """One line for the card and ``lpt view``."""

    from_run: bool = True
    """Built from a run directory (and so written by ``lpt export``)."""

    why_empty: Callable[[LPTConfig], str] | None = None
    """Says why a run gives no rows (the export reports it)."""

    batches: Callable[[LPTConfig, Any], Iterable[pa.RecordBatch]] | None = None
    """``batches(config, traces)``: the same rows as Arrow record batches of :attr:`features` (the columnar
    assembly; ``traces`` is a :func:`builder.assemble.trace_index` several sets share, or ``None``). When set,
    the ``datasets`` builder and ``lpt export`` stream these instead of :attr:`build`'s dicts."""

    check: Callable[[LPTConfig], Any] | None = None
    """Runs before the config is built: a missing input fails in one line (``lpt30k`` without the release)."""


CONFIGS: dict[str, ConfigSpec] = {}


def register(spec: ConfigSpec) -> ConfigSpec:
    """Add (or replace) a config of the ``datasets`` builder and of ``lpt export``."""
    CONFIGS[spec.name] = spec
    return spec


PLUGIN_GROUP = "longperceptualthoughts.configs"
"""Entry-point group through which an installed package adds configs: the entry point names a
:class:`ConfigSpec`, a function returning ConfigSpecs, or a module that calls :func:`register` when imported."""


def load_plugins(modules: Iterable[str] = ()) -> list[str]:
    """Register the configs of installed plugin packages (entry points of :data:`PLUGIN_GROUP`) and of the
    modules named (``--plugin MODULE``); returns the names of the configs added."""
    before = set(CONFIGS)
    plugins.load_plugins(PLUGIN_GROUP, modules, _use, "config")
    return [c for c in CONFIGS if c not in before]


def _use(obj: Any) -> None:
    if isinstance(obj, ConfigSpec):
        register(obj)
    elif callable(obj):
        for spec in obj() or ():
            register(spec)


def run_configs() -> list[str]:
    """The configs built from a run directory, in registration order."""
    return [name for name, spec in CONFIGS.items() if spec.from_run]


# ----------------------------------------------------------------------------------------------- images


def image_bytes(path: str | os.PathLike, max_pixels: int | None = MAX_PIXELS) -> bytes:
    """The image at ``path`` as JPEG bytes, its area capped at ``max_pixels`` the way the models see images."""
    with PILImage.open(path) as im:
        im = cap_pixels(im.convert("RGB"), max_pixels)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=92)
        return buf.getvalue()


def _source_rows(cfg: LPTConfig) -> list[dict[str, Any]]:
    run, source = cfg.run(), table_for("source")
    return sorted(run.read(source).to_pylist(), key=lambda r: r["image_id"]) if run.has(source) else []


def _images_why_empty(cfg: LPTConfig) -> str:
    rows = _source_rows(cfg)
    if not rows:
        return "the run has no source rows"
    return (f"none of the run's {len(rows)} source images is on this machine (e.g. {rows[0]['image_path']}); "
            f"`lpt import-upstream --images-dir DOCCI/images` or a source pointing at the files adds them")


def _build_images(cfg: LPTConfig) -> Iterator[dict[str, Any]]:
    rows = _source_rows(cfg)
    if not any(Path(r["image_path"]).is_file() for r in rows):
        return  # no image here at all (e.g. imported text-only): an empty config, explained by _images_why_empty
    for row in rows:
        path = Path(row["image_path"])
        if not path.is_file():
            raise FileNotFoundError(f"source image_id {row['image_id']!r}: field 'image_path': no file {path}")
        if cfg.embed_images:
            yield {"image_id": row["image_id"],
                   "image": {"bytes": image_bytes(path, cfg.max_pixels), "path": f"{row['image_id']}.jpg"}}
        else:
            yield {"image_id": row["image_id"], "image": {"bytes": None, "path": str(path.resolve())}}


# ------------------------------------------------------------------------------------ the authors' release

_DOCCI_ID = re.compile(r"(?:train|test|qual_dev|qual_test)_\d{5}")


def _release_dir(release: str) -> Path:
    if Path(release).is_dir():
        return Path(release)
    try:
        return Path(snapshot_download(release, repo_type="dataset"))  # its card breaks load_dataset; read files
    except Exception as e:  # noqa: BLE001 - offline, no such repo, no access: one line saying what to do
        first = (str(e).strip().splitlines() or [""])[0].split(". ")[0][:200]
        raise ValueError(f"lpt30k: the authors' release {release} is neither a local folder nor reachable on the "
                         f"Hub ({type(e).__name__}: {first}); download it where the Hub is reachable (hf download "
                         f"{LPT30K_REPO} --repo-type dataset --local-dir lpt30k-release) and pass "
                         f"release=\"lpt30k-release\"") from None


def _check_lpt30k(cfg: LPTConfig) -> None:
    _release_dir(str(cfg.release or LPT30K_REPO))
    if cfg.docci_dir and not Path(cfg.docci_dir).is_dir():
        raise ValueError(f"lpt30k: docci_dir {cfg.docci_dir} is not a folder (lpt download-docci {cfg.docci_dir})")


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content or [] if isinstance(p, dict))


def read_lpt30k(release: str | os.PathLike = LPT30K_REPO) -> Iterator[dict[str, Any]]:
    """Rows ``{example_id, image_id, messages, cot_type}`` of the authors' release (JSON/JSONL/parquet files).

    ``image_id`` is the DOCCI id found in ``example_id`` (else in an ``images`` path of the row).
    """
    root = _release_dir(str(release))
    files = sorted(p for ext in ("*.jsonl", "*.json", "*.parquet") for p in root.rglob(ext) if ".cache" not in p.parts)
    for path in files:
        if path.suffix == ".parquet":
            rows: Iterable[dict] = pq.read_table(path).to_pylist()
        elif path.suffix == ".jsonl":
            rows = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, list):
                continue  # e.g. a dataset_info.json
            rows = data
        for n, row in enumerate(rows, 1):
            if "messages" not in row or "example_id" not in row:
                raise ValueError(f"{path}: row {n}: fields 'example_id' and 'messages' are required")
            found = _DOCCI_ID.search(str(row["example_id"])) or _DOCCI_ID.search(json.dumps(row.get("images", "")))
            yield {
                "example_id": str(row["example_id"]),
                "image_id": found.group(0) if found else "",
                "messages": [{"role": m["role"], "content": _content_text(m.get("content"))} for m in row["messages"]],
                "cot_type": str(row.get("cot_type", "")),
            }


def docci_image_path(docci_dir: str | os.PathLike, image_id: str) -> Path | None:
    """Where a DOCCI image lives in a local DOCCI folder (``images/<id>.jpg`` or ``<id>.jpg``)."""
    for cand in (Path(docci_dir) / "images" / f"{image_id}.jpg", Path(docci_dir) / f"{image_id}.jpg"):
        if cand.is_file():
            return cand
    return None


def _build_lpt30k(cfg: LPTConfig) -> Iterator[dict[str, Any]]:
    for row in read_lpt30k(cfg.release or LPT30K_REPO):
        path = docci_image_path(cfg.docci_dir, row["image_id"]) if cfg.docci_dir and row["image_id"] else None
        yield {**row, "image": str(path.resolve()) if path else None}


# --------------------------------------------------------------------------------------------- the configs


def _columnar(name: str) -> tuple[Callable[..., Iterator[dict[str, Any]]], Callable[..., Iterator[pa.RecordBatch]]]:
    """A spec's ``build`` and ``batches`` for run config ``name`` of :func:`builder.assemble.batches`."""

    def batches(cfg: LPTConfig, traces: Any = None) -> Iterator[pa.RecordBatch]:
        return assemble.batches(cfg.run(), name, cfg.options, traces=traces)

    def build(cfg: LPTConfig) -> Iterator[dict[str, Any]]:
        for batch in batches(cfg):
            yield from batch.to_pylist()

    batches.__doc__ = (f"The record batches of ``{name}`` from the columnar assembly (``traces``: "
                       f":func:`builder.assemble.trace_index`, shared by several sets).")
    build.__doc__ = f"The rows of ``{name}`` from the columnar assembly, as dicts."
    return build, batches


RAW_ROLES = ("question", "short_thought", "long_thought")
"""The table roles (:data:`builder.stages.ROLES`) whose every record is a ``raw_<table>`` config."""

_RAW_DESCRIPTIONS = {
    "question": "every MCQ, valid or not, with its raw responses (an image whose reply held no question: one "
                "invalid row).",
    "short_thought": "every simple-CoT sample, its parse and its label.",
    "long_thought": "every expansion, its parse, its label and why it was dropped.",
}


def raw_config(table: str) -> str:
    """The config that holds every record of run-directory table ``table``."""
    return f"raw_{table}"


def raw_configs() -> dict[str, str]:
    """``{table: its raw config}`` for the tables of :data:`RAW_ROLES` (asked of the stage registry)."""
    return {table_for(role): raw_config(table_for(role)) for role in RAW_ROLES}


def _set_spec(name: str, features: Features, description: str) -> ConfigSpec:
    build, batches = _columnar(name)
    return ConfigSpec(name, features, build, description,
                      why_empty=lambda c: assemble.why_empty(c.run(), name, c.options), batches=batches)


def _raw_spec(role: str) -> ConfigSpec:
    table = table_for(role)
    number = get_stage(table).number
    build, batches = _columnar(raw_config(table))
    return ConfigSpec(raw_config(table), Features.from_arrow_schema(TABLES[table].schema), build,
                      f"Stage {number}: {_RAW_DESCRIPTIONS[role]}", why_empty=lambda c: f"stage {number} has no records",
                      batches=batches)


for _spec in [
    _set_spec("sft", SFT_FEATURES, "Long-CoT SFT: O ∪ O→O (length-weighted 10 %) plus as many X→O; 50/50."),
    _set_spec("dpo", DPO_FEATURES, "Preference pairs (prompt/chosen/rejected), tagged with their kind."),
    _set_spec("mcq", MCQ_FEATURES, "The valid MCQs with the think system prompt and the gold answer."),
    _set_spec("mcq_direct", MCQ_FEATURES, "The valid MCQs with the direct-answer system prompt and the gold answer."),
    _set_spec("simple_cot", SFT_FEATURES, "Correct simple CoTs, length-weighted 1/3.75 (the simple-CoT baseline)."),
    ConfigSpec("images", IMAGES_FEATURES, _build_images,
               "Each source image once (area capped at 512×512 pixels, as the models saw it).",
               why_empty=_images_why_empty),
    *(_raw_spec(role) for role in RAW_ROLES),
    ConfigSpec("lpt30k", LPT30K_FEATURES, _build_lpt30k,
               "The authors' released LongPerceptualThoughts-30k joined with local DOCCI images.", from_run=False,
               check=_check_lpt30k),
]:
    register(_spec)


def why_empty(cfg: LPTConfig) -> str:
    """Why config ``cfg.name`` has no rows for its run: the config's own reason, or a generic one."""
    spec = CONFIGS[cfg.name]
    return (spec.why_empty(cfg) if spec.why_empty else "") or "the run has no rows for it"


def config_batches(cfg: LPTConfig, *, traces: Any = None) -> Iterator[pa.RecordBatch]:
    """Config ``cfg.name``'s rows as record batches of its features: the spec's own :attr:`ConfigSpec.batches`
    (what ``lpt export`` writes), else its built rows encoded a writer batch at a time."""
    spec = CONFIGS[cfg.name]
    if spec.batches is not None:
        yield from spec.batches(cfg, traces)
        return
    schema = spec.features.arrow_schema
    rows = iter(spec.build(cfg))
    while chunk := list(itertools.islice(rows, datasets.config.DEFAULT_MAX_BATCH_SIZE)):
        yield pa.RecordBatch.from_pylist([spec.features.encode_example(r) for r in chunk], schema=schema)


BUILTIN = frozenset(CONFIGS)
"""The project's own configs; any other is a plugin's (:func:`load_plugins`, :func:`register`)."""

load_plugins()  # installed plugin packages: their configs are there wherever the package is used

__all__ = ["BUILTIN", "CONFIGS", "ConfigSpec", "RAW_ROLES", "config_batches", "raw_config", "raw_configs", "why_empty", "PLUGIN_GROUP", "load_plugins", "DPO_FEATURES", "FIELD_DOCS", "IMAGES_FEATURES", "LPT30K_FEATURES", "LPT30K_REPO", "LPTConfig",
           "MCQ_FEATURES", "SFT_FEATURES", "docci_image_path", "image_bytes", "read_lpt30k",
           "register", "run_configs"]
