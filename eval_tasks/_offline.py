"""Offline friction of lighteval 0.13.0, handled here so that users never meet it.

1. Loading lighteval's task registry imports ``lighteval/tasks/tasks/tiny_benchmarks.py``, whose metric objects
   ``requests.get`` ``tinyBenchmarks.pkl`` from GitHub when the file is missing next to the module, and crash
   without a network. lighteval 0.13.0 never reads that downloaded file (its scorer opens a different, relative
   path), so an empty stub is enough: :func:`prepare_lighteval` creates one when it is missing.
2. Some built-in task modules call ``nltk.download("punkt")`` on import; offline this prints long errors.
   With ``HF_HUB_OFFLINE`` set, :func:`prepare_lighteval` makes ``nltk.download`` a quiet no-op returning False.

The version pins (``huggingface_hub<2``, ``xxhash<4``) live in pyproject's ``eval`` extra.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

_done = False


def tiny_benchmarks_path() -> Path | None:
    """Where lighteval looks for ``tinyBenchmarks.pkl`` (None when lighteval is not installed)."""
    spec = importlib.util.find_spec("lighteval")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "tasks" / "tasks" / "tinyBenchmarks.pkl"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def prepare_lighteval() -> None:
    """Idempotent: stub ``tinyBenchmarks.pkl`` if missing; silence nltk downloads when offline."""
    global _done
    if _done:
        return
    path = tiny_benchmarks_path()
    if path is not None and not path.exists():
        try:
            path.touch()
            logger.info("created an empty %s (lighteval 0.13 fetches it at registry load, never reads it)", path)
        except OSError as e:  # read-only site-packages: say what to do
            logger.warning("cannot create %s (%s); lighteval will try to download it. Create it by hand: "
                           "touch %s", path, e, path)
    if offline():
        try:
            import nltk
        except ImportError:  # pragma: no cover - lighteval depends on nltk
            pass
        else:
            def _no_download(*args, **kwargs) -> bool:
                return False

            nltk.download = _no_download
    _done = True
