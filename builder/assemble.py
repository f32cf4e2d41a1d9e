"""Assemble training sets from a run directory's labelled stage records (docs/method.md, "The sets").

Trace types (``cot_type``): ``O`` / ``X`` a correct / wrong simple thought (stage 2); ``O_O``, ``O_X``,
``X_O``, ``X_X`` an expansion (stage 3) of a correct (``O_``) or wrong (``X_``) simple thought that ends
correct (``_O``) or wrong (``_X``). Only kept records count (``keep`` is set by the stages: parsed, no bad
word, no duplicate).

Sets:

* ``sft``: O ∪ O→O length-weighted subsampled to ``sft_ratio`` (10 %), plus X→O subsampled to the same
  size (50/50 by construction: when X→O is short, both halves shrink to its size; a run with no X→O trace
  has an empty SFT set, and :func:`why_empty` says so; ``sft_balance=False`` keeps the correct half).
* ``dpo``: preference pairs tagged with their ``kind`` (see :data:`PAIR_KINDS`); both sides render the
  answer the same way (docs/method.md, defect 5), so a rejected side must name an option (``pred_index >= 0``).
* ``simple_cot``: correct simple thoughts, length-weighted subsampled to ``simple_cot_ratio`` (1/3.75).
* ``mcq`` / ``mcq_direct``: one row per valid MCQ with the think / direct-answer system prompt.

Every ratio and pair kind is an :class:`AssembleOptions` field; every draw is seeded per item with
:func:`builder.records.rng_for`.

How (columnar, with pyarrow, in memory that does not grow with the texts of the run): a set is first
*planned* on small columns only (:func:`trace_index`: one pass over each stage file keeps trace types, id
ranks, MCQ / sample / prompt codes, lengths and predicted indices; ids are held as 16-byte prefixes and 64-bit
hashes, and only ids whose prefixes tie are read again in full), then *rendered* in record batches: the texts
its rows need are routed from the stage files to their output positions (:class:`_Routed`: one pass over the
files that hold a wanted row, each row to the bucket of its position, in memory under a budget and through
Arrow IPC spill files past it; the raw configs' external sort is the same route). What stays Python is the
seeded draw per group (``random.Random`` per item, bit-identical to the row code it replaces) and the content
ids of emitted rows. :func:`batches` yields a config's rows as record batches of its Arrow schema; ``*_table``
functions return a whole ``pyarrow.Table``; the ``build_*`` functions return the same rows as dicts
(``table.to_pylist()``), as before.
"""

from __future__ import annotations

import array
import dataclasses
import hashlib
import json
import os
import random
import shutil
import tempfile
import threading
from dataclasses import dataclass
from functools import lru_cache
from json.encoder import encode_basestring as _json_str  # json.dumps(str, ensure_ascii=False)
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from builder.answers import ANSWER_FORMATS, LETTERS, OPTION_STYLES, format_answer, shuffle_options
from builder.ids import find, id_hash
from builder.prompts import Prompts
from builder.records import rng_for
from builder.stages import STAGES, TABLES, table_for
from builder.store import StoreError


T = TypeVar("T")

TRACE_TYPES = ("O", "X", "O_O", "O_X", "X_O", "X_X")
PAIR_KINDS = ("O>X", "O>O_X", "X_O>X", "X_O>X_X", "O>O_O", "O>X_X")
"""Pair kinds, chosen ≻ rejected. The first four are correctness pairs, ``O>O_O`` the compactness pair the
paper describes (the authors' code dropped it); ``O>X_X`` is an extra kind the authors' code built (a
correct simple thought over a wrong-then-still-wrong expansion of the same MCQ), off by default."""
DEFAULT_PAIR_KINDS = PAIR_KINDS[:5]

# Scope of each kind: "mcq" pairs any two traces of one MCQ shown the same prompt; "sample" pairs a simple
# thought with its own expansions, or two expansions of the same simple thought.
_KIND_SCOPE = {"O>X": "mcq", "O>X_X": "mcq", "O>O_X": "sample", "O>O_O": "sample", "X_O>X": "sample",
               "X_O>X_X": "sample"}

BATCH_ROWS = 8192  # rows per rendered record batch
SORT_MEMORY_BYTES = 512 * 1024 * 1024  # a raw stage bigger than this (uncompressed) is sorted through a spill
# (it sets where a spilled raw config's batches end, hence its row groups: changing it changes the files' bytes)
SPILL_BUCKET_BYTES = 64 * 1024 * 1024  # what a raw sort's spill bucket holds (memory; the output does not depend on it)
SPILL_FLUSH_BYTES = 128 * 1024 * 1024  # spill pieces held before they are written, one batch per bucket (at most
# a route's memory budget)


DPO_PAIR_RULES = ("authors", "all")
"""``authors``: the pairs of each kind are enumerated, then each chosen response is kept once (and, for the X→O
kinds, each rejected one too), as the authors' code did with ``drop_duplicates``; which pair survives is drawn
by a generator seeded per kind. ``all``: every candidate pair (the project's first construction)."""


@dataclass(frozen=True)
class AssembleOptions:
    """Every knob of the assembly. ``answer_format=None`` keeps the format each prompt asked for."""

    seed: int = 0
    sft_ratio: float = 0.1
    sft_balance: bool = True  # X→O subsampled to the size of the O ∪ O→O half
    simple_cot_ratio: float = 1 / 3.75
    pair_kinds: tuple[str, ...] = DEFAULT_PAIR_KINDS
    answer_format: str | None = None
    dpo_pairs: str = "authors"  # "authors": each chosen response once (X→O kinds: each rejected once too); "all"

    def __post_init__(self) -> None:
        unknown = set(self.pair_kinds) - set(PAIR_KINDS)
        if unknown:
            raise ValueError(f"unknown pair kinds {sorted(unknown)}; choose from {PAIR_KINDS}")
        if self.dpo_pairs not in DPO_PAIR_RULES:
            raise ValueError(f"dpo_pairs must be one of {DPO_PAIR_RULES}, got {self.dpo_pairs!r}")
        for name in ("sft_ratio", "simple_cot_ratio"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")

    def replace(self, **changes: Any) -> "AssembleOptions":
        return dataclasses.replace(self, **changes)


# -------------------------------------------------------------------------------------------------- schemas

_STR = pa.string()
MESSAGE = pa.struct([("role", _STR), ("content", _STR)])
MESSAGES = pa.list_(MESSAGE)
SFT_SCHEMA = pa.schema([("example_id", _STR), ("image_id", _STR), ("mcq_id", _STR), ("sample_id", _STR),
                        ("expansion_id", _STR), ("cot_type", _STR), ("question_type", _STR),
                        ("messages", MESSAGES), ("simple_thought", _STR)])
DPO_SCHEMA = pa.schema([("example_id", _STR), ("image_id", _STR), ("mcq_id", _STR), ("kind", _STR),
                        ("question_type", _STR), ("prompt", MESSAGES), ("chosen", MESSAGES),
                        ("rejected", MESSAGES), ("chosen_id", _STR), ("rejected_id", _STR),
                        ("chosen_type", _STR), ("rejected_type", _STR)])
MCQ_SCHEMA = pa.schema([("example_id", _STR), ("image_id", _STR), ("mcq_id", _STR), ("question", _STR),
                        ("question_type", _STR), ("options", pa.list_(_STR)), ("answer_index", pa.int32()),
                        ("answer", _STR), ("messages", MESSAGES)])
SCHEMAS: dict[str, pa.Schema] = {
    "sft": SFT_SCHEMA, "dpo": DPO_SCHEMA, "mcq": MCQ_SCHEMA, "mcq_direct": MCQ_SCHEMA, "simple_cot": SFT_SCHEMA,
    **{f"raw_{s.name}": s.table.schema for s in STAGES},  # every record of a stage, as written
}
"""The Arrow schema of each run config (the ``datasets`` features' ``arrow_schema``, same column order)."""


@lru_cache(maxsize=None)
def schema(name: str) -> pa.Schema:
    """The Arrow schema of run config ``name`` with the ``huggingface`` features metadata ``datasets`` writes."""
    from datasets import Features

    return Features.from_arrow_schema(SCHEMAS[name]).arrow_schema


# --------------------------------------------------------------------------------------------------- traces


@dataclass(frozen=True)
class Trace:
    """One labelled thought (a simple CoT or an expansion) with the prompt it answers."""

    cot_type: str
    trace_id: str  # sample_id for O/X, expansion_id for expansions
    image_id: str
    mcq_id: str
    sample_id: str
    expansion_id: str
    system_prompt: str
    user_text: str
    options: tuple[str, ...]
    answer_index: int
    answer_format: str
    question_type: str
    thought: str
    pred_index: int
    simple_thought: str = ""  # the stage-2 thought an expansion grew from ("" for O / X)

    @property
    def correct(self) -> bool:
        return self.pred_index == self.answer_index

    @property
    def prompt_key(self) -> tuple[str, str]:
        return (self.system_prompt, self.user_text)

    @property
    def added_length(self) -> int:
        """Length of what the expansion added (the whole thought for a simple one)."""
        return len(self.thought) - len(self.simple_thought)

    def answer(self, answer_format: str | None = None) -> str:
        return format_answer(self.options, self.pred_index, answer_format or self.answer_format)

    def target(self, answer_format: str | None = None) -> str:
        """``<think> {thought} </think> <answer> {answer} </answer>``; the answer in the requested format."""
        return f"<think> {self.thought} </think> <answer> {self.answer(answer_format)} </answer>"


# ----------------------------------------------------------------------------------------------- reading

_SAMPLE_COLUMNS = ("sample_id", "mcq_id", "image_id", "question_type", "options", "answer_index", "answer_format",
                   "system_prompt", "user_text", "thought", "pred_index", "correct")
_REPEATED = ("system_prompt", "user_text", "question_type", "answer_format", "image_id")  # read as dictionaries


def _read(run: Any, stage: str, columns: Sequence[str], *, kept: bool = False,
          dictionary: Sequence[str] = ()) -> pa.Table:
    """The rows of ``stage`` (every file of it, unsorted), only ``columns``; ``kept``: only rows with ``keep``.

    ``dictionary`` columns come back dictionary-encoded (one copy of each distinct prompt in memory).
    """
    full = TABLES[stage].schema
    dictionary = [c for c in dictionary if c in columns]
    want = pa.schema([pa.field(c, pa.dictionary(pa.int32(), _STR)) if c in dictionary else full.field(c)
                      for c in columns])
    read = list(columns) + (["keep"] if kept and "keep" not in columns else [])
    parts = []
    for p in _files(run, stage):
        for batch in _batches(stage, p, read, dictionary=dictionary):
            if kept:
                batch = batch.filter(batch.column("keep"))
            batch = batch.select(list(columns))
            parts.append(batch if batch.schema == want else batch.cast(want))
    t = pa.Table.from_batches(parts) if parts else want.empty_table()
    return t if t.schema == want else t.cast(want)


def _files(run: Any, stage: str) -> list[Path]:
    try:
        files = run.files(stage)
    except FileNotFoundError:
        return []
    release_memory()  # a reader rule may have read the files' input ids
    return files


class _Listed:
    """A run whose stage file lists are taken once (a trace index reads each stage several times; the store's
    reader rule checks every file's footer and input ids on each listing). Other attributes are the run's."""

    def __init__(self, run: Any) -> None:
        self._run, self._files = run, {}

    def files(self, stage: str) -> list[Path]:
        if stage not in self._files:
            self._files[stage] = _files(self._run, stage)
        return self._files[stage]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._run, name)


def _batches(stage: str, p: Path, columns: Sequence[str] | None = None, *, dictionary: Sequence[str] = (),
             batch_rows: int = 65536, row_groups: Sequence[int] | None = None,
             file: pq.ParquetFile | None = None) -> Iterator[pa.RecordBatch]:
    """One file of a stage, ``batch_rows`` at a time (``columns``: only those; ``row_groups``: only those), its
    columns checked."""
    f = file if file is not None else _parquet(stage, p, dictionary)
    try:
        for batch in f.iter_batches(batch_size=batch_rows, columns=list(columns) if columns else None,
                                    row_groups=row_groups):
            yield batch.replace_schema_metadata(None)
    except Exception as e:
        raise _unreadable(p, e) from None


def _parquet(stage: str, p: Path, dictionary: Sequence[str] = ()) -> pq.ParquetFile:
    """One file of a stage, opened, its columns checked against the stage's schema."""
    full = TABLES[stage].schema
    try:
        f = pq.ParquetFile(p, read_dictionary=list(dictionary) or None)
        names = f.schema_arrow.names
    except Exception as e:  # pyarrow raises several types for a truncated or foreign file
        raise _unreadable(p, e) from None
    if names != full.names:
        raise StoreError(f"{p}: columns {names} do not match the {stage!r} schema {full.names}")
    return f


def _stream(run: Any, stage: str, columns: Sequence[str], *, rows: np.ndarray | None = None,
            dictionary: Sequence[str] = (), batch_rows: int = 16384) -> Iterator[tuple[int, pa.RecordBatch]]:
    """``(number of its first row, batch)`` over every file of ``stage`` in order, rows numbered across the files;
    ``rows`` (sorted): only the row groups that hold one of them are read."""
    start = 0
    for p in _files(run, stage):
        f = _parquet(stage, p, dictionary)
        sizes = np.array([f.metadata.row_group(g).num_rows for g in range(f.metadata.num_row_groups)], np.int64)
        firsts = start + np.cumsum(sizes) - sizes
        if rows is None:
            wanted = np.ones(len(sizes), bool)
        else:
            lo = np.searchsorted(rows, firsts)
            wanted = (lo < len(rows)) & (rows[np.minimum(lo, max(0, len(rows) - 1))] < firsts + sizes) if len(rows) \
                else np.zeros(len(sizes), bool)
        for run_groups in _runs(np.flatnonzero(wanted)):  # consecutive row groups: one reader each
            at = int(firsts[run_groups[0]])
            for batch in _batches(stage, p, columns, row_groups=run_groups, file=f, batch_rows=batch_rows):
                yield at, batch
                at += batch.num_rows
                _release(batch.nbytes)
        start += int(sizes.sum())
    release_memory()  # what the last batches freed goes back too (the next hand-back may be far off)


def _runs(groups: np.ndarray) -> list[list[int]]:
    """Row-group numbers split into runs of consecutive ones."""
    if not len(groups):
        return []
    cuts = np.flatnonzero(np.diff(groups) != 1) + 1
    return [part.tolist() for part in np.split(groups, cuts)]


def release_memory() -> None:
    """Hand freed memory back to the system: Arrow's allocator's cached pages (mimalloc holds freed pages per
    thread: without this, reading a stage leaves several times the live data resident) and, with glibc, the
    C heap's free pages (numpy's)."""
    pa.default_memory_pool().release_unused()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _libc() -> Any:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc
        return None


_LIBC = _libc()
RELEASE_EVERY_BYTES = 256 * 1024 * 1024  # data moved between two hand-backs of freed pages (see _release)
_moved = threading.local()


def _release(nbytes: int) -> None:
    """Hand freed pages back (:func:`release_memory`) once this thread has moved ``RELEASE_EVERY_BYTES`` of data
    since the last time. Handing them back after every batch kept memory lowest but cost more system time than
    the work itself (each new buffer faulted its pages in again: 18.8 s of system time in a 30 s raw sort at 1M,
    6 s with this)."""
    done = getattr(_moved, "bytes", 0) + nbytes
    if done >= RELEASE_EVERY_BYTES:
        release_memory()
        done = 0
    _moved.bytes = done


def _unreadable(path: Path, e: Exception) -> Exception:
    return StoreError(f"{path}: unreadable parquet file ({type(e).__name__}: {e}); delete it and rerun the stage "
                      f"to redo its inputs")


def _one_chunk(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A column as one array (dictionaries unified; texts past 2 GiB in all as large_string)."""
    if isinstance(col, pa.Array):
        return col
    if col.num_chunks == 1:
        return col.chunk(0)
    if pa.types.is_dictionary(col.type):
        col = col.unify_dictionaries()
    try:
        return col.combine_chunks()
    except pa.ArrowInvalid:  # offset overflow
        return col.cast(pa.large_string()).combine_chunks()


def _concat_texts(arrays: Sequence[pa.Array]) -> pa.Array:
    if not arrays:
        return pa.array([], _STR)
    try:
        return pa.concat_arrays([a.cast(_STR) for a in arrays])
    except pa.ArrowInvalid:  # offset overflow
        return pa.concat_arrays([a.cast(pa.large_string()) for a in arrays])


def _codes(col: pa.Array) -> np.ndarray:
    """Dense integer codes of a column's values (equal values, equal codes)."""
    col = _one_chunk(col)
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col)
    uniq = pc.dictionary_encode(col.dictionary).indices.to_numpy()  # a dictionary may repeat a value
    return uniq[col.indices.to_numpy()].astype(np.int64)


def _rank_codes(col: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """``(codes, names)``: codes ordered like the values (``names[code]`` is the value), names sorted."""
    col = _one_chunk(col).cast(_STR)
    names = pc.unique(col)
    names = names.take(pc.sort_indices(names))
    return pc.index_in(col, value_set=names).to_numpy(zero_copy_only=False).astype(np.int64), names


def _positions(values: pa.Array, among: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(at, found)``: where each value is in ``among`` (0 where it is not) and whether it is."""
    at = pc.index_in(_one_chunk(values), value_set=_one_chunk(among))
    return (at.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64),
            at.is_valid().to_numpy(zero_copy_only=False))


# ----------------------------------------------------------------------------------------------- routing

ROUTE_MEMORY_BYTES = 128 * 1024 * 1024  # the texts a set holds in memory while it is rendered


class _Routed:
    """Rows of one stream of a stage put in the orders several consumers want (one *family* each): output row
    ``j`` of family ``f`` is the stream's row ``takes[f][j]`` (a row may feed several outputs).

    One pass over the stream: each wanted row goes to the bucket of its output position (``bucket_rows``
    outputs a bucket), kept in memory when a family fits in one bucket, else in an Arrow IPC spill file; then
    :meth:`batches` puts each bucket in order, one bucket in memory at a time. A dictionary column travels as
    indices into the concatenation of the dictionaries of the batches that fed it (kept in memory). This is the
    one rule for moving rows to where they go without holding them all: the raw configs' sort and the sets'
    texts use it alike."""

    def __init__(self, rows: Iterable[tuple[int, pa.RecordBatch]], takes: Sequence[np.ndarray], *,
                 memory_bytes: int = ROUTE_MEMORY_BYTES, bucket_rows: int | None = None,
                 batch_rows: int = BATCH_ROWS, prefix: str = "lpt-route-", block_rows: int | None = None) -> None:
        self.takes = [_narrow(np.asarray(t) if isinstance(t, np.ndarray) else np.asarray(t, np.int64)) for t in takes]
        self._block = block_rows  # batches also end every block_rows outputs (whatever the buckets)
        self.batch_rows = batch_rows
        self._memory, self._bucket_rows, self._prefix = memory_bytes, bucket_rows, prefix
        self.bucket_rows: list[int] = []
        self.spill: Path | None = None
        self.codec: str | None = None  # the spill files' compression (see _spill_codec)
        self._pending: dict[tuple[int, int], list[pa.RecordBatch]] = {}  # spill pieces not yet written, by bucket
        self._pending_bytes = 0
        self._sinks: list[dict[int, Any]] = [{} for _ in takes]
        self._dicts: dict[str, list[pa.Array]] = {}
        self._dict_len: dict[str, int] = {}
        self._indexed: dict[str, bool] = {}
        self._last: dict[str, tuple[tuple, int]] = {}  # per column: its last dictionary and where it starts
        self._schema: pa.Schema | None = None
        self.texts: dict[str, pa.Array] = {}
        try:
            self._fill(rows)
        except BaseException:
            self.close()
            raise

    @property
    def buckets(self) -> int:
        """Buckets written to spill files (0: every family stayed in memory)."""
        return sum(len(s) for f, s in enumerate(self._sinks) if self.bucket_rows and self._grid(f)[1] < len(self.takes[f]))

    def _grid(self, f: int) -> tuple[int, int]:
        """``(block, sub)``: family ``f``'s outputs in blocks of ``block`` rows (all of them without
        ``block_rows``), each block in buckets of ``sub`` rows (with blocks: a multiple of ``batch_rows``, so the
        batches end where they would with one bucket a block)."""
        total, size = len(self.takes[f]), self.bucket_rows[f]
        if not self._block:
            return max(1, total), size
        block = max(1, self._block)
        return block, block if size >= block else max(self.batch_rows, size // self.batch_rows * self.batch_rows)

    def _fill(self, rows: Iterable[tuple[int, pa.RecordBatch]]) -> None:
        by_src = [_narrow(np.argsort(t, kind="stable")) for t in self.takes]
        src = [t[o] for t, o in zip(self.takes, by_src)]
        for start, batch in rows:
            end = start + batch.num_rows
            spans = [(int(np.searchsorted(s, start)), int(np.searchsorted(s, end))) for s in src]
            if all(lo == hi for lo, hi in spans):
                continue
            batch = self._plain(batch)
            if not self.bucket_rows:
                self._size(batch)
            for f, (lo, hi) in enumerate(spans):
                if lo < hi:
                    self._put(f, batch, src[f][lo:hi] - start, by_src[f][lo:hi])
        self._flush()
        for sinks in self._sinks:
            for sink in sinks.values():
                if not isinstance(sink, list):
                    sink.close()
        self.texts = {name: _concat_texts(ds) for name, ds in self._dicts.items()}
        self._dicts = {}

    def _plain(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Dictionary columns as global indices (a dictionary the batches of one row group share, once); one whose
        dictionary holds over 8 bytes a row (decided at its first batch) as plain strings: its dictionaries would
        grow with the stage."""
        columns = []
        for name, col in zip(batch.schema.names, batch.columns):
            if pa.types.is_dictionary(col.type) and not self._indexed.setdefault(
                    name, col.dictionary.nbytes <= 8 * len(col)):
                col = col.cast(col.type.value_type)
            if pa.types.is_dictionary(col.type):
                d = col.dictionary
                same = (d.buffers()[-1].address if d.buffers()[-1] is not None else 0, len(d), d.offset)
                if self._last.get(name, (None,))[0] != same:
                    self._last[name] = (same, self._dict_len.get(name, 0))
                    self._dicts.setdefault(name, []).append(d)
                    self._dict_len[name] = self._last[name][1] + len(d)
                col = pc.add(col.indices.cast(pa.int64()), self._last[name][1])
            columns.append(col)
        batch = pa.RecordBatch.from_arrays(columns, names=batch.schema.names)
        self._schema = self._schema or batch.schema
        return batch

    def _size(self, batch: pa.RecordBatch) -> None:
        """Outputs a bucket: the memory budget over the families, at the first batch's bytes a row."""
        per_row = max(1, batch.nbytes // max(1, batch.num_rows))
        share = self._bucket_rows or max(self.batch_rows, self._memory // per_row // max(1, len(self.takes)) // 2)
        self.bucket_rows = [max(1, min(int(share), len(t))) for t in self.takes]
        self.codec = _spill_codec(per_row * sum(len(t) for t in self.takes))

    def _put(self, f: int, batch: pa.RecordBatch, rows: np.ndarray, out: np.ndarray) -> None:
        """Rows ``rows`` of ``batch`` (outputs ``out``) to their buckets' sinks, taken in one copy."""
        block, sub = self._grid(f)
        b = out // block * -(-block // sub) + out % block // sub
        by_bucket = np.argsort(b, kind="stable")
        part = batch.take(pa.array(rows[by_bucket]))
        part = pa.RecordBatch.from_arrays(part.columns + [pa.array(out[by_bucket] % block % sub)],
                                          names=part.schema.names + ["__slot"])
        b = b[by_bucket]
        bounds = np.flatnonzero(np.diff(b)) + 1
        for lo, hi in zip(np.r_[0, bounds].tolist(), np.r_[bounds, len(b)].tolist()):
            bi = int(b[lo])
            sinks = self._sinks[f]
            if bi not in sinks:
                if sub >= len(self.takes[f]):
                    sinks[bi] = []
                else:
                    if self.spill is None:
                        self.spill = Path(tempfile.mkdtemp(prefix=self._prefix))
                    sinks[bi] = pa.ipc.new_file(str(self.spill / f"{f}-{bi}.arrow"), part.schema,
                                                options=pa.ipc.IpcWriteOptions(compression=self.codec))
            piece = part.slice(lo, hi - lo)
            if isinstance(sinks[bi], list):
                sinks[bi].append(piece)
            else:  # held until SPILL_FLUSH_BYTES are pending, then written one batch a bucket
                self._pending.setdefault((f, bi), []).append(piece)
                self._pending_bytes += piece.nbytes
        if self._pending_bytes >= min(SPILL_FLUSH_BYTES, self._memory):
            self._flush()

    def _flush(self) -> None:
        """Write the pending pieces of each spill bucket as one record batch. One write per input batch and
        bucket made ~800K tiny writes (and as many LZ4 frames per column) in a 10M-record sort, whose cost
        grew with the square of the run."""
        for (f, bi), pieces in self._pending.items():
            self._sinks[f][bi].write_batch(pa.concat_batches(pieces) if len(pieces) > 1 else pieces[0])
        self._pending, self._pending_bytes = {}, 0

    def batches(self, f: int) -> Iterator[pa.RecordBatch]:
        """Family ``f``'s rows in output order, ``batch_rows`` at a time (dictionary columns as strings again)."""
        total = len(self.takes[f])
        block, sub = self._grid(f) if self.bucket_rows else (1, 1)
        per = -(-block // sub)
        for bi in range(-(-total // block) * per if total else 0):
            start = bi // per * block + bi % per * sub
            end = min(total, (bi // per + 1) * block)
            if start >= end:
                continue
            want = min(sub, end - start)
            t = self._bucket(f, bi)
            if t.num_rows != want:
                raise StoreError(f"a stage changed while it was read: {want} rows expected, {t.num_rows} found")
            local = np.empty(t.num_rows, np.int64)
            local[t["__slot"].to_numpy()] = np.arange(t.num_rows)
            t = t.drop_columns(["__slot"])
            for sl in _chunks(t.num_rows, self.batch_rows):
                part = t.take(pa.array(local[sl]))
                yield pa.RecordBatch.from_arrays(
                    [self.texts[n].take(_one_chunk(part.column(n))) if n in self.texts else _one_chunk(part.column(n))
                     for n in part.column_names], names=part.column_names)
            _release(t.nbytes)
            del t

    def _bucket(self, f: int, bi: int) -> pa.Table:
        sink = self._sinks[f].pop(bi, None)
        if sink is None:
            return (self._schema or pa.schema([])).append(pa.field("__slot", pa.int64())).empty_table()
        if isinstance(sink, list):
            return pa.Table.from_batches(sink).combine_chunks()
        path = self.spill / f"{f}-{bi}.arrow"
        with pa.OSFile(str(path)) as source:  # read, not mapped: a mapped file faults its pages in one at a time
            t = pa.ipc.open_file(source).read_all().combine_chunks()
        os.unlink(path)
        return t

    def close(self) -> None:
        self._sinks = [{} for _ in self.takes]
        if self.spill is not None:
            shutil.rmtree(self.spill, ignore_errors=True)


def _spill_codec(spill_bytes: int) -> str | None:
    """``"lz4"`` when a spill of about ``spill_bytes`` (in Arrow) would take over half the free space of the
    temporary folder, else None. Uncompressed spill files cost the least CPU, but a 10M-record raw sort spills
    ~37 GB; LZ4 makes them ~2.5x smaller for ~40% more CPU in the sort. The rows out are the same either way."""
    return "lz4" if spill_bytes > _free_bytes() // 2 else None


def _free_bytes() -> int:
    return shutil.disk_usage(tempfile.gettempdir()).free


class _Pull:
    """Rows of a stream of batches, ``n`` at a time."""

    def __init__(self, batches: Iterator[pa.RecordBatch], schema: pa.Schema | None = None) -> None:
        self._it, self._pending, self._schema = batches, [], schema

    def take(self, n: int) -> pa.Table:
        have = sum(b.num_rows for b in self._pending)
        while have < n:
            b = next(self._it)
            self._pending.append(b)
            have += b.num_rows
        if not self._pending:
            return self._schema.empty_table() if self._schema is not None else pa.table({})
        t = pa.Table.from_batches(self._pending)
        self._pending = t.slice(n).to_batches()
        return t.slice(0, n).combine_chunks()


# ------------------------------------------------------------------------------------------ trace tables


@dataclass
class _Traces:
    """Traces as small columns, one row per trace in *list order* (a run's: by ``(cot_type, trace_id)``).

    No text is held: the planners read these columns; a run's rows are rendered by routing the texts they need
    from the stage files (``src``)."""

    cot_type: np.ndarray  # index into TRACE_TYPES
    key: np.ndarray  # dense rank of the trace id (equal ids, equal ranks; rank order = the ids' string order)
    mcq: np.ndarray  # rank code of mcq_id (code order = string order); mcq_names[code] is the id
    mcq_names: pa.Array
    sample: np.ndarray  # code of sample_id
    prompt: np.ndarray  # code of (system_prompt, user_text)
    length: np.ndarray  # len(thought) (code points)
    added: np.ndarray  # len(thought) - len(simple_thought)
    pred: np.ndarray
    thought_bytes: np.ndarray  # UTF-8 length of each thought
    answer_bytes: Callable[[str | None, np.ndarray], np.ndarray]  # UTF-8 length of some traces' answers in a format
    targets: Callable[[np.ndarray, str | None], list]  # per trace of some: equal iff their rendered targets are
    trace_ids: Callable[[np.ndarray], pa.Array]  # the ids of some traces
    src: "_RunSource | None" = None
    plans: dict[tuple[str, "AssembleOptions"], Any] = dataclasses.field(default_factory=dict)  # see plan_ahead

    def __len__(self) -> int:
        return len(self.cot_type)

    def plan_ahead(self, names: Sequence[str], opts: "AssembleOptions") -> None:
        """Plan the sets ``names`` (``sft``, ``dpo``, ``simple_cot``) now, then let go of the columns only the
        planners read (:data:`_PLANNER_ONLY`, the answers' lengths, the targets' reader): rendering needs the
        rest. At 13M traces that is ~0.35 GB less while the sets are written beside a raw config's sort."""
        for name in names:
            self.plans[(name, opts)] = _PLANNERS[name](self, opts)
        for column in _PLANNER_ONLY:
            setattr(self, column, None)
        self.answer_bytes = self.targets = None  # type: ignore[assignment]
        release_memory()

    def planned(self, name: str, opts: "AssembleOptions") -> Any:
        """The plan of set ``name``: the one :meth:`plan_ahead` made (let go once taken), else made now."""
        if (name, opts) in self.plans:
            return self.plans.pop((name, opts))
        if self.key is None:
            raise RuntimeError(f"the trace index let go of its planner columns before {name!r} was planned with "
                               f"these options; plan it in plan_ahead")
        return _PLANNERS[name](self, opts)

    def of_type(self, *types: str) -> np.ndarray:
        return np.flatnonzero(np.isin(self.cot_type, [TRACE_TYPES.index(t) for t in types]))


_PLANNER_ONLY = ("key", "mcq", "prompt", "length", "added", "thought_bytes")  # what rendering never reads


@dataclass
class _RunSource:
    """Where a run's traces are in its stage files: rows numbered across each stage's files (:func:`_stream`)."""

    run: Any
    s_row: np.ndarray  # per kept sample: its row in the simple-CoT stage
    s: np.ndarray  # per trace: its kept sample
    e_row: np.ndarray  # per trace: its row in the expansion stage (-1 for a simple thought)
    memory_bytes: int = ROUTE_MEMORY_BYTES
    buckets: list[int] = dataclasses.field(default_factory=list)  # spill buckets of each route (tests read it)

    @property
    def expansion(self) -> np.ndarray:
        return self.e_row >= 0


_S_INDEX = ("sample_id", "mcq_id", "system_prompt", "user_text", "answer_format", "options", "thought", "pred_index",
            "correct", "keep")
_S_INDEX_DICT = ("mcq_id", "system_prompt", "user_text", "answer_format")
_E_INDEX = ("expansion_id", "sample_id", "long_thought", "pred_index", "correct", "keep")


def _id_prefix(ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(hi, lo)``: the first 16 UTF-8 bytes of each id (zero-padded) as two big-endian integers, so that ids
    that differ in those bytes compare like the ids (byte order is code point order)."""
    ids = _one_chunk(ids).cast(pa.large_string())
    n = len(ids)
    offsets = np.frombuffer(ids.buffers()[1], np.int64)[ids.offset: ids.offset + n + 1]
    data = np.frombuffer(ids.buffers()[2], np.uint8) if ids.buffers()[2] is not None else np.zeros(1, np.uint8)
    width = np.arange(16)
    at = offsets[:-1, None] + width
    inside = width < np.diff(offsets)[:, None]
    mat = np.where(inside, data[np.clip(at, 0, max(0, len(data) - 1))], 0).astype(np.uint8)
    words = mat.view(">u8").astype(np.uint64)
    return words[:, 0].copy(), words[:, 1].copy()


def _dict_codes(col: pa.Array, codes: dict, *, digest: bool = False) -> np.ndarray:
    """Codes of a dictionary column's values, numbered across calls in ``codes`` (by the value, or by a 128-bit
    BLAKE2b digest of it: long texts are not kept)."""
    col = _one_chunk(col)
    values = col.dictionary.to_pylist()
    keys = [hashlib.blake2b(v.encode("utf-8"), digest_size=16).digest() if digest and v is not None else v
            for v in values]
    local = np.array([codes.setdefault(k, len(codes)) for k in keys], np.int64)
    return local[col.indices.to_numpy(zero_copy_only=False)] if len(local) else np.zeros(len(col), np.int64)


def _index_samples(run: Any) -> dict[str, Any]:
    """The small columns of every kept simple CoT (one pass over the stage, its texts only measured)."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("row", "hi", "lo", "h", "mcq", "sys", "user", "fmt",
                                                          "opt_bytes", "opt_count", "len", "bytes", "pred", "ok")}
    mcq_codes: dict[str, int] = {}
    sys_codes: dict[bytes, int] = {}
    user_codes: dict[bytes, int] = {}
    fmt_codes: dict[str, int] = {f: i for i, f in enumerate(ANSWER_FORMATS)}
    for start, b in _stream(run, table_for("short_thought"), _S_INDEX, dictionary=_S_INDEX_DICT):
        b = _kept_measured(start, b, "thought", "sample_id", parts)
        if b is None:
            continue
        parts["h"].append(id_hash(b.column("sample_id")))
        parts["mcq"].append(_dict_codes(b.column("mcq_id"), mcq_codes))
        parts["sys"].append(_dict_codes(b.column("system_prompt"), sys_codes, digest=True))
        parts["user"].append(_dict_codes(b.column("user_text"), user_codes, digest=True))
        parts["fmt"].append(_dict_codes(b.column("answer_format"), fmt_codes))
        options = b.column("options")
        parts["opt_bytes"].append(pc.binary_length(pc.list_flatten(options)).to_numpy(zero_copy_only=False))
        parts["opt_count"].append(pc.fill_null(pc.list_value_length(options), 0).to_numpy(zero_copy_only=False))
        parts["pred"].append(b.column("pred_index").to_numpy(zero_copy_only=False))
        parts["ok"].append(b.column("correct").to_numpy(zero_copy_only=False))
    out = _joined(parts)
    names = pa.array(list(mcq_codes), _STR)
    rank, out["mcq_names"] = _rank_codes(names) if len(names) else (np.zeros(0, np.int64), names)
    out["mcq"] = _narrow(rank[out["mcq"]] if len(rank) else out["mcq"])
    n_user = max(1, len(user_codes))
    out["prompt"] = out.pop("sys").astype(np.int64) * n_user + out.pop("user")
    out["fmt_names"] = list(fmt_codes)
    return out


def _kept_measured(start: int, b: pa.RecordBatch, text: str, id_column: str,
                   parts: dict[str, list[np.ndarray]]) -> pa.RecordBatch | None:
    """The kept rows of ``b`` without their ``text`` (only measured, never copied); appends their row numbers,
    text lengths (code points, bytes) and id prefixes to ``parts``. None when no row is kept."""
    keep = np.flatnonzero(pc.fill_null(b.column("keep"), False).to_numpy(zero_copy_only=False))
    if not len(keep):
        return None
    thought = b.column(text)
    parts["len"].append(pc.utf8_length(thought).to_numpy(zero_copy_only=False)[keep])
    parts["bytes"].append(pc.binary_length(thought).to_numpy(zero_copy_only=False)[keep])
    b = b.drop_columns([text]).take(pa.array(keep))
    parts["row"].append(start + keep)
    hi, lo = _id_prefix(b.column(id_column))
    parts["hi"].append(hi)
    parts["lo"].append(lo)
    return b


def _index_expansions(run: Any) -> dict[str, np.ndarray]:
    """The small columns of every kept expansion (one pass over the stage, its texts only measured)."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("row", "hi", "lo", "of", "len", "bytes", "pred", "ok")}
    for start, b in _stream(run, table_for("long_thought"), _E_INDEX):
        b = _kept_measured(start, b, "long_thought", "expansion_id", parts)
        if b is None:
            continue
        parts["of"].append(id_hash(b.column("sample_id")))
        parts["pred"].append(b.column("pred_index").to_numpy(zero_copy_only=False))
        parts["ok"].append(b.column("correct").to_numpy(zero_copy_only=False))
    return _joined(parts)


_EMPTY = {"hi": np.uint64, "lo": np.uint64, "h": np.uint64, "of": np.uint64, "ok": bool}
_NARROW = ("row", "len", "bytes", "pred", "mcq", "sys", "user", "fmt", "opt_count")  # index columns held as int32
# where they fit (row numbers, lengths, codes); arithmetic on them casts to int64 first


def _joined(parts: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """Each index column's parts concatenated; row numbers and lengths as int32 where they fit."""
    out = {}
    for k in list(parts):
        v = parts.pop(k)  # each list goes as soon as it is joined
        out[k] = np.concatenate(v) if v else np.zeros(0, _EMPTY.get(k, np.int64))
        if k in _NARROW:
            out[k] = _narrow(out[k])
    return out


def _narrow(a: np.ndarray) -> np.ndarray:
    """An integer index column as int32 when every value fits (half the memory at 10M traces), else as it is.
    Arithmetic on such a column casts it back to int64 first (numpy keeps int32 and would wrap)."""
    if a.dtype.kind in "iu" and a.dtype.itemsize > 4 and (not len(a) or (a.min() >= -2**31 and a.max() < 2**31)):
        return a.astype(np.int32)
    return a


_ID_SORT = threading.RLock()  # one id sort at a time in a process: lpt export's two lanes each sort 10-13M ids
# at the start of a 10M export (the trace index; the raw expansion config's key order), each holding ~0.5 GB
# of sort temporaries; one of three 10M runs peaked while both ran (the three: 1.83-1.96 GB)


def _id_ranks(hi: np.ndarray, lo: np.ndarray, full_ids: Callable[[np.ndarray], pa.Array],
              h: np.ndarray | None = None) -> np.ndarray:
    """Dense ranks of ids in string order, from their 16-byte prefixes; ids whose prefixes tie are compared in
    full (``full_ids`` of those rows: read again from the files). With ``h`` (a 64-bit hash of each whole id),
    ids of equal prefix and equal hash count as equal without a read (repeated ids, such as the sample of each
    of its expansions); a group that mixes hashes is read."""
    with _ID_SORT:
        return _id_ranks_alone(hi, lo, full_ids, h)


def _id_ranks_alone(hi: np.ndarray, lo: np.ndarray, full_ids: Callable[[np.ndarray], pa.Array],
                    h: np.ndarray | None = None) -> np.ndarray:
    """:func:`_id_ranks`, its lock held."""
    n = len(hi)
    if not n:
        return np.zeros(0, np.int64)
    hashed = h is not None
    o = np.lexsort((h, lo, hi) if hashed else (lo, hi))
    hi = hi[o]  # each key sorted in place of the caller's (freed as it goes: 88 MB a key at 11M ids)
    new = np.r_[True, hi[1:] != hi[:-1]]
    del hi
    lo = lo[o]
    new[1:] |= lo[1:] != lo[:-1]
    del lo
    if hashed:
        h = h[o]
        new_h = new | np.r_[True, h[1:] != h[:-1]]
        del h
    else:
        new_h = new
    g = np.cumsum(new) - 1
    tied = (np.bincount(g, weights=new_h & ~new) > 0)[g] if hashed else np.bincount(g)[g] > 1
    new = new_h
    if tied.any():
        seg = np.flatnonzero(tied)
        ids = _one_chunk(full_ids(o[seg])).cast(pa.large_string())
        by = pc.sort_indices(pa.table({"g": g[seg], "id": ids}), [("g", "ascending"), ("id", "ascending")])
        o[seg] = o[seg][by.to_numpy()]
        gs, ids = g[seg][by.to_numpy()], ids.take(by)
        differ = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1)).to_numpy(zero_copy_only=False)
        new[seg] = np.r_[True, (gs[1:] != gs[:-1]) | differ]
    rank = np.empty(n, np.int64)
    rank[o] = np.cumsum(new) - 1
    return rank


def _gather(run: Any, stage: str, column: str, rows: np.ndarray) -> pa.Array:
    """``column`` of some rows of ``stage`` (numbered as :func:`_stream` numbers them), in the order given."""
    routed = _Routed(_stream(run, stage, [column], rows=np.unique(rows)), [rows], memory_bytes=1 << 62)
    try:
        return _concat_texts([b.column(0) for b in routed.batches(0)]) if len(rows) else pa.array([], _STR)
    finally:
        routed.close()


def _run_traces(run: Any, *, memory_bytes: int = ROUTE_MEMORY_BYTES) -> _Traces:
    """Every kept simple CoT and kept expansion of a kept simple CoT, sorted by ``(cot_type, trace_id)``, as small
    columns: two passes over the stage files that keep no text (ids as 16-byte prefixes and 64-bit hashes)."""
    run = _Listed(run)
    S = _index_samples(run)
    n_s = len(S["row"])
    by_h = np.argsort(S["h"], kind="stable")  # one sort: the repeat check here, the join below (Arrow's
    h_sorted = S["h"][by_h]  # count_distinct and index_in held 0.75 GB at 3.3M hashes)
    if (h_sorted[1:] == h_sorted[:-1]).any():
        raise StoreError(f"{run.path / 'simple_cot'}: a kept sample_id occurs twice; ids are content hashes, so "
                         f"a stage-2 chunk was written twice (remove the copy)")
    E = _index_expansions(run)
    # the sample each expansion grew from (expansions of a sample that is not kept drop out), joined on a 64-bit
    # FNV-1a hash of the whole sample_id (a false match needs two ids of one run to collide: ~n²/2⁶⁵)
    del h_sorted
    sample_row = find(E.pop("of"), S.pop("h"), order=by_h)
    del by_h
    has = sample_row >= 0
    E = {k: v[has] for k, v in E.items()}
    e_s = sample_row[has]
    n_e = len(e_s)
    s_ok, e_ok = S["ok"].astype(bool), E["ok"].astype(bool)
    t_code = {t: i for i, t in enumerate(TRACE_TYPES)}
    s_type = np.where(s_ok, t_code["O"], t_code["X"])
    e_type = np.select([s_ok[e_s] & e_ok, s_ok[e_s], e_ok], [t_code["O_O"], t_code["O_X"], t_code["X_O"]],
                       t_code["X_X"])
    cot = np.concatenate([s_type, e_type]).astype(np.int8)
    s_row, e_row = S["row"], E["row"]  # int32 where they fit (_joined)

    def full_ids(at: np.ndarray) -> pa.Array:
        at = np.asarray(at, np.int64)
        out = np.empty(len(at), object)
        smp = at < n_s
        out[smp] = _gather(run, table_for("short_thought"), "sample_id", s_row[at[smp]]).to_pylist()
        out[~smp] = _gather(run, table_for("long_thought"), "expansion_id", e_row[at[~smp] - n_s]).to_pylist()
        return pa.array(out.tolist(), _STR)

    key = _narrow(_id_ranks(np.concatenate([S.pop("hi"), E.pop("hi")]), np.concatenate([S.pop("lo"), E.pop("lo")]),
                            full_ids))
    release_memory()  # the rank sort's pages, before the list order's
    # sort by (cot_type, trace_id) as strings: type names sort O, O_O, O_X, X, X_O, X_X
    type_rank = np.argsort(np.argsort(np.array(TRACE_TYPES))).astype(np.int8)[cot]
    order = _narrow(np.lexsort((key, type_rank)))
    del type_rank
    # each column is put in list order as the inputs it needs are let go (at 11M traces each int64 is 88 MB)
    cot, key = cot[order], key[order]
    is_exp = order >= n_s
    s_of = _narrow(np.concatenate([np.arange(n_s), e_s])[order])
    del e_s
    e_row = _narrow(np.where(is_exp, e_row[np.clip(order - n_s, 0, None)], -1) if n_e else np.full(len(order), -1))
    del E["row"]
    length = np.concatenate([S["len"], E.pop("len")])[order].astype(np.int32, copy=False)
    added = length - np.where(is_exp, S.pop("len")[s_of], 0).astype(np.int32, copy=False)
    pred = np.concatenate([S.pop("pred"), E.pop("pred")])[order].astype(np.int32, copy=False)
    thought_bytes = np.concatenate([S.pop("bytes"), E.pop("bytes")])[order].astype(np.int32, copy=False)
    del order, is_exp, E
    src = _RunSource(run=run, s_row=s_row, s=s_of, e_row=e_row, memory_bytes=memory_bytes)
    tr = _Traces(cot_type=cot, key=key, mcq=_narrow(S.pop("mcq")[s_of]), mcq_names=S["mcq_names"],
                 sample=s_of, prompt=_narrow(S.pop("prompt")[s_of]), length=length, added=added, pred=pred,
                 thought_bytes=thought_bytes,
                 answer_bytes=lambda fmt, at: _answer_bytes(S, s_of[at], pred[at], fmt),
                 targets=lambda at, fmt: _run_targets(tr, at, fmt),
                 trace_ids=lambda at: trace_ids(tr, at), src=src)
    for k in set(S) - {"fmt", "fmt_names", "opt_bytes", "opt_count"}:  # what answer_bytes reads; the rest goes
        del S[k]
    return tr


def _answer_bytes(S: dict[str, Any], s_of: np.ndarray, pred: np.ndarray, override: str | None) -> np.ndarray:
    """UTF-8 length of :func:`builder.answers.format_answer` of the traces of samples ``s_of`` with predictions
    ``pred`` (the errors :func:`_format_answers` raises on the same rows included), as int32: at 13M traces
    each int64 temporary here was 0.1 GB at the DPO plan's peak."""
    n = len(pred)
    if not n:
        return np.zeros(0, np.int32)
    names = S["fmt_names"]
    if override is not None:
        fmt = np.full(n, names.index(override) if override in names else -1, np.int64)
        used = {override}
    else:
        fmt = S["fmt"][s_of]
        used = {names[i] for i in np.unique(fmt).tolist()}
    bad = sorted(f for f in used if f not in ANSWER_FORMATS)
    if bad:
        raise ValueError(f"answer format must be one of {ANSWER_FORMATS}, got {bad[0]!r}")
    out = np.zeros(n, np.int32)
    if used & {"paren", "dot"}:
        li = np.where(pred < 0, pred + len(LETTERS), pred)
        if ((li < 0) | (li >= len(LETTERS))).any():
            raise IndexError("string index out of range")
        out[fmt == names.index("paren")] = 3
        out[fmt == names.index("dot")] = 2
    if "text" in used:
        count = S["opt_count"]
        starts = np.cumsum(count, dtype=np.int64) - count
        need = np.flatnonzero(fmt == names.index("text"))
        s_of, pred = s_of[need], pred[need]
        lens = count[s_of]
        ti = np.where(pred < 0, pred + lens, pred)
        if ((ti < 0) | (ti >= lens)).any():
            raise IndexError("list index out of range")
        out[need] = S["opt_bytes"][starts[s_of] + ti]
    return out


def _list_traces(traces: Sequence[Trace]) -> _Traces:
    """Trace objects as columns, in the given order (for :func:`sft_traces` / :func:`dpo_pairs` on a list)."""
    prompts: dict[tuple[str, str], int] = {}
    samples: dict[str, int] = {}
    mcq, mcq_names = _rank_codes(pa.array([t.mcq_id for t in traces], _STR))
    ids = pa.array([t.trace_id for t in traces], _STR)
    return _Traces(
        cot_type=np.array([TRACE_TYPES.index(t.cot_type) for t in traces], np.int64),
        key=_rank_codes(ids)[0], mcq=mcq, mcq_names=mcq_names,
        sample=np.array([samples.setdefault(t.sample_id, len(samples)) for t in traces], np.int64),
        prompt=np.array([prompts.setdefault(t.prompt_key, len(prompts)) for t in traces], np.int64),
        length=np.array([len(t.thought) for t in traces], np.int64),
        added=np.array([t.added_length for t in traces], np.int64),
        pred=np.array([t.pred_index for t in traces], np.int64),
        thought_bytes=np.array([len(t.thought.encode("utf-8")) for t in traces], np.int64),
        answer_bytes=lambda fmt, at: pc.binary_length(pa.array([traces[i].answer(fmt) for i in at], _STR)).to_numpy(
            zero_copy_only=False).astype(np.int64),
        targets=lambda at, fmt: [traces[i].target(fmt) for i in at],
        trace_ids=lambda at: ids.take(pa.array(np.asarray(at, np.int64))),
    )


def _format_answers(options: pa.Array, formats: pa.Array, index: np.ndarray, override: str | None) -> pa.Array:
    """:func:`builder.answers.format_answer` of every row (Python's negative indexing included)."""
    n = len(index)
    if n == 0:
        return pa.array([], _STR)
    if override is not None:
        fmts = {override}
        fmt_arr = None
    else:
        fmt_arr = formats.cast(_STR)
        fmts = set(pc.unique(fmt_arr).to_pylist())
    bad = sorted(f for f in fmts if f not in ANSWER_FORMATS)
    if bad:
        raise ValueError(f"answer format must be one of {ANSWER_FORMATS}, got {bad[0]!r}")
    out: dict[str, pa.Array] = {}
    if fmts & {"paren", "dot"}:
        li = np.where(index < 0, index + len(LETTERS), index)
        if ((li < 0) | (li >= len(LETTERS))).any():
            raise IndexError("string index out of range")
        letter = pa.array(list(LETTERS)).take(pa.array(li))
        out["paren"] = pc.binary_join_element_wise("(", letter, ")", "")
        out["dot"] = pc.binary_join_element_wise(letter, ".", "")
    if "text" in fmts:
        lens = pc.list_value_length(options).to_numpy(zero_copy_only=False).astype(np.int64)
        starts = np.cumsum(lens) - lens
        ti = np.where(index < 0, index + lens, index)
        if override == "text" or fmt_arr is None:
            need = np.ones(n, bool)
        else:
            need = pc.equal(fmt_arr, "text").to_numpy(zero_copy_only=False)
        if (need & ((ti < 0) | (ti >= lens))).any():
            raise IndexError("list index out of range")
        flat = pc.list_flatten(options)
        out["text"] = flat.take(pa.array(np.where(need, starts + np.clip(ti, 0, None), 0))) if len(flat) else \
            pa.nulls(n, _STR)
    if fmt_arr is None:
        return out[override]
    result = out[next(iter(fmts))]
    for f in fmts:
        result = pc.if_else(pc.equal(fmt_arr, f), out[f], result)
    return result


# ------------------------------------------------------------------------------------------------ sampling


def length_weighted_subsample(
    items: Sequence[T],
    n: int,
    *,
    group: Callable[[T], str],
    length: Callable[[T], int],
    key: Callable[[T], str],
    seed: int,
    tag: str,
) -> list[T]:
    """Draw exactly ``min(n, len(items))`` items, favouring long ones within each group (docs/method.md).

    Within each group rank by length, longest first (ties by ``key``), weight ``0.5**rank``; draw without
    replacement ``n // groups`` per group (all of a smaller group); top up uniformly from the rest to
    exactly ``n``; shuffle. Seeded per group with ``rng_for(seed, tag, group)``.
    """
    items = list(items)
    if not items:
        return []
    codes, names = _rank_codes(pa.array([group(it) for it in items], _STR))
    picked = _lw_pick(_rank_codes(pa.array([key(it) for it in items], _STR))[0], codes, names,
                      np.array([length(it) for it in items], np.int64), n, seed=seed, tag=tag)
    return [items[i] for i in picked]


def _lw_pick(keys: np.ndarray, group: np.ndarray, group_names: pa.Array, length: np.ndarray, n: int, *,
             seed: int, tag: str) -> list[int]:
    """:func:`length_weighted_subsample` on columns: the positions drawn, in the order drawn and shuffled.

    ``keys`` and ``group`` hold rank codes (code order = key / group name order; equal keys, equal codes). The
    same random calls as the row code: per
    group (sorted) ``_weighted_draw`` over its members sorted by ``(-length, key)``; the top-up ``sample`` over
    the rest in key order; the shuffle (their outcomes depend only on the sizes, so positions stand in for items).
    """
    size = len(keys)
    n = min(n, size)
    if n <= 0:
        return []
    by_key = np.argsort(keys, kind="stable")  # equal keys keep their order
    key_rank = np.empty(size, np.int32 if size < 2**31 else np.int64)
    key_rank[by_key] = np.arange(size)
    per_group = n // len(np.unique(group))
    chosen: list[int] = []
    if per_group:
        order = np.lexsort((key_rank, -length, group))  # by group, longest first, then key
        g_sorted = group[order]
        bounds = np.flatnonzero(np.diff(g_sorted)) + 1
        starts, ends = np.r_[0, bounds], np.r_[bounds, size]
        weights = [0.5**rank for rank in range(int((ends - starts).max()))]
        names = group_names.take(pa.array(g_sorted[starts])).to_pylist()
        for g, a, b in zip(names, starts.tolist(), ends.tolist()):  # a group's members as Python ints, one group
            chosen += _weighted_draw(order[a:b].tolist(), weights[: b - a], min(per_group, b - a),  # at a time
                                     _group_rng(seed, tag, g))  # (all at once: ~0.2 GB at 5M traces)
    rest = by_key
    if chosen:
        rest = rest[~np.isin(keys[rest], keys[np.asarray(chosen, np.int64)])]
    top = rng_for(seed, tag, "top-up").sample(range(len(rest)), n - len(chosen))
    chosen += rest[np.asarray(top, np.int64)].tolist() if top else []
    rng_for(seed, tag, "shuffle").shuffle(chosen)
    return chosen


def _group_rng(seed: int, tag: str, group: str) -> random.Random:
    """``rng_for(seed, tag, "group", group)``, its JSON written directly (the same bytes, a few times faster)."""
    if type(seed) is not int or type(tag) is not str or type(group) is not str:
        return rng_for(seed, tag, "group", group)
    blob = f'["rng",{seed},{_json_str(tag)},"group",{_json_str(group)}]'
    return random.Random(int(hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16], 16) & ((1 << 63) - 1))


def _weighted_draw(members: list[T], weights: list[float], k: int, rng: random.Random) -> list[T]:
    pool, w, out = list(members), list(weights), []
    for _ in range(k):
        i = rng.choices(range(len(pool)), weights=w)[0]
        out.append(pool.pop(i))
        w.pop(i)
    return out


# --------------------------------------------------------------------------------------------- planning


def _sft_plan(tr: _Traces, opts: AssembleOptions) -> list[int]:
    """Trace positions of the SFT set: O ∪ O→O (length-weighted, ``sft_ratio``) plus as many X→O."""
    pool, x_o = tr.of_type("O", "O_O"), tr.of_type("X_O")
    n = int(len(pool) * opts.sft_ratio)
    if opts.sft_balance:
        n = min(n, len(x_o))
    n_xo = n if opts.sft_balance else int(len(x_o) * opts.sft_ratio)
    return _pick(tr, pool, n, tr.length, opts.seed, "sft-O") + _pick(tr, x_o, n_xo, tr.added, opts.seed, "sft-X_O")


def _simple_cot_plan(tr: _Traces, opts: AssembleOptions) -> list[int]:
    o = tr.of_type("O")
    return _pick(tr, o, int(len(o) * opts.simple_cot_ratio), tr.length, opts.seed, "simple_cot")


def _pick(tr: _Traces, among: np.ndarray, n: int, length: np.ndarray, seed: int, tag: str) -> list[int]:
    if min(n, len(among)) <= 0:
        return []
    at = _lw_pick(tr.key[among], tr.mcq[among], tr.mcq_names, length[among], n, seed=seed,
                  tag=tag)
    return among[at].tolist()


def _dpo_plan(tr: _Traces, opts: AssembleOptions, *, dedupe: bool = True) -> tuple[np.ndarray, np.ndarray,
                                                                                     np.ndarray]:
    """``(kind, chosen, rejected)`` trace positions of every pair, in the row code's order, each pair once.

    Candidates are joins of chosen-type with rejected-type traces on the kind's scope (an MCQ shown one
    prompt, or one sample); they are ordered as the row code enumerated them (kind, group by first appearance,
    chosen, rejected), and a pair whose prompt and both rendered targets equal an earlier one's is dropped.
    One kind's candidates are held at a time (the kind is the first sort key): only the keys of pairs that could
    equal a later kind's pair (a side whose target another trace shares) are kept from one kind to the next.
    """
    n = len(tr)
    small = np.int32 if n < 2**31 else np.int64  # positions: half the memory of the candidate pairs
    mcq_scope = _narrow(_first_seen_codes(tr.mcq.astype(np.int64) * (int(tr.prompt.max(initial=0)) + 1) + tr.prompt))
    first_of = {"mcq": _narrow(_first_position(mcq_scope)), "sample": _narrow(_first_position(tr.sample))}
    scope_key = {"mcq": mcq_scope, "sample": tr.sample}
    release_memory()  # the hash tables of those codes (Arrow's pages: ~0.3 GB at 11M traces)
    sides = {}
    for k, kind in enumerate(opts.pair_kinds):
        chosen_type, rejected_type = kind.split(">")
        key = scope_key[_KIND_SCOPE[kind]]
        c = tr.of_type(chosen_type).astype(small)
        r = tr.of_type(rejected_type).astype(small)
        r = r[tr.pred[r] >= 0]
        c, r = c[np.isin(key[c], key[r])], r[np.isin(key[r], key[c])]  # the traces some pair of the kind joins
        if len(c) and len(r):
            sides[k] = (c, r)
    cls = shared = None
    if dedupe and sides:
        used = np.zeros(n, bool)
        for c, r in sides.values():
            used[c] = used[r] = True
        cls = _target_classes(tr, opts, _narrow(np.flatnonzero(used)))
        del used
        release_memory()  # its sort's pages, before the pairs are joined
        moved = np.flatnonzero(cls != np.arange(n, dtype=cls.dtype))
        shared = np.zeros(n, bool)  # a trace whose target another trace shares
        shared[moved] = shared[cls[moved]] = True
        del moved
    seen: set[int] = set()  # keys of the pairs kept so far that a later kind's pair could equal
    out: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for k, (c, r) in sides.items():
        scope = _KIND_SCOPE[opts.pair_kinds[k]]
        key = scope_key[scope]
        joined = pa.table({"g": key[c], "c": c}).join(pa.table({"g": key[r], "r": r}), keys="g", join_type="inner",
                                                       use_threads=False)
        jc, jr = joined["c"].to_numpy(), joined["r"].to_numpy()
        del joined
        same = tr.prompt[jc] == tr.prompt[jr]  # always true by scope; the row code checked it
        jc, jr = jc[same], jr[same]
        order = np.lexsort((jr, jc, first_of[scope][jc]))
        jc, jr = jc[order], jr[order]
        del order, same
        if cls is not None and len(jc):
            # only a pair with a side whose target another trace shares can equal another pair (a trace no other
            # shares a target with is its own class, and no other trace's), so only those are compared
            could = np.flatnonzero(shared[jc] | shared[jr])
            pair = cls[jc[could]].astype(np.int64) * (n + 1) + cls[jr[could]]
            first = _is_first(_first_seen_codes(pair))  # each such pair's first occurrence in this kind
            keep = np.ones(len(jc), bool)
            keep[could] = first
            for i, p in zip(could[first].tolist(), pair[first].tolist()):  # and not a pair an earlier kind kept
                if p in seen:
                    keep[i] = False
                else:
                    seen.add(p)
            jc, jr = jc[keep], jr[keep]
            del pair, keep, could, first
        kind = np.full(len(jc), k, np.int8)
        if opts.dpo_pairs == "authors" and len(jc):
            keep = _authors_rule(kind, jc, jr, opts)
            kind, jc, jr = kind[keep], jc[keep], jr[keep]
        out.append((kind, jc, jr))
    del cls, shared, seen, sides
    if not out:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    plan = tuple(np.concatenate([part[i] for part in out]).astype(np.int64) for i in range(3))
    del out
    release_memory()  # the candidate pairs' pages
    return plan


_PLANNERS: dict[str, Callable[[_Traces, AssembleOptions], Any]] = {
    "sft": lambda tr, opts: np.asarray(_sft_plan(tr, opts), np.int64), "dpo": _dpo_plan,
    "simple_cot": lambda tr, opts: np.asarray(_simple_cot_plan(tr, opts), np.int64)}


def _authors_rule(kind: np.ndarray, c: np.ndarray, r: np.ndarray, opts: AssembleOptions) -> np.ndarray:
    """Which pairs survive the authors' rule (see :data:`DPO_PAIR_RULES`): in an order drawn per kind from
    ``rng_for(seed, "dpo-pairs", kind)``, the first pair of each chosen trace (X→O kinds: then of each rejected
    one); the survivors keep their places.

    The order is ``random.shuffle`` of the pairs' numbers (the same calls, on a 4-byte array instead of a list of
    Python ints: ~36 bytes a pair less, 0.3 GB for 8M pairs); "first of each" is the smallest place in it."""
    keep = np.zeros(len(c), bool)
    for k in np.unique(kind).tolist():
        name = opts.pair_kinds[k]
        at = np.flatnonzero(kind == k)
        order = array.array("l" if len(at) >= 2**31 else "i", range(len(at)))
        rng_for(opts.seed, "dpo-pairs", name).shuffle(order)
        place = np.empty(len(at), np.int64)
        place[np.frombuffer(order, dtype=np.int64 if order.typecode == "l" else np.int32)] = np.arange(len(at))
        del order
        survivors = _first_in_place(c[at], place)
        if name.startswith("X_O>"):
            survivors = survivors[_first_in_place(r[at][survivors], place[survivors])]
        keep[at[survivors]] = True
    return keep


def _first_in_place(values: np.ndarray, place: np.ndarray) -> np.ndarray:
    """The rows that come first (smallest ``place``) among the rows sharing their value."""
    if not len(values):
        return np.zeros(0, np.int64)
    o = np.lexsort((place, values))
    return o[np.r_[True, values[o][1:] != values[o][:-1]]]


def _first_position(key: np.ndarray) -> np.ndarray:
    """Per row, the position of the first row with the same key (the order a dict of groups was filled in)."""
    codes = _first_seen_codes(key)
    return np.flatnonzero(_is_first(codes))[codes]


def _first_seen_codes(key: np.ndarray) -> np.ndarray:
    """Dense codes numbered in order of first appearance (a hash table, not a sort)."""
    return pc.dictionary_encode(pa.array(key)).indices.to_numpy().astype(np.int64) if len(key) else \
        np.zeros(0, np.int64)


def _is_first(codes: np.ndarray) -> np.ndarray:
    """Whether each row is the first of its code (codes numbered in order of first appearance)."""
    if not len(codes):
        return np.zeros(0, bool)
    seen = np.maximum.accumulate(codes)
    return np.r_[True, codes[1:] > seen[:-1]]


def _target_classes(tr: _Traces, opts: AssembleOptions, among: np.ndarray) -> np.ndarray:
    """Per trace (of ``among``), the first position of a trace with the same prompt and the same rendered target.

    Equal targets have equal byte lengths: only traces sharing (prompt, length) are compared (``tr.targets``),
    found by one sort of that key (no hash table over every trace)."""
    cls = np.arange(len(tr), dtype=np.int32 if len(tr) < 2**31 else np.int64)
    size = tr.thought_bytes[among].astype(np.int64) + tr.answer_bytes(opts.answer_format, among)
    key = tr.prompt[among].astype(np.int64) * (int(size.max(initial=0)) + 1) + size
    del size
    order = np.argsort(key, kind="stable")
    key.sort()  # key[order], without a second copy
    tie = key[1:] == key[:-1]
    del key
    if not tie.any():
        return cls
    in_tie = np.zeros(len(order), bool)
    in_tie[1:] |= tie
    in_tie[:-1] |= tie
    candidates = np.sort(order[in_tie])  # every trace whose (prompt, length) another trace shares, in order
    del order, in_tie, tie
    seen: dict[tuple[int, Any], int] = {}
    for j, target in zip(candidates.tolist(), tr.targets(among[candidates], opts.answer_format)):
        cls[among[j]] = seen.setdefault((int(tr.prompt[among[j]]), target), int(among[j]))
    return cls


# -------------------------------------------------------------------------------------------- rendering


def _content_ids(*parts: str | None | pa.Array) -> list[str]:
    """:func:`builder.records.content_id` of each row of ``parts`` (scalars broadcast), computed per column."""
    n = next(len(p) for p in parts if isinstance(p, (pa.Array, pa.ChunkedArray)))
    pieces = []
    for p in parts:
        if isinstance(p, (pa.Array, pa.ChunkedArray)):
            p = p.cast(_STR)
            if pc.any(pc.match_substring_regex(p, r'["\\\x00-\x1f]')).as_py():
                pieces.append(pa.array([json.dumps(v, ensure_ascii=False) for v in p.to_pylist()], _STR))
            else:
                pieces.append(pc.binary_join_element_wise('"', p, '"', ""))
        else:
            pieces.append(json.dumps(p, ensure_ascii=False))
    blobs = pc.binary_join_element_wise("[", *_interleave(pieces, ","), "]", "").to_pylist() if n else []
    return [hashlib.sha256(b.encode("utf-8")).hexdigest() for b in blobs]


def _interleave(items: list, sep: Any) -> list:
    out = []
    for i, it in enumerate(items):
        out += [sep, it] if i else [it]
    return out


def _messages(roles: Sequence[str], contents: Sequence[pa.Array]) -> pa.Array:
    """A ``list<struct<role, content>>`` column: row i is ``[{role: roles[j], content: contents[j][i]}]``."""
    n, k = len(contents[0]), len(roles)
    contents = [_one_chunk(c) for c in contents]
    if k == 1:
        content = contents[0].cast(_STR)
    elif all(pa.types.is_dictionary(c.type) for c in contents):  # interleave indices, then one copy of texts
        offsets = np.cumsum([0] + [len(c.dictionary) for c in contents[:-1]])
        idx = np.stack([c.indices.to_numpy(zero_copy_only=False).astype(np.int64) + o
                        for c, o in zip(contents, offsets)], axis=1).ravel()
        content = pa.DictionaryArray.from_arrays(pa.array(idx), _concat_texts([c.dictionary for c in contents]))
        content = content.cast(_STR)
    else:
        flat = _concat_texts(contents)
        content = flat.take(pa.array(np.arange(n * k).reshape(k, n).T.ravel()))
    role = pa.DictionaryArray.from_arrays(pa.array(np.tile(np.arange(k, dtype=np.int32), n)),
                                          pa.array(list(roles), _STR)).cast(_STR)
    items = pa.StructArray.from_arrays([role, content], fields=list(MESSAGE))
    return pa.ListArray.from_arrays(pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)), items, type=MESSAGES)


def _target(thought: pa.Array, answer: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise("<think> ", _one_chunk(thought).cast(_STR), " </think> <answer> ",
                                       _one_chunk(answer).cast(_STR), " </answer>", "")


def _chunks(size: int, batch_rows: int) -> Iterator[slice]:
    for a in range(0, size, batch_rows):
        yield slice(a, min(a + batch_rows, size))


_S_TEXTS = ("sample_id", "mcq_id", "image_id", "question_type", "system_prompt", "user_text", "options",
            "answer_format", "thought")
_S_TEXTS_DICT = ("mcq_id", "image_id", "question_type", "system_prompt", "answer_format")
_E_TEXTS = ("expansion_id", "long_thought")


class _Texts:
    """The stage rows some traces need, routed into the orders of several consumers: ``samples[i]`` the kept
    sample of each trace of ``positions[i]``, ``expansions[i]`` the expansion row of each of those traces that is
    one (in order). One pass over each stage file that holds a wanted row; see :class:`_Routed`."""

    def __init__(self, tr: _Traces, positions: Sequence[np.ndarray], batch_rows: int,
                 s_columns: Sequence[str] = _S_TEXTS, e_columns: Sequence[str] = _E_TEXTS) -> None:
        src = tr.src
        self.positions = [np.asarray(p, np.int64) for p in positions]
        self.is_exp = [src.e_row[p] >= 0 for p in self.positions]
        s_takes = [src.s_row[src.s[p]] for p in self.positions]
        e_takes = [src.e_row[p[x]] for p, x in zip(self.positions, self.is_exp)]
        budget = src.memory_bytes // 2
        self._routes: list[_Routed] = []
        try:
            for stage, columns, dictionary, takes in (
                    (table_for("short_thought"), s_columns, _S_TEXTS_DICT, s_takes),
                    (table_for("long_thought"), e_columns, (), e_takes)):
                need = np.unique(np.concatenate(takes)) if takes else np.zeros(0, np.int64)
                rows = _stream(src.run, stage, columns, rows=need, dictionary=[c for c in dictionary if c in columns]) \
                    if len(need) else iter(())
                self._routes.append(_Routed(rows, takes, memory_bytes=budget, batch_rows=batch_rows,
                                            prefix=f"lpt-texts-{stage}-"))
                src.buckets.append(self._routes[-1].buckets)
        except BaseException:
            self.close()
            raise
        self.samples = [_Pull(self._routes[0].batches(i)) for i in range(len(positions))]
        self.expansions = [_Pull(self._routes[1].batches(i)) for i in range(len(positions))]

    def close(self) -> None:
        for r in self._routes:
            r.close()


def _spread(values: pa.Array | pa.ChunkedArray | None, mask: np.ndarray, fallback: pa.Array) -> pa.Array:
    """``fallback`` with ``values`` (one per set ``mask`` row, in order) in the set rows."""
    if not mask.any():
        return fallback
    at = np.where(mask, np.cumsum(mask) - 1, 0)
    return pc.if_else(pa.array(mask), _one_chunk(values).cast(fallback.type).take(pa.array(at)), fallback)


def _trace_texts(texts: _Texts, i: int, sl: slice) -> tuple[pa.Table, pa.Array, pa.Array, np.ndarray]:
    """``(sample columns, trace ids, thoughts, is an expansion)`` of the traces ``positions[i][sl]``."""
    smp = texts.samples[i].take(sl.stop - sl.start)
    is_exp = texts.is_exp[i][sl]
    exp = texts.expansions[i].take(int(is_exp.sum()))
    tid = _spread(exp.column("expansion_id") if is_exp.any() else None, is_exp, _one_chunk(smp.column("sample_id")))
    thought = _spread(exp.column("long_thought") if is_exp.any() else None, is_exp,
                      _one_chunk(smp.column("thought"))) if "thought" in smp.column_names else None
    return smp, tid, thought, is_exp


def _trace_batches(tr: _Traces, positions: Sequence[int], opts: AssembleOptions,
                   batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """SFT-schema rows of the traces at ``positions`` (a run's traces), in that order."""
    positions = np.asarray(positions, np.int64)
    texts = _Texts(tr, [positions], batch_rows)
    try:
        for sl in _chunks(len(positions), batch_rows):
            at = positions[sl]
            smp, tid, thought, is_exp = _trace_texts(texts, 0, sl)
            col = {c: _one_chunk(smp.column(c)) for c in smp.column_names}
            answer = _format_answers(col["options"], col["answer_format"], tr.pred[at], opts.answer_format)
            exp = pa.array(is_exp)
            yield pa.RecordBatch.from_arrays([
                pa.array(_content_ids("trace", tid, opts.answer_format), _STR),
                col["image_id"], col["mcq_id"], col["sample_id"], pc.if_else(exp, tid, ""),
                pa.array(TRACE_TYPES).take(pa.array(tr.cot_type[at])), col["question_type"],
                _messages(("system", "user", "assistant"),
                          [col["system_prompt"], col["user_text"], _target(thought, answer)]),
                pc.if_else(exp, col["thought"], ""),
            ], schema=SFT_SCHEMA)
    finally:
        texts.close()


def _pair_batches(tr: _Traces, plan: tuple[np.ndarray, np.ndarray, np.ndarray], opts: AssembleOptions,
                  batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    kinds = pa.array(list(opts.pair_kinds), _STR)
    types = pa.array(TRACE_TYPES)
    kind, chosen, rejected = plan
    texts = _Texts(tr, [chosen, rejected], batch_rows)
    try:
        for sl in _chunks(len(kind), batch_rows):
            c, r = chosen[sl], rejected[sl]
            smp, cid, c_thought, _ = _trace_texts(texts, 0, sl)
            r_smp, rid, r_thought, _ = _trace_texts(texts, 1, sl)
            col = {k: _one_chunk(smp.column(k)) for k in smp.column_names}
            c_answer = _format_answers(col["options"], col["answer_format"], tr.pred[c], opts.answer_format)
            r_answer = _format_answers(_one_chunk(r_smp.column("options")), _one_chunk(r_smp.column("answer_format")),
                                       tr.pred[r], opts.answer_format)
            yield pa.RecordBatch.from_arrays([
                pa.array(_content_ids("pair", cid, rid, opts.answer_format), _STR),
                col["image_id"], col["mcq_id"], kinds.take(pa.array(kind[sl])), col["question_type"],
                _messages(("system", "user"), [col["system_prompt"], col["user_text"]]),
                _messages(("assistant",), [_target(c_thought, c_answer)]),
                _messages(("assistant",), [_target(r_thought, r_answer)]),
                cid.cast(_STR), rid.cast(_STR), types.take(pa.array(tr.cot_type[c])),
                types.take(pa.array(tr.cot_type[r])),
            ], schema=DPO_SCHEMA)
    finally:
        texts.close()


def _run_targets(tr: _Traces, at: np.ndarray, fmt: str | None) -> list[bytes]:
    """A 128-bit BLAKE2b digest of the rendered target of each trace of ``at`` (equal digests, equal targets)."""
    at = np.asarray(at, np.int64)
    texts = _Texts(tr, [at], BATCH_ROWS, s_columns=("sample_id", "options", "answer_format", "thought"))
    out: list[bytes] = []
    try:
        for sl in _chunks(len(at), BATCH_ROWS):
            smp, _, thought, _ = _trace_texts(texts, 0, sl)
            answer = _format_answers(_one_chunk(smp.column("options")), _one_chunk(smp.column("answer_format")),
                                     tr.pred[at[sl]], fmt)
            out += [hashlib.blake2b(t.encode("utf-8"), digest_size=16).digest()
                    for t in _target(thought, answer).to_pylist()]
    finally:
        texts.close()
    return out


def trace_ids(tr: _Traces, at: Sequence[int]) -> pa.Array:
    """The ids (``sample_id`` of a simple thought, ``expansion_id`` of an expansion) of the traces at ``at``."""
    at = np.asarray(at, np.int64)
    if tr.src is None:
        return tr.trace_ids(at)
    texts = _Texts(tr, [at], BATCH_ROWS, s_columns=("sample_id",), e_columns=("expansion_id",))
    try:
        return _concat_texts([_trace_texts(texts, 0, sl)[1] for sl in _chunks(len(at), BATCH_ROWS)])
    finally:
        texts.close()


# -------------------------------------------------------------------------------------------------- the sets


def sft_batches(run: Any, opts: AssembleOptions = AssembleOptions(), batch_rows: int = BATCH_ROWS,
                *, traces: _Traces | None = None) -> Iterator[pa.RecordBatch]:
    tr = traces or _run_traces(run)
    yield from _trace_batches(tr, tr.planned("sft", opts), opts, batch_rows)


def simple_cot_batches(run: Any, opts: AssembleOptions = AssembleOptions(), batch_rows: int = BATCH_ROWS,
                       *, traces: _Traces | None = None) -> Iterator[pa.RecordBatch]:
    tr = traces or _run_traces(run)
    yield from _trace_batches(tr, tr.planned("simple_cot", opts), opts, batch_rows)


def dpo_batches(run: Any, opts: AssembleOptions = AssembleOptions(), batch_rows: int = BATCH_ROWS,
                *, traces: _Traces | None = None) -> Iterator[pa.RecordBatch]:
    tr = traces or _run_traces(run)
    yield from _pair_batches(tr, tr.planned("dpo", opts), opts, batch_rows)


def _table(name: str, batches: Iterable[pa.RecordBatch]) -> pa.Table:
    return pa.Table.from_batches(list(batches), schema=SCHEMAS[name]).replace_schema_metadata(
        schema(name).metadata)


def sft_table(run: Any, opts: AssembleOptions = AssembleOptions()) -> pa.Table:
    """The SFT set as a table of the ``sft`` config's Arrow schema."""
    return _table("sft", sft_batches(run, opts))


def simple_cot_table(run: Any, opts: AssembleOptions = AssembleOptions()) -> pa.Table:
    """Correct simple CoTs, length-weighted subsampled to ``simple_cot_ratio`` (the paper's baseline set)."""
    return _table("simple_cot", simple_cot_batches(run, opts))


def dpo_table(run: Any, opts: AssembleOptions = AssembleOptions()) -> pa.Table:
    """Every preference pair (see :func:`dpo_pairs`) as a table of the ``dpo`` config's Arrow schema."""
    return _table("dpo", dpo_batches(run, opts))


def build_sft(run: Any, opts: AssembleOptions = AssembleOptions()) -> list[dict[str, Any]]:
    return sft_table(run, opts).to_pylist()


def build_simple_cot(run: Any, opts: AssembleOptions = AssembleOptions()) -> list[dict[str, Any]]:
    """Correct simple CoTs, length-weighted subsampled to ``simple_cot_ratio`` (the paper's baseline set)."""
    return simple_cot_table(run, opts).to_pylist()


def build_dpo(run: Any, opts: AssembleOptions = AssembleOptions()) -> list[dict[str, Any]]:
    return dpo_table(run, opts).to_pylist()


def load_traces(run: Any) -> list[Trace]:
    """Every kept simple CoT and expansion of a run, typed O / X / O_O / O_X / X_O / X_X.

    An expansion counts only when its simple thought is itself kept. Order is deterministic (by id).
    (Materialises every thought as a Python object: the sets themselves never call it.)
    """
    tr = _run_traces(run)
    at = np.arange(len(tr))
    texts = _Texts(tr, [at], BATCH_ROWS, s_columns=_S_TEXTS + ("answer_index",))
    out = []
    try:
        for sl in _chunks(len(at), BATCH_ROWS):
            smp, tid, thought, is_exp = _trace_texts(texts, 0, sl)
            rows = smp.to_pylist()
            for i, s, t, th, exp in zip(range(sl.start, sl.stop), rows, tid.to_pylist(), thought.to_pylist(),
                                        is_exp.tolist()):
                out.append(Trace(
                    cot_type=TRACE_TYPES[tr.cot_type[i]], trace_id=t, image_id=s["image_id"], mcq_id=s["mcq_id"],
                    sample_id=s["sample_id"], expansion_id=t if exp else "", system_prompt=s["system_prompt"],
                    user_text=s["user_text"], options=tuple(s["options"]), answer_index=s["answer_index"],
                    answer_format=s["answer_format"], question_type=s["question_type"], thought=th,
                    pred_index=int(tr.pred[i]), simple_thought=s["thought"] if exp else ""))
    finally:
        texts.close()
    return out


def by_type(traces: Iterable[Trace]) -> dict[str, list[Trace]]:
    groups: dict[str, list[Trace]] = {k: [] for k in TRACE_TYPES}
    for t in traces:
        groups[t.cot_type].append(t)
    return groups


def sft_traces(traces: Iterable[Trace], opts: AssembleOptions = AssembleOptions()) -> list[Trace]:
    """The SFT selection: O ∪ O→O (length-weighted, ``sft_ratio``) plus as many X→O (by added length)."""
    traces = list(traces)
    return [traces[i] for i in _sft_plan(_list_traces(traces), opts)] if traces else []


def dpo_pairs(traces: Iterable[Trace], opts: AssembleOptions = AssembleOptions()) -> list[tuple[str, Trace, Trace]]:
    """``(kind, chosen, rejected)`` for every requested kind; each pair once, chosen and rejected shown the
    same prompt; the rejected side names a (wrong) option so both answers render alike."""
    traces = list(traces)
    if not traces:
        return []
    kind, c, r = _dpo_plan(_list_traces(traces), opts)
    return [(opts.pair_kinds[k], traces[i], traces[j]) for k, i, j in zip(kind.tolist(), c.tolist(), r.tolist())]


# ------------------------------------------------------------------------------------------------------ MCQs

MCQ_VARIANTS = ("think", "direct")
_MCQ_COLUMNS = ("mcq_id", "image_id", "item_index", "question", "question_type", "options", "answer_index", "valid")


def mcq_batches(run: Any, opts: AssembleOptions = AssembleOptions(), variant: str = "think",
                batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """One row per valid MCQ: the prompt the VLM saw (think variant) or its direct-answer twin, and the
    gold answer ``<answer> … </answer>`` in the requested format.

    The prompt is the one stage 2 used for that MCQ (its first sample), so the shuffle is the run's own;
    an MCQ that never reached stage 2 is rendered here with a shuffle seeded by its id.
    """
    if variant not in MCQ_VARIANTS:
        raise ValueError(f"variant must be one of {MCQ_VARIANTS}, got {variant!r}")
    m = _read(run, table_for("question"), _MCQ_COLUMNS)
    m = m.filter(m["valid"])
    m = m.take(pc.sort_indices(m, [("mcq_id", "ascending"), ("image_id", "ascending"),
                                   ("item_index", "ascending")]))
    if not m.num_rows:
        return
    mcqs = {c: _one_chunk(m[c]) for c in _MCQ_COLUMNS}
    del m
    first = _first_samples(run)
    at, has = _positions(mcqs["mcq_id"], first["mcq_id"])
    for sl in _chunks(len(at), batch_rows):
        yield _mcq_batch({c: v[sl] for c, v in mcqs.items()}, first, at[sl], has[sl], variant, opts)


def _first_samples(run: Any) -> dict[str, pa.Array]:
    """The prompt columns of the first sample of each MCQ (by ``sample_index``, then ``sample_id``): found on
    rank columns (:func:`_key_ranks`, :func:`_rank_order`), then only those rows read back."""
    stage = table_for("short_thought")
    columns = ("mcq_id", "system_prompt", "user_text", "options", "answer_index", "answer_format")
    ranks = _key_ranks(run, stage, ("mcq_id", "sample_index", "sample_id"))
    if not ranks:
        return {c: pa.array([], TABLES[stage].schema.field(c).type) for c in columns}
    order = _rank_order(ranks)
    mcq = ranks[0][order]  # each MCQ's samples are adjacent in this order
    del ranks
    rows = order[np.r_[0, np.flatnonzero(mcq[1:] != mcq[:-1]) + 1]]
    del mcq, order
    routed = _Routed(_stream(run, stage, columns, rows=np.unique(rows), dictionary=("system_prompt", "user_text")),
                     [rows], memory_bytes=1 << 62)
    try:
        t = pa.Table.from_batches(list(routed.batches(0)))
    finally:
        routed.close()
    return {c: _one_chunk(t[c]) for c in columns}


def _mcq_batch(m: dict[str, pa.Array], first: dict[str, pa.Array], at: np.ndarray, has: np.ndarray, variant: str,
               opts: AssembleOptions) -> pa.RecordBatch:
    n = len(at)
    if len(first["mcq_id"]):
        idx = pa.array(at)
        system, user = first["system_prompt"].take(idx).cast(_STR), first["user_text"].take(idx).cast(_STR)
        options, gold, fmt = first["options"].take(idx), first["answer_index"].take(idx), first["answer_format"].take(idx)
    else:  # no stage-2 sample at all
        system, user, options = pa.nulls(n, _STR), pa.nulls(n, _STR), pa.nulls(n, pa.list_(_STR))
        gold, fmt = pa.nulls(n, pa.int32()), pa.nulls(n, _STR)
    if variant == "direct" and has.any():  # the direct twin of each distinct (think prompt, type, format)
        twins: dict[tuple, str] = {}
        keys = zip(system.to_pylist(), m["question_type"].to_pylist(), fmt.to_pylist())
        system = pa.array([twins.setdefault(k, _direct_twin(*k)) if h else None for k, h in zip(keys, has)], _STR)
    if not has.all():  # MCQs that never reached stage 2: a seeded fresh prompt each (as the row code)
        missing = np.flatnonzero(~has)
        rows = pa.table({c: v.take(pa.array(missing)) for c, v in m.items()}).to_pylist()
        fresh = dict(zip(missing.tolist(), (_mcq_prompt(r, None, variant, opts.seed) for r in rows)))
        mask = pa.array(~has)

        def pick(col: pa.Array, attr: str, typ: pa.DataType) -> pa.Array:
            return pc.if_else(mask, pa.array([getattr(fresh[i], attr) if i in fresh else None for i in range(n)],
                                             typ), col)

        system, user = pick(system, "system_prompt", _STR), pick(user, "user_text", _STR)
        options, gold = pick(options, "options", pa.list_(_STR)), pick(gold, "answer_index", pa.int32())
        fmt = pick(fmt, "answer_format", _STR)
    answer = _format_answers(options, fmt, gold.to_numpy(zero_copy_only=False).astype(np.int64), opts.answer_format)
    return pa.RecordBatch.from_arrays([
        pa.array(_content_ids("mcq", m["mcq_id"], variant, opts.answer_format), _STR),
        m["image_id"], m["mcq_id"], m["question"], m["question_type"], options, gold, answer,
        _messages(("system", "user", "assistant"),
                  [system, user, pc.binary_join_element_wise("<answer> ", answer, " </answer>", "")]),
    ], schema=MCQ_SCHEMA)


def mcq_table(run: Any, opts: AssembleOptions = AssembleOptions(), variant: str = "think") -> pa.Table:
    """The ``mcq`` (``variant="think"``) or ``mcq_direct`` set as a table of that config's Arrow schema."""
    return _table("mcq" if variant == "think" else "mcq_direct", mcq_batches(run, opts, variant))


def build_mcq(run: Any, opts: AssembleOptions = AssembleOptions(), variant: str = "think") -> list[dict[str, Any]]:
    """One row per valid MCQ (see :func:`mcq_batches`)."""
    return mcq_table(run, opts, variant).to_pylist()


@dataclass(frozen=True)
class _Prompt:
    system_prompt: str
    user_text: str
    options: tuple[str, ...]
    answer_index: int
    answer_format: str


def _mcq_prompt(m: dict, sample: dict | None, variant: str, seed: int) -> _Prompt:
    """The prompt of an MCQ: stage 2's own (shuffle, styles) when it has a sample, else a seeded fresh one."""
    if sample is not None:
        system = sample["system_prompt"] if variant == "think" else _direct_twin(
            sample["system_prompt"], m["question_type"], sample["answer_format"])
        return _Prompt(system, sample["user_text"], tuple(sample["options"]), sample["answer_index"],
                       sample["answer_format"])
    rng = rng_for(seed, "mcq-prompt", m["mcq_id"])
    options, gold = shuffle_options(m["options"], m["answer_index"], rng)
    style, fmt = rng.choice(OPTION_STYLES), rng.choice(ANSWER_FORMATS)
    return _Prompt(_system_prompt(variant, m["question_type"], fmt), _user_text(m["question"], options, style),
                   tuple(options), gold, fmt)


# The authors' think / direct preambles (their templates, as their published prompts show them): used only to
# turn an imported think prompt into its direct twin when builder.prompts cannot render it.
_THINK_PREAMBLE = ("A conversation between User and Assistant. The user asks a visual question, and the Assistant "
                   "solves it. The assistant first thinks about the reasoning process in the mind and then provides "
                   "the user with the answer. The reasoning process and answer are enclosed within <think> </think> "
                   "and <answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
                   "<answer> answer here </answer>.")
_DIRECT_PREAMBLE = ("A conversation between User and Assistant. The user asks a visual question, and the Assistant "
                    "solves it. The assistant provides the user with the answer. The answer is enclosed within "
                    "<answer> </answer> tags, respectively, i.e., <answer> answer here </answer>.")


def _direct_twin(think_system: str, question_type: str, answer_format: str) -> str:
    """The direct-answer system prompt matching a think system prompt."""
    if think_system.startswith(_THINK_PREAMBLE):  # an imported (authors') prompt: keep their wording
        return _DIRECT_PREAMBLE + think_system[len(_THINK_PREAMBLE):]
    return _system_prompt("direct", question_type, answer_format)


@lru_cache(maxsize=1)
def _prompts() -> Any:
    return Prompts()


def _system_prompt(variant: str, question_type: str, answer_format: str) -> str:
    return _prompts().system(variant=variant, question_type=question_type, answer_format=answer_format)


def _user_text(question: str, options: Sequence[str], style: str) -> str:
    return _prompts().vlm_user_text(question=question, options=options, option_style=style)


# ------------------------------------------------------------------------------------------- empty sets


def why_empty(run: Any, name: str, opts: AssembleOptions = AssembleOptions()) -> str:
    """Why the set ``name`` (``sft``, ``dpo``, ``simple_cot``, ``mcq``, ``mcq_direct``) of ``run`` has no rows;
    "" when it has some. ``lpt export`` reports this for every config it leaves out."""
    if name in ("mcq", "mcq_direct"):
        valid = _read(run, table_for("question"), ("valid",))["valid"]
        return "" if pc.any(valid).as_py() else "stage 1 wrote no valid MCQ"
    if name not in ("sft", "dpo", "simple_cot"):
        raise ValueError(f"unknown set {name!r}")
    tr = _run_traces(run)
    if not len(tr):
        return "the run has no kept simple CoT or expansion"
    count = {t: int((tr.cot_type == i).sum()) for i, t in enumerate(TRACE_TYPES)}
    if name == "simple_cot":
        o = count["O"]
        if not o:
            return "the run has no kept correct simple thought (O)"
        if not int(o * opts.simple_cot_ratio):
            return f"{o} correct simple thoughts (O) x simple_cot_ratio {opts.simple_cot_ratio:g} round down to 0"
        return ""
    if name == "dpo":
        if len(_dpo_plan(tr, opts, dedupe=False)[0]):  # dropping repeats never empties a set
            return ""
        have = ", ".join(f"{k} {v}" for k, v in count.items() if v)
        return (f"no pair of the kinds {', '.join(opts.pair_kinds)} (kept traces: {have}); a pair needs a chosen "
                f"and a rejected trace of the same prompt")
    return _why_no_sft(count, opts)


def _why_no_sft(count: dict[str, int], opts: AssembleOptions) -> str:
    """Why the SFT set is empty, from the kept traces by type; "" when it is not."""
    pool, x_o = count["O"] + count["O_O"], count["X_O"]
    n = int(pool * opts.sft_ratio)
    if opts.sft_balance:
        n = min(n, x_o)
    n_xo = n if opts.sft_balance else int(x_o * opts.sft_ratio)
    if min(n, pool) > 0 or min(n_xo, x_o) > 0:
        return ""
    if opts.sft_balance and not x_o:
        return (f"no X→O trace (a wrong simple thought whose expansion reaches the right answer; the run keeps "
                f"{count['X_X']} X→X); SFT is 50/50 O ∪ O→O / X→O by construction (docs/method.md), so its O ∪ O→O half "
                f"({pool} traces) is cut to 0 as well; sft_balance=False (--no-sft-balance) keeps that half")
    if opts.sft_balance:
        return (f"O ∪ O→O ({pool} traces) x sft_ratio {opts.sft_ratio:g} rounds down to 0; SFT is 50/50 by "
                f"construction, so the X→O half ({x_o} traces) is cut to 0 as well")
    return f"O ∪ O→O ({pool} traces) and X→O ({x_o}) x sft_ratio {opts.sft_ratio:g} round down to 0"


# ------------------------------------------------------------------------------------------------ raw stages


def raw_batches(run: Any, stage: str, batch_rows: int = BATCH_ROWS, *,
                sort_memory_bytes: int = SORT_MEMORY_BYTES) -> Iterator[pa.RecordBatch]:
    """Every record of one stage, as written, in :meth:`RunDir.read`'s order (sorted by the stage's keys).

    The sort is computed on the key columns alone, one at a time, as ranks (:func:`_key_order`: no id is held).
    Rows already in that order stream from the files; a stage of at most ``sort_memory_bytes`` (in Arrow,
    estimated from a sample) is sorted in memory; a bigger one is bucketed by output position into Arrow IPC
    spill files in one pass over the files, then each bucket is put in order and emitted, so memory stays about
    ``sort_memory_bytes`` whatever the size of the stage.
    """
    full = TABLES[stage].schema
    files = _files(run, stage)
    order = _narrow(_key_order(run, stage))
    total = len(order)
    if not total:
        return
    if (order == np.arange(total)).all():  # already in order: stream
        rows = (b.cast(full) if b.schema != full else b for p in files for b in _batches(stage, p))
        yield from _rebatch(rows, batch_rows)
        return
    repeated = TABLES[stage].repeated  # read as dictionaries, sorted as indices, strings again batch by batch
    rows = (b for p in files for b in _batches(stage, p, dictionary=repeated, batch_rows=8192))
    nbytes = _arrow_bytes(stage, files, total, repeated)
    if nbytes <= sort_memory_bytes:
        table = pa.Table.from_batches(list(rows)).unify_dictionaries().combine_chunks()
        for sl in _chunks(total, batch_rows):
            yield pa.Table.from_batches([table.take(pa.array(order[sl])).to_batches()[0]]).cast(full).to_batches()[0]
        return
    # the batches end where they did when a bucket held sort_memory_bytes / 3 (the files' row groups, and so their
    # bytes, follow the batches); the buckets themselves hold SPILL_BUCKET_BYTES
    block = max(batch_rows, int(sort_memory_bytes * total // nbytes // 3))
    for batch in _spill_sort(stage, rows, order, total, min(block, SPILL_BUCKET_BYTES * total // nbytes), batch_rows,
                             block):
        yield batch.cast(full)


def _key_order(run: Any, stage: str, keys: Sequence[str] | None = None) -> np.ndarray:
    """The positions of a stage's rows sorted by ``keys`` (default: its sort keys; stable), from
    :func:`_key_ranks`."""
    return _rank_order(_key_ranks(run, stage, keys or TABLES[stage].sort_keys))


def _rank_order(ranks: list[np.ndarray]) -> np.ndarray:
    """The positions of rows sorted by rank columns (the first the most significant; stable)."""
    if not ranks:
        return np.zeros(0, np.int64)
    return np.lexsort(ranks[::-1]) if len(ranks) > 1 else np.argsort(ranks[0], kind="stable")


def _key_ranks(run: Any, stage: str, keys: Sequence[str]) -> list[np.ndarray]:
    """One dense rank column per key of a stage's rows (``[]`` for no row), each key read alone: a string key
    ranked by :func:`_id_ranks` (16-byte prefixes and hashes, ties read in full; no id is held), any other (or
    one with nulls) by ``pyarrow.compute.rank``."""
    ranks = []
    for key in keys:
        text = pa.types.is_string(TABLES[stage].schema.field(key).type)
        parts: list[Any] = []
        for _, b in _stream(run, stage, [key]):
            col = b.column(0)
            text = text and not col.null_count
            parts.append((*_id_prefix(col), id_hash(col)) if text else col)
        if not parts:
            return []
        if text:
            hi, lo, h = (np.concatenate(p) for p in zip(*parts))
            del parts
            ranks.append(_id_ranks(hi, lo, lambda at, k=key: _gather(run, stage, k, at), h))
        else:
            col = pa.chunked_array([b.column(0) for _, b in _stream(run, stage, [key])])
            ranks.append(pc.rank(col, "ascending", tiebreaker="dense").to_numpy())
    return ranks


def _spill_sort(stage: str, rows: Iterable[pa.RecordBatch], order: np.ndarray, total: int, bucket_rows: int,
                batch_rows: int, block_rows: int | None = None) -> Iterator[pa.RecordBatch]:
    """Rows in ``order``, through :class:`_Routed`'s spill files (``bucket_rows`` rows a bucket; the batches
    end every ``batch_rows`` rows of each block of ``block_rows``)."""

    def numbered() -> Iterator[tuple[int, pa.RecordBatch]]:
        start = 0
        for batch in rows:
            yield start, batch
            start += batch.num_rows
            _release(batch.nbytes)

    routed = _Routed(numbered(), [order], bucket_rows=max(batch_rows, int(bucket_rows)), batch_rows=batch_rows,
                     prefix=f"lpt-sort-{stage}-", block_rows=block_rows)
    try:
        yield from routed.batches(0)
    finally:
        routed.close()


def _arrow_bytes(stage: str, files: Sequence[Path], total: int, dictionary: Sequence[str] = ()) -> int:
    """The stage's size in memory, estimated from the first rows of its biggest file."""
    biggest = max(files, key=lambda p: p.stat().st_size)
    sample = next(_batches(stage, biggest, batch_rows=2000, dictionary=dictionary), None)
    return int(sample.nbytes / max(1, sample.num_rows) * total) if sample is not None else 0


def _rebatch(batches: Iterable[pa.RecordBatch], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The same rows in batches of ``batch_rows`` (the last one shorter)."""
    pending: list[pa.RecordBatch] = []
    n = 0
    for b in batches:
        pending.append(b)
        n += b.num_rows
        while n >= batch_rows:
            t = pa.Table.from_batches(pending)
            yield t.slice(0, batch_rows).combine_chunks().to_batches()[0]
            rest = t.slice(batch_rows)
            pending, n = rest.to_batches(), rest.num_rows
    if n:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def raw_table(run: Any, stage: str) -> pa.Table:
    """Every record of one stage, as written, sorted like :meth:`RunDir.read` (a table of that config's schema)."""
    return _table(f"raw_{stage}", raw_batches(run, stage)) if f"raw_{stage}" in SCHEMAS else \
        pa.Table.from_batches(list(raw_batches(run, stage)), schema=TABLES[stage].schema)


def build_raw(run: Any, stage: str) -> list[dict[str, Any]]:
    """Every record of one stage, as written (every sample, its parse, its label, its provenance)."""
    return raw_table(run, stage).to_pylist()


# -------------------------------------------------------------------------------------------- by config


def batches(run: Any, name: str, opts: AssembleOptions = AssembleOptions(), batch_rows: int = BATCH_ROWS,
            *, traces: _Traces | None = None) -> Iterator[pa.RecordBatch]:
    """The rows of run config ``name`` (``sft``, ``dpo``, ``mcq``, ``mcq_direct``, ``simple_cot``, ``raw_mcq``,
    ``raw_simple_cot``, ``raw_expansion``) as record batches of :data:`SCHEMAS` ``[name]``.

    ``traces`` (from :func:`trace_index`) lets several trace sets share one read of the stage tables.
    """
    if name == "sft":
        return sft_batches(run, opts, batch_rows, traces=traces)
    if name == "dpo":
        return dpo_batches(run, opts, batch_rows, traces=traces)
    if name == "simple_cot":
        return simple_cot_batches(run, opts, batch_rows, traces=traces)
    if name in ("mcq", "mcq_direct"):
        return mcq_batches(run, opts, "think" if name == "mcq" else "direct", batch_rows)
    if name.startswith("raw_") and name in SCHEMAS:
        return raw_batches(run, name[len("raw_"):], batch_rows)
    raise ValueError(f"unknown run config {name!r}; choose from {sorted(SCHEMAS)}")


def table(run: Any, name: str, opts: AssembleOptions = AssembleOptions()) -> pa.Table:
    """Run config ``name`` as one table of its Arrow schema (see :func:`batches`)."""
    return _table(name, batches(run, name, opts))


def trace_index(run: Any, *, memory_bytes: int = ROUTE_MEMORY_BYTES, plan: Sequence[str] = (),
                opts: AssembleOptions = AssembleOptions()) -> _Traces:
    """A run's kept traces indexed once, as small columns (pass as ``traces=`` to :func:`batches` for sft, dpo
    and simple_cot). ``memory_bytes``: how much text a set may hold while it is rendered; past it, its texts go
    through spill files (``traces.src.buckets`` counts them per route). ``plan``: the sets to plan at once with
    ``opts`` (:meth:`_Traces.plan_ahead`); the index then serves only those."""
    tr = _run_traces(run, memory_bytes=memory_bytes)
    release_memory()  # the passes' freed pages: at 10M traces 1.29 GB resident for 0.56 GB live without this
    if plan:
        tr.plan_ahead(plan, opts)
    return tr


__all__ = [
    "AssembleOptions", "BATCH_ROWS", "DEFAULT_PAIR_KINDS", "DPO_PAIR_RULES", "DPO_SCHEMA", "MCQ_SCHEMA", "MCQ_VARIANTS", "PAIR_KINDS",
    "SCHEMAS", "SFT_SCHEMA", "TRACE_TYPES", "Trace", "batches", "build_dpo", "build_mcq", "build_raw", "build_sft",
    "build_simple_cot", "by_type", "dpo_batches", "dpo_pairs", "dpo_table", "length_weighted_subsample",
    "load_traces", "mcq_batches", "mcq_table", "raw_batches", "raw_table", "schema", "sft_batches", "sft_table",
    "release_memory", "sft_traces", "simple_cot_batches", "simple_cot_table", "table", "trace_ids", "trace_index",
    "why_empty",
]
