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
from builder.stages import register
from builder.stages.contract import ModelConfig, StageSpec, request_seed, sample_counts

NAME = "rewrite"
INPUT = ("sample_id", "mcq_id", "image_id", "long_thought", "answer", "pred_index", "correct")
SCHEMA = pa.schema([("expansion_id", pa.string()), ("source_expansion_id", pa.string()), ("sample_id", pa.string()),
                    ("mcq_id", pa.string()), ("image_id", pa.string()), ("long_thought", pa.string()),
                    ("answer", pa.string()), ("pred_index", pa.int32()), ("correct", pa.bool_()),
                    ("keep", pa.bool_()), ("drop_reason", pa.string()), ("model", pa.string()),
                    ("seed", pa.int64())])


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
        out.append({"expansion_id": content_id(key, NAME, rewritten), "source_expansion_id": key,
                    **{c: row[c] for c in ("sample_id", "mcq_id", "image_id", "answer", "pred_index", "correct")},
                    "long_thought": rewritten or row["long_thought"], "keep": True,
                    "drop_reason": "", "model": answered.model, "seed": req.params.seed})
    return out


def summary(rows: list[dict[str, Any]], settings: Any) -> tuple[dict[str, int], dict[str, int]]:
    counts, dropped = sample_counts([{**r, "parsed": True} for r in rows], SCHEMA.append(pa.field("parsed", pa.bool_())))
    return counts, dropped


SPEC = register(StageSpec(
    4, TableSpec(NAME, SCHEMA, ("sample_id", "expansion_id"), input_column="source_expansion_id"),
    reads="long_thought", settings=RewriteSettings, requests=requests, rows=rows, summary=summary,
    summary_columns=("correct", "keep", "drop_reason"), description="rewrites of the kept long thoughts",
    when_empty="stage 3 kept no long thought", role="long_thought", select="keep", input_columns=INPUT))
