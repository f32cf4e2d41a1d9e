"""A fourth stage from one file: a model rewrites each kept long thought; the rewrites become the long thoughts.

Registered on import (``lpt --plugin stage4_rewrite ...``); it reads the table of role "long_thought" (stage 3's
expansions) and provides that role itself, so the sets and the export take its rows from then on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from builder.engines.base import Request
from builder.records import TableSpec, content_id
from builder.stages import register, table_for
from builder.stages.contract import ModelConfig, StageSpec, request_seed, sample_counts

NAME = "rewrite"


def long_thought_schema() -> pa.Schema:
    """The schema of the table that plays "long_thought" before this stage registers (stage 3's)."""
    from builder.records import TABLES

    return TABLES[table_for("long_thought")].schema

# a long thought's columns (what the products read of the role), from stage 3's declaration, plus the one it rewrote
LONG = long_thought_schema()
INPUT = tuple(LONG.names)
SCHEMA = pa.schema([*LONG, pa.field("source_expansion_id", pa.string())])


@dataclass
class RewriteSettings(ModelConfig):
    """Stage 4: the rewriting model."""

    model: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    max_new_tokens: int = 64
    instruction: str = "Rewrite this reasoning more clearly, keeping its conclusion:"


def requests(items: list, settings: Any, prompts: Any) -> list[Request]:
    cfg = settings.stage4
    return [Request([{"role": "user", "content": f"{cfg.instruction}\n\n{row['long_thought']}"}],
                    params=cfg.params(seed=request_seed(settings.seed, NAME, key), n=1)) for key, row in items]


def rows(items: list, answers: dict, settings: Any) -> list[dict[str, Any]]:
    answered = answers[NAME]
    out = []
    for (key, row), req, text in zip(items, answered.requests, answered.first_texts()):
        rewritten = text.strip()
        out.append({**{c: row[c] for c in INPUT}, "expansion_id": content_id(key, NAME, rewritten),
                    "source_expansion_id": key, "long_thought": rewritten or row["long_thought"],
                    "model": answered.model, "seed": req.params.seed})
    return out


def summary(rows: list[dict[str, Any]], settings: Any) -> tuple[dict[str, int], dict[str, int]]:
    return sample_counts(rows, SCHEMA)


SPEC = register(StageSpec(
    4, TableSpec(NAME, SCHEMA, ("sample_id", "expansion_id"), input_column="source_expansion_id"),
    reads="long_thought", settings=RewriteSettings, requests=requests, rows=rows, summary=summary,
    summary_columns=("correct", "keep", "drop_reason"), description="rewrites of the kept long thoughts",
    when_empty="stage 3 kept no long thought", role="long_thought", select="keep", input_columns=INPUT))
