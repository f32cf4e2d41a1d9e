"""Stage 3: thought expansion by a text-only reasoning model, continuing the simple thought after a cue.

Per kept simple CoT, ``n`` expansions (with ``cue_mode="each"``: ``n`` per cue). Each expansion ``k`` has its
own seeded generator ``records.rng_for(seed, "expansion", sample_id, k)`` that picks the cue (mode
``sample``) and the separator (newline or space, 50/50). The request is one user turn (picture the image from
its description; the question; the same shuffled options the VLM saw) and a pre-filled assistant turn
(opening that restates question and options, the simple thought as written, a full stop if missing, the
separator, the cue) that the model continues; bad words are blocked at generation time.

Labelling (:func:`label_expansion`): long thought = simple thought + separator + cue + continuation up to
``</think>``; the answer after it is graded with :mod:`builder.answers`. Dropped (kept as rows with a reason):
no ``</think>`` (``no_end_of_thought``), no answer (``unparseable``), a bad word *as a word* in the added text
(``bad_word``; upstream's substring rule behind ``substring_bad_word_filter``), exact duplicates.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from builder.answers import extract_answer, match_option
from builder.engines.base import Request
from builder.method import BAD_WORDS, CUES
from builder.records import TableSpec, content_id, rng_for

from .contract import Answers, Item, ModelConfig, StageSpec, check, request_seed, sample_counts

STAGE = "expansion"  # its table, and the name its seeds are drawn under
SEPARATORS = ("\n", " ")


@dataclass
class ExpansionSettings(ModelConfig):
    """Stage 3 (``stage3``): thought expansion by the reasoning model, continuing a pre-filled assistant turn
    after a cue."""

    model: str = "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"
    n: int = 3
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 50
    repetition_penalty: float = 1.05
    max_new_tokens: int = 256
    cues: tuple[str, ...] = CUES
    # "sample": each of the n expansions of a simple thought draws its cue (seeded per expansion);
    # "each": every cue gets n expansions (the authors ran one job per cue).
    cue_mode: str = "sample"
    bad_words: tuple[str, ...] = BAD_WORDS
    generation_bad_words: bool = True  # also block the bad words at generation time
    substring_bad_word_filter: bool = False  # True: upstream's substring rule ("text" in "texture"; defect 2)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(len(self.cues) > 0, "cues", list(self.cues), "a non-empty list")
        check(self.cue_mode in ("sample", "each"), "cue_mode", self.cue_mode, "'sample' or 'each'")


_STR, _BOOL, _INT = pa.string(), pa.bool_(), pa.int32()

# Thought expansions from the reasoning LLM.
SCHEMA = pa.schema(
    [
        ("expansion_id", _STR),  # content_id(sample_id, cue, expansion_index, continuation)
        ("sample_id", _STR),
        ("mcq_id", _STR),
        ("image_id", _STR),
        ("expansion_index", _INT),
        ("cue", _STR),
        ("separator", _STR),  # "\n" or " "
        ("user_text", _STR),
        ("prefill", _STR),  # the pre-filled assistant turn the model continued
        ("continuation", _STR),  # what the model wrote after the prefill
        ("long_thought", _STR),  # simple thought + cue + continuation up to </think>
        ("answer", _STR),
        ("pred_index", _INT),
        ("parsed", _BOOL),
        ("correct", _BOOL),
        ("simple_correct", _BOOL),  # whether the simple thought it grew from was correct
        ("bad_word", _STR),  # the first bad word found in the added text, "" if none
        ("keep", _BOOL),
        ("drop_reason", _STR),  # "", "unparseable", "bad_word", "duplicate", "no_end_of_thought"
        ("model", _STR),
        ("seed", pa.int64()),
    ]
)
TABLE = TableSpec(STAGE, SCHEMA, ("sample_id", "expansion_index", "expansion_id"), input_column="sample_id",
                  repeated=("mcq_id", "image_id", "cue", "separator", "user_text", "answer", "bad_word", "drop_reason",
                            "model"))
# the columns of a simple CoT that stage 3 reads (with its keys: not its response or prompts)
INPUT_COLUMNS = ("image_id", "question", "options", "answer_index", "question_type", "option_style",
                 "answer_format", "thought", "correct")
_END = re.compile(r"</think>", re.I)


def first_bad_word(text: str, bad_words: Sequence[str], *, substring: bool = False) -> str:
    """The bad word that occurs first in ``text`` (case-insensitive), or "".

    By default a bad word must stand as a word ("text" is not found in "texture", "state" not in
    "statement"; docs/method.md, defect 2); ``substring=True`` restores upstream's substring rule. Of two words
    found at the same position the smaller string wins. See :func:`_bad_words` for how it is searched.
    """
    if not bad_words:
        return ""
    words, folded, stems, pattern = _bad_words(tuple(bad_words))
    if substring:
        return _first_substring(text, words, folded)
    best: tuple[int, str] | None = None
    if stems is None or _folds_to_ascii(text):
        m = pattern.search(text)
        return words[m.lastindex - 1] if m else ""
    hay = text.lower()  # same positions: no character of the text lower-cases to two
    for stem, group in stems:
        pos = hay.find(stem)
        while pos >= 0:  # the smallest word of the group there that stands alone, if any
            hit = next((w for w, lw in group if hay.startswith(lw, pos) and _alone(text, pos, pos + len(lw))), "")
            if hit:
                if best is None or (pos, hit) < best:  # the earliest; at one position, the smallest word
                    best = (pos, hit)
                break
            pos = hay.find(stem, pos + 1)
    return best[1] if best else ""


def _first_substring(text: str, words: Sequence[str], folded: Sequence[str]) -> str:
    """Upstream's rule: the word whose casefolded form occurs first in the casefolded text (the smaller word at one
    position: ``words`` are sorted)."""
    hay = text.casefold()
    best: tuple[int, str] | None = None
    for w, f in zip(words, folded):
        pos = hay.find(f)
        if pos >= 0 and (best is None or pos < best[0]):
            best = (pos, w)
    return best[1] if best else ""


def _alone(text: str, start: int, end: int) -> bool:
    r"""``(?<![\w'])`` at ``start`` and ``(?![\w'])`` at ``end``: no word character or ' on either side."""
    return (start == 0 or not (text[start - 1].isalnum() or text[start - 1] in "_'")) and \
        (end == len(text) or not (text[end].isalnum() or text[end] in "_'"))


# The only characters beyond ASCII that re.IGNORECASE matches with an ASCII one (İ ı ſ and the Kelvin sign):
# a text without them matches ASCII words case-insensitively exactly where its lower-case copy has them.
_FOLDS_TO_ASCII = "\u0130\u0131\u017f\u212a"


def _folds_to_ascii(text: str) -> bool:
    """Whether ``text`` holds one of :data:`_FOLDS_TO_ASCII`."""
    return not text.isascii() and any(c in text for c in _FOLDS_TO_ASCII)


@functools.lru_cache(maxsize=64)
def _bad_words(bad_words: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...],
                                                     tuple[tuple[str, tuple[tuple[str, str], ...]], ...] | None,
                                                     re.Pattern]:
    r"""``(words, casefolded, stems, pattern)`` for a bad-word tuple, words sorted (smallest first).

    The word rule is ``(?<![\w'])word(?![\w'])``, case-insensitively. With ASCII words (``stems`` is None
    otherwise) and a text without :data:`_FOLDS_TO_ASCII`, a word occurs where its lower-cased form is in the
    lower-cased text. ``stems`` groups the words under their stem, the shortest lower-cased word that theirs
    starts with ("state" for "state", "states" and "stated"): one ``str.find`` per stem (15 for the 23 words of
    the method), and where the stem is, each word of its group (in sorted order) is tried there.
    Any other text is searched with ``pattern``, one precompiled case-insensitive
    alternation of every word, each in its own group: the leftmost match is the earliest position any word
    occurs at, and there the alternatives are tried in order, so the first that matches is the smallest word
    (a case-insensitive class of the words' first letters skips the positions no word can start at).
    Both give the smallest ``(position, word)`` of the words that occur, the rule of one search per word.
    """
    words = tuple(sorted(bad_words))
    body = "|".join(f"({re.escape(w)})" for w in words)
    first = "" if "" in words else "(?=[" + "".join(sorted({re.escape(w[0]) for w in words})) + "])"
    pattern = re.compile(r"(?<![\w'])" + first + "(?:" + body + r")(?![\w'])", re.I)
    stems = None
    if all(w.isascii() for w in words):
        shortest_first = sorted({w.lower() for w in words}, key=len)
        groups: dict[str, list[tuple[str, str]]] = {}
        for w in words:
            lw = w.lower()
            groups.setdefault(next(s for s in shortest_first if lw.startswith(s)), []).append((w, lw))
        stems = tuple((stem, tuple(group)) for stem, group in groups.items())
    return words, tuple(w.casefold() for w in words), stems, pattern


# Below this many texts, the batch search is not worth its set-up (RE2 compiles its pattern on every call).
BATCH_MIN = 16


def first_bad_words(texts: Sequence[str], bad_words: Sequence[str], *, substring: bool = False) -> list[str]:
    """:func:`first_bad_word` of each text, the same answers, faster on a batch: only the texts
    :func:`may_hold_bad_words` keeps are searched word by word."""
    return [first_bad_word(t, bad_words, substring=substring) if may else ""
            for t, may in zip(texts, may_hold_bad_words(texts, bad_words, substring=substring))]


def may_hold_bad_words(texts: Sequence[str], bad_words: Sequence[str], *, substring: bool = False) -> list[bool]:
    """For each text, False when :func:`first_bad_word` surely finds no bad word in it, nor in any part of it that
    ends before a character other than a word character or ``'`` (a thought that ends at ``</think>``).

    With the word rule and ASCII words, one pass of RE2 (``pyarrow.compute.match_substring_regex``, in C++) over
    the whole batch looks for every word, case-insensitively, with ``\\b`` on each side that is a word character
    (see :func:`_screen`). An ASCII ``\\b`` holds wherever ``(?<![\\w'])`` does (a word that starts with a letter
    matches only letters there), so it keeps every text a word stands in. A text with one of
    :data:`_FOLDS_TO_ASCII` (the letters beyond ASCII that ``re`` matches with ASCII ones) is always kept, and
    so is every text of a small batch (under :data:`BATCH_MIN`) or under the substring rule.
    """
    if not bad_words:
        return [False] * len(texts)
    if substring or len(texts) < BATCH_MIN or _bad_words(tuple(bad_words))[2] is None:
        return [True] * len(texts)
    try:
        hits = pc.match_substring_regex(pa.array(texts, pa.string()), _screen(tuple(bad_words)), ignore_case=True)
    except (pa.ArrowException, UnicodeError):  # e.g. a lone surrogate: no screen, every text searched
        return [True] * len(texts)
    return [hit or _folds_to_ascii(t) for t, hit in zip(texts, hits.to_pylist())]


@functools.lru_cache(maxsize=64)
def _screen(bad_words: tuple[str, ...]) -> str:
    """The RE2 pattern of :func:`may_hold_bad_words`: the ASCII words as an alternation, each character written as
    ``\\x{..}`` unless a letter or digit, and ``\\b`` on each side whose end character is a word character."""
    def word(w: str) -> str:
        body = "".join(c if c.isalnum() else f"\\x{{{ord(c):x}}}" for c in w)
        left, right = ("\\b" if w and (w[i].isalnum() or w[i] == "_") else "" for i in (0, -1))
        return left + body + right

    return "(?:" + "|".join(word(w) for w in sorted(set(bad_words))) + ")"


def with_full_stop(thought: str) -> str:
    thought = thought.rstrip()
    return thought if thought.endswith(".") else thought + "."


def label_expansion(simple: dict[str, Any], *, cue: str, separator: str, continuation: str,
                    bad_words: Sequence[str], substring: bool = False, bad_word: str | None = None) -> dict[str, Any]:
    """Long thought, answer, label, bad word and drop reason of one continuation of ``simple`` (a SIMPLE_COT
    row: ``thought``, ``options``, ``answer_index``). ``drop_reason`` is "" for a keeper (duplicates are
    decided by the caller). ``bad_word``: the added text's, when the caller knows it (a batch screened by
    :func:`may_hold_bad_words` rules most texts out); None: searched here."""
    added = cue + continuation
    end = _END.search(added)
    thought = added[: end.start()] if end else added
    out = {"long_thought": (with_full_stop(simple["thought"]) + separator + thought).strip(),
           "answer": "", "pred_index": -1, "parsed": False, "correct": False,
           "bad_word": first_bad_word(thought, bad_words, substring=substring) if bad_word is None else bad_word}
    if end is None:
        return {**out, "drop_reason": "no_end_of_thought"}
    answer = extract_answer(added[end.end():])
    if answer is None:
        return {**out, "drop_reason": "unparseable"}
    pred = match_option(answer, simple["options"])
    out.update(answer=answer, pred_index=pred, parsed=True, correct=pred >= 0 and pred == simple["answer_index"])
    return {**out, "drop_reason": "bad_word" if out["bad_word"] else ""}


class Continuation(NamedTuple):
    """One continuation of a simple CoT: what was asked (cue, separator, prompt) and what the model wrote."""

    index: int  # expansion_index
    cue: str
    separator: str
    user_text: str
    prefill: str  # the pre-filled assistant turn the model continued
    text: str  # the continuation
    seed: int


def expansion_rows(simple: dict[str, Any], continuations: Sequence[Continuation], *, bad_words: Sequence[str],
                   model: str, substring: bool = False, found: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """EXPANSION rows for the continuations of one simple CoT (a SIMPLE_COT row): labelled by
    :func:`label_expansion`; a later keeper with the same long thought is dropped as a ``duplicate``.
    ``found``: for each continuation, the bad word of its added text when the caller knows it (a batch was searched
    or screened: :func:`may_hold_bad_words`), None where it is to be searched here."""
    rows, seen = [], set()
    for i, c in enumerate(continuations):
        lab = label_expansion(simple, cue=c.cue, separator=c.separator, continuation=c.text, bad_words=bad_words,
                              substring=substring, bad_word=None if found is None else found[i])
        drop = lab.pop("drop_reason")
        if not drop and lab["long_thought"] in seen:
            drop = "duplicate"
        if not drop:
            seen.add(lab["long_thought"])
        rows.append({
            "expansion_id": content_id(simple["sample_id"], c.cue, c.index, c.text),
            "sample_id": simple["sample_id"], "mcq_id": simple["mcq_id"], "image_id": simple["image_id"],
            "expansion_index": c.index, "cue": c.cue, "separator": c.separator, "user_text": c.user_text,
            "prefill": c.prefill, "continuation": c.text, **lab, "simple_correct": simple["correct"],
            "keep": not drop, "drop_reason": drop, "model": model, "seed": c.seed,
        })
    return rows


def plan(sample_id: str, settings: Any) -> list[tuple[int, str, str]]:
    """``(expansion_index, cue, separator)`` for each expansion of one simple CoT (seeded per expansion)."""
    cfg = settings.stage3
    if not cfg.cues:
        raise ValueError("stage3.cues is empty")
    if cfg.cue_mode == "sample":
        cues = [None] * cfg.n
    elif cfg.cue_mode == "each":
        cues = [c for c in cfg.cues for _ in range(cfg.n)]
    else:
        raise ValueError(f"stage3.cue_mode must be 'sample' or 'each', got {cfg.cue_mode!r}")
    out = []
    for k, cue in enumerate(cues):
        rng = rng_for(settings.seed, STAGE, sample_id, k)
        chosen = rng.choice(cfg.cues) if cue is None else cue
        out.append((k, chosen, rng.choice(SEPARATORS)))
    return out


def build_requests(simple: dict[str, Any], description: str, planned: Sequence[tuple[int, str, str]],
                   settings: Any, prompts: Any) -> list[Request]:
    """The requests of a simple CoT's planned expansions (``(k, cue, separator)`` from :func:`plan`): each a user
    turn + a pre-filled assistant turn to continue (the user turn and the opening rendered once for all)."""
    cfg = settings.stage3
    chats = prompts.reasoning_chats(
        description, simple["question"], simple["options"], simple["thought"], [(cue, sep) for _, cue, sep in planned],
        question_type=simple["question_type"], answer_format=simple["answer_format"],
        option_style=simple["option_style"])
    bad_words = tuple(cfg.bad_words) if cfg.generation_bad_words else ()
    return [Request(messages, params=cfg.params(seed=request_seed(settings.seed, STAGE, simple["sample_id"], k), n=1,
                                                bad_words=bad_words), continue_final_message=True)
            for (k, _, _), messages in zip(planned, chats)]


def requests(items: list[Item], settings: Any, prompts: Any) -> list[Request]:
    """The requests of a chunk of simple CoTs: each one's planned expansions (:func:`plan`), in order."""
    out = []
    for sample_id, s in items:
        out += build_requests(s, s["description"], plan(sample_id, settings), settings, prompts)
    return out


def rows(items: list[Item], answers: dict[str, Answers], settings: Any) -> list[dict[str, Any]]:
    """The EXPANSION rows of a chunk of simple CoTs: each request's continuation, labelled; the whole chunk's
    added texts screened for bad words at once (:func:`may_hold_bad_words`)."""
    cfg = settings.stage3
    answered = answers[STAGE]
    pending = iter(zip(answered.requests, answered.first_texts()))
    groups = []
    for sample_id, s in items:
        continuations = []
        for (k, cue, sep), (req, text) in zip(plan(sample_id, settings), pending):
            continuations.append(Continuation(k, cue, sep, req.messages[0]["content"], req.messages[1]["content"],
                                              text, req.params.seed))
        groups.append((s, continuations))
    # a continuation ruled out has no bad word in its thought ("" found), the others are searched while labelled
    may = iter(may_hold_bad_words([c.cue + c.text for _, cs in groups for c in cs], cfg.bad_words,
                                  substring=cfg.substring_bad_word_filter))
    out = []
    for s, continuations in groups:
        out += expansion_rows(s, continuations, bad_words=cfg.bad_words, model=answered.model,
                              substring=cfg.substring_bad_word_filter,
                              found=[None if next(may) else "" for _ in continuations])
    return out


def summary(rows: list[dict[str, Any]], settings: Any) -> tuple[dict[str, int], dict[str, int]]:
    """Wrong-to-right (kept correct expansions of a wrong simple thought), samples out, parsed, correct, kept;
    the dropped expansions by reason."""
    return sample_counts(rows, SCHEMA, {"wrong_to_right": sum(bool(r["correct"] and r["keep"] and
                                                                   not r["simple_correct"]) for r in rows)})


SPEC = StageSpec(3, TABLE, reads="short_thought", settings=ExpansionSettings, requests=requests, rows=rows,
                 summary=summary, summary_columns=("parsed", "correct", "keep", "drop_reason", "simple_correct"),
                 description="thought expansions of the kept simple CoTs", when_empty="stage 2 kept no simple CoT",
                 role="long_thought", select="keep", input_columns=INPUT_COLUMNS, source_columns=("description",),
                 presets={"authors": {"n": 5, "cues": ["Wait,"]}})  # the authors' code: T 0.7 / top_p 0.8 / top_k 50

__all__ = ["SCHEMA", "SEPARATORS", "SPEC", "TABLE", "Continuation", "ExpansionSettings", "build_requests",
           "expansion_rows", "first_bad_word", "first_bad_words", "label_expansion", "may_hold_bad_words", "plan",
           "requests", "rows", "summary", "with_full_stop"]
