"""Pipeline settings: dataclasses, the ``paper`` and ``authors`` presets, files and ``--set`` overrides.

Every number lives here and can be changed without code::

    cfg = PipelineConfig.preset("paper")
    cfg = cfg.merge(load_mapping("my.yaml"))              # a YAML/JSON file with any subset of fields
    cfg = cfg.apply_overrides(["stage2.n=10", "stage3.cues=['Wait,']"])

or in one call: ``load_config("paper", files=["my.yaml"], overrides=["stage2.n=10"])``.

``paper`` follows the paper's numbers (docs/method.md); ``authors`` follows the authors' released code
(stage 2 n=10; stage 3 n=5 with the cue "Wait," only; GPT-4o for stage 1 with a GPT-4o-mini re-format call).
Both presets keep the defects of the original code fixed (docs/method.md, "Defects"); the one compatibility
switch that changes the data distribution is ``stage3.substring_bad_word_filter`` (defect 2).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from builder.engines import load_engine
from builder.engines.base import SamplingParams
from builder.method import BAD_WORDS, CUES, DEFAULT_SEED, MAX_PIXELS

@dataclass
class ModelConfig:
    """Which model, through which engine, with which sampling settings.

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
        _check(self.n >= 1, "n", self.n, "at least 1")
        _check(self.temperature >= 0, "temperature", self.temperature, "at least 0")
        _check(0 < self.top_p <= 1, "top_p", self.top_p, "in (0, 1]")
        _check(self.top_k >= 0, "top_k", self.top_k, "at least 0 (0: no top-k cut)")
        _check(self.repetition_penalty > 0, "repetition_penalty", self.repetition_penalty, "above 0")
        _check(self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, "at least 1")
        secret = [k for k in self.engine_options if SECRET.search(k)]
        _check(not secret, "engine_options", secret, "free of credentials: give them through the environment "
               "(OPENAI_API_KEY, HF_TOKEN), they are never written into a run")

    def params(self, *, seed: int | None = None, **extra: Any) -> SamplingParams:
        """These settings as engine sampling parameters (``extra`` overrides, e.g. ``n=1``)."""
        base = dict(n=self.n, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                    repetition_penalty=self.repetition_penalty, max_new_tokens=self.max_new_tokens, seed=seed)
        return SamplingParams(**{**base, **extra})

    def load_engine(self) -> Any:
        """``builder.engines.load_engine(engine, model, **engine_options)`` for this stage."""
        return load_engine(self.engine, self.model, **self.engine_options)


@dataclass
class Stage1Config(ModelConfig):
    """MCQs from descriptions: one generating call per image, then an optional re-formatting call (T=0)."""

    model: str = "Qwen/Qwen2.5-7B-Instruct"
    temperature: float = 0.7
    max_new_tokens: int = 2048
    reformat: bool = True  # second call that rewrites the reply into the strict tagged structure
    reformat_model: str | None = None  # None: the generating engine re-formats too
    reformat_engine: str | None = None  # None: same kind as ``engine``
    reformat_temperature: float = 0.0
    reformat_max_new_tokens: int = 2048

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.reformat_temperature >= 0, "reformat_temperature", self.reformat_temperature, "at least 0")
        _check(self.reformat_max_new_tokens >= 1, "reformat_max_new_tokens", self.reformat_max_new_tokens,
               "at least 1")

    def reformat_model_config(self) -> ModelConfig:
        """The model of the re-formatting call (when ``reformat_model`` is set; else the generating one)."""
        return ModelConfig(model=self.reformat_model or self.model, engine=self.reformat_engine or self.engine,
                           engine_options=self.engine_options, temperature=self.reformat_temperature,
                           max_new_tokens=self.reformat_max_new_tokens)


@dataclass
class Stage2Config(ModelConfig):
    """Simple CoTs from the VLM with a forced ``<think>``."""

    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    n: int = 3
    temperature: float = 0.7
    top_p: float = 0.8
    repetition_penalty: float = 1.05
    max_new_tokens: int = 1024
    max_pixels: int | None = MAX_PIXELS  # cap on an image's area (w*h)
    system_variant: str = "think"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.max_pixels is None or self.max_pixels >= 28 * 28, "max_pixels", self.max_pixels,
               "at least 784 (28×28) or null for no cap")


@dataclass
class Stage3Config(ModelConfig):
    """Thought expansion by the reasoning model, continuing a pre-filled assistant turn after a cue."""

    model: str = "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"
    n: int = 3
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 50
    repetition_penalty: float = 1.05
    max_new_tokens: int = 256
    cues: tuple[str, ...] = CUES
    # "sample": each of the n expansions of a simple thought draws its cue (seeded per expansion);
    # "each": every cue gets n expansions (the authors ran one job per cue).
    cue_mode: str = "sample"
    bad_words: tuple[str, ...] = BAD_WORDS
    generation_bad_words: bool = True  # also block the bad words at generation time
    substring_bad_word_filter: bool = False  # True: upstream's substring rule ("text" in "texture"; defect 2)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(len(self.cues) > 0, "cues", list(self.cues), "a non-empty list")
        _check(self.cue_mode in ("sample", "each"), "cue_mode", self.cue_mode, "'sample' or 'each'")


@dataclass
class PipelineConfig:
    seed: int = DEFAULT_SEED
    chunk_size: int = 64  # inputs per written chunk (a crash loses at most one chunk)
    template_dir: str | None = None  # a folder of *.j2 files overriding the built-in prompts by name
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    stage3: Stage3Config = field(default_factory=Stage3Config)

    def __post_init__(self) -> None:
        _check(self.chunk_size >= 1, "chunk_size", self.chunk_size, "at least 1")

    # ------------------------------------------------------------------------------------------- presets

    @classmethod
    def preset(cls, name: str = "paper") -> "PipelineConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls().merge(PRESETS[name])

    # ------------------------------------------------------------------------------------- (de)serialise

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PipelineConfig":
        return cls().merge(data)

    @classmethod
    def from_file(cls, path: str | Path, base: "PipelineConfig | str | None" = "paper") -> "PipelineConfig":
        """``base`` (a preset name or config; default ``paper``) updated by a YAML/JSON file.

        The file may name a preset itself (``preset: authors``); its other keys then apply on top of that.
        """
        data = load_mapping(path)
        preset = data.pop("preset", None)
        start = PipelineConfig.preset(preset) if preset else (
            PipelineConfig.preset(base) if isinstance(base, str) else (base or cls()))
        try:
            return start.merge(data)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None

    def merge(self, data: Mapping[str, Any]) -> "PipelineConfig":
        """A copy with the (nested) fields of ``data`` replaced; unknown keys are an error naming them."""
        return _merge(self, data, "")

    def apply_overrides(self, overrides: Iterable[str]) -> "PipelineConfig":
        """A copy with ``dotted.key=value`` overrides applied; values are read as YAML (``3``, ``0.7``,
        ``true``, ``[Wait, Hmm]``, ``null``), anything else is a string."""
        cfg = self
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"override must look like key.path=value, got {item!r}")
            try:
                value = yaml.safe_load(raw) if raw.strip() else ""
            except yaml.YAMLError:
                value = raw  # not YAML: take it as a plain string
            nested: dict[str, Any] = {}
            cur = nested
            parts = key.strip().split(".")
            for p in parts[:-1]:
                cur = cur.setdefault(p, {})
            cur[parts[-1]] = value
            try:
                cfg = cfg.merge(nested)
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"override {item!r}: {e}") from None
        return cfg

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")


SECRET = re.compile(r"(?:^|_)(?:api_?key|token|secret|password)(?:$|_)", re.I)  # hf_token, api_key; not max_num_batched_tokens


def _check(ok: bool, name: str, value: Any, what: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {what}, got {value!r}")


def _merge(obj: Any, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise TypeError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise KeyError(f"unknown setting {prefix + key!r}; known: {sorted(fields)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            changes[key] = _merge(current, value, prefix + key + ".")
        elif isinstance(current, tuple):
            if isinstance(value, str):
                value = [value]
            changes[key] = tuple(value)
        elif isinstance(current, bool) and not isinstance(value, bool):
            raise ValueError(f"{prefix + key} must be true or false, got {value!r}")
        elif isinstance(current, (int, float)) and not isinstance(current, bool) and value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{prefix + key} must be a number, got {value!r}")
            if isinstance(current, int) and not float(value).is_integer():
                raise ValueError(f"{prefix + key} must be a whole number, got {value!r}")
            changes[key] = type(current)(value)
        else:
            changes[key] = value
    try:
        return dataclasses.replace(obj, **changes)
    except ValueError as e:  # a range check of the section: name the setting with its full path
        raise ValueError(f"{prefix}{e}") from None


def load_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON file as a dict (YAML is a superset of JSON); errors name the file."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {p} does not exist") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{p}: not valid YAML/JSON: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{p}: the top level must be a mapping of settings, got {type(data).__name__}")
    return data


def load_config(preset: str = "paper", files: Iterable[str | Path] = (), overrides: Iterable[str] = (),
                engine: str | None = None) -> PipelineConfig:
    """Preset, then each file in order, then ``engine`` for every stage, then ``key=value`` overrides."""
    cfg = PipelineConfig.preset(preset)
    for f in files:
        cfg = PipelineConfig.from_file(f, base=cfg)
    engine_overrides = [f"stage{k}.engine={engine}" for k in (1, 2, 3)] if engine else []
    return cfg.apply_overrides([*engine_overrides, *overrides])


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's settings (its appendix F.1; docs/method.md).
    "paper": {},
    # The authors' released code (its newest version): GPT-4o writes, GPT-4o-mini re-formats
    # at T=0; stage 2 n=10; stage 3 T 0.7 / top_p 0.8 / top_k 50, n=5, cue "Wait," only.
    "authors": {
        "stage1": {"model": "gpt-4o-2024-08-06", "engine": "openai",
                   "reformat_model": "gpt-4o-mini-2024-07-18", "reformat_engine": "openai"},
        "stage2": {"n": 10},
        "stage3": {"n": 5, "cues": ["Wait,"]},
    },
}

__all__ = ["ModelConfig", "PRESETS", "PipelineConfig",
           "Stage1Config", "Stage2Config", "Stage3Config", "load_config", "load_mapping"]
