"""The authors' prompt words as templates, read from their published example outputs (MIT).

The ``authors`` wording renders the prompts with the words Liao et al. used, and those words are never typed into
this project: they are read, at first use, from the decoded prompts the authors published with their example run
(the files :data:`builder.upstream.EXAMPLE_DIR` ships, licence in its ``LICENSE``; another folder of the same files
works too). Each prompt of the authors' files is a known text with known slots (the description, the question,
the options as shown, the reasoning type); cutting the slots out of it leaves the authors' template, and every
example that shares the template's key (variant, answer format) must leave the same one, else the folder is
refused with the file and line that disagrees.

The templates come out under the names of ours (``system``, ``vlm_user``, ``reasoning_user``,
``reasoning_prefill``, ``mcq_generation``, ``mcq_reformat``), so :class:`builder.prompts.Prompts` renders them
through the same functions; a combination the authors' files hold no example of (say the ``direct`` variant with
the option-text format) fails naming it, rather than falling back to our words.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

from builder.answers import format_options
from builder.upstream import EXAMPLE_DIR, parse_qwen_prompt

from . import options_inline

# The authors' files, by what they hold; a folder of the authors' outputs has one of each.
STAGE1_FILE = "docci_mcq.csv"  # descriptions, stage-1 prompts and replies, the MCQs
STAGE2_FILE = "stage2_*_simple_cots.jsonl"  # decoded stage-2 prompts (Qwen chat format) and the VLM's replies
DIRECT_FILE = "sft_direct_answer_docci_all_mcqs.json"  # the direct-answer system prompts
STAGE3_FILE = "sft_docci_thought_expansion.json"  # stage-3 user turns and pre-filled assistant turns


class AuthorsWordsError(ValueError):
    """The authors' files do not give one template for a prompt; the message names the file and the record."""


def _literal(text: str) -> str:
    """Jinja source that renders ``text`` as it is."""
    return "{% raw %}" + text + "{% endraw %}" if text else ""


class _Cut:
    """One template learnt from many examples: each example's text with its slot values cut out must give the
    same template for the same key."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.by_key: dict[tuple, tuple[str, str]] = {}  # key -> (template source, where it was first seen)

    def add(self, key: tuple, text: str, slots: list[tuple[str, str]], where: str) -> None:
        """Cut the slot values (``(value, jinja expression)``, in the order they stand in ``text``) out of
        ``text``; each value must be found after the one before it."""
        parts, pos = [], 0
        for value, expr in slots:
            i = text.find(value, pos) if value else -1
            if i < 0:
                raise AuthorsWordsError(f"{where}: {self.name}: {value[:60]!r} is not where it should be")
            parts += [_literal(text[pos:i]), "{{ " + expr + " }}"]
            pos = i + len(value)
        source = "".join(parts) + _literal(text[pos:])
        seen = self.by_key.setdefault(key, (source, where))
        if seen[0] != source:
            raise AuthorsWordsError(f"{where}: {self.name}: the authors' words differ from those of {seen[1]} "
                                    f"for the same {key}")

    def template(self, variables: tuple[str, ...]) -> str:
        """One Jinja template choosing among the learnt ones by the key ``variables``."""
        if not variables:
            (source, _), = self.by_key.values()
            return source
        branches = []
        for key, (source, _) in sorted(self.by_key.items()):
            test = " and ".join(f"{v} == {json.dumps(k)}" for v, k in zip(variables, key)) or "true"
            branches.append(("{% if " if not branches else "{% elif ") + test + " %}" + source)
        keys = " ~ '/' ~ ".join(variables)
        return "".join(branches) + "{% else %}{{ fail(\"the authors' published files hold no " + self.name + \
            " prompt for \" ~ " + keys + ") }}{% endif %}"


def _stage1(folder: Path) -> tuple[dict[str, dict], _Cut, _Cut]:
    """The MCQs by the authors' id, and the stage-1 prompts (generation, re-format) cut at the description and
    the reply being re-formatted."""
    path = folder / STAGE1_FILE
    mcqs: dict[str, dict] = {}
    generation, reformat = _Cut("mcq_generation"), _Cut("mcq_reformat")
    with open(path, newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.DictReader(f), 2):
            where = f"{path}: row {n}"
            mcqs[row["mcq_unique_id"]] = row
            generation.add((), row["_mcq_gen_prompt"], [(row["description"], "description")], where)
            reformat.add((), row["_parse_to_mcq_prompt"], [(row["_mcq_gen_raw_response"], "text")], where)
    return mcqs, generation, reformat


def _shown(record: dict, where: str) -> dict[str, Any]:
    """What a decoded Qwen prompt shows (:func:`builder.upstream.parse_qwen_prompt`), as an error naming it."""
    try:
        return parse_qwen_prompt(record["prompt"])
    except (KeyError, ValueError) as e:
        raise AuthorsWordsError(f"{where}: prompt: {e}") from None


def _stage2(folder: Path, mcqs: dict[str, dict], system: _Cut, user: _Cut) -> dict[str, dict[str, Any]]:
    """Cut the stage-2 system prompts (think variant) and user texts; returns what each MCQ was shown."""
    shown_by_mcq: dict[str, dict[str, Any]] = {}
    path = _one(folder, STAGE2_FILE)
    for n, record in _lines(path):
        where = f"{path}: line {n}"
        mcq = mcqs[record["metadata"]["metadata"]["mcq_unique_id"]]
        shown = _shown(record, where)
        shown_by_mcq[mcq["mcq_unique_id"]] = shown
        kind = mcq["mcq_question_type"]
        system.add(("think", shown["answer_format"]), shown["system_prompt"], [(f'"{kind}"', '\'"\' ~ question_type ~ \'"\'')],
                   where)
        user.add((), shown["user_text"], [(shown["question"], "question"),
                                          (format_options(shown["options"], shown["option_style"]), "options_text")],
                 where)
    return shown_by_mcq


def _direct(folder: Path, mcqs: dict[str, dict], shown_by_mcq: dict[str, dict], system: _Cut) -> None:
    """Cut the direct-answer system prompts (the answer format is the one the same MCQ was shown in stage 2)."""
    path = folder / DIRECT_FILE
    for n, record in enumerate(json.loads(path.read_text(encoding="utf-8"))):
        where = f"{path}: record {n}"
        mcq = mcqs[record["metadata"]["mcq_unique_id"]]
        text = record["messages"][0]["content"]
        system.add(("direct", shown_by_mcq[mcq["mcq_unique_id"]]["answer_format"]), text,
                   [(f'"{mcq["mcq_question_type"]}"', '\'"\' ~ question_type ~ \'"\'')], where)


def _stage3(folder: Path, mcqs: dict[str, dict], shown_by_mcq: dict[str, dict], user: _Cut, opening: _Cut) -> None:
    """Cut the stage-3 user turns and the openings of the pre-filled assistant turns."""
    path = folder / STAGE3_FILE
    for n, record in enumerate(json.loads(path.read_text(encoding="utf-8"))):
        where = f"{path}: record {n}"
        mcq = mcqs[record["metadata"]["mcq_unique_id"]]
        shown = shown_by_mcq[mcq["mcq_unique_id"]]
        options = format_options(shown["options"], shown["option_style"])
        user.add((shown["answer_format"],), record["messages"][0]["content"],
                 [(f'"{mcq["mcq_question_type"]}"', '\'"\' ~ question_type ~ \'"\''),
                  (mcq["description"], "description"), (shown["question"], "question"), (options, "options_text")],
                 where)
        prefill = record["messages"][1]["content"]
        # the opening ends where the simple thought begins (the authors' copy of it is changed in case)
        start = prefill.casefold().find(record["metadata"]["simple_cot"].strip().casefold()[:40])
        if start < 0:
            raise AuthorsWordsError(f"{where}: the assistant turn does not hold the simple thought")
        opening.add((), prefill[:start], [(f'"{shown["question"]}"', '\'"\' ~ question ~ \'"\''),
                                          (options_inline(shown["options"], shown["option_style"]),
                                           "options_inline")], where)


@functools.lru_cache(maxsize=4)
def authors_templates(folder: str | Path | None = None) -> dict[str, str]:
    """Our template names -> Jinja sources holding the authors' words, learnt from the authors' files in
    ``folder`` (default: the example outputs the package ships)."""
    folder = Path(folder or EXAMPLE_DIR)
    system, vlm_user = _Cut("system"), _Cut("vlm_user")
    reasoning_user, opening = _Cut("reasoning_user"), _Cut("reasoning_prefill")
    try:
        mcqs, generation, reformat = _stage1(folder)
        shown = _stage2(folder, mcqs, system, vlm_user)
        _direct(folder, mcqs, shown, system)
        _stage3(folder, mcqs, shown, reasoning_user, opening)
    except (OSError, KeyError, TypeError, json.JSONDecodeError, csv.Error) as e:
        raise AuthorsWordsError(f"{folder}: not the authors' published example outputs ({type(e).__name__}: "
                                f"{e})") from None
    return {
        "mcq_generation_system": "",  # the authors sent the stage-1 prompt as the only turn
        "mcq_generation": generation.template(()),
        "mcq_reformat": reformat.template(()),
        # the authors' system prompt always names the reasoning type and the answer format (``task`` is ours)
        "system": system.template(("variant", "answer_format")),
        "vlm_user": vlm_user.template(()),
        "reasoning_user": reasoning_user.template(("answer_format",)),
        "reasoning_prefill": opening.template(()) + "{{ thought }}",
    }


def fingerprint(templates: dict[str, str]) -> str:
    """A short hash of a template set (for the stage settings a run's chunks are checked against)."""
    h = hashlib.sha256()
    for name in sorted(templates):
        h.update(name.encode() + b"\0" + templates[name].encode() + b"\0")
    return h.hexdigest()[:16]


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise AuthorsWordsError(f"{folder}: expected one file matching {pattern!r}, found {len(found)}")
    return found[0]


def _lines(path: Path) -> Iterable[tuple[int, dict]]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                yield n, json.loads(line)


__all__ = ["AuthorsWordsError", "authors_templates", "fingerprint"]
