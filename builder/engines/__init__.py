"""Inference engines. ``load_engine(kind, model, **options)`` imports a backend only when asked for."""

from __future__ import annotations

import importlib
from typing import Any

from .base import Engine, Request, Sample, SamplingParams, cap_pixels, iter_images

ENGINES = {
    "transformers": "builder.engines.transformers_engine:TransformersEngine",
    "vllm": "builder.engines.vllm_engine:VLLMEngine",
    "openai": "builder.engines.openai_engine:OpenAIEngine",
}


def load_engine(kind: str, model: str, **options: Any) -> Engine:
    """Build an engine by name: ``transformers``, ``vllm`` or ``openai`` (or ``module:Class``)."""
    target = ENGINES.get(kind, kind)
    if ":" not in target:
        raise ValueError(f"unknown engine {kind!r}; choose one of {sorted(ENGINES)} or give 'module:Class'")
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)(model, **options)


__all__ = ["ENGINES", "Engine", "Request", "Sample", "SamplingParams", "cap_pixels", "iter_images", "load_engine"]
