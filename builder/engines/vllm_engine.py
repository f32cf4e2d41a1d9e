"""The vLLM engine (GPU): offline batched ``LLM.chat``; vllm is imported only when the engine is built.

Install with ``pip install 'longperceptualthoughts[vllm]'``. Options are passed to ``vllm.LLM`` as they are
(``tensor_parallel_size``, ``gpu_memory_utilization``, ``max_model_len``, ``dtype``, ``limit_mm_per_prompt``,
``seed`` ...). Each request keeps its own seed (vLLM seeds per request), so results do not depend on batching.
The conversion from our requests to vLLM's inputs is pure (:func:`vllm_messages`, :func:`sampling_kwargs`) and
tested without vllm; the engine itself runs only where a GPU is.

Context: before a batch is sent, each prompt's text tokens (its chat template applied by the model's tokenizer)
are measured against the model's ``max_model_len``, vLLM's own rule for a prompt; one past it is a
:class:`~builder.engines.base.PromptTooLong` naming the model, the lengths and the request (a counted skip under
``--skip-bad``). Image tokens are counted by vLLM's processor only: a prompt long through its images gets vLLM's
own refusal, turned into the same error. New tokens past the context are cut by vLLM (finish reason ``length``).
"""

from __future__ import annotations

import re
from itertools import groupby
from typing import Any

from .base import (Engine, PromptTooLong, Request, Sample, SamplingParams, cap_pixels, past_context, request_start,
                   require_local_model, require_package)

_VLLM_TOO_LONG = re.compile(r"longer than the maximum model length|maximum context length|too long and exceeds",
                            re.IGNORECASE)  # vLLM's own words for a prompt past max_model_len (several versions)


def sampling_kwargs(p: SamplingParams) -> dict[str, Any]:
    """``vllm.SamplingParams`` keyword arguments for our sampling settings."""
    kw: dict[str, Any] = {"n": p.n, "temperature": p.temperature, "top_p": p.top_p,
                          "top_k": p.top_k if p.top_k > 0 else -1, "repetition_penalty": p.repetition_penalty,
                          "max_tokens": p.max_new_tokens, "seed": p.seed}
    if p.stop:
        kw["stop"] = list(p.stop)
    if p.bad_words:
        kw["bad_words"] = list(p.bad_words)
    return kw


def vllm_messages(request: Request) -> list[dict[str, Any]]:
    """The request's messages as vLLM's chat API takes them: PIL images as ``image_pil`` parts, capped."""
    out = []
    for m in request.messages:
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") == "image":
                    image = cap_pixels(part["image"].convert("RGB"), request.max_pixels)
                    parts.append({"type": "image_pil", "image_pil": image})
                else:
                    parts.append({"type": "text", "text": part.get("text", "")})
            m = {**m, "content": parts}
        out.append(m)
    return out


def text_tokens(tokenizer: Any, request: Request) -> int:
    """The tokens of a request's text, its chat template applied as vLLM applies it (images left out)."""
    messages = [{**m, "content": m["content"] if isinstance(m.get("content"), str) else "".join(
        p.get("text", "") for p in m.get("content") or [] if p.get("type") == "text")} for m in request.messages]
    cont = request.continue_final_message
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=not cont,
                                        continue_final_message=cont)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # a BatchEncoding (transformers 5)
        ids = ids["input_ids"]
    return len(ids)


def check_context(model: str, tokenizer: Any, context: int | None, requests: list[Request]) -> None:
    """Refuse the first request whose text tokens pass ``context`` (the model's ``max_model_len``)."""
    if not context:
        return
    for r in requests:
        n = text_tokens(tokenizer, r)
        if n > context:
            raise past_context(model, n, context, r, advice="shorten the description or raise max_model_len")


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(self, model: str, **options: Any) -> None:
        super().__init__(model, **options)
        require_local_model(model)
        vllm = require_package("vllm", "the vllm engine (a CUDA GPU)", "on a GPU machine: pip install -c "
                               "constraints-gpu.txt -e '.[vllm,eval]' (README, \"GPU machines\")")
        self.llm = vllm.LLM(model=model, **options)
        self.tokenizer = self.llm.get_tokenizer()
        self.context = _max_model_len(self.llm)

    def generate(self, requests: list[Request], *, progress: bool = False) -> list[list[Sample]]:  # pragma: no cover
        from vllm import SamplingParams as VSamplingParams

        check_context(self.model_id, self.tokenizer, self.context, requests)
        results: list[list[Sample] | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: requests[i].continue_final_message)
        for cont, group in groupby(order, key=lambda i: requests[i].continue_final_message):
            group = list(group)
            try:
                outputs = self.llm.chat(
                    [vllm_messages(requests[i]) for i in group],
                    [VSamplingParams(**sampling_kwargs(requests[i].params)) for i in group],
                    use_tqdm=progress, add_generation_prompt=not cont, continue_final_message=cont)
            except ValueError as e:
                too_long = _too_long(self.model_id, e, [requests[i] for i in group])
                if too_long is None:
                    raise
                raise too_long from e
            for i, out in zip(group, outputs):
                results[i] = [Sample(text=o.text, finish_reason=o.finish_reason, num_tokens=len(o.token_ids))
                              for o in out.outputs]
        return results  # type: ignore[return-value]

    def close(self) -> None:  # pragma: no cover
        self.llm = None


def _max_model_len(llm: Any) -> int | None:
    """The context the loaded model was given (``max_model_len``), where this vLLM version says it."""
    config = getattr(getattr(llm, "llm_engine", None), "model_config", None)
    return getattr(config, "max_model_len", None)


def _too_long(model: str, e: ValueError, requests: list[Request]) -> PromptTooLong | None:
    """vLLM's refusal of a prompt past the context (long through its images) as a PromptTooLong; None for another
    ValueError."""
    if isinstance(e, PromptTooLong) or not _VLLM_TOO_LONG.search(str(e)):
        return None
    starts = "; ".join(repr(request_start(r)) for r in requests[:2])
    return PromptTooLong(f"{model}: {' '.join(str(e).split())[:300]} (one of {len(requests)} requests starting "
                         f"{starts}{' ...' if len(requests) > 2 else ''})")


__all__ = ["VLLMEngine", "check_context", "sampling_kwargs", "text_tokens", "vllm_messages"]
