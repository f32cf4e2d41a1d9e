"""``lpt view RUN --serve``: the trace viewer of any run, served page by page from its parquet files.

A local HTTP server (``127.0.0.1`` only, the standard library's ``http.server``) sends the page of
:mod:`builder.view` without records; the page asks ``/api/page?<its state>`` for each page of items. At start
the server reads only the small columns of each stage (ids, flags, cue, drop reason, question type) into an
:class:`Index`, where the filters of the page are array operations; a page's texts are then read from the row
groups that hold its rows, and turned into the page's records by :class:`builder.view._Page`, as for the single
file. A search reads the text columns one row group at a time (the last search's hits are kept).

The filter rules are the page's (``viewer.js``: ``traceStream``, ``pairStream``, ``mcqStream``) on arrays. Two
approximations: an expansion matches a search through its whole long thought (a match across the joint of the
simple thought and the added text counts), and an exported DPO side that is not among the records is not searched.
"""

from __future__ import annotations

import json
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from builder.ids import among, find, id_hash
from builder.records import TABLES
from builder.stages import table_for
from builder.stats import RUN, Opened, config_files, open_input
from builder.view import (CORRECT, EXPANSION_COLUMNS, FLAGS, ID_CHARS, IN_SFT, KEEP, PAGE_SIZE, PARSED,
                          QUESTION_COLUMNS, SIMPLE_COLUMNS, SIMPLE_CORRECT, THUMB_SIDE, _asset, _escape,
                          _json_for_script, _Page, page_meta, plugin_sets)

HOST = "127.0.0.1"
MAX_PAGE_SIZE = 200
BATCH_ROWS = 8192  # rows decoded at a time by a pass over a stage (the index, a search)
PAGE_BATCH_ROWS = 1024  # … and to find a page's rows in their row group
"""The most items one request returns (a larger ``size`` is cut to it)."""
TYPES = ["O", "X", "O_O", "O_X", "X_O", "X_X"]


class _Rows:
    """Where each record of a stage lies (file, row), so that a page reads only the row groups of its rows."""

    def __init__(self, o: Opened, stage: str) -> None:
        self.stage = stage
        self.files = [str(f) for f in o.files(stage)]
        self.schema = TABLES[stage].schema
        self.groups: list[tuple[str, int, int, int]] = []  # (file, row group, first row in the scan, rows)
        start = 0
        for f in self.files:
            meta = pq.read_metadata(f)
            for g in range(meta.num_row_groups):
                self.groups.append((f, g, start, meta.row_group(g).num_rows))
                start += meta.row_group(g).num_rows

    def scan(self, columns: list[str]) -> pa.Table:
        """``columns`` of every row, file after file, with ``_at`` = the row's place in the scan (for the
        questions, a small table; the traces are read by :func:`_arrays`)."""
        schema = pa.schema([self.schema.field(c) for c in columns])
        t = pa.concat_tables([schema.empty_table(), *self.batches(columns)]).combine_chunks()
        return t.append_column("_at", pa.array(np.arange(t.num_rows, dtype=np.int64)))

    def batches(self, columns: list[str], rows: int = BATCH_ROWS):
        """``columns`` of every row, ``rows`` at a time (decoded page by page: a big row group is never held
        whole), in the scan's order."""
        schema = pa.schema([self.schema.field(c) for c in columns])
        for f in self.files:
            for b in pq.ParquetFile(f).iter_batches(batch_size=rows, columns=columns, use_threads=False):
                yield pa.Table.from_batches([b]).cast(schema)

    def take(self, at: np.ndarray, columns: list[str]) -> pa.Table:
        """The rows at scan places ``at`` (in that order), reading only their row groups."""
        schema = pa.schema([self.schema.field(c) for c in columns])
        if not len(at):
            return schema.empty_table()
        parts, places = [], []
        for f, g, start, n in self.groups:
            inside = np.sort(at[(at >= start) & (at < start + n)]) - start
            if not len(inside):
                continue
            batches = pq.ParquetFile(f).iter_batches(batch_size=PAGE_BATCH_ROWS, row_groups=[g], columns=columns,
                                                     use_threads=False)
            first = 0
            for b in batches:  # up to the last row needed; a batch at a time
                mine = inside[(inside >= first) & (inside < first + b.num_rows)]
                if len(mine):
                    parts.append(pa.Table.from_batches([b]).cast(schema).take(pa.array(mine - first)))
                    places.append(mine + start)
                first += b.num_rows
                if first > inside[-1]:
                    break
        t = pa.concat_tables(parts)
        order = np.argsort(np.concatenate(places), kind="stable")
        pos = np.searchsorted(np.concatenate(places)[order], at)
        return t.take(pa.array(order[pos]))


def _codes(values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """``(a code per value, the names)``: names in the order they first appear (as the page interns them)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    d = pc.dictionary_encode(pc.fill_null(values, ""))
    return d.indices.to_numpy(zero_copy_only=False).astype(np.int32), d.dictionary.to_pylist()


def _np(t: pa.Table, col: str, dtype: Any = np.int64) -> np.ndarray:
    return pc.fill_null(t.column(col), False if t.schema.field(col).type == pa.bool_() else -1) \
        .to_numpy().astype(dtype)


def _flags(t: dict[str, np.ndarray], in_sft: np.ndarray) -> np.ndarray:
    """The record's flags (:func:`_arrays`) and whether it is in SFT (``in_sft``, a mask of the records)."""
    f = t.pop("f")
    f |= IN_SFT * in_sft.astype(np.uint8)
    return f


def _index_in(values: pa.ChunkedArray | pa.Array, of: pa.Array) -> np.ndarray:
    return pc.fill_null(pc.index_in(values, value_set=of), -1).to_numpy(zero_copy_only=False).astype(np.int64)


@dataclass
class Index:
    """The small columns of a run, sorted as the page shows them (``M`` questions, ``S`` simple thoughts by
    question, ``E`` expansions by simple thought, ``P`` DPO pairs), and the order of the trace list."""

    o: Opened
    rows: dict[str, _Rows]
    M: dict[str, Any]
    S: dict[str, Any]
    E: dict[str, Any]
    P: dict[str, Any]
    sets: list[dict[str, Any]]
    notes: list[str]
    meta: dict[str, Any]
    names: dict[str, list[str]]
    stream: np.ndarray = field(init=False)  # the trace list: 2*i simple thought i, 2*j+1 expansion j

    def __post_init__(self) -> None:
        # each simple thought, then its expansions in order (they are sorted by it): simple thought i stands
        # after the expansions of those before it, expansion j after its simple thought and the j before it
        n_s, n_e = len(self.S["m"]), len(self.E["s"])
        self.stream = np.empty(n_s + n_e, np.int32 if n_s + n_e < 2 ** 30 else np.int64)
        i = np.arange(n_s)
        self.stream[i + np.searchsorted(self.E["s"], i)] = 2 * i
        del i
        j = np.arange(n_e)
        self.stream[self.E["s"] + 1 + j] = 2 * j + 1


class _Names:
    """Repeated strings (cues, drop reasons, question types) as codes, one list of names for the whole run."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._code: dict[str, int] = {}

    def codes(self, col: pa.Array | pa.ChunkedArray) -> np.ndarray:
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        d = pc.dictionary_encode(pc.fill_null(col, ""))
        local = [self._code.setdefault(n, len(self._code)) for n in d.dictionary.to_pylist()]
        local = np.array(local, np.int16 if len(self._code) < 2 ** 15 else np.int32)  # a few names, as a rule
        self.names = list(self._code)
        return local[d.indices.to_numpy(zero_copy_only=False)] if len(local) else np.zeros(len(col), np.int16)


_FLAG_BITS = {"parsed": PARSED, "correct": CORRECT, "keep": KEEP, "simple_correct": SIMPLE_CORRECT}


def _arrays(rows: _Rows, kinds: dict[str, Any]) -> dict[str, np.ndarray]:
    """Columns of every row as NumPy arrays, read one row group at a time: ``"hash"`` (:func:`id_hash`),
    ``int``, ``"flag"`` (the columns of :data:`_FLAG_BITS`, together in ``f``, one byte a row), a
    :class:`_Names` (codes), or a function of the column; ``_at`` = the row's place in the scan."""
    parts: dict[str, list[np.ndarray]] = {c: [] for c in kinds if kinds[c] != "flag"} | {"f": []}
    for b in rows.batches(list(kinds)):
        f = np.zeros(b.num_rows, np.uint8)
        for c, kind in kinds.items():
            col = b.column(c)
            if kind == "hash":
                parts[c].append(id_hash(col))
            elif kind == "flag":
                f |= (_FLAG_BITS[c] * pc.fill_null(col, False).to_numpy(zero_copy_only=False)).astype(np.uint8)
            elif isinstance(kind, _Names):
                parts[c].append(kind.codes(col))
            elif callable(kind) and kind is not int:  # a lookup made while reading (no column kept for it)
                parts[c].append(kind(col))
            else:
                parts[c].append(pc.fill_null(col, -1).to_numpy().astype(np.int32))
        parts["f"].append(f)
    out: dict[str, np.ndarray] = {}
    for c in list(parts):  # one column at a time: its parts are freed as it is joined
        v = parts.pop(c)
        out[c] = np.concatenate(v) if v else np.zeros(0, np.uint64 if kinds.get(c) == "hash" else np.int32)
    n = len(out["f"])
    out["_at"] = np.arange(n, dtype=np.int32 if n < 2 ** 31 else np.int64)
    return out


def _sorted(arrays: dict[str, np.ndarray], order: np.ndarray) -> dict[str, np.ndarray]:
    for c in list(arrays):  # one column at a time: the unsorted one is freed before the next is sorted
        arrays[c] = arrays[c][order]
    return arrays


def _questions(o: Opened, rows: _Rows) -> pa.Table:
    keys = list(TABLES[rows.stage].sort_keys) if o.kind == RUN else []  # as Opened.read orders them
    t = rows.scan(list(dict.fromkeys(["mcq_id", "image_id", "question_type", "valid", *keys])))
    return t.sort_by([(k, "ascending") for k in keys] + [("_at", "ascending")])


def _simple(rows: _Rows, mcq_ids: pa.Array, names: dict[str, _Names]) -> tuple[dict[str, np.ndarray], pa.Array]:
    """The simple thoughts sorted as the page sorts them, and the questions' ids with those only they name."""
    s = _arrays(rows, {"sample_id": "hash", "mcq_id": "hash", "sample_index": int, "question_type": names["qt_s"],
                       "parsed": "flag", "correct": "flag", "keep": "flag", "drop_reason": names["reason"]})
    m = find(s["mcq_id"], id_hash(mcq_ids))
    if (m < 0).any():  # questions only the simple thoughts name: their ids are read again (a rare run)
        named = rows.take(s["_at"][m < 0], ["mcq_id"]).column("mcq_id")
        mcq_ids = pa.concat_arrays([mcq_ids, pa.array(sorted(set(named.to_pylist())), pa.string())])
        m = find(s["mcq_id"], id_hash(mcq_ids))
    s["m"] = m.astype(np.int32)
    del s["mcq_id"]
    order = np.lexsort((s["sample_id"], s.pop("sample_index"), s["m"]))
    return _sorted(s, order), mcq_ids


def _expansions(rows: _Rows, sample_ids: np.ndarray, names: dict[str, _Names]) -> tuple[dict[str, np.ndarray], int]:
    """The expansions sorted as the page sorts them (after their simple thought), and how many have none."""
    order = np.argsort(sample_ids, kind="stable")
    e = _arrays(rows, {"expansion_id": "hash", "sample_id": lambda col: find(id_hash(col), sample_ids, order=order),
                       "expansion_index": int, "cue": names["cue"], "parsed": "flag", "correct": "flag",
                       "simple_correct": "flag", "keep": "flag", "drop_reason": names["reason"]})
    del order
    e["s"] = e.pop("sample_id")
    has = e["s"] >= 0
    orphans = int((~has).sum())
    if orphans:
        e = {c: v[has] for c, v in e.items()}
    order = np.lexsort((e["expansion_id"], e.pop("expansion_index"), e["s"]))
    return _sorted(e, order), orphans


def build_index(path_or_run: Any, *, progress: bool = False) -> Index:
    """Read the small columns of a run or an export (see :class:`Index`)."""
    o = open_input(path_or_run)
    rows = {r: _Rows(o, table_for(r)) for r in ("question", "short_thought", "long_thought")}
    say = print if progress else (lambda *a, **k: None)
    if o.kind == RUN:
        say("planning the SFT and DPO sets …", flush=True)
        plan = _run_plan(o)
    say("indexing the questions, simple thoughts and expansions …", flush=True)
    codes = {k: _Names() for k in ("qt_s", "reason", "cue")}
    q = _questions(o, rows["question"])
    s, mcq_ids = _simple(rows["short_thought"], q.column("mcq_id").combine_chunks(), codes)
    e, orphans = _expansions(rows["long_thought"], s["sample_id"], codes)
    notes = [f"{orphans} expansions whose simple thought is not in the records are not shown"] if orphans else []
    names = {"reason": codes["reason"].names, "cue": codes["cue"].names}
    if o.kind == RUN:
        s_sft, e_sft, n_sft, plan, sft_from, dpo_from = _run_sets(plan, s["_at"], e["_at"])
    else:
        say("reading the SFT and DPO sets …", flush=True)
        in_sft, n_sft, sft_from, dpo, dpo_from = _set_ids(o)
        s_sft, e_sft = among(s["sample_id"], in_sft), among(e["expansion_id"], in_sft)  # in_sft: sorted, distinct
    M = _mcq_arrays(q, s, mcq_ids, codes["qt_s"].names, names)
    S = {"id": s["sample_id"], "m": s["m"], "f": _flags(s, s_sft), "at": s["_at"], "r": s["drop_reason"]}
    E = {"id": e["expansion_id"], "s": e["s"], "f": _flags(e, e_sft), "at": e["_at"], "r": e["drop_reason"],
         "c": e["cue"]}
    del s, e, s_sft, e_sft
    P = _run_pairs(*plan, S, E, names) if o.kind == RUN else _pair_arrays(dpo, M, S, E, names)
    if not len(S["m"]):  # an export without the raw thought configs: the page says why no trace is shown
        empty = _Page()
        empty.note_no_traces(o)
        notes += empty.notes
    sets, set_notes = _sets(o, S, E)
    notes += set_notes
    _counts_per_record(M, S, E, P)
    meta = page_meta(o, notes, (n_sft, sft_from), (len(P["k"]), dpo_from), 0)
    return Index(o, rows, M, S, E, P, sets, notes, meta, names)


def _mcq_arrays(q: pa.Table, s: dict[str, np.ndarray], mcq_ids: pa.Array, s_qt: list[str],
                names: dict[str, list[str]]) -> dict[str, Any]:
    n, nq = len(mcq_ids), q.num_rows
    qt = pc.fill_null(q.column("question_type").combine_chunks(), "")
    if n > nq:  # questions only the simple thoughts name: their type as the first simple thought says
        first = _first_of(s["m"], n)
        qt = pa.concat_arrays([qt, pa.array([s_qt[c] for c in s["question_type"][first[nq:]]], pa.string())])
    codes, names["qt"] = _codes(qt)
    valid = np.ones(n, bool)
    valid[:nq] = _np(q, "valid", bool)
    at = np.full(n, -1, np.int64)
    at[:nq] = q.column("_at").to_numpy()
    return {"id": mcq_ids, "qt": codes, "ok": valid, "at": at}


def _first_of(groups: np.ndarray, n: int) -> np.ndarray:
    first = np.full(n, -1, np.int64)
    idx = np.arange(len(groups))[::-1]
    first[groups[::-1]] = idx
    return first


def _run_plan(o: Opened) -> dict[str, Any]:
    """The sets :mod:`builder.assemble` builds from a run with the default options, by the traces' rows in the
    stage files: a side is ``2·row`` (a row of the simple-CoT stage) or ``2·row+1`` (of the expansion stage),
    rows numbered file after file as :class:`_Rows` numbers them (the same files, in the same order).

    Planned before the index is read, and only these arrays kept: the planners' memory (the trace index, the
    DPO candidates) is let go before the index's own is taken; no id is read back or held as text (at 10M
    records the pairs' ids alone were ~0.5 GB, kept for as long as the server ran)."""
    from builder import assemble

    opts = assemble.AssembleOptions()
    tr = assemble.trace_index(o, plan=("sft", "dpo"), opts=opts)
    sft = tr.planned("sft", opts)
    kind, c, r = tr.planned("dpo", opts)

    def rows(t: np.ndarray) -> np.ndarray:
        e_row = tr.src.e_row[t].astype(np.int64)
        return np.where(e_row >= 0, 2 * e_row + 1, 2 * tr.src.s_row[tr.src.s[t]].astype(np.int64))

    plan = {"sft": rows(sft), "kind": kind.astype(np.int8), "c": rows(c), "r": rows(r), "kinds": list(opts.pair_kinds)}
    del tr, sft, c, r
    assemble.release_memory()
    return plan


def _run_sets(plan: dict[str, Any], s_at: np.ndarray, e_at: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, tuple,
                                                                                  str, str]:
    """:func:`_run_plan`'s sets in the index's own terms: ``(SFT mask of the simple thoughts, of the expansions,
    SFT rows, (pair kinds, chosen refs, rejected refs, kind names), where from, where from)``; a ref is ``2i``
    (simple thought ``i``) or ``2j+1`` (expansion ``j``), -1 for a row the index does not show."""
    sides = np.concatenate([plan["sft"], plan["c"], plan["r"]])
    places = {odd: _places(at, sides[sides % 2 == odd] // 2) for odd, at in ((0, s_at), (1, e_at))}
    del sides

    def refs(side: np.ndarray) -> np.ndarray:
        out = np.full(len(side), -1, np.int64)
        for odd in (0, 1):
            mine = side % 2 == odd
            at = places[odd][side[mine] // 2].astype(np.int64)
            out[mine] = np.where(at >= 0, 2 * at + odd, -1)
        return out

    in_sft = refs(plan["sft"])
    shown = in_sft[in_sft >= 0]  # (-1 % 2 is 1: a row not shown would otherwise mark the last expansion)
    s_sft, e_sft = np.zeros(len(s_at), bool), np.zeros(len(e_at), bool)
    s_sft[shown[shown % 2 == 0] // 2] = True
    e_sft[shown[shown % 2 == 1] // 2] = True
    where = "assembled from the run ({} with the default options)"
    return (s_sft, e_sft, len(in_sft), (plan["kind"], refs(plan["c"]), refs(plan["r"]), plan["kinds"]),
            where.format("sft"), where.format("dpo"))


def _places(at: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per row of a stage's files, its place in the index (``at``: each place's row), -1 for a row not there
    (long enough for every row of ``rows``)."""
    n = max(int(at.max(initial=-1)), int(rows.max(initial=-1))) + 1
    place = np.full(n, -1, np.int32 if len(at) < 2 ** 31 else np.int64)
    place[at] = np.arange(len(at))
    return place


def _run_pairs(kind: np.ndarray, c: np.ndarray, r: np.ndarray, kinds: list[str], S: dict, E: dict,
               names: dict) -> dict[str, Any]:
    """The pairs of :func:`_run_sets` as :func:`_pair_arrays` gives an export's: kind codes in the order the
    kinds first appear, each pair's question (its chosen side's), the page's order."""
    if not len(kind):
        return _pair_arrays(None, {}, S, E, names)
    seen, first = np.unique(kind, return_index=True)
    by_first = seen[np.argsort(first)]
    code = np.zeros(int(seen.max()) + 1, np.int32)
    code[by_first] = np.arange(len(by_first))
    k, names["kind"] = code[kind], [kinds[x] for x in by_first.tolist()]
    s_of = np.where(c % 2 == 1, E["s"][np.maximum(c, 0) // 2], c // 2)
    m = np.where(c >= 0, S["m"][np.maximum(s_of, 0)], -1).astype(np.int64)
    order = np.lexsort((np.arange(len(k)), k, m))  # as the page: by question (its place), kind, then as listed
    return {"k": k, "m": m, "c": c, "r": r, "order": order, "rows": None}


def _set_ids(o: Opened) -> tuple[np.ndarray, int, str, pa.Table | None, str]:
    """``(hashes of the ids of the SFT traces, SFT rows, where from, the DPO pairs' kind / mcq_id / side ids, where
    from)`` of an export: its sft and dpo configs, only these columns."""
    sft, sft_from = _export_sft(o)
    if o.has_config("dpo"):
        have = set(pq.read_schema(config_files(o.path, "dpo")[0]).names)
        columns = ["kind", "mcq_id", "image_id", "question_type", "chosen_id", "rejected_id"]
        dpo, dpo_from = o.config("dpo", [c for c in columns if c in have]), "the export's dpo config"
    else:
        dpo, dpo_from = None, o.dpo()[1]  # why it is missing
    return (*sft, sft_from, dpo, dpo_from)


def _export_sft(o: Opened) -> tuple[tuple[np.ndarray, int], str]:
    """``((hashes of the ids of an export's SFT traces, its rows), where from)``, one row group at a time."""
    if not o.has_config("sft"):
        return (np.zeros(0, np.uint64), 0), o.sft()[1]  # why it is missing
    files = config_files(o.path, "sft")
    columns = [c for c in ("sample_id", "expansion_id") if c in pq.read_schema(files[0]).names]
    hashes, n = [], 0
    for f in files:
        pf = pq.ParquetFile(f)
        for g in range(pf.num_row_groups):
            b = pf.read_row_group(g, columns=columns, use_threads=False)
            ids = b.column("sample_id")
            if "expansion_id" in columns:
                e = pc.fill_null(b.column("expansion_id"), "")
                ids = pc.if_else(pc.equal(e, ""), ids, e)
            hashes.append(np.unique(id_hash(ids)))
            n += b.num_rows
    return (np.unique(np.concatenate(hashes)) if hashes else np.zeros(0, np.uint64), n), "the export's sft config"


def _pair_arrays(t: pa.Table | None, M: dict, S: dict, E: dict, names: dict) -> dict[str, Any]:
    if t is None or not t.num_rows:
        names["kind"] = []
        return {"k": np.zeros(0, np.int32), "m": np.zeros(0, np.int64), "c": np.zeros(0, np.int64),
                "r": np.zeros(0, np.int64), "order": np.zeros(0, np.int64), "rows": None}

    def ref(col: str) -> np.ndarray:
        h = id_hash(t.column(col))
        i, j = find(h, S["id"]), find(h, E["id"])
        return np.where(i >= 0, 2 * i, np.where(j >= 0, 2 * j + 1, -1))

    k, names["kind"] = _codes(t.column("kind"))
    m = _index_in(t.column("mcq_id"), M["id"])
    order = np.lexsort((np.arange(len(k)), k, m))  # as the page: by question (its place), kind, then as listed
    return {"k": k, "m": m, "c": ref("chosen_id"), "r": ref("rejected_id"), "order": order, "rows": t}


def _sets(o: Opened, S: dict, E: dict) -> tuple[list[dict[str, Any]], list[str]]:
    found, notes = plugin_sets(o)
    out = []
    for x in found:
        ids = np.unique(id_hash(pa.array(sorted(x["traces"]), pa.string())))
        out.append({"name": x["name"], "desc": x["description"], "rows": x["rows"],
                    "s": np.isin(S["id"], ids), "e": np.isin(E["id"], ids)})
    return out, notes


def _counts_per_record(M: dict, S: dict, E: dict, P: dict) -> None:
    """What the page shows beside a record: its DPO pairs, a question's thoughts (over the whole run)."""
    nM, nS, nE = len(M["id"]), len(S["m"]), len(E["s"])
    sides = np.concatenate([P["c"], P["r"]])
    sides = sides[sides >= 0]
    S["pairs"] = np.bincount(sides[sides % 2 == 0] // 2, minlength=nS).astype(np.int32)
    E["pairs"] = np.bincount(sides[sides % 2 == 1] // 2, minlength=nE).astype(np.int32)
    M["pairs"] = np.bincount(P["m"][P["m"] >= 0], minlength=nM)
    em = S["m"][E["s"]]
    kept = (E["f"] & KEEP) > 0
    M["s"] = np.bincount(S["m"], minlength=nM)
    M["s_ok"] = np.bincount(S["m"][(S["f"] & CORRECT) > 0], minlength=nM)
    M["e"] = np.bincount(em, minlength=nM)
    M["e_kept"] = np.bincount(em[kept], minlength=nM)
    M["e_ok"] = np.bincount(em[kept & ((E["f"] & CORRECT) > 0)], minlength=nM)


# ------------------------------------------------------------------------------------------------ search


def _contains(values: pa.ChunkedArray | pa.Array, q: str) -> np.ndarray:
    return pc.fill_null(pc.match_substring(values, q, ignore_case=True), False).to_numpy(zero_copy_only=False)


def _id_starts(ids: pa.Array, q: str) -> np.ndarray:
    if len(q) > ID_CHARS:
        return np.zeros(len(ids), bool)
    return pc.fill_null(pc.starts_with(ids, q), False).to_numpy(zero_copy_only=False)


def _scan_hits(rows: _Rows, columns: list[str], hit) -> np.ndarray:
    """A boolean per scanned row: ``hit(batch, q)`` over the text columns, one row group at a time."""
    return np.concatenate([hit(b) for b in rows.batches(columns)] or [np.zeros(0, bool)])


def search(ix: Index, q: str) -> dict[str, np.ndarray]:
    """Which questions, simple thoughts and expansions hold ``q`` (lower-cased), as the page searches."""
    def mcq_hit(b: pa.Table) -> np.ndarray:
        opts = b.column("options").combine_chunks()
        flat = _contains(pc.list_flatten(opts), q)
        any_opt = np.zeros(b.num_rows, bool)
        any_opt[pc.list_parent_indices(opts).to_numpy()[flat]] = True
        return _contains(b.column("question"), q) | any_opt | _contains(b.column("image_id"), q)

    def simple_hit(b: pa.Table) -> np.ndarray:
        raw = _contains(b.column("response"), q) & ~_np(b, "parsed", bool)
        return _contains(b.column("thought"), q) | _contains(b.column("answer"), q) | raw | _id_starts(
            b.column("sample_id"), q)

    def exp_hit(b: pa.Table) -> np.ndarray:
        return _contains(b.column("long_thought"), q) | _contains(b.column("answer"), q) | _id_starts(
            b.column("expansion_id"), q)

    mq = _scan_hits(ix.rows["question"], ["question", "options", "image_id"], mcq_hit)
    m = np.zeros(len(ix.M["id"]), bool)
    has = ix.M["at"] >= 0
    m[has] = mq[ix.M["at"][has]] if len(mq) else False
    m |= _id_starts(ix.M["id"], q)
    sq = _scan_hits(ix.rows["short_thought"], ["thought", "answer", "response", "parsed", "sample_id"], simple_hit)
    eq = _scan_hits(ix.rows["long_thought"], ["long_thought", "answer", "expansion_id"], exp_hit)
    return {"m": m, "s": sq[ix.S["at"]], "e": eq[ix.E["at"]]}


# ------------------------------------------------------------------------------------------------ filters


def _code(names: list[str], value: str) -> int:
    return names.index(value) if value in names else -2


def _mcq_ok(ix: Index, st: dict[str, str]) -> np.ndarray:
    ok = np.ones(len(ix.M["id"]), bool)
    if st["qt"]:
        ok &= ix.M["qt"] == _code(ix.names["qt"], st["qt"])
    if st["mcq"]:
        ok &= _id_starts(ix.M["id"], st["mcq"])
    return ok


def _trace_ok(ix: Index, st: dict[str, str], f: np.ndarray, r: np.ndarray, pairs: np.ndarray,
              member: list[np.ndarray]) -> np.ndarray:
    """The label, kept and set filters of one kind of trace (``f`` flags, ``r`` drop reasons)."""
    ok = np.ones(len(f), bool)
    if st["label"] == "correct":
        ok &= (f & CORRECT) > 0
    elif st["label"] == "wrong":
        ok &= (f & CORRECT) == 0
    elif st["label"] == "unparsed":
        ok &= (f & PARSED) == 0
    kept = (f & KEEP) > 0
    if st["kept"] == "kept":
        ok &= kept
    elif st["kept"] == "dropped":
        ok &= ~kept
    elif st["kept"]:
        ok &= ~kept & (r == _code(ix.names["reason"], st["kept"][2:] if st["kept"].startswith("r:") else "\0"))
    if st["set"].startswith("x:"):
        names = [x["name"] for x in ix.sets]
        ok &= member[names.index(st["set"][2:])] if st["set"][2:] in names else False
    elif st["set"] == "sft":
        ok &= (f & IN_SFT) > 0
    elif st["set"] == "dpo":
        ok &= pairs > 0
    elif st["set"] == "none":
        ok &= ((f & IN_SFT) == 0) & (pairs == 0)
    return ok


def _types(ix: Index) -> tuple[np.ndarray, np.ndarray]:
    """The trace type of each simple thought and expansion, as an index into :data:`TYPES`."""
    s = ((ix.S["f"] & CORRECT) == 0).astype(np.int8)
    e = (2 + 2 * ((ix.E["f"] & SIMPLE_CORRECT) == 0) + ((ix.E["f"] & CORRECT) == 0)).astype(np.int8)
    return s, e


def trace_matches(ix: Index, st: dict[str, str], hits: dict[str, np.ndarray] | None) -> np.ndarray:
    """The trace list's refs that pass the filters, in the page's order (``traceStream``)."""
    if hits is None and all(st[k] == DEFAULT_STATE[k] for k in TRACE_FILTERS):
        return ix.stream  # every trace: nothing to compute
    m_ok = _mcq_ok(ix, st)
    want_s = st["stage"] != "expansion" and not st["cue"] and (not st["type"] or len(st["type"]) == 1)
    want_e = st["stage"] != "simple" and (not st["type"] or len(st["type"]) == 3)
    s_ok = m_ok[ix.S["m"]] & want_s & _trace_ok(ix, st, ix.S["f"], ix.S["r"], ix.S["pairs"], [x["s"] for x in ix.sets])
    e_ok = m_ok[ix.S["m"][ix.E["s"]]] & want_e & _trace_ok(ix, st, ix.E["f"], ix.E["r"], ix.E["pairs"],
                                                            [x["e"] for x in ix.sets])
    if st["type"]:
        ts, te = _types(ix)
        code = TYPES.index(st["type"]) if st["type"] in TYPES else -1
        s_ok &= ts == code
        e_ok &= te == code
    if st["cue"]:
        e_ok &= ix.E["c"] == _code(ix.names["cue"], st["cue"])
    if hits is not None:
        s_ok &= hits["m"][ix.S["m"]] | hits["s"]
        e_ok &= hits["m"][ix.S["m"][ix.E["s"]]] | hits["e"]
    refs = ix.stream
    is_e = refs % 2 == 1
    keep = np.empty(len(refs), bool)
    keep[is_e] = e_ok[refs[is_e] // 2]
    keep[~is_e] = s_ok[refs[~is_e] // 2]
    return refs[keep]


def _at(values: np.ndarray, at: np.ndarray, missing: bool) -> np.ndarray:
    """``values[at]``, ``missing`` where ``at`` is -1."""
    if not len(values):
        return np.full(len(at), missing)
    return np.where(at >= 0, values[np.maximum(at, 0)], missing)


def pair_matches(ix: Index, st: dict[str, str], hits: dict[str, np.ndarray] | None) -> np.ndarray:
    P = ix.P
    order = P["order"]
    ok = np.ones(len(order), bool)
    if st["kind"]:
        ok &= P["k"][order] == _code(ix.names["kind"], st["kind"])
    m = P["m"][order]
    ok &= _at(_mcq_ok(ix, st), m, not st["qt"] and not st["mcq"])  # a question not among the records: no filter
    if hits is not None:
        def side(ref: np.ndarray) -> np.ndarray:
            i = np.maximum(ref // 2, 0)
            s_hit = hits["s"][np.minimum(i, len(hits["s"]) - 1)] if len(hits["s"]) else np.zeros(len(ref), bool)
            e_hit = hits["e"][np.minimum(i, len(hits["e"]) - 1)] if len(hits["e"]) else np.zeros(len(ref), bool)
            return (ref >= 0) & np.where(ref % 2 == 1, e_hit, s_hit)
        ok &= _at(hits["m"], m, False) | side(P["c"][order]) | side(P["r"][order])
    return order[ok]


def mcq_matches(ix: Index, st: dict[str, str], hits: dict[str, np.ndarray] | None) -> np.ndarray:
    ok = _mcq_ok(ix, st) & (ix.M["at"] >= 0)  # a question only a simple thought names is not listed here
    if st["valid"] == "valid":
        ok &= ix.M["ok"]
    elif st["valid"] == "invalid":
        ok &= ~ix.M["ok"]
    if hits is not None:
        ok &= hits["m"]
    return np.flatnonzero(ok)


# --------------------------------------------------------------------------------------------------- pages

TRACE_FILTERS = ("stage", "type", "label", "kept", "cue", "qt", "set", "mcq")
DEFAULT_STATE = {"view": "traces", "stage": "all", "type": "", "label": "", "kept": "", "cue": "", "qt": "", "kind": "",
                 "set": "", "valid": "", "q": "", "mcq": "", "page": "1"}


class Viewer:
    """The index of a run and what a request needs: the last search's hits, the thumbnails made so far."""

    def __init__(self, ix: Index, *, images: bool = True, thumb_side: int = THUMB_SIDE) -> None:
        self.ix, self.images, self.thumb_side = ix, images, thumb_side
        self._hits: tuple[str, dict[str, np.ndarray]] | None = None
        self._lock = threading.Lock()
        self._sources = ix.o.image_sources() if images else {}
        self._desc = ix.o.descriptions() if ix.o.kind == RUN else {}
        self._thumbs: dict[str, str | None] = {}

    def hits(self, q: str) -> dict[str, np.ndarray] | None:
        if not q:
            return None
        with self._lock:
            if self._hits is None or self._hits[0] != q:
                self._hits = (q, search(self.ix, q))
            return self._hits[1]

    def page(self, query: dict[str, str]) -> dict[str, Any]:
        """One page of items for the page's state (``view``, the filters, ``q``, ``page``, ``size``)."""
        st = {k: (query.get(k) or v).strip() for k, v in DEFAULT_STATE.items()}
        st["q"] = st["q"].lower()
        size = min(max(1, int(query.get("size") or PAGE_SIZE)), MAX_PAGE_SIZE)
        matches = {"pairs": pair_matches, "mcqs": mcq_matches}.get(st["view"], trace_matches)(
            self.ix, st, self.hits(st["q"]))
        pages = max(1, -(-len(matches) // size))
        page = min(max(1, int(st["page"]) if st["page"].isdigit() else 1), pages)
        chosen = matches[(page - 1) * size: page * size]
        continued = False
        if st["view"] in ("traces", "all") and page > 1 and len(chosen):
            continued = self._mcq_of(matches[(page - 1) * size - 1]) == self._mcq_of(chosen[0])
        data, refs = self._records(st["view"], chosen)
        return {"matches": int(len(matches)), "page": page, "pages": pages, "continued": bool(continued),
                "refs": refs, "data": data}

    def _mcq_of(self, ref: int) -> int:
        i = self.ix.E["s"][ref // 2] if ref % 2 else ref // 2
        return int(self.ix.S["m"][i])

    def _records(self, view: str, chosen: np.ndarray) -> tuple[dict[str, Any], list[int]]:
        """The records a page shows (and those they refer to), as :class:`builder.view._Page` makes them."""
        ix = self.ix
        s_idx, e_idx, m_idx, pairs = _needed(ix, view, chosen)
        page = _Page()
        page.add_questions(ix.o, ix.rows["question"].take(ix.M["at"][m_idx[ix.M["at"][m_idx] >= 0]], QUESTION_COLUMNS))
        s_rows = ix.rows["short_thought"].take(ix.S["at"][s_idx], SIMPLE_COLUMNS)
        e_rows = ix.rows["long_thought"].take(ix.E["at"][e_idx], EXPANSION_COLUMNS)
        s_ids, e_ids = s_rows.column("sample_id").to_pylist(), e_rows.column("expansion_id").to_pylist()
        in_sft = {t for k, t in zip(s_idx, s_ids) if ix.S["f"][k] & IN_SFT} | {
            t for k, t in zip(e_idx, e_ids) if ix.E["f"][k] & IN_SFT}
        page.add_simple_thoughts(ix.o, in_sft, s_rows)
        page.add_long_thoughts(ix.o, in_sft, e_rows)
        rows = _pair_rows(ix, pairs, dict(zip(s_idx.tolist(), s_ids)), dict(zip(e_idx.tolist(), e_ids)))
        page.add_pairs(ix.o, rows, [int(p) for p in pairs])
        local_s = {int(i): page.sample_index[t] for i, t in zip(s_idx, s_ids)}
        local_e = {int(j): page.expansion_index[t] for j, t in zip(e_idx, e_ids)}
        for x in ix.sets:
            page.X["name"].append(x["name"])
            page.X["desc"].append(x["desc"])
            page.X["rows"].append(x["rows"])
            page.X["s"].append(sorted(local_s[i] for i in local_s if x["s"][i]))
            page.X["e"].append(sorted(local_e[j] for j in local_e if x["e"][j]))
        data = page.records(self._thumbnails(page), self._descriptions(page))
        data["agg"] = self._agg(page, local_s, local_e)
        if view == "pairs":
            refs = list(range(len(pairs)))
        elif view == "mcqs":
            refs = [page.mcq_index[ix.M["id"][int(m)].as_py()] for m in chosen]
        else:
            refs = [2 * local_e[r // 2] + 1 if r % 2 else 2 * local_s[r // 2] for r in map(int, chosen)]
        return data, refs

    def _agg(self, page: _Page, local_s: dict[int, int], local_e: dict[int, int]) -> dict[str, list[int]]:
        """The counts beside each record of the page, over the whole run."""
        ix = self.ix
        by_s = sorted(local_s, key=local_s.get)
        by_e = sorted(local_e, key=local_e.get)
        mcqs = _index_in(pa.array([mid for mid in page.mcq_index], pa.string()), ix.M["id"])
        mcqs = mcqs[np.argsort(list(page.mcq_index.values()))]
        col = lambda arr, at: [int(arr[a]) if a >= 0 else 0 for a in at]  # noqa: E731
        return {"pairsOfS": col(ix.S["pairs"], by_s), "pairsOfE": col(ix.E["pairs"], by_e),
                "pairsOfM": col(ix.M["pairs"], mcqs), "sOfM": col(ix.M["s"], mcqs), "sOkOfM": col(ix.M["s_ok"], mcqs),
                "eOfM": col(ix.M["e"], mcqs), "eKeptOfM": col(ix.M["e_kept"], mcqs), "eOkOfM": col(ix.M["e_ok"], mcqs)}

    def _thumbnails(self, page: _Page) -> list[str | None]:
        todo = [i for i in page.image_ids if i not in self._thumbs]
        if todo and self.images:
            sub = _Page()
            for i in todo:
                sub.image(i)
            thumbs, _ = sub.thumbnails(self.ix.o, True, self.thumb_side, self._sources)
            self._thumbs.update(zip(todo, thumbs))
        return [self._thumbs.get(i) for i in page.image_ids]

    def _descriptions(self, page: _Page) -> dict[str, str]:
        if self.ix.o.kind == RUN:
            return self._desc
        return {}  # an export's descriptions are in the prompts of its expansions: not read per page

    def shell(self, page_size: int) -> str:
        """The page, without records: it asks the server for them."""
        ix = self.ix
        meta = dict(ix.meta, notes=list(ix.meta["notes"]) + ["served page by page from the parquet files"],
                    images_on_machine=len(self._sources))
        data = _Page().records([], {})
        data["sets"] = {"name": [x["name"] for x in ix.sets], "desc": [x["desc"] for x in ix.sets],
                        "rows": [x["rows"] for x in ix.sets], "s": [[] for _ in ix.sets], "e": [[] for _ in ix.sets]}
        d = {"meta": meta, "flags": FLAGS, **data, "serve": {"api": "/api/page", "bar": bar_counts(ix)}}
        title = f"LongPerceptualThoughts · {Path(meta['path']).name}"
        return (_asset("viewer.html").replace("/*__CSS__*/", _asset("viewer.css"))
                .replace("__TITLE__", _escape(title)).replace("__PAGE_SIZE__", str(int(page_size)))
                .replace("/*__JS__*/", _asset("viewer.js")).replace("__DATA__", _json_for_script(d)))


def _pair_rows(ix: Index, pairs: np.ndarray, s_ids: dict[int, str], e_ids: dict[int, str]) -> list[dict[str, Any]]:
    """The rows of some pairs (kind, mcq_id, chosen_id, rejected_id …): an export's from its dpo config; a run's
    from the index, the sides' ids from the page's own records (``s_ids`` / ``e_ids``, by place)."""
    if not len(pairs):
        return []
    if ix.P["rows"] is not None:
        return ix.P["rows"].take(pa.array(pairs)).to_pylist()

    def side(ref: int) -> str:
        return "" if ref < 0 else (e_ids[ref // 2] if ref % 2 else s_ids[ref // 2])

    return [{"kind": ix.names["kind"][int(ix.P["k"][p])], "mcq_id": ix.M["id"][int(ix.P["m"][p])].as_py(),
             "chosen_id": side(int(ix.P["c"][p])), "rejected_id": side(int(ix.P["r"][p]))} for p in pairs.tolist()]


def _needed(ix: Index, view: str, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(simple thoughts, expansions, questions, pairs)`` a page of ``chosen`` items needs."""
    pairs = np.zeros(0, np.int64)
    if view == "mcqs":
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.asarray(chosen, np.int64), pairs
    if view == "pairs":
        pairs = np.asarray(chosen, np.int64)
        refs = np.concatenate([ix.P["c"][pairs], ix.P["r"][pairs]])
        refs = refs[refs >= 0]
    else:
        refs = np.asarray(chosen, np.int64)
    e_idx = np.unique(refs[refs % 2 == 1] // 2)
    s_idx = np.unique(np.concatenate([refs[refs % 2 == 0] // 2, ix.E["s"][e_idx]]))
    m_idx = np.unique(np.concatenate([ix.S["m"][s_idx], ix.P["m"][pairs][ix.P["m"][pairs] >= 0]]))
    return s_idx, e_idx, m_idx, pairs


def bar_counts(ix: Index) -> dict[str, Any]:
    """The counts of the filter bar, by name (``barCounts`` in the page)."""
    def named(codes: np.ndarray, names: list[str]) -> list[list]:  # in the order the values first appear
        n = np.bincount(codes, minlength=len(names)) if len(codes) else np.zeros(len(names), np.int64)
        first = np.full(len(names), len(codes), np.int64)
        np.minimum.at(first, codes, np.arange(len(codes)))
        return [[names[c], int(n[c])] for c in np.argsort(first, kind="stable") if n[c]]

    ts, te = _types(ix)
    types = np.bincount(np.concatenate([ts, te]), minlength=len(TYPES))
    dropped = np.concatenate([ix.S["r"][(ix.S["f"] & KEEP) == 0], ix.E["r"][(ix.E["f"] & KEEP) == 0]])
    return {"n": {"S": len(ix.S["m"]), "E": len(ix.E["s"]), "M": int((ix.M["at"] >= 0).sum()), "P": len(ix.P["k"])},
            "type": [[t, int(types[k])] for k, t in enumerate(TYPES) if types[k]],
            "reason": named(dropped, ix.names["reason"]), "cue": named(ix.E["c"], ix.names["cue"]),
            "qt": named(ix.M["qt"], ix.names["qt"]), "kind": named(ix.P["k"], ix.names["kind"])}


# -------------------------------------------------------------------------------------------------- server


def make_server(viewer: Viewer, port: int = 0, *, page_size: int = PAGE_SIZE) -> ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1 (``port`` 0: a free one): ``/`` the page, ``/api/page?…`` a page of items."""
    shell = viewer.shell(min(page_size, MAX_PAGE_SIZE)).encode("utf-8")  # the page asks what the server gives

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            url = urlparse(self.path)
            if url.path in ("/", "/index.html"):
                return self._send(200, "text/html; charset=utf-8", shell)
            if url.path == "/api/page":
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                try:
                    body = json.dumps(viewer.page(query), ensure_ascii=False, separators=(",", ":"))
                except (ValueError, KeyError, IndexError) as e:
                    return self._send(400, "text/plain; charset=utf-8", f"bad request: {e}".encode())
                return self._send(200, "application/json; charset=utf-8", body.encode("utf-8"))
            return self._send(404, "text/plain; charset=utf-8", b"not found")

        def _send(self, code: int, kind: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # quiet: the terminal shows the URL and errors only
            pass

    server = ThreadingHTTPServer((HOST, port), Handler)
    server.daemon_threads = True
    return server


def serve(path_or_run: Any, port: int = 8765, *, images: bool = True, thumb_side: int = THUMB_SIDE,
          page_size: int = PAGE_SIZE, echo=print) -> None:
    """Index the run, serve it on 127.0.0.1 until Ctrl-C."""
    viewer = Viewer(build_index(path_or_run, progress=True), images=images, thumb_side=thumb_side)
    server = make_server(viewer, port, page_size=page_size)
    echo(f"serving {viewer.ix.o.label} at http://{HOST}:{server.server_address[1]}/ (Ctrl-C stops)")
    try:
        with _stopped_by_signals():
            server.serve_forever()
    except KeyboardInterrupt:
        echo("stopped")
    finally:
        server.server_close()


@contextmanager
def _stopped_by_signals():
    """SIGINT (Ctrl-C) and SIGTERM stop the server, whatever the parent left them at.

    A shell without job control starts a background job (``lpt view RUN --serve &``) with SIGINT ignored, and
    Python then keeps it ignored: Ctrl-C or ``kill -INT`` would never reach the loop. The previous handlers are
    put back on the way out."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    before = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
