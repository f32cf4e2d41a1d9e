"""Inference engines. ``load_engine(kind, model, **options)`` imports a backend only when asked for."""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import inspect
import os
from pathlib import Path
from typing import Any

from .base import Engine, MissingPackage, PromptTooLong, Request, Sample, SamplingParams, cap_pixels, iter_images

ENGINES = {
    "transformers": "builder.engines.transformers_engine:TransformersEngine",
    "vllm": "builder.engines.vllm_engine:VLLMEngine",
    "openai": "builder.engines.openai_engine:OpenAIEngine",
}


RAY_VLLM = "ray-vllm"
"""The engine kind only the Ray runner serves: ``ray.data.llm``'s vLLM processor (:mod:`builder.ray_runner`)."""


ENTRY_POINT_GROUP = "longperceptualthoughts.engines"
"""Installed packages add engines by name: ``[project.entry-points."longperceptualthoughts.engines"]``,
``name = "package.module:Class"``."""
ALLOW_MODULES_ENV = "LPT_ALLOW_ENGINE_MODULES"
"""Set to 1 (``lpt ... --allow-engine-module`` sets it) to let a setting name an engine as ``module:Class``."""


def registered_engines() -> dict[str, str]:
    """Engine name -> ``module:Class``: the built-in ones and those installed packages declare (entry points)."""
    import importlib.metadata

    found = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return {**found, **ENGINES}  # a package cannot take over a built-in name


def engine_class(kind: str) -> type[Engine]:
    """The engine class registered as ``kind`` (:func:`registered_engines`), or, only where the user allowed it
    (:data:`ALLOW_MODULES_ENV`), the ``module:Class`` that ``kind`` names; its source must define the class on an
    engine base before the module is imported, and what is imported must be a concrete :class:`Engine`."""
    names = registered_engines()
    target = names.get(kind)
    if target is None:
        module, sep, name = kind.partition(":")
        if not sep or not module or not name:
            raise ValueError(f"unknown engine {kind!r}; choose one of {sorted(names)}")
        if os.environ.get(ALLOW_MODULES_ENV) != "1":
            raise ValueError(f"engine {kind!r}: a module:Class engine runs code of your choosing, so it is imported "
                             f"only with --allow-engine-module ({ALLOW_MODULES_ENV}=1); installed engines: "
                             f"{', '.join(sorted(names))}")
        _check_source(kind, module, name)
        target = kind
    module, _, name = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as e:
        raise ValueError(f"engine {kind!r}: module {e.name!r} cannot be imported") from None
    except AttributeError:
        raise ValueError(f"engine {kind!r}: module {module!r} has no {name!r}") from None
    if not (isinstance(cls, type) and issubclass(cls, Engine)):
        raise ValueError(f"engine {kind!r} is not an engine: {target} must name a subclass of "
                         f"builder.engines.Engine")
    if inspect.isabstract(cls):
        raise ValueError(f"engine {kind!r} is abstract ({', '.join(sorted(cls.__abstractmethods__))} not "
                         f"implemented): name a concrete engine")
    return cls


def _check_source(kind: str, module: str, name: str) -> None:
    """Refuse ``module:name`` unless the module's Python source, found without running anything of it or of its
    packages, defines a top-level class ``name`` whose bases include an ``...Engine`` class."""
    spec, path = None, None
    for part in module.split("."):
        spec = importlib.machinery.PathFinder.find_spec(part, path)
        if spec is None:
            raise ValueError(f"engine {kind!r}: module {module!r} cannot be found")
        path = spec.submodule_search_locations
    origin = spec.origin if spec is not None else None
    if not origin or not origin.endswith(".py"):
        raise ValueError(f"engine {kind!r}: {module!r} is not a Python source file, so it cannot be checked")
    try:
        tree = ast.parse(Path(origin).read_bytes(), origin)
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"engine {kind!r}: {origin} cannot be read: {e}") from None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            bases = [ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases]
            if any(b.endswith("Engine") for b in bases):
                return
            raise ValueError(f"engine {kind!r} is not an engine: class {name} in {origin} does not derive from an "
                             f"Engine class (bases: {', '.join(bases) or 'none'})")
    raise ValueError(f"engine {kind!r} is not an engine: {origin} defines no class {name!r}")


def sampler_of(kind: str) -> str | None:
    """The seeded-sampler version (:attr:`Engine.sampler`) of a built-in engine kind, else None."""
    return getattr(engine_class(kind), "sampler", None) if kind in ENGINES else None


def load_engine(kind: str, model: str, **options: Any) -> Engine:
    """Build an engine by name (:func:`engine_class`): ``transformers``, ``vllm``, ``openai``, an installed one."""
    return engine_class(kind)(model, **options)


__all__ = ["ALLOW_MODULES_ENV", "ENGINES", "ENTRY_POINT_GROUP", "RAY_VLLM", "Engine", "MissingPackage", "PromptTooLong",
           "Request", "Sample", "SamplingParams", "cap_pixels", "engine_class", "iter_images", "load_engine",
           "registered_engines", "sampler_of"]
