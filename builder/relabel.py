"""Labels are derived data: re-grade a run's samples with the installed answer matcher, generating nothing.

Stage 2 and stage 3 rows are rebuilt from what the models wrote by the stages' own row functions
(:func:`builder.stages.simple_cot.sample_rows`, :func:`builder.stages.expansion.expansion_rows`), so parse,
label, ``keep`` and ``drop_reason`` follow the current rules exactly as a fresh run would give them; ids do not
change (they hash what the model wrote). Each file is rewritten in place, atomically, with the same inputs and
settings, stamped with :data:`builder.answers.MATCHER_VERSION`. Stage 1 is left as it is: a question's validity
decides which questions exist, which relabelling must not change under a finished run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa

from builder.answers import MATCHER_VERSION
from builder.method import BAD_WORDS
from builder.stages import TABLES, expansion, simple_cot
from builder.stages.expansion import Continuation, expansion_rows
from builder.stages.simple_cot import sample_rows
from builder.store import RunDir, StoreError

SIMPLE, EXPANDED = simple_cot.TABLE.name, expansion.TABLE.name  # the tables whose rows these stages' functions make
LABELLED = (SIMPLE, EXPANDED)
"""The stages whose rows carry a label from the answer matcher (rebuilt by their own row functions)."""


def stale_labels(run: RunDir) -> dict[str, list[int | None]]:
    """Per labelled stage, the older matcher versions its files were labelled with ({} when all are current)."""
    out = {}
    for stage in LABELLED:
        old = sorted({v for v in run.matcher_versions(stage).values() if v != MATCHER_VERSION},
                     key=lambda v: -1 if v is None else v)
        if old:
            out[stage] = old
    return out


def _changed(before: list[dict], after: list[dict]) -> dict[str, int]:
    keys = ("correct", "keep", "pred_index", "parsed")
    return {"rows": len(after), "label changed": sum(a["correct"] != b["correct"] for a, b in zip(after, before)),
            "kept changed": sum(a["keep"] != b["keep"] for a, b in zip(after, before)),
            "any field changed": sum(any(a[k] != b[k] for k in keys) for a, b in zip(after, before))}


def _relabel_stage(run: RunDir, stage: str, rebuild: Callable[[list[dict], dict], list[dict]]) -> dict[str, int]:
    """Rewrite each file of ``stage``: its rows, grouped by input in file order, rebuilt by ``rebuild``."""
    col = TABLES[stage].input_column
    total = {"rows": 0, "label changed": 0, "kept changed": 0, "any field changed": 0}
    settings = run.chunk_settings(stage)
    for path in run.files(stage):
        before = run.read_file(stage, path).to_pylist()
        groups: dict[str, list[dict]] = {}
        for row in before:
            groups.setdefault(row[col], []).append(row)
        after = [r for rows in groups.values() for r in rebuild(rows, settings.get(path, {}))]
        index = TABLES[stage].sort_keys[1]  # sample_index / expansion_index: a row's place within its input
        position = {(r[col], r[index]): k for k, r in enumerate(before)}
        after.sort(key=lambda r: position[(r[col], r[index])])  # the file keeps its row order
        for k, v in _changed(before, after).items():
            total[k] += v
        run.rewrite_file(stage, path, pa.Table.from_pylist(after, schema=TABLES[stage].schema))
    return total


def _checked_words(value: Any, where: Any) -> tuple[str, ...]:
    """Bad words read back from a run, through the settings' own check (a list of strings)."""
    from builder.settings import PipelineConfig

    if not isinstance(value, (list, tuple)):  # written by the project as a list: anything else was edited
        raise StoreError(f"{where}: bad_words must be a list of strings, got {value!r}")
    try:
        section = expansion.SPEC.section
        return getattr(PipelineConfig().merge({section: {"bad_words": value}}), section).bad_words
    except ValueError as e:
        raise StoreError(f"{where}: {e}") from None


def relabel(run: RunDir) -> dict[str, dict[str, int]]:
    """Re-grade stages 2 and 3 of ``run`` with the current answer matcher; returns, per stage, how many rows
    changed their label, their ``keep``, or any parsed field. Holds the run exclusively (it rewrites files)."""
    with run.claim(shared=False, what="relabelled"):
        return _relabel(run)


def _relabel(run: RunDir) -> dict[str, dict[str, int]]:
    run.check()  # the reader rule over the whole run, as status and export check it
    def simple(rows: list[dict], _settings: dict) -> list[dict]:
        rows = sorted(rows, key=lambda r: r["sample_index"])
        first = rows[0]
        shown = {k: first[k] for k in ("options", "answer_index", "option_style", "answer_format")}
        return sample_rows(first, shown, [r["response"] for r in rows], system_prompt=first["system_prompt"],
                           user_text=first["user_text"], model=first["model"], seed=first["seed"])

    counts = {SIMPLE: _relabel_stage(run, SIMPLE, simple)}
    simples = {r["sample_id"]: r for r in run.read(SIMPLE).to_pylist()}
    manifest_words = _checked_words(run.manifest.get("bad_words") or BAD_WORDS, run.manifest_path)

    def expanded(rows: list[dict], settings: dict) -> list[dict]:
        rows = sorted(rows, key=lambda r: r["expansion_index"])
        section = settings.get(expansion.SPEC.section, {})
        if rows[0]["sample_id"] not in simples:
            raise StoreError(f"{run.path / EXPANDED}: expansions of simple CoT {rows[0]['sample_id']} that stage 2 "
                             f"does not hold; the run's stages do not belong together")
        conts = [Continuation(r["expansion_index"], r["cue"], r["separator"], r["user_text"], r["prefill"],
                              r["continuation"], r["seed"]) for r in rows]
        return expansion_rows(simples[rows[0]["sample_id"]], conts, model=rows[0]["model"],
                              bad_words=_checked_words(section.get("bad_words", manifest_words),
                                                       f"{run.path / EXPANDED} (its chunks' settings)"),
                              substring=bool(section.get("substring_bad_word_filter", False)))

    counts[EXPANDED] = _relabel_stage(run, EXPANDED, expanded)
    run.update_manifest(matcher_version=MATCHER_VERSION)
    return counts


__all__ = ["LABELLED", "relabel", "stale_labels"]
