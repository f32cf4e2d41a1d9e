"""The transformers engine's sampler and stop-string check as they were before the vectorised sampler (commit
3117c7a), frozen here so that benchmarks can run the engine with them side by side with today's
(:func:`install`). Never imported by the project itself.

``_RowSampler`` drew each row's token with its own ``torch.Generator`` in a Python loop of ``torch.multinomial``
(one kernel launch and host sync per row per step); ``_StopStrings`` decoded every row's tail at every step.
"""

from __future__ import annotations

import contextlib

from builder.engines.base import SamplingParams


class LegacyRowSampler:
    """Draws each row's next token with that row's own ``torch.Generator`` (temperature, top-k, top-p)."""

    def __init__(self, params: SamplingParams, seeds: list[int | None]) -> None:
        self.params, self.seeds, self.generators = params, seeds, None

    def __call__(self, input_ids, scores):
        import torch

        if self.generators is None:
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        p = self.params
        logits = scores.float() / p.temperature
        if p.top_k > 0:
            kth = torch.topk(logits, min(p.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if p.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
            sorted_probs = sorted_logits.softmax(-1)
            drop = sorted_probs.cumsum(-1) - sorted_probs >= p.top_p
            logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        probs = logits.softmax(-1)
        picked = torch.stack([torch.multinomial(probs[r], 1, generator=g) for r, g in enumerate(self.generators)])
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, picked, 0.0)


class LegacyStopStrings:
    """Stops a row once its generated text holds a stop string: every row's tail decoded at every step."""

    def __init__(self, tokenizer, stops: tuple[str, ...], prompt_len: int, *_unused) -> None:
        self.tokenizer, self.stops, self.prompt_len = tokenizer, [s for s in stops if s], prompt_len
        self.window = 2 * max((len(s) for s in self.stops), default=1) + 8

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        new = input_ids[:, self.prompt_len:]
        tails = self.tokenizer.batch_decode(new[:, -self.window:], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stops) for t in tails], device=input_ids.device)


@contextlib.contextmanager
def installed(engine_module):
    """Within the block, ``engine_module`` (builder.engines.transformers_engine) samples and checks stop strings
    the old way."""
    saved = engine_module._RowSampler, engine_module._StopStrings
    engine_module._RowSampler, engine_module._StopStrings = LegacyRowSampler, LegacyStopStrings
    try:
        yield
    finally:
        engine_module._RowSampler, engine_module._StopStrings = saved
