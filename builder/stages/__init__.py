"""The stage registry: every stage is one file that ends with its :class:`StageSpec` (``SPEC``), registered here.

* :mod:`builder.stages.mcq` (stage 1, reads ``source``, writes ``mcq``, role ``question``): MCQs from
  descriptions (text LLM);
* :mod:`builder.stages.simple_cot` (stage 2, reads the questions, writes ``simple_cot``, role ``short_thought``):
  simple CoTs (VLM);
* :mod:`builder.stages.expansion` (stage 3, reads the short thoughts, writes ``expansion``, role
  ``long_thought``): thought expansion (reasoning LLM).

Everything else derives from :data:`STAGES`: the run directory's tables (:data:`TABLES`), the settings sections
(:class:`builder.settings.PipelineConfig`), the runtime, the CLI (``lpt stageN``, ``--stages``), ``lpt status``
and the products, which ask :func:`table_for` a role, never a table's name.

A stage from outside the package: a module that calls :func:`register` with its ``SPEC`` (or whose ``SPEC`` an
entry point of the group :data:`PLUGIN_GROUP` names), loaded by :func:`load_stage_plugins` (``lpt --plugin
MODULE``).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from builder import plugins
from builder.records import SOURCE_TABLE, TABLES

from . import expansion, mcq, simple_cot
from .contract import Answers, ModelConfig, Round, StageSpec, StageSummary

PLUGIN_GROUP = "longperceptualthoughts.stages"
ROLES = ("source", "question", "short_thought", "long_thought")
"""What a table is to the products (sets, export, stats, view, relabel, demo): the run's captioned images, the MCQs,
the simple thoughts, the long thoughts. A stage provides at most one role; a later stage providing the same role
(e.g. a stage that rewrites long thoughts) takes it over."""

STAGES: list[StageSpec] = []
"""The registered stages, in pipeline order (by number); updated in place by :func:`register`."""

log = logging.getLogger(__name__)


def register(spec: StageSpec) -> StageSpec:
    """Add a stage to the registry (again: replaced). Its number must be new, its input role provided by an
    earlier stage, its role one of :data:`ROLES`."""
    others = [s for s in STAGES if s.name != spec.name]
    clash = [s for s in others if s.number == spec.number]
    if clash:
        raise ValueError(f"stage {spec.name}: number {spec.number} is already {clash[0].name}'s")
    for role in (spec.reads, spec.role):
        if role is not None and role not in ROLES:
            raise ValueError(f"stage {spec.name}: unknown role {role!r}; use one of {', '.join(ROLES)}")
    STAGES[:] = sorted([*others, spec], key=lambda s: s.number)
    try:
        input_of(spec)  # its input is provided by a stage before it (or is the source)
    except ValueError:
        STAGES[:] = others
        raise
    TABLES.clear()
    TABLES.update({SOURCE_TABLE.name: SOURCE_TABLE, **{s.name: s.table for s in STAGES}})
    return spec


def unregister(name: str) -> None:
    """Take a registered stage out again (a test that registered one)."""
    STAGES[:] = [s for s in STAGES if s.name != name]
    TABLES.pop(name, None)


def table_for(role: str) -> str:
    """The run-directory table that plays ``role`` (:data:`ROLES`): the last registered stage providing it."""
    if role not in ROLES:
        raise ValueError(f"unknown table role {role!r}; use one of {', '.join(ROLES)}")
    if role == "source":
        return SOURCE_TABLE.name
    return next(s.name for s in reversed(STAGES) if s.role == role)


def input_of(spec: StageSpec) -> str:
    """The table ``spec`` reads: the last stage before it that provides its role (the source for "source")."""
    if spec.reads == "source":
        return SOURCE_TABLE.name
    before = [s for s in STAGES if s.number < spec.number and s.role == spec.reads]
    if not before:
        raise ValueError(f"stage {spec.name} reads {spec.reads!r}, which no stage before it provides")
    return before[-1].name


def stage_before(spec: StageSpec) -> StageSpec | None:
    """The stage whose table ``spec`` reads (None: it reads the source)."""
    table = input_of(spec)
    return next((s for s in STAGES if s.name == table), None)


def get_stage(name: str | int) -> StageSpec:
    """A stage by any of its names: ``1`` / ``stage1`` / ``mcq``, ``2`` / ``stage2`` / ``simple_cot``, ..."""
    key = str(name).strip().lower()
    for spec in STAGES:
        if key in spec.aliases:
            return spec
    raise ValueError(f"unknown stage {name!r}; use one of {', '.join(s.section for s in STAGES)} "
                     f"(or {', '.join(str(s.number) for s in STAGES)}, {', '.join(s.name for s in STAGES)})")


def load_stage_plugins(modules: Iterable[str] = ()) -> list[str]:
    """Register the stages of installed plugin packages (entry points of :data:`PLUGIN_GROUP`, each naming a
    ``StageSpec``) and of the modules named (each registers its stage on import, or has a ``SPEC``); returns the
    names of the stages added."""
    before = {s.name for s in STAGES}
    plugins.load_plugins(PLUGIN_GROUP, modules, _use, "stage", of_module=lambda module: getattr(module, "SPEC", None))
    return [s.name for s in STAGES if s.name not in before]


def _use(obj: Any) -> None:
    if isinstance(obj, StageSpec) and obj not in STAGES:
        register(obj)


for _spec in (mcq.SPEC, simple_cot.SPEC, expansion.SPEC):
    register(_spec)

__all__ = ["Answers", "ModelConfig", "PLUGIN_GROUP", "ROLES", "Round", "STAGES", "StageSpec", "StageSummary",
           "TABLES", "get_stage", "input_of", "load_stage_plugins", "register", "stage_before", "table_for",
           "unregister"]
