"""The engines a run holds: :class:`EngineCache` keeps a stage's engines while the next stage needs the same ones."""

from __future__ import annotations

import gc
import json
from collections.abc import Sequence
from typing import Any


class EngineCache:
    """The engines a stage needs, kept while the next stage needs the same ones (same engine kind, model and
    options) and closed otherwise before new ones load (two big models rarely fit on one GPU)."""

    def __init__(self) -> None:
        self.engines: dict[str, Any] = {}

    @staticmethod
    def _key(model_cfg: Any) -> str:
        return json.dumps([model_cfg.engine, model_cfg.model, model_cfg.engine_options], sort_keys=True, default=str)

    def get_all(self, models: Sequence[Any]) -> list[Any]:
        """One engine per model config, in order; engines no longer asked for are closed first."""
        keys = [self._key(m) for m in models]
        for key in [k for k in self.engines if k not in keys]:
            _close(self.engines.pop(key))
        for key, model_cfg in zip(keys, models):
            if key not in self.engines:
                self.engines[key] = model_cfg.load_engine()
        return [self.engines[k] for k in keys]

    def close(self) -> None:
        for engine in self.engines.values():
            _close(engine)
        self.engines.clear()


def _close(engine: Any) -> None:
    close = getattr(engine, "close", None)
    if callable(close):
        close()
    del engine
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


__all__ = ["EngineCache"]
