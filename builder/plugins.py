"""How a plugin reaches the package: an installed package's entry points, or a module named on the command line
(``lpt --plugin MODULE``). One loop for the stage and dataset-config registries."""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)


def load_plugins(group: str, modules: Iterable[str], use: Callable[[Any], None], what: str,
                 of_module: Callable[[Any], Any] = lambda module: module) -> None:
    """``use`` what each entry point of ``group`` names (a broken one is logged, naming it, and skipped), then
    ``use(of_module(module))`` for each module named (one that cannot be imported is a one-line error)."""
    for ep in importlib.metadata.entry_points(group=group):
        try:
            use(ep.load())
        except Exception as e:  # noqa: BLE001 - a broken plugin must not break the package; it is named
            log.warning("%s plugin %s (%s) could not be loaded: %s: %s", what, ep.name, ep.value, type(e).__name__, e)
    for name in modules:
        try:
            use(of_module(importlib.import_module(name)))
        except ImportError as e:
            raise ValueError(f"--plugin {name}: cannot be imported ({e})") from None


__all__ = ["load_plugins"]
