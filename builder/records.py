"""Ids, seeded randomness, the source's schema, the table declaration and the one way rows are counted.

Each stage declares its own record schema in its file (:mod:`builder.stages`); the source's is here. Ids are content hashes, so the same input gives the
same id on any machine, shard or rerun; every random choice is drawn from :func:`rng_for`, seeded by a
global seed and the item's id.
"""

from __future__ import annotations

import hashlib
import json
from json.encoder import encode_basestring  # the C escaping the encoder uses (ensure_ascii off)
import random
from dataclasses import dataclass

import pyarrow as pa

# ----------------------------------------------------------------------------------------------- ids / seeds


_JSON = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)  # as json.dumps
_LONG = 512  # a string longer than this (a thought, a response) is escaped on its UTF-8 bytes (_json_text)
# The ASCII control characters JSON escapes, but for the newline (which ``_json_text`` escapes itself), as bytes.
_CONTROL = bytes(c for c in range(0x20) if c != 0x0A)


def content_id(*parts: object) -> str:
    """A stable sha256 hex id of the JSON form of ``parts`` (order matters): the UTF-8 of
    ``json.dumps(parts, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)``, built part by
    part (:func:`_json_part`), which is faster than the encoder for the strings and integers ids are made of."""
    return _digest(parts).hexdigest()


def _digest(parts: tuple) -> "hashlib._Hash":
    return hashlib.sha256(b"[" + b",".join(map(_json_part, parts)) + b"]")


def _json_part(part: object) -> bytes:
    """One part's JSON, as UTF-8: a string by the encoder's own escaping function (or :func:`_json_text` when
    long), an int by its repr, anything else (bool, None, floats, lists, dicts, objects) by the encoder."""
    kind = type(part)
    if kind is str:
        return _json_text(part) if len(part) > _LONG else encode_basestring(part).encode("utf-8")
    if kind is int:
        return int.__repr__(part).encode()
    return _JSON.encode(part).encode("utf-8")


def _json_text(text: str) -> bytes:
    """A string's JSON (as :data:`_JSON` writes it), escaped on its UTF-8 bytes: without ``ensure_ascii``, JSON
    escapes only ASCII characters (``"``, ``\\`` and the controls), whose bytes never occur inside a multi-byte
    character. ``"``, ``\\`` and the newline are replaced here; a text with another control character (rare) is
    left to the encoder."""
    b = text.encode("utf-8")
    if b"\\" in b:
        b = b.replace(b"\\", b"\\\\")
    if b'"' in b:
        b = b.replace(b'"', b'\\"')
    if b"\n" in b:
        b = b.replace(b"\n", b"\\n")
    if not text.isprintable() and len(b.translate(None, _CONTROL)) != len(b):  # printable: no control at all
        return _JSON.encode(text).encode("utf-8")
    return b'"' + b + b'"'


def stable_int(*parts: object, bits: int = 63) -> int:
    """A stable non-negative integer from ``parts`` (for seeds and shard assignment)."""
    return int.from_bytes(_digest(parts).digest()[:8], "big") & ((1 << bits) - 1)  # the id's first 16 hex digits


def rng_for(seed: int, *parts: object) -> random.Random:
    """The random generator for one item: seeded by the global seed and the item's key parts."""
    return random.Random(stable_int("rng", seed, *parts))


def shard_of(item_id: str, num_shards: int) -> int:
    """Which of ``num_shards`` shards an item belongs to (stable hash of its id; with one shard, no hash)."""
    return 0 if num_shards == 1 else stable_int("shard", item_id) % num_shards


# --------------------------------------------------------------------------------------------------- schemas

_STR = pa.string()

# The caption source (one row per image).
SOURCE = pa.schema(
    [
        ("image_id", _STR),  # DOCCI example_id, or the generic source's id (or a content hash of the image)
        ("source", _STR),  # "docci" / "folder" / ...
        ("split", _STR),
        ("image_path", _STR),  # absolute path of the image file
        ("description", _STR),
    ]
)


@dataclass(frozen=True)
class TableSpec:
    """One table of a run directory: its schema, the columns that order its rows, and (for a stage's output)
    the column naming the input each row was made from, and the columns whose values repeat over many rows (an
    MCQ's prompt over its samples), which a big read takes as dictionaries."""

    name: str
    schema: pa.Schema
    sort_keys: tuple[str, ...]
    input_column: str | None = None
    repeated: tuple[str, ...] = ()

    @property
    def id_column(self) -> str:
        """The column naming a row (its last sort key): what a stage reading this table names its inputs by."""
        return self.sort_keys[-1]


SOURCE_TABLE = TableSpec("source", SOURCE, ("image_id",))  # written by the source loader, not by a stage

TABLES: dict[str, TableSpec] = {SOURCE_TABLE.name: SOURCE_TABLE}
"""The run directory's tables in pipeline order: the source, then each registered stage's output. The stages
declare their tables in their own files; the registry (:func:`builder.stages.register`) adds them here."""

# Names of stage schemas that modules not yet asking by role import from here; remove once none does.
_LEGACY_SCHEMAS = {"MCQ": "mcq", "SIMPLE_COT": "simple_cot", "EXPANSION": "expansion"}


def __getattr__(name: str):
    if name in _LEGACY_SCHEMAS and _LEGACY_SCHEMAS[name] in TABLES:
        return TABLES[_LEGACY_SCHEMAS[name]].schema
    if name in _LEGACY_SCHEMAS:
        raise AttributeError(f"{name}: no stage has registered it yet (import builder.stages first)")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------------------------------------------ counting

LABELS = ("valid", "parsed", "correct", "keep")
"""The boolean label columns a stage writes; :func:`tally` counts each."""


def is_placeholder(row: dict) -> bool:
    """Whether an MCQ row is an image's no-question placeholder (``item_index`` -1), not a question."""
    return row["item_index"] < 0


def tally(table: pa.Table) -> dict[str, int]:
    """The one way records are counted (stage summaries, ``lpt status``, the demo, the card).

    ``rows``; for each label column present, how many are true (``valid``, ``parsed``, ``correct``, ``kept``);
    ``kept_correct`` when both exist. MCQ tables also give ``placeholders`` (images whose reply held no
    question) and ``questions`` (the rest); their ``valid`` never counts a placeholder.
    """
    import pyarrow.compute as pc

    out = {"rows": table.num_rows}
    if "item_index" in table.column_names:
        placeholders = pc.sum(pc.less(table.column("item_index"), 0)).as_py() or 0
        out.update(questions=table.num_rows - placeholders, placeholders=placeholders)
    for col in LABELS:
        if col in table.column_names:
            out["kept" if col == "keep" else col] = pc.sum(table.column(col)).as_py() or 0
    if "keep" in table.column_names and "correct" in table.column_names:
        both = pc.and_(table.column("keep"), table.column("correct"))
        out["kept_correct"] = pc.sum(both).as_py() or 0
    return out
