"""Write a run's datasets as a Hub-layout folder (or LLaMA-Factory JSON), render its card, push it.

Hub layout (``datasets.load_dataset(OUT, "sft")`` works offline; the same folder uploads as a Hub repo)::

    OUT/README.md                                   card from dataset_card.md: YAML configs/dataset_info + numbers
    OUT/<config>/train-00000-of-0000N.parquet       written by `datasets` (feature metadata kept)
    OUT/export_report.json                          rows per config written; configs left out as empty, and why

A config with no rows for the run (e.g. ``sft`` when no wrong simple thought was corrected by its expansion:
SFT is 50/50 O ∪ O→O / X→O by construction) is left out of the folder and of the card's YAML ``configs``,
because ``datasets.load_dataset`` cannot load a split of zero rows ("Instruction 'train' corresponds to no
data"), even from a parquet file that carries the schema. The report and the card name it with the reason, so
every config the card lists loads.

LLaMA-Factory layout: ``OUT/<name>.json`` (sharegpt), ``OUT/images/<image_id>.jpg``, ``OUT/dataset_info.json``.
"""

from __future__ import annotations

import hashlib
import contextlib
import json
import math
import os
import re
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Sequence

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets import Features
from datasets.info import DatasetInfo, DatasetInfosDict
from datasets.splits import SplitDict, SplitInfo
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData, HfApi
from jinja2.sandbox import SandboxedEnvironment

from builder.answers import thought_of
from builder.atomic import atomic_write, foreign_entries, hold, replace_dir, temp_dir_beside, write_json, write_text
from builder import assemble
from builder.assemble import AssembleOptions
from builder.dataset_configs import (CONFIGS, FIELD_DOCS, LPTConfig, config_batches, raw_configs, run_configs,
                                     why_empty)
from builder.provenance import origin
from builder.parquet_out import write_parquet
from builder.pipeline import incomplete_stages
from builder.records import tally
from builder.stats import FIGURES as FIGURE_TITLES
from builder.stages import get_stage, table_for
from builder.stats import config_files, read_config, stage_tables, tally_columns, word_counts, write_figures
from builder.store import RunDir

FORMATS = ("hub", "llamafactory")
REPORT_FILE = "export_report.json"
FIGURES = "figures"  # PNG plots of the data beside the card (builder.stats)
RUN_MANIFEST = "run_manifest.json"  # the run's manifest.json (models, settings, seeds, versions), beside the data
PAPER = {"arxiv": "https://arxiv.org/abs/2504.15362", "code": "https://github.com/andrewliao11/LongPerceptualThoughts",
         "bibtex": """@inproceedings{liao2025longperceptualthoughts,
  title     = {LongPerceptualThoughts: Distilling System-2 Reasoning for System-1 Perception},
  author    = {Liao, Yuan-Hong and Elflein, Sven and He, Liu and Leal-Taix{\\'e}, Laura and Choi, Yejin and
               Fidler, Sanja and Acuna, David},
  booktitle = {Conference on Language Modeling (COLM)},
  year      = {2025},
  url       = {https://arxiv.org/abs/2504.15362}
}"""}
SHARD_BYTES = 500 * 1024 * 1024
CARD_TEMPLATE = Path(__file__).resolve().parent / "data" / "dataset_card.md"  # the repository's dataset_card.md
LLAMAFACTORY_SETS = {"sft": "LongPerceptualThoughts_SFT", "dpo": "LongPerceptualThoughts_DPO",
                     "simple_cot": "LongPerceptualThoughts_SIMPLE_COT", "mcq": "LongPerceptualThoughts_MCQ",
                     "mcq_direct": "LongPerceptualThoughts_MCQ_DIRECT"}


def _built_or_why(run_dir: str | os.PathLike, config: str, **config_kwargs: Any):
    """``(dataset, None)`` for a config with rows, ``(None, why it is empty)`` for one without."""
    ds, cfg = _build(run_dir, config, **config_kwargs)
    return (ds, None) if ds.num_rows else (None, why_empty(cfg))


def _build(run_dir: str | os.PathLike, config: str, **config_kwargs: Any):
    if config not in CONFIGS:
        raise ValueError(f"unknown config {config!r}; choose from {', '.join(CONFIGS)}")
    spec = CONFIGS[config]
    cfg = LPTConfig(name=config, run_dir=str(run_dir), **config_kwargs)
    if spec.from_run:
        cfg.run()  # a missing run directory fails here, with its own message
    rows = list(spec.build(cfg))
    if not rows:  # from_list cannot tell an empty list's columns
        return datasets.Dataset.from_dict({k: [] for k in spec.features}, features=spec.features), cfg
    return datasets.Dataset.from_list(rows, features=spec.features), cfg


def build_dataset(run_dir: str | os.PathLike, config: str, **config_kwargs: Any) -> datasets.Dataset:
    """One config of a run as a ``datasets.Dataset`` (may have 0 rows)."""
    return _build(run_dir, config, **config_kwargs)[0]


def read_report(out_dir: str | os.PathLike) -> dict[str, Any]:
    """``OUT/export_report.json``: ``{"configs": {name: rows}, "empty": {name: why}, "files": [written]}``."""
    path = Path(out_dir) / REPORT_FILE
    try:
        report = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except ValueError:
        report = {}
    return {"configs": dict(report.get("configs", {})), "empty": dict(report.get("empty", {})),
            "files": list(report.get("files", []))}


def _update_report(out: Path, written: dict[str, int], empty: dict[str, str],
                   old: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge this export's configs into the (old) report (a config exported again replaces its old entry)."""
    report = old if old is not None else read_report(out)
    report = {"configs": dict(report["configs"]), "empty": dict(report["empty"])}
    for name in (*written, *empty):
        report["configs"].pop(name, None)
        report["empty"].pop(name, None)
    report["configs"].update(written)
    report["empty"].update(empty)
    write_json(out / REPORT_FILE, report)
    return report


class ExportError(ValueError):
    """An export that would lose or mix data (OUT inside the run, OUT holding foreign files, an incomplete run)."""


def export(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    fmt: str = "hub",
    embed_images: bool = True,
    *,
    configs: Sequence[str] | None = None,
    options: Any = None,
    repo_id: str | None = None,
    overwrite: bool = False,
    allow_incomplete: bool = False,
) -> Path:
    """Export ``run_dir``'s configs (default: every run config) to ``out_dir``; returns ``out_dir``.

    ``embed_images=False`` stores the images config as absolute paths to the source files (not portable).
    ``options`` is an :class:`builder.assemble.AssembleOptions` (ratios, pair kinds, seed).
    A config with no rows is not written; ``OUT/export_report.json`` and the card say why (:func:`read_report`).

    Nothing already there is lost: the export is built in a temporary folder beside ``OUT`` and swapped in
    only when complete. ``OUT`` may be new, empty, or an earlier export (its other configs are kept); one that
    holds files this project did not write is refused unless ``overwrite``, and so is ``OUT`` inside the run.
    A run whose stages are not complete across their shards is refused unless ``allow_incomplete``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    out = Path(out_dir)
    names = list(configs or run_configs())
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown config {unknown[0]!r}; choose from {', '.join(run_configs())}")
    kwargs: dict[str, Any] = {"embed_images": embed_images}
    if options is not None:
        kwargs["options"] = options
    _check_target(Path(run_dir), out)
    run_held = RunDir(run_dir).claim(shared=True, what="read") if Path(run_dir).is_dir() else contextlib.nullcontext()
    with hold(out, what="exported"), run_held:
        _check_target(Path(run_dir), out)  # again, now that nobody else writes it
        if Path(run_dir).is_dir():
            RunDir(run_dir).check()  # the store's reader rule, as status checks it
            if not allow_incomplete:
                _check_complete(run_dir)
        return _export_held(run_dir, out, fmt, names, kwargs, repo_id, overwrite)


def _export_held(run_dir: Any, out: Path, fmt: str, names: list[str], kwargs: dict[str, Any], repo_id: str | None,
                 overwrite: bool) -> Path:
    """The export, under OUT's lock: built beside OUT and swapped in whole; ``overwrite`` drops an earlier
    export's other configs instead of keeping them."""
    tmp = temp_dir_beside(out, "export")
    try:
        if fmt == "llamafactory":
            _export_llamafactory(run_dir, tmp, kwargs)
        else:
            _export_hub(run_dir, out, tmp, names, kwargs, repo_id, keep=not overwrite)
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _check_complete(run_dir: str | os.PathLike) -> None:
    """Refuse a run whose stages are not complete across their shards."""
    missing = incomplete_stages(RunDir(run_dir))
    if missing:
        raise ExportError(f"{run_dir} is not complete: {'; '.join(missing)}. Finish the missing shards (lpt "
                          f"status shows them), or export it as it is with --allow-incomplete")


def _export_hub(run_dir: str | os.PathLike, out: Path, tmp: Path, names: Sequence[str], kwargs: dict[str, Any],
                repo_id: str | None, keep: bool = True) -> None:
    """The Hub layout in ``tmp``: an earlier export's other configs (hard links; with ``keep``), the configs
    ``names``, the report, the run's manifest, the figures and the card."""
    old = read_report(out) if keep and out.is_dir() else {"configs": {}, "empty": {}, "files": []}
    for name in old["configs"]:  # an earlier export's other configs stay
        if name not in names and (out / name).is_dir():
            shutil.copytree(out / name, tmp / name, copy_function=os.link)
    written, empty = {}, {}
    for name, (rows, why) in _write_configs(run_dir, names, tmp, kwargs).items():
        if rows:
            written[name] = rows
        else:
            empty[name] = why
    if not _update_report(tmp, written, empty, old)["configs"]:  # a card with no config is no dataset: say why
        raise ExportError(f"{out}: nothing to export: " + "; ".join(f"{n} is empty ({why})"
                                                                  for n, why in empty.items()))
    if (Path(run_dir) / "manifest.json").is_file():  # what made the data travels with it
        shutil.copyfile(Path(run_dir) / "manifest.json", tmp / RUN_MANIFEST)
    shutil.rmtree(tmp / FIGURES, ignore_errors=True)
    write_figures(tmp, tmp / FIGURES)  # the card shows them; the Hub renders them
    render_card(tmp, repo_id=repo_id or str(out))  # the card names where it will be, not the temp folder


def _check_target(run_dir: Path, out: Path) -> None:
    """Refuse an ``OUT`` that is, is inside, or holds the run directory, that is a link, or that holds anything
    this project did not write (a file, a link, an empty folder): such an OUT is never replaced, not even with
    ``--overwrite``; the refusal names what would have been removed."""
    run, target = run_dir.resolve(), out.resolve()
    if target == run or run in target.parents:
        raise ExportError(f"{out} is inside the run directory {run_dir}: choose an OUT outside it")
    if target in run.parents:
        raise ExportError(f"{out} holds the run directory {run_dir}: replacing it would remove the run; choose an "
                          f"OUT outside it")
    if out.is_symlink():
        raise ExportError(f"{out} is a link: it will not be replaced; choose a new or empty OUT")
    if (target / "manifest.json").is_file() or (target / table_for("source")).is_dir():
        raise ExportError(f"{out} is a run directory, not an export folder: choose another OUT")
    if not target.exists():
        return
    if not target.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    ours = set(read_report(target)["files"]) | {REPORT_FILE}
    foreign = foreign_entries(target, lambda rel: rel in ours)
    if foreign:
        raise ExportError(f"{out} holds {out / foreign[0]}, which this project did not write ({len(foreign)} such); "
                          f"it would be removed: choose a new or empty OUT, or move it away (--overwrite never "
                          f"removes it)")


def _swap_in(tmp: Path, out: Path) -> None:
    """Put the finished export in place of ``out`` with renames; the old folder goes only after the new is in."""
    files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file() and p.name != REPORT_FILE)
    report_path = tmp / REPORT_FILE
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.exists() else {}
    write_json(report_path, {**report, "files": files})
    replace_dir(tmp, out)


_TRACE_SETS = ("sft", "dpo", "simple_cot")  # the configs planned on the run's trace index


def _write_configs(run_dir: Any, names: Sequence[str], tmp: Path, kwargs: dict[str, Any]) -> dict[str, tuple[int, str]]:
    """Write each config to ``tmp/<name>``; ``{name: (rows, why it is empty)}`` in ``names`` order.

    Two lanes run side by side (the parquet reads, sorts and writes release the GIL, so both cores work): the
    raw stage configs, which are data movement, and the sets, which share one read of the run's kept traces."""
    traces: list[Any] = []  # the run's kept traces, read once for the trace sets
    trace_sets = [n for n in names if n in _TRACE_SETS]  # planned at once when the index is read

    def one(name: str) -> tuple[int, str]:
        if CONFIGS[name].batches is not None:
            return _write_columnar(run_dir, name, tmp / name, kwargs.get("options"), traces, plan=trace_sets)
        ds, why = _built_or_why(run_dir, name, **kwargs)
        if ds is None:
            return 0, why
        _write_parquet(ds, tmp / name)
        return ds.num_rows, why

    def lane(part: list[str]) -> dict[str, tuple[int, str]]:
        done = {}
        for name in part:
            done[name] = one(name)
            if not any(n in _TRACE_SETS for n in part[len(done):]):
                traces.clear()  # the trace index is no longer needed: its memory goes before the other sets
            assemble.release_memory()
        return done

    raw = [n for n in names if n in raw_configs().values() and CONFIGS[n].batches is not None]
    sets = sorted((n for n in names if n not in raw), key=lambda n: n not in _TRACE_SETS)  # the trace sets first
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="export") as pool:
        lanes = [pool.submit(lane, part) for part in (raw[::-1], sets) if part]  # the biggest raw config first
        done: dict[str, tuple[int, str]] = {}
        for f in lanes:
            done.update(f.result())
    return {name: done[name] for name in names}


def _write_columnar(run_dir: Any, name: str, folder: Path, options: Any, traces: list[Any],
                    plan: Sequence[str] = ()) -> tuple[int, str]:
    """A run config straight from the columnar assembly to parquet (no Python rows, no datasets cache);
    ``(rows, "")``, or ``(0, why it is empty)`` with nothing left in ``folder``. A trace set reads the run's
    trace index from ``traces`` (made there by the first one, with the sets ``plan`` planned at once)."""
    opts = options if options is not None else AssembleOptions()
    cfg = LPTConfig(name=name, run_dir=str(run_dir), options=opts)
    shared = None
    if name in _TRACE_SETS:
        if not traces:
            traces.append(assemble.trace_index(RunDir(run_dir), plan=plan or [name], opts=opts))
        shared = traces[0]
    rows = write_parquet(config_batches(cfg, traces=shared), folder, CONFIGS[name].features)
    if rows:
        return rows, ""
    shutil.rmtree(folder, ignore_errors=True)  # datasets cannot load a split of zero rows
    return 0, why_empty(cfg)


def _write_parquet(ds: Any, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("train-*.parquet"):
        old.unlink()
    n = max(1, math.ceil((ds.data.nbytes or 1) / SHARD_BYTES))
    for i in range(n):
        shard = ds.shard(num_shards=n, index=i, contiguous=True)
        atomic_write(folder / f"train-{i:05d}-of-{n:05d}.parquet", lambda tmp: shard.to_parquet(tmp))


# --------------------------------------------------------------------------------------------------- card


def _first_row(out: Path, config: str) -> dict[str, Any]:
    files = config_files(out, config)
    batch = next(pq.ParquetFile(files[0]).iter_batches(batch_size=1))
    return Features.from_arrow_schema(pq.read_schema(files[0])).decode_example(batch.to_pylist()[0])


def _size_category(n: int) -> str:
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < bound:
            return label
    return "1M<n<10M"


def _last_contents(messages: Any) -> Any:
    """The last message's content of each row of a ``messages`` column (list of role/content structs)."""
    messages = messages.combine_chunks() if hasattr(messages, "combine_chunks") else messages
    last = pc.subtract(messages.offsets[1:], 1)
    return pc.take(pc.struct_field(messages.values, "content"), last)


def card_stats(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The card's numbers, computed from the exported files (reading only the columns they need, with no
    ``datasets`` cache): rows per config, SFT trace types and mean thought length, DPO pair kinds, per-stage
    records / kept / accuracy."""
    out = Path(out_dir)
    present = [p.name for p in sorted(out.iterdir()) if p.is_dir() and config_files(out, p.name)]
    order = [c for c in CONFIGS if c in present] + [c for c in present if c not in CONFIGS]
    stats: dict[str, Any] = {"configs": _config_rows(out, order)}
    stats["empty_configs"] = [{"name": c, "reason": why} for c, why in read_report(out)["empty"].items()
                              if c not in present]
    stats["sft_types"], stats["sft_mean_words"] = _sft_types(out) if "sft" in present else ([], 0.0)
    stats["pair_kinds"] = _pair_kinds(out) if "dpo" in present else []
    stats["stages"] = _stage_rows(out, present)
    stats["size_category"] = _size_of(stats["configs"])
    stats["fields"] = {c: _fields(out, c) for c in order}
    stats["example"] = _example_of(out, "sft" if "sft" in present else (order[0] if order else None))
    stats["provenance"] = provenance(out)
    stats["paper"] = PAPER
    stats["figures"] = _figures(out)
    return stats


def _size_of(configs: list[dict[str, Any]]) -> str:
    """The Hub size category, by the rows of every config (the raw records included)."""
    return _size_category(sum(c["rows"] for c in configs))


def _example_of(out: Path, config: str | None) -> dict[str, Any]:
    """``{config, json}``: the first row of ``config`` (texts cut), for the card."""
    return {"config": config, "json": _example(_first_row(out, config)) if config else ""}


def _figures(out: Path) -> list[dict[str, str]]:
    """``[{path, title}]`` of the figures written beside the card."""
    return [{"path": f"{FIGURES}/{stem}.png", "title": title} for stem, title in FIGURE_TITLES.items()
            if (out / FIGURES / f"{stem}.png").is_file()]


def _config_rows(out: Path, order: Sequence[str]) -> list[dict[str, Any]]:
    """``[{name, rows, description}]`` of the exported configs, from the parquet footers."""
    return [{"name": c, "rows": sum(pq.ParquetFile(f).metadata.num_rows for f in config_files(out, c)),
             "description": CONFIGS[c].description if c in CONFIGS else ""} for c in order]


def _pair_kinds(out: Path) -> list[dict[str, Any]]:
    """``[{kind, pairs}]`` of the exported ``dpo`` config, by kind."""
    kinds = Counter(read_config(out, "dpo", ["kind"]).column("kind").to_pylist())
    return [{"kind": k, "pairs": v} for k, v in sorted(kinds.items())]


def _fields(out: Path, config: str) -> list[dict[str, str]]:
    """``[{name, type, doc}]`` of an exported config's features (the card's field table)."""
    features = Features.from_arrow_schema(pq.read_schema(config_files(out, config)[0]))
    return [{"name": k, "type": _type_name(v), "doc": FIELD_DOCS.get(k, "")} for k, v in features.items()]


def _sft_types(out: Path) -> tuple[list[dict[str, Any]], float]:
    """``([{cot_type, rows, mean_words}], mean words of every SFT thought)`` of the exported ``sft`` config."""
    count_parts, cot_parts = [], []
    for f in config_files(out, "sft"):  # a batch at a time: the thoughts are never all in memory
        for batch in pq.ParquetFile(f).iter_batches(batch_size=8192, columns=["cot_type", "messages"]):
            thoughts = pa.array([thought_of(t) or "" for t in
                                 _last_contents(batch.column("messages")).to_pylist()], pa.string())
            count_parts.append(word_counts(thoughts))
            cot_parts.append(np.asarray(batch.column("cot_type").to_pylist(), dtype=object))
    counts = np.concatenate(count_parts) if count_parts else np.zeros(0, np.int64)
    cot = np.concatenate(cot_parts) if cot_parts else np.zeros(0, object)
    types = []
    for t in sorted(set(cot.tolist())):
        n = counts[cot == t]
        types.append({"cot_type": t, "rows": len(n), "mean_words": float(n.mean())})
    return types, float(np.mean(counts)) if len(counts) else 0.0


_STAGE_LABELS = {"question": "MCQ (valid)", "short_thought": "simple CoT", "long_thought": "expansion"}
"""The card's name for the records of each stage role (after the stage's number)."""


def _stage_rows(out: Path, present: Sequence[str]) -> list[dict[str, Any]]:
    """Records, kept and accuracy of kept of each stage whose raw config is in the export (the long thoughts
    also split by their simple thought's label)."""
    question, short, long = stage_tables()
    raw = raw_configs()
    stages = []
    if raw[question] in present:
        t = tally(read_config(out, raw[question], tally_columns(question)))  # a placeholder is not a question
        stages.append({"stage": f"{get_stage(question).number} {_STAGE_LABELS['question']}", "records": t["questions"],
                       "kept": t["valid"], "accuracy": t["valid"] / t["questions"] if t["questions"] else None})
    for stage, role in ((short, "short_thought"), (long, "long_thought")):
        if raw[stage] not in present:
            continue
        label = f"{get_stage(stage).number} {_STAGE_LABELS[role]}"
        table = read_config(out, raw[stage], tally_columns(stage, *(["simple_correct"] if stage == long else [])))
        groups = [(label, table)]
        if stage == long:
            groups += [(f"{label} of O", table.filter(table.column("simple_correct"))),
                       (f"{label} of X", table.filter(pc.invert(table.column("simple_correct"))))]
        for lab, part in groups:
            t = tally(part)
            stages.append({"stage": lab, "records": t["rows"], "kept": t["kept"],
                           "accuracy": t["kept_correct"] / t["kept"] if t["kept"] else None})
    return stages


def provenance(out_dir: str | os.PathLike) -> list[dict[str, str]]:
    """Which models and settings made the data, from the run's manifest exported beside it."""
    path = Path(out_dir) / RUN_MANIFEST
    if not path.is_file():
        return []
    m = json.loads(path.read_text(encoding="utf-8"))
    models, config = m.get("models", {}), m.get("config", {})
    rows = []
    for stage in stage_tables():
        section = get_stage(stage).section
        model = models.get(stage) or m.get(f"{section}_model", "")  # an imported run names its models so
        sec = config.get(section, {})
        settings = ", ".join(f"{k}={sec[k]}" for k in ("n", "temperature", "top_p", "top_k", "repetition_penalty",
                                                       "max_new_tokens") if k in sec)
        if model or settings:
            rows.append({"stage": f"{section} ({stage})", "model": model or "?", "settings": settings or
                         ("imported: " + Path(m["imported_from"]).name if m.get("imported_from") else "")})
    if m.get("seed") is not None:
        rows.append({"stage": "seed", "model": "", "settings": str(m["seed"])})
    return rows


def _type_name(feature: Any) -> str:
    return type(feature).__name__ if not hasattr(feature, "dtype") else str(feature.dtype)


def _example(row: dict[str, Any], limit: int = 300) -> str:
    def cut(v: Any) -> Any:
        if isinstance(v, str):
            return v if len(v) <= limit else v[:limit] + " …"
        if isinstance(v, list):
            return [cut(x) for x in v]
        if isinstance(v, dict):
            return {k: cut(x) for k, x in v.items()}
        return v if isinstance(v, (int, float, bool)) or v is None else f"<{type(v).__name__}>"
    return json.dumps(cut(row), ensure_ascii=False, indent=2)


def _generated_yaml(out: Path, names: Iterable[str], default: str | None) -> str:
    """``configs:`` (data_files) and ``dataset_info:`` (features, splits) exactly as ``push_to_hub`` writes them."""
    card = DatasetCardData()
    infos, metadata = {}, {}
    for name in names:
        files = sorted((out / name).glob("train-*.parquet"))
        schema = pq.read_schema(files[0])
        features = Features.from_arrow_schema(schema)
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        size = sum(f.stat().st_size for f in files)
        splits = SplitDict()
        # num_bytes / dataset_size are the Arrow data's size to `datasets`, which only a full read would give:
        # left out; download_size is what it means, the parquet files' size
        splits.add(SplitInfo(name="train", num_examples=rows))
        infos[name] = DatasetInfo(features=features, splits=splits, download_size=size)
        metadata[name] = {"data_files": [{"split": "train", "path": f"{name}/train-*"}]}
        if name == default:
            metadata[name]["default"] = True
    DatasetInfosDict(infos).to_dataset_card_data(card)
    info = getattr(card, "dataset_info", None)
    infos_yaml = info if isinstance(info, list) else [info or {}]
    for info in infos_yaml:  # no "num_bytes: 0" for a size that was not measured
        for split in info.get("splits", []):
            split.pop("num_bytes", None)
        info.pop("dataset_size", None)
    MetadataConfigs(metadata).to_dataset_card_data(card)
    return card.to_yaml()


def render_card(out_dir: str | os.PathLike, *, repo_id: str | None = None,
                template: str | os.PathLike = CARD_TEMPLATE) -> str:
    """(Re)write ``OUT/README.md`` from ``dataset_card.md`` with the numbers of the files in ``OUT``."""
    out = Path(out_dir)
    stats = card_stats(out)
    names = [c["name"] for c in stats["configs"]]
    default = "sft" if "sft" in names else None
    env = SandboxedEnvironment(keep_trailing_newline=True)
    manifest = out / RUN_MANIFEST
    text = env.from_string(Path(template).read_text(encoding="utf-8")).render(
        **stats, generated_yaml=_generated_yaml(out, names, default), repo_hint=repo_id or str(out),
        origin=origin(json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}))
    DatasetCard(text)  # parses the YAML front matter: fail here, not on the Hub
    write_text(out / "README.md", text)
    return text


class PushError(RuntimeError):
    """An upload that failed (network, authentication, permissions); the message is one line."""


def require_export(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` if it is a folder ``lpt export`` wrote (it holds its report), else a one-line ExportError."""
    out = Path(out_dir)
    if not (out / REPORT_FILE).is_file():
        raise ExportError(f"{out} is not an export folder (no {REPORT_FILE}); `lpt export RUN {out}` writes one "
                          f"with its card")
    return out


def push(out_dir: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Upload an exported folder (data, card, the run's manifest) as the dataset repo ``repo_id`` (created if
    needed); the card's load snippet is rewritten to name ``repo_id`` first. ``token``: else the usual login
    (``HF_TOKEN``, ``hf auth login``). Returns the commit URL. Holds OUT's lock (as an export writing it does)."""
    with hold(out_dir, what="pushed"):
        return _push(out_dir, repo_id, private=private, token=token)


def _push(out_dir: str | os.PathLike, repo_id: str, *, private: bool, token: str | None) -> str:
    card = require_export(out_dir) / "README.md"
    before = card.read_bytes() if card.is_file() else None
    render_card(out_dir, repo_id=repo_id)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(out_dir), repo_id=repo_id, repo_type="dataset",
                                 commit_message="Upload LongPerceptualThoughts build")
    except Exception as e:  # noqa: BLE001 - network, auth and HTTP errors of every kind: one line, not 90
        if before is not None:  # a failed push leaves the folder as it was (the card named the local folder)
            atomic_write(card, lambda tmp: Path(tmp).write_bytes(before))
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PushError(f"upload of {out_dir} to the Hub dataset {repo_id} failed ({type(e).__name__}: {first}); "
                        f"check the network and your token (--token, HF_TOKEN or `hf auth login`)") from None
    return str(getattr(info, "commit_url", info))


# ---------------------------------------------------------------------------------------------- LLaMA-Factory


def _export_llamafactory(run_dir: Any, out: Path, kwargs: dict[str, Any]) -> None:
    """sharegpt JSON per set (``<image>`` in the user turn, relative image paths) and ``dataset_info.json``;
    an empty set is left out of both (and named in the report)."""
    img_dir = out / "images"
    img_dir.mkdir(exist_ok=True)
    images, why = _built_or_why(run_dir, "images", embed_images=True)
    if images is None:
        raise ExportError(f"LLaMA-Factory records point at image files, and {why}")
    files = {}
    for row in images.cast_column("image", datasets.Image(decode=False)):
        files[row["image_id"]] = f"images/{image_file_name(row['image_id'])}"
        (out / files[row["image_id"]]).write_bytes(row["image"]["bytes"])
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
            "system_tag": "system"}
    info: dict[str, Any] = {}
    written, empty = {}, {}
    for config, name in LLAMAFACTORY_SETS.items():
        ds, why = _built_or_why(run_dir, config, **kwargs)
        if ds is None:
            (out / f"{name}.json").unlink(missing_ok=True)
            empty[config] = why
            continue
        written[config] = ds.num_rows
        records = []
        for row in ds:
            image = [files[row["image_id"]]]
            if config == "dpo":
                records.append({"messages": _with_image_token(row["prompt"]), "chosen": row["chosen"][0],
                                "rejected": row["rejected"][0], "images": image})
            else:
                records.append({"messages": _with_image_token(row["messages"]), "images": image})
        write_text(out / f"{name}.json", json.dumps(records, ensure_ascii=False, indent=1))
        entry: dict[str, Any] = {"file_name": f"{name}.json", "formatting": "sharegpt",
                                 "columns": {"messages": "messages", "images": "images"}, "tags": tags}
        if config == "dpo":
            entry["ranking"] = True
            entry["columns"].update(chosen="chosen", rejected="rejected")
        info[name] = entry
    write_text(out / "dataset_info.json", json.dumps(info, indent=2))
    _update_report(out, written, empty)


def image_file_name(image_id: str) -> str:
    """A file name for an image id that stays inside its folder whatever the id holds (``/``, ``..``): the id's
    safe characters and a hash of the whole id."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", image_id).strip("_")[:64] or "image"
    return f"{safe}-{hashlib.sha256(image_id.encode()).hexdigest()[:10]}.jpg"


def _with_image_token(messages: list[dict]) -> list[dict]:
    first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
    return [{**m, "content": "<image>" + m["content"]} if i == first_user else dict(m) for i, m in enumerate(messages)]


__all__ = ["ExportError", "require_export", "FORMATS", "REPORT_FILE", "build_dataset", "image_file_name", "card_stats", "export", "push", "read_report", "render_card"]
