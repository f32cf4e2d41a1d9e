"""first_bad_word (one precompiled alternation) gives exactly the answers of the former one-search-per-word code."""

from __future__ import annotations

import random
import re

import pytest

from builder.method import BAD_WORDS as UPSTREAM_BAD_WORDS
from builder.stages.expansion import first_bad_word


def first_bad_word_v1(text, bad_words, *, substring=False):
    """The former implementation, kept as the oracle: one case-insensitive search per word, min((pos, word))."""
    hits = []
    for w in bad_words:
        if substring:
            pos = text.casefold().find(w.casefold())
            if pos >= 0:
                hits.append((pos, w))
        else:
            m = re.search(r"(?<![\w'])" + re.escape(w) + r"(?![\w'])", text, re.I)
            if m:
                hits.append((m.start(), w))
    return min(hits)[1] if hits else ""


# Words that overlap, share prefixes, differ only in case, hold apostrophes, spaces, regex metacharacters and
# characters whose case folding changes length ("ß" -> "ss") or is special (Kelvin sign, dotted I, long s).
EXTRA = ["sta", "ate", "State", "STATE", "said it", "a.b", "(x)", "a+", "user", "user's'", "ss", "ß", "Straße",
         "\u212a", "k", "\u0130", "i", "\u017f", "es", "'s", "visual", "image"]
CHARS = list("abcdeiklmnorstuvxyz") + list("AEIKSTX") + [" ", " ", "'", ".", ",", "(", ")", "+", "\n", "-", "_",
                                                         "ß", "\u212a", "\u0130", "\u017f", "é", "1"]


def _text(rng: random.Random, vocab: list[str], chars: list[str]) -> str:
    parts = []
    for _ in range(rng.randint(0, 14)):
        r = rng.random()
        if r < 0.45:
            w = rng.choice(vocab)
            parts.append(w.upper() if rng.random() < 0.2 else w.title() if rng.random() < 0.2 else w)
        else:
            parts.append("".join(rng.choice(chars) for _ in range(rng.randint(1, 6))))
        parts.append(rng.choice(["", " ", " ", "'", "_", ".", "\n"]))
    return "".join(parts)


@pytest.mark.parametrize("substring", [False, True])
@pytest.mark.parametrize("alphabet", ["ascii", "unicode", "unicode-no-folds"])
def test_same_answers_as_one_search_per_word(substring, alphabet):
    """ASCII texts and texts without İ ı ſ K take the str.find path, the others the alternation."""
    rng = random.Random(20250101 + substring + 7 * len(alphabet))
    chars = {"ascii": [c for c in CHARS if c.isascii()], "unicode": CHARS,
             "unicode-no-folds": [c for c in CHARS if c not in "\u0130\u0131\u017f\u212a"]}[alphabet]
    vocab = list(UPSTREAM_BAD_WORDS) + [w for w in EXTRA if alphabet == "unicode" or w.isascii()]
    found = 0
    for _ in range(2500):
        words = rng.sample(vocab, rng.randint(1, 12))
        if rng.random() < 0.1:
            words.append(rng.choice(words))  # a repeated word
        text = _text(rng, vocab, chars)
        want = first_bad_word_v1(text, words, substring=substring)
        assert first_bad_word(text, words, substring=substring) == want, (text, words)
        assert first_bad_word(text, tuple(words), substring=substring) == want  # list or tuple: one cache entry
        found += bool(want)
    assert 300 < found < 2200  # the fuzz exercises both outcomes


def test_ties_at_one_position_go_to_the_smallest_word():
    assert first_bad_word("stated clearly", ["state", "stated"]) == "stated"  # only "stated" stands as a word
    assert first_bad_word("the statement", ["statement", "state"], substring=True) == "state"
    assert first_bad_word("said it twice", ["said it", "said"]) == "said"
    assert first_bad_word("Text here", ["text", "Text"]) == "Text"
    assert first_bad_word("the image described", list(UPSTREAM_BAD_WORDS)) == "the image described"  # earliest
    assert first_bad_word("an image described", list(UPSTREAM_BAD_WORDS)) == "described"
    assert first_bad_word("no bad word here", []) == "" and first_bad_word("", UPSTREAM_BAD_WORDS) == ""
    # letters that match other letters case-insensitively (Kelvin sign, long s, dotted capital I), first or not
    for text in ("\u212aing said", "\u017ftate it", "\u0130nternal", "the \u212aelvin", "a ma\u017f\u017f", "STRASSE"):
        for words in (["king", "state", "internal", "kelvin", "said"], ["k", "s", "i"], ["mass", "straße"]):
            for substring in (False, True):
                assert first_bad_word(text, words, substring=substring) == \
                    first_bad_word_v1(text, words, substring=substring), (text, words, substring)


def test_the_reference_expansions_keep_their_labels():
    """Every upstream continuation: the same bad word, word and substring mode, on the real generations."""
    import json

    from helpers import UPSTREAM

    texts = []
    with open(UPSTREAM / "stage3_r1-distill-qwen-32b_wait_expansions.jsonl", encoding="utf-8") as f:
        for line in f:
            texts += json.loads(line)["predict"]
    assert len(texts) == 1200
    for substring in (False, True):
        got = [first_bad_word(t, UPSTREAM_BAD_WORDS, substring=substring) for t in texts]
        assert got == [first_bad_word_v1(t, UPSTREAM_BAD_WORDS, substring=substring) for t in texts]
        assert sum(map(bool, got)) > 100


def test_the_characters_that_fold_into_ascii():
    """The str.find path rests on two facts of re and str, checked over every code point: beyond ASCII only
    İ ı ſ and the Kelvin sign match an ASCII character case-insensitively, and only İ lower-cases to two."""
    from builder.stages.expansion import _FOLDS_TO_ASCII

    ascii_class = re.compile(r"[\x00-\x7f]", re.I)
    beyond = [chr(x) for x in range(128, 0x110000) if ascii_class.match(chr(x))]
    assert "".join(beyond) == _FOLDS_TO_ASCII
    assert [chr(x) for x in range(0x110000) if len(chr(x).lower()) != 1] == ["\u0130"]
    assert all(chr(x).lower().isascii() is False or chr(x) in _FOLDS_TO_ASCII for x in range(128, 0x110000))


@pytest.mark.parametrize("alphabet", ["ascii", "unicode", "unicode-no-folds"])
def test_the_batch_search_gives_the_same_answers(alphabet):
    """first_bad_words (an RE2 screen over the batch, then the word-by-word search) against the oracle, on
    batches large enough to be screened, with words that begin or end with a non-word character."""
    from builder.stages.expansion import BATCH_MIN, first_bad_words

    rng = random.Random(20261128 + len(alphabet))
    chars = {"ascii": [c for c in CHARS if c.isascii()], "unicode": CHARS + ["\u0131", "٣", "é"],
             "unicode-no-folds": [c for c in CHARS if c not in "\u0130\u0131\u017f\u212a"]}[alphabet]
    vocab = list(UPSTREAM_BAD_WORDS) + [w for w in EXTRA if alphabet == "unicode" or w.isascii()] + ["_x", "9", "x_"]
    found = 0
    for _ in range(120):
        words = rng.sample(vocab, rng.randint(1, 12))
        texts = [_text(rng, vocab, chars) for _ in range(rng.randint(BATCH_MIN, 3 * BATCH_MIN))]
        want = [first_bad_word_v1(t, words) for t in texts]
        assert first_bad_words(texts, words) == want, words
        assert first_bad_words(texts, words, substring=True) == [first_bad_word_v1(t, words, substring=True)
                                                                 for t in texts]
        found += sum(map(bool, want))
    assert 0.1 < found / (120 * 2 * BATCH_MIN) < 0.9


def test_the_batch_screen_rules_texts_out():
    """The screen is what makes the batch fast: texts that hold a bad word only inside other words, or not at
    all, are ruled out by it (so never searched word by word); texts that may hold one are kept."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from builder.stages.expansion import _screen

    texts = ["a fine texture", "the statement holds", "an essay", "fundamental", "Text here", "as STATED.",
             "the user's view", "x the image described", "user'sx", "nothing"]
    kept = pc.match_substring_regex(pa.array(texts), _screen(tuple(UPSTREAM_BAD_WORDS)), ignore_case=True)
    assert [t for t, k in zip(texts, kept.to_pylist()) if k] == ["Text here", "as STATED.", "the user's view",
                                                                "x the image described"]


def test_the_screen_of_a_whole_continuation_covers_its_thought():
    """Stage 3 screens cue + continuation, answer and all, and searches the thought (up to </think>) only where
    the screen keeps the text: every thought with a bad word must be kept, whatever follows it."""
    from builder.stages.expansion import BATCH_MIN, may_hold_bad_words

    rng = random.Random(11)
    chars = [c for c in CHARS if c not in "\u0130\u0131\u017f\u212a"]
    vocab = list(UPSTREAM_BAD_WORDS) + [w for w in EXTRA if w.isascii()]
    kept = 0
    for _ in range(60):
        words = rng.sample(vocab, rng.randint(1, 12))
        fulls = [_text(rng, vocab, chars) + rng.choice(["</think>", "</THINK>", "</think>\n<answer>(B) ", ""])
                 + _text(rng, vocab, chars) for _ in range(2 * BATCH_MIN)]
        thoughts = [re.split("</think>", full, maxsplit=1, flags=re.I)[0] for full in fulls]  # as label_expansion
        for thought, may in zip(thoughts, may_hold_bad_words(fulls, words)):
            if first_bad_word_v1(thought, words):
                assert may, (thought, words)
                kept += 1
    assert kept > 300
