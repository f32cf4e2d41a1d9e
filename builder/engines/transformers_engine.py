"""The transformers engine: any causal LM or vision-language model, on CPU or GPU.

Options (``load_engine("transformers", model, **options)``):

``device``      ``"auto"`` (CUDA when there is one, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``
``dtype``       ``"auto"`` (bfloat16 on GPU, float32 on CPU), or a torch dtype name
``batch_size``  rows (samples) generated together in one ``generate`` call (default 8 on CPU, 64 on a GPU)
``gguf_file``   load a GGUF file from the ``model`` folder (``model`` may also be the ``.gguf`` path itself)
``revision``, ``trust_remote_code``, ``attn_implementation``: passed to ``from_pretrained``

Sampling and seeds: every sample is one row of a batch (left padding). All rows of a ``generate`` call draw
their tokens at once (:func:`sample_rows`), each from its own uniforms: a counter-based hash of the row's seed
(from the request's ``seed`` and the sample's index) and the step (:func:`row_uniforms`). So a row's draw
depends on its seed, the step and its own logits only, never on the batch it shares or its place in it:
resuming, sharding or re-chunking a run gives the same bytes wherever the model's logits for a row do not depend
on the batch either (README, "What is byte-stable"). :data:`SAMPLER` versions this scheme. A greedy request is
generated once and its sample repeated ``n`` times (as vLLM does); greedy requests are batched too. ``bad_words`` are blocked at generation time (the word
and its space-prefixed form, as token sequences); ``stop`` strings end generation and are cut from the text.
A model with a ``vision_config`` is a VLM: its images are capped at ``max_pixels`` and go through its
processor; Qwen2-VL / Qwen2.5-VL get an image-only processor where torchvision is missing
(:mod:`builder.engines.hf_processors`).
"""

from __future__ import annotations

import os
import time
from itertools import groupby
from typing import Any

from .base import (Engine, PromptTooLong, Request, Sample, SamplingParams, cap_pixels, iter_images, past_context,
                   require_local_model)

SAMPLER = "row-hash-icdf/1"
"""The seeded sampler's version: what a sample's bytes depend on besides the model, its inputs and the settings.
A change to how rows draw their tokens gets a new version, so that a run made with the old one is not resumed
with the new one (the stage runner records it with every chunk: :func:`builder.engines.sampler_of`)."""


DEFAULT_GPU_BATCH = 64  # rows per generate call on a GPU: decoding reads the weights once a step for all of them


class TransformersEngine(Engine):
    name = "transformers"
    sampler = SAMPLER

    def __init__(self, model: str, **options: Any) -> None:
        super().__init__(model, **options)
        require_local_model(model)
        import torch
        from transformers import AutoConfig

        opts = dict(options)
        batch_size = opts.pop("batch_size", None)
        device = opts.pop("device", "auto")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.batch_size = int(batch_size or (DEFAULT_GPU_BATCH if self.device.type == "cuda" else 8))
        dtype = opts.pop("dtype", "auto")
        if dtype in ("auto", None):
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        elif isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        load = {k: opts.pop(k) for k in ("revision", "trust_remote_code", "gguf_file") if k in opts}
        if str(model).endswith(".gguf") and os.path.isfile(model):
            model, load["gguf_file"] = os.path.dirname(os.path.abspath(model)), os.path.basename(model)
        attn = opts.pop("attn_implementation", None)
        if opts:
            raise ValueError(f"transformers engine: unknown option(s) {sorted(opts)}")

        config = AutoConfig.from_pretrained(model, **load)
        self.is_vlm = getattr(config, "vision_config", None) is not None
        model_kw = {"dtype": dtype, **load, **({"attn_implementation": attn} if attn else {})}
        if self.is_vlm:
            from transformers import AutoModelForImageTextToText

            from .hf_processors import load_processor

            load_kw = {k: v for k, v in load.items() if k != "gguf_file"}
            processor = load_processor(model, config.model_type, **load_kw)
            self._adopt(AutoModelForImageTextToText.from_pretrained(model, **model_kw), processor.tokenizer, processor)
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            self._adopt(AutoModelForCausalLM.from_pretrained(model, **model_kw),
                        AutoTokenizer.from_pretrained(model, **load), None)

    @classmethod
    def from_loaded(cls, model: Any, tokenizer: Any, processor: Any = None, *, name: str = "in-memory",
                    batch_size: int = 8) -> "TransformersEngine":
        """The engine around a model already in memory (on its device), with its tokenizer and, for a VLM,
        its processor: e.g. a model built from a config with random weights for a benchmark."""
        self = cls.__new__(cls)
        Engine.__init__(self, name, batch_size=batch_size)
        self.batch_size = int(batch_size)
        self.device = next(model.parameters()).device
        self.is_vlm = processor is not None
        self._adopt(model, tokenizer, processor)
        return self

    def _adopt(self, model: Any, tokenizer: Any, processor: Any) -> None:
        """Take a loaded model: on the engine's device, eval mode, left padding, a pad token, the EOS ids."""
        self.model, self.tokenizer, self.processor = model, tokenizer, processor
        self.model.to(self.device).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            self.eos_ids.add(self.tokenizer.eos_token_id)
        config = getattr(self.model.config, "text_config", None) or self.model.config
        self.context = getattr(config, "max_position_embeddings", None)  # positions the model was made for

    # ------------------------------------------------------------------------------------------ prompts

    def render(self, request: Request) -> str:
        """The prompt text of a request (its chat template applied); a continued assistant turn stays open."""
        messages = request.messages if self.is_vlm else [_text_only(m) for m in request.messages]
        templater = self.processor if self.is_vlm else self.tokenizer
        return templater.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=not request.continue_final_message,
            continue_final_message=request.continue_final_message)

    def _encode(self, requests: list[Request]):
        texts = [self.render(r) for r in requests]
        if self.is_vlm:
            images = [[cap_pixels(im.convert("RGB"), r.max_pixels) for im in iter_images(r.messages)]
                      for r in requests]
            if any(images):
                flat = [im for ims in images for im in ims]
                enc = self.processor(text=texts, images=flat, padding=True, return_tensors="pt")
            else:
                enc = self.processor(text=texts, padding=True, return_tensors="pt")
        else:
            enc = self.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        return enc.to(self.device)

    # --------------------------------------------------------------------------------------- generation

    def _bad_words_ids(self, words: tuple[str, ...]) -> list[list[int]] | None:
        variants = {v for w in words for v in (w, " " + w) if w}
        ids = [self.tokenizer(v, add_special_tokens=False).input_ids for v in sorted(variants)]
        return [i for i in ids if i] or None

    def _gen_kwargs(self, p: SamplingParams) -> dict[str, Any]:
        # Sampling itself happens in _RowSampler (all rows at once); generate() then takes the argmax.
        kw: dict[str, Any] = {"max_new_tokens": p.max_new_tokens, "do_sample": False, "temperature": None,
                              "top_p": None, "top_k": None, "repetition_penalty": p.repetition_penalty,
                              "pad_token_id": self.tokenizer.pad_token_id, "eos_token_id": sorted(self.eos_ids)}
        if p.bad_words:
            kw["bad_words_ids"] = self._bad_words_ids(p.bad_words)
        return kw

    def _run(self, rows: list[tuple[Request, int | None]], meter: _TokenMeter | None = None) -> list[Sample]:
        """One ``generate`` call for rows ``(request, row seed)`` sharing sampling settings; a sample each."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        params = rows[0][0].params
        enc = self._encode([r for r, _ in rows])
        self._check_context(rows, enc["attention_mask"].sum(1).tolist(), params.max_new_tokens)
        kw = self._gen_kwargs(params)
        processors = [meter] if meter is not None else []
        if params.temperature > 0:
            processors.append(_RowSampler(params, [seed for _, seed in rows]))
        if processors:
            kw["logits_processor"] = LogitsProcessorList(processors)
        if params.stop:
            kw["stopping_criteria"] = StoppingCriteriaList([_StopStrings(
                self.tokenizer, params.stop, enc["input_ids"].shape[1], self._stop_candidates(params.stop))])
        with torch.inference_mode():
            out = self.model.generate(**enc, **kw)
        return [self._sample(ids, params) for ids in out[:, enc["input_ids"].shape[1]:].tolist()]

    def _stop_candidates(self, stops: tuple[str, ...]):
        """The tokens after which one of ``stops`` may newly appear in the decoded text (a boolean tensor over the
        model's vocabulary, kept per set of last characters): those whose own text holds a stop's last character,
        or a replacement character (a byte of a character split across tokens). None where a stop ends in
        whitespace (a SentencePiece token drops its leading space when decoded alone): every step is checked."""
        import torch

        ends = frozenset(s[-1] for s in stops if s)
        if any(c.isspace() for c in ends):
            return None
        cache = self.__dict__.setdefault("_stop_masks", {})
        if ends not in cache:
            vocab = self.model.get_output_embeddings().weight.shape[0]
            known = min(vocab, len(self.tokenizer))
            pieces = self.tokenizer.batch_decode([[i] for i in range(known)], skip_special_tokens=True)
            mask = torch.zeros(vocab, dtype=torch.bool)  # ids past the tokenizer decode to nothing
            mask[:known] = torch.tensor([any(c in p for c in ends) or "\ufffd" in p for p in pieces])
            cache[ends] = mask.to(self.device)
        return cache[ends]

    def _check_context(self, rows: list[tuple[Request, int | None]], lengths: list[int], new_tokens: int) -> None:
        """Refuse, before generating, a prompt whose tokens (images included) and new tokens pass the model's
        context (:class:`~builder.engines.base.PromptTooLong`, naming the model, the lengths and the request)."""
        for (request, _), n in zip(rows, lengths):
            if self.context and n + new_tokens > self.context:
                raise past_context(self.model_id, n, self.context, request, new_tokens)

    def _sample(self, ids: list[int], params: SamplingParams) -> Sample:
        pad = self.tokenizer.pad_token_id
        finish = "length"
        for i, t in enumerate(ids):
            if t in self.eos_ids:
                ids, finish = ids[:i], "stop"
                break
        while ids and ids[-1] == pad and pad not in self.eos_ids:
            ids = ids[:-1]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cut = [text.find(s) for s in params.stop if s and s in text]
        if cut:
            text, finish = text[:min(cut)], "stop"
        return Sample(text=text, finish_reason=finish, num_tokens=len(ids))

    def generate(self, requests: list[Request], *, progress: bool = False) -> list[list[Sample]]:
        from tqdm.auto import tqdm

        # one row per sample to draw; a greedy request is generated once and its sample repeated n times
        rows = []  # (request index, sample index, row seed)
        for i, r in enumerate(requests):
            p = r.params
            if p.temperature > 0:
                rows += [(i, j, _row_seed(p.seed, j)) for j in range(p.n)]
            else:
                rows.append((i, 0, None))
        rows.sort(key=lambda row: _key(requests[row[0]]))
        results: list[list[Sample]] = [[] for _ in requests]
        bar = tqdm(total=len(rows), disable=not progress, desc=f"generate ({self.model_id})", unit="sample")
        meter = _TokenMeter(bar if progress else None)
        for _, group in groupby(rows, key=lambda row: _key(requests[row[0]])):
            group = list(group)
            for start in range(0, len(group), self.batch_size):
                part = group[start:start + self.batch_size]
                samples = self._run([(requests[i], seed) for i, _, seed in part], meter)
                for (i, j, _), sample in zip(part, samples):
                    results[i].append((j, sample))
                bar.update(len(part))
        meter.show()
        bar.close()
        out = []
        for r, got in zip(requests, results):
            got = [s for _, s in sorted(got, key=lambda js: js[0])]
            out.append(got if r.params.temperature > 0 else got * r.params.n)
        return out

    def close(self) -> None:
        self.model = None
        import gc

        gc.collect()


def _row_seed(seed: int | None, j: int) -> int:
    """The seed of sample ``j`` of a request (a fresh random one when the request has no seed)."""
    import torch

    if seed is None:
        return int(torch.randint(0, 2**62, (1,)).item())
    return (int(seed) * 1_000_003 + j) % 2**63


def row_uniforms(seeds: list[int], steps: int):
    """The uniform draws in [0, 1) of rows with ``seeds`` for steps ``0 .. steps-1``, shape (rows, steps), float64:
    a counter-based hash (SplitMix64 of the seed, then of that plus the step; 53 bits), so a row's draw at a step
    depends on its seed and the step only, on every machine."""
    import numpy as np

    s = np.asarray([int(x) % 2**64 for x in seeds], dtype=np.uint64)[:, None]
    t = np.arange(steps, dtype=np.uint64)[None, :]
    x = _splitmix64(_splitmix64(s) + t)
    return (x >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def _splitmix64(x):
    import numpy as np

    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def sample_rows(scores, params: SamplingParams, uniforms):
    """One token per row of ``scores`` (rows x vocab, after repetition penalty and bad words), all rows at once:
    temperature, then top-k (every token at least as likely as the k-th), then top-p (the smallest prefix of the
    tokens by falling probability that reaches ``top_p``), then the token where the row's uniform falls in the
    kept tokens' cumulative distribution (float64). Row ``r``'s token depends on ``scores[r]`` and
    ``uniforms[r]`` only: no generator, no per-row loop, no host sync."""
    import torch

    logits = scores.float() / params.temperature
    vocab = logits.shape[-1]
    if params.top_k > 0:
        kth = torch.topk(logits, min(params.top_k, vocab), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    order = None
    if params.top_p < 1.0:
        logits, order = torch.sort(logits, dim=-1, descending=True)  # deterministic for a given row
    probs = logits.softmax(-1)
    cdf = probs.cumsum(-1, dtype=torch.float64)
    if order is None:
        last = torch.full_like(uniforms, vocab - 1, dtype=torch.long).unsqueeze(-1)
    else:  # the kept prefix: tokens whose preceding mass is still under top_p (at least the first)
        last = ((cdf - probs) < params.top_p).sum(-1, keepdim=True).clamp_(min=1) - 1
    total = cdf.gather(-1, last)
    picked = torch.searchsorted(cdf, uniforms.to(cdf.dtype).unsqueeze(-1) * total, right=True)
    picked = torch.minimum(picked, last)
    return picked if order is None else order.gather(-1, picked)


class _RowSampler:
    """A logits processor that draws each row's next token (:func:`sample_rows`) with that row's uniforms
    (:func:`row_uniforms` of its seed), after the other processors (repetition penalty, bad words); generate()
    then takes the drawn token as argmax. So a sample depends only on its request and seed, never on what else
    shares the batch or where its row is in it."""

    def __init__(self, params: SamplingParams, seeds: list[int]) -> None:
        self.params, self.seeds, self.uniforms, self.start = params, seeds, None, None

    def __call__(self, input_ids, scores):
        import torch

        if self.uniforms is None:
            self.start = input_ids.shape[1]
            table = row_uniforms(self.seeds, self.params.max_new_tokens)
            self.uniforms = torch.from_numpy(table).to(scores.device)
        picked = sample_rows(scores, self.params, self.uniforms[:, input_ids.shape[1] - self.start])
        return torch.full_like(scores, float("-inf")).scatter_(-1, picked, 0.0)


class _TokenMeter:
    """A logits processor that changes nothing: it counts the tokens generated (one per row per step) and shows
    them, with tokens per second, as the postfix of a progress bar (this engine's, else the innermost open one,
    e.g. the stage's), at most twice a second; so a bar moves while a model writes, not only when items end."""

    def __init__(self, bar: Any = None) -> None:
        self.bar, self.tokens, self.start, self.shown = bar, 0, time.monotonic(), 0.0

    def __call__(self, input_ids, scores):
        self.tokens += scores.shape[0]
        if time.monotonic() - self.shown >= 0.5:
            self.show()
        return scores

    def show(self) -> None:
        self.shown = now = time.monotonic()
        bar = self.bar if self.bar is not None else _open_bar()
        if bar is not None:
            bar.set_postfix_str(f"{self.tokens} tokens, {self.tokens / max(now - self.start, 1e-6):.1f} tok/s")


def _open_bar() -> Any:
    """The most recently started progress bar that is shown (tqdm keeps its live bars), or None."""
    import tqdm.auto
    import tqdm.std

    bars = {b for cls in (tqdm.std.tqdm, tqdm.auto.tqdm) for b in list(getattr(cls, "_instances", ()))}
    bars = [b for b in bars if not getattr(b, "disable", True)]
    return max(bars, key=lambda b: getattr(b, "start_t", 0.0), default=None)


class _StopStrings:
    """Stops a row once its *generated* text holds a stop string (the prompt does not count, as in vLLM).

    ``candidates``: a boolean tensor over the vocabulary, True for the tokens after which a stop string may have
    newly appeared (:meth:`TransformersEngine._stop_candidates`); only rows whose last token is one have their
    tail decoded (None: every row, every step)."""

    def __init__(self, tokenizer, stops: tuple[str, ...], prompt_len: int, candidates=None) -> None:
        self.tokenizer, self.stops, self.prompt_len = tokenizer, [s for s in stops if s], prompt_len
        self.window = 2 * max((len(s) for s in self.stops), default=1) + 8  # tokens: enough for any stop string
        self.candidates = candidates

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if self.candidates is None:
            rows = list(range(input_ids.shape[0]))
        else:
            self.candidates = self.candidates.to(input_ids.device)
            rows = self.candidates[input_ids[:, -1]].nonzero().flatten().tolist()
        if not rows:
            return done
        tail = input_ids[rows, max(self.prompt_len, input_ids.shape[1] - self.window):]
        texts = self.tokenizer.batch_decode(tail.tolist(), skip_special_tokens=True)
        hits = [r for r, text in zip(rows, texts) if any(s in text for s in self.stops)]
        if hits:
            done[hits] = True
        return done


def _key(request: Request):
    """Rows that can share one ``generate`` call: same sampling settings (``n`` and ``seed`` are per row, so
    they do not matter), same kind of prompt."""
    p = request.params
    return (p.temperature, p.top_p, p.top_k, p.repetition_penalty, p.max_new_tokens, p.stop, p.bad_words,
            request.continue_final_message)


def _text_only(message: dict[str, Any]) -> dict[str, Any]:
    """A text model's message: list content becomes one string (an image part is refused)."""
    content = message.get("content")
    if not isinstance(content, list):
        return message
    if any(part.get("type") == "image" for part in content):
        raise ValueError("this model is text-only but the request has an image")
    return {**message, "content": "".join(part.get("text", "") for part in content)}


__all__ = ["PromptTooLong", "TransformersEngine"]
