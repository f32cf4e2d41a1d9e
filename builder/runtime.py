"""The runtime: what runs any stage, without naming one. It plans a stage, works through its chunks and reports.

:func:`plan_stage` makes a stage's :class:`StagePlan` once: its input complete across the shards (the stages
before it have covered all their inputs), the input rows it works on read once, with only the columns the stage
declares (and the source columns it joins). A runner then holds the shard's lock (:func:`open_chunks`: one N for
all shards, no temp files of a killed writer, finished chunks made with the same settings), keeps this shard's
inputs not done yet (``records.shard_of`` on the input id, ``RunDir.done_inputs``), and for each chunk sends the
stage's requests to the engines (:func:`chunk_rows`: the stage's rounds) and writes the rows the stage makes of
the outputs, atomically, with the ids of the inputs the chunk covers. :func:`run_locally` is the local runner;
:mod:`builder.ray_runner` is the Ray one. :func:`finish` records the stage's summary in the manifest.

An engine's error names the stage and the round it was sent for (:func:`chunk_rows` puts them in front of its
message). Skips (``--skip-bad``, ``StagePlan.skip_bad``): an input whose prompt passes its model's context
(:class:`builder.engines.base.PromptTooLong`) makes no rows; its chunk still covers it, with the reason stored in
the chunk's settings under :data:`SKIPPED`, so a resume does not retry it and the stage's summary and ``lpt status``
count it (:func:`skipped_inputs`). Without ``--skip-bad`` such a prompt stops the stage with the engine's one line.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from builder.engines import sampler_of
from builder.engines.base import PromptTooLong
from builder.engines.pool import EngineCache
from builder.prompts import Prompts
from builder.records import SOURCE_TABLE, shard_of
from builder.stages import TABLES, Answers, StageSpec, StageSummary, input_of, stage_before
from builder.stages.contract import Item
from builder.store import RunDir, StoreError, parse_shard

DEFAULT_CHUNK_SIZE = 64
SKIPPED = "skipped"
"""The key, in a chunk's stored settings, of ``{input id: reason}``: the inputs it covers that were skipped."""
PAST_CONTEXT = "prompt past the model's context"  # the kind of skip a PromptTooLong is

log = logging.getLogger(__name__)


class IncompleteInput(StoreError):
    """A stage's input is not complete (another shard has not finished the stage before)."""


# ------------------------------------------------------------------------------------------- completeness


def progress_of(run: RunDir, spec: StageSpec) -> tuple[set[str], set[str]]:
    """``(done, expected)`` input ids of a stage: what it has covered, of the inputs it works on (two columns of
    its input are read, file by file)."""
    col = TABLES[input_of(spec)].id_column
    expected: set[str] = set()
    for t in run.tables(input_of(spec), [col, *([spec.select] if spec.select else [])]):
        expected.update((t.filter(t.column(spec.select)) if spec.select else t).column(col).to_pylist())
    return run.done_inputs(spec.name) & expected, expected


def missing_inputs(run: RunDir, spec: StageSpec) -> str:
    """"" when every stage before ``spec`` is complete across all shards, else what is missing, in words."""
    before = stage_before(spec)
    if before is None:
        return ""
    behind = missing_inputs(run, before)
    if behind:
        return behind
    done, expected = progress_of(run, before)
    if len(done) == len(expected):
        return ""
    n = (sorted(run.shard_counts(before.name)) or [1])[0]
    late = sorted({shard_of(k, n) for k in expected - done})
    return (f"{before.section} ({before.name}) has covered {len(done)} of its {len(expected)} inputs "
            f"(unfinished: shard {', '.join(f'{i}/{n}' for i in late)})")


def require_input(run: RunDir, spec: StageSpec) -> None:
    """Refuse to run ``spec`` while the stages before it are incomplete across the shards: a stage started on
    part of its input would finish with part of its rows and look done."""
    missing = missing_inputs(run, spec)
    if missing:
        raise IncompleteInput(f"{run.path}: {spec.section} ({spec.name}) needs its input complete, but {missing}; "
                              f"finish those shards first (or run with --wait to wait for them)")


# ----------------------------------------------------------------------------------------------- the plan


@dataclass
class StagePlan:
    """A stage ready to run: its settings, and the sorted ``(input id, row)`` items it works on (every shard's)."""

    spec: StageSpec
    run: RunDir
    settings: Any
    items: list[Item]
    skip_bad: bool = False  # skip (count, record) an input whose prompt passes the model's context


def plan_stage(run: RunDir, spec: StageSpec, settings: Any, *, checked: bool = False,
               skip_bad: bool = False) -> StagePlan:
    """Check that the stage's input is complete (unless ``checked``: the caller just did) and read the input rows
    it works on, once. An input table with no file is an error naming the stage to run, unless the stage that
    writes it had no input to work on either (then there is nothing to do). ``skip_bad``: see the module
    docstring."""
    table = input_of(spec)
    if not run.has(table):
        before = stage_before(spec)
        if before is not None and run.has(input_of(before)) and not progress_of(run, before)[1]:
            return StagePlan(spec, run, settings, [], skip_bad)  # the stage before had nothing to work on
        raise FileNotFoundError(f"{run.path / table}: no {table} rows; " + (
            f"run {before.section} ({before.name}) first" if before else "write the source first"))
    if not checked:
        require_input(run, spec)
    return StagePlan(spec, run, settings, read_items(run, spec), skip_bad)


def read_items(run: RunDir, spec: StageSpec) -> list[Item]:
    """``(input id, row)`` for each input row the stage works on, in the input table's order: only the columns it
    declares (and the keys), with its source columns joined by ``image_id``."""
    table = input_of(spec)
    columns = None if spec.input_columns is None else [
        *spec.input_columns, *([spec.select] if spec.select else []), *(["image_id"] if spec.source_columns else [])]
    rows = run.read(table, columns).to_pylist()
    if spec.select:
        rows = [r for r in rows if r[spec.select]]
    key = TABLES[table].id_column
    if spec.source_columns:
        _join_source(run, table, rows, spec.source_columns, key)
    return [(r[key], r) for r in rows]


def _join_source(run: RunDir, table: str, rows: list[dict[str, Any]], columns: Sequence[str], key: str) -> None:
    """Add the source's ``columns`` to each row, by its ``image_id`` (only those columns of the source are read);
    ``key``: the column that names a row in an error."""
    by_id = {r["image_id"]: r for r in run.read(SOURCE_TABLE.name, columns).to_pylist()}
    for r in rows:
        if r["image_id"] not in by_id:
            raise KeyError(f"{table} {r[key]}: image_id {r['image_id']!r} is not in the run's source")
        r.update((c, by_id[r["image_id"]][c]) for c in columns)


# ------------------------------------------------------------------------------------------------ chunks


def stage_settings(settings: Any, section: str) -> dict[str, Any]:
    """What a stage's rows depend on: the global seed, the template folder and the stage's settings section
    (engine kind and options excluded: the same model may be served differently on different machines), and the
    version of the seeded sampler of an engine that draws tokens itself (:attr:`builder.engines.Engine.sampler`)."""
    d = settings.to_dict()
    sec = {k: v for k, v in d[section].items() if k not in ("engine", "engine_options")}
    out = {"seed": d["seed"], "template_dir": d["template_dir"], section: sec,
           "templates": settings.make_prompts().fingerprint()}
    # an engine that draws the tokens itself: its sampler's version (:func:`_samplers_clash`); None for the others
    out["sampler"] = {k: sampler_of(v) for k, v in d[section].items() if k.endswith("engine") and isinstance(v, str)}
    return out


@dataclass
class ChunkPlan:
    """This shard's share of a stage, as a runner works through it: the inputs that are this shard's
    (``mine``), those not done yet (``pending``) and the chunks they form, in input order. Made (and valid)
    only while the shard's lock is held (:func:`open_chunks`)."""

    run: RunDir
    stage: str
    shard: tuple[int, int]
    settings: dict[str, Any] | None
    mine: list[Item]
    pending: list[Item]
    chunk_size: int

    @property
    def chunks(self) -> list[list[Item]]:
        return [self.pending[s:s + self.chunk_size] for s in range(0, len(self.pending), self.chunk_size)]

    def write(self, chunk: Sequence[Item], rows: list[dict[str, Any]], skipped: dict[str, str] | None = None):
        """Write one chunk's rows atomically, with the ids of the inputs it covers and the settings (and the
        inputs it skipped, with their reasons, under :data:`SKIPPED`)."""
        table = pa.Table.from_pylist(rows, schema=TABLES[self.stage].schema)
        settings = {**(self.settings or {}), SKIPPED: dict(sorted(skipped.items()))} if skipped else self.settings
        return self.run.write_chunk(self.stage, table, [k for k, _ in chunk], shard=self.shard, settings=settings)


@contextlib.contextmanager
def open_chunks(run: RunDir, stage: str, inputs: Sequence[Item], *, shard: tuple[int, int] | str = (0, 1),
                chunk_size: int = DEFAULT_CHUNK_SIZE, settings: dict[str, Any] | None = None) -> Iterator[ChunkPlan]:
    """Hold the shard's lock and give its :class:`ChunkPlan`, after the checks every runner makes: one N for
    all shards of the stage, no temp files of a killed writer, finished chunks made with the same settings."""
    i, n = parse_shard(shard)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    with run.claim(shared=True), run.lock(f"shard-{i}-of-{n}"):
        run.fix_shards(stage, n)
        run.remove_orphans(stage, (i, n))  # temp files of a killed writer of this shard
        if settings is not None:
            settings = json.loads(json.dumps(settings, sort_keys=True, default=str))
            _same_settings(run, stage, settings)
        mine = [(k, v) for k, v in inputs if shard_of(k, n) == i]
        done = run.done_inputs(stage)
        yield ChunkPlan(run, stage, (i, n), settings, mine, [(k, v) for k, v in mine if k not in done], chunk_size)


def _same_settings(run: RunDir, stage: str, settings: dict[str, Any]) -> None:
    """Refuse to add chunks made with other settings than the finished ones: the rows would mix two configurations."""
    for path, old in run.chunk_settings(stage).items():
        old = {k: v for k, v in old.items() if k != SKIPPED}  # what a chunk skipped is not a setting
        diff = sorted(k for k in set(old) | set(settings) if _differs(k, old, settings))
        if diff:
            raise StoreError(f"{path}: made with other {stage} settings (differ in {diff}); use a new run "
                             f"directory, or delete the {stage} folder to redo the stage")


def _differs(key: str, old: dict[str, Any], new: dict[str, Any]) -> bool:
    if key == "templates" and key not in old:  # runs made before fingerprints
        return False
    if key == "sampler":
        return _samplers_clash(old.get(key), new.get(key) or {})
    return old.get(key) != new.get(key)


def _samplers_clash(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether a chunk's rows were sampled otherwise than the engines given now would sample: an engine with a
    sampler of its own (e.g. the transformers engine) resuming chunks of another version of it, or of a time
    before versions were recorded (``old`` None); an engine without one (vLLM, a server) clashes with nothing,
    as the engine's choice is free."""
    if old is None:
        return any(new.values())
    return any(v and old.get(k) and old.get(k) != v for k, v in new.items())


def chunk_rows(spec: StageSpec, chunk: list[Item], settings: Any, prompts: Prompts, engines: dict[str, Any], *,
               skipped: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One chunk's rows: each of the stage's rounds sent to its engine (``engines``: round name -> engine), then
    the stage's ``rows`` of the answers. With ``skipped`` (``--skip-bad``), an input whose prompt passes its
    model's context makes no rows and is noted there with the reason: the chunk is halved until that input is
    alone, and the others' rows are made as usual."""
    if skipped is None:
        return _answered_rows(spec, chunk, settings, prompts, engines)
    try:
        return _answered_rows(spec, chunk, settings, prompts, engines)
    except PromptTooLong as e:
        if len(chunk) == 1:
            skipped[chunk[0][0]] = f"{PAST_CONTEXT}: {e}"
            log.warning("%s: skipped input %s: %s", spec.section, chunk[0][0], e)
            return []
        half = len(chunk) // 2
        return [*chunk_rows(spec, chunk[:half], settings, prompts, engines, skipped=skipped),
                *chunk_rows(spec, chunk[half:], settings, prompts, engines, skipped=skipped)]


def _answered_rows(spec: StageSpec, chunk: list[Item], settings: Any, prompts: Prompts,
                   engines: dict[str, Any]) -> list[dict[str, Any]]:
    """:func:`chunk_rows` without skips; an engine's error names the stage and the round (:func:`name_stage`)."""
    answers: dict[str, Answers] = {}
    for r in spec.rounds(settings):
        requests = r.requests(chunk, answers, settings, prompts)
        engine = engines[r.name]
        try:
            samples = engine.generate(requests)
        except Exception as e:
            name_stage(e, f"{spec.section} ({r.name})")
            raise
        answers[r.name] = Answers(requests, samples, engine.model_id)
    return spec.rows(chunk, answers, settings)


def name_stage(e: BaseException, where: str) -> None:
    """Put ``where`` (the stage and its round) in front of an engine error's message, in place: the same
    exception, type and traceback, its one line now naming the stage too. An error whose message is not its one
    argument keeps it and gets ``where`` as a note."""
    text = str(e)
    if text.startswith(where):
        return
    old = e.args
    if len(old) <= 1:
        e.args = (f"{where}: {text}",)
        if str(e) == f"{where}: {text}":
            return
        e.args = old
    e.add_note(f"(in {where})")


def skipped_inputs(run: RunDir, stage: str) -> dict[str, str]:
    """The inputs of ``stage`` that were skipped (``--skip-bad``), with their reasons, from its chunks' footers."""
    out: dict[str, str] = {}
    for settings in run.chunk_settings(stage).values():
        out.update(settings.get(SKIPPED) or {})
    return out


def skip_kind(reason: str) -> str:
    """The kind of a recorded skip reason (what the summaries count)."""
    return reason.split(": ", 1)[0]


@contextlib.contextmanager
def chunk_loop(plan: StagePlan, *, shard: tuple[int, int] | str, chunk_size: int | None,
               progress: bool) -> Iterator[tuple[ChunkPlan, Any]]:
    """The shard's :class:`ChunkPlan` (under its lock, with the stage's settings stored with every chunk) and a
    progress bar over its inputs; garbage collection skips what exists now while the chunks are made."""
    spec = plan.spec
    with open_chunks(plan.run, spec.name, plan.items, shard=shard,
                     chunk_size=chunk_size or plan.settings.chunk_size,
                     settings=stage_settings(plan.settings, spec.section)) as chunks:
        bar = _progress(total=len(chunks.mine), initial=len(chunks.mine) - len(chunks.pending), desc=spec.name,
                        enabled=progress)
        try:
            with gc_frozen():
                yield chunks, bar
        finally:
            bar.close()


def run_locally(plan: StagePlan, *, engines: EngineCache, shard: tuple[int, int] | str = (0, 1),
                progress: bool = True, chunk_size: int | None = None) -> StageSummary:
    """The local runner: the stage's engines loaded through ``engines``, its chunks made one after the other in
    this process; returns the summary."""
    spec, settings = plan.spec, plan.settings
    rounds = spec.rounds(settings)
    loaded = dict(zip([r.name for r in rounds], engines.get_all([r.model(settings) for r in rounds])))
    prompts = settings.make_prompts()
    return _chunks_through(plan, loaded, prompts, shard=shard, progress=progress, chunk_size=chunk_size)


def _chunks_through(plan: StagePlan, engines: dict[str, Any], prompts: Prompts, *, shard: tuple[int, int] | str,
                    progress: bool, chunk_size: int | None) -> StageSummary:
    """The stage's pending chunks made one after the other on ``engines`` (round name -> engine), then its summary."""
    with chunk_loop(plan, shard=shard, chunk_size=chunk_size, progress=progress) as (chunks, bar):
        for chunk in chunks.chunks:
            skipped: dict[str, str] | None = {} if plan.skip_bad else None
            rows = chunk_rows(plan.spec, chunk, plan.settings, prompts, engines, skipped=skipped)
            chunks.write(chunk, rows, skipped)
            bar.update(len(chunk))
    return finish(plan, chunks, {name: e.model_id for name, e in engines.items()}, shard=shard, progress=progress)


def run_with(spec: StageSpec, run: RunDir, engine: Any, settings: Any, *, shard: tuple[int, int] | str = (0, 1),
             progress: bool = True, chunk_size: int | None = None, prompts: Prompts | None = None,
             skip_bad: bool = False, **round_engines: Any) -> StageSummary:
    """The local runner on engine objects given here (tests, benchmarks): ``engine`` answers the stage's own
    round and every round not named in ``round_engines`` (round name -> engine, e.g. ``mcq_reformat=``)."""
    engines = {r.name: round_engines.get(r.name) or engine for r in spec.rounds(settings)}
    return _chunks_through(plan_stage(run, spec, settings, skip_bad=skip_bad), engines,
                           prompts or settings.make_prompts(),
                           shard=shard, progress=progress, chunk_size=chunk_size)


def finish(plan: StagePlan, chunks: ChunkPlan, models: dict[str, str], *, shard: tuple[int, int] | str,
           progress: bool) -> StageSummary:
    """The stage's summary of this shard's rows (earlier runs' included; only the columns its summary reads),
    recorded in the manifest with the models (round name -> model id), printed when ``progress``."""
    spec, settings = plan.spec, plan.settings
    mine = [k for k, _ in chunks.mine]
    rows = shard_rows(plan.run, spec.name, mine, spec.summary_columns)
    counts, dropped = spec.summary(rows, settings)
    skips = skipped_inputs(plan.run, spec.name)
    skips = [reason for k in mine if (reason := skips.get(k)) is not None]
    summary = StageSummary(stage=spec.name, shard=parse_shard(shard), dropped=dropped, counts={
        "items_in": len(chunks.mine), "items_already_done": len(chunks.mine) - len(chunks.pending),
        **({"items_skipped": len(skips)} if skips else {}), **counts},
        skipped=dict(Counter(skip_kind(r) for r in skips)))
    i, n = summary.shard
    plan.run.update_manifest(counts=plan.run.counts(), summaries={f"{spec.name}/{i}-of-{n}": summary.as_dict()},
                             config=settings.to_dict(), models=models, seed=settings.seed)
    if progress:
        from rich.console import Console

        Console(stderr=True).print(summary.table())
    return summary


@contextlib.contextmanager
def gc_frozen() -> Iterator[None]:
    """Keep what exists now (the modules, the prepared inputs) out of the garbage collector's passes while the
    block runs: a stage loop allocates many short-lived containers, and each full pass would also walk the
    objects of the imported libraries. What the block allocates is collected as usual. Does nothing when the
    process has frozen objects itself (``gc.freeze`` does not nest)."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="item", disable=not enabled, file=sys.stderr)


def in_shard(ids: Iterable[str], shard: tuple[int, int] | str) -> list[str]:
    """The ids among ``ids`` that belong to ``shard``."""
    i, n = parse_shard(shard)
    return [k for k in ids if shard_of(k, n) == i]


def shard_rows(run: RunDir, stage: str, input_ids: Iterable[str],
               columns: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The stage's rows whose input is among ``input_ids`` (this shard's share of the stage), file by file (not
    sorted); with ``columns``, only those and the input column."""
    col = TABLES[stage].input_column
    wanted = None if columns is None else list(dict.fromkeys([*columns, col]))
    ids = pa.array(list(set(input_ids)), pa.string())
    rows: list[dict[str, Any]] = []
    for t in run.tables(stage, wanted):
        rows += t.filter(pc.is_in(t.column(col), value_set=ids)).to_pylist()
    return rows


__all__ = ["DEFAULT_CHUNK_SIZE", "PAST_CONTEXT", "SKIPPED", "ChunkPlan", "IncompleteInput", "StagePlan", "chunk_loop",
           "chunk_rows", "finish", "in_shard", "missing_inputs", "name_stage", "open_chunks", "plan_stage",
           "progress_of", "read_items", "require_input", "run_locally", "run_with", "shard_rows", "skip_kind",
           "skipped_inputs", "stage_settings"]
