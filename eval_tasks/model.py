"""A lighteval custom model for VLMs (and text LLMs) on top of :mod:`builder.engines`.

Use with ``lighteval custom <model id or path> <path of this file> "<tasks>" --custom-tasks eval_tasks.tasks``
or through ``lpt eval``. ``lpt eval`` (and :func:`eval_tasks.cli.run_eval`) pass the options to the model as
arguments (``LPTEngineModel(config, settings=engine_settings(...))``). lighteval's ``CustomModelConfig`` carries
only the model name, so under ``lighteval custom`` the other options come from the environment:

=================== ===================== ============================================================
variable            default               meaning
=================== ===================== ============================================================
``LPT_ENGINE``      ``auto``              ``transformers`` | ``vllm`` | ``auto`` (vLLM when it and a GPU are
                                          present, else transformers)
``LPT_MAX_PIXELS``  ``262144`` (512·512)   cap on each image's area
``LPT_DTYPE``       engine's default      e.g. ``bfloat16``, ``float16``
``LPT_BATCH_SIZE``  engine's default      requests per batch (transformers engine)
``LPT_TEMPERATURE`` ``0``                 0 = greedy (the paper)
``LPT_MAX_NEW_TOKENS`` none               upper bound on new tokens (smoke runs); else the task's (2048 under
                                          the ``authors`` protocol; 1024, 2048 for MMLU-Pro under ``project``)
``LPT_ENGINE_OPTIONS`` ``{}``             JSON object of extra engine options, e.g. ``{"tensor_parallel_size": 2}``
``LPT_EVAL_CACHE_DIR`` lighteval's        where lighteval's prediction cache goes
=================== ===================== ============================================================

Messages put the image(s) before the text (Qwen2.5-VL order), ``Doc.instruction`` becomes the system turn,
text-only docs (MMLU-Pro) are plain user strings, and ``Doc.generation_size`` sets the number of new tokens.

lighteval instantiates the *first* ``LightevalModel`` subclass it finds in ``dir(module)``: this module must
not import any other subclass by name (it imports ``abstract_model`` as a module for that reason).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from eval_tasks._offline import prepare_lighteval

prepare_lighteval()

from lighteval.models import abstract_model as _am  # noqa: E402  (module, not the class: see docstring)
from lighteval.models.model_output import ModelResponse  # noqa: E402
from lighteval.tasks.requests import Doc, SamplingMethod  # noqa: E402
from lighteval.utils.cache_management import SampleCache, cached  # noqa: E402

from builder.engines import Request, SamplingParams, load_engine  # noqa: E402

DEFAULT_MAX_PIXELS = 512 * 512
DEFAULT_GENERATION_SIZE = 1024


def engine_settings(engine: str = "auto", *, dtype: str | None = None, batch_size: int | None = None,
                    max_pixels: int = DEFAULT_MAX_PIXELS, engine_options: dict[str, Any] | None = None,
                    temperature: float = 0.0, max_new_tokens: int | None = None) -> dict[str, Any]:
    """The model's settings: engine kind (``auto`` resolved), engine options, pixel cap, sampling."""
    kind = (engine or "auto").strip() or "auto"
    if kind == "auto":
        kind = "vllm" if _vllm_usable() else "transformers"
    options = dict(engine_options or {})
    if dtype:
        options["dtype"] = dtype
    if batch_size and kind == "transformers":
        options["batch_size"] = int(batch_size)
    return {"engine": kind, "engine_options": options, "max_pixels": int(max_pixels), "temperature": float(temperature),
            "max_new_tokens": int(max_new_tokens) if max_new_tokens else None}


def engine_options_from_env(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The settings that the ``LPT_*`` variables ask for (see the module docstring): ``lighteval custom``'s way in."""
    env = dict(os.environ if env is None else env)
    options = json.loads(env.get("LPT_ENGINE_OPTIONS") or "{}")
    if not isinstance(options, dict):
        raise ValueError(f"LPT_ENGINE_OPTIONS must be a JSON object, got {env['LPT_ENGINE_OPTIONS']!r}")
    return engine_settings(env.get("LPT_ENGINE", "auto"), dtype=env.get("LPT_DTYPE") or None,
                           batch_size=int(env["LPT_BATCH_SIZE"]) if env.get("LPT_BATCH_SIZE") else None,
                           max_pixels=int(env.get("LPT_MAX_PIXELS") or DEFAULT_MAX_PIXELS), engine_options=options,
                           temperature=float(env.get("LPT_TEMPERATURE") or 0.0),
                           max_new_tokens=int(env["LPT_MAX_NEW_TOKENS"]) if env.get("LPT_MAX_NEW_TOKENS") else None)


def _vllm_usable() -> bool:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


def _fingerprint(model: str) -> str:
    """Names, sizes and mtimes of a local checkpoint's files (so retrained weights miss the cache)."""
    p = Path(model)
    if not p.is_dir():
        return ""
    stats = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in p.iterdir() if f.is_file())
    return hashlib.sha256(repr(stats).encode()).hexdigest()[:16]


class _CacheKey(_am.ModelConfig):
    """What lighteval's prediction cache is keyed on: the model, its files and every engine option."""

    engine_settings: dict = {}


def cache_config(model_name: str, settings: dict[str, Any], cache_dir: str | None = None) -> _CacheKey:
    """A config for :class:`SampleCache` that never writes inside a local checkpoint directory."""
    if Path(model_name).exists():  # lighteval would join an absolute path and write into the checkpoint
        resolved = str(Path(model_name).resolve())
        name = f"local/{Path(resolved).name}-{hashlib.sha256(resolved.encode()).hexdigest()[:8]}"
    else:
        name = model_name
    extra = {"cache_dir": d} if (d := cache_dir or os.environ.get("LPT_EVAL_CACHE_DIR")) else {}
    return _CacheKey(model_name=name, engine_settings={**settings, "files": _fingerprint(model_name)}, **extra)


def doc_messages(doc: Doc) -> list[dict[str, Any]]:
    """Chat messages of a Doc: system = ``instruction``; user = images first, then the query."""
    messages: list[dict[str, Any]] = []
    if doc.instruction:
        messages.append({"role": "system", "content": doc.instruction})
    images = list(doc.images or [])
    if images:
        content: Any = [{"type": "image", "image": im} for im in images] + [{"type": "text", "text": doc.query}]
    else:
        content = doc.query
    messages.append({"role": "user", "content": content})
    return messages


def prompt_record(doc: Doc) -> str:
    """A readable, serialisable copy of the prompt for lighteval's details (images as ``<image>``)."""
    head = f"[system] {doc.instruction}\n" if doc.instruction else ""
    return f"{head}[user] {'<image>' * len(doc.images or [])}{doc.query}"


class LPTEngineModel(_am.LightevalModel):
    """Generative lighteval model backed by ``builder.engines`` (transformers or vLLM)."""

    def __init__(self, config: Any, engine: Any = None, settings: dict[str, Any] | None = None) -> None:
        """``settings``: see :func:`engine_settings`; default: the ``LPT_*`` variables (``lighteval custom``).
        ``engine``: a ready :class:`builder.engines.Engine` instead of loading one."""
        self.config = config
        self.settings = settings if settings is not None else engine_options_from_env()
        self._cache = SampleCache(cache_config(config.model_name, self.settings, _cache_dir_of(config)))
        self.engine = engine if engine is not None else load_engine(
            self.settings["engine"], config.model_name, **self.settings["engine_options"])

    @property
    def tokenizer(self) -> Any:
        return getattr(self.engine, "tokenizer", None)

    @property
    def add_special_tokens(self) -> bool:
        return False

    @property
    def max_length(self) -> int:
        return 32768

    def request(self, doc: Doc) -> Request:
        params = SamplingParams(
            n=1,
            temperature=self.settings["temperature"],
            max_new_tokens=min(int(doc.generation_size or DEFAULT_GENERATION_SIZE),
                               self.settings["max_new_tokens"] or 1 << 30),
            stop=tuple(doc.stop_sequences or ()),
            seed=0,
        )
        return Request(messages=doc_messages(doc), params=params, max_pixels=self.settings["max_pixels"])

    @cached(SamplingMethod.GENERATIVE)
    def greedy_until(self, docs: list[Doc]) -> list[ModelResponse]:
        """Generate for every doc but the skipped ones (rows that could not be parsed: an empty reply, never
        scored; see :func:`eval_tasks.common.skipped_doc`)."""
        asked = [d for d in docs if not (d.specific or {}).get("skipped")]
        samples = iter(self.engine.generate([self.request(d) for d in asked], progress=True) if asked else [])
        out = []
        for doc in docs:
            if (doc.specific or {}).get("skipped"):
                out.append(ModelResponse(input="", text=[""]))
            else:
                out.append(ModelResponse(input=prompt_record(doc), text=[next(samples)[0].text]))
        return out

    def loglikelihood(self, docs: list[Doc]) -> list[ModelResponse]:
        raise NotImplementedError("the LPT tasks are generative; log-likelihood scoring is not supported")

    def loglikelihood_rolling(self, docs: list[Doc]) -> list[ModelResponse]:
        raise NotImplementedError("the LPT tasks are generative; log-likelihood scoring is not supported")

    def cleanup(self) -> None:
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()


def _cache_dir_of(config: Any) -> str | None:
    """The config's cache_dir when the user changed it from lighteval's default."""
    value = getattr(config, "cache_dir", None)
    return value if value and value != _am.ModelConfig.model_fields["cache_dir"].default else None
