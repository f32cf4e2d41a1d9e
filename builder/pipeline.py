"""The pipeline runner: source preparation, engines, the stages in order, and the run's status.

The CLI (``lpt generate``, ``lpt stage1``…, ``lpt status``) and the demo call these functions; nothing here
parses flags or formats tables. Every stage is driven through its declaration in :data:`builder.stages.STAGES`.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from builder.engines import RAY_VLLM
from builder.engines.pool import EngineCache
from builder.ids import among
from builder.records import SOURCE, shard_of, tally
from builder.runtime import (IncompleteInput, StagePlan, missing_inputs, plan_stage, progress_of, require_input,
                             run_locally, skip_kind, skipped_inputs)
from builder.settings import PipelineConfig
from builder.sources import Skips, load_source
from builder.stages import STAGES, TABLES, StageSpec, StageSummary, input_of
from builder.store import RunDir


class PipelineError(ValueError):
    """A run that cannot go on as asked (no source, a different source); the message says what to do."""


class NoSource(PipelineError):
    """The run has no source yet and none was given."""


def prepare_source(run: RunDir, spec: str | None, *, split: str | None = None, subset: int | None = None,
                   limit: int | None = None, skip_bad: bool = False, echo: Callable[[str], None] = print) -> int:
    """Write the source table into the run (when ``spec`` is given) and return its row count.

    A run keeps one source: a new ``spec`` may only keep or grow it (the same rows for the ids it had), so a
    rerun with a larger ``--limit`` extends the work and a different source is a clear error.
    """
    if spec is None:
        if any(x is not None for x in (split, subset, limit)):
            echo("note: --split/--subset/--limit apply only together with --source; the run's source is used as "
                 "it is")
        if not run.has("source"):
            raise NoSource(f"{run.path} has no source yet: pass --source (a DOCCI folder, a JSONL/CSV/"
                                f"parquet file or a folder of images with .txt descriptions)")
        return run.read("source").num_rows
    skips = Skips()
    rows = list(load_source(spec, split=split, subset=subset, limit=limit, skip_bad=skip_bad, skips=skips))
    if skips:
        echo(skips.summary())
    if not rows:
        raise PipelineError(f"source {spec} gave no rows" + (f" for split {split!r}" if split else ""))
    new = pa.Table.from_pylist(rows, schema=SOURCE)
    if run.has("source"):
        old = {r["image_id"]: r for r in run.read("source").to_pylist()}
        fresh = {r["image_id"]: r for r in rows}
        changed = [i for i, r in old.items() if fresh.get(i) != r]
        if changed:
            raise PipelineError(
                f"{run.path} already has a source of {len(old)} images and {spec} differs from it "
                f"(e.g. image {changed[0]!r} {'is missing' if changed[0] not in fresh else 'differs'}); "
                f"use a new run directory")
        if len(fresh) == len(old):
            return len(old)
    run.write_table("source", new)
    run.update_manifest(source={"spec": str(spec), "split": split, "subset": subset, "limit": limit,
                                "rows": len(rows), "skipped": len(skips)})
    return len(rows)


def run_stage(spec: StageSpec, run: RunDir, config: PipelineConfig, *, engines: EngineCache | None = None,
              shard: tuple[int, int] | str = (0, 1), progress: bool = True,
              chunk_size: int | None = None) -> StageSummary:
    """Run one stage locally (its input must be complete) with the engines its settings name, loaded through
    ``engines`` (default: loaded for this call and closed after it); returns its summary."""
    plan = plan_stage(run, spec, config)
    if engines is not None:
        return run_locally(plan, engines=engines, shard=shard, progress=progress, chunk_size=chunk_size)
    own = EngineCache()
    try:
        return run_locally(plan, engines=own, shard=shard, progress=progress, chunk_size=chunk_size)
    finally:
        own.close()


def wait_for_input(run: RunDir, spec: StageSpec, wait: float, *, poll: float = 5.0,
                   echo: Callable[[str], None] = print) -> None:
    """Return once the stages before ``spec`` are complete across all shards; wait up to ``wait`` seconds for
    other machines to finish them, then refuse (:class:`builder.runtime.IncompleteInput`)."""
    deadline = time.monotonic() + wait
    said = False
    while missing := missing_inputs(run, spec):
        if time.monotonic() >= deadline:
            raise IncompleteInput(f"{run.path}: {spec.section} ({spec.name}) needs its input complete, but "
                                  f"{missing}; finish those shards first (or run with --wait to wait for them)")
        if not said:
            echo(f"{spec.section}: waiting for its input ({missing})")
            said = True
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))


RUNNERS = ("local", "ray")
"""``generate``'s runners: ``local`` (this process, chunk after chunk) and ``ray`` (:mod:`builder.ray_runner`)."""


def check_engines(stages: Sequence[StageSpec], config: PipelineConfig, on_ray: bool) -> None:
    """Refuse a ray-vllm engine (of any round of a stage) outside the Ray runner."""
    for spec in stages:
        kinds = {r.model(config).engine for r in spec.rounds(config)}
        if RAY_VLLM in kinds and not on_ray:
            raise PipelineError(f"{spec.section}: the engine {RAY_VLLM} runs only on the Ray runner (--runner ray)")


def make_runner(runner: Any, address: str | None) -> tuple[Callable[..., StageSummary], Callable[[], None]]:
    """``(run_one, close)`` for ``generate``'s ``runner``: ``run_one(plan, *, shard, progress, chunk_size)`` runs a
    planned stage, ``close`` releases its engines or its Ray connection."""
    if runner == "ray":
        from builder.ray_runner import RayRunner

        ray_runner = RayRunner(address)
        return ray_runner, ray_runner.close
    if runner == "local":
        engines = EngineCache()
        return (lambda plan, **kw: run_locally(plan, engines=engines, **kw)), engines.close
    return runner, lambda: None


def generate(run: RunDir, config: PipelineConfig, stages: Sequence[StageSpec] = STAGES, *,
             shard: tuple[int, int] = (0, 1), chunk_size: int | None = None, progress: bool = True,
             wait: float = 0.0, echo: Callable[[str], None] = print, runner: Any = "local",
             address: str | None = None, skip_bad: bool = False) -> list[StageSummary]:
    """Run ``stages`` in order into ``run`` (which must have its source); returns their summaries.

    A stage starts only when the stages before it are complete across all shards (waiting up to ``wait``
    seconds for other machines); a stage left without input by the stage before it is skipped with a note.
    ``runner="ray"`` runs each stage as a Ray Data pipeline on the cluster at ``address``
    (:class:`builder.ray_runner.RayRunner`); the files it writes are those of the local runner. ``runner`` may
    also be a runner object called like :func:`builder.runtime.run_locally` without ``engines`` (e.g. a
    ``RayRunner`` made with its own options), which the caller closes. ``skip_bad``: the local runner skips (counts,
    records) an input whose prompt passes its model's context (:mod:`builder.runtime`); the Ray runner stops.
    """
    if isinstance(runner, str) and runner not in RUNNERS:
        raise PipelineError(f"unknown runner {runner!r}; use one of {', '.join(RUNNERS)}")
    if address is not None and runner != "ray":
        raise PipelineError("an address is for the Ray runner only (--runner ray)")
    on_ray = runner == "ray" or getattr(runner, "on_ray", False)
    check_engines(stages, config, on_ray)
    if skip_bad and on_ray:
        echo("note: the Ray runner does not skip a stage input whose prompt passes the model's context (--skip-bad "
             "skips only bad source records there): such an input stops the stage")
    run_one, close = make_runner(runner, address)
    summaries = []
    try:
        for k, spec in enumerate(stages):
            wait_for_input(run, spec, wait, echo=echo)
            plan = plan_stage(run, spec, config, checked=True, skip_bad=skip_bad)
            if k > 0 and not plan.items:
                echo(f"[yellow]{spec.section}: nothing to do[/] ({spec.when_empty})")
                continue
            section = spec.settings_of(config)
            echo(f"[bold]{spec.section}[/] ({spec.name}): {section.model} via {section.engine}"
                 + (" on Ray" if on_ray else ""))
            summaries.append(run_one(plan, shard=shard, progress=progress, chunk_size=chunk_size))
    finally:
        close()
    return summaries


def shard_progress(run: RunDir, spec: StageSpec, counted: tuple[set[str], set[str]] | None = None) -> dict[str, Any]:
    """A stage's completeness: inputs done of expected, overall and per shard (``"i/N": "done/expected"``);
    ``counted``: its :func:`progress_of`, when already read."""
    done, expected = counted or progress_of(run, spec)
    n = (sorted(run.shard_counts(spec.name)) or [1])[0]
    per = {f"{i}/{n}": [0, 0] for i in range(n)}
    if n == 1:  # one shard holds every input: no pass over the ids
        per["0/1"] = [len(done), len(expected)]
    else:
        for k in expected:
            cell = per[f"{shard_of(k, n)}/{n}"]
            cell[1] += 1
            cell[0] += k in done
    return {"done": len(done), "expected": len(expected), "complete": len(done) == len(expected),
            "shards": {s: f"{d}/{e}" for s, (d, e) in per.items()}}


def incomplete_stages(run: RunDir) -> list[str]:
    """The stages that were started but have not covered all their inputs (in words), for export to refuse."""
    out = []
    for spec in STAGES:
        if run.has(spec.name):
            expected = run.id_hashes(input_of(spec), spec.select)  # hashes first (no set of 3M ids at 10M records);
            if not among(expected, run.done_hashes(spec.name)).all():  # the ids only for a stage that lacks some
                p = shard_progress(run, spec)
                out.append(f"{spec.section} ({spec.name}) {p['done']}/{p['expected']} inputs "
                           f"(by shard: {', '.join(f'{k} {v}' for k, v in p['shards'].items())})")
    return out


def status_rows(run: RunDir) -> list[dict[str, Any]]:
    """Per table: files, shards present, :func:`builder.records.tally` counts, inputs done and completeness."""
    specs = {s.name: s for s in STAGES}
    run.check()  # the store's reader rule over the whole run: what export checks
    out = []
    for name, table in TABLES.items():
        files = run.files(name)
        shards = sorted({m.group(1) for p in files if (m := re.match(r"shard-(\d+-of-\d+)\.", p.name))})
        labels = [c for c in ("item_index", "valid", "parsed", "correct", "keep") if c in table.schema.names]
        counts = tally(pa.concat_tables([pq.read_table(p, columns=labels) for p in files])
                       if files and labels else table.schema.empty_table().select(labels))
        counts["rows"] = sum(pq.ParquetFile(p).metadata.num_rows for p in files)
        row: dict[str, Any] = {"stage": name, "files": len(files), "shards": shards, **counts}
        if table.input_column:
            row["inputs_done"] = len(run.done_inputs(name)) if files else 0
        if name in specs and files:
            row["skipped"] = dict(Counter(skip_kind(r) for r in skipped_inputs(run, name).values()))
        if name in specs and run.has(input_of(specs[name])):
            row["progress"] = shard_progress(run, specs[name])
        out.append(row)
    return out


__all__ = ["RAY_VLLM", "RUNNERS", "EngineCache", "NoSource", "PipelineError", "StagePlan", "check_engines", "generate",
           "incomplete_stages", "make_runner", "prepare_source", "require_input", "run_stage", "shard_progress",
           "status_rows", "wait_for_input"]
