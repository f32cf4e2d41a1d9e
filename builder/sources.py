"""Caption sources: images with dense human-written descriptions, as rows of the ``records.SOURCE`` schema.

Two kinds of source plug in the same way (:func:`load_source`):

* **DOCCI** (``google/docci``, CC BY 4.0): a folder holding ``docci_descriptions.jsonlines`` (one JSON object a
  line: ``example_id``, ``split``, ``image_file``, ``description``) and ``images/``. The paper used 500 train
  images chosen by :func:`docci_subset`. :func:`download_docci` fetches the two public files.
* **Generic**: a JSONL / CSV / parquet file with the columns ``image`` (a path relative to the file, or
  absolute; ``file_name`` is accepted too, as in Hugging Face ``imagefolder``), ``description`` and optional
  ``id`` and ``split``; or a folder holding such a file (``metadata.*`` or ``descriptions.*`` first, else the
  only one); or a folder of
  images each with a same-named ``.txt`` description (``cat.jpg`` + ``cat.txt``).

Bad input (an unreadable line, a missing or empty field, a missing or corrupt image, a repeated id) is a
:class:`SourceError` naming the file, the line (or row) and the field. With ``skip_bad=True`` the record is
skipped instead and noted in a :class:`Skips` log, which gives a summary; nothing else is lost.

Spec strings: ``PATH`` (kind detected), or ``KIND:PATH`` with KIND one of ``docci``, ``jsonl``, ``csv``,
``parquet``, ``folder``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import random
import shutil
import tarfile
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.records import SOURCE, content_id

log = logging.getLogger(__name__)

DOCCI_URL = "https://storage.googleapis.com/docci/data/"
DOCCI_FILES = ("docci_descriptions.jsonlines", "docci_images.tar.gz")
DOCCI_DESCRIPTIONS = "docci_descriptions.jsonlines"
DOCCI_FIELDS = ("example_id", "split", "image_file", "description")
PAPER_SUBSET_SIZE = 500
PAPER_SUBSET_SEED = 42

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
TABLE_SUFFIXES = {".jsonl": "jsonl", ".jsonlines": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
KINDS = ("docci", "jsonl", "csv", "parquet", "folder")
DEFAULT_SPLIT = "train"
PREFERRED_STEMS = ("metadata", "descriptions")  # in a folder with several tables, these names win


class SourceError(ValueError):
    """A bad source record; the message names the file, the line (or row) and the field."""


@dataclass(frozen=True)
class BadRecord:
    """One skipped record: where it is and what is wrong with it."""

    file: str
    line: int | None  # 1-based line of a text file, or 1-based row of a parquet file; None: the whole file
    field: str | None  # the offending field ("" / None when the record as a whole is unreadable)
    reason: str
    unit: str = "line"  # "line" or "row"

    def __str__(self) -> str:
        where = self.file + (f", {self.unit} {self.line}" if self.line is not None else "")
        return f"{where}" + (f", field {self.field!r}" if self.field else "") + f": {self.reason}"


@dataclass
class Skips:
    """The records skipped by ``load_source(..., skip_bad=True)``; pass one in to see them afterwards."""

    records: list[BadRecord] = field(default_factory=list)

    def add(self, bad: BadRecord) -> None:
        self.records.append(bad)
        log.warning("skipped %s", bad)

    def __len__(self) -> int:
        return len(self.records)

    def by_reason(self) -> Counter:
        """How many records were skipped per kind of problem (the field plus the reason's first words)."""
        return Counter(f"{r.field or 'record'}: {_reason_kind(r.reason)}" for r in self.records)

    def summary(self, limit: int = 10) -> str:
        """A short text: the total, counts per kind, and the first ``limit`` records in full."""
        if not self.records:
            return "no records skipped"
        lines = [f"{len(self.records)} record(s) skipped:"]
        lines += [f"  {n} x {kind}" for kind, n in self.by_reason().most_common()]
        lines += [f"  - {r}" for r in self.records[:limit]]
        if len(self.records) > limit:
            lines.append(f"  ... and {len(self.records) - limit} more")
        return "\n".join(lines)


def _reason_kind(reason: str) -> str:
    for kind in ("does not exist", "cannot be read as an image", "missing", "empty", "not valid JSON",
                 "repeated id", "must be"):
        if kind in reason:
            return kind
    return reason.split(":")[0][:40]


class _Bad(Exception):
    """Internal: raised while checking one record, turned into a SourceError or a skip."""

    def __init__(self, field: str | None, reason: str) -> None:
        super().__init__(reason)
        self.field, self.reason = field, reason


# ------------------------------------------------------------------------------------------------- DOCCI


def docci_subset(ids: Iterable[str], n: int = PAPER_SUBSET_SIZE, seed: int = PAPER_SUBSET_SEED) -> list[str]:
    """The paper's image selection: sort the ids, shuffle them as ``random.seed(seed); random.shuffle(ids)``
    does, take the first ``n`` (in shuffled order). A local ``random.Random(seed)`` gives the same order
    without touching the global generator."""
    ordered = sorted(ids)
    random.Random(seed).shuffle(ordered)
    return ordered[:n]


def _download(base_url: str, name: str, target: Path, names: tuple[str, ...], created: Path | None) -> None:
    """One file of :func:`download_docci`, atomically; on a network error, one line saying what to fetch."""
    tmp = target.with_name(target.name + ".part")
    log.info("downloading %s%s -> %s", base_url, name, target)
    try:
        with urllib.request.urlopen(base_url + name) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
    except OSError as e:  # URLError, HTTPError, a reset connection: all OSError
        tmp.unlink(missing_ok=True)
        folder = target.parent
        while created is not None and folder.is_relative_to(created) and not any(folder.iterdir()):
            folder.rmdir()  # only the empty folders this call made
            folder = folder.parent
        reason = getattr(e, "reason", None) or e.strerror or type(e).__name__
        tarball = " (and extract the images tarball there)" if len(names) > 1 else ""
        raise SourceError(f"cannot download {base_url}{name} ({reason}); download by hand "
                          f"{' and '.join(base_url + n for n in names)} into {target.parent}/{tarball}, then use "
                          f"--source {target.parent}") from None
    os.replace(tmp, target)


def download_docci(dest: str | os.PathLike, *, images: bool = True, base_url: str = DOCCI_URL) -> Path:
    """Download DOCCI's descriptions (and, unless ``images=False``, the ~15 GB image tarball, extracted to
    ``dest/images/``) from Google's public bucket. Files already present are kept. Returns ``dest``.

    Needs the internet. A failed download raises :class:`SourceError` naming the URL and the files to fetch by
    hand, and leaves no empty folder or partial file behind.
    """
    dest = Path(dest).absolute()
    created = next((p for p in reversed([dest, *dest.parents]) if not p.exists()), None)  # the first made
    dest.mkdir(parents=True, exist_ok=True)
    names = DOCCI_FILES if images else DOCCI_FILES[:1]
    for name in names:
        target = dest / name
        if name.endswith(".tar.gz") and (dest / "images").is_dir():
            continue
        if not target.exists():
            _download(base_url, name, target, names, created)
        if name.endswith(".tar.gz"):
            with tarfile.open(target) as tar:
                tar.extractall(dest, filter="data")
            if not (dest / "images").is_dir():
                raise SourceError(f"{target}: extracted, but no images/ folder appeared in {dest}")
            target.unlink()
    return dest


def _docci_rows(folder: Path, *, split: str | None, subset: int | None, seed: int,
                on_bad) -> Iterator[tuple[str, int, dict[str, Any]]]:
    path = folder / DOCCI_DESCRIPTIONS
    rows = []
    for line_no, obj in _jsonl_objects(path, on_bad):
        try:
            for f in DOCCI_FIELDS:
                _require_str(obj, f)
        except _Bad as b:
            on_bad(str(path), line_no, b)
            continue
        rows.append((line_no, obj))
    if subset is not None:
        wanted = split or DEFAULT_SPLIT
        by_id = {obj["example_id"]: (line_no, obj) for line_no, obj in rows if obj["split"] == wanted}
        rows = [by_id[i] for i in docci_subset(by_id, n=subset, seed=seed)]
    elif split is not None:
        rows = [(k, o) for k, o in rows if o["split"] == split]
    for line_no, obj in rows:
        yield str(path), line_no, {"id": obj["example_id"], "split": obj["split"],
                                   "image": str(folder / "images" / obj["image_file"]),
                                   "description": obj["description"], "_image_field": "image_file"}


# ----------------------------------------------------------------------------------------------- generic


def _not_utf8(text: str) -> str | None:
    """Where ``text`` (read with ``errors="surrogateescape"``) holds bytes that are not UTF-8, in words; else None."""
    for i, ch in enumerate(text):
        if "\udc80" <= ch <= "\udcff":
            return f"not valid UTF-8 (byte 0x{ord(ch) - 0xDC00:02x} at character {i + 1})"
    return None


def _open_text(path: Path, **kw: Any):
    """A text file as UTF-8 (a leading byte-order mark dropped); undecodable bytes kept as surrogates so that the
    record holding them, not the whole file, is reported (:func:`_not_utf8`)."""
    return open(path, encoding="utf-8-sig", errors="surrogateescape", **kw)


def _jsonl_objects(path: Path, on_bad) -> Iterator[tuple[int, dict[str, Any]]]:
    with _open_text(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            bad = _not_utf8(line)
            if bad:
                on_bad(str(path), line_no, _Bad(None, bad))
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                on_bad(str(path), line_no, _Bad(None, f"not valid JSON ({e})"))
                continue
            if not isinstance(obj, dict):
                on_bad(str(path), line_no, _Bad(None, f"not valid JSON object (got {type(obj).__name__})"))
                continue
            yield line_no, obj


def _table_records(path: Path, kind: str, on_bad) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line or row number, record) pairs of a JSONL, CSV or parquet file."""
    if kind == "jsonl":
        yield from _jsonl_objects(path, on_bad)
    elif kind == "csv":
        with _open_text(path, newline="") as f:
            lines = _Counted(f)
            reader = csv.DictReader(lines, strict=True)  # a quote left open or stray is an error, not a merged record
            yield from _csv_records(path, reader, lines, on_bad)
    elif kind == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise SourceError(f"{path}: unreadable parquet file ({type(e).__name__}: {e})") from None
        for row_no, rec in enumerate(table.to_pylist(), start=1):
            yield row_no, rec
    else:
        raise ValueError(f"unknown table kind {kind!r}")


class _Counted:
    """The lines of a file, counted as they are read (csv's own count is not kept on an error)."""

    def __init__(self, f: Any) -> None:
        self.f, self.n = f, 0

    def __iter__(self) -> "_Counted":
        return self

    def __next__(self) -> str:
        line = next(self.f)
        self.n += 1
        return line


def _csv_records(path: Path, reader: csv.DictReader, lines: _Counted,
                 on_bad) -> Iterator[tuple[int, dict[str, Any]]]:
    """(first line, record) of each CSV row; a repeated header or broken quoting stops, naming file and line."""
    start = 1
    try:
        header = reader.fieldnames or []
        twice = sorted({c for c in header if header.count(c) > 1})
        if twice:
            raise SourceError(f"{path}: line 1: column {twice[0]!r} appears more than once in the header")
        start = 2
        for rec in reader:
            bad = next(((k, why) for k, v in rec.items() if isinstance(v, str) and (why := _not_utf8(v))), None)
            if None in rec:  # more cells than header columns
                on_bad(str(path), start, _Bad(None, f"{len(rec[None])} more cell(s) than the header has"))
            elif bad:
                on_bad(str(path), start, _Bad(bad[0], bad[1]))
            elif swallowed := _swallowed_record(rec, header):
                raise SourceError(f"{path}: line {start}: field {swallowed[0]!r} runs over a line that reads like a "
                                  f"record of its own ({swallowed[1][:60]!r}): a quote left open?")
            else:
                yield start, rec
            start = lines.n + 1
    except csv.Error as e:
        raise SourceError(f"{path}: line {start}: broken CSV quoting in the record that starts there (read up to "
                          f"line {lines.n}: {e}); a quoted cell must close its quote, and a quote inside it is "
                          f"written twice") from None


def _swallowed_record(rec: dict[str, Any], header: list[str]) -> tuple[str, str] | None:
    """``(field, line)`` where a quoted cell holds a line that reads as a whole CSV record of this header (as many
    cells, an image file name in the image column): what an unclosed quote leaves behind."""
    column = next((c for c in ("image", "file_name") if c in header), None)
    if column is None:
        return None
    at = header.index(column)
    for field, value in rec.items():
        if isinstance(value, str) and "\n" in value:
            for line in value.splitlines()[1:]:
                cells = next(csv.reader([line]), [])
                if len(cells) == len(header) and cells[at].strip().lower().endswith(IMAGE_SUFFIXES):
                    return field, line
    return None


def _generic_rows(path: Path, kind: str, on_bad) -> Iterator[tuple[str, int, dict[str, Any]]]:
    for line_no, rec in _table_records(path, kind, on_bad):
        image_field = "image" if "image" in rec or "file_name" not in rec else "file_name"
        try:
            image = rec.get(image_field)
            if isinstance(image, dict):  # a datasets Image struct {"bytes", "path"} in parquet
                image = image.get("path")
            if image is None or (isinstance(image, str) and not image.strip()):
                raise _Bad(image_field, "missing" if image is None else "empty")
            if not isinstance(image, str):
                raise _Bad(image_field, f"must be a path (a string), got {type(image).__name__}")
            _require_str(rec, "description")
            rid = rec.get("id")
            if rid is not None and not isinstance(rid, (str, int)):
                raise _Bad("id", f"must be a string or an integer, got {type(rid).__name__}")
            split = rec.get("split")
        except _Bad as b:
            on_bad(str(path), line_no, b)
            continue
        image_path = Path(image).expanduser()
        if not image_path.is_absolute():
            image_path = path.parent / image_path
        yield str(path), line_no, {"id": None if rid in (None, "") else str(rid),
                                   "split": str(split) if split not in (None, "") else DEFAULT_SPLIT,
                                   "image": str(image_path), "description": rec["description"],
                                   "_image_field": image_field}


def _txt_folder_rows(folder: Path, on_bad) -> Iterator[tuple[str, int, dict[str, Any]]]:
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise SourceError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) and no metadata file "
                          f"(.jsonl/.csv/.parquet) found")
    for img in images:
        txt = img.with_suffix(".txt")
        if not txt.exists():
            on_bad(str(img), None, _Bad("description", f"no description file {txt.name} beside the image"))
            continue
        with _open_text(txt) as f:
            text = f.read().strip()
        if _not_utf8(text):
            on_bad(str(txt), None, _Bad("description", _not_utf8(text)))
            continue
        if not text:
            on_bad(str(txt), None, _Bad("description", "empty"))
            continue
        yield str(txt), None, {"id": img.relative_to(folder).with_suffix("").as_posix(), "split": DEFAULT_SPLIT,
                               "image": str(img), "description": text, "_image_field": "image"}


# ----------------------------------------------------------------------------------------------- shared


def _require_str(obj: dict[str, Any], name: str) -> str:
    if name not in obj or obj[name] is None:
        raise _Bad(name, "missing")
    value = obj[name]
    if not isinstance(value, str):
        raise _Bad(name, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise _Bad(name, "empty")
    return value


def check_image(path: str | os.PathLike) -> bytes:
    """The bytes of an image file after PIL has verified it; a :class:`_Bad` on the ``image`` field if not."""
    from PIL import Image

    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise _Bad("image", f"image file {p} does not exist") from None
    except OSError as e:
        raise _Bad("image", f"image file {p} cannot be read: {e}") from None
    try:
        import io

        with Image.open(io.BytesIO(data)) as im:
            im.verify()  # structure
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # every pixel: a truncated file fails here, not in stage 2
    except Exception as e:  # noqa: BLE001 - PIL raises many types for a corrupt file
        raise _Bad("image", f"image file {p} cannot be read as an image ({type(e).__name__}: {e})") from None
    return data


def image_content_id(data: bytes) -> str:
    """The id of an image without one: a content hash of its bytes (16 hex digits)."""
    return content_id("image", hashlib.sha256(data).hexdigest())[:16]


def detect_kind(path: Path) -> tuple[str, Path]:
    """(kind, path) for a spec path without an explicit kind."""
    if path.is_dir():
        if (path / DOCCI_DESCRIPTIONS).is_file():
            return "docci", path
        tables = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES)
        for stem in PREFERRED_STEMS:
            meta = [p for p in tables if p.stem == stem]
            if len(meta) == 1:
                return TABLE_SUFFIXES[meta[0].suffix.lower()], meta[0]
        if len(tables) == 1:
            return TABLE_SUFFIXES[tables[0].suffix.lower()], tables[0]
        if len(tables) > 1:
            raise SourceError(f"{path}: several metadata files ({', '.join(p.name for p in tables)}); "
                              f"name the one to use")
        return "folder", path
    if path.is_file():
        suffix = path.suffix.lower()
        if path.name == DOCCI_DESCRIPTIONS:
            return "docci", path.parent
        if suffix in TABLE_SUFFIXES:
            return TABLE_SUFFIXES[suffix], path
        raise SourceError(f"{path}: unknown source file type {suffix!r}; use .jsonl, .csv or .parquet "
                          f"(or a folder)")
    raise SourceError(f"source {path} does not exist")


def parse_spec(spec: str | os.PathLike) -> tuple[str, Path]:
    """``"docci:/data/docci"`` -> ``("docci", Path)``; a bare path gets its kind detected."""
    text = os.fspath(spec)
    kind, sep, rest = text.partition(":")
    if sep and kind in KINDS:
        path = Path(rest).expanduser().resolve()
        if not path.exists():
            raise SourceError(f"source {path} does not exist")
        if kind == "docci" and path.is_file():
            path = path.parent
        if kind in ("jsonl", "csv", "parquet") and path.is_dir():
            kind, path = detect_kind(path)
        return kind, path
    return detect_kind(Path(text).expanduser().resolve())


def _check_options(kind: str, path: Path, subset: int | None, limit: int | None) -> None:
    """``subset`` is for DOCCI only (a folder without DOCCI's descriptions is said to be one), ``limit`` >= 0."""
    if subset is not None and kind != "docci":
        if kind == "folder":  # an empty or half-downloaded DOCCI folder lands here
            raise SourceError(f"{path}: no {DOCCI_DESCRIPTIONS} here, so not a DOCCI folder (empty or incomplete "
                              f"download? `lpt download-docci {path}`); subset= is for DOCCI, limit= for a folder")
        raise SourceError(f"{path}: subset= is the paper's DOCCI selection; use limit= for a {kind} source")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")


def _raw_rows(kind: str, path: Path, *, split: str | None, subset: int | None, seed: int, verify_images: bool,
              on_bad) -> Iterator[tuple[str, int | None, dict[str, Any]]]:
    """``(file, line, record)`` of a source of ``kind``, before images and ids are checked."""
    if kind == "docci":
        if not (path / DOCCI_DESCRIPTIONS).is_file():
            raise SourceError(f"{path}: no {DOCCI_DESCRIPTIONS} here (download_docci() fetches it)")
        if verify_images and not (path / "images").is_dir():
            raise SourceError(f"{path}: {DOCCI_DESCRIPTIONS} but no images/ folder, an incomplete DOCCI download "
                              f"(`lpt download-docci {path}` fetches and extracts docci_images.tar.gz)")
        return _docci_rows(path, split=split, subset=subset, seed=seed, on_bad=on_bad)
    if kind == "folder":
        return _txt_folder_rows(path, on_bad)
    return (r for r in _generic_rows(path, kind, on_bad) if split is None or r[2]["split"] == split)


def load_source(
    spec: str | os.PathLike,
    *,
    split: str | None = None,
    limit: int | None = None,
    subset: int | None = None,
    seed: int = PAPER_SUBSET_SEED,
    skip_bad: bool = False,
    skips: Skips | None = None,
    verify_images: bool = True,
) -> Iterator[dict[str, Any]]:
    """Rows of the ``records.SOURCE`` schema (``image_id, source, split, image_path, description``).

    ``split``: keep only that split (DOCCI: ``train``, ``test``, ``qual_dev``, ``qual_test``; generic sources
    read a ``split`` column, default ``train``). ``subset``: DOCCI only, the paper's selection of ``subset``
    images of the split (default ``train``; :func:`docci_subset` with ``seed``), yielded in selection order.
    ``limit``: stop after that many rows. ``skip_bad``: skip bad records (noted in ``skips``) instead of
    raising :class:`SourceError`. ``verify_images``: open every image with PIL (``Image.verify``).
    """
    kind, path = parse_spec(spec)
    _check_options(kind, path, subset, limit)
    skips = skips if skips is not None else Skips()

    def on_bad(file: str, line: int | None, bad: _Bad) -> None:
        rec = BadRecord(file, line, bad.field, bad.reason, unit="row" if file.endswith(".parquet") else "line")
        if not skip_bad:
            raise SourceError(str(rec))
        skips.add(rec)

    raw = _raw_rows(kind, path, split=split, subset=subset, seed=seed, verify_images=verify_images, on_bad=on_bad)
    seen: dict[str, str] = {}
    emitted = 0
    for file, line_no, rec in raw:
        if limit is not None and emitted >= limit:
            return
        try:
            if verify_images:
                data = check_image(rec["image"])
            elif rec["id"] is None:
                data = Path(rec["image"]).read_bytes()
            else:
                data = b""
            image_id = rec["id"] if rec["id"] is not None else image_content_id(data)
            where = f"{file}" + (f", line {line_no}" if line_no is not None else "")
            if image_id in seen:
                raise _Bad("id", f"repeated id {image_id!r} (first at {seen[image_id]})")
            seen[image_id] = where
        except _Bad as b:
            if b.field == "image":
                b.field = rec["_image_field"]
            on_bad(file, line_no, b)
            continue
        except FileNotFoundError:
            on_bad(file, line_no, _Bad(rec["_image_field"], f"image file {rec['image']} does not exist"))
            continue
        emitted += 1
        yield {"image_id": image_id, "source": kind, "split": rec["split"], "image_path": rec["image"],
               "description": rec["description"].strip()}


def source_table(spec: str | os.PathLike, **kwargs: Any):
    """:func:`load_source` collected into a ``pyarrow.Table`` of the SOURCE schema."""
    import pyarrow as pa

    return pa.Table.from_pylist(list(load_source(spec, **kwargs)), schema=SOURCE)


__all__ = [
    "DOCCI_URL",
    "BadRecord",
    "Skips",
    "SourceError",
    "check_image",
    "detect_kind",
    "docci_subset",
    "download_docci",
    "image_content_id",
    "load_source",
    "parse_spec",
    "source_table",
]
