"""The run directory: one folder per stage of parquet files written atomically, plus a manifest.

Layout::

    RUN/
      manifest.json                          config, model ids, seeds, package versions, row counts
      source/table.parquet                   a whole-table write (write_table: the source, an import)
      <stage>/shard-0-of-1.chunk-<hash>.parquet  a chunk of a stage's table: the rows made from some inputs
                                             (write_chunk); one folder per registered stage (builder.stages)

A stage works through its inputs in chunks. Each chunk is written to a hidden temp file in the stage folder
and renamed into place (``os.replace``), so a crash loses at most the chunk in flight. Every chunk file
records, in its parquet schema metadata, the ids of the inputs it covers (inputs that made no rows too), so a
rerun skips them (:meth:`RunDir.done_inputs`) and never writes a row twice. A chunk's name carries its shard
(``shard-i-of-n``) and a hash of its input ids: N machines can write into one run directory, and reading all
files is the merge. :meth:`RunDir.read` returns rows in a deterministic order (sorted by the stage's key
columns), whatever the chunking, sharding or interruptions were.

Locks (:meth:`RunDir.claim`, :func:`builder.atomic.hold`): a run is held shared by the commands that add chunks to
it and exclusively by those that replace or rewrite it; a second command in the other mode refuses in one line
naming the holder. A stage's shard count N is fixed by its first writer (``<stage>/.shards``).

The reader rule (:meth:`RunDir.chunks`, :meth:`RunDir.check`): every reader takes a stage's files through one
check of their footers: the stage's columns and types, no input covered by two files, none outside the input
stage; a file that breaks it is a :class:`StoreError` naming it, for status as for export, view or the stages.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import importlib.metadata
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from builder.answers import MATCHER_VERSION
from builder.atomic import TMP_PREFIX, atomic_write, foreign_entries, hold, remove_orphans, write_text
from builder.ids import among, id_hash
from builder.records import content_id
from builder.stages import STAGES, TABLES, input_of  # the run directory's tables: the source and every registered stage's output

INPUT_IDS_KEY = b"lpt.input_ids"  # parquet schema metadata: JSON list of the input ids a chunk covers
SETTINGS_KEY = b"lpt.settings"  # parquet schema metadata: JSON of the settings the chunk was made with
MATCHER_KEY = b"lpt.matcher"  # parquet schema metadata: the answer matcher's version that labelled the rows
WHOLE_TABLE = "table.parquet"
LOCK_DIR = ".locks"
SHARDS_FILE = ".shards"  # in a stage folder: the shard count N fixed by the stage's first chunk writer

log = logging.getLogger(__name__)

_VERSIONED = ("longperceptualthoughts", "pyarrow", "transformers", "torch", "vllm", "openai", "jinja2", "datasets")


class StoreError(RuntimeError):
    """A run directory file that cannot be read or does not fit its stage; the message names the file."""


def parse_shard(shard: str | tuple[int, int]) -> tuple[int, int]:
    """``"2/4"``, ``"2-of-4"`` or ``(2, 4)`` -> ``(2, 4)`` (validated: 0 <= i < n)."""
    if isinstance(shard, str):
        s = shard.replace("-of-", "/")
        try:
            i, n = (int(x) for x in s.split("/"))
        except ValueError:
            raise ValueError(f"shard must look like 'i/N' or 'i-of-N', got {shard!r}") from None
    else:
        i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard index must satisfy 0 <= i < N, got {i}/{n}")
    return int(i), int(n)


def shard_name(shard: str | tuple[int, int]) -> str:
    i, n = parse_shard(shard)
    return f"{i}-of-{n}"


def package_versions(names: Iterable[str] = _VERSIONED) -> dict[str, str]:
    """Installed versions of the packages that shape a run (absent ones are left out)."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


class RunDir:
    """A run directory (created on first write). See the module docstring for the layout."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ---------------------------------------------------------------------------------------------- files

    def stage_dir(self, stage: str) -> Path:
        if stage not in TABLES:
            raise ValueError(f"unknown stage {stage!r}; stages are {list(TABLES)}")
        return self.path / stage

    def files(self, stage: str) -> list[Path]:
        """The stage's finished parquet files, sorted by name (temp files of an interrupted write excluded)."""
        d = self.stage_dir(stage)
        if not d.is_dir():
            return []
        return sorted(p for p in d.iterdir() if p.suffix == ".parquet" and not p.name.startswith("."))

    def has(self, stage: str) -> bool:
        return bool(self.files(stage))

    # ---------------------------------------------------------------------------------------------- write

    def _cast(self, stage: str, table: pa.Table) -> pa.Table:
        schema = TABLES[stage].schema
        if table.schema.names != schema.names:
            raise StoreError(f"{stage}: columns {table.schema.names} do not match the stage schema {schema.names}")
        return table if table.schema.equals(schema, check_metadata=True) else table.cast(schema)

    def write_chunk(self, stage: str, table: pa.Table, input_ids: Iterable[str],
                    shard: str | tuple[int, int] = "0-of-1", settings: Mapping[str, Any] | None = None) -> Path:
        """Atomically write the rows made from ``input_ids`` (all of them, even those that made no rows).

        ``settings`` (JSON-able) is stored with the chunk; see :meth:`chunk_settings`.
        """
        ids = sorted(set(input_ids))
        if not ids:
            raise ValueError("a chunk must cover at least one input id")
        table = self._cast(stage, table)
        meta = dict(table.schema.metadata or {})
        meta[INPUT_IDS_KEY] = json.dumps(ids).encode()
        if settings is not None:
            meta[SETTINGS_KEY] = json.dumps(settings, sort_keys=True, default=str).encode()
        meta[MATCHER_KEY] = str(MATCHER_VERSION).encode()
        table = table.replace_schema_metadata(meta)
        path = self.stage_dir(stage) / f"shard-{shard_name(shard)}.chunk-{content_id(*ids)[:20]}.parquet"
        atomic_write(path, lambda tmp: pq.write_table(table, tmp), tag=f"shard-{shard_name(shard)}")
        return path

    def write_table(self, stage: str, table: pa.Table, input_ids: Iterable[str] | None = None) -> Path:
        """Replace the whole stage with ``table`` (e.g. the source, or an import), atomically.

        ``input_ids``: the inputs the table covers (default: those its rows name); give them when an input may
        have made no row, so that it still counts as done."""
        table = self._cast(stage, table)
        meta = dict(table.schema.metadata or {})
        col = TABLES[stage].input_column
        if col:
            ids = set(input_ids or ()) | set(table.column(col).to_pylist())
            meta[INPUT_IDS_KEY] = json.dumps(sorted(ids)).encode()
        meta[MATCHER_KEY] = str(MATCHER_VERSION).encode()
        table = table.replace_schema_metadata(meta)
        path = self.stage_dir(stage) / WHOLE_TABLE
        atomic_write(path, lambda tmp: pq.write_table(table, tmp), tag="table")
        for p in self.files(stage):
            if p != path:
                p.unlink()
        (self.stage_dir(stage) / SHARDS_FILE).unlink(missing_ok=True)  # a whole table has no shards
        self.update_manifest(counts={stage: table.num_rows})
        return path

    # ---------------------------------------------------------------------------------------------- locks

    @contextlib.contextmanager
    def lock(self, name: str, *, wait: bool = False):
        """Hold the run's lock ``name`` (e.g. ``shard-0-of-2``) while writing. The lock is an OS file lock, so a
        killed holder releases it; a second holder gets a :class:`StoreError` naming the first (or, with
        ``wait``, blocks until it is free)."""
        folder = self.path / LOCK_DIR
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.lock"
        f = open(path, "a+", encoding="utf-8")
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                raise StoreError(f"{self.path} is being written by {holder} (lock {path}); wait for it to finish, "
                                 f"or run another shard") from None
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {socket.gethostname()} since {_now()}")
            f.flush()
            yield path
        finally:
            f.close()  # releases the lock

    @contextlib.contextmanager
    def claim(self, *, shared: bool, what: str = "written"):
        """Hold the run for a whole command: ``shared`` by its writers (generate, a stage: their chunks add up),
        exclusively by what replaces or rewrites it (import --overwrite, relabel, demo). Another command holding
        it in the other mode makes this one refuse, naming it (:class:`builder.atomic.Busy`). Temporary files a
        killed rewrite left (``.tmp-relabel-*``; with ``shared=False`` every temp file) are removed."""
        with hold(self.path, shared=shared, what=what) as path:
            tags = ("relabel",) if shared else ("",)
            for folder in [self.path, *(self.path / s for s in TABLES)]:
                for tag in tags:
                    for p in folder.glob(f"{TMP_PREFIX}{tag}*") if folder.is_dir() else ():
                        p.unlink(missing_ok=True)
            yield path

    def foreign(self) -> list[str]:
        """What the run directory holds that a run does not write (paths relative to it): a run directory with
        any of it is never replaced or removed."""
        return foreign_entries(self.path, _run_writes)

    def fix_shards(self, stage: str, n: int) -> None:
        """Fix ``stage``'s shard count at ``n`` on its first writer (a file in the stage folder, written under
        a lock), or refuse an ``n`` other than the one fixed (or than its chunks were written with)."""
        with self.lock("manifest", wait=True):
            marker = self.stage_dir(stage) / SHARDS_FILE
            fixed = (marker.read_text(encoding="utf-8").split() or ["?"])[0] if marker.is_file() else None
            counts = self.shard_counts(stage)
            other = ({int(fixed)} if fixed and fixed.isdigit() else counts) - {n}
            if other:
                m = sorted(other)[0]
                raise StoreError(f"{self.path / stage}: written in {m} shards ({marker if fixed else 'its chunks'}); "
                                 f"run every shard of a stage with the same N (--shard i/{m})")
            if fixed is None:
                write_text(marker, f"{n}\n", tag="manifest")

    def remove_orphans(self, stage: str, shard: str | tuple[int, int]) -> int:
        """Remove the temporary chunk files a killed writer of ``shard`` left in ``stage`` (hold its lock)."""
        return remove_orphans(self.stage_dir(stage), f"shard-{shard_name(shard)}")

    # ----------------------------------------------------------------------------------------------- read

    def read_file(self, stage: str, path: Path, columns: Sequence[str] | None = None) -> pa.Table:
        """The rows of one file of ``stage``, checked against its schema (metadata dropped); with ``columns``,
        only those."""
        return self._read_file(stage, path, columns)[0]

    def _read_file(self, stage: str, path: Path, columns: Sequence[str] | None) -> tuple[pa.Table, dict[bytes, bytes]]:
        """:meth:`read_file`, and the file's schema metadata from the same opening (its footer is read once)."""
        schema = TABLES[stage].schema
        try:
            with pq.ParquetFile(path) as f:  # the file's columns are checked before any is read
                file_schema = f.schema_arrow
                t = f.read(columns=columns) if not _schema_problem(stage, file_schema) else None
        except Exception as e:  # pyarrow raises several types for a truncated or foreign file
            raise _unreadable(path, e) from None
        if t is None:
            raise StoreError(f"{path}: {_schema_problem(stage, file_schema)}")
        if columns is not None:
            schema = pa.schema([schema.field(c) for c in columns])
        t = t.replace_schema_metadata(None)
        return (t if t.schema.equals(schema) else t.cast(schema)), file_schema.metadata or {}  # a cast costs

    def read(self, stage: str, columns: Iterable[str] | None = None) -> pa.Table:
        """All rows of a stage (every shard and chunk), sorted by the stage's key columns; empty if none. With
        ``columns``, only those (and the key and input columns), in schema order: the other columns are not
        read at all.

        Each input's rows are taken from one file: should two files cover the same input (two writers of an old
        version, say), the later file's rows for it are left out, with a warning naming both files."""
        self.stage_dir(stage)  # an unknown stage fails here
        wanted = None if columns is None else _with_keys(stage, columns)
        tables = list(self.tables(stage, wanted))
        if not tables:
            empty = TABLES[stage].schema.empty_table()
            return empty if wanted is None else empty.select(wanted)
        return pa.concat_tables(tables).sort_by([(k, "ascending") for k in TABLES[stage].sort_keys])

    def tables(self, stage: str, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
        """The rows of a stage file by file, as :meth:`read` takes them (each input's rows once) but not sorted:
        what a pass over a big stage reads, one file in memory at a time."""
        files = self.chunks(stage)  # (an unknown stage fails here; so do a chunk twice, a foreign schema)
        wanted = None if columns is None else _with_keys(stage, columns)
        for p in files:
            t = self._read_file(stage, p, wanted)[0]
            yield t if columns is None else t.select(list(columns))

    def chunks(self, stage: str, known: np.ndarray | None = None) -> list[Path]:
        """The reader rule, in one place: :meth:`files` of ``stage`` once each file's footer is checked (its
        columns and their types are the stage's, and no two files cover one input: a chunk present under two
        names). With ``known`` (the 64-bit hashes of the input stage's ids, sorted: :func:`builder.ids.id_hash`),
        a file covering an input not in it (a chunk from another run) is refused too. A problem is a
        :class:`StoreError` naming the file: the first file, in order, that has one.

        The covered ids are held as hashes (16 bytes an id with their places, not a set of strings: 3.3M inputs
        of a 10M-record run); an id of a later file whose hash an earlier file holds too is compared in full
        before it is called a repeat."""
        files = self.files(stage)
        col = TABLES[stage].input_column
        hashes, where = [], []
        for k, p in enumerate(files):
            meta = self._metadata(p, stage)
            if col:
                h = self._covered_hashes(stage, p, meta)
                hashes.append(h)
                where.append(np.full(len(h), k, np.int32))
        if not col or not files:
            return files
        h, f = np.concatenate(hashes), np.concatenate(where)
        del hashes, where
        if not len(h):
            return files
        order = np.lexsort((f, h))  # by hash, then file: a hash's first file covers it first
        h_o, f_o = h[order], f[order]
        new = np.r_[True, h_o[1:] != h_o[:-1]]
        suspect = np.zeros(len(h), bool)
        suspect[order] = f_o > f_o[new][np.cumsum(new) - 1]  # a file before this one holds the hash too
        del order, h_o, f_o, new
        stray = np.zeros(len(h), bool) if known is None else ~among(h, known)
        starts = np.r_[0, np.cumsum(np.bincount(f, minlength=len(files)))]
        for k in np.unique(f[suspect | stray]):  # the files with a problem, in order: the first real one raises
            p = files[k]
            ids = self._covered(stage, p)
            mine_suspect = suspect[starts[k]:starts[k + 1]]
            mine_stray = stray[starts[k]:starts[k + 1]]
            for i in np.flatnonzero(mine_suspect):  # in the file's own order, as a reader meets them
                earlier = self._earlier_cover(stage, files[:k], h, f, h[starts[k] + i], ids[i])
                if earlier is not None:
                    raise StoreError(f"{p}: covers input {ids[i]!r} that {earlier.name} covers too (a chunk present "
                                     f"under two names, or copied); remove one of the two files")
            if mine_stray.any():
                stray_id = ids[int(np.flatnonzero(mine_stray)[0])]
                raise StoreError(f"{p}: covers input {stray_id!r}, which this run's {stage} input does not hold (a "
                                 f"chunk from another run); remove the file")
        return files

    def _earlier_cover(self, stage: str, earlier: list[Path], h: np.ndarray, f: np.ndarray, hash_: np.uint64,
                       id_: str) -> Path | None:
        """The earlier file that covers ``id_`` itself (not only its hash), or None."""
        for k in np.unique(f[(h == hash_) & (f < len(earlier))]):
            if id_ in self._covered(stage, earlier[k]):
                return earlier[k]
        return None

    @staticmethod
    def _metadata(p: Path, stage: str | None = None) -> dict[bytes, bytes]:
        """A file's parquet schema metadata; an unreadable file (or, with ``stage``, one whose columns are not the
        stage's) is a StoreError naming it."""
        try:
            schema = pq.read_schema(p)
        except Exception as e:  # pyarrow raises several types for a truncated or foreign file
            raise _unreadable(p, e) from None
        if stage is not None and _schema_problem(stage, schema):
            raise StoreError(f"{p}: {_schema_problem(stage, schema)}")
        return schema.metadata or {}

    def _covered(self, stage: str, p: Path, table: pa.Table | None = None,
                 meta: dict[bytes, bytes] | None = None) -> list[str]:
        """The input ids a file covers: its metadata, else (an older whole-table write) its rows' inputs."""
        meta = self._metadata(p) if meta is None else meta
        if INPUT_IDS_KEY in meta:
            try:
                return json.loads(meta[INPUT_IDS_KEY])
            except ValueError as e:
                raise StoreError(f"{p}: bad {INPUT_IDS_KEY.decode()} metadata: {e}") from None
        col = TABLES[stage].input_column
        t = table if table is not None else self.read_file(stage, p, [col])  # only the input column
        return list(dict.fromkeys(t.column(col).to_pylist()))

    def _covered_hashes(self, stage: str, p: Path, meta: dict[bytes, bytes] | None = None) -> np.ndarray:
        """:meth:`_covered` as 64-bit hashes (:func:`builder.ids.id_hash`), in the file's order."""
        return id_hash(pa.array(self._covered(stage, p, meta=meta), pa.string()))

    def check(self) -> None:
        """The reader rule over the whole run (what status, export and relabel check first): every table's files
        pass :meth:`chunks`, each stage's against the ids its input stage holds (no chunk from another run)."""
        specs = {s.name: s for s in STAGES}
        for name, table in TABLES.items():
            known = None
            if name in specs and table.input_column and self.has(input_of(specs[name])):
                known = self.id_hashes(input_of(specs[name]))
            self.chunks(name, known)

    def id_hashes(self, stage: str, select: str | None = None) -> np.ndarray:
        """The 64-bit hashes of a stage's ids (:func:`builder.ids.id_hash`; of the rows whose ``select`` column
        is true, with ``select``), sorted and distinct; the ids are read file by file, never held as text."""
        col = TABLES[stage].id_column
        parts = [id_hash(t.filter(pc.fill_null(t.column(select), False)).column(col) if select else t.column(col))
                 for t in self.tables(stage, [col, *([select] if select else [])])]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)

    def done_hashes(self, stage: str) -> np.ndarray:
        """:meth:`done_inputs` as 64-bit hashes (sorted, distinct)."""
        parts = [self._covered_hashes(stage, p) for p in self.files(stage)] if TABLES[stage].input_column else []
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)

    def done_inputs(self, stage: str) -> set[str]:
        """Ids of the inputs already covered by a chunk of ``stage`` (read from the files' metadata)."""
        done: set[str] = set()
        if TABLES[stage].input_column:
            for p in self.files(stage):
                done.update(self._covered(stage, p))
        return done

    def matcher_versions(self, stage: str) -> dict[Path, int | None]:
        """The answer-matcher version that labelled each file of ``stage`` (None: written before versions)."""
        out = {}
        for p in self.files(stage):
            raw = self._metadata(p).get(MATCHER_KEY)
            out[p] = int(raw) if raw else None
        return out

    def rewrite_file(self, stage: str, path: Path, table: pa.Table) -> None:
        """Replace the rows of one file of ``stage`` (same inputs covered, same settings), relabelled by the
        current answer matcher; atomic."""
        meta = {**self._metadata(path), MATCHER_KEY: str(MATCHER_VERSION).encode()}
        table = self._cast(stage, table).replace_schema_metadata(meta)
        atomic_write(path, lambda tmp: pq.write_table(table, tmp), tag="relabel")

    def shard_counts(self, stage: str) -> set[int]:
        """The shard counts (N of ``shard-i-of-N``) the stage's chunk files were written with."""
        out = set()
        for p in self.files(stage):
            if p.name.startswith("shard-"):
                out.add(int(p.name.split(".")[0].rsplit("-of-", 1)[1]))
        return out

    def chunk_settings(self, stage: str) -> dict[Path, dict[str, Any]]:
        """The settings each chunk file of ``stage`` was written with (files written without any are left out)."""
        out = {}
        for p in self.files(stage):
            meta = self._metadata(p)
            if SETTINGS_KEY in meta:
                out[p] = json.loads(meta[SETTINGS_KEY])
        return out

    def counts(self) -> dict[str, int]:
        """Rows per stage, from the files' footers."""
        out = {}
        for stage in TABLES:
            n = 0
            for p in self.files(stage):
                try:
                    n += pq.ParquetFile(p).metadata.num_rows
                except Exception as e:
                    raise _unreadable(p, e) from None
            out[stage] = n
        return out

    # ------------------------------------------------------------------------------------------- manifest

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest as stored ({} before the first write)."""
        p = self.manifest_path
        if not p.exists():
            return {}
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except ValueError as e:  # UnicodeDecodeError too
            raise StoreError(f"{p}: not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise StoreError(f"{p}: a run's manifest is a JSON object, this holds a {type(data).__name__}")
        return data

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into the manifest (dict values merge one level deep) and write it atomically.

        Package versions and an update time are refreshed on every write. Writers on several shards take turns
        (a lock), so none loses another's update.
        """
        with self.lock("manifest", wait=True):
            remove_orphans(self.path, "manifest")
            return self._update_manifest(fields)

    def _update_manifest(self, fields: dict[str, Any]) -> dict[str, Any]:
        m = self.manifest
        m.setdefault("created", _now())
        for key, value in fields.items():
            if isinstance(value, Mapping) and isinstance(m.get(key), dict):
                m[key] = {**m[key], **value}
            else:
                m[key] = value
        m["updated"] = _now()
        m["versions"] = package_versions()
        write_text(self.manifest_path, json.dumps(m, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n",
                   tag="manifest")
        return m


def _schema_problem(stage: str, schema: pa.Schema) -> str:
    """What makes a file's columns differ from the stage's (an extra, missing or wrong-typed column); "" if none."""
    want = TABLES[stage].schema
    if schema.names != want.names:
        extra = [n for n in schema.names if n not in want.names]
        missing = [n for n in want.names if n not in schema.names]
        what = (f"extra column {extra[0]!r}" if extra else f"no column {missing[0]!r}" if missing
                else "columns in another order")
        return f"columns {schema.names} do not match the {stage!r} schema {want.names} ({what})"
    for field in want:
        got = schema.field(field.name).type
        if got != field.type:
            return f"column {field.name!r} is {got}, the {stage!r} schema says {field.type}"
    return ""


def _run_writes(rel: str) -> bool:
    """Whether a file at ``rel`` in a run directory is one a run writes."""
    parts = Path(rel).parts
    if parts[-1].startswith(TMP_PREFIX) or rel == "manifest.json":
        return True
    if len(parts) == 2 and parts[0] == LOCK_DIR:
        return parts[1].endswith(".lock")
    return len(parts) == 2 and parts[0] in TABLES and (parts[1].endswith(".parquet") or parts[1] == SHARDS_FILE)


def _with_keys(stage: str, columns: Iterable[str]) -> list[str]:
    """``columns`` of ``stage`` and its key and input columns, in schema order (an unknown one is an error)."""
    spec = TABLES[stage]
    wanted = set(columns)
    unknown = sorted(wanted - set(spec.schema.names))
    if unknown:
        raise ValueError(f"{stage} has no column {unknown[0]!r}; its columns are {spec.schema.names}")
    wanted |= {*spec.sort_keys, spec.input_column}
    return [c for c in spec.schema.names if c in wanted]


def _unreadable(path: Path, e: Exception) -> StoreError:
    return StoreError(f"{path}: unreadable parquet file ({type(e).__name__}: {e}); delete it and rerun the stage to "
                      f"redo its inputs")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


__all__ = ["INPUT_IDS_KEY", "MATCHER_KEY", "SETTINGS_KEY", "RunDir", "StoreError", "package_versions",
           "parse_shard", "shard_name"]
