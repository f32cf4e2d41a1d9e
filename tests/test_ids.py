"""Ids and seeds: ``records.content_id`` builds the JSON bytes of its parts itself (for speed), and they must be
exactly the bytes ``json.dumps`` gives, or every id, seed and shard of every existing run would change."""

from __future__ import annotations

import enum
import hashlib
import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.records import _LONG, _json_text, content_id, rng_for, shard_of, stable_int


def reference_id(*parts: object) -> str:
    """The definition: sha256 of json.dumps (ensure_ascii off, sorted keys, compact separators, default=str)."""
    return hashlib.sha256(reference_bytes(parts)).hexdigest()


def reference_bytes(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")


# every character JSON escapes, the ones around them, and multi-byte ones (2, 3 and 4 UTF-8 bytes)
SPECIAL = [chr(c) for c in range(0x20)] + ['"', "\\", "/", "\x7f", "\x80", "\xa0", "é", "ß", "\u2028", "\u2029",
                                           "—", "\u212a", "\ufeff", "😀", "𝔸", "\U0010ffff"]
TEXT = st.text(alphabet=st.one_of(st.sampled_from(SPECIAL), st.characters(exclude_categories=("Cs",))),
               max_size=60)
# texts longer than records._LONG take the byte-escaping path: a short piece repeated, or padded with letters
LONG_TEXT = st.one_of(st.builds(lambda t, k: (t or "x") * k, TEXT, st.integers(_LONG + 1, _LONG + 40)),
                      st.builds(lambda t, k: "a" * k + t, TEXT, st.integers(_LONG - 30, _LONG + 2)))
SCALAR = st.one_of(TEXT, LONG_TEXT, st.integers(min_value=-(2 ** 70), max_value=2 ** 70), st.booleans(), st.none(),
                   st.floats(allow_nan=True, allow_infinity=True))
VALUE = st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner),
                                                     st.dictionaries(TEXT, inner, max_size=3)), max_leaves=12)


@settings(max_examples=800, deadline=None)
@given(st.lists(VALUE, max_size=5))
def test_the_bytes_are_those_of_json_dumps(parts):
    assert content_id(*parts) == reference_id(*parts)
    for p in parts:
        if isinstance(p, str):
            assert _json_text(p) == reference_bytes(p)


def test_every_ascii_character_and_long_texts():
    for c in map(chr, range(128)):
        for s in (c, f"a{c}b", c * 3, f"é{c}😀", "x" * _LONG + c, c * (_LONG + 1), f"é{c}😀" * _LONG):
            assert _json_text(s) == reference_bytes(s), repr(s)
            assert content_id(s, 1, s[:3]) == reference_id(s, 1, s[:3]), repr(s)
    rng = random.Random(7)
    alphabet = SPECIAL + list("abc def\n\n\"\\") * 20
    for _ in range(300):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 4000)))
        assert content_id("sample", s, 3) == reference_id("sample", s, 3)


def test_the_types_ids_are_rarely_made_of_go_through_the_encoder():
    """Subclasses of int (bool, enums), numpy scalars, floats, dicts and objects: as json.dumps with default=str."""

    class Level(enum.IntEnum):
        HIGH = 3

    for parts in ((True, False, None), (Level.HIGH,), (np.int64(5), np.float32(0.5)), (1.5, float("nan")),
                  ({"b": 1, "a": [1, "x"]},), (3, -0), ([[], ()],)):
        assert content_id(*parts) == reference_id(*parts), parts


def test_a_lone_surrogate_is_refused_as_before():
    for text in ("a\ud800", "a\ud800" * _LONG):
        with pytest.raises(UnicodeEncodeError):
            reference_id(text)
        with pytest.raises(UnicodeEncodeError):
            content_id(text)


def test_seeds_and_shards_follow_the_ids():
    key = ("rng", 42, "expansion", "abc", 1)
    seed = int(reference_id(*key)[:16], 16) & ((1 << 63) - 1)
    assert stable_int(*key) == seed
    assert rng_for(42, "expansion", "abc", 1).random() == random.Random(seed).random()
    assert [shard_of(f"id{i}", 4) for i in range(8)] == [
        (int(reference_id("shard", f"id{i}")[:16], 16) & ((1 << 63) - 1)) % 4 for i in range(8)]
