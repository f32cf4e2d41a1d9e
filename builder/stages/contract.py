"""The stage contract: what one stage file declares, and what the runtime hands its two pure halves.

A stage file declares, in one :class:`StageSpec`:

* the table it reads, by role (``reads``: "source", "question", "short_thought", "long_thought"), which of its
  rows it works on (``select``: a boolean column) and which columns (``input_columns``, plus ``source_columns``
  joined from the run's source by ``image_id``);
* its output table (:class:`builder.records.TableSpec`: schema, sort keys, the column naming its input) and the
  role that table plays for the products;
* its settings section (``settings``: a :class:`ModelConfig` dataclass, the section ``stageN`` of the run
  settings);
* ``requests(items, settings, prompts) -> [Request]``: the model calls of a chunk of ``(input id, row)`` items;
* ``rows(items, answers, settings) -> [row]``: the chunk's records, from what the model answered
  (``answers``: round name -> :class:`Answers`);
* ``summary(rows, settings) -> (counts, dropped)``: its counts for the run's manifest;
* ``follow_ups``: further request rounds on the same chunk (stage 1's re-format), each a :class:`Round`;
* ``presets``: what a named preset (``--preset authors``) sets in its settings section.

The runtime (:mod:`builder.runtime`, :mod:`builder.ray_runner`) reads the input, sends the requests to the
engines, hands the outputs to ``rows`` and writes them; a stage never opens a file or calls a model itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pyarrow as pa

from builder.credentials import refuse_credentials
from builder.engines import load_engine
from builder.engines.base import Request, Sample, SamplingParams
from builder.records import TableSpec, stable_int, tally

Item = tuple[str, dict[str, Any]]  # (input id, the input row the stage reads)


def check(ok: bool, name: str, value: Any, what: str) -> None:
    """A settings check: ``ValueError`` naming the setting and what it must be."""
    if not ok:
        raise ValueError(f"{name} must be {what}, got {value!r}")


@dataclass
class ModelConfig:
    """Which model, through which engine, with which sampling settings: the base of every stage's settings.

    ``engine`` is ``transformers``, ``vllm``, ``openai`` or ``module:Class``; ``engine_options`` go to
    ``load_engine(engine, model, **engine_options)``.
    """

    model: str = ""
    engine: str = "vllm"
    engine_options: dict[str, Any] = field(default_factory=dict)
    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    repetition_penalty: float = 1.0
    max_new_tokens: int = 1024

    def __post_init__(self) -> None:
        check(isinstance(self.model, str), "model", self.model, "a model name or path (a string)")
        check(isinstance(self.engine, str), "engine", self.engine, "an engine name (a string)")
        check(isinstance(self.engine_options, dict), "engine_options", self.engine_options,
              "a mapping of option names to values")
        for name in ("temperature", "top_p", "repetition_penalty"):
            value = getattr(self, name)
            check(isinstance(value, (int, float)) and math.isfinite(value), name, value, "a finite number")
        check(self.n >= 1, "n", self.n, "at least 1")
        check(self.temperature >= 0, "temperature", self.temperature, "at least 0")
        check(0 < self.top_p <= 1, "top_p", self.top_p, "in (0, 1]")
        check(self.top_k >= 0, "top_k", self.top_k, "at least 0 (0: no top-k cut)")
        check(self.repetition_penalty > 0, "repetition_penalty", self.repetition_penalty, "above 0")
        check(self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, "at least 1")
        refuse_credentials(self.engine_options, "engine_options")

    def params(self, *, seed: int | None = None, **extra: Any) -> SamplingParams:
        """These settings as engine sampling parameters (``extra`` overrides, e.g. ``n=1``)."""
        base = dict(n=self.n, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                    repetition_penalty=self.repetition_penalty, max_new_tokens=self.max_new_tokens, seed=seed)
        return SamplingParams(**{**base, **extra})

    def load_engine(self) -> Any:
        """``builder.engines.load_engine(engine, model, **engine_options)`` for this stage."""
        return load_engine(self.engine, self.model, **self.engine_options)


@dataclass(frozen=True)
class Answers:
    """One round's model outputs for a chunk: the requests, in the order the stage made them, the samples the
    engine drew for each, and the engine's model id."""

    requests: list[Request]
    samples: list[list[Sample]]
    model: str

    def first_texts(self) -> list[str]:
        """The first sample's text of each request ("" where the engine gave none)."""
        return [s[0].text if s else "" for s in self.samples]


@dataclass(frozen=True)
class Round:
    """A further round of model calls on a chunk, after the stage's own (stage 1's re-format).

    ``requests(items, answers, settings, prompts)`` gets the answers of the rounds before it; ``model(settings)``
    is the model that answers (an engine equal to the stage's own is the same engine); ``when(settings)``: whether
    the round is made at all. ``name`` keys its answers and its model in the run's manifest."""

    name: str
    requests: Callable[[list[Item], dict[str, Answers], Any, Any], list[Request]]
    model: Callable[[Any], ModelConfig]
    when: Callable[[Any], bool] | None = None  # None: always


@dataclass(frozen=True)
class StageSpec:
    """The one declaration of a stage (see the module docstring); the registry (:mod:`builder.stages`), the
    runtime, the CLI, ``lpt status`` and the products derive everything from it."""

    number: int  # 1, 2, 3: ``lpt stage1``, ``--stages 1,2``, the settings section ``stage1``
    table: TableSpec  # its output: name (the run-directory folder), schema, sort keys, input column
    reads: str  # the role of the table it reads (builder.stages.ROLES)
    settings: type  # its settings section: a ModelConfig dataclass
    requests: Callable[[list[Item], Any, Any], list[Request]]  # (items, settings, prompts)
    rows: Callable[[list[Item], dict[str, Answers], Any], list[dict[str, Any]]]  # (items, answers, settings)
    summary: Callable[[list[dict[str, Any]], Any], tuple[dict[str, int], dict[str, int]]]  # (rows, settings)
    summary_columns: tuple[str, ...]  # the output columns ``summary`` reads (the texts are not read back)
    description: str  # one line for ``--help``
    when_empty: str  # why there is nothing to do when its input has no row it works on
    role: str | None = None  # what its table is to the products (builder.stages.ROLES)
    select: str | None = None  # the boolean input column picking the rows it works on (None: every row)
    input_columns: tuple[str, ...] | None = None  # the input columns it reads (and the keys); None: every column
    source_columns: tuple[str, ...] = ()  # source columns joined onto each input row by its image_id
    follow_ups: tuple[Round, ...] = ()
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)  # preset name -> what it sets in its section

    @property
    def name(self) -> str:
        """Its table's name: the run-directory folder, the module, the seeds' namespace."""
        return self.table.name

    @property
    def section(self) -> str:
        """Its settings section (``stage1`` ...)."""
        return f"stage{self.number}"

    @property
    def aliases(self) -> tuple[str, ...]:
        return (str(self.number), self.section, self.name)

    def settings_of(self, settings: Any) -> ModelConfig:
        """Its section of the run settings."""
        return getattr(settings, self.section)

    def rounds(self, settings: Any) -> list[Round]:
        """The request rounds it makes under ``settings``: its own, named after it, then its follow-ups."""
        own = Round(self.name, lambda items, answers, s, prompts: self.requests(items, s, prompts), self.settings_of)
        return [own, *(r for r in self.follow_ups if r.when is None or r.when(settings))]


@dataclass
class StageSummary:
    """Counts of one stage run (this shard): items in, samples out, parsed, correct, kept, dropped by reason."""

    stage: str
    shard: tuple[int, int] = (0, 1)
    counts: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows
    skipped: dict[str, int] = field(default_factory=dict)  # kind -> inputs skipped (--skip-bad), not retried

    def table(self) -> Any:
        """A rich table of the counts (and the dropped rows by reason)."""
        from rich.table import Table

        i, n = self.shard
        t = Table(title=f"{self.stage} (shard {i}/{n})", show_header=True)
        t.add_column("what")
        t.add_column("count", justify="right")
        for key, value in self.counts.items():
            t.add_row(key.replace("_", " "), str(value))
        for reason, value in sorted(self.dropped.items()):
            t.add_row(f"  filtered: {reason}", str(value))
        for kind, value in sorted(self.skipped.items()):
            t.add_row(f"  skipped: {kind}", str(value))
        return t

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "shard": list(self.shard), **self.counts, "dropped": dict(self.dropped),
                **({"skipped": dict(self.skipped)} if self.skipped else {})}


def request_seed(seed: int, stage: str, *parts: object) -> int:
    """The engine seed of one request: stable, derived from the global seed and the item (31 bits)."""
    return stable_int("request", seed, stage, *parts, bits=31)


def sample_counts(rows: Sequence[dict[str, Any]], schema: pa.Schema,
                  extra: dict[str, int] | None = None) -> tuple[dict[str, int], dict[str, int]]:
    """Counts of a sample-producing stage (rows with ``keep`` / ``drop_reason``): :func:`builder.records.tally`
    of its rows, ``extra`` first; dropped rows by reason."""
    dropped: dict[str, int] = {}
    for r in rows:
        if not r["keep"]:
            dropped[r["drop_reason"]] = dropped.get(r["drop_reason"], 0) + 1
    t = tally(pa.Table.from_pylist(list(rows), schema=schema))
    counts = {**(extra or {}), "samples_out": t["rows"], **{k: t[k] for k in ("parsed", "correct", "kept",
                                                                             "kept_correct")}}
    return counts, dropped


def load_image(path: str, where: str):
    """Open an image as RGB; a missing or unreadable file is an error naming it and the item."""
    from PIL import Image, UnidentifiedImageError

    if not path:
        raise FileNotFoundError(f"{where}: the source row has no image_path")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"{where}: image file {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{where}: image file {path} cannot be read: {e}") from None


__all__ = ["Answers", "Item", "ModelConfig", "Round", "StageSpec", "StageSummary", "check", "load_image",
           "request_seed", "sample_counts"]
