"""A static, self-contained HTML report of a run directory or an exported dataset folder (``lpt view``).

One file, no server and nothing fetched: the page's CSS and JavaScript (``builder/data/viewer/``) are inlined, the
records are embedded once as JSON (column arrays, repeated strings interned), and each image is a small base64
JPEG thumbnail (from the run's source image paths, or the export's ``images`` config; a placeholder says when
an image is not on this machine). The page renders one page of items at a time (50 by default), so it stays
fast with 100K traces.

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

from builder.dataset_configs import BUILTIN, CONFIGS, LPTConfig
from builder.records import tally
from builder.stats import EXPORT, KIND_LABELS, Opened, added_texts, config_files, open_input, tally_columns

THUMB_SIDE = 384
PAGE_SIZE = 50
ID_CHARS = 12  # ids are shown (and searched) by their first characters

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
    """How stage 3 joins a simple thought to what it added (builder.stages.expansion.label_expansion)."""
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


def collect(path_or_run: Any, *, images: bool = True, thumb_side: int = THUMB_SIDE) -> dict[str, Any]:
    """The page's data: what was read, the counts, and the records as column arrays (see the module doc)."""
    o = open_input(path_or_run)
    notes: list[str] = []
    qtypes, cues, reasons, optsets, kinds, seps = (_Interned() for _ in range(6))

    # images
    image_ids: list[str] = []
    image_index: dict[str, int] = {}

    def image(image_id: str) -> int:
        if image_id not in image_index:
            image_index[image_id] = len(image_ids)
            image_ids.append(image_id)
        return image_index[image_id]

    # stage 1: questions (rows of later stages whose MCQ is not in stage 1 add one from their own fields)
    M: dict[str, list] = {k: [] for k in ("id", "img", "q", "o", "g", "qt", "ok", "why", "item", "at")}
    mcq_index: dict[str, int] = {}

    def add_mcq(mcq_id: str, image_id: str, question: str, options: list[str], gold: int, qt: str, valid: bool,
                why: str, item: int, answer_text: str = "") -> int:
        mcq_index[mcq_id] = len(M["id"])
        for k, v in (("id", mcq_id[:ID_CHARS]), ("img", image(image_id)), ("q", question), ("o", optsets(options)),
                     ("g", gold), ("qt", qtypes(qt or "")), ("ok", int(valid)), ("why", why), ("item", item),
                     ("at", "" if valid else answer_text or "")):
            M[k].append(v)
        return mcq_index[mcq_id]

    for m in o.read("mcq", ["mcq_id", "image_id", "item_index", "question", "options", "answer_index",
                              "answer_text", "question_type", "valid", "invalid_reason"]).to_pylist():
        add_mcq(m["mcq_id"], m["image_id"], m["question"], m["options"] or [], m["answer_index"], m["question_type"],
                m["valid"], m["invalid_reason"], m["item_index"], m["answer_text"])

    # the sets: which traces are in SFT, the DPO pairs
    sft_rows, sft_from = o.sft()
    in_sft = {r["expansion_id"] or r["sample_id"] for r in sft_rows}
    dpo_rows, dpo_from = o.dpo()

    # stage 2
    s_table = o.read("simple_cot", ["sample_id", "mcq_id", "image_id", "sample_index", "question",
                                           "question_type", "options", "answer_index", "response", "thought", "answer",
                                           "pred_index", "parsed", "correct", "keep", "drop_reason"])
    samples = sorted(s_table.to_pylist(), key=lambda r: (mcq_index.get(r["mcq_id"], len(mcq_index)), r["mcq_id"],
                                                         r["sample_index"], r["sample_id"]))
    S: dict[str, list] = {k: [] for k in ("id", "m", "o", "g", "t", "a", "p", "f", "r", "n", "raw")}
    sample_index: dict[str, int] = {}
    for s in samples:
        if s["mcq_id"] not in mcq_index:
            add_mcq(s["mcq_id"], s["image_id"], s["question"], s["options"] or [], s["answer_index"],
                    s["question_type"], True, "", -2)
        flags = (PARSED * s["parsed"]) | (CORRECT * s["correct"]) | (KEEP * s["keep"]) | (
            IN_SFT * (s["sample_id"] in in_sft))
        sample_index[s["sample_id"]] = len(S["id"])
        for k, v in (("id", s["sample_id"][:ID_CHARS]), ("m", mcq_index[s["mcq_id"]]), ("o", optsets(s["options"] or [])),
                     ("g", s["answer_index"]), ("t", s["thought"] or ""), ("a", s["answer"] or ""),
                     ("p", s["pred_index"]), ("f", flags), ("r", reasons(s["drop_reason"] or "")),
                     ("n", s["sample_index"]), ("raw", None if s["parsed"] else s["response"] or "")):
            S[k].append(v)

    # stage 3
    e_table = o.read("expansion", ["expansion_id", "sample_id", "expansion_index", "cue", "separator",
                                          "continuation", "long_thought", "answer", "pred_index", "parsed", "correct",
                                          "simple_correct", "bad_word", "keep", "drop_reason"])
    E: dict[str, list] = {k: [] for k in ("id", "s", "c", "sep", "pre", "x", "a", "p", "f", "r", "b", "n", "after")}
    orphans = 0
    expansions = e_table.append_column("added", added_texts(e_table)).to_pylist()
    expansions.sort(key=lambda r: (sample_index.get(r["sample_id"], -1), r["expansion_index"], r["expansion_id"]))
    expansion_index: dict[str, int] = {}
    for e in expansions:
        si = sample_index.get(e["sample_id"])
        if si is None:
            orphans += 1
            continue
        pre, added = _split_long_thought(e, S["t"][si])
        flags = (PARSED * e["parsed"]) | (CORRECT * e["correct"]) | (KEEP * e["keep"]) | (
            IN_SFT * (e["expansion_id"] in in_sft)) | (SIMPLE_CORRECT * e["simple_correct"])
        expansion_index[e["expansion_id"]] = len(E["id"])
        for k, v in (("id", e["expansion_id"][:ID_CHARS]), ("s", si), ("c", cues(e["cue"] or "")),
                     ("sep", seps(e["separator"] or "")), ("pre", pre), ("x", added), ("a", e["answer"] or ""),
                     ("p", e["pred_index"]), ("f", flags), ("r", reasons(e["drop_reason"] or "")),
                     ("b", e["bad_word"] or ""), ("n", e["expansion_index"]),
                     ("after", None if e["parsed"] else _after_thought(e))):
            E[k].append(v)
    if orphans:
        notes.append(f"{orphans} expansions whose simple thought is not in the records are not shown")

    # DPO pairs: a side is a reference to its trace (2*i simple, 2*j+1 expansion), or its own text
    P: dict[str, list] = {k: [] for k in ("k", "m", "c", "r", "ct", "rt")}

    def ref(trace_id: str) -> int:
        if trace_id in sample_index:
            return 2 * sample_index[trace_id]
        if trace_id in expansion_index:
            return 2 * expansion_index[trace_id] + 1
        return -1

    refs = [(ref(d["chosen_id"]), ref(d["rejected_id"])) for d in dpo_rows]
    texts: dict[int, dict[str, Any]] = {}  # rows whose texts are needed: a side or a question not in the records
    need = [n for n, (d, (c, r)) in enumerate(zip(dpo_rows, refs)) if c < 0 or r < 0 or d["mcq_id"] not in mcq_index]
    if need:
        table = o.config("dpo", ["prompt", "chosen", "rejected"])
        if table is not None:
            texts = dict(zip(need, table.take(need).to_pylist()))
    unmatched = 0
    for n, (d, (c, r)) in enumerate(zip(dpo_rows, refs)):
        t = texts.get(n, {})
        if d["mcq_id"] not in mcq_index:
            add_mcq(d["mcq_id"], d.get("image_id") or "", _user_question(t), [], -1, d.get("question_type") or "",
                    True, "", -2)
        unmatched += (c < 0) + (r < 0)
        P["k"].append(kinds(d["kind"]))
        P["m"].append(mcq_index[d["mcq_id"]])
        P["c"].append(c)
        P["r"].append(r)
        P["ct"].append(_side_text(t, "chosen") if c < 0 else None)
        P["rt"].append(_side_text(t, "rejected") if r < 0 else None)
    if unmatched and S["id"]:
        notes.append(f"{unmatched:,} DPO pair sides are not among the stage records here; they are shown as the "
                     f"exported text")
    if o.kind == EXPORT and not S["id"]:
        have_sets = [n for n in ("sft", "dpo") if o.has_config(n)]
        notes.append("this export has no raw_simple_cot / raw_expansion configs, so no trace is shown"
                     + (f" ({' and '.join(have_sets)} rows are counted above; DPO pairs are shown as exported text)"
                        if have_sets else "") + "; `lpt export` writes them by default")

    # configs of plugins: which traces each one holds
    extra, extra_notes = plugin_sets(o)
    notes.extend(extra_notes)
    X: dict[str, list] = {k: [] for k in ("name", "desc", "rows", "s", "e")}
    for x in extra:
        X["name"].append(x["name"])
        X["desc"].append(x["description"])
        X["rows"].append(x["rows"])
        X["s"].append(sorted(sample_index[t] for t in x["traces"] if t in sample_index))
        X["e"].append(sorted(expansion_index[t] for t in x["traces"] if t in expansion_index))

    # images and descriptions
    thumbs: list[str | None] = [None] * len(image_ids)
    have = 0
    if images:
        sources = o.image_sources()
        todo = [i for i, image_id in enumerate(image_ids) if image_id in sources]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
            for i, uri in zip(todo, pool.map(lambda i: thumbnail(sources[image_ids[i]], thumb_side), todo)):
                thumbs[i] = uri
                have += uri is not None
        if not have and image_ids:
            notes.append("none of the images is on this machine" + (
                " (the export has no images config)" if o.kind == EXPORT and not o.has_config("images") else ""))
        elif have < len(image_ids):
            notes.append(f"{len(image_ids) - have} of {len(image_ids)} images are not on this machine")
    else:
        notes.append("images left out (--no-images)")
    desc_of = o.descriptions()

    counts = {s: tally(o.read(s, tally_columns(s))) for s in ("mcq", "simple_cot", "expansion")}
    models = {}
    if o.kind != EXPORT:
        man = o_manifest(o)
        models = {k: v for k, v in man.items() if k.endswith("_model")}
        models.update(man.get("models") or {})  # a generated run: table name -> model, stage 1's included
    return {
        "meta": {
            "kind": o.kind, "label": o.label, "kind_label": KIND_LABELS[o.kind],
            "path": str(o.path), "generated": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "counts": counts, "sft_from": sft_from, "sft_rows": len(sft_rows), "dpo_from": dpo_from,
            "dpo_rows": len(dpo_rows), "sets_from": ("the export's sft and dpo configs" if o.kind == EXPORT else
                                                     "assembled from the run with the default options"),
            "notes": notes, "models": models, "images_on_machine": have,
            "id_chars": ID_CHARS,
        },
        "flags": {"parsed": PARSED, "correct": CORRECT, "keep": KEEP, "sft": IN_SFT, "simple_correct": SIMPLE_CORRECT},
        "tables": {"qt": qtypes.values, "cue": cues.values, "reason": reasons.values, "opts": optsets.values,
                   "kind": kinds.values, "sep": seps.values},
        "images": {"id": image_ids, "src": thumbs, "desc": [desc_of.get(i, "") for i in image_ids]},
        "mcq": M, "simple": S, "exp": E, "pairs": P, "sets": X,
    }


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


def write_html(path_or_run: Any, out_file: str | os.PathLike | None = None, **kwargs: Any) -> Path:
    """Write the report; returns its path (default :func:`default_output`)."""
    from builder.atomic import write_text

    o = open_input(path_or_run)
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
        why = _read_report(out).get("empty", {}).get(config)
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


def _read_report(out: Path) -> dict[str, Any]:
    p = out / "export_report.json"
    try:
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}
    except ValueError:
        return {}


def fold(text: str, max_chars: int) -> str:
    """``text`` cut to about ``max_chars`` characters (its start and its end), saying how much was left out."""
    if len(text) <= max_chars + max(80, max_chars // 4):  # folding would hide little
        return text
    head = text[: max_chars * 2 // 3].rstrip()
    tail = text[-(max_chars // 3):].lstrip()
    return f"{head} … [{len(text) - len(head) - len(tail):,} characters folded] … {tail}"


def _cell(name: str, value: Any, row: dict[str, Any], max_chars: int):
    from rich.text import Text

    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
        t = Text()
        for k, m in enumerate(value):
            if k:
                t.append("\n")
            t.append(f"{m['role']}: ", style="bold cyan" if m["role"] != "assistant" else "bold green")
            t.append(fold(str(m.get("content") or ""), max_chars))
        return t
    if isinstance(value, dict) and ("bytes" in value or "path" in value):  # an image
        size = f"{len(value['bytes']) / 1024:.0f} KB JPEG" if value.get("bytes") else f"file {value.get('path')}"
        return Text(f"[image {row.get('image_id') or value.get('path') or '?'}] ({size})", style="magenta")
    if isinstance(value, (bytes, bytearray)):
        return Text(f"<{len(value):,} bytes>", style="dim")
    if isinstance(value, list):
        if name == "options":
            gold = row.get("answer_index", -1)
            t = Text()
            for k, o in enumerate(value):
                t.append(f"({chr(65 + k)}) {o}" + ("  " if k < len(value) - 1 else ""),
                         style="bold green" if k == gold else "")
            return t
        return Text(fold(json.dumps(value, ensure_ascii=False), max_chars))
    if isinstance(value, str):
        if len(value) == 64 and all(c in "0123456789abcdef" for c in value):  # a content id
            return Text(value, style="dim")
        return Text(fold(value, max_chars))
    return Text(repr(value) if value is not None else "null", style="dim" if value is None else "")


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


__all__ = ["PAGE_SIZE", "THUMB_SIDE", "build_html", "collect", "default_output", "fold", "read_rows", "render",
           "show_rows", "thumbnail", "write_html"]
