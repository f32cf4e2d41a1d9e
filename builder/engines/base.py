"""The engine contract: chat requests in, sampled texts out. Engines know nothing of stages.

A request's ``messages`` use the Hugging Face chat-template content form::

    {"role": "user", "content": [{"type": "image", "image": <PIL.Image>}, {"type": "text", "text": "..."}]}

(``content`` may also be a plain string). With ``continue_final_message=True`` the last message is an
assistant turn that the model continues; each returned :class:`Sample` then holds only the new text.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import os
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k cut
    repetition_penalty: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    bad_words: tuple[str, ...] = ()  # words the model must not generate (blocked at generation time)
    seed: int | None = None

    def replace(self, **changes: Any) -> "SamplingParams":
        return dataclasses.replace(self, **changes)


@dataclass
class Request:
    messages: list[dict[str, Any]]
    params: SamplingParams = field(default_factory=SamplingParams)
    continue_final_message: bool = False
    max_pixels: int | None = None  # cap on an image's area (w*h); None keeps the image as it is


@dataclass(frozen=True)
class Sample:
    text: str
    finish_reason: str | None = None  # "stop", "length", ...
    num_tokens: int | None = None


class Engine(abc.ABC):
    """Turns requests into ``n`` samples each, in request order."""

    name: str = "base"
    sampler: str | None = None
    """The version of the engine's own seeded sampling, where the engine draws the tokens itself (a run's chunks
    record it, so a resume with another version is refused); None: the engine promises no such thing."""

    def __init__(self, model: str, **options: Any) -> None:
        self.model_id = model
        self.options = options

    @abc.abstractmethod
    def generate(self, requests: list[Request], *, progress: bool = False) -> list[list[Sample]]:
        """Return, for each request, its ``params.n`` samples."""

    def close(self) -> None:  # pragma: no cover - engines that hold resources override it
        pass

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PromptTooLong(ValueError):
    """A prompt that does not fit the model's context (with the new tokens asked for, where the engine counts
    them), found before it is generated: the message names the model, the lengths and the request's start. The
    runtime skips the item under ``--skip-bad`` (counted, recorded in its chunk), else stops with this one line."""


def request_start(request: Request, limit: int = 60) -> str:
    """The start of a request's user text on one line (what an error names a request by)."""
    texts = []
    for m in request.messages:
        if m.get("role") == "user":
            content = m.get("content")
            texts += [content] if isinstance(content, str) else [
                p.get("text", "") for p in content or [] if isinstance(p, dict) and p.get("type") == "text"]
    return " ".join(" ".join(texts).split())[:limit]


def past_context(model: str, prompt_tokens: int, context: int, request: Request, new_tokens: int | None = None,
                 advice: str = "shorten the description or lower max_new_tokens") -> PromptTooLong:
    """The error for a prompt of ``prompt_tokens`` (plus ``new_tokens``, where counted) that passes ``context``."""
    plus = f" plus {new_tokens} new tokens" if new_tokens is not None else ""
    return PromptTooLong(f"{model}: a prompt of {prompt_tokens} tokens{plus} passes the model's context of {context} "
                         f"positions (request starting {request_start(request)!r}); {advice}")


class MissingPackage(ImportError):
    """A package an engine or runner needs is not installed; the message is one line naming what to install."""


def require_package(module: str, what: str, install: str) -> Any:
    """``import module`` for ``what`` (e.g. "the vllm engine"), or :class:`MissingPackage` saying ``install``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingPackage(f"{what} needs the {module} package, which is not installed here "
                             f"({type(e).__name__}: {e}); {install}") from e


def require_local_model(model: str) -> None:
    """A model named by a local path (``/…``, ``./…``, ``../…``, ``~/…``) must exist: one clear error instead of a
    hub look-up that fails on a name that was never a Hub id."""
    if model.startswith(("/", "./", "../", "~")) and not os.path.exists(os.path.expanduser(model)):
        raise FileNotFoundError(f"model {model}: no such folder or file (a local model path must exist; a Hub id "
                                f"looks like org/name)")


def iter_images(messages: list[dict[str, Any]]):
    """The PIL images of a request, in order."""
    for m in messages:
        if isinstance(m.get("content"), list):
            for part in m["content"]:
                if part.get("type") == "image":
                    yield part["image"]


def cap_pixels(image, max_pixels: int | None):
    """Shrink ``image`` (keeping its aspect ratio) so that width*height <= max_pixels."""
    if max_pixels is None:
        return image
    w, h = image.size
    if w * h <= max_pixels:
        return image
    scale = (max_pixels / (w * h)) ** 0.5
    return image.resize((max(1, int(w * scale)), max(1, int(h * scale))))
