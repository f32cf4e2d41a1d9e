"""A static, self-contained HTML report of a run directory or an exported dataset folder (``lpt view``).

One file, no server and nothing fetched: the page's CSS and JavaScript (``builder/data/viewer/``) are inlined, the
records are embedded once as JSON (column arrays, repeated strings interned), and each image is a small base64
JPEG thumbnail (from the run's source image paths, or the export's ``images`` config; a placeholder says when
an image is not on this machine). The page renders one page of items at a time (50 by default), so it stays
fast with 100K traces; above :data:`STATIC_MAX_TRACES` the file is refused and :mod:`builder.serve` serves the
same page from the parquet files (``lpt view RUN --serve``).

What it shows: per MCQ the image, question, options and gold answer; every simple thought (stage 2) with its
label (correct / wrong) and whether it was kept or why it was dropped; every expansion (stage 3) with the cue
and the text the reasoning model added highlighted, its label, drop reason and bad word; the DPO pairs side by
side (an export's ``dpo`` config, or :func:`builder.assemble.dpo_pairs` with the default options on a run).
Filters (stage, trace type, label, kept / drop reason, cue, question type, pair kind, SFT / DPO membership,
membership in a plugin's config: :func:`plugin_sets`) and a text search; the state lives in the URL hash (``view.html#view=traces&stage=expansion&q=texture``), so a
filtered view is a link.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from builder.dataset_configs import BUILTIN, CONFIGS, LPTConfig, raw_configs
from builder.export import read_report
from builder.stages import table_for
from builder.stats import EXPORT, KIND_LABELS, Opened, added_texts, config_files, open_input, stage_tables

THUMB_SIDE = 384
PAGE_SIZE = 50
STATIC_MAX_TRACES = 200_000
"""The most traces (simple thoughts + expansions) one static page holds (``LPT_VIEW_STATIC_MAX`` overrides it): a
page is about 0.7 KB per trace and a browser reads one JSON string of at most a few hundred MB; above it, serve
the run (``lpt view RUN --serve``)."""
ID_CHARS = 12  # ids are shown (and searched) by their first characters

QUESTION_COLUMNS = ["mcq_id", "image_id", "item_index", "question", "options", "answer_index", "answer_text",
                    "question_type", "valid", "invalid_reason"]
SIMPLE_COLUMNS = ["sample_id", "mcq_id", "image_id", "sample_index", "question", "question_type", "options",
                  "answer_index", "response", "thought", "answer", "pred_index", "parsed", "correct", "keep",
                  "drop_reason"]
EXPANSION_COLUMNS = ["expansion_id", "sample_id", "expansion_index", "cue", "separator", "continuation",
                     "long_thought", "answer", "pred_index", "parsed", "correct", "simple_correct", "bad_word", "keep",
                     "drop_reason"]
"""The columns of each stage the page shows (only these are read)."""

# flags of a trace (bit masks, the page reads the same numbers)
PARSED, CORRECT, KEEP, IN_SFT, SIMPLE_CORRECT = 1, 2, 4, 8, 16


def _asset(name: str) -> str:
    return resources.files("builder").joinpath("data", "viewer", name).read_text(encoding="utf-8")


def thumbnail(src: bytes | str | os.PathLike, side: int = THUMB_SIDE) -> str | None:
    """A ``data:image/jpeg;base64,…`` URI of the image (bytes or a file), its long side at most ``side`` px;
    ``None`` when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
            im.draft("RGB", (side, side))  # a JPEG decodes at a reduced scale: much faster for large photos
            im = im.convert("RGB")
            im.thumbnail((side, side))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=72, optimize=True)
    except Exception:  # a truncated or foreign file: the page shows the placeholder
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class _Interned:
    """Repeated values (cues, reasons, option lists) stored once; rows hold their index."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self._index: dict[Any, int] = {}

    def __call__(self, value: Any) -> int:
        key = tuple(value) if isinstance(value, list) else value
        if key not in self._index:
            self._index[key] = len(self.values)
            self.values.append(value)
        return self._index[key]


def _prefix(thought: str, separator: str) -> str:
    """How the long-thought stage joins a simple thought to what it added (as it does when it labels one)."""
    t = (thought or "").rstrip()
    return (t if t.endswith(".") else t + ".") + separator


def _split_long_thought(e: dict[str, Any], thought: str) -> tuple[str | None, str]:
    """``(prefix override or None, added text)`` of an expansion (a record with its ``added`` text:
    :func:`builder.stats.added_texts`): ``long_thought`` = prefix + added, where added starts at the cue. The override is ``None`` when the prefix is the simple thought joined the usual
    way (the page rebuilds it), so the simple thought is not stored twice."""
    long = e["long_thought"] or ""
    added = e["added"]  # stats.added_texts
    if added and long.endswith(added):
        cut = len(long) - len(added)
    else:  # not the stage's own join (e.g. an edited record): cut at the last cue, else show all as added
        cut = long.rfind(e["cue"]) if e["cue"] else -1
        cut = max(cut, 0)
    pre = long[:cut]
    return (None if pre == _prefix(thought, e["separator"]) else pre), long[cut:]


class _Page:
    """The page's records as column arrays, filled one kind of record at a time: the questions, the simple and
    the long thoughts, the DPO pairs, the plugin sets. A record refers to another by its position (an MCQ by
    its row in :attr:`M`, a long thought's simple thought by its row in :attr:`S`); a later record whose MCQ is
    not among the questions adds one from its own fields."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.qtypes, self.cues, self.reasons, self.optsets, self.kinds, self.seps = (_Interned() for _ in range(6))
        self.image_ids: list[str] = []
        self._image_index: dict[str, int] = {}
        self.M: dict[str, list] = {k: [] for k in ("id", "img", "q", "o", "g", "qt", "ok", "why", "item", "at")}
        self.mcq_index: dict[str, int] = {}
        self.S: dict[str, list] = {k: [] for k in ("id", "m", "o", "g", "t", "a", "p", "f", "r", "n", "raw")}
        self.sample_index: dict[str, int] = {}
        self.E: dict[str, list] = {k: [] for k in ("id", "s", "c", "sep", "pre", "x", "a", "p", "f", "r", "b", "n",
                                                   "after")}
        self.expansion_index: dict[str, int] = {}
        self.P: dict[str, list] = {k: [] for k in ("k", "m", "c", "r", "ct", "rt")}
        self.X: dict[str, list] = {k: [] for k in ("name", "desc", "rows", "s", "e")}

    def image(self, image_id: str) -> int:
        if image_id not in self._image_index:
            self._image_index[image_id] = len(self.image_ids)
            self.image_ids.append(image_id)
        return self._image_index[image_id]

    def add_mcq(self, mcq_id: str, image_id: str, question: str, options: list[str], gold: int, qt: str,
                valid: bool, why: str, item: int, answer_text: str = "") -> int:
        self.mcq_index[mcq_id] = len(self.M["id"])
        for k, v in (("id", mcq_id[:ID_CHARS]), ("img", self.image(image_id)), ("q", question),
                     ("o", self.optsets(options)), ("g", gold), ("qt", self.qtypes(qt or "")), ("ok", int(valid)),
                     ("why", why), ("item", item), ("at", "" if valid else answer_text or "")):
            self.M[k].append(v)
        return self.mcq_index[mcq_id]

    def add_questions(self, o: Opened, table: Any = None) -> None:
        """Every MCQ of the question table (or of ``table``, some of its rows), valid or not."""
        for m in (o.read(table_for("question"), QUESTION_COLUMNS) if table is None else table).to_pylist():
            self.add_mcq(m["mcq_id"], m["image_id"], m["question"], m["options"] or [], m["answer_index"],
                         m["question_type"], m["valid"], m["invalid_reason"], m["item_index"], m["answer_text"])

    def add_simple_thoughts(self, o: Opened, in_sft: set[str], table: Any = None) -> None:
        """Every simple thought (or those of ``table``), in its question's order, with its flags."""
        table = o.read(table_for("short_thought"), SIMPLE_COLUMNS) if table is None else table
        samples = sorted(table.to_pylist(), key=lambda r: (self.mcq_index.get(r["mcq_id"], len(self.mcq_index)),
                                                           r["mcq_id"], r["sample_index"], r["sample_id"]))
        for s in samples:
            if s["mcq_id"] not in self.mcq_index:
                self.add_mcq(s["mcq_id"], s["image_id"], s["question"], s["options"] or [], s["answer_index"],
                             s["question_type"], True, "", -2)
            flags = (PARSED * s["parsed"]) | (CORRECT * s["correct"]) | (KEEP * s["keep"]) | (
                IN_SFT * (s["sample_id"] in in_sft))
            self.sample_index[s["sample_id"]] = len(self.S["id"])
            for k, v in (("id", s["sample_id"][:ID_CHARS]), ("m", self.mcq_index[s["mcq_id"]]),
                         ("o", self.optsets(s["options"] or [])), ("g", s["answer_index"]), ("t", s["thought"] or ""),
                         ("a", s["answer"] or ""), ("p", s["pred_index"]), ("f", flags),
                         ("r", self.reasons(s["drop_reason"] or "")), ("n", s["sample_index"]),
                         ("raw", None if s["parsed"] else s["response"] or "")):
                self.S[k].append(v)

    def add_long_thoughts(self, o: Opened, in_sft: set[str], table: Any = None) -> None:
        """Every long thought (or those of ``table``) after its simple thought, split into the simple thought and
        what was added; one whose simple thought is not here is counted in a note."""
        table = o.read(table_for("long_thought"), EXPANSION_COLUMNS) if table is None else table
        orphans = 0
        expansions = table.append_column("added", added_texts(table)).to_pylist()
        expansions.sort(key=lambda r: (self.sample_index.get(r["sample_id"], -1), r["expansion_index"],
                                       r["expansion_id"]))
        for e in expansions:
            si = self.sample_index.get(e["sample_id"])
            if si is None:
                orphans += 1
                continue
            self._add_long_thought(e, si, in_sft)
        if orphans:
            self.notes.append(f"{orphans} expansions whose simple thought is not in the records are not shown")

    def _add_long_thought(self, e: dict[str, Any], si: int, in_sft: set[str]) -> None:
        pre, added = _split_long_thought(e, self.S["t"][si])
        flags = (PARSED * e["parsed"]) | (CORRECT * e["correct"]) | (KEEP * e["keep"]) | (
            IN_SFT * (e["expansion_id"] in in_sft)) | (SIMPLE_CORRECT * e["simple_correct"])
        self.expansion_index[e["expansion_id"]] = len(self.E["id"])
        for k, v in (("id", e["expansion_id"][:ID_CHARS]), ("s", si), ("c", self.cues(e["cue"] or "")),
                     ("sep", self.seps(e["separator"] or "")), ("pre", pre), ("x", added), ("a", e["answer"] or ""),
                     ("p", e["pred_index"]), ("f", flags), ("r", self.reasons(e["drop_reason"] or "")),
                     ("b", e["bad_word"] or ""), ("n", e["expansion_index"]),
                     ("after", None if e["parsed"] else _after_thought(e))):
            self.E[k].append(v)

    def ref(self, trace_id: str) -> int:
        """A DPO side's reference to its trace: ``2*i`` simple thought ``i``, ``2*j+1`` long thought ``j``, ``-1``
        a trace not among the records (the side then carries its own text)."""
        if trace_id in self.sample_index:
            return 2 * self.sample_index[trace_id]
        if trace_id in self.expansion_index:
            return 2 * self.expansion_index[trace_id] + 1
        return -1

    def add_pairs(self, o: Opened, dpo_rows: list[dict[str, Any]], at: list[int] | None = None) -> None:
        """The DPO pairs; a side (or a question) not among the records is read from the export's texts (``at``:
        the rows' positions in the export's dpo config, when ``dpo_rows`` are some of its rows)."""
        refs = [(self.ref(d["chosen_id"]), self.ref(d["rejected_id"])) for d in dpo_rows]
        texts: dict[int, dict[str, Any]] = {}  # rows whose texts are needed: a side or a question not in the records
        need = [n for n, (d, (c, r)) in enumerate(zip(dpo_rows, refs))
                if c < 0 or r < 0 or d["mcq_id"] not in self.mcq_index]
        if need:
            table = o.config("dpo", ["prompt", "chosen", "rejected"])
            if table is not None:
                texts = dict(zip(need, table.take([at[n] for n in need] if at else need).to_pylist()))
        unmatched = 0
        for n, (d, (c, r)) in enumerate(zip(dpo_rows, refs)):
            t = texts.get(n, {})
            if d["mcq_id"] not in self.mcq_index:
                self.add_mcq(d["mcq_id"], d.get("image_id") or "", _user_question(t), [], -1,
                             d.get("question_type") or "", True, "", -2)
            unmatched += (c < 0) + (r < 0)
            for k, v in (("k", self.kinds(d["kind"])), ("m", self.mcq_index[d["mcq_id"]]), ("c", c), ("r", r),
                         ("ct", _side_text(t, "chosen") if c < 0 else None),
                         ("rt", _side_text(t, "rejected") if r < 0 else None)):
                self.P[k].append(v)
        if unmatched and self.S["id"]:
            self.notes.append(f"{unmatched:,} DPO pair sides are not among the stage records here; they are shown "
                              f"as the exported text")

    def note_no_traces(self, o: Opened) -> None:
        """On an export without the raw thought configs, say why no trace is shown."""
        if o.kind != EXPORT or self.S["id"]:
            return
        have_sets = [n for n in ("sft", "dpo") if o.has_config(n)]
        raw = raw_configs()
        self.notes.append(f"this export has no {raw[table_for('short_thought')]} / {raw[table_for('long_thought')]} "
                          f"configs, so no trace is shown"
                          + (f" ({' and '.join(have_sets)} rows are counted above; DPO pairs are shown as exported "
                             f"text)" if have_sets else "") + "; `lpt export` writes them by default")

    def add_plugin_sets(self, o: Opened) -> None:
        """Which simple and long thoughts each plugin config (:func:`plugin_sets`) holds."""
        extra, extra_notes = plugin_sets(o)
        self.notes.extend(extra_notes)
        for x in extra:
            self.X["name"].append(x["name"])
            self.X["desc"].append(x["description"])
            self.X["rows"].append(x["rows"])
            self.X["s"].append(sorted(self.sample_index[t] for t in x["traces"] if t in self.sample_index))
            self.X["e"].append(sorted(self.expansion_index[t] for t in x["traces"] if t in self.expansion_index))

    def thumbnails(self, o: Opened, images: bool, thumb_side: int,
                   sources: dict[str, Any] | None = None) -> tuple[list[str | None], int]:
        """``(a thumbnail URI or None per image, how many images are on this machine)``; a note when some are not
        (``sources``: :meth:`builder.stats.Opened.image_sources`, when already read)."""
        thumbs: list[str | None] = [None] * len(self.image_ids)
        if not images:
            self.notes.append("images left out (--no-images)")
            return thumbs, 0
        have = 0
        sources = o.image_sources() if sources is None else sources
        todo = [i for i, image_id in enumerate(self.image_ids) if image_id in sources]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
            for i, uri in zip(todo, pool.map(lambda i: thumbnail(sources[self.image_ids[i]], thumb_side), todo)):
                thumbs[i] = uri
                have += uri is not None
        if not have and self.image_ids:
            self.notes.append("none of the images is on this machine" + (
                " (the export has no images config)" if o.kind == EXPORT and not o.has_config("images") else ""))
        elif have < len(self.image_ids):
            self.notes.append(f"{len(self.image_ids) - have} of {len(self.image_ids)} images are not on this machine")
        return thumbs, have

    def records(self, thumbs: list[str | None], desc_of: dict[str, str]) -> dict[str, Any]:
        """The records as the page reads them (``D.tables``, ``D.images``, ``D.mcq`` …)."""
        return {
            "tables": {"qt": self.qtypes.values, "cue": self.cues.values, "reason": self.reasons.values,
                       "opts": self.optsets.values, "kind": self.kinds.values, "sep": self.seps.values},
            "images": {"id": self.image_ids, "src": thumbs, "desc": [desc_of.get(i, "") for i in self.image_ids]},
            "mcq": self.M, "simple": self.S, "exp": self.E, "pairs": self.P, "sets": self.X,
        }


def collect(path_or_run: Any, *, images: bool = True, thumb_side: int = THUMB_SIDE) -> dict[str, Any]:
    """The page's data: what was read, the counts, and the records as column arrays (see the module doc)."""
    o = open_input(path_or_run)
    page = _Page()
    page.add_questions(o)
    sft_rows, sft_from = o.sft()  # the sets: which traces are in SFT, the DPO pairs
    in_sft = {r["expansion_id"] or r["sample_id"] for r in sft_rows}
    dpo_rows, dpo_from = o.dpo()
    page.add_simple_thoughts(o, in_sft)
    page.add_long_thoughts(o, in_sft)
    page.add_pairs(o, dpo_rows)
    page.note_no_traces(o)
    page.add_plugin_sets(o)
    thumbs, have = page.thumbnails(o, images, thumb_side)
    desc_of = o.descriptions()
    meta = page_meta(o, page.notes, (len(sft_rows), sft_from), (len(dpo_rows), dpo_from), have)
    return {"meta": meta, "flags": FLAGS, **page.records(thumbs, desc_of)}


def page_meta(o: Opened, notes: list[str], sft: tuple[int, str], dpo: tuple[int, str], have: int) -> dict[str, Any]:
    """What the page's header says: what was read, the counts of each stage, the sets (``(rows, where from)``)."""
    return {
        "kind": o.kind, "label": o.label, "kind_label": KIND_LABELS[o.kind],
        "path": str(o.path), "generated": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "counts": {s: o.tally(s) for s in stage_tables()},
        "sft_from": sft[1], "sft_rows": sft[0], "dpo_from": dpo[1],
        "dpo_rows": dpo[0], "sets_from": ("the export's sft and dpo configs" if o.kind == EXPORT else
                                          "assembled from the run with the default options"),
        "notes": notes, "models": _models(o), "images_on_machine": have,
        "id_chars": ID_CHARS,
    }


FLAGS = {"parsed": PARSED, "correct": CORRECT, "keep": KEEP, "sft": IN_SFT, "simple_correct": SIMPLE_CORRECT}


def _models(o: Opened) -> dict[str, Any]:
    """The models a run's manifest names (an export's are in its card)."""
    if o.kind == EXPORT:
        return {}
    man = o_manifest(o)
    models = {k: v for k, v in man.items() if k.endswith("_model")}
    models.update(man.get("models") or {})  # a generated run: table name -> model, stage 1's included
    return models


TRACE_ID_COLUMNS = ("sample_id", "expansion_id", "chosen_id", "rejected_id")
"""The columns through which a config's rows name their traces (an SFT-like row: its expansion, else its simple
thought; a DPO-like row: both sides)."""


def plugin_sets(o: Opened) -> tuple[list[dict[str, Any]], list[str]]:
    """The configs beyond the project's own (:data:`builder.dataset_configs.BUILTIN`): on a run, every registered plugin
    config (installed entry points, ``--plugin MODULE``) built from it; on an export, every config folder it holds
    that the project does not write itself. Each as ``{name, description, rows, traces}`` (``traces``: the ids its
    rows name, :data:`TRACE_ID_COLUMNS`), and notes on the ones that could not be read."""
    sets: list[dict[str, Any]] = []
    notes: list[str] = []

    def add(name: str, rows: Any, columns: list[str]) -> None:
        ids: set[str] = set()
        n = 0
        for r in rows:
            n += 1
            if "chosen_id" in columns or "rejected_id" in columns:
                ids.update(r.get(c) for c in ("chosen_id", "rejected_id"))
            else:
                ids.add(r.get("expansion_id") or r.get("sample_id"))
        ids.discard(None)
        ids.discard("")
        spec = CONFIGS.get(name)
        sets.append({"name": name, "description": spec.description if spec else "", "rows": n, "traces": ids})
        if n and not ids:
            notes.append(f"config {name}: its {n:,} rows name no trace ({', '.join(TRACE_ID_COLUMNS)}), so it is "
                         f"only counted")

    if o.kind == EXPORT:
        for name in sorted(p.name for p in o.path.iterdir() if p.is_dir() and p.name not in BUILTIN):
            if o.has_config(name):
                columns = [c for c in TRACE_ID_COLUMNS if c in pq.read_schema(config_files(o.path, name)[0]).names]
                add(name, o.config(name, columns).to_pylist(), columns)  # no column: one empty row each
        return sets, notes
    for name, spec in CONFIGS.items():
        if name in BUILTIN or not spec.from_run:
            continue
        try:
            rows = list(spec.build(LPTConfig(name=name, run_dir=str(o.path))))
        except Exception as e:  # noqa: BLE001 - a broken plugin must not stop the viewer; it is named
            notes.append(f"config {name} (a plugin's) could not be built from this run: {type(e).__name__}: {e}")
            continue
        add(name, rows, sorted({c for r in rows[:1] for c in r if c in TRACE_ID_COLUMNS}))
    return sets, notes


def _after_thought(e: dict[str, Any]) -> str:
    """What an expansion wrote after ``</think>`` (shown for the ones whose answer could not be parsed)."""
    cont = e["continuation"] or ""
    end = cont.lower().find("</think>")
    return "" if end < 0 else cont[end:]


def o_manifest(o: Opened) -> dict[str, Any]:
    from builder.store import RunDir

    try:
        return RunDir(o.path).manifest
    except Exception:  # a broken manifest does not stop the viewer
        return {}


def _user_question(d: dict[str, Any]) -> str:
    users = [m["content"] for m in d.get("prompt") or [] if m["role"] == "user"]
    return users[0] if users else ""


def _side_text(d: dict[str, Any], side: str) -> str:
    msgs = d.get(side) or []
    return msgs[-1]["content"] if msgs else ""


def _json_for_script(data: Any) -> str:
    """JSON that is safe inside ``<script type="application/json">`` (no ``<`` at all)."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def render(data: dict[str, Any], *, page_size: int = PAGE_SIZE) -> str:
    """The HTML page for :func:`collect`'s data."""
    title = f"LongPerceptualThoughts · {Path(data['meta']['path']).name}"
    html = _asset("viewer.html")
    return (html.replace("/*__CSS__*/", _asset("viewer.css"))
            .replace("__TITLE__", _escape(title))
            .replace("__PAGE_SIZE__", str(int(page_size)))
            .replace("/*__JS__*/", _asset("viewer.js"))
            .replace("__DATA__", _json_for_script(data)))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def build_html(path_or_run: Any, *, images: bool = True, thumb_side: int = THUMB_SIDE,
               page_size: int = PAGE_SIZE) -> str:
    """The report of a run directory or an exported folder, as one HTML string."""
    return render(collect(path_or_run, images=images, thumb_side=thumb_side), page_size=page_size)


def default_output(path: str | os.PathLike) -> Path:
    """``<folder name>-view.html`` in the current directory."""
    return Path(f"{Path(path).resolve().name}-view.html")


class TooBigForOneFile(ValueError):
    """A run with more traces than one static page holds (:data:`STATIC_MAX_TRACES`)."""


def static_limit() -> int:
    return int(os.environ.get("LPT_VIEW_STATIC_MAX") or STATIC_MAX_TRACES)


def count_traces(o: Opened) -> int:
    """The simple thoughts and expansions of a run or an export, from its files' footers (nothing else read)."""
    return sum(pq.ParquetFile(f).metadata.num_rows for role in ("short_thought", "long_thought")
               for f in o.files(table_for(role)))


def write_html(path_or_run: Any, out_file: str | os.PathLike | None = None, **kwargs: Any) -> Path:
    """Write the report; returns its path (default :func:`default_output`). Refuses (:class:`TooBigForOneFile`)
    a run with more traces than :func:`static_limit`, before reading it."""
    from builder.atomic import write_text

    o = open_input(path_or_run)
    n, limit = count_traces(o), static_limit()
    if n > limit:
        raise TooBigForOneFile(f"{o.path}: {n:,} traces, more than one page file holds ({limit:,}); "
                               f"serve it instead: lpt view {o.path} --serve")
    out = Path(out_file) if out_file else default_output(o.path)
    write_text(out, build_html(o, **kwargs))
    return out


# -------------------------------------------------------------------------------------- lpt show (terminal)


def read_rows(out_dir: str | os.PathLike, config: str, *, rows: int = 3, start: int = 0) -> tuple[list[dict], int]:
    """``(rows start … start+rows of an exported config, its total rows)``, reading only the batches needed."""
    out = Path(out_dir)
    files = sorted((out / config).glob("train-*.parquet"))
    if not files:
        present = sorted(p.name for p in out.iterdir() if p.is_dir() and any(p.glob("train-*.parquet")))
        why = read_report(out)["empty"].get(config)
        raise ValueError(f"{out} has no config {config!r}" + (f" (left out of the export: {why})" if why else "")
                         + f"; it has {', '.join(present) or 'none'}")
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    got: list[dict] = []
    skip = start
    for f in files:
        pf = pq.ParquetFile(f)
        if skip >= pf.metadata.num_rows:
            skip -= pf.metadata.num_rows
            continue
        for batch in pf.iter_batches(batch_size=max(64, rows)):
            if skip >= batch.num_rows:
                skip -= batch.num_rows
                continue
            got += batch.slice(skip, rows - len(got)).to_pylist()
            skip = 0
            if len(got) >= rows:
                return got, total
    return got, total


def fold(text: str, max_chars: int) -> str:
    """``text`` cut to about ``max_chars`` characters (its start and its end), saying how much was left out."""
    if len(text) <= max_chars + max(80, max_chars // 4):  # folding would hide little
        return text
    head = text[: max_chars * 2 // 3].rstrip()
    tail = text[-(max_chars // 3):].lstrip()
    return f"{head} … [{len(text) - len(head) - len(tail):,} characters folded] … {tail}"


def _cell(name: str, value: Any, row: dict[str, Any], max_chars: int):
    """A field of a row as rich text: a chat, an image, bytes, the options (the gold one marked), a list, a
    content id (dimmed), a text (folded), or a scalar."""
    from rich.text import Text

    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
        return _chat_cell(value, max_chars)
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        return _image_cell(value, row)
    if isinstance(value, (bytes, bytearray)):
        return Text(f"<{len(value):,} bytes>", style="dim")
    if isinstance(value, list):
        return _options_cell(value, row.get("answer_index", -1)) if name == "options" else \
            Text(fold(json.dumps(value, ensure_ascii=False), max_chars))
    if isinstance(value, str):
        return Text(value, style="dim") if _is_content_id(value) else Text(fold(value, max_chars))
    return Text(repr(value) if value is not None else "null", style="dim" if value is None else "")


def _is_content_id(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _image_cell(image: dict[str, Any], row: dict[str, Any]):
    """An image field (``{bytes, path}``) as its id and size, not its bytes."""
    from rich.text import Text

    size = f"{len(image['bytes']) / 1024:.0f} KB JPEG" if image.get("bytes") else f"file {image.get('path')}"
    return Text(f"[image {row.get('image_id') or image.get('path') or '?'}] ({size})", style="magenta")


def _chat_cell(messages: list[dict[str, Any]], max_chars: int):
    """``role: content`` per message, each content folded."""
    from rich.text import Text

    t = Text()
    for k, m in enumerate(messages):
        if k:
            t.append("\n")
        t.append(f"{m['role']}: ", style="bold cyan" if m["role"] != "assistant" else "bold green")
        t.append(fold(str(m.get("content") or ""), max_chars))
    return t


def _options_cell(options: list[Any], gold: int):
    """``(A) … (B) …`` with the gold option in bold green."""
    from rich.text import Text

    t = Text()
    for k, o in enumerate(options):
        t.append(f"({chr(65 + k)}) {o}" + ("  " if k < len(options) - 1 else ""), style="bold green" if k == gold else "")
    return t


def show_rows(out_dir: str | os.PathLike, config: str, *, rows: int = 3, start: int = 0,
              max_chars: int = 700) -> list[Any]:
    """Rich tables, one per row of an exported config (``lpt show``)."""
    from rich.table import Table

    got, total = read_rows(out_dir, config, rows=rows, start=start)
    tables = []
    for k, row in enumerate(got):
        t = Table(title=f"{config} · row {start + k + 1:,} of {total:,}", title_justify="left", show_header=False,
                  expand=True)
        t.add_column("field", style="bold", no_wrap=True, ratio=1)
        t.add_column("value", ratio=6, overflow="fold")
        for name, value in row.items():
            t.add_row(name, _cell(name, value, row, max_chars))
        tables.append(t)
    if not got:
        t = Table(title=f"{config}: no row at {start:,} ({total:,} rows)", title_justify="left")
        tables.append(t)
    return tables


__all__ = ["PAGE_SIZE", "STATIC_MAX_TRACES", "THUMB_SIDE", "TooBigForOneFile", "build_html", "collect", "count_traces",
           "default_output", "fold", "read_rows", "render", "show_rows", "static_limit", "thumbnail", "write_html"]
