"""Import the authors' published raw generations into a run directory, relabelled with our rules.

Input: a folder shaped like the authors' ``data_gen`` outputs (their published example outputs are one):

* ``docci_mcq.csv``: stage 1 (one row per MCQ, with the image's DOCCI ``description``);
* ``stage2_*.jsonl``: per MCQ the decoded Qwen2.5-VL prompt and its sampled answers (``predict``);
* ``stage3_*.jsonl``: per simple CoT the reasoning model's continuations after a cue (``predict`` starts with
  the ``.``/separator/cue the authors appended), keyed by ``sha256(simple CoT)``.

Nothing upstream decided is kept: every record is rebuilt by the stage's own function, so each rule lives in
one place: MCQ validity by :func:`builder.stages.mcq.mcq_rows`, stage-2 parsing, labels and duplicates by
:func:`builder.stages.simple_cot.sample_rows`, stage-3 long thoughts (from the original-case simple thought,
docs/method.md defect 3), bad words as words (defect 2), labels and duplicates by
:func:`builder.stages.expansion.expansion_rows`.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator, Sequence

import pyarrow as pa

from builder.atomic import hold, replace_dir, temp_dir_beside
from builder.method import BAD_WORDS, CUES
from builder.records import SOURCE, SOURCE_TABLE
from builder.stages import expansion as expansion_stage, mcq as mcq_stage, simple_cot as simple_cot_stage
from builder.stages.expansion import Continuation, expansion_rows
from builder.stages.mcq import ParsedItem, mcq_rows
from builder.stages.simple_cot import sample_rows
from builder.store import RunDir
from builder.upstream import between as _between, parse_qwen_prompt

STAGE2_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
STAGE3_MODEL = "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"
IMPORTED_SEED = -1  # the authors' sampling seeds are not published



class UpstreamFormatError(ValueError):
    """Bad upstream input; the message names the file, the row/line and the field."""


def _fail(path: Path, where: str, field: str, why: str) -> UpstreamFormatError:
    return UpstreamFormatError(f"{path}: {where}: field {field!r}: {why}")


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for n, line in enumerate(f, 1):
            if any("\udc80" <= c <= "\udcff" for c in line):
                raise _fail(path, f"line {n}", "<text>", "not UTF-8 text (is this one of the authors' JSONL files?)")
            if line.strip():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise _fail(path, f"line {n}", "<json>", str(e)) from None
                if not isinstance(rec, dict):
                    raise _fail(path, f"line {n}", "<json>", f"not a JSON object (got {type(rec).__name__})")
                yield n, rec


def _one(src: Path, pattern: str) -> list[Path]:
    found = sorted(Path(p) for p in glob.glob(str(src / pattern)))
    if not found:
        raise FileNotFoundError(f"{src}: no file matches {pattern!r}")
    return found


# -------------------------------------------------------------------------------------------- stage 0 / 1


def read_mcqs(csv_path: Path, images_dir: Path | None = None) -> tuple[pa.Table, pa.Table, dict[str, str]]:
    """``(source, mcq, upstream_mcq_id -> mcq_id)`` from the authors' ``docci_mcq.csv`` (one row per MCQ; the
    rows of one image share its generating and re-formatting replies)."""
    sources: dict[str, dict] = {}
    by_image: dict[str, list[dict]] = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.DictReader(f), 2):
            where = f"row {n}"
            for col in ("image_id", "description", "mcq_question", "mcq_choices", "mcq_answer", "mcq_unique_id"):
                if not row.get(col):
                    raise _fail(csv_path, where, col, "missing or empty")
            image_id = row["image_id"]
            if image_id not in sources:
                image_path = row.get("image_path", "")
                if images_dir is not None:
                    image_path = str((Path(images_dir) / Path(image_path or f"{image_id}.jpg").name).resolve())
                sources[image_id] = {
                    "image_id": image_id, "source": "docci", "split": image_id.rsplit("_", 1)[0],
                    "image_path": image_path, "description": row["description"],
                }
            by_image.setdefault(image_id, []).append(row)
    mcqs: list[dict] = []
    id_map: dict[str, str] = {}
    for image_id, rows in by_image.items():
        items = [ParsedItem(r["mcq_question"].strip(), r["mcq_choices"], r["mcq_answer"].strip(),
                            (r.get("mcq_question_type") or "").strip()) for r in rows]
        made = mcq_rows(image_id, items, model=rows[0].get("_mcq_gen_model_id", ""),
                        raw_response=rows[0].get("_mcq_gen_raw_response", ""),
                        formatted_response=rows[0].get("_parse_to_mcq_response", ""))
        id_map.update((r["mcq_unique_id"], m["mcq_id"]) for r, m in zip(rows, made))
        mcqs += made
    return (pa.Table.from_pylist(list(sources.values()), schema=SOURCE), pa.Table.from_pylist(mcqs, schema=mcq_stage.SCHEMA),
            id_map)


# ------------------------------------------------------------------------------------------------- stage 2


def _simple_cot_rows(path: Path, mcq_by_up: dict[str, dict], model: str,
                     seen: dict[str, str] | None = None) -> tuple[list[dict], dict[str, dict]]:
    """Stage-2 rows of one upstream file; ``seen`` (sample id -> where it was made) is shared by the files of
    one import, so that a record made twice (a file given twice, say) is refused, naming both places."""
    rows, by_hash = [], {}
    seen = {} if seen is None else seen
    for n, rec in _jsonl(path):
        where = f"line {n}"
        up_id = (rec.get("metadata") or {}).get("metadata", {}).get("mcq_unique_id")
        mcq = mcq_by_up.get(up_id)
        if mcq is None:
            raise _fail(path, where, "metadata.metadata.mcq_unique_id", f"unknown MCQ {up_id!r}")
        try:
            p = parse_qwen_prompt(rec["prompt"])
        except (KeyError, ValueError) as e:
            raise _fail(path, where, "prompt", str(e)) from None
        gold_text = mcq["options"][mcq["answer_index"]] if mcq["valid"] else None
        gold = p["options"].index(gold_text) if gold_text in p["options"] else -1
        if mcq["valid"] and gold < 0:
            raise _fail(path, where, "prompt", f"the MCQ's answer {gold_text!r} is not among the shown options")
        shown = {"options": p["options"], "answer_index": gold, "option_style": p["option_style"],
                 "answer_format": p["answer_format"]}
        made = sample_rows(mcq, shown, rec.get("predict") or [], system_prompt=p["system_prompt"],
                           user_text=p["user_text"], model=model, seed=IMPORTED_SEED)
        for row in made:
            if row["sample_id"] in seen:
                raise _fail(path, where, "sample_id", f"{row['sample_id']} was already made from {seen[row['sample_id']]}"
                            f": a stage-2 record given twice (remove the copy)")
            seen[row["sample_id"]] = f"{path.name} {where}"
        rows += made
        for row in made:
            by_hash[hashlib.sha256(row["response"].encode()).hexdigest()] = row  # the authors' simple_cot_unique_id
    return rows, by_hash


# ------------------------------------------------------------------------------------------------- stage 3


def _split_cue(predict: str) -> tuple[str, str, str]:
    """``(separator, cue, continuation)`` of an upstream stage-3 output (it starts ``[.](\\n| )cue``)."""
    m = re.match(r"\.?([ \n])(" + "|".join(re.escape(c) for c in CUES) + ")", predict)
    if not m:
        raise ValueError(f"does not start with a known cue {CUES}: {predict[:40]!r}")
    return m.group(1), m.group(2), predict[m.end():]


def _expansion_rows(path: Path, samples_by_hash: dict[str, dict], bad_words: Sequence[str], model: str) -> list[dict]:
    rows = []
    for n, rec in _jsonl(path):
        where = f"line {n}"
        s = samples_by_hash.get(rec.get("metadata", {}).get("simple_cot_unique_id"))
        if s is None:
            raise _fail(path, where, "metadata.simple_cot_unique_id", "matches no stage-2 sample")
        user = _between(rec.get("prompt", ""), "<｜User｜>", "<｜Assistant｜>")
        if user is None:
            raise _fail(path, where, "prompt", "no <｜User｜> … <｜Assistant｜> turn")
        continuations = []
        for k, predict in enumerate(rec.get("predict") or []):
            try:
                sep, cue, continuation = _split_cue(predict)
            except ValueError as e:
                raise _fail(path, f"{where}, sample {k}", "predict", str(e)) from None
            prefill = (rec.get("simple_cot") or "") + predict[: len(predict) - len(continuation)]
            continuations.append(Continuation(k, cue, sep, user.strip(), prefill, continuation, IMPORTED_SEED))
        rows += expansion_rows(s, continuations, bad_words=bad_words, model=model)
    return rows


# ---------------------------------------------------------------------------------------------------- entry


def import_upstream(
    src: str | os.PathLike,
    run_dir: str | os.PathLike,
    *,
    images_dir: str | os.PathLike | None = None,
    bad_words: Sequence[str] = BAD_WORDS,
    stage2_model: str = STAGE2_MODEL,
    stage3_model: str = STAGE3_MODEL,
    overwrite: bool = False,
) -> RunDir:
    """Write ``src``'s upstream generations as the four stages of the run directory ``run_dir``.

    ``images_dir`` is a local DOCCI ``images/`` folder: the source rows then point at real files (needed by
    the ``images`` config). ``run_dir`` must be new or empty; an earlier run directory is replaced only with
    ``overwrite`` (the import is built beside it and swapped in whole). Returns the :class:`RunDir`.
    """
    src, target = Path(src), Path(run_dir)
    with hold(target, what="replaced by an import"):
        _check_replaceable(src, target, overwrite, images_dir)
        return _import(src, target, images_dir=images_dir, bad_words=bad_words, stage2_model=stage2_model,
                       stage3_model=stage3_model)


def _check_replaceable(src: Path, target: Path, overwrite: bool, images_dir: Any) -> None:
    """Refuse a ``target`` that is not new or empty (without ``overwrite``), or that holds the input or anything a
    run does not write (even with ``overwrite``), naming what would have been removed."""
    for given in (src, *([Path(images_dir)] if images_dir else [])):
        if target.resolve() == given.resolve() or target.resolve() in given.resolve().parents:
            raise FileExistsError(f"{target} holds the input {given}: it will not be replaced; import elsewhere")
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise FileExistsError(f"{target} is not a folder (a file or a link): it will not be replaced")
    if target.exists() and any(target.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{target} is not empty: import into a new run directory, or pass --overwrite to "
                                  f"replace the run directory there")
        if not (target / "manifest.json").is_file():
            raise FileExistsError(f"{target} is not a run directory (no manifest.json): it will not be replaced")
        foreign = RunDir(target).foreign()
        if foreign:
            raise FileExistsError(f"{target} holds {target / foreign[0]}, which a run does not write "
                                  f"({len(foreign)} such): it will not be replaced; move it away first")


def _import(src: Path, target: Path, *, images_dir: Any, bad_words: Sequence[str], stage2_model: str,
            stage3_model: str) -> RunDir:
    source, questions, id_map = read_mcqs(_one(src, "docci_mcq.csv")[0], Path(images_dir) if images_dir else None)
    mcq_rows = {row["mcq_id"]: row for row in questions.to_pylist()}
    mcq_by_up = {up: mcq_rows[ours] for up, ours in id_map.items()}
    samples, by_hash, seen = [], {}, {}
    for p in _one(src, "stage2_*.jsonl"):
        rows, hashes = _simple_cot_rows(p, mcq_by_up, stage2_model, seen)
        samples += rows
        by_hash.update(hashes)
    expansions = []
    for p in _one(src, "stage3_*.jsonl"):
        expansions += _expansion_rows(p, by_hash, bad_words, stage3_model)

    tmp = temp_dir_beside(target, "import")
    try:
        run = RunDir(tmp)
        run.write_table(SOURCE_TABLE.name, source)
        run.write_table(mcq_stage.TABLE.name, questions, input_ids=source.column("image_id").to_pylist())
        run.write_table(simple_cot_stage.TABLE.name, pa.Table.from_pylist(samples, schema=simple_cot_stage.SCHEMA),
                        input_ids=[m["mcq_id"] for m in mcq_rows.values() if m["valid"]])
        run.write_table(expansion_stage.TABLE.name, pa.Table.from_pylist(expansions, schema=expansion_stage.SCHEMA),
                        input_ids=[s["sample_id"] for s in samples if s["keep"]])
        stage1_model = ", ".join(sorted(set(questions.column("model").to_pylist())))  # the authors' (GPT-4o)
        run.update_manifest(imported_from=str(src.resolve()), stage1_model=stage1_model,
                            stage2_model=stage2_model, stage3_model=stage3_model,
                            bad_words=list(bad_words))
        replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return RunDir(target)
