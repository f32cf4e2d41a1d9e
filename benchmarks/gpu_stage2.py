"""Stage 2 and eval-shaped requests at full size through the project's transformers engine, the engine's sampler of
before and of today side by side: a random-weight Qwen2.5-VL-7B on one GPU, in one call.

Builds the Qwen2.5-VL-7B-Instruct *architecture* (the real hyperparameters, written out below; ~8.3 B
parameters) with random bf16 weights straight on the GPU, a tokenizer and image-only processor built here
(no hub, no network, no ``datasets``), and runs :class:`builder.engines.transformers_engine.TransformersEngine`:

``stage2``  the paper's stage-2 settings: ``--prompts`` requests (system + user turn with a 512x512 image +
            question + options, assistant turn continued after ``<think>``), ``--n`` samples each, temperature 0.7,
            top-p 0.8, repetition penalty 1.05, ``--max-new-tokens`` new tokens with no early stop (EOS and the pad
            token blocked through ``bad_words``), ``--batch-size`` rows per ``generate`` call (default: all), once
            with the sampler of before (``benchmarks/_legacy_sampler.py``: a ``torch.multinomial`` per row per step)
            and once with today's (all rows at once), in that order (``--samplers``).
``eval``    ``--eval-items`` greedy requests shaped like ``lpt eval``'s (1024x768 images capped to 512*512 pixels,
            ``--eval-max-new-tokens``), before (the code of before, 8 rows a call: the engine's old default that
            ``lpt eval`` used) and after (today's code, 64 rows a call: the engine's GPU default now); items/s.

Before each part it prints the memory-bandwidth bound of decoding at its batch size; after it, a table per case:
items/s, generated tokens/s, the prefill / decode split (CUDA-synchronised forward hooks), decode tok/s as a
fraction of the bound, peak GPU memory; a JSON of everything goes to ``$OUT/gpu_stage2.json`` (``$OUT`` unset:
the current folder).

    python3 benchmarks/gpu_stage2.py                              # GPU, the defaults (~5 min on an H100)
    python3 benchmarks/gpu_stage2.py --parts stage2 --samplers new   # today's sampler only
    python3 benchmarks/gpu_stage2.py --tiny --device cpu --prompts 4 --n 2 --max-new-tokens 16 --eval-items 4 \
        --eval-max-new-tokens 4   # smoke test

To avoid writing and re-reading 16 GB, the script hands the model and processor it built to the engine with
``TransformersEngine.from_loaded``; ``generate`` and everything under it are the engine's own.
``--via-disk`` instead saves the model to ``/tmp`` (safetensors) and goes through the engine's constructor;
``--attn`` sets another attention implementation on the model (e.g. ``eager``, ``flex_attention``).
Needs only torch, transformers (+ tokenizers, tqdm, safetensors, its own dependencies), PIL, numpy, jinja2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

T_START = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere: this checkout's builder/ first
sys.path.insert(0, str(ROOT / "benchmarks"))  # _legacy_sampler: the engine's sampler of before
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def log(*args) -> None:
    print(f"[{time.perf_counter() - T_START:7.1f}s]", *args, flush=True)


# ------------------------------------------------------------------------------------------- configs

# Qwen/Qwen2.5-VL-7B-Instruct config.json (its vision_config lists hidden_size 1280, in_chans 3,
# spatial_patch_size 14, tokens_per_second 2; the rest are Qwen2_5_VLVisionConfig's defaults, written out).
TEXT_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, hidden_act="silu", max_position_embeddings=128000,
               rms_norm_eps=1e-6, use_sliding_window=False, sliding_window=32768, max_window_layers=28,
               initializer_range=0.02,
               rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})
VISION_7B = dict(depth=32, hidden_size=1280, hidden_act="silu", intermediate_size=3420, num_heads=16,
                 in_channels=3, out_hidden_size=3584, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                 window_size=112, fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2,
                 initializer_range=0.02)
# --tiny: same architecture and vocabulary, small widths, 2 layers (runs on a CPU in seconds).
TEXT_TINY = dict(TEXT_7B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_window_layers=2,
                 rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]})
VISION_TINY = dict(VISION_7B, depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                   fullatt_block_indexes=[1])

# stage-2 style MCQs (the images are noise: the model's weights are random anyway)
QUESTIONS = [
    ("What colour is the bus in the picture?", ["Red", "Blue", "Green", "Yellow"]),
    ("How many people are walking on the street?", ["One", "Two", "Three", "Four or more"]),
    ("Where is the dog relative to the bench?", ["On it", "Under it", "To its left", "Behind it"]),
    ("What is the table most likely made of?", ["Wood", "Glass", "Metal", "Plastic"]),
    ("Why is the man holding an umbrella?", ["It is raining", "It is sunny", "As a walking stick", "To shade a dog"]),
    ("Which object is closest to the camera?", ["The lamp", "The chair", "The plant", "The window"]),
]
QUESTION_TYPES = ["Recognition", "Counting and Quantification", "Spatial and Relational Reasoning",
                  "Recognition", "Causal and Commonsense Reasoning", "Spatial and Relational Reasoning"]

# HBM bandwidth (GB/s) by GPU name; --bandwidth-gbs overrides
BANDWIDTHS = [("H200", 4800.0), ("H100 PCIE", 2000.0), ("H100 NVL", 3900.0), ("H100", 3350.0),
              ("A100-SXM4-80GB", 2039.0), ("A100 80GB", 1935.0), ("A100", 1555.0)]


def default_bandwidth(gpu_name: str | None) -> float | None:
    name = (gpu_name or "").upper()
    for key, gbs in BANDWIDTHS:
        if key in name:
            return gbs
    return None


# ------------------------------------------------------------------------------------ model, processor

def build_tokenizer():
    """A byte-level BPE with Qwen's special tokens and ChatML template, trained here in well under a second:
    builder.tiny_models' recipe, on its corpus plus the text of the project's prompt templates, so the stage-2
    prompt's text takes about as many tokens as with Qwen's own tokenizer (~4 characters a token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from builder.tiny_models import CHAT_TEMPLATE, CORPUS, SPECIALS

    templates = [p.read_text() for p in sorted((ROOT / "builder" / "prompts").glob("*.j2"))]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(CORPUS * 4 + templates, trainers.BpeTrainer(
        vocab_size=1000, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=SPECIALS[3:], chat_template=CHAT_TEMPLATE)


def build_processor():
    """The tokenizer above + the image-only Qwen2.5-VL processor (builder.engines.hf_processors) with
    Qwen2.5-VL's real image settings (14-pixel patches, 2x2 merge, min 56*56 and max 28*28*16384 pixels)."""
    import transformers

    from builder.engines.hf_processors import ImageOnlyQwen2_5_VLProcessor
    from builder.tiny_models import CHAT_TEMPLATE

    tok = build_tokenizer()
    image_cls = getattr(transformers, "Qwen2VLImageProcessorPil", None) or transformers.Qwen2VLImageProcessor
    image_processor = image_cls(min_pixels=56 * 56, max_pixels=28 * 28 * 16384, patch_size=14,
                                temporal_patch_size=2, merge_size=2)
    return ImageOnlyQwen2_5_VLProcessor(image_processor, tok, chat_template=CHAT_TEMPLATE)


def build_config(tokenizer, tiny: bool, text_layers: int | None, vision_depth: int | None):
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in
           ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    text = dict(TEXT_TINY if tiny else TEXT_7B, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"])
    vision = dict(VISION_TINY if tiny else VISION_7B)
    if text_layers:
        text["num_hidden_layers"] = text["max_window_layers"] = text_layers
    if vision_depth:
        vision["depth"] = vision_depth
        full = [i for i in vision["fullatt_block_indexes"] if i < vision_depth]
        vision["fullatt_block_indexes"] = full or [vision_depth - 1]
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False,
                            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                            vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])


def build_model(config, device, dtype, seed: int):
    """The model, created directly on ``device`` in ``dtype`` (random init runs there: seconds on a GPU)."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    model.eval()
    text = config.text_config
    model.generation_config = GenerationConfig(eos_token_id=text.eos_token_id, pad_token_id=text.pad_token_id,
                                               bos_token_id=text.bos_token_id)
    return model


def param_counts(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    visual = _submodule(model, "visual")
    vision = sum(p.numel() for p in visual.parameters()) if visual is not None else 0
    embed = model.get_input_embeddings().weight.numel()
    # read in full at every decode step: decoder layers, final norm, lm_head (not the vision tower; of the
    # embedding table only the looked-up rows)
    return {"total": total, "vision": vision, "embedding": embed, "decode_read": total - vision - embed}


def _submodule(model, name: str):
    for owner in (model, getattr(model, "model", None)):
        if owner is not None and hasattr(owner, name):
            return getattr(owner, name)
    return None


# ------------------------------------------------------------------------------------------ requests

def make_requests(args, tokenizer):
    import numpy as np
    from PIL import Image

    from builder.engines.base import Request, SamplingParams
    from builder.prompts import THINK_PREFILL, Prompts

    prompts = Prompts()
    # no early stop: the EOS (<|im_end|>) and the pad token can never be drawn
    blocked = tuple(t for t in (tokenizer.eos_token, tokenizer.pad_token) if t)
    params = SamplingParams(n=args.n, temperature=args.temperature, top_p=args.top_p,
                            repetition_penalty=args.repetition_penalty, max_new_tokens=args.max_new_tokens,
                            bad_words=blocked)
    rng = np.random.default_rng(args.seed)
    out = []
    for i in range(args.prompts):
        image = Image.fromarray(rng.integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8))
        question, options = QUESTIONS[i % len(QUESTIONS)]
        messages = prompts.vlm_messages(question, options, image=image,
                                        question_type=QUESTION_TYPES[i % len(QUESTION_TYPES)],
                                        option_style=("paren", "dot")[i % 2],
                                        answer_format=("paren", "dot", "text")[i % 3], prefill=THINK_PREFILL)
        out.append(Request(messages, params.replace(seed=1000 + i), continue_final_message=True,
                           max_pixels=args.max_pixels))
    return out, blocked


# ------------------------------------------------------------------------------------------- timing

class PhaseTimer:
    """CUDA-synchronised timing of the engine's phases, per ``model.generate`` call: prefill = from the call's
    start to the end of its first forward (input preparation, 3D rope index, vision tower, the prompt's
    forward); decode = the rest of the call (one forward per new token + logits processors/sampling +
    generate's bookkeeping). Also: the processor (``engine._encode``), the vision tower, each forward."""

    def __init__(self, engine, device) -> None:
        import torch

        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.encode_s, self.prefill_s, self.decode_s, self.vision_s = [], [], [], []
        self.prefill_fwd_s, self.decode_fwd_s = [], []
        self._t: dict[str, float] = {}
        self.engine, model = engine, engine.model
        self._encode = engine._encode
        engine._encode = self._timed_encode
        self._generate = model.generate
        model.generate = self._timed_generate
        self.handles = [model.register_forward_pre_hook(self._pre, with_kwargs=True),
                        model.register_forward_hook(self._post, with_kwargs=True)]
        visual = _submodule(model, "visual")
        if visual is not None:
            self.handles += [visual.register_forward_pre_hook(lambda m, a: self._start("vision")),
                             visual.register_forward_hook(lambda m, a, o: self._stop("vision", self.vision_s))]

    def _now(self) -> float:
        self.sync()
        return time.perf_counter()

    def _start(self, key: str) -> None:
        self._t[key] = self._now()

    def _stop(self, key: str, sink: list) -> None:
        sink.append(self._now() - self._t.pop(key))

    def _timed_encode(self, *a, **kw):
        self._start("encode")
        out = self._encode(*a, **kw)
        self._stop("encode", self.encode_s)
        return out

    def _timed_generate(self, *a, **kw):
        self._start("generate")
        self._t.pop("prefill_end", None)
        out = self._generate(*a, **kw)
        end = self._now()
        prefill_end = self._t.pop("prefill_end", end)
        self.prefill_s.append(prefill_end - self._t.pop("generate"))
        self.decode_s.append(end - prefill_end)
        return out

    def _pre(self, module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        self._kind = "prefill" if ids is None or ids.shape[1] > 1 else "decode"
        self._start("fwd")

    def _post(self, module, args, kwargs, output):
        if self._kind == "prefill":
            self._stop("fwd", self.prefill_fwd_s)
            self._t.setdefault("prefill_end", time.perf_counter())
        else:
            self._stop("fwd", self.decode_fwd_s)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.engine._encode = self._encode
        del self.engine.model.generate  # the instance attribute; the class's method shows again


# ------------------------------------------------------------------------------------ eval-shaped requests

EVAL_SYSTEM = ("You first think about the reasoning process as an internal monologue and then provide the user "
               "with the answer. Respond in the following format: <think>\n...\n</think>\n<answer>\n...\n</answer>")


def make_eval_requests(args):
    """Greedy requests shaped like ``lpt eval``'s (eval_tasks.model: the image before the text, the think system
    turn, temperature 0, the pixel cap; no stop string, as the LPT tasks set none), ``--eval-items`` of them with
    ``--eval-image-size`` images; the engine sends them in batches of its ``batch_size``."""
    import numpy as np
    from PIL import Image

    from builder.engines.base import Request, SamplingParams

    rng = np.random.default_rng(args.seed + 1)
    w, h = args.eval_image_size
    params = SamplingParams(max_new_tokens=args.eval_max_new_tokens, seed=0)
    out = []
    for i in range(args.eval_items):
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        question, options = QUESTIONS[i % len(QUESTIONS)]
        text = question + "\n" + "\n".join(f"({chr(65 + k)}) {o}" for k, o in enumerate(options))
        out.append(Request([{"role": "system", "content": EVAL_SYSTEM},
                            {"role": "user", "content": [{"type": "image", "image": image},
                                                         {"type": "text", "text": text}]}],
                           params, max_pixels=args.max_pixels))
    return out


# ------------------------------------------------------------------------------------------ the bound

def decode_bound(config, counts, dtype, rows_per_step: int, prompt_len: int, new_tokens: int,
                 bandwidth: float | None) -> dict:
    """Tokens/s that memory bandwidth allows decoding ``rows_per_step`` rows: each step reads the decoder and
    lm_head weights once and every row's KV cache (at the mean context, prompt + half the new tokens)."""
    import torch

    text = config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    itemsize = torch.empty((), dtype=dtype).element_size()
    kv_per_token = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * itemsize  # per row
    avg_context = prompt_len + new_tokens / 2
    bound = {"rows_per_step": rows_per_step, "kv_bytes_per_token_per_row": kv_per_token, "prompt_len": prompt_len,
             "avg_context": avg_context, "bandwidth_gbs": bandwidth,
             "weight_bytes_decode_read": counts["decode_read"] * itemsize, "weight_bytes_all": counts["total"] * itemsize}
    for label, wbytes in (("decode_read", bound["weight_bytes_decode_read"]), ("all", bound["weight_bytes_all"])):
        per_step = wbytes + rows_per_step * kv_per_token * avg_context
        bound[f"bytes_per_step_{label}"] = per_step
        bound[f"tokens_per_s_{label}"] = rows_per_step / (per_step / (bandwidth * 1e9)) if bandwidth else None
    last = bound["weight_bytes_decode_read"] + rows_per_step * kv_per_token * (prompt_len + new_tokens)
    bound["tokens_per_s_decode_read_last_step"] = rows_per_step / (last / (bandwidth * 1e9)) if bandwidth else None
    return bound


def fmt(x, spec=".0f"):
    return "n/a" if x is None else format(x, spec)


def print_bound(bound: dict, label: str, source: str) -> None:
    print(f"\n== decode memory-bandwidth bound, {label} (before the run) ==", flush=True)
    print(f"  bandwidth                    {fmt(bound['bandwidth_gbs'])} GB/s ({source})", flush=True)
    print(f"  rows per decode step         {bound['rows_per_step']}", flush=True)
    print(f"  weights read per step        {bound['weight_bytes_decode_read'] / 1e9:.2f} GB (decoder + lm_head; "
          f"all params: {bound['weight_bytes_all'] / 1e9:.2f} GB)", flush=True)
    kv = bound["kv_bytes_per_token_per_row"]
    print(f"  KV cache per token per row   {kv / 1024:.1f} KiB; at avg context {bound['avg_context']:.0f}: "
          f"{bound['rows_per_step'] * kv * bound['avg_context'] / 1e9:.2f} GB per step", flush=True)
    print(f"  bound (avg context)          {fmt(bound['tokens_per_s_decode_read'])} tok/s  "
          f"[all params read: {fmt(bound['tokens_per_s_all'])} tok/s; at the last step: "
          f"{fmt(bound['tokens_per_s_decode_read_last_step'])} tok/s]\n", flush=True)


# ------------------------------------------------------------------------------------------- one case

def run_case(engine, requests, *, legacy: bool, batch: int, device, max_new_tokens: int, sampled: bool) -> dict:
    """``engine.generate(requests)`` with the engine's sampler and stop check of today, or (``legacy``) the ones of
    before (benchmarks/_legacy_sampler.py), ``batch`` rows per generate call; timed by phase."""
    import contextlib

    import torch

    import _legacy_sampler
    from builder.engines import transformers_engine as te

    engine.batch_size = batch
    rows = sum(r.params.n for r in requests) if sampled else len(requests)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    timer = PhaseTimer(engine, device)
    with _legacy_sampler.installed(te) if legacy else contextlib.nullcontext():
        t = time.perf_counter()
        out = engine.generate(requests)
        total = time.perf_counter() - t
    timer.remove()
    samples = [s for ss in out for s in (ss if sampled else ss[:1])]
    new_tokens = sum(s.num_tokens or 0 for s in samples)
    encode_s, prefill_s, decode_s = sum(timer.encode_s), sum(timer.prefill_s), sum(timer.decode_s)
    decode_fwd_s, decode_steps = sum(timer.decode_fwd_s), len(timer.decode_fwd_s)
    decode_row_tokens = max(0, new_tokens - rows)  # the first token of each row comes out of the prefill
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    reserved = torch.cuda.max_memory_reserved(device) / 1e9 if device.type == "cuda" else None
    return {
        "rows": rows, "requests": len(requests), "batch": batch, "samples": len(samples), "new_tokens": new_tokens,
        "early_stopped_samples": sum(1 for s in samples if s.finish_reason != "length"
                                     or s.num_tokens != max_new_tokens),
        "generate_calls": len(timer.prefill_s), "total_s": total, "items_per_s": len(requests) / total,
        "prompts_per_s": len(requests) / total, "new_tokens_per_s": new_tokens / total, "encode_s": encode_s,
        "prefill_s": prefill_s, "vision_s": sum(timer.vision_s), "prefill_forward_s": sum(timer.prefill_fwd_s),
        "decode_s": decode_s, "decode_forward_s": decode_fwd_s, "decode_other_s": decode_s - decode_fwd_s,
        "decode_steps": decode_steps,
        "decode_tokens_per_s": decode_row_tokens / decode_s if decode_s > 0 else None,
        "decode_ms_per_step": 1000 * decode_s / max(1, decode_steps),
        "decode_forward_ms_per_step": 1000 * decode_fwd_s / max(1, decode_steps),
        "postprocess_s": total - encode_s - prefill_s - decode_s, "peak_gpu_mem_gb": peak,
        "peak_gpu_reserved_gb": reserved, "example": samples[0].text[:120] if samples else None,
    }


def print_cases(title: str, cases: dict[str, dict], bound: dict | None) -> None:
    print(f"\n== {title} ==", flush=True)
    cols = ["case", "rows/batch", "calls", "total s", "items/s", "gen tok/s", "prefill s", "decode ms/step (fwd)",
            "decode tok/s", "% bound", "peak GB"]
    print("| " + " | ".join(cols) + " |", flush=True)
    print("|" + "---|" * len(cols), flush=True)
    for name, r in cases.items():
        pct = (100 * r["decode_tokens_per_s"] / bound["tokens_per_s_decode_read"]
               if bound and bound["tokens_per_s_decode_read"] and r["decode_tokens_per_s"] else None)
        r["decode_fraction_of_bound"] = pct / 100 if pct is not None else None
        print(f"| {name} | {r['rows']}/{r['batch']} | {r['generate_calls']} | {r['total_s']:.1f} | "
              f"{r['items_per_s']:.3f} | {r['new_tokens_per_s']:.1f} | {r['prefill_s']:.2f} | "
              f"{r['decode_ms_per_step']:.1f} ({r['decode_forward_ms_per_step']:.1f}) | "
              f"{fmt(r['decode_tokens_per_s'], '.1f')} | {fmt(pct, '.1f')} | {fmt(r['peak_gpu_mem_gb'], '.1f')} |",
              flush=True)


# --------------------------------------------------------------------------------------------- main

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="stage2,eval", help="comma-separated: stage2, eval")
    ap.add_argument("--samplers", default="old,new", help="comma-separated: old (before), new (today), in this order")
    ap.add_argument("--prompts", type=int, default=64, help="stage-2 requests (one image each)")
    ap.add_argument("--n", type=int, default=3, help="samples per request (one batch row each)")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=None,
                    help="stage 2: rows per generate call (default: prompts*n, all in one call)")
    ap.add_argument("--image-size", type=int, default=512, help="side of the square test images")
    ap.add_argument("--max-pixels", type=int, default=512 * 512, help="the requests' image-area cap")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.8)
    ap.add_argument("--repetition-penalty", type=float, default=1.05)
    ap.add_argument("--eval-items", type=int, default=64, help="eval-shaped greedy requests")
    ap.add_argument("--eval-max-new-tokens", type=int, default=256)
    ap.add_argument("--eval-image-size", type=int, nargs=2, default=(1024, 768), metavar=("W", "H"))
    ap.add_argument("--eval-batches", default="8,64",
                    help="eval: rows per generate call before (lpt eval's engine default was 8) and after "
                         "(the engine's GPU default now)")
    ap.add_argument("--device", default="auto", help="auto (cuda if there is one), cuda, cuda:1, cpu")
    ap.add_argument("--dtype", default="auto", help="auto: bfloat16 on GPU, float32 on CPU")
    ap.add_argument("--attn", default=None, help="attention implementation to set on the model (default: its own)")
    ap.add_argument("--bandwidth-gbs", type=float, default=None,
                    help="memory bandwidth for the bound (default from the GPU name: H100 SXM 3350, H200 4800)")
    ap.add_argument("--tiny", action="store_true", help="tiny widths, 2 layers: a CPU smoke test of this script")
    ap.add_argument("--text-layers", type=int, default=None, help="override the decoder's layer count")
    ap.add_argument("--vision-depth", type=int, default=None, help="override the vision tower's depth")
    ap.add_argument("--via-disk", action="store_true",
                    help="save the model to /tmp and load it through TransformersEngine's own constructor")
    ap.add_argument("--no-warmup", action="store_true", help="skip the 1-row warm-up generate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="output JSON (default $OUT/gpu_stage2.json or ./gpu_stage2.json)")
    return ap.parse_args()


def make_engine(args, model, processor, device, dtype):
    from builder.engines.transformers_engine import TransformersEngine

    if not args.via_disk:
        return TransformersEngine.from_loaded(model, processor.tokenizer, processor, name="random-qwen2.5-vl-7b")
    import shutil

    import torch

    path = Path("/tmp/gpu_stage2_model" + ("_tiny" if args.tiny else ""))
    shutil.rmtree(path, ignore_errors=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    processor.tokenizer.save_pretrained(path)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    log(f"saved to {path}; loading through TransformersEngine")
    return TransformersEngine(str(path), device=str(device), dtype=str(dtype).removeprefix("torch."))


def setup(args) -> SimpleNamespace:
    """Device, dtype, GPU name and bandwidth for the bound; logs what will be run."""
    import torch
    import transformers

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    dtype = (torch.bfloat16 if device.type == "cuda" else torch.float32) if args.dtype == "auto" \
        else getattr(torch, args.dtype)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    bandwidth = args.bandwidth_gbs or default_bandwidth(gpu)
    source = "--bandwidth-gbs" if args.bandwidth_gbs else f"from the GPU name {gpu!r}" if bandwidth \
        else "unknown: give --bandwidth-gbs"
    rows = args.prompts * args.n if args.temperature > 0 else args.prompts  # greedy: one row per request
    arch = ("tiny" if args.tiny else "Qwen2.5-VL-7B") + "".join(
        f", {k} {v}" for k, v in (("text layers", args.text_layers), ("vision depth", args.vision_depth)) if v)
    ctx = SimpleNamespace(args=args, device=device, dtype=dtype, gpu=gpu, bandwidth=bandwidth, source=source,
                          rows=rows, batch=args.batch_size or rows, arch=arch, phases={})
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, device {device} ({gpu or 'cpu'}), "
        f"dtype {dtype}, {arch} architecture; parts {args.parts}, samplers {args.samplers}")
    log(f"stage 2: {args.prompts} prompts x n={args.n} = {rows} rows, batch {ctx.batch} rows, "
        f"{args.max_new_tokens} new tokens (EOS blocked), T={args.temperature} top_p={args.top_p} "
        f"rep={args.repetition_penalty}, {args.image_size}x{args.image_size} images, max_pixels {args.max_pixels}")
    return ctx


def build(ctx: SimpleNamespace) -> None:
    """The processor, config, random-weight model and the engine around it (into ``ctx``)."""
    import torch

    args, device = ctx.args, ctx.device
    t = time.perf_counter()
    processor = build_processor()
    ctx.config = build_config(processor.tokenizer, args.tiny, args.text_layers, args.vision_depth)
    model = build_model(ctx.config, device, ctx.dtype, args.seed)
    if args.attn:
        model.set_attn_implementation(args.attn)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    ctx.phases["model_build"] = time.perf_counter() - t
    ctx.counts = counts = param_counts(model)
    ctx.weights_mem = torch.cuda.memory_allocated(device) / 1e9 if device.type == "cuda" else None
    ctx.attention = model.config._attn_implementation
    log(f"model built on {device}: {counts['total'] / 1e9:.3f} B parameters (vision {counts['vision'] / 1e9:.3f} B, "
        f"embedding {counts['embedding'] / 1e9:.3f} B) in {ctx.phases['model_build']:.1f}s; attention {ctx.attention}")
    ctx.engine = make_engine(args, model, processor, device, ctx.dtype)


def prompt_tokens(ctx: SimpleNamespace, request) -> tuple[int, int]:
    """A request's prompt length in tokens, and how many of them are image tokens."""
    ids = ctx.engine._encode([request])["input_ids"][0]
    return int(ids.shape[0]), int((ids == ctx.config.image_token_id).sum())


def warm_up(ctx: SimpleNamespace, request) -> None:
    """One row of 4 tokens through the engine (CUDA context, kernels), once, unless ``--no-warmup``."""
    if ctx.args.no_warmup or "warmup" in ctx.phases:
        return
    t = time.perf_counter()
    ctx.engine.generate([dataclasses.replace(request, params=request.params.replace(n=1, max_new_tokens=4))])
    ctx.phases["warmup"] = time.perf_counter() - t
    log(f"warm-up (1 row, 4 tokens): {ctx.phases['warmup']:.1f}s")


def stage2_part(ctx: SimpleNamespace) -> dict:
    """Stage 2 with each sampler in ``--samplers`` (a warm-up first unless ``--no-warmup``)."""
    args, engine = ctx.args, ctx.engine
    requests, blocked = make_requests(args, engine.tokenizer)
    prompt_len, image_tokens = prompt_tokens(ctx, requests[0])
    log(f"{len(requests)} stage-2 requests; prompt {prompt_len} tokens ({image_tokens} image tokens); "
        f"blocked words {list(blocked)}")
    warm_up(ctx, requests[0])
    bound = decode_bound(ctx.config, ctx.counts, ctx.dtype, ctx.batch, prompt_len, args.max_new_tokens, ctx.bandwidth)
    print_bound(bound, f"stage 2, {ctx.batch} rows", ctx.source)
    cases = {}
    samplers = args.samplers.split(",")
    for name in samplers:
        log(f"stage 2, {name} sampler: generating {ctx.rows} rows ...")
        t = time.perf_counter()
        cases[f"stage 2, {name} sampler"] = run_case(engine, requests, legacy=name == "old", batch=ctx.batch,
                                                     device=ctx.device, max_new_tokens=args.max_new_tokens,
                                                     sampled=args.temperature > 0)
        ctx.phases[f"stage2_{name}"] = time.perf_counter() - t
    print_cases(f"stage 2 through the transformers engine ({ctx.gpu or ctx.device}, {ctx.arch}, "
                f"{ctx.counts['total'] / 1e9:.2f} B params, prompt {prompt_len} tokens of which {image_tokens} "
                f"image)", cases, bound)
    return {"bound": bound, "stage2": cases, "result": cases[f"stage 2, {samplers[-1]} sampler"]}


def eval_part(ctx: SimpleNamespace) -> dict:
    """Eval-shaped greedy requests before (the code of before, ``--eval-batches``' first size) and after."""
    args = ctx.args
    requests = make_eval_requests(args)
    prompt_len, _ = prompt_tokens(ctx, requests[0])
    warm_up(ctx, requests[0])
    before, after = (int(b) for b in args.eval_batches.split(","))
    cases, bounds = {}, {}
    for label, legacy, batch in (("before", True, before), ("after", False, after)):
        bounds[label] = decode_bound(ctx.config, ctx.counts, ctx.dtype, min(batch, len(requests)), prompt_len,
                                     args.eval_max_new_tokens, ctx.bandwidth)
        log(f"eval {label}: {len(requests)} greedy requests, batch {batch} ...")
        t = time.perf_counter()
        cases[f"eval, {label} (batch {batch})"] = run_case(ctx.engine, requests, legacy=legacy, batch=batch,
                                                           device=ctx.device, sampled=False,
                                                           max_new_tokens=args.eval_max_new_tokens)
        ctx.phases[f"eval_{label}"] = time.perf_counter() - t
    for (name, case), bound in zip(cases.items(), bounds.values()):
        print_cases(f"{name}: eval-shaped greedy requests, prompt {prompt_len} tokens, "
                    f"{args.eval_max_new_tokens} new tokens at most", {name: case}, bound)
    return {"eval": cases, "eval_bounds": bounds}


def main() -> None:
    import torch
    import transformers

    args = parse_args()
    ctx = setup(args)
    ctx.phases["imports"] = time.perf_counter() - T_START
    build(ctx)
    config = ctx.config
    report = {"args": vars(args), "device": str(ctx.device), "gpu": ctx.gpu, "dtype": str(ctx.dtype),
              "torch": torch.__version__, "transformers": transformers.__version__, "params": ctx.counts,
              "attention": ctx.attention, "weights_gpu_mem_gb": ctx.weights_mem,
              "config": {"text": {k: getattr(config.text_config, k) for k in
                                  ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                                   "intermediate_size", "vocab_size")}, "vision_depth": config.vision_config.depth}}
    parts = args.parts.split(",")
    if "stage2" in parts:
        report.update(stage2_part(ctx))
    if "eval" in parts:
        report.update(eval_part(ctx))
    print("  phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in ctx.phases.items()), flush=True)
    report.update(phases_s=ctx.phases, wall_s=time.perf_counter() - T_START)
    dest = Path(args.json) if args.json else Path(os.environ.get("OUT") or ".") / "gpu_stage2.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(report, indent=2, default=str))
    log(f"wrote {dest}; wall {report['wall_s']:.1f}s")


if __name__ == "__main__":
    main()
