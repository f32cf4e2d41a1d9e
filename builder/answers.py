"""Options, answer formats, answer extraction and matching: the one place that decides right or wrong.

Used for labelling generated data and for scoring benchmarks alike (docs/method.md, "The answer rule", has the rule with examples).

1. **Where the answer is.** Unicode is normalised first (NFKC, curly quotes made straight, zero-width characters
   dropped). Only the text after the first ``</think>`` counts when there is one (also when the reply never
   opened ``<think>``: R1-style templates open the thought in the prompt); a reply that opens ``<think>`` and
   never closes it has no answer. There, the first ``<answer>…</answer>`` (an unclosed one runs to the end,
   less a closing tag cut off part-way); else what follows the last "Answer:" line start, else the last
   "answer is", up to the next blank line (so an option list echoed over several lines stays one answer);
   else the last ``\\boxed{…}``.
2. **What it names.** Dressing is peeled off: markdown emphasis and code marks, ``$``, ``\\boxed{}`` /
   ``\\text{}``, surrounding quotes, a trailing full stop, and a leading "Answer:", "The (correct) answer is",
   "The correct option is", "Option", "Choice". What is left must be exactly one of: the text of one option;
   the letter of one option as ``B``, ``b``, ``(B)``, ``B.``, ``B)``, ``B:``; or that letter followed by that
   same option's text (``(B) Blue``). Anything else (two options, a negation, a hedge, an explanation, the
   option list echoed back) names no option: ``pred_index`` -1, which is wrong, never right. When the text
   reading and the letter reading name different options (options ``["b", "a"]``, answer ``b``), it names none.
3. **Right or wrong.** Correct exactly when the one option named is the gold one.

Bump :data:`MATCHER_VERSION` whenever the rule changes; runs record it.
"""

from __future__ import annotations

import functools
import random
import re
import unicodedata
from dataclasses import dataclass
from typing import Sequence

MATCHER_VERSION = 2  # 1: first letter + anything; 2: exactly one option, unambiguously (NFKC, after </think>)

LETTERS = "ABCDEFGHIJ"
OPTION_STYLES = ("paren", "dot")  # "(A) text" / "A. text"
ANSWER_FORMATS = ("paren", "dot", "text")  # "(A)" / "A." / the option's text


# ------------------------------------------------------------------------------------------------- options


def letter(index: int) -> str:
    return LETTERS[index]


def _marker(style: str, ch: str) -> str:
    c = re.escape(ch)
    if style == "paren":
        return rf"\(\s*[{c}{c.lower()}]\s*\)"
    return rf"(?:(?<=\s)|^){c}\s*[.):](?=\s)"


def parse_options(text: str) -> list[str]:
    """Split ``"(A) x (B) y"``, ``"A. x\\nB. y"``, ``"A) x"``, ``"A: x"``, ``"(a) x (b) y"`` into option texts.

    Letters must run A, B, C, … in order (up to J); the style of the first marker is used for all.
    Raises ``ValueError`` when fewer than two options are found.
    """
    text = text.strip()
    for style in ("paren", "plain"):
        first = re.search(_marker(style, "A"), text)
        if not first:
            continue
        starts, ends = [first.start()], [first.end()]
        for ch in LETTERS[1:]:
            m = re.compile(_marker(style, ch), re.M).search(text, ends[-1])
            if not m:
                break
            starts.append(m.start())
            ends.append(m.end())
        if len(starts) < 2:
            continue
        bounds = starts[1:] + [len(text)]
        opts = [re.sub(r"\s+", " ", text[e:b]).strip().rstrip(",;").strip() for e, b in zip(ends, bounds)]
        if all(opts):
            return opts
    raise ValueError(f"no lettered options (A, B, ...) found in {text[:120]!r}")


def format_options(options: Sequence[str], style: str = "paren") -> str:
    """One option a line, as ``(A) text`` (style ``paren``) or ``A. text`` (style ``dot``)."""
    if style not in OPTION_STYLES:
        raise ValueError(f"option style must be one of {OPTION_STYLES}, got {style!r}")
    fmt = "({}) {}" if style == "paren" else "{}. {}"
    return "\n".join(fmt.format(letter(i), o) for i, o in enumerate(options))


def format_answer(options: Sequence[str], index: int, answer_format: str = "paren") -> str:
    """The answer in a requested format: ``(B)``, ``B.`` or the option's text."""
    if answer_format == "paren":
        return f"({letter(index)})"
    if answer_format == "dot":
        return f"{letter(index)}."
    if answer_format == "text":
        return options[index]
    raise ValueError(f"answer format must be one of {ANSWER_FORMATS}, got {answer_format!r}")


def shuffle_options(options: Sequence[str], answer_index: int, rng: random.Random) -> tuple[list[str], int]:
    """Shuffle options with ``rng``; return the new list and where the answer went."""
    order = list(range(len(options)))
    rng.shuffle(order)
    return [options[i] for i in order], order.index(answer_index)


# ---------------------------------------------------------------------------------------------- extraction

# Every pattern below is linear in the length of its input: no nested quantifiers, no unbounded ``\s*`` that
# can span lines in front of something that may fail (100 KB replies must not backtrack catastrophically).
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
                         "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
                         "\u00ab": '"', "\u00bb": '"'})
_INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad]")
_SPECIAL_TOKEN = re.compile(r"<\|[^|<>\n]{1,64}\|>")  # <|im_end|>, <|end▁of▁sentence|> (after NFKC)
_THINK_OPEN = re.compile(r"<think>", re.I)
_THINK_CLOSE = re.compile(r"</think>", re.I)
_ANSWER_OPEN = re.compile(r"<answer>", re.I)
_ANSWER_CLOSE = re.compile(r"</answer>", re.I)
_CUT_CLOSE = re.compile(r"<(?:/(?:a(?:n(?:s(?:w(?:e(?:r)?)?)?)?)?)?)?[ \t\r\n]*$", re.I)  # "<", "</", … "</answer"
_PARAGRAPH = r"(.*(?:\n[ \t]*\S.*)*)"  # the rest of the line and the lines after it, up to a blank line
_ANSWER_LINE = re.compile(r"^[ \t]*(?:[*_#>-]{1,4}[ \t]*)?(?:final[ \t]+)?answer[*_]{0,2}[ \t]*:" + _PARAGRAPH,
                          re.I | re.M)
_ANSWER_IS = re.compile(r"\banswer[ \t]+(?:is|would be|should be|will be)\b" + _PARAGRAPH, re.I)
_BOXED = re.compile(r"\\boxed[ \t]*\{([^{}\n]*(?:\{[^{}\n]*\}[^{}\n]*)?)\}")


def normalize_text(text: str) -> str:
    """NFKC (full-width ``（B）`` -> ``(B)``, composed accents), straight quotes, no zero-width characters."""
    return _INVISIBLE.sub("", unicodedata.normalize("NFKC", text).translate(_QUOTES))


def answer_region(text: str | None) -> str | None:
    """The part of a reply that may hold its answer: after the first ``</think>`` when there is one; None when
    ``<think>`` is opened and never closed (a thought cut off has no answer); else the whole reply.

    A caller whose prompt opened the thought (an R1-style template) and whose reply may stop before
    ``</think>`` passes ``"<think>" + reply``, so that a cut-off thought gives no answer either.
    """
    if not isinstance(text, str):
        return None
    text = _SPECIAL_TOKEN.sub("", normalize_text(text))
    end = _THINK_CLOSE.search(text)
    if end:
        return text[end.end():]
    return None if _THINK_OPEN.search(text) else text


def extract_answer(text: str | None) -> str | None:
    """The answer string of a reply (see the module docstring for where it is looked for), or None.

    An unclosed ``<answer>`` (a reply cut off by the token limit) runs to the end of the text, less a closing
    tag cut off part-way (``(B) </ans`` -> ``(B)``): a truncated prediction is still graded, and only what it
    names counts. The string is returned NFKC-normalised.
    """
    region = answer_region(text)
    if region is None:
        return None
    tag = _ANSWER_OPEN.search(region)
    if tag:
        rest = region[tag.end():]
        close = _ANSWER_CLOSE.search(rest)
        return (rest[:close.start()] if close else _CUT_CLOSE.sub("", rest)).strip()
    for pattern in (_ANSWER_LINE, _ANSWER_IS, _BOXED):
        last = None
        for last in pattern.finditer(region):
            pass
        if last is not None:
            found = last.group(0) if pattern is _BOXED else last.group(1)
            return found.strip().lstrip(":").strip().rstrip(".").strip()
    return None


def parse_thought(text: str | None) -> tuple[str | None, str | None]:
    """``(thought, answer)`` of ``<think> … </think> … <answer> … </answer>``; None for a missing part.

    The thought runs to the first ``</think>``; a reply that closes the thought without opening it (R1-style
    templates open it in the prompt) has the text before ``</think>`` as its thought.
    """
    thought = thought_of(text)
    return (None, None) if thought is None else (thought, extract_answer(text))  # the region grade() reads


def thought_of(text: str | None) -> str | None:
    """The thought of :func:`parse_thought` alone (its answer is not looked for): None when no ``</think>``."""
    if not isinstance(text, str):
        return None
    end = _THINK_CLOSE.search(text)
    if end is None:
        return None
    start = _THINK_OPEN.search(text, 0, end.start())
    return text[start.end() if start else 0:end.start()].strip()


# ------------------------------------------------------------------------------------------------ matching

_LATEX_WRAP = re.compile(r"\\(?:boxed|text|textbf|mathrm|mathbf|mathtt|fbox)[ \t]*\{([^{}]*)\}")
_WS = re.compile(r"\s+")
_PREAMBLE = re.compile(
    r"(?:(?:so|thus|therefore|hence)[ ,]+)?(?:the[ ]+|my[ ]+)?(?:(?:final|correct|best|right)[ ]+){0,2}"
    r"(?:answer|option|choice)\b(?:[ ]+(?:is|would be|should be|will be)\b)?[ ]*(?::[ ]*)?", re.I)
# a letter, bare or in parentheses; a separator; the rest (which must then be that option's own text)
_LETTER = re.compile(r"(?:\([ ]*([A-Ja-j])[ ]*\)|([A-Ja-j])(?![A-Za-z0-9]))[ ]*([.):\-\u2013\u2014]?)[ ]*(.*)",
                     re.S)
_NOT_A_LETTER_FORM = -2


def _clean(s: str) -> str:
    """An answer or option text without its dressing, whitespace collapsed (case kept)."""
    s = _SPECIAL_TOKEN.sub("", normalize_text(s))
    if "\\" in s:  # every wrap starts with one (and each sub costs microseconds, even on "B")
        for _ in range(3):  # \boxed{\text{(B)}}: innermost first
            s = _LATEX_WRAP.sub(r"\1", s)
    s = s.replace("**", "").replace("__", "").replace("`", "").replace("$", "")
    s = _WS.sub(" ", s).strip().strip("*_\"' ")
    return s.rstrip(".!;, ").strip("*_\"' ")


def _letter_reading(a: str, normed: Sequence[str]) -> int:
    """What a letter form names: ``B``, ``b``, ``(B)``, ``B.``, ``B)``, ``B:``, optionally followed by that same
    option's text. -1 when it names none (a letter beyond the options, or followed by anything but its own
    option's text); ``_NOT_A_LETTER_FORM`` when ``a`` does not start with a letter form."""
    m = _LETTER.fullmatch(a)
    if not m:
        return _NOT_A_LETTER_FORM
    bare, sep, rest = m.group(2), m.group(3), _clean(m.group(4))
    if rest and bare and bare.islower() and not sep:
        return _NOT_A_LETTER_FORM  # "a blue car": an article, not the letter a
    i = LETTERS.index((m.group(1) or bare).upper())
    if i >= len(normed):
        return -1
    if rest and rest.casefold() != normed[i]:
        return -1  # "(A) is incorrect", "(A) or (B)", "A. B.", "(A) <text of B>", the option list echoed back
    return i


@functools.lru_cache(maxsize=1024)
def _normed_options(options: tuple[str, ...]) -> tuple[str, ...]:
    """The options as an answer is compared with them (cached: every sample of an item has the same options)."""
    return tuple(_clean(o).casefold() for o in options)


def match_option(answer: str | None, options: Sequence[str]) -> int:
    """Index of the one option ``answer`` names, or -1 when it names none, several, or contradicts itself."""
    if not isinstance(answer, str) or not options:
        return -1
    normed = _normed_options(tuple(map(str, options)))
    a = _clean(answer)
    for _ in range(3):  # "Answer: The correct option is (B)" peels twice
        if not a:
            return -1
        key = a.casefold()
        texts = [i for i, o in enumerate(normed) if o == key]
        letter = _letter_reading(a, normed)
        if len(texts) > 1:
            return -1  # the text of two options (duplicate options): ambiguous
        if texts:
            # options ["b", "a"] and answer "b": the text says A, the letter says B -> names none
            return texts[0] if letter < 0 or letter == texts[0] else -1
        if letter != _NOT_A_LETTER_FORM:
            return letter
        m = _PREAMBLE.match(a)
        if not m:
            return -1
        a = _clean(a[m.end():])
    return -1


@dataclass(frozen=True)
class Grade:
    answer: str | None  # the extracted answer string
    pred_index: int  # -1 when it names no option
    correct: bool

    @property
    def parsed(self) -> bool:
        return self.pred_index >= 0


def grade(response: str | None, options: Sequence[str], gold_index: int) -> Grade:
    """Extract the answer of ``response`` and compare it with the gold option."""
    ans = extract_answer(response)
    idx = match_option(ans, options)
    return Grade(answer=ans, pred_index=idx, correct=idx >= 0 and idx == gold_index)


# ------------------------------------------------------------------------------- the authors' scoring rule

_AUTHORS_ANSWER_TAG = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.S)


def authors_answer(response: str | None) -> str:
    """The answer string as the authors' evaluation reads it (``extract_predict`` in their ``vllm_eval.py``,
    andrewliao11/LongPerceptualThoughts@ab1a9a0): the first ``<answer>…</answer>`` anywhere in the reply (also
    inside the thought), else the text between the first and the second "Answer:", else the whole reply;
    stripped. No Unicode normalisation."""
    text = response if isinstance(response, str) else ""
    tag = _AUTHORS_ANSWER_TAG.search(text)
    if tag:
        return tag.group(1).strip()
    if "Answer:" in text:
        text = text.split("Answer:")[1]
    return text.strip()


def authors_hit(response: str | None, options: Sequence[str], gold_index: int) -> bool:
    """Whether the authors' rule (``compute_mcq_hit``, same commit) counts ``response`` right: the answer string,
    lower-cased, equals the text of *any* option (right or wrong: their rule's known leniency); or it is the
    gold letter as ``B``, ``(B)`` or ``B.``; or its first space-separated word is ``(B)`` or ``B.``.

    This is not :func:`grade` and never labels data: it scores benchmarks a second time so that a result can
    be compared with the paper's table (``acc_macro_authors`` next to ``acc_macro``)."""
    answer = authors_answer(response)
    if answer.lower() in {str(o).strip().lower() for o in options}:
        return True
    gold = letter(gold_index)
    marked = {f"({gold})", f"{gold}."}
    return answer == gold or answer in marked or answer.split(" ")[0] in marked
