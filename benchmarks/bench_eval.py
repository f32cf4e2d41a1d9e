"""Throughput of the eval plugin on a GPU: items/second for the seven task definitions.

A random-weight model with the full Qwen2.5-VL-7B-Instruct architecture (no weights can be fetched) is built
from the tiny test VLM's tokenizer/processor (builder.tiny_models) with the 7B sizes, saved in bfloat16, and
run through eval_tasks.model (transformers engine) by lighteval's Pipeline on sample data in each benchmark's
real schema (eval_tasks.samples; images 1024×768, capped to 512·512 area like the paper). Random weights never
emit EOS, so every item generates exactly --max-new-tokens tokens: the numbers are a worst case per token budget.

    python benchmarks/bench_eval.py --items 16 --max-new-tokens 128 [--batch-size 8] [--engine vllm]

(needs lighteval, i.e. the eval extra: on a machine without it, ``gpu_stage2.py``'s eval part measures the same
engine path with eval-shaped requests.)

Never run by CI. Prints one line per task and the total.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

QWEN25_VL_7B_TEXT = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                         num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768, rope_theta=1e6)
QWEN25_VL_7B_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                           fullatt_block_indexes=[7, 15, 23, 31])


def build_full_size(out: Path) -> Path:
    """Random Qwen2.5-VL-7B-sized checkpoint with the tiny VLM's processor (token ids kept consistent)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from builder.tiny_models import build_tiny_vlm

    tiny = Path(build_tiny_vlm(out / "tiny"))
    cfg = AutoConfig.from_pretrained(tiny)
    text = getattr(cfg, "text_config", cfg)
    for k, v in QWEN25_VL_7B_TEXT.items():
        setattr(text, k, max(v, text.vocab_size) if k == "vocab_size" else v)
        if text is not cfg and hasattr(cfg, k):
            setattr(cfg, k, getattr(text, k))
    for k, v in QWEN25_VL_7B_VISION.items():
        setattr(cfg.vision_config, k, v)
    with torch.device("cuda"):
        model = AutoModelForImageTextToText.from_config(cfg, dtype=torch.bfloat16)
    full = out / "qwen2.5-vl-7b-random"
    model.save_pretrained(full)
    del model
    torch.cuda.empty_cache()
    for f in tiny.iterdir():  # tokenizer, processor, chat template
        if f.is_file() and not f.name.startswith(("model", "config.json", "generation_config")):
            shutil.copy(f, full / f.name)
    return full


class _KeepOpen:
    """The engine, loaded once for all tasks (lighteval closes its model after each run)."""

    def __init__(self, engine):
        self.engine = engine

    def generate(self, requests, *, progress=False):
        return self.engine.generate(requests, progress=progress)

    def close(self):
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=16, help="items written per task (MMStar-V/MME-RW-V keep fewer)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=None,
                    help="rows per generate call (default: the engine's own, 64 on a GPU for transformers)")
    ap.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    ap.add_argument("--model", default=None, help="an existing checkpoint instead of building the random 7B")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--protocol", default="project", choices=["authors", "project"],
                    help="prompt words and budget (authors: needs LPT_AUTHORS_DIR offline); --max-new-tokens caps both")
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_eval_"))
    os.environ.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "LPT_ENGINE": args.engine,
                       "LPT_DTYPE": "bfloat16", "LPT_MAX_NEW_TOKENS": str(args.max_new_tokens),
                       "LPT_EVAL_CACHE_DIR": str(work / "cache")})
    if args.batch_size:
        os.environ["LPT_BATCH_SIZE"] = str(args.batch_size)
    from eval_tasks.cli import run_eval
    from eval_tasks.samples import write_sample_data
    from eval_tasks.tasks import BENCHMARKS, make_task, task_string

    t0 = time.perf_counter()
    model = args.model or str(build_full_size(work))
    print(f"model ready in {time.perf_counter() - t0:.0f}s: {model}")
    data = write_sample_data(work / "data", n=args.items, size=(1024, 768))

    from lighteval.tasks.lighteval_task import LightevalTask

    from builder.engines import load_engine
    from eval_tasks.model import engine_options_from_env

    settings = engine_options_from_env()
    t0 = time.perf_counter()
    engine = _KeepOpen(load_engine(settings["engine"], model, **settings["engine_options"]))
    print(f"engine loaded in {time.perf_counter() - t0:.0f}s")
    rows = []
    for bench in BENCHMARKS:  # one task per run, so each gets its own wall time
        n = len(LightevalTask(make_task(bench, "think", data, protocol=args.protocol)).eval_docs())
        start = time.perf_counter()
        run_eval(model, task_string([bench]), output_dir=str(work / "out"), data_dir=str(data), engine=engine,
                 protocol=args.protocol)
        wall = time.perf_counter() - start
        rows.append({"task": bench, "items": n, "seconds": round(wall, 2), "items_per_s": round(n / wall, 3)})
        print(json.dumps(rows[-1]))
    total_n, total_s = sum(r["items"] for r in rows), sum(r["seconds"] for r in rows)
    print(json.dumps({"task": "all", "items": total_n, "seconds": round(total_s, 2),
                      "items_per_s": round(total_n / total_s, 3), "engine": args.engine,
                      "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}))


if __name__ == "__main__":
    main()
