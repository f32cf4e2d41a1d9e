"""Run settings: the run-wide ones, one section per registered stage, the ``paper`` and ``authors`` presets, files
and ``--set`` overrides.

Each stage declares its section's dataclass in its own file (``StageSpec.settings``); :class:`PipelineConfig`
holds one section per registered stage (``stage1``, ``stage2`` ...). Every number can be changed without code::

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
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from builder.method import BAD_WORDS, DEFAULT_SEED  # noqa: F401  (BAD_WORDS: read from here by the benchmarks)
from builder.credentials import refuse_credentials
from builder.prompts import WORDINGS, Prompts
from builder.stages import STAGES
from builder.stages.contract import ModelConfig, check as _check

_TOP = ("seed", "chunk_size", "template_dir", "prompts")  # the run-wide settings; the stage sections follow them


class PipelineConfig:
    """The run settings: ``seed``, ``chunk_size`` (inputs per written chunk: a crash loses at most one chunk),
    ``template_dir`` (a folder of *.j2 files overriding the built-in prompts by name), ``prompts`` (whose words:
    ``project`` or ``authors``, read from the authors' published files), and one section per
    registered stage (``stage1`` ...: that stage's settings dataclass, :attr:`StageSpec.settings`)."""

    def __init__(self, seed: int = DEFAULT_SEED, chunk_size: int = 64, template_dir: str | None = None,
                 prompts: str = "project", **sections: Any) -> None:
        self.seed, self.chunk_size, self.template_dir, self.prompts = seed, chunk_size, template_dir, prompts
        known = {spec.section: spec.settings for spec in STAGES}
        unknown = sorted(set(sections) - set(known))
        if unknown:
            raise TypeError(f"unknown settings section {unknown[0]!r}; known: {sorted(known)}")
        self.sections = {name: sections.get(name) or cls() for name, cls in known.items()}
        _check(self.chunk_size >= 1, "chunk_size", self.chunk_size, "at least 1")
        _check(self.prompts in WORDINGS, "prompts", self.prompts, f"one of {', '.join(WORDINGS)}")
        _check(self.template_dir is None or isinstance(self.template_dir, str), "template_dir", self.template_dir,
               "a folder path (a string) or null")
        refuse_credentials(self.to_dict(), "settings")  # anywhere in the tree: keys, token values, URL user-info

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        if name.startswith("stage") and name[5:].isdigit() and "sections" in self.__dict__:  # a section registered
            spec = next((s for s in STAGES if s.section == name), None)  # after these settings were made
            if spec is not None:
                return sections.setdefault(name, spec.settings())
        raise AttributeError(f"{type(self).__name__} has no setting {name!r}")

    def make_prompts(self) -> Prompts:
        """The prompts these settings render: ``template_dir``'s files over the ``prompts`` wording (``project``:
        ours; ``authors``: the authors' words, :mod:`builder.prompts.authors`)."""
        return Prompts(self.template_dir, self.prompts)

    def field_names(self) -> list[str]:
        """Its settings' names: the run-wide ones, then the stage sections in pipeline order."""
        return [*_TOP, *(spec.section for spec in STAGES)]

    def replace(self, **changes: Any) -> "PipelineConfig":
        """A copy with ``changes`` (top-level settings or whole sections) applied."""
        values = {name: getattr(self, name) for name in self.field_names()}
        return PipelineConfig(**{**values, **changes})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PipelineConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"PipelineConfig({', '.join(f'{k}={getattr(self, k)!r}' for k in self.field_names())})"

    # ------------------------------------------------------------------------------------------- presets

    @classmethod
    def preset(cls, name: str = "paper") -> "PipelineConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls().merge(preset_values(name))

    # ------------------------------------------------------------------------------------- (de)serialise

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps({name: dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
                                      for name in self.field_names() for value in [getattr(self, name)]}))

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


def _merge(obj: Any, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise TypeError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    names = obj.field_names() if isinstance(obj, PipelineConfig) else [f.name for f in dataclasses.fields(obj)]
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            raise KeyError(f"unknown setting {prefix + key!r}; known: {sorted(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            changes[key] = _merge(current, value, prefix + key + ".")
        else:
            changes[key] = _coerce(current, value, prefix + key)
    try:
        return obj.replace(**changes) if isinstance(obj, PipelineConfig) else dataclasses.replace(obj, **changes)
    except ValueError as e:  # a range check of the section: name the setting with its full path
        raise ValueError(f"{prefix}{e}") from None


def _coerce(current: Any, value: Any, name: str) -> Any:
    """``value`` for a setting whose value is now ``current``: a tuple from a list (or one string), a bool only
    from a bool, a number of the same type (a whole one for an int); anything else as it is."""
    if isinstance(current, tuple):
        items = tuple([value] if isinstance(value, str) else value) if isinstance(value, (str, list, tuple)) else None
        if items is None or (current and all(isinstance(c, str) for c in current)
                             and not all(isinstance(v, str) for v in items)):
            raise ValueError(f"{name} must be a list of strings, got {value!r}")
        return items
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if isinstance(current, (int, float)) and value is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if isinstance(current, int) and not float(value).is_integer():
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        return type(current)(value)
    return value


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
    engine_overrides = [f"{spec.section}.engine={engine}" for spec in STAGES] if engine else []
    return cfg.apply_overrides([*engine_overrides, *overrides])


PRESETS: dict[str, str] = {
    "paper": "the paper's settings (its appendix F.1; docs/method.md): each section's defaults",
    "authors": "the authors' released code (its newest version): each stage's ``presets['authors']``",
}
"""The presets by name; a stage declares what a preset changes in its section (``StageSpec.presets``)."""


PRESET_WORDING = {"authors": "authors"}
"""The prompt wording a preset implies (the ``authors`` preset speaks the authors' words); others keep ours."""


def preset_values(name: str) -> dict[str, Any]:
    """The settings preset ``name`` changes: its prompt wording, and per section its stage's ``presets[name]``."""
    top = {"prompts": PRESET_WORDING[name]} if name in PRESET_WORDING else {}
    return {**top, **{spec.section: dict(spec.presets[name]) for spec in STAGES if name in spec.presets}}


__all__ = ["ModelConfig", "PRESETS", "PipelineConfig", "load_config", "load_mapping", "preset_values"]
