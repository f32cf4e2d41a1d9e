"""Numbers and plots of a run directory or an exported dataset folder (``lpt stats``).

:func:`open_input` reads either kind of folder into one shape (:class:`Opened`: the stage records, the SFT
and DPO composition, the images); :func:`compute` turns it into a JSON-able dict (the funnel of every stage,
what each filter removed, accuracy by question type, thought lengths, SFT/DPO composition);
:func:`write_figures` draws the same numbers as PNG files (matplotlib, Agg) and returns their paths, so a
dataset card can show them beside its README. Records are counted with :func:`builder.records.tally` only.

Trace types follow docs/method.md: O / X a correct / wrong simple thought; O→O, O→X, X→O, X→X an expansion of
a correct (O→) or wrong (X→) simple thought that ends correct (→O) or wrong (→X).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from builder.ids import id_hash
from builder.dataset_configs import RAW_ROLES, raw_configs
from builder.records import LABELS, TABLES, tally
from builder.stages import get_stage, table_for
from builder.store import RunDir

RUN, EXPORT = "run", "export"
KIND_LABELS = {RUN: "run directory", EXPORT: "exported dataset folder"}
ROLE_NOUNS = {"question": "MCQs", "short_thought": "simple CoTs", "long_thought": "expansions"}
"""What the records of each stage role (:data:`builder.dataset_configs.RAW_ROLES`) are, in titles."""
TYPE_ORDER = ("O", "X", "O_O", "O_X", "X_O", "X_X")


def stage_tables() -> tuple[str, str, str]:
    """The run-directory tables of the question, short-thought and long-thought roles (the stage registry's)."""
    question, short, long = (table_for(role) for role in RAW_ROLES)
    return question, short, long


def stage_title(table: str) -> str:
    """``stage 3 · expansions``: the stage that writes ``table`` and what its records are."""
    spec = get_stage(table)
    return f"stage {spec.number} · {ROLE_NOUNS[spec.role]}"


def type_label(cot_type: str) -> str:
    """``X_O`` -> ``X→O`` (how docs/method.md writes trace types)."""
    return cot_type.replace("_", "→")


def kind_label(kind: str) -> str:
    """A DPO pair kind ``X_O>X`` -> ``X→O ≻ X``."""
    return " ≻ ".join(type_label(k) for k in kind.split(">"))


# ------------------------------------------------------------------------------------------------ reading


class NotAnInput(ValueError):
    """A folder that is neither a run directory nor an exported dataset folder."""


@dataclass
class Opened:
    """A run directory or an exported folder, read into one shape. ``read(table)`` gives a stage's records
    (the tables of :func:`stage_tables`; the source table for a run), so :mod:`builder.assemble` accepts it."""

    kind: str  # RUN or EXPORT
    path: Path
    _tables: dict[tuple[str, tuple[str, ...] | None], pa.Table] = field(default_factory=dict, repr=False)
    _assembled: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        return f"{KIND_LABELS[self.kind]} {self.path}"

    # -- the stage records -------------------------------------------------------------------------------

    def read(self, stage: str, columns: Sequence[str] | None = None) -> pa.Table:
        """A stage's records (only ``columns``, when given: the others are not read), in the run's order."""
        key = (stage, None if columns is None else tuple(columns))
        if key not in self._tables:
            cols = None if columns is None else list(columns)
            schema = TABLES[stage].schema if cols is None else pa.schema([TABLES[stage].schema.field(c) for c in cols])
            if (stage, None) in self._tables:
                self._tables[key] = self._tables[(stage, None)].select(schema.names)
            elif self.kind == RUN:
                t = RunDir(self.path).read(stage, cols)
                self._tables[key] = t if cols is None else t.select(cols)
            else:
                raw = raw_configs().get(stage)
                t = read_config(self.path, raw, cols) if raw else None
                self._tables[key] = schema.empty_table() if t is None else t.cast(schema)
        return self._tables[key]

    def parts(self, stage: str, columns: Sequence[str]) -> Iterator[pa.Table]:
        """A stage's records in parts (a run's chunk files, an export's row groups), not in order: for a pass
        that needs only one part of a big stage in memory at a time."""
        if (stage, tuple(columns)) in self._tables or (stage, None) in self._tables:
            yield self.read(stage, columns)
        elif self.kind == RUN:
            yield from RunDir(self.path).tables(stage, columns)
        elif stage in raw_configs():
            schema = pa.schema([TABLES[stage].schema.field(c) for c in columns])
            for f in config_files(self.path, raw_configs()[stage]):
                pf = pq.ParquetFile(f)
                for i in range(pf.num_row_groups):
                    yield pf.read_row_group(i, columns=list(columns)).replace_schema_metadata(None).cast(schema)

    def has(self, stage: str) -> bool:
        return any(t.num_rows for t in self.parts(stage, TABLES[stage].sort_keys[:1]))

    def tally(self, stage: str) -> dict[str, int]:
        """:func:`builder.records.tally` of a stage's records, part by part: no order, no id is read (reading the
        stage in order sorted its ids: 4.8 GB for the viewer's header at 10M records)."""
        columns = tally_columns(stage)
        out = tally(pa.schema([TABLES[stage].schema.field(c) for c in columns]).empty_table())
        for t in self.parts(stage, columns):
            out = {k: out[k] + v for k, v in tally(t).items()}
        return out

    def files(self, stage: str) -> list[Path]:
        """The parquet files of a stage's records (a run's chunks, or an export's raw config): what
        :mod:`builder.assemble` reads column-wise."""
        if self.kind == RUN:
            return RunDir(self.path).chunks(stage)  # the store's reader rule (issue 18)
        raw = raw_configs().get(stage)
        return [Path(f) for f in config_files(self.path, raw)] if raw else []

    def config(self, name: str, columns: Sequence[str] | None = None) -> pa.Table | None:
        """An exported config's rows, only ``columns`` when given (``None`` for a run, or when the export has no
        such config)."""
        return read_config(self.path, name, columns) if self.kind == EXPORT else None

    def has_config(self, name: str) -> bool:
        """Whether this is an export that holds config ``name`` (nothing is read)."""
        return self.kind == EXPORT and bool(config_files(self.path, name))

    def export_report(self) -> dict[str, Any]:
        if self.kind != EXPORT:
            return {}
        p = self.path / "export_report.json"
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}

    # -- the sets ------------------------------------------------------------------------------------------

    def traces(self) -> list:
        """:func:`builder.assemble.load_traces` of the records (computed once)."""
        from builder import assemble

        if "traces" not in self._assembled:
            self._assembled["traces"] = assemble.load_traces(self)
        return self._assembled["traces"]

    def sft(self) -> tuple[list[dict[str, str]], str]:
        """``([{cot_type, sample_id, expansion_id}], where they come from)``: the exported ``sft`` config, or
        :func:`builder.assemble.sft_traces` with the default options on a run."""
        if "sft" not in self._assembled:
            self._assembled["sft"] = self._set("sft", ["cot_type", "sample_id", "expansion_id"])
        return self._assembled["sft"]

    def dpo(self) -> tuple[list[dict[str, str]], str]:
        """``([{kind, mcq_id, chosen_id, rejected_id, chosen_type, rejected_type, …}], where they come from)``:
        the exported ``dpo`` config (without its texts: :meth:`config`), or :func:`builder.assemble.dpo_pairs` on
        a run."""
        if "dpo" not in self._assembled:
            self._assembled["dpo"] = self._set("dpo", ["kind", "mcq_id", "image_id", "question_type", "chosen_id",
                                                       "rejected_id", "chosen_type", "rejected_type"])
        return self._assembled["dpo"]

    def set_counts(self, name: str, column: str) -> tuple[Counter, str]:
        """``(rows of set `name` by `column`'s value, where they come from)``: an export's config is read one
        column at a time; a run's set is assembled (:meth:`sft`, :meth:`dpo`)."""
        t = self.config(name, [column])
        if t is not None:
            return Counter(dict(zip(*(v.to_pylist() for v in pc.value_counts(t.column(column)).flatten())))), \
                f"the export's {name} config"
        rows, where = self.sft() if name == "sft" else self.dpo()
        return Counter(r[column] for r in rows), where

    def _set(self, name: str, columns: list[str]) -> tuple[list[dict[str, Any]], str]:
        from builder import assemble

        if self.kind == EXPORT:
            if self.has_config(name):
                names = pq.read_schema(config_files(self.path, name)[0]).names
                return self.config(name, [c for c in columns if c in names]).to_pylist(), \
                    f"the export's {name} config"
            why = self.export_report().get("empty", {}).get(name)
            return [], (f"the export left {name} out: {why}" if why else f"the export has no {name} config")
        traces = self.traces()
        opts = assemble.AssembleOptions()
        where = f"assembled from the run ({name} with the default options)"
        if name == "sft":
            return [{"cot_type": t.cot_type, "sample_id": t.sample_id, "expansion_id": t.expansion_id}
                    for t in assemble.sft_traces(traces, opts)], where
        return [{"kind": k, "mcq_id": c.mcq_id, "image_id": c.image_id, "question_type": c.question_type,
                 "chosen_id": c.trace_id,
                 "rejected_id": r.trace_id, "chosen_type": c.cot_type, "rejected_type": r.cot_type}
                for k, c, r in assemble.dpo_pairs(traces, opts)], where

    # -- images ----------------------------------------------------------------------------------------------

    def image_sources(self) -> dict[str, bytes | str]:
        """``image_id -> JPEG bytes or a file path``: the run's source image paths that exist on this machine,
        or the export's ``images`` config (bytes, or paths that exist)."""
        out: dict[str, bytes | str] = {}
        if self.kind == RUN:
            for r in self.read(table_for("source"), ["image_id", "image_path"]).to_pylist():
                if r["image_path"] and Path(r["image_path"]).is_file():
                    out[r["image_id"]] = r["image_path"]
            return out
        files = config_files(self.path, "images")
        if files:
            for r in pq.read_table(files).to_pylist():
                img = r["image"] or {}
                if img.get("bytes"):
                    out[r["image_id"]] = img["bytes"]
                elif img.get("path") and Path(img["path"]).is_file():
                    out[r["image_id"]] = img["path"]
        return out

    def descriptions(self) -> dict[str, str]:
        """``image_id -> description``: the run's source, or (export) the description quoted in the prompt of the
        long thoughts."""
        if self.kind == RUN:
            return {r["image_id"]: r["description"]
                    for r in self.read(table_for("source"), ["image_id", "description"]).to_pylist()}
        out: dict[str, str] = {}
        e = self.read(table_for("long_thought"), ["image_id", "user_text"])
        for image_id, text in zip(e.column("image_id").to_pylist(), e.column("user_text").to_pylist()):
            if image_id not in out:
                m = _DESCRIPTION.search(text or "")
                if m:
                    out[image_id] = m.group(1).strip()
        return out


T = TypeVar("T")
_DESCRIPTION = re.compile(r"Image description:\s*(.*?)\n\s*Question:", re.S)


def config_files(out: Path, name: str) -> list[str]:
    """The parquet files of config ``name`` in an exported folder (``OUT/<name>/train-*.parquet``), in order."""
    return sorted(str(p) for p in (Path(out) / name).glob("train-*.parquet"))


def read_config(out: Path, name: str, columns: Sequence[str] | None = None) -> pa.Table | None:
    """An exported config's rows (only ``columns``, when given; metadata dropped), or ``None`` if it is absent."""
    files = config_files(out, name)
    if not files:
        return None
    return pq.read_table(files, columns=None if columns is None else list(columns)).replace_schema_metadata(None)


def detect(path: str | os.PathLike) -> str:
    """``"run"`` or ``"export"``; :class:`NotAnInput` (a ValueError) says what was expected otherwise."""
    p = Path(path)
    if not p.is_dir():
        raise NotAnInput(f"{p} is not a folder (expected a run directory or an exported dataset folder)")
    if (p / "export_report.json").is_file() or any(config_files(p, n) for n in (*raw_configs().values(), "sft", "dpo")):
        return EXPORT
    if (p / "manifest.json").is_file() or any(RunDir(p).has(s) for s in TABLES):
        return RUN
    raise NotAnInput(f"{p} is neither a run directory (manifest.json, {', '.join(f'{t}/' for t in stage_tables())}) "
                     f"nor an exported dataset folder (export_report.json, raw_*/ and sft/ dpo/ configs)")


def open_input(path_or_run: Any) -> Opened:
    """A run directory (path or :class:`RunDir`), an exported folder, or an :class:`Opened` (returned as is)."""
    if isinstance(path_or_run, Opened):
        return path_or_run
    if isinstance(path_or_run, RunDir):
        return Opened(RUN, path_or_run.path)
    return Opened(detect(path_or_run), Path(path_or_run))


# --------------------------------------------------------------------------------------------- computing


_WIDE_SPACES = [c.encode() for c in map(chr, range(0x80, 0x3001)) if c.isspace()]  # U+0085 … U+3000, 2-3 bytes
_WIDE_LEAD = np.zeros(256, bool)
_WIDE_LEAD[[seq[0] for seq in _WIDE_SPACES]] = True


_BLOCK_BYTES = 1 << 20  # texts are counted a few MB at a time: the temporaries stay in cache and are reused


def word_counts(texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The words of each text, ``len(text.split())`` (a null counts 0), computed on the UTF-8 bytes with
    numpy: a word starts at a byte that is not whitespace after one that is (or at the text's start), and
    whitespace is what ``str.split()`` splits on, the multi-byte characters (U+0085, U+00A0, U+2000…) included."""
    arr = pc.fill_null(texts, "")
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    n = len(arr)
    counts = np.zeros(n, np.int64)
    _, off_buf, data_buf = arr.buffers()
    if not n or data_buf is None:
        return counts
    kind = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    offsets = np.frombuffer(off_buf, kind)[arr.offset:arr.offset + n + 1].astype(np.int64)
    data = np.frombuffer(data_buf, np.uint8)
    cuts = np.unique(np.r_[np.searchsorted(offsets, np.arange(offsets[0], offsets[-1], _BLOCK_BYTES)), n])
    for lo, hi in zip(cuts[:-1], cuts[1:]):  # texts lo..hi, about one block of bytes
        counts[lo:hi] = _block_word_counts(data[offsets[lo]:offsets[hi]], offsets[lo:hi + 1] - offsets[lo])
    return counts


def _block_word_counts(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    if not len(data):
        return np.zeros(len(offsets) - 1, np.int64)
    space = (data == 32) | ((data >= 9) & (data <= 13)) | ((data >= 28) & (data <= 31))  # str.split()'s ASCII
    leads = np.flatnonzero(_WIDE_LEAD[data])
    if len(leads):  # mark every byte of a multi-byte whitespace character
        for seq in _WIDE_SPACES:
            at = leads[(data[leads] == seq[0]) & (leads <= len(data) - len(seq))]
            for k in range(1, len(seq)):
                at = at[data[at + k] == seq[k]]
            for k in range(len(seq)):
                space[at + k] = True
    before = np.empty_like(space)
    before[0], before[1:] = True, space[:-1]
    starts = offsets[:-1]
    before[starts[starts < len(data)]] = True  # each text starts after "whitespace"
    np.logical_and(~space, before, out=before)  # word starts
    counts = np.add.reduceat(before, np.minimum(starts, len(data) - 1), dtype=np.uint32).astype(np.int64)
    counts[offsets[1:] == starts] = 0  # empty texts
    return counts


def tally_columns(stage: str, *more: str) -> list[str]:
    """The columns :func:`tally` counts in a stage's records, and ``more``."""
    names = TABLES[stage].schema.names
    return list(dict.fromkeys([*(c for c in ("item_index", *LABELS) if c in names), *more]))


def _tally_by(table: pa.Table, column: str) -> dict[str, dict[str, int]]:
    """:func:`tally` of each group of rows sharing ``column``'s value (groups in order of size, largest first)."""
    if column not in table.column_names or not table.num_rows:
        return {}
    table = table.select([c for c in table.column_names if c == column or c in ("item_index", *LABELS)])
    col = table.column(column)
    out = {}
    for value in sorted(set(pc.unique(col).to_pylist()), key=lambda v: (v is None, str(v))):
        out[value] = tally(table.filter(pc.is_null(col) if value is None else pc.equal(col, value)))
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["rows"]))


class Lengths:
    """How many kept thoughts have each length (in words): exact counts per length, so a run of any size is
    summarised and plotted in memory that does not grow with it (a list of every length held ~1.7 GB of Python
    ints at 10M records)."""

    def __init__(self) -> None:
        self.counts = np.zeros(0, np.int64)  # counts[w]: thoughts of w words

    def add(self, words: np.ndarray) -> None:
        if len(words):
            c = np.bincount(np.asarray(words, np.int64))
            if len(c) > len(self.counts):
                self.counts = np.pad(self.counts, (0, len(c) - len(self.counts)))
            self.counts[:len(c)] += c

    def __len__(self) -> int:
        return int(self.counts.sum())

    def values(self) -> tuple[np.ndarray, np.ndarray]:
        """``(lengths that occur, how many thoughts have each)``."""
        at = np.flatnonzero(self.counts)
        return at, self.counts[at]

    def nth(self, k: int) -> int:
        """The ``k``-th smallest length (0-based), as ``sorted(lengths)[k]``."""
        return int(np.searchsorted(np.cumsum(self.counts), k, side="right"))

    def max(self) -> int:
        return len(self.counts) - 1

    def mean(self) -> float:
        """``statistics.fmean`` of the lengths (their exact sum over their number)."""
        values, counts = self.values()
        return float(int(values @ counts)) / len(self)

    def median(self) -> float:
        """``statistics.median`` of the lengths."""
        n = len(self)
        return self.nth(n // 2) if n % 2 else (self.nth(n // 2 - 1) + self.nth(n // 2)) / 2

    def percentile(self, q: float) -> float:
        """``numpy.percentile`` (linear) of the lengths."""
        h = (len(self) - 1) * q / 100
        lo = int(np.floor(h))
        a, b, t = float(self.nth(lo)), float(self.nth(min(lo + 1, len(self) - 1))), h - lo
        return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t  # numpy's lerp

    def box(self, whis: float = 1.5) -> dict[str, Any]:
        """``matplotlib.cbook.boxplot_stats`` of the lengths (for ``Axes.bxp``), fliers left out."""
        values = self.values()[0]
        q1, med, q3 = (self.percentile(q) for q in (25, 50, 75))
        iqr = q3 - q1
        inside_hi, inside_lo = values[values <= q3 + whis * iqr], values[values >= q1 - whis * iqr]
        n = len(self)
        return {"mean": self.mean(), "med": med, "q1": q1, "q3": q3, "iqr": iqr,
                "cilo": med - 1.57 * iqr / np.sqrt(n), "cihi": med + 1.57 * iqr / np.sqrt(n),
                "whishi": q3 if not len(inside_hi) or inside_hi.max() < q3 else int(inside_hi.max()),
                "whislo": q1 if not len(inside_lo) or inside_lo.min() > q1 else int(inside_lo.min()),
                "fliers": np.array([])}


def _summary(lengths: Lengths) -> dict[str, float]:
    n = len(lengths)
    if not n:
        return {"n": 0}
    return {"n": n, "mean": lengths.mean(), "median": lengths.median(),
            "p90": lengths.nth(min(n - 1, int(0.9 * n))), "max": lengths.max()}


def added_texts(e: pa.Table) -> pa.ChunkedArray:
    """What the reasoning model added to each simple thought (columns ``cue`` and ``continuation`` of stage 3's
    records): the cue and the continuation up to ``</think>``, any case (the end of ``long_thought``), without
    trailing whitespace (Arrow's Unicode whitespace is ``str.rstrip``'s, every code point checked)."""
    added = pc.binary_join_element_wise(pc.fill_null(e.column("cue"), ""), pc.fill_null(e.column("continuation"), ""),
                                        "")
    cut = pc.replace_substring_regex(added, pattern=r"(?is)</think>.*", replacement="", max_replacements=1)
    return pc.utf8_rtrim_whitespace(cut)


def _on_two_cores(fn: Callable[[pa.Table], T], parts: Iterable[pa.Table]) -> Iterator[T]:
    """``fn`` of each part, in order, two at a time on worker threads (numpy and Arrow release the GIL), while
    the next part is read; at most three parts in memory."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="stats") as pool:
        pending: deque = deque()
        for part in parts:
            pending.append(pool.submit(fn, part))
            if len(pending) > 2:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _simple_lengths(s: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    kept = s.filter(s.column("keep"))
    return word_counts(kept.column("thought")), kept.column("correct").to_numpy()


def _expansion_lengths(e: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, pa.DictionaryArray]:
    kept = e.filter(e.column("keep"))
    return (word_counts(kept.column("long_thought")), word_counts(added_texts(kept)),
            kept.column("simple_correct").to_numpy(), kept.column("correct").to_numpy(),
            pc.dictionary_encode(kept.column("cue").combine_chunks(), null_encoding="encode"))


def _lengths(o: Opened) -> dict[str, Any]:
    """Word counts of kept thoughts (:class:`Lengths`): ``simple`` vs ``expanded`` (the long thought) and
    ``added``; by trace type (whole thought) and by cue (added words). The texts are read part by part (a big
    run's long thoughts are never in memory whole), and only counts per length are kept."""
    _, short, long = stage_tables()
    out: dict[str, Any] = {"all": {"simple": Lengths(), "expanded": Lengths(), "added": Lengths()}, "by_type": {},
                           "by_cue": {}}

    def add(group: dict[str, Lengths], key: Any, words: np.ndarray) -> None:
        group.setdefault(key, Lengths()).add(words)

    for n, correct in _on_two_cores(_simple_lengths, o.parts(short, ["thought", "correct", "keep"])):
        out["all"]["simple"].add(n)
        for t, mask in (("O", correct), ("X", ~correct)):
            add(out["by_type"], t, n[mask])
    for n, added, simple_ok, ok, cues in _on_two_cores(_expansion_lengths, o.parts(
            long, ["long_thought", "cue", "continuation", "correct", "simple_correct", "keep"])):
        out["all"]["expanded"].add(n)
        out["all"]["added"].add(added)
        for t, mask in (("O_O", simple_ok & ok), ("O_X", simple_ok & ~ok), ("X_O", ~simple_ok & ok),
                        ("X_X", ~simple_ok & ~ok)):
            add(out["by_type"], t, n[mask])
        codes = cues.indices.to_numpy(zero_copy_only=False)
        for code, cue in enumerate(cues.dictionary.to_pylist()):
            add(out["by_cue"], cue, added[codes == code])
    out["by_type"] = {t: out["by_type"][t] for t in TYPE_ORDER if len(out["by_type"].get(t, ()))}
    out["by_cue"] = dict(sorted(((c, v) for c, v in out["by_cue"].items() if len(v)),
                                key=lambda kv: (-len(kv[1]), str(kv[0]))))  # most used first
    return out


def _stage_records(o: Opened) -> dict[str, pa.Table]:
    """The label columns of each stage table (:func:`stage_tables`), and what the numbers group them by."""
    question, short, long = stage_tables()
    return {question: o.read(question, tally_columns(question, "invalid_reason")),
            short: _hashed_ids(o, short, tally_columns(short, "sample_id", "question_type", "drop_reason")),
            long: _hashed_ids(o, long, tally_columns(long, "sample_id", "simple_correct", "drop_reason", "bad_word"))}


def _hashed_ids(o: Opened, stage: str, columns: list[str]) -> pa.Table:
    """``columns`` of a stage's records (in no order: the numbers do not depend on it), read part by part with
    ``sample_id`` as its 64-bit hash (:func:`builder.ids.id_hash`): the long thoughts are joined to their
    simple thoughts on it, and the ids' text (~0.7 GB at 10M records) is never held."""
    parts = [t.set_column(t.schema.get_field_index("sample_id"), "sample_id", pa.array(id_hash(t.column("sample_id"))))
             for t in o.parts(stage, columns)]
    if not parts:
        schema = pa.schema([TABLES[stage].schema.field(c) for c in columns])
        return schema.set(schema.get_field_index("sample_id"), pa.field("sample_id", pa.uint64())).empty_table()
    return pa.concat_tables(parts)


def _counts(stages: dict[str, pa.Table]) -> dict[str, dict[str, int]]:
    """:func:`tally` of each stage, and of the long thoughts split by their simple thought's label
    (``<table>_of_O`` / ``<table>_of_X``)."""
    long = stage_tables()[2]
    counts = {s: tally(t) for s, t in stages.items()}
    e = stages[long]
    if e.num_rows:
        for flag, name in ((True, f"{long}_of_O"), (False, f"{long}_of_X")):
            counts[name] = tally(e.filter(pc.equal(e.column("simple_correct"), flag)))
    return counts


def _funnel(counts: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    """Per stage: items, parsed (the questions: valid), correct, kept (and kept and correct)."""
    question, short, long = stage_tables()
    m = counts[question]
    funnel = [{"stage": question, "title": stage_title(question), "items": m.get("questions", 0),
               "parsed": m.get("valid", 0), "correct": None, "kept": m.get("valid", 0)}]
    for s in (short, long):
        c = counts[s]
        funnel.append({"stage": s, "title": stage_title(s), "items": c["rows"], "parsed": c.get("parsed", 0),
                       "correct": c.get("correct", 0), "kept": c.get("kept", 0),
                       "kept_correct": c.get("kept_correct", 0)})
    return funnel


def _drops(stages: dict[str, pa.Table]) -> dict[str, dict[str, int]]:
    """Per stage: the rows each filter removed, by reason (the questions: the invalid ones, by reason)."""
    question, short, long = stage_tables()
    records = stages[question]
    questions = records.filter(pc.greater_equal(records.column("item_index"), 0)) if records.num_rows else records
    invalid = questions.filter(pc.invert(questions.column("valid"))) if questions.num_rows else questions
    drops = {question: {k: v["rows"] for k, v in _tally_by(invalid, "invalid_reason").items()}}
    for s in (short, long):
        t = stages[s]
        dropped = t.filter(pc.invert(t.column("keep"))) if t.num_rows else t
        drops[s] = {(k or "(no reason)"): v["rows"] for k, v in _tally_by(dropped, "drop_reason").items()}
    return drops


def _bad_words(e: pa.Table) -> dict[str, int]:
    """The long thoughts each bad word dropped (the first one found in a thought), most first."""
    bad = e.filter(pc.not_equal(e.column("bad_word"), "")) if e.num_rows else e
    return {k: v["rows"] for k, v in _tally_by(bad, "bad_word").items()}


def _accuracy(stages: dict[str, pa.Table]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per thought stage and question type: rows, kept, kept and correct, and their ratio."""
    _, short, long = stage_tables()
    s2 = stages[short]
    accuracy: dict[str, dict[str, dict[str, Any]]] = {}
    for s, t in ((short, s2), (long, stages[long])):
        if s == long and t.num_rows:  # long thoughts name their question type through their simple thought
            at = pc.index_in(t.column("sample_id"), s2.column("sample_id"))
            t = t.append_column("question_type", pc.fill_null(pc.take(s2.column("question_type"), at), ""))
        accuracy[s] = {}
        for qt, c in _tally_by(t, "question_type").items():
            kept = c.get("kept", 0)
            accuracy[s][qt or "(none)"] = {"rows": c["rows"], "kept": kept, "kept_correct": c.get("kept_correct", 0),
                                           "accuracy": c.get("kept_correct", 0) / kept if kept else None}
    return accuracy


def _length_summaries(lengths: dict[str, Any]) -> dict[str, Any]:
    """:func:`_summary` of each list of :func:`_lengths`."""
    return {
        "unit": "words",
        "simple": _summary(lengths["all"]["simple"]),
        "expanded": _summary(lengths["all"]["expanded"]),
        "added": _summary(lengths["all"]["added"]),
        "by_type": {t: _summary(v) for t, v in lengths["by_type"].items()},
        "added_by_cue": {c: _summary(v) for c, v in lengths["by_cue"].items()},
    }


def _collect(path_or_run: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(stats, the lengths for the plots)``."""
    o = open_input(path_or_run)
    stages = _stage_records(o)
    counts = _counts(stages)
    lengths = _lengths(o)
    sft_types, sft_from = o.set_counts("sft", "cot_type")
    dpo_kinds, dpo_from = o.set_counts("dpo", "kind")
    stats = {
        "input": {"kind": o.kind, "path": str(o.path), "label": o.label},
        "counts": counts,
        "funnel": _funnel(counts),
        "drops": _drops(stages),
        "bad_words": _bad_words(stages[stage_tables()[2]]),
        "accuracy_by_question_type": _accuracy(stages),
        "lengths": _length_summaries(lengths),
        "sft": {"rows": sum(sft_types.values()), "from": sft_from,
                "cot_type": {t: sft_types[t] for t in TYPE_ORDER if sft_types[t]}},
        "dpo": {"rows": sum(dpo_kinds.values()), "from": dpo_from, "kind": dict(sorted(dpo_kinds.items()))},
    }
    return stats, lengths


def compute(path_or_run: Any) -> dict[str, Any]:
    """The numbers of a run directory or an exported folder (JSON-able).

    Keys: ``input`` (kind, path, label), ``counts`` (:func:`tally` of each stage, and of stage 3 split by the
    simple thought's label), ``funnel`` (per stage: items, parsed, correct, kept), ``drops`` (per stage: rows
    removed per reason; stage 1: invalid questions per reason), ``bad_words``, ``accuracy_by_question_type``
    (kept-and-correct / kept, stages 2 and 3), ``lengths`` (word counts of kept thoughts: n, mean, median,
    p90, max), ``sft`` and ``dpo`` (rows, trace types / pair kinds, and where they come from).
    """
    return _collect(path_or_run)[0]


# ------------------------------------------------------------------------------------------------ figures

FIGURES = {
    "funnel": "Records per stage: items → parsed → correct → kept",
    "drop_reasons": "What each filter removed",
    "bad_words": "Bad words that dropped expansions",
    "accuracy_by_question_type": "Accuracy of kept traces by question type",
    "thought_lengths": "Thought length: simple vs expanded (kept)",
    "thought_lengths_by_type": "Thought length by trace type (kept)",
    "added_length_by_cue": "Words added by the reasoning model, by cue (kept)",
    "sft_composition": "SFT composition by trace type",
    "dpo_composition": "DPO composition by pair kind",
}
"""File stem -> title of every figure :func:`write_figures` may write (one axes each; usable as alt text)."""

_COLOURS = {"items": "#9aa5b1", "parsed": "#5b8def", "correct": "#2f9e63", "kept": "#e0a526",
            "kept_correct": "#7b5bd6"}
_ROLE_COLOURS = {"question": "#5b8def", "short_thought": "#2f9e63", "long_thought": "#e0a526"}
_TYPE_COLOURS = {"O": "#2f9e63", "X": "#d64545", "O_O": "#7fc8a0", "O_X": "#f08c8c", "X_O": "#4c7bd9", "X_X": "#a33"}


def _colour(table: str) -> str:
    """The colour of a stage table's records in every figure (by its role)."""
    return _ROLE_COLOURS[get_stage(table).role]


def _stage_number(role: str) -> int:
    return get_stage(table_for(role)).number


def make_figures(path_or_run: Any) -> dict[str, Any]:
    """``{stem: matplotlib Figure}`` for the figures that have data (see :data:`FIGURES`); one axes each, with a
    title and both axes labelled. Close them (``matplotlib.pyplot.close``) when done; :func:`write_figures`
    does."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats, lengths = _collect(path_or_run)
    figs: dict[str, Any] = {}

    def new(stem: str, size=(7.5, 4.2)):
        fig, ax = plt.subplots(figsize=size, dpi=110, layout="constrained")
        ax.set_title(FIGURES[stem])
        ax.grid(axis="y" if size[0] >= size[1] else "x", alpha=0.3)
        ax.set_axisbelow(True)
        figs[stem] = fig
        return ax

    for draw in (_draw_funnel, _draw_drop_reasons, _draw_bad_words, _draw_accuracy, _draw_thought_lengths,
                 _draw_lengths_by_type, _draw_added_by_cue, _draw_sft_composition, _draw_dpo_composition):
        draw(new, stats, lengths)
    return figs


def _draw_funnel(new: Callable[..., Any], stats: dict[str, Any], lengths: dict[str, Any]) -> None:
    """Items, parsed, correct and kept records of each stage, side by side."""
    ax = new("funnel")
    width = 0.2
    for i, level in enumerate(("items", "parsed", "correct", "kept")):
        xs = [j + (i - 1.5) * width for j in range(len(stats["funnel"]))]
        ys = [f[level] or 0 for f in stats["funnel"]]
        bars = ax.bar(xs, ys, width, label=level if level != "parsed" else f"parsed (stage {_stage_number('question')}: valid)",
                      color=_COLOURS[level])
        ax.bar_label(bars, labels=[str(f[level]) if f[level] is not None else "–" for f in stats["funnel"]],
                     fontsize=7, padding=1)
    ax.set_xticks(range(len(stats["funnel"])), [f["title"] for f in stats["funnel"]])
    ax.set_xlabel("stage")
    ax.set_ylabel("records")
    ax.legend(fontsize=8)


def _draw_drop_reasons(new: Callable[..., Any], stats: dict[str, Any], lengths: dict[str, Any]) -> None:
    """The records each filter of each stage removed, one bar per stage and reason."""
    bars = [(s, reason, n) for s in stage_tables() for reason, n in stats["drops"][s].items()]
    if not bars:
        return
    ax = new("drop_reasons", (7.5, 0.9 + 0.38 * len(bars)))
    labels = [f"{stage_title(s).split(' · ')[0]}: {reason}" for s, reason, _ in bars]
    ys = list(range(len(bars)))[::-1]
    b = ax.barh(ys, [n for *_, n in bars], color=[_colour(s) for s, *_ in bars])
    ax.bar_label(b, fontsize=8, padding=2)
    ax.set_yticks(ys, labels, fontsize=8)
    questions = table_for("question")  # stage 1 is named only where it dropped something
    ax.set_xlabel("records dropped" + (f" (stage {_stage_number('question')}: invalid questions)"
                                       if stats["drops"].get(questions) else ""))
    ax.set_ylabel("stage: reason")


def _draw_bad_words(new: Callable[..., Any], stats: dict[str, Any], lengths: dict[str, Any]) -> None:
    """The 15 bad words that dropped the most long thoughts."""
    if not stats["bad_words"]:
        return
    top = list(stats["bad_words"].items())[:15]
    ax = new("bad_words", (7.5, 0.9 + 0.32 * len(top)))
    ys = list(range(len(top)))[::-1]
    b = ax.barh(ys, [n for _, n in top], color="#d64545")
    ax.bar_label(b, fontsize=8, padding=2)
    ax.set_yticks(ys, [w for w, _ in top], fontsize=8)
    ax.set_xlabel(f"stage-{_stage_number('long_thought')} {ROLE_NOUNS['long_thought']} containing it "
                  f"(first bad word found)")
    ax.set_ylabel("bad word")


def _draw_accuracy(new: Callable[..., Any], stats: dict[str, Any], lengths: dict[str, Any]) -> None:
    """Accuracy of the kept simple and long thoughts per question type (the most common type on top)."""
    acc = stats["accuracy_by_question_type"]
    qts = sorted({q for s in acc.values() for q in s}, key=lambda q: -sum(acc[s].get(q, {}).get("rows", 0) for s in acc))
    if not qts:
        return
    ax = new("accuracy_by_question_type", (7.5, 1.2 + 0.55 * len(qts)))
    h = 0.38
    for i, s in enumerate(stage_tables()[1:]):
        ys = [len(qts) - 1 - j + (0.5 - i) * h for j in range(len(qts))]
        vals = [(acc[s].get(q) or {}).get("accuracy") for q in qts]
        b = ax.barh(ys, [v or 0 for v in vals], h, color=_colour(s), label=stage_title(s))
        ax.bar_label(b, labels=[f"{v:.0%} of {acc[s][q]['kept']}" if v is not None else "–"
                                for v, q in zip(vals, qts)], fontsize=7, padding=2)
    ax.set_yticks([len(qts) - 1 - j for j in range(len(qts))], [_wrap(q) for q in qts], fontsize=8)
    ax.set_xlim(0, 1.2)
    ax.set_xlabel("accuracy of kept traces (correct / kept)")
    ax.set_ylabel("question type")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _draw_thought_lengths(new: Callable[..., Any], stats: dict[str, Any], lengths: dict[str, Any]) -> None:
    """Histograms of the kept simple and long thoughts' lengths, on shared bins."""
    simple, expanded = lengths["all"]["simple"], lengths["all"]["expanded"]
    if not (len(simple) or len(expanded)):
        return
    _, short, long = stage_tables()
    ax = new("thought_lengths")
    top = max(simple.max() if len(simple) else 0, expanded.max() if len(expanded) else 0)
    bins = list(range(0, top + max(1, top // 40) + 1, max(1, top // 40)))
    for kept, table, what in ((simple, short, "simple thought"), (expanded, long, "long thought")):
        if len(kept):
            values, counts = kept.values()
            ax.hist(values, bins=bins, weights=counts, alpha=0.65, color=_colour(table),
                    label=f"{what} (stage {get_stage(table).number}), n={len(kept)}, median {kept.median():.0f}")
    ax.set_xlabel("thought length (words)")
    ax.set_ylabel("kept thoughts")
    ax.legend(fontsize=8)


def _draw_lengths_by_type(new: Callable[..., Any], stats: dict[str, Any], lengths: dict[str, Any]) -> None:
    """A box per trace type of the kept thoughts' lengths."""
    if not lengths["by_type"]:
        return
    ax = new("thought_lengths_by_type")
    types = list(lengths["by_type"])
    bp = ax.bxp([lengths["by_type"][t].box() for t in types], patch_artist=True, showfliers=False)
    for patch, t in zip(bp["boxes"], types):
        patch.set_facecolor(_TYPE_COLOURS.get(t, "#999"))
        patch.set_alpha(0.7)
    ax.set_xticks(range(1, len(types) + 1), [f"{type_label(t)}\nn={len(lengths['by_type'][t])}" for t in types])
    ax.set_xlabel("trace type (O correct, X wrong; A→B: simple thought → expansion)")
    ax.set_ylabel("thought length (words)")


def _draw_added_by_cue(new: Callable[..., Any], stats: dict[str, Any], lengths: dict[str, Any]) -> None:
    """A box per cue of the words the reasoning model added (the most used cue first)."""
    if not lengths["by_cue"]:
        return
    ax = new("added_length_by_cue")
    cues = sorted(lengths["by_cue"], key=lambda c: -len(lengths["by_cue"][c]))
    bp = ax.bxp([lengths["by_cue"][c].box() for c in cues], patch_artist=True, showfliers=False)
    for patch in bp["boxes"]:
        patch.set_facecolor(_ROLE_COLOURS["long_thought"])
        patch.set_alpha(0.7)
    ax.set_xticks(range(1, len(cues) + 1), [f"{_wrap(c, 18)}\nn={len(lengths['by_cue'][c])}" for c in cues])
    ax.set_xlabel("cue")
    ax.set_ylabel("words added (cue + continuation)")


def _draw_sft_composition(new: Callable[..., Any], stats: dict[str, Any], lengths: dict[str, Any]) -> None:
    """SFT rows per trace type."""
    if not stats["sft"]["rows"]:
        return
    ax = new("sft_composition", (6.5, 3.8))
    items = list(stats["sft"]["cot_type"].items())
    b = ax.bar([type_label(t) for t, _ in items], [n for _, n in items],
               color=[_TYPE_COLOURS.get(t, "#999") for t, _ in items])
    ax.bar_label(b, fontsize=8, padding=1)
    ax.set_xlabel(f"trace type ({_short(stats['sft']['from'])})")
    ax.set_ylabel("SFT rows")


def _draw_dpo_composition(new: Callable[..., Any], stats: dict[str, Any], lengths: dict[str, Any]) -> None:
    """DPO pairs per pair kind."""
    if not stats["dpo"]["rows"]:
        return
    ax = new("dpo_composition", (6.5, 3.8))
    items = list(stats["dpo"]["kind"].items())
    b = ax.bar([kind_label(k).replace("≻", ">") for k, _ in items], [n for _, n in items], color="#7b5bd6")
    ax.bar_label(b, fontsize=8, padding=1)
    ax.set_xlabel(f"pair kind, chosen ≻ rejected ({_short(stats['dpo']['from'])})")
    ax.set_ylabel("DPO pairs")


def _wrap(text: str, width: int = 22) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


def _short(where: str) -> str:
    return "exported config" if where.startswith("the export") else "assembled from the run, default options"


def describe(fig: Any) -> list[dict[str, str]]:
    """Title and axis labels of each axes of a figure (what the tests and a card's alt text read)."""
    return [{"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel()} for ax in fig.axes]


def write_figures(path_or_run: Any, out_dir: str | os.PathLike) -> list[Path]:
    """Write the figures of a run directory or an exported folder as ``OUT_DIR/<stem>.png`` (see
    :data:`FIGURES`; a figure without data is not written); returns the paths, in :data:`FIGURES` order."""
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, fig in make_figures(path_or_run).items():
        path = out / f"{stem}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------ the terminal


def summary_tables(stats: dict[str, Any]) -> list[Any]:
    """Rich tables of :func:`compute`'s numbers, for ``lpt stats``."""
    return [_funnel_table(stats), _drops_table(stats), _accuracy_table(stats), _lengths_table(stats),
            _sets_table(stats)]


def _table(title: str, columns: Sequence[str], left: Callable[[str], bool]) -> Any:
    """A rich table with a left title and ``columns`` (left-justified where ``left(column)``, else right)."""
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col, justify="left" if left(col) else "right")
    return t


def _funnel_table(stats: dict[str, Any]) -> Any:
    """Records per stage (and the long thoughts of correct / wrong simple thoughts), with the accuracy of kept."""
    t = _table(f"{stats['input']['label']}: records per stage (builder.records.tally)",
               ("stage", "items", "parsed / valid", "correct", "kept", "kept & correct", "accuracy of kept"),
               lambda col: col == "stage")
    for f in stats["funnel"]:
        kc = f.get("kept_correct")
        t.add_row(f["title"], str(f["items"]), str(f["parsed"]), _n(f["correct"]), str(f["kept"]), _n(kc),
                  f"{kc / f['kept']:.1%}" if kc is not None and f["kept"] else "")
    long = stage_tables()[2]
    number = get_stage(long).number
    for name, label in ((f"{long}_of_O", f"  stage {number} of O (correct simple)"),
                        (f"{long}_of_X", f"  stage {number} of X (wrong simple)")):
        c = stats["counts"].get(name)
        if c:
            t.add_row(label, str(c["rows"]), str(c.get("parsed", 0)), str(c.get("correct", 0)), str(c.get("kept", 0)),
                      str(c.get("kept_correct", 0)), f"{c['kept_correct'] / c['kept']:.1%}" if c.get("kept") else "")
    return t


def _drops_table(stats: dict[str, Any]) -> Any:
    """What each filter removed, and the bad words that dropped the most long thoughts."""
    t = _table("what each filter removed", ("stage", "reason", "records"), lambda col: col != "records")
    for s, reasons in stats["drops"].items():
        for reason, n in reasons.items():
            t.add_row(stage_title(s), reason, str(n))
    for w, n in list(stats["bad_words"].items())[:8]:
        t.add_row("", f"[dim]its bad word:[/dim] {w!r}", f"[dim]{n}[/dim]")
    return t


def _accuracy_table(stats: dict[str, Any]) -> Any:
    """Kept and accuracy of the simple and long thoughts per question type."""
    _, short, long = stage_tables()
    n2, n3 = get_stage(short).number, get_stage(long).number
    t = _table("accuracy of kept traces by question type",
               ("question type", f"stage {n2} kept", f"stage {n2} acc.", f"stage {n3} kept", f"stage {n3} acc."),
               lambda col: col == "question type")
    acc = stats["accuracy_by_question_type"]
    for q in sorted({q for s in acc.values() for q in s}):
        cells = []
        for s in (short, long):
            a = acc.get(s, {}).get(q)
            cells += [str(a["kept"]) if a else "", f"{a['accuracy']:.1%}" if a and a["accuracy"] is not None else ""]
        t.add_row(q, *cells)
    return t


def _lengths_table(stats: dict[str, Any]) -> Any:
    """n, mean, median and p90 of the kept thoughts' lengths: all, by trace type, added per cue."""
    t = _table("thought length of kept traces (words)", ("what", "n", "mean", "median", "p90"),
               lambda col: col == "what")
    L = stats["lengths"]
    rows = [("simple thought", L["simple"]), ("long thought", L["expanded"]),
            (f"added by stage {_stage_number('long_thought')}", L["added"])]
    rows += [(f"type {type_label(k)}", v) for k, v in L["by_type"].items()]
    rows += [(f"added after cue {c!r}", v) for c, v in L["added_by_cue"].items()]
    for what, v in rows:
        if v.get("n"):
            t.add_row(what, str(v["n"]), f"{v['mean']:.0f}", f"{v['median']:.0f}", str(v["p90"]))
    return t


def _sets_table(stats: dict[str, Any]) -> Any:
    """SFT rows per trace type and DPO pairs per kind, and where they come from."""
    t = _table("SFT / DPO composition", ("set", "part", "rows"), lambda col: col != "rows")
    t.add_row("sft", f"[dim]{stats['sft']['from']}[/dim]", str(stats["sft"]["rows"]))
    for k, n in stats["sft"]["cot_type"].items():
        t.add_row("", type_label(k), str(n))
    t.add_row("dpo", f"[dim]{stats['dpo']['from']}[/dim]", str(stats["dpo"]["rows"]))
    for k, n in stats["dpo"]["kind"].items():
        t.add_row("", kind_label(k), str(n))
    return t


def _n(v: Any) -> str:
    return "" if v is None else str(v)


__all__ = ["EXPORT", "FIGURES", "NotAnInput", "Opened", "RUN", "ROLE_NOUNS", "added_texts", "compute", "describe",
           "detect", "kind_label", "make_figures", "open_input", "stage_tables", "stage_title", "summary_tables",
           "type_label", "write_figures"]
