"""The benchmarks, read from the task files' constants without importing them (no lighteval import, so that
``lpt eval`` can check names and data in a fraction of a second before loading the heavy stack).

Every module of :mod:`eval_tasks.benchmarks` whose name does not start with ``_`` is a benchmark; its
module-level literal assignments (``NAME``, ``TITLE``, ``HF_REPO``, ``HF_REVISION``, ``PAPER_QWEN25_VL_7B`` …)
are read with :mod:`ast`.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import Any



def _files() -> list[Path]:
    """The task files: every ``*.py`` in the folders of the :mod:`eval_tasks.benchmarks` package (its
    ``__path__``, so a folder appended there, as a test does, is searched too)."""
    from eval_tasks import benchmarks

    return [p for folder in benchmarks.__path__ for p in sorted(Path(folder).glob("*.py"))]


@functools.lru_cache(maxsize=1)
def _catalog() -> dict[str, dict[str, Any]]:
    out = {}
    for path in _files():
        if path.name.startswith("_"):
            continue
        consts = {"module": f"eval_tasks.benchmarks.{path.stem}"}
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                try:
                    consts[node.targets[0].id] = ast.literal_eval(node.value)
                except ValueError:
                    continue  # not a literal (a compiled regex, a function call)
        if "NAME" in consts:
            out[consts["NAME"]] = consts
    return out


def refresh() -> None:
    """Forget what was read (after a task file was added)."""
    _catalog.cache_clear()


def names() -> list[str]:
    """Every benchmark's task name (``lpt_vstar`` …), in the order of the task files."""
    return list(_catalog())


def info(bench: str) -> dict[str, Any]:
    """The literal constants of ``bench``'s task file, plus ``module`` (its dotted name)."""
    return _catalog()[bench]


def titles() -> dict[str, str]:
    return {b: c.get("TITLE", b) for b, c in _catalog().items()}


def paper_scores() -> dict[str, float | None]:
    """The paper's macro accuracy (%) of Qwen2.5-VL-7B-Instruct per benchmark (None: not in the paper)."""
    return {b: c.get("PAPER_QWEN25_VL_7B") for b, c in _catalog().items()}


def base_name(task: str) -> str:
    """``"lpt_vstar_direct|0"`` -> ``"lpt_vstar"``."""
    name = task.split("|")[0].split(":")[0].strip()
    return name.removesuffix("_direct")


def task_string(benches: list[str] | None = None, variant: str = "think") -> str:
    """``"lpt_vstar|0,lpt_cvbench|0,..."`` for lighteval."""
    suffix = "" if variant == "think" else f"_{variant}"
    return ",".join(f"{b}{suffix}|0" for b in (benches or names()))


class DataUnavailable(RuntimeError):
    """Benchmark data that cannot be loaded now; the message is one line naming the Hub ids and ``--data-dir``."""


def hub_repo(bench: str, protocol: str = "project") -> str:
    """The Hub copy ``bench`` loads under ``protocol``: the task file's ``AUTHORS_HF_REPO`` where it has one and the
    protocol uses the authors' copies, else its ``HF_REPO``."""
    from eval_tasks.protocols import get

    consts = info(bench)
    return consts.get("AUTHORS_HF_REPO") or consts["HF_REPO"] if get(protocol).sources == "authors" \
        else consts["HF_REPO"]


__all__ = ["DataUnavailable", "base_name", "hub_repo", "info", "names", "paper_scores",
           "task_string", "titles"]
