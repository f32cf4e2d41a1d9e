"""The three synthesis stages. Each module has ``run(run, engine, config, *, shard=(i, n), progress=True,
chunk_size=None) -> StageSummary`` and reads the previous stage from the run directory:

* :mod:`builder.stages.mcq` (stage 1, ``source`` -> ``mcq``): MCQs from descriptions (text LLM);
* :mod:`builder.stages.simple_cot` (stage 2, ``mcq`` -> ``simple_cot``): simple CoTs (VLM);
* :mod:`builder.stages.expand` (stage 3, ``simple_cot`` -> ``expansion``): thought expansion (reasoning LLM).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .common import StageSummary

# stage name -> (module, the run-directory stage it writes, the config section it uses)
STAGES: dict[str, tuple[str, str, str]] = {
    "stage1": ("builder.stages.mcq", "mcq", "stage1"),
    "stage2": ("builder.stages.simple_cot", "simple_cot", "stage2"),
    "stage3": ("builder.stages.expand", "expansion", "stage3"),
}


def stage_module(name: str) -> ModuleType:
    """The module of a stage by name: ``stage1``/``1``/``mcq``, ``stage2``/``2``/``simple_cot``,
    ``stage3``/``3``/``expansion``/``expand``."""
    aliases = {"1": "stage1", "mcq": "stage1", "2": "stage2", "simple_cot": "stage2", "3": "stage3",
               "expansion": "stage3", "expand": "stage3"}
    key = aliases.get(str(name), str(name))
    if key not in STAGES:
        raise ValueError(f"unknown stage {name!r}; choose one of {sorted(STAGES)}")
    return importlib.import_module(STAGES[key][0])


__all__ = ["STAGES", "StageSummary", "stage_module"]
