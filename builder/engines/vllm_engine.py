"""The vLLM engine (GPU): offline batched ``LLM.chat``; vllm is imported only when the engine is built.

Install with ``pip install 'longperceptualthoughts[vllm]'``. Options are passed to ``vllm.LLM`` as they are
(``tensor_parallel_size``, ``gpu_memory_utilization``, ``max_model_len``, ``dtype``, ``limit_mm_per_prompt``,
``seed`` ...). Each request keeps its own seed (vLLM seeds per request), so results do not depend on batching.
The conversion from our requests to vLLM's inputs is pure (:func:`vllm_messages`, :func:`sampling_kwargs`) and
tested without vllm; the engine itself runs only where a GPU is.
"""

from __future__ import annotations

from itertools import groupby
from typing import Any

from .base import Engine, Request, Sample, SamplingParams, cap_pixels, require_local_model, require_package


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


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(self, model: str, **options: Any) -> None:
        super().__init__(model, **options)
        require_local_model(model)
        vllm = require_package("vllm", "the vllm engine (a CUDA GPU)", "on a GPU machine: pip install -c "
                               "constraints-gpu.txt -e '.[vllm,eval]' (README, \"GPU machines\")")
        self.llm = vllm.LLM(model=model, **options)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, requests: list[Request], *, progress: bool = False) -> list[list[Sample]]:  # pragma: no cover
        from vllm import SamplingParams as VSamplingParams

        results: list[list[Sample] | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: requests[i].continue_final_message)
        for cont, group in groupby(order, key=lambda i: requests[i].continue_final_message):
            group = list(group)
            outputs = self.llm.chat(
                [vllm_messages(requests[i]) for i in group],
                [VSamplingParams(**sampling_kwargs(requests[i].params)) for i in group],
                use_tqdm=progress, add_generation_prompt=not cont, continue_final_message=cont)
            for i, out in zip(group, outputs):
                results[i] = [Sample(text=o.text, finish_reason=o.finish_reason, num_tokens=len(o.token_ids))
                              for o in out.outputs]
        return results  # type: ignore[return-value]

    def close(self) -> None:  # pragma: no cover
        self.llm = None


__all__ = ["VLLMEngine", "sampling_kwargs", "vllm_messages"]
