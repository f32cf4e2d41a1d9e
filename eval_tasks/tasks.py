"""All LPT benchmarks as one lighteval custom-tasks module: ``--custom-tasks eval_tasks.tasks``.

Each benchmark is its own task file under :mod:`eval_tasks.benchmarks` (think prompt; ``_direct`` for the
direct-answer prompt, e.g. ``lpt_vstar_direct``); this module gathers them. A plain ``import`` has no side effect:
``TASKS_TABLE`` is built when lighteval asks for it, reading the ``LPT_*`` variables (``lighteval custom``'s way
in: ``LPT_EVAL_DATA_DIR``, ``LPT_PROTOCOL`` = ``authors`` (default) or ``project``) and applying the offline fixes
of :mod:`eval_tasks._offline` then.

Local copies: with ``LPT_EVAL_DATA_DIR`` set (``lpt eval --data-dir``), a folder ``$LPT_EVAL_DATA_DIR/<task>``
(``<task>`` without ``_direct``) replaces the Hub dataset. It is read with ``datasets.load_dataset(folder)``, so a
snapshot of the Hub repository (``hf download <repo> --repo-type dataset --local-dir …``) works as is, as does
any folder with data files named after the split (``test.jsonl``, ``val.parquet``, ``train-*.parquet`` …). Image
paths (V*, MME-RealWorld JSON) are resolved relative to that folder.

``make_tasks(data_dir)`` builds the table for another data folder (tests, ``lpt eval --data-dir``).
"""

from __future__ import annotations

import importlib
import os
import types
from typing import Any

from eval_tasks import catalog
from eval_tasks._offline import check_data
from eval_tasks.catalog import DataUnavailable, base_name, task_string
from eval_tasks.protocols import DEFAULT_PROTOCOL

DATA_DIR_ENV = "LPT_EVAL_DATA_DIR"
PROTOCOL_ENV = "LPT_PROTOCOL"
VARIANTS = ("think", "direct")


def module(bench: str) -> types.ModuleType:
    """The task file of ``bench`` (imports lighteval)."""
    return importlib.import_module(catalog.info(bench)["module"])


def make_task(bench: str, variant: str = "think", data_dir: str | os.PathLike | None = None,
              max_pixels: int | None = None, protocol: str = DEFAULT_PROTOCOL, max_rows: int | None = None) -> Any:
    """The lighteval config of one benchmark × prompt variant under ``protocol``; a local copy in
    ``data_dir/<bench>`` replaces the Hub dataset; images are capped at ``max_pixels`` area (None:
    ``LPT_MAX_PIXELS``, else 512·512); ``max_rows`` lets a task file that streams stop early (``--max-samples``).
    Applies the offline fixes of :mod:`eval_tasks._offline` (the table is about to be used)."""
    from eval_tasks._offline import prepare_lighteval

    prepare_lighteval()
    return module(bench).task(variant, data_dir=data_dir, max_pixels=max_pixels, protocol=protocol,
                              max_rows=max_rows)


def make_tasks(data_dir: str | os.PathLike | None = None, variants: tuple[str, ...] = VARIANTS,
               max_pixels: int | None = None, protocol: str = DEFAULT_PROTOCOL,
               max_rows: int | None = None) -> list:
    """All task configs (every benchmark × variant), reading local copies from ``data_dir`` where present."""
    return [make_task(b, v, data_dir, max_pixels, protocol, max_rows) for v in variants for b in catalog.names()]


def tasks_module(data_dir: str | os.PathLike | None = None, max_pixels: int | None = None,
                 protocol: str = DEFAULT_PROTOCOL, max_rows: int | None = None) -> types.ModuleType:
    """A module object holding ``TASKS_TABLE`` for ``data_dir`` (lighteval accepts it as custom tasks)."""
    mod = types.ModuleType("eval_tasks.tasks_for_data_dir")
    mod.TASKS_TABLE = make_tasks(data_dir, max_pixels=max_pixels, protocol=protocol, max_rows=max_rows)
    return mod


def task_name(bench: str, variant: str = "think") -> str:
    return bench if variant == "think" else f"{bench}_{variant}"


def __getattr__(name: str) -> Any:
    """``TASKS_TABLE`` on demand (what lighteval reads from a custom-tasks module)."""
    if name == "TASKS_TABLE":
        return make_tasks(os.environ.get(DATA_DIR_ENV), protocol=os.environ.get(PROTOCOL_ENV) or DEFAULT_PROTOCOL)
    if name == "BENCHMARKS":
        return {b: catalog.info(b) for b in catalog.names()}
    if name == "PAPER_QWEN25_VL_7B":
        return catalog.paper_scores()
    if name == "TITLES":
        return catalog.titles()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DataUnavailable", "base_name", "check_data", "make_task", "make_tasks", "task_name", "task_string",
           "tasks_module"]
