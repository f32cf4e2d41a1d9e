"""What the stages share: the stage declaration, the chunked, sharded, resumable loop and the summary table.

Each stage module declares itself once with a :class:`StageSpec` (``SPEC``); the runner, ``lpt status``, the
demo and the card derive everything from those declarations. A stage is ``inputs -> make_rows(chunk) ->
rows``; :func:`run_chunks` keeps only this shard's inputs (``records.shard_of`` on the input id), skips inputs
a previous run already covered (``RunDir.done_inputs``), and writes each chunk atomically with the ids it covers.
"""

from __future__ import annotations

import contextlib
import gc
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

from builder.prompts import Prompts
from builder.records import TABLES, TableSpec, shard_of, stable_int, tally
from builder.store import RunDir, StoreError, parse_shard

DEFAULT_CHUNK_SIZE = 64
_SPECS: dict[str, "StageSpec"] = {}  # name -> declaration, filled as the stage modules are imported


@dataclass(frozen=True)
class StageSpec:
    """The one declaration of a stage, from which the runner, the CLI, ``lpt status``, the demo and the card
    derive what they need. Its output table (schema, sort keys, input column) is ``records.TABLES[name]``."""

    number: int  # 1, 2, 3: ``lpt stage1``, ``--stages 1,2``, the config section ``stage1``
    name: str  # its run-directory table and its module (mcq, simple_cot, expansion)
    input: str  # the table it reads
    usable: str | None  # the label column that selects the input rows it works on (None: every row)
    run: Callable[..., "StageSummary"]  # run(run, engine, config, *, shard, progress, chunk_size, **engines)
    what: str  # one line for ``--help``
    no_input: str  # what the runner says when the stage before left it nothing
    extra_engines: Callable[[Any], dict[str, Any]] = lambda config: {}  # keyword -> ModelConfig, e.g. a re-formatter
    # The pieces of ``run`` that another runner (builder.ray_runner) puts together in its own way; a stage that
    # declares them runs under every runner, one that does not runs under the local runner only:
    # prepare(run, config) -> (inputs, context): the sorted ``(input_id, item)`` pairs and what make_rows needs
    # besides a chunk (picklable: it travels to remote workers);
    prepare: Callable[..., tuple[list[tuple[str, Any]], Any]] | None = None
    # make_rows(chunk, engine, config, prompts, context, **engines) -> the chunk's rows (pure given the engines);
    make_rows: Callable[..., list[dict[str, Any]]] | None = None
    # finish(run, config, rows, *, shard, progress, items_in, skipped, model_ids) -> the summary, reported;
    finish: Callable[..., "StageSummary"] | None = None
    # the columns of its output that ``finish`` reads: the rows it gets hold only those (and the key columns), so
    # the texts are not read back (None: every column).
    summary_columns: tuple[str, ...] | None = None
    # what its table is to the products (builder.stages.ROLES): they ask ``table_for(role)``, never the name
    role: str | None = None

    def __post_init__(self) -> None:
        _SPECS[self.name] = self  # so a stage finds the one before it (require_input)

    @property
    def section(self) -> str:
        """The config section of its settings (``stage1`` ...)."""
        return f"stage{self.number}"

    @property
    def aliases(self) -> tuple[str, ...]:
        return (str(self.number), self.section, self.name)

    @property
    def table(self) -> TableSpec:
        return TABLES[self.name]


def usable_inputs(run: RunDir, spec: StageSpec, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The input rows the stage works on (e.g. the valid MCQs for stage 2), in the input table's order; with
    ``columns``, only those (and the key columns: ``RunDir.read``)."""
    if columns is not None and spec.usable:
        columns = [*columns, spec.usable]
    rows = run.read(spec.input, columns).to_pylist()
    return [r for r in rows if r[spec.usable]] if spec.usable else rows


def keyed_inputs(run: RunDir, spec: StageSpec, columns: Sequence[str], *, missing: str) -> list[tuple[str, dict]]:
    """``(input id, row)`` for each input row the stage works on (:func:`usable_inputs`), keyed by the column its
    output names its input by; ``missing`` says what to do when the input table has no file at all."""
    if not run.has(spec.input):
        raise FileNotFoundError(f"{run.path / spec.input}: {missing}")
    key = spec.table.input_column
    return [(r[key], r) for r in usable_inputs(run, spec, columns)]


def source_values(run: RunDir, column: str) -> dict[str, Any]:
    """Image id -> one column of the run's source (a stage's context: the description, the image path); only
    that column is read."""
    t = run.read("source", [column])  # with its key column, image_id
    return dict(zip(t.column("image_id").to_pylist(), t.column(column).to_pylist()))


def request_seed(seed: int, stage: str, *parts: object) -> int:
    """The engine seed of one request: stable, derived from the global seed and the item (31 bits)."""
    return stable_int("request", seed, stage, *parts, bits=31)


@dataclass
class StageSummary:
    """Counts of one stage run (this shard): items in, samples out, parsed, correct, kept, dropped by reason."""

    stage: str
    shard: tuple[int, int] = (0, 1)
    counts: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows

    def table(self) -> Table:
        """A rich table of the counts (and the dropped rows by reason)."""
        i, n = self.shard
        t = Table(title=f"{self.stage} (shard {i}/{n})", show_header=True)
        t.add_column("what")
        t.add_column("count", justify="right")
        for key, value in self.counts.items():
            t.add_row(key.replace("_", " "), str(value))
        for reason, value in sorted(self.dropped.items()):
            t.add_row(f"  filtered: {reason}", str(value))
        return t

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "shard": list(self.shard), **self.counts, "dropped": dict(self.dropped)}


@dataclass
class ChunkPlan:
    """This shard's share of a stage, as a runner works through it: the inputs that are this shard's
    (``mine``), those not done yet (``pending``) and the chunks they form, in input order. Made (and valid)
    only while the shard's lock is held (:func:`open_chunks`)."""

    run: RunDir
    stage: str
    shard: tuple[int, int]
    settings: dict[str, Any] | None
    mine: list[tuple[str, Any]]
    pending: list[tuple[str, Any]]
    chunk_size: int

    @property
    def chunks(self) -> list[list[tuple[str, Any]]]:
        return [self.pending[s:s + self.chunk_size] for s in range(0, len(self.pending), self.chunk_size)]

    def write(self, chunk: Sequence[tuple[str, Any]], rows: list[dict[str, Any]]):
        """Write one chunk's rows atomically, with the ids of the inputs it covers and the settings."""
        table = pa.Table.from_pylist(rows, schema=TABLES[self.stage].schema)
        return self.run.write_chunk(self.stage, table, [k for k, _ in chunk], shard=self.shard,
                                    settings=self.settings)


@contextlib.contextmanager
def open_chunks(run: RunDir, stage: str, inputs: Sequence[tuple[str, Any]], *,
                shard: tuple[int, int] | str = (0, 1), chunk_size: int = DEFAULT_CHUNK_SIZE,
                settings: dict[str, Any] | None = None) -> Iterator[ChunkPlan]:
    """Hold the shard's lock and give its :class:`ChunkPlan`, after the checks every runner makes: one N for
    all shards of the stage, no temp files of a killed writer, finished chunks made with the same settings."""
    i, n = parse_shard(shard)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    with run.lock(f"shard-{i}-of-{n}"):
        other = run.shard_counts(stage) - {n}
        if other:
            raise StoreError(f"{run.path / stage}: written in {sorted(other)[0]} shards; run every shard of a stage "
                             f"with the same N (--shard i/{sorted(other)[0]})")
        run.remove_orphans(stage, (i, n))  # temp files of a killed writer of this shard
        if settings is not None:
            settings = json.loads(json.dumps(settings, sort_keys=True, default=str))
            for path, old in run.chunk_settings(stage).items():
                diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k)
                              and not (k == "templates" and k not in old))  # runs made before fingerprints
                if diff:
                    raise StoreError(f"{path}: made with other {stage} settings (differ in {diff}); use a new run "
                                     f"directory, or delete the {stage} folder to redo the stage")
        mine = [(k, v) for k, v in inputs if shard_of(k, n) == i]
        done = run.done_inputs(stage)
        pending = [(k, v) for k, v in mine if k not in done]
        yield ChunkPlan(run, stage, (i, n), settings, mine, pending, chunk_size)


def run_chunks(
    run: RunDir,
    stage: str,
    inputs: Sequence[tuple[str, Any]],
    make_rows: Callable[[list[tuple[str, Any]]], list[dict[str, Any]]],
    *,
    shard: tuple[int, int] | str = (0, 1),
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool = True,
    settings: dict[str, Any] | None = None,
) -> tuple[int, int]:
    """Process this shard's pending ``(input_id, item)`` pairs in chunks; return ``(items_in, skipped)``.

    Inputs are taken in the given order (callers sort them), so an interrupted run and a clean run form
    the same chunks. ``settings`` (the seed and the stage's config section) are stored with every chunk;
    resuming a stage whose finished chunks were made with other settings is an error naming a file, since
    the rows would mix two configurations.
    """
    with open_chunks(run, stage, inputs, shard=shard, chunk_size=chunk_size, settings=settings) as plan:
        bar = _progress(total=len(plan.mine), initial=len(plan.mine) - len(plan.pending), desc=stage,
                        enabled=progress)
        try:
            with gc_frozen():
                for chunk in plan.chunks:
                    plan.write(chunk, make_rows(chunk))
                    bar.update(len(chunk))
        finally:
            bar.close()
    return len(plan.mine), len(plan.mine) - len(plan.pending)


@contextlib.contextmanager
def gc_frozen() -> Iterator[None]:
    """Keep what exists now (the modules, the prepared inputs) out of the garbage collector's passes while the
    block runs: a stage loop allocates many short-lived containers, and each full pass also walked the hundred
    thousand objects of the imported libraries (about 5 % of stage 3). What the block allocates is collected as
    usual. Does nothing when the process has frozen objects itself (``gc.freeze`` does not nest)."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def process(
    run: RunDir,
    spec: StageSpec,
    inputs: Sequence[tuple[str, Any]],
    make_rows: Callable[[list[tuple[str, Any]]], list[dict[str, Any]]],
    config: Any,
    *,
    shard: tuple[int, int] | str,
    chunk_size: int | None,
    progress: bool,
) -> tuple[int, int, list[dict[str, Any]]]:
    """A stage's loop: :func:`run_chunks` with the run's chunk size and the settings of the stage's config
    section; returns ``(items_in, skipped, rows)``, ``rows`` being all of this shard's rows of the stage
    (earlier runs' included). The stage's input must be complete across all shards (:func:`require_input`)."""
    require_input(run, spec)
    items_in, skipped = run_chunks(run, spec.name, inputs, make_rows, shard=shard,
                                   chunk_size=chunk_size or config.chunk_size, progress=progress,
                                   settings=stage_settings(config, spec.section))
    return items_in, skipped, shard_rows(run, spec.name, in_shard([k for k, _ in inputs], shard),
                                         spec.summary_columns)


def run_stage_locally(spec: StageSpec, run: RunDir, engine: Any, config: Any, *, shard: tuple[int, int] | str,
                      progress: bool, chunk_size: int | None, prompts: Prompts | None = None,
                      **engines: Any) -> StageSummary:
    """A stage's ``run`` from its declared pieces: ``prepare``, then :func:`process` with ``make_rows`` on
    ``engine`` (and the stage's extra ``engines``, e.g. ``reformat_engine``), then ``finish``."""
    prompts = prompts or Prompts(config.template_dir)
    inputs, context = spec.prepare(run, config)
    items_in, skipped, rows = process(
        run, spec, inputs, lambda chunk: spec.make_rows(chunk, engine, config, prompts, context, **engines), config,
        shard=shard, chunk_size=chunk_size, progress=progress)
    model_ids = {"engine": engine.model_id, **{k: e.model_id for k, e in engines.items() if e is not None}}
    return spec.finish(run, config, rows, shard=shard, progress=progress, items_in=items_in, skipped=skipped,
                       model_ids=model_ids)


def stage_settings(config: Any, section: str) -> dict[str, Any]:
    """What a stage's rows depend on: the global seed, the template folder and the stage's config section
    (engine kind and options excluded: the same model may be served differently on different machines)."""
    d = config.to_dict()
    sec = {k: v for k, v in d[section].items() if k not in ("engine", "engine_options")}
    return {"seed": d["seed"], "template_dir": d["template_dir"], section: sec,
            "templates": Prompts(config.template_dir).fingerprint()}


class IncompleteInput(StoreError):
    """A stage's input is not complete (another shard has not finished the stage before)."""


def progress_of(run: RunDir, spec: StageSpec) -> tuple[set[str], set[str]]:
    """``(done, expected)`` input ids of a stage: what it has covered, of the inputs it works on."""
    col = spec.table.input_column
    expected: set[str] = set()
    for t in run.tables(spec.input, [col, *([spec.usable] if spec.usable else [])]):  # two columns, file by file
        expected.update((t.filter(t.column(spec.usable)) if spec.usable else t).column(col).to_pylist())
    return run.done_inputs(spec.name) & expected, expected


def missing_inputs(run: RunDir, spec: StageSpec) -> str:
    """"" when every stage before ``spec`` is complete across all shards, else what is missing, in words."""
    before = _SPECS.get(spec.input)
    if before is None:
        return ""
    behind = missing_inputs(run, before)
    if behind:
        return behind
    done, expected = progress_of(run, before)
    if len(done) == len(expected):
        return ""
    shards = sorted(run.shard_counts(before.name)) or [1]
    n = shards[0]
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


def summarise(stage: str, shard: tuple[int, int] | str, rows: list[dict[str, Any]], *, items_in: int,
              skipped: int, extra: dict[str, int] | None = None) -> StageSummary:
    """Counts for a sample-producing stage (2 or 3): :func:`builder.records.tally` of its rows."""
    dropped = Counter(r["drop_reason"] for r in rows if not r["keep"])
    t = tally(pa.Table.from_pylist(rows, schema=TABLES[stage].schema))
    counts = {"items_in": items_in, "items_already_done": skipped, **(extra or {}), "samples_out": t["rows"],
              **{k: t[k] for k in ("parsed", "correct", "kept", "kept_correct")}}
    return StageSummary(stage=stage, shard=parse_shard(shard), counts=counts, dropped=dict(dropped))


def report(summary: StageSummary, run: RunDir, progress: bool, **manifest: Any) -> StageSummary:
    """Record the summary in the manifest and print its table when ``progress`` is on."""
    i, n = summary.shard
    run.update_manifest(counts=run.counts(), summaries={f"{summary.stage}/{i}-of-{n}": summary.as_dict()},
                        **manifest)
    if progress:
        Console(stderr=True).print(summary.table())
    return summary


def load_image(path: str, where: str):
    """Open an image as RGB; a missing or unreadable file is an error naming it and the item."""
    from PIL import Image, UnidentifiedImageError

    if not path:
        raise FileNotFoundError(f"{where}: the source row has no image_path")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"{where}: image file {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{where}: image file {path} cannot be read: {e}") from None


__all__ = ["DEFAULT_CHUNK_SIZE", "ChunkPlan", "IncompleteInput", "StageSpec", "open_chunks", "run_stage_locally", "missing_inputs", "progress_of", "require_input", "StageSummary", "in_shard", "load_image", "process", "report", "request_seed",
           "run_chunks", "keyed_inputs", "shard_rows", "source_values", "stage_settings", "summarise", "usable_inputs"]
