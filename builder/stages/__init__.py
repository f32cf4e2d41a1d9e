"""The synthesis stages, declared once each. Every stage module ends with its :class:`StageSpec` (``SPEC``):
number, name (its run-directory table and its module), input table, run function. The runner, the CLI,
``lpt status``, the demo and the card all derive from :data:`STAGES`.

* :mod:`builder.stages.mcq` (stage 1, ``source`` -> ``mcq``): MCQs from descriptions (text LLM);
* :mod:`builder.stages.simple_cot` (stage 2, ``mcq`` -> ``simple_cot``): simple CoTs (VLM);
* :mod:`builder.stages.expansion` (stage 3, ``simple_cot`` -> ``expansion``): thought expansion (reasoning LLM).

Adding a stage: a new module with ``run`` and ``SPEC``, its record schema in :mod:`builder.records`, its
settings section in :mod:`builder.settings`, and one entry below.
"""

from __future__ import annotations

from . import expansion, mcq, simple_cot
from .common import StageSpec, StageSummary

STAGES: tuple[StageSpec, ...] = (mcq.SPEC, simple_cot.SPEC, expansion.SPEC)


SOURCE_TABLE = "source"  # the run's captioned images: written by the source loader, not by a stage
ROLES = ("source", "question", "short_thought", "long_thought")
"""What a table is to the products (sets, export, stats, view, relabel, demo): the run's captioned images, the MCQs,
the simple thoughts, the long thoughts. A stage provides at most one role; a later stage providing the same role
(e.g. a stage that rewrites long thoughts) takes it over."""


def table_for(role: str) -> str:
    """The run-directory table that plays ``role`` (:data:`ROLES`): the last registered stage providing it."""
    if role not in ROLES:
        raise ValueError(f"unknown table role {role!r}; use one of {', '.join(ROLES)}")
    if role == "source":
        return SOURCE_TABLE
    return next(s.name for s in reversed(STAGES) if s.role == role)


def get_stage(name: str | int) -> StageSpec:
    """A stage by any of its names: ``1`` / ``stage1`` / ``mcq``, ``2`` / ``stage2`` / ``simple_cot``, ..."""
    key = str(name).strip().lower()
    for spec in STAGES:
        if key in spec.aliases:
            return spec
    raise ValueError(f"unknown stage {name!r}; use one of {', '.join(s.section for s in STAGES)} "
                     f"(or {', '.join(str(s.number) for s in STAGES)}, {', '.join(s.name for s in STAGES)})")


__all__ = ["ROLES", "SOURCE_TABLE", "STAGES", "table_for", "StageSpec", "StageSummary", "get_stage"]
