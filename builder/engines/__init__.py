"""Inference engines. ``load_engine(kind, model, **options)`` imports a backend only when asked for."""

from __future__ import annotations

import importlib
from typing import Any

from .base import Engine, MissingPackage, Request, Sample, SamplingParams, cap_pixels, iter_images

ENGINES = {
    "transformers": "builder.engines.transformers_engine:TransformersEngine",
    "vllm": "builder.engines.vllm_engine:VLLMEngine",
    "openai": "builder.engines.openai_engine:OpenAIEngine",
}


RAY_VLLM = "ray-vllm"
"""The engine kind only the Ray runner serves: ``ray.data.llm``'s vLLM processor (:mod:`builder.ray_runner`)."""


def engine_class(kind: str) -> type[Engine]:
    """The engine class named ``transformers``, ``vllm``, ``openai`` or ``module:Class``; anything that is not a
    subclass of :class:`Engine` is refused before it is called."""
    target = ENGINES.get(kind, kind)
    module, sep, name = target.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"unknown engine {kind!r}; choose one of {sorted(ENGINES)} or give 'module:Class'")
    try:
        cls = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as e:
        raise ValueError(f"engine {kind!r}: module {e.name!r} cannot be imported") from None
    except AttributeError:
        raise ValueError(f"engine {kind!r}: module {module!r} has no {name!r}") from None
    if not (isinstance(cls, type) and issubclass(cls, Engine)):
        raise ValueError(f"engine {kind!r} is not an engine: {target} must name a subclass of "
                         f"builder.engines.Engine")
    return cls


def load_engine(kind: str, model: str, **options: Any) -> Engine:
    """Build an engine by name: ``transformers``, ``vllm`` or ``openai`` (or ``module:Class``)."""
    return engine_class(kind)(model, **options)


__all__ = ["ENGINES", "RAY_VLLM", "Engine", "MissingPackage", "engine_class", "Request", "Sample", "SamplingParams", "cap_pixels", "iter_images", "load_engine"]
