"""The two evaluation protocols, declared here and only here: ``authors`` (the default) and ``project``.

``authors``
    what the authors' evaluation sends (github.com/andrewliao11/LongPerceptualThoughts at commit
    :data:`AUTHORS_COMMIT`, MIT): their R1-style system prompt (the one their data uses) with the sentence
    "… provide your answer as (X) …", their user turn (question, their lead-in sentence, the ``(A) …`` option
    lines), their MMLU-Pro system template (with the item's subject), 2048 new tokens for every benchmark, and
    their benchmark copies where they differ from ours (MMVP: ``MMVP/MMVP``'s ``Questions.csv``).
``project``
    our own words (:mod:`builder.prompts`: ``benchmark_system`` / ``benchmark_user``), each task's own budget
    (1024 new tokens, 2048 for MMLU-Pro) and our corrected copies (MMVP: ``lmms-lab-eval/MMVP``, which fixes the
    answers of Index 99, 100, 279 and 280).

Both score the same generations twice: ``acc_macro`` with our matcher (:func:`builder.answers.grade`) and
``acc_macro_authors`` with the authors' rule (:func:`builder.answers.authors_hit`). docs/method.md lists item by
item where ``project`` departs from ``authors``.

Where the authors' words come from (never retyped here): their files at :data:`AUTHORS_COMMIT`
(:data:`AUTHORS_FILES`), read from ``$LPT_AUTHORS_DIR`` when set (a checkout of their repository, or any folder
with those paths: works offline), else from the cache (``$LPT_AUTHORS_CACHE``, default
``~/.cache/longperceptualthoughts/authors/<commit>``), else downloaded from GitHub at that commit into the cache:

* the system prompts: their templates ``data_gen/templates/think_system_prompt.jinja2`` and
  ``direct_answer_system_prompt.jinja2`` (MMLU-Pro: ``mmlu_pro_think_system_prompt.jinja2`` /
  ``mmlu_pro_direct_answer_system_prompt.jinja2``, with the item's subject as ``domain``), rendered with the
  ``task_specific_message`` their ``_generate_jsonl_file`` gives every benchmark, as their code renders them
  (a sandboxed Jinja2 environment);
* the user turn's lead-in: the string their ``_generate_jsonl_file`` appends to the question.

The ``task_specific_message`` and the lead-in are read from ``benchmark_data/data_gen/prepare.py`` with :mod:`ast`
(their code is never run).

What the authors' code does that neither protocol does: it samples (temperature 0.7, top-p 0.8, repetition
penalty 1.05, hard-coded in ``initialize_vllm``) where both protocols decode greedily; see docs/method.md.
"""

from __future__ import annotations

import ast
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from builder.answers import format_options

AUTHORS_REPO = "andrewliao11/LongPerceptualThoughts"
AUTHORS_COMMIT = "ab1a9a02632e05f7f831907533293c9dbdca54c2"  # their main on 2025-05-26 (both vllm_eval.py versions)
AUTHORS_DIR_ENV = "LPT_AUTHORS_DIR"
AUTHORS_CACHE_ENV = "LPT_AUTHORS_CACHE"
PREPARE_PY = "benchmark_data/data_gen/prepare.py"
SYSTEM_TEMPLATES = {"think": "data_gen/templates/think_system_prompt.jinja2",
                    "direct": "data_gen/templates/direct_answer_system_prompt.jinja2"}
MMLU_PRO_TEMPLATES = {"think": "data_gen/templates/mmlu_pro_think_system_prompt.jinja2",
                      "direct": "data_gen/templates/mmlu_pro_direct_answer_system_prompt.jinja2"}
AUTHORS_FILES = (PREPARE_PY, *SYSTEM_TEMPLATES.values(), *MMLU_PRO_TEMPLATES.values())


@dataclass(frozen=True)
class Protocol:
    name: str
    summary: str
    generation_size: int | None  # new tokens for every benchmark; None: each task file's GENERATION_SIZE
    sources: str  # which copy of a benchmark: a task file's AUTHORS_HF_REPO (authors) or its HF_REPO


PROTOCOLS = {
    "authors": Protocol("authors", "the authors' prompts, budget (2048 new tokens) and benchmark copies", 2048,
                        "authors"),
    "project": Protocol("project", "our prompt words, our budgets (1024; 2048 for MMLU-Pro), corrected copies",
                        None, "project"),
}
DEFAULT_PROTOCOL = "authors"


class AuthorsFilesUnavailable(RuntimeError):
    """The authors' files cannot be read now; the message is one line saying how to give them."""


def get(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose from {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


# -------------------------------------------------------------------------- the authors' published files


def authors_cache_dir() -> Path:
    root = os.environ.get(AUTHORS_CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / \
        "longperceptualthoughts" / "authors"
    return Path(root) / AUTHORS_COMMIT


def _download(relative: str, target: Path) -> None:
    import urllib.request

    from builder.atomic import write_text

    url = f"https://raw.githubusercontent.com/{AUTHORS_REPO}/{AUTHORS_COMMIT}/{relative}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - a fixed https URL
            data = response.read()
    except OSError as e:
        raise AuthorsFilesUnavailable(
            f"the authors' file {relative} ({AUTHORS_REPO}@{AUTHORS_COMMIT[:7]}) is not cached and cannot be "
            f"downloaded ({type(e).__name__}: {e}); set {AUTHORS_DIR_ENV}=DIR to a checkout of that commit, "
            "or use --protocol project") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text(target, data.decode("utf-8"))


def authors_file(relative: str) -> str:
    """The text of one of the authors' files at :data:`AUTHORS_COMMIT` (local dir, else cache, else GitHub)."""
    local = os.environ.get(AUTHORS_DIR_ENV)
    if local:
        path = Path(local) / relative
        if not path.is_file():
            raise AuthorsFilesUnavailable(f"{AUTHORS_DIR_ENV}={local} has no file {relative} (a checkout of "
                                          f"{AUTHORS_REPO} at {AUTHORS_COMMIT[:7]} has it)")
        return path.read_text(encoding="utf-8")
    cached = authors_cache_dir() / relative
    if not cached.is_file():
        _download(relative, cached)
    return cached.read_text(encoding="utf-8")


def check_authors_files() -> None:
    """Raise :class:`AuthorsFilesUnavailable` (one line) unless every file the ``authors`` protocol reads is there."""
    for relative in AUTHORS_FILES:
        authors_file(relative)


def _strings_in(func: ast.FunctionDef, target: str, augmented: bool) -> list[str]:
    """The plain string constants assigned (or ``+=``-appended) to the name ``target`` in ``func``."""
    kind = ast.AugAssign if augmented else ast.Assign
    out = []
    for node in ast.walk(func):
        if not isinstance(node, kind):
            continue
        names = [node.target] if augmented else node.targets
        value = node.value
        if isinstance(value, ast.JoinedStr) and all(isinstance(v, ast.Constant) for v in value.values):
            value = ast.Constant("".join(v.value for v in value.values))  # an f-string without fields
        if any(isinstance(n, ast.Name) and n.id == target for n in names) and isinstance(value, ast.Constant) \
                and isinstance(value.value, str):
            out.append(value.value)
    return out


@functools.lru_cache(maxsize=1)
def _authors_eval_strings() -> dict[str, str]:
    """The strings the authors' ``_generate_jsonl_file`` builds a benchmark prompt from (read, never run)."""
    tree = ast.parse(authors_file(PREPARE_PY))
    func = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_generate_jsonl_file"), None)
    if func is None:
        raise AuthorsFilesUnavailable(f"{PREPARE_PY} at {AUTHORS_COMMIT[:7]} has no _generate_jsonl_file")
    leads = _strings_in(func, "user_prompt", augmented=True)
    formats = _strings_in(func, "task_specific_message", augmented=False)
    if not leads or len(formats) != 1:
        raise AuthorsFilesUnavailable(f"{PREPARE_PY}: _generate_jsonl_file no longer reads as expected")
    return {"options_lead": leads[0], "answer_format": formats[0]}


def _system_template(relative: str):
    """One of the authors' system-prompt templates, compiled as their prepare.py compiles it (a sandboxed
    environment); an undefined name is an error here rather than an empty string."""
    return _compiled(authors_file(relative))


@functools.lru_cache(maxsize=8)
def _compiled(source: str):
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    return SandboxedEnvironment(undefined=StrictUndefined).from_string(source)


# ------------------------------------------------------------------------------------------ public


def answer_format_instruction(protocol: str = DEFAULT_PROTOCOL) -> str:
    """The sentence that asks for the answer's format in the evaluation system prompt (``authors``: the
    ``task_specific_message`` of their prepare.py)."""
    if get(protocol).name == "authors":
        return _authors_eval_strings()["answer_format"]
    from builder.prompts import Prompts

    prompts = Prompts()
    full, base = prompts.benchmark_system("think"), prompts.render("system", variant="think", task=False)
    return full[len(base):].strip() if full.startswith(base) else full


def system_prompt(protocol: str = DEFAULT_PROTOCOL, variant: str = "think", subject: str | None = None) -> str:
    """The evaluation system prompt of ``protocol``: think or direct; ``subject`` (MMLU-Pro's category) picks the
    authors' MMLU-Pro template under ``authors``."""
    if get(protocol).name == "project":
        from builder.prompts import Prompts

        return Prompts().benchmark_system(variant)
    message = answer_format_instruction("authors")
    if subject is not None:
        return _system_template(MMLU_PRO_TEMPLATES[variant]).render(domain=subject, task_specific_message=message)
    return _system_template(SYSTEM_TEMPLATES[variant]).render(task_specific_message=message)


def user_text(protocol: str, question: str, options: Sequence[str]) -> str:
    """The evaluation user text (the image, when there is one, goes before it)."""
    if get(protocol).name == "project":
        from builder.prompts import Prompts

        return Prompts().benchmark_user_text(question, options)
    return question + _authors_eval_strings()["options_lead"] + format_options(options, "paren")


def benchmark_turns(protocol: str, question: str, options: Sequence[str], variant: str = "think",
                    subject: str | None = None) -> tuple[str, str]:
    """``(system text, user text)`` of one benchmark item under ``protocol``."""
    return system_prompt(protocol, variant, subject), user_text(protocol, question, options)


def generation_size(protocol: str, task_default: int) -> int:
    return get(protocol).generation_size or task_default


__all__ = ["AUTHORS_COMMIT", "AUTHORS_FILES", "AUTHORS_REPO", "DEFAULT_PROTOCOL", "MMLU_PRO_TEMPLATES", "PROTOCOLS",
           "SYSTEM_TEMPLATES", "AuthorsFilesUnavailable", "Protocol", "answer_format_instruction", "authors_file",
           "benchmark_turns", "check_authors_files", "generation_size", "get", "system_prompt", "user_text"]
