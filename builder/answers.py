"""Options, answer formats, answer extraction and matching: the one place that decides right or wrong.

Used for labelling generated data and for scoring benchmarks alike. The rule (SPEC "Answer matching"):
take the first ``<answer>…</answer>`` (else an "Answer: …" / "answer is (X)" line after the thought),
accept a letter in the usual dressings (``A``, ``(A)``, ``A.``, ``A)``, ``(a)``, ``**(A)**``, ``Option A``,
``(A) text``) or the bare text of exactly one option, and compare letters. Anything else is wrong. The text
of a *wrong* option is wrong (upstream defect 1 does not come back).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Sequence

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

_ANSWER_TAG = re.compile(r"<answer>(.*?)(</answer>|$)", re.S | re.I)
_CUT_CLOSE = re.compile(r"<(?:/(?:a(?:n(?:s(?:w(?:e(?:r)?)?)?)?)?)?)?\s*$", re.I)  # "<", "</", ... "</answer"
_THINK = re.compile(r"<think>(.*?)</think>", re.S | re.I)
_ANSWER_IS = re.compile(r"answer\s+is\s*:?\s*(\*\*)?\s*(\(?[A-J]\)?)(?![A-Za-z])", re.I)
_ANSWER_LINE = re.compile(r"^\s*(?:\*\*)?(?:final\s+)?answer(?:\*\*)?\s*:\s*(.+?)\s*$", re.I | re.M)


def extract_answer(text: str) -> str | None:
    """The answer string of a response: first ``<answer>`` tag, else an "Answer: …" / "answer is (X)" line.

    An unclosed ``<answer>`` (a reply cut off by the token limit) runs to the end of the text, less a closing
    tag cut off part-way (``(B) </ans`` -> ``(B)``): a truncated prediction is still graded, and only what it
    names counts. Fallbacks look only after the thought (after ``</think>`` when there is one; an unclosed
    ``<think>`` gives no answer).
    """
    if text is None:
        return None
    m = _ANSWER_TAG.search(text)
    if m:
        return (m.group(1) if m.group(2) else _CUT_CLOSE.sub("", m.group(1))).strip()
    tail = text
    if re.search(r"<think>", text, re.I):
        end = re.search(r"</think>", text, re.I)
        if not end:
            return None
        tail = text[end.end():]
    lines = _ANSWER_LINE.findall(tail)
    if lines:
        return lines[-1].strip()
    found = _ANSWER_IS.findall(tail)
    if found:
        return found[-1][1].strip()
    return None


def parse_thought(text: str) -> tuple[str | None, str | None]:
    """``(thought, answer)`` of ``<think> … </think> … <answer> … </answer>``; None for a missing part."""
    m = _THINK.search(text or "")
    thought = m.group(1).strip() if m else None
    answer = extract_answer(text[m.end():]) if m else None
    return thought, answer


def _norm(s: str) -> str:
    s = s.strip().strip("*`\"' ").strip()
    s = re.sub(r"\s+", " ", s)
    return s.rstrip(".").strip().casefold()


_LETTER_ONLY = re.compile(r"^(?:(?:option|choice)\s*)?(?:\(\s*([A-Ja-j])\s*\)|([A-J])\s*[.):]?)$", re.I)
_LETTER_TEXT = re.compile(r"^(?:(?:option|choice)\s*)?(?:\(\s*([A-Ja-j])\s*\)|([A-J])\s*[.):])\s*(.+)$", re.S)


def match_option(answer: str | None, options: Sequence[str]) -> int:
    """Index of the option ``answer`` names, or -1 when it names none (or contradicts itself)."""
    if not answer:
        return -1
    a = answer.strip().strip("*`").strip()
    a = re.sub(r"^\*\*|\*\*$", "", a).strip()
    normed = [_norm(o) for o in options]
    # a bare option text (checked first: an option may itself start with "A ")
    hits = [i for i, o in enumerate(normed) if o == _norm(a)]
    if len(hits) == 1:
        return hits[0]
    m = _LETTER_ONLY.match(a)
    if m and (m.group(1) or m.group(2).isupper() or a.lower().startswith(("option", "choice"))):
        i = LETTERS.index((m.group(1) or m.group(2)).upper())
        return i if i < len(options) else -1
    m = _LETTER_TEXT.match(a)
    if m:
        i = LETTERS.index((m.group(1) or m.group(2)).upper())
        if i >= len(options):
            return -1
        rest = _norm(re.sub(r"\*\*", "", m.group(3)))
        named = [j for j, o in enumerate(normed) if o == rest]
        if named and i not in named:
            return -1  # "(A) <text of option B>": contradictory, never right
        return i
    m = _ANSWER_IS.search(a)  # "<answer> The answer is (B) </answer>"
    if m:
        return match_option(m.group(2), options)
    return -1


@dataclass(frozen=True)
class Grade:
    answer: str | None  # the extracted answer string
    pred_index: int  # -1 when it names no option
    correct: bool

    @property
    def parsed(self) -> bool:
        return self.pred_index >= 0


def grade(response: str, options: Sequence[str], gold_index: int) -> Grade:
    """Extract the answer of ``response`` and compare it with the gold option."""
    ans = extract_answer(response)
    idx = match_option(ans, options)
    return Grade(answer=ans, pred_index=idx, correct=idx >= 0 and idx == gold_index)
