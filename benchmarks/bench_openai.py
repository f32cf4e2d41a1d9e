"""Throughput of OpenAIEngine against a running OpenAI-compatible server, per concurrency level.

    # e.g. on a GPU box:  vllm serve Qwen/Qwen2.5-VL-7B-Instruct --port 8000
    python benchmarks/bench_openai.py --base-url http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-VL-7B-Instruct \
        --requests 64 --concurrency 1 4 16 64 --max-new-tokens 128 [--image]

Prints one row per concurrency: wall seconds, requests/s, generated tokens/s (from the server's usage
counts). No cache is used, so every request goes to the server. Never run by CI.
"""

from __future__ import annotations

import argparse
import time

from PIL import Image

from builder.engines import Request, SamplingParams
from builder.engines.openai_engine import OpenAIEngine


def make_requests(count: int, max_new_tokens: int, image: bool) -> list[Request]:
    out = []
    for i in range(count):
        text = f"Describe scene number {i} in two sentences."
        content: list[dict] | str = text
        if image:
            img = Image.new("RGB", (448, 448), ((37 * i) % 256, (91 * i) % 256, (13 * i) % 256))
            content = [{"type": "image", "image": img}, {"type": "text", "text": text}]
        params = SamplingParams(temperature=0.7, max_new_tokens=max_new_tokens, seed=i)
        out.append(Request([{"role": "user", "content": content}], params))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--image", action="store_true", help="attach a 448x448 image to each request")
    args = ap.parse_args()

    requests = make_requests(args.requests, args.max_new_tokens, args.image)
    print(f"{'concurrency':>11} {'wall s':>8} {'req/s':>8} {'tok/s':>9}")
    for c in args.concurrency:
        engine = OpenAIEngine(args.model, base_url=args.base_url, concurrency=c)
        t0 = time.perf_counter()
        out = engine.generate(requests)
        wall = time.perf_counter() - t0
        tokens = sum(s.num_tokens or 0 for samples in out for s in samples)
        print(f"{c:>11} {wall:>8.2f} {len(requests) / wall:>8.2f} {tokens / wall:>9.1f}")


if __name__ == "__main__":
    main()
