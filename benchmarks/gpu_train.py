"""``lpt train``'s SFT and DPO steps at full size on one GPU: a random-weight Qwen2.5-VL-7B in bf16.

Builds the Qwen2.5-VL-7B-Instruct architecture (``benchmarks/gpu_stage2.py``'s configs, tokenizer and image-only
processor; random bf16 weights made on the GPU; nothing downloaded) and trains it with the project's own
training pieces (:mod:`builder.train`): the recipe (:data:`builder.train.recipe.SFT_RECIPE` /
``DPO_RECIPE``: per-device batch 1, ``max_length`` 2048, gradient checkpointing, vision tower and projector
frozen) mapped onto TRL by :func:`builder.train.trainer.trl_args`, TRL's ``SFTTrainer`` / ``DPOTrainer`` and
the project's counting collator. Rows are synthetic: the authors'-protocol system prompt, a 512x512 image
(noise) and a question, and an assistant turn long enough that each sequence is ``--seq-len`` tokens.

It prints, per stage: step time (median of the steps after ``--warmup``), tokens/s, peak GPU memory, and the
bound: model FLOPs per token (6 N + attention for SFT; 8 N + attention for DPO, whose reference model runs a
forward pass too; N = the language model's non-embedding parameters; the frozen vision tower's forward
counted by its image tokens) x tokens/s, against the card's dense bf16 peak (MFU). A JSON of everything goes to
``$OUT/gpu_train.json`` (``$OUT`` unset: the current folder). Without a CUDA GPU it says so and exits 0.

    python3 benchmarks/gpu_train.py                           # SFT and DPO, 7B (H200 for DPO's two models)
    python3 benchmarks/gpu_train.py --stage sft --steps 6     # H100: full SFT fits (bf16 AdamW states)
    python3 benchmarks/gpu_train.py --stage dpo --lora 64     # H100: DPO with LoRA (no second model)
    python3 benchmarks/gpu_train.py --tiny --device cpu --steps 2 --seq-len 512   # smoke test, no GPU
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# dense bf16 tensor-core peak, TFLOP/s (vendor data sheets; no sparsity)
PEAK_BF16 = [("H200", 989.0), ("H100 PCIE", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("A100", 312.0),
             ("L40S", 362.0), ("A40", 150.0)]


def stage2():
    """benchmarks/gpu_stage2.py as a module (its 7B configs, tokenizer and processor)."""
    spec = importlib.util.spec_from_file_location("gpu_stage2", ROOT / "benchmarks" / "gpu_stage2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peak_tflops(gpu_name: str | None) -> float | None:
    name = (gpu_name or "").upper()
    return next((peak for key, peak in PEAK_BF16 if key in name), None)


def flops_per_token(config, seq_len: int, stage: str) -> float:
    """Model FLOPs per trained token: (6 or 8) x N_nonembedding + the attention term, per Kaplan et al. (2020)."""
    t = config.text_config
    head_dim = t.hidden_size // t.num_attention_heads
    kv = t.num_key_value_heads * head_dim
    per_layer = (t.hidden_size * (t.hidden_size + 2 * kv) + t.hidden_size * t.hidden_size
                 + 3 * t.hidden_size * t.intermediate_size)
    n = t.num_hidden_layers * per_layer + t.hidden_size * t.vocab_size  # + lm_head
    attention = 2 * t.num_hidden_layers * seq_len * t.hidden_size  # QK^T and AV, forward, per token
    passes = 4 if stage == "dpo" else 3  # forward + backward (2x); DPO adds the reference model's forward
    return passes * (2 * n + attention)


def make_rows(processor, seq_len: int, n: int, image_side: int):
    """``n`` SFT rows (prompt / completion / images) of about ``seq_len`` tokens each."""
    import numpy as np
    from PIL import Image

    from builder.train.data import system_prompt

    tok = processor.tokenizer
    rng = np.random.default_rng(0)
    words = "the red bus stands near a tall building while two people walk past the bench".split()
    rows = []
    for i in range(n):
        image = Image.fromarray(rng.integers(0, 255, (image_side, image_side, 3), dtype=np.uint8))
        prompt = [{"role": "system", "content": system_prompt("authors")},
                  {"role": "user", "content": f"Question {i}: what colour is the bus?\nSelect from the following "
                                              "choices.\n(A) Red\n(B) Blue\n(C) Green\n(D) Yellow"}]
        ids = tok(" ".join(words[j % len(words)] for j in range(seq_len * 2)), add_special_tokens=False)["input_ids"]
        keep = seq_len
        for _ in range(4):  # shrink the thought until the whole row (image tokens included) fits seq_len
            thought = tok.decode(ids[:keep])
            over = _length(processor, prompt, thought, image) - (seq_len - 2)
            if over <= 0:
                break
            keep = max(8, keep - over - 4)
        rows.append({"prompt": prompt, "images": [image],
                     "completion": [{"role": "assistant", "content": f"<think> {thought} </think> <answer> (A) "
                                                                     "</answer>"}],
                     "rejected": [{"role": "assistant", "content": f"<think> {thought} </think> <answer> (B) "
                                                                   "</answer>"}]})
    return rows


def _length(processor, prompt, thought: str, image) -> int:
    messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
    messages[1] = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt[1]["content"]}]}
    messages.append({"role": "assistant", "content": f"<think> {thought} </think> <answer> (A) </answer>"})
    text = processor.apply_chat_template(messages, tokenize=False)
    return int(processor(images=[image], text=[text], return_tensors="pt")["input_ids"].shape[1])


class StepTimer:
    """A TrainerCallback timing each optimiser step (CUDA-synchronised)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda, self.times, self._t = cuda, [], 0.0

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kw):
        self._sync()
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self._sync()
        self.times.append(time.perf_counter() - self._t)

    def __getattr__(self, name):  # the other TrainerCallback events: nothing to do
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)


def run_stage(stage: str, args, bench, processor, device) -> dict:
    import datasets
    import torch
    import trl

    from builder.train.recipe import RECIPES
    from builder.train.trainer import BatchStats, CountingCollator, Options, freeze_vision, lora_config, trl_args

    cuda = device.type == "cuda"
    config = bench.build_config(processor.tokenizer, args.tiny, args.text_layers, None)
    model = bench.build_model(config, device, torch.bfloat16 if cuda else torch.float32, 0)
    model.train()
    freeze_vision(model)
    recipe = RECIPES[stage].with_overrides(max_length=args.seq_len, save_steps=10**9, logging_steps=1,
                                           warmup_steps=0)
    out = Path(args.out) / f"trl-{stage}"
    targs = trl_args(stage, recipe, out, Options(max_steps=args.steps, progress=False), use_gpu=cuda)
    targs.gradient_checkpointing = recipe.gradient_checkpointing  # on the CPU smoke run too
    targs.save_strategy = "no"
    rows = make_rows(processor, args.seq_len, args.steps + 1, 128 if args.tiny else 512)
    if stage == "sft":
        data = datasets.Dataset.from_list([{k: r[k] for k in ("prompt", "completion", "images")} for r in rows])
    else:
        data = datasets.Dataset.from_list([{"prompt": r["prompt"], "chosen": r["completion"],
                                            "rejected": r["rejected"], "images": r["images"]} for r in rows])
    extra = {}
    if stage == "dpo" and not args.lora:
        extra["ref_model"] = bench.build_model(config, device, model.dtype, 0).eval()
    peft = lora_config(args.lora, True) if args.lora else None
    cls = trl.SFTTrainer if stage == "sft" else trl.DPOTrainer
    timer = StepTimer(cuda)
    trainer = cls(model=model, args=targs, train_dataset=data, processing_class=processor, peft_config=peft,
                  callbacks=[timer], **extra)
    stats = BatchStats()
    trainer.data_collator = CountingCollator(trainer.data_collator, recipe.image_max_pixels, stats)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    steady = timer.times[args.warmup:] or timer.times
    step = statistics.median(steady)
    tokens_per_step = stats.tokens / max(stats.batches, 1)
    tps = tokens_per_step / step
    fpt = flops_per_token(config, int(tokens_per_step) // (2 if stage == "dpo" else 1), stage)
    gpu = torch.cuda.get_device_name(0) if cuda else None
    peak = peak_tflops(gpu)
    result = {"stage": stage, "steps": len(timer.times), "step_s_median": round(step, 3),
              "step_s_all": [round(t, 3) for t in timer.times], "tokens_per_step": round(tokens_per_step, 1),
              "tokens_per_s": round(tps, 1), "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
              if cuda else None, "flops_per_token": fpt, "achieved_tflops": round(fpt * tps / 1e12, 2),
              "gpu": gpu, "peak_bf16_tflops": peak, "lora": args.lora,
              "mfu": round(fpt * tps / 1e12 / peak, 4) if peak else None,
              "bound_tokens_per_s": round(peak * 1e12 / fpt, 1) if peak else None,
              "batches_with_images": stats.with_pixels, "batches": stats.batches,
              "labelled_per_step": round(stats.labelled / max(stats.batches, 1), 1)}
    del trainer, model, extra
    if cuda:
        torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", choices=["sft", "dpo", "both"], default="both")
    p.add_argument("--steps", type=int, default=6, help="optimiser steps per stage (batch: the recipe's, 1)")
    p.add_argument("--warmup", type=int, default=2, help="steps left out of the median")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per sequence (recipe: cutoff_len 2048)")
    p.add_argument("--lora", type=int, default=None, metavar="RANK", help="LoRA instead of full fine-tuning")
    p.add_argument("--text-layers", type=int, default=None, help="fewer decoder layers (to fit a smaller card)")
    p.add_argument("--tiny", action="store_true", help="tiny widths (CPU smoke test)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU: skipped (run on a GPU machine; --tiny --device cpu for a smoke test)")
        return None
    bench = stage2()
    processor = bench.build_processor()
    results = {"args": vars(args), "stages": []}
    for stage in (["sft", "dpo"] if args.stage == "both" else [args.stage]):
        r = run_stage(stage, args, bench, processor, torch.device(args.device))
        results["stages"].append(r)
        print(f"{stage}: {r['step_s_median']} s/step, {r['tokens_per_s']} tokens/s, peak {r['peak_mem_gib']} GiB, "
              f"{r['achieved_tflops']} TFLOP/s of {r['peak_bf16_tflops']} (MFU {r['mfu']}), "
              f"bound {r['bound_tokens_per_s']} tokens/s; images in {r['batches_with_images']}/{r['batches']}",
              flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_train.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
