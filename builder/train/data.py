"""Training rows for ``lpt train``: where they come from, the refusals, and the evaluation protocol's words.

* The source is an exported folder (``lpt export``) or a run directory, which is exported to a temporary folder
  first (the ``sft`` or ``dpo`` config and ``images``) with :func:`builder.export.export`.
* Images are attached from the ``images`` config by :func:`longperceptualthoughts.load` (TRL's ``images``
  column); a text-only run is only made when asked for.
* Loss on the assistant turn only: SFT rows are split into TRL's ``prompt`` / ``completion`` form, which TRL
  masks to the completion (the ``messages`` form labels every token, system prompt and image tokens included).
* The rows speak the evaluation's words (:data:`PROTOCOLS`): the system turn becomes the one ``lpt eval``
  sends under the same protocol and every ``<answer>`` is rewritten in the answer format that prompt asks for
  (:func:`builder.answers.format_answer`). ``rows`` keeps the rows as exported.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets

from builder.answers import format_answer, match_option, parse_options
from builder.prompts import Prompts

# protocol -> the answer format its evaluation prompt asks for ("(X)" in both)
PROTOCOLS = {"authors": "paren", "project": "paren", "rows": None}
DEFAULT_PROTOCOL = "authors"  # lpt eval's default
_ANSWER = re.compile(r"(<answer>)(.*?)(</answer>)", re.S | re.I)
_OPTION_A = re.compile(r"^\s*(?:\(A\)|A[.):])\s")


class TrainError(ValueError):
    """Training cannot start; the message is one line that says why and what to do."""


# ----------------------------------------------------------------------------------------- protocol


def system_prompt(protocol: str) -> str | None:
    """The system turn ``lpt eval`` sends under ``protocol`` (:func:`eval_tasks.protocols.system_prompt`, think
    variant), or None for ``rows`` (each row keeps its own): one source for training and evaluation."""
    if protocol not in PROTOCOLS:
        raise TrainError(f"unknown protocol {protocol!r}; choose from {sorted(PROTOCOLS)}")
    if protocol == "rows":
        return None
    from eval_tasks import protocols

    try:
        return protocols.system_prompt(protocol, "think")
    except protocols.AuthorsFilesUnavailable as e:
        raise TrainError(str(e)) from None


def _reformat_answer(text: str, options: list[str], answer_format: str) -> str:
    """``text`` with its last ``<answer>`` rewritten as ``answer_format``; unchanged when it names no one option."""
    found = list(_ANSWER.finditer(text))
    if not found:
        return text
    last = found[-1]
    index = match_option(last.group(2), options)
    if index < 0:
        return text
    return f"{text[: last.start(2)]} {format_answer(options, index, answer_format)} {text[last.end(2):]}"


def _project_user_text(text: str, options: list[str]) -> str:
    """The user turn laid out as the project's evaluation lays it out (question, choices line, ``(A) …`` lines)."""
    prompts = Prompts()
    intro = {prompts.benchmark_user_text("Q", ["x", "y"]).split("\n")[1],  # the evaluation's choices line
             prompts.vlm_user_text("Q", ["x", "y"]).split("\n")[1]}  # and the one the rows were generated with
    lines = text.split("\n")
    first = next((i for i, line in enumerate(lines) if _OPTION_A.match(line)), None)
    if first is None:
        return text
    question = lines[:first]
    if question and question[-1].strip() in intro:
        question = question[:-1]
    return prompts.benchmark_user_text("\n".join(question).strip(), options)


def _speak(messages: list[dict[str, Any]], protocol: str, options: list[str]) -> list[dict[str, Any]]:
    system, answer_format = system_prompt(protocol), PROTOCOLS[protocol]
    out = []
    for m in messages:
        content = m["content"]
        if m["role"] == "system" and system is not None:
            content = system
        elif m["role"] == "user" and protocol == "project" and options and isinstance(content, str):
            content = _project_user_text(content, options)
        elif m["role"] == "assistant" and answer_format and options:
            content = _reformat_answer(content, options, answer_format)
        out.append({"role": m["role"], "content": content})
    return out


def _options_of(messages: list[dict[str, Any]]) -> list[str]:
    user = next((m["content"] for m in messages if m["role"] == "user"), "")
    try:
        return parse_options(user if isinstance(user, str) else "")
    except ValueError:
        return []


def align(row: dict[str, Any], protocol: str) -> dict[str, Any]:
    """One SFT (``messages``) or DPO (``prompt``/``chosen``/``rejected``) row in ``protocol``'s words."""
    if "messages" in row:
        return {"messages": _speak(row["messages"], protocol, _options_of(row["messages"]))}
    options = _options_of(row["prompt"])
    return {k: _speak(row[k], protocol, options) for k in ("prompt", "chosen", "rejected")}


# --------------------------------------------------------------------------------------------- rows


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / "manifest.json").is_file()


@contextlib.contextmanager
def export_folder(source: str | Path, stage: str) -> Iterator[Path]:
    """``source`` if it is an exported folder; a run directory is exported to a temporary folder first."""
    source = Path(source)
    if not source.exists():
        raise TrainError(f"{source} not found (give an exported folder, `lpt export RUN OUT`, or a run directory)")
    if not is_run_dir(source):
        yield source
        return
    from builder.export import export

    with tempfile.TemporaryDirectory(prefix="lpt-train-") as tmp:
        yield export(source, Path(tmp) / "export", configs=[stage, "images"], allow_incomplete=True)


def check_source(out: Path, stage: str, text_only: bool) -> None:
    """One line when ``out`` cannot give ``stage`` rows (with images, unless ``text_only``)."""
    try:
        names = datasets.get_dataset_config_names(str(out))
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds for a folder that is no dataset
        raise TrainError(f"{out} is not an exported dataset ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if stage not in names:
        raise TrainError(f"{out} has no {stage} config (it has {', '.join(names) or 'none'}): export it with "
                         f"`lpt export RUN OUT --only {stage} --only images`")
    if not text_only and "images" not in names:
        raise TrainError(f"{out} has no images config, so a vision-language model would be trained without its "
                         f"images: export a run whose source images are on the machine (lpt import-upstream "
                         f"--images-dir DOCCI/images), or pass --text-only to train on the text alone")


def load_rows(out: Path, stage: str, *, protocol: str = DEFAULT_PROTOCOL, text_only: bool = False,
              max_rows: int | None = None) -> datasets.Dataset:
    """The ``stage`` rows of ``out`` in TRL's form, in ``protocol``'s words, with ``images`` unless ``text_only``.

    SFT: ``prompt`` (system, user) + ``completion`` (assistant); DPO: ``prompt`` / ``chosen`` / ``rejected``.
    """
    import longperceptualthoughts as lpt

    check_source(out, stage, text_only)
    ds = lpt.load(stage, out, with_images=not text_only)
    if max_rows is not None:
        ds = ds.select(range(min(max_rows, len(ds))))
    if len(ds) == 0:
        raise TrainError(f"{out}: the {stage} config has no rows")
    keep = ["images"] if not text_only else []
    cols = ["messages"] if stage == "sft" else ["prompt", "chosen", "rejected"]
    ds = ds.select_columns(cols + keep).map(lambda r: align(r, protocol), desc=f"{stage} rows in {protocol} words")
    if stage == "sft":
        ds = ds.map(_split, remove_columns=["messages"], desc="prompt / completion")
    return ds


def _split(row: dict[str, Any]) -> dict[str, Any]:
    messages = row["messages"]
    if not messages or messages[-1]["role"] != "assistant":
        raise TrainError(f"an SFT row does not end with an assistant turn: {[m['role'] for m in messages]}")
    return {"prompt": messages[:-1], "completion": messages[-1:]}


__all__ = ["DEFAULT_PROTOCOL", "PROTOCOLS", "TrainError", "align", "check_source", "export_folder", "is_run_dir",
           "load_rows", "system_prompt"]
