"""Pipeline overhead per record of stages 1, 2 and 3: everything but the model, with an instant engine.

``ReplayEngine`` answers every request at once with stored texts (the authors' real generations, lengthened to
--chars characters), so the time measured is the stage's own: prompts, parsing, labelling, the bad-word check,
ids, chunked writes. Stage 3 runs ``--repeats`` times on the same stage-2 records (after a warm-up run that pays
the imports), and its median, fastest and slowest run are printed: on a shared machine one run says little. It
runs once more with the bad-word check of the issue's measurement (one regex search per bad word, the oracle
``first_bad_word_v1`` of tests/test_bad_words.py, on every text). The bad-word check alone is also timed on the
stage-3 added texts: per text (``first_bad_word``) and per chunk-sized batch (``first_bad_words``).

    python benchmarks/bench_stage_overhead.py [--images 100] [--chars 3000] [--repeats 5] [--work DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

import pyarrow as pa

from builder.settings import PipelineConfig
from builder.engines.base import Engine, Request, Sample
from builder.records import SOURCE
from builder.runtime import run_with
from builder.stages import expansion, mcq, simple_cot
from builder.store import RunDir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_bad_words import first_bad_word_v1  # noqa: E402  (the former implementation, kept once, as the oracle)


class ReplayEngine(Engine):
    """Replays stored texts, in order, one per sample: an engine that costs nothing."""

    name = "replay"

    def __init__(self, texts: list[str], model: str = "replay") -> None:
        super().__init__(model)
        self.texts, self.i = texts, 0

    def generate(self, requests: list[Request], *, progress: bool = False) -> list[list[Sample]]:
        out = []
        for r in requests:
            samples = []
            for _ in range(r.params.n):
                samples.append(Sample(self.texts[self.i % len(self.texts)], "stop"))
                self.i += 1
            out.append(samples)
        return out


def _reference() -> Path:
    from builder.upstream import EXAMPLE_DIR  # the authors' example outputs, shipped with the package

    return EXAMPLE_DIR


def _lengthen(texts: list[str], chars: int) -> list[str]:
    """Texts of about ``chars`` characters: each text followed by the next ones, cut at a word boundary."""
    out = []
    for i in range(len(texts)):
        t, j = texts[i], i
        while len(t) < chars:
            j += 1
            t += " " + texts[j % len(texts)]
        out.append(t[:chars].rsplit(" ", 1)[0])
    return out


def replay_texts(chars: int) -> dict[str, list[str]]:
    ref = _reference()
    rows = list(csv.DictReader(open(ref / "docci_mcq.csv", encoding="utf-8")))
    per_image = {r["image_id"]: r for r in rows}
    stage2 = [json.loads(line) for line in open(next(ref.glob("stage2_*.jsonl")), encoding="utf-8")]
    thoughts = [p.split("</think>")[0].replace("<think>", "").strip() for rec in stage2 for p in rec["predict"]
                if "</think>" in p]
    stage3 = [json.loads(line) for line in open(next(ref.glob("stage3_*.jsonl")), encoding="utf-8")]
    continuations = [p.split("</think>")[0].split("Wait,", 1)[-1].strip() for rec in stage3 for p in rec["predict"]]
    letters = "ABCD"
    return {
        "descriptions": [r["description"] for r in per_image.values()],
        "mcq_raw": [r["_mcq_gen_raw_response"] for r in per_image.values()],
        "mcq_formatted": [r["_parse_to_mcq_response"] for r in per_image.values()],
        # stage 2 continues "<think>"; the answer letter cycles, so some are right and some wrong
        "stage2": [f"{t}</think>\n<answer>({letters[i % 4]})</answer>" for i, t in enumerate(_lengthen(thoughts, chars))],
        # bad words are blocked at generation time, so most continuations hold none (one in ten keeps its own)
        "stage3": [f" {t if i % 10 == 0 else _scrub(t)}</think>\n\n<answer>({letters[i % 3]})</answer>"
                   for i, t in enumerate(_lengthen(continuations, chars))],
    }


def _scrub(text: str) -> str:
    from builder.settings import BAD_WORDS

    words = "|".join(re.escape(w) for w in sorted(BAD_WORDS, key=len, reverse=True))
    return re.sub(r"(?<![\w'])(?:" + words + r")(?![\w'])", "scene", text, flags=re.I)


def timed(label: str, fn, count) -> dict:
    """Run ``fn``; wall and CPU time per record (``count()`` records after it)."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    n = max(count(), 1)
    row = {"stage": label, "records": n, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
           "ms_per_record": round(1000 * wall / n, 3), "cpu_ms_per_record": round(1000 * cpu / n, 3)}
    print(f"{label:<34} {n:>7} records {wall:7.2f} s wall {cpu:7.2f} s CPU {row['ms_per_record']:7.3f} ms/record",
          flush=True)
    return row


def per_text(fn):
    """A ``first_bad_words`` that runs ``fn`` (a one-text ``first_bad_word``) on every text."""
    return lambda texts, bad_words, *, substring=False: [fn(t, bad_words, substring=substring) for t in texts]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--chars", type=int, default=3000, help="length of the simple thoughts and continuations")
    ap.add_argument("--repeats", type=int, default=5, help="stage-3 runs whose median is reported")
    ap.add_argument("--work", default="/tmp/lpt-stage-bench")
    args = ap.parse_args()
    texts = replay_texts(args.chars)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    images = sorted((ROOT / "builder" / "data" / "sample" / "images").glob("*.png"))
    config = PipelineConfig.preset("paper")  # stage 2: n=3; stage 3: n=3, the four cues, the 23 bad words
    run = RunDir(work / "run")
    run.write_table("source", pa.Table.from_pylist([
        {"image_id": f"img_{i:05d}", "source": "bench", "split": "train", "image_path": str(images[i % len(images)]),
         "description": texts["descriptions"][i % len(texts["descriptions"])]} for i in range(args.images)],
        schema=SOURCE))
    counts = run.counts
    results = [
        timed("stage 1 (MCQs)", lambda: run_with(mcq.SPEC, run, ReplayEngine(texts["mcq_raw"]), config, progress=False,
                                                mcq_reformat=ReplayEngine(texts["mcq_formatted"])),
              lambda: counts()["mcq"]),
        timed("stage 2 (simple CoTs)", lambda: run_with(simple_cot.SPEC, run, ReplayEngine(texts["stage2"]), config,
                                                              progress=False), lambda: counts()["simple_cot"]),
    ]

    def stage3(label: str, **patches) -> dict:
        """One stage-3 run, with ``patches`` (name -> stand-in) of builder.stages.expansion in place."""
        shutil.rmtree(run.path / "expansion", ignore_errors=True)
        saved = {name: getattr(expansion, name) for name in patches}
        for name, value in patches.items():
            setattr(expansion, name, value)
        try:
            return timed(label, lambda: run_with(expansion.SPEC, run, ReplayEngine(texts["stage3"]), config, progress=False),
                         lambda: counts()["expansion"])
        finally:
            for name, value in saved.items():
                setattr(expansion, name, value)

    stage3("stage 3 warm-up (not counted)")
    runs = [stage3(f"stage 3, run {i + 1} of {args.repeats}") for i in range(args.repeats)]
    for key, what in (("ms_per_record", "wall"), ("cpu_ms_per_record", "CPU")):
        values = sorted(r[key] for r in runs)
        print(f"stage 3 {what}: median {statistics.median(values):.3f} ms/record, fastest {values[0]:.3f}, "
              f"slowest {values[-1]:.3f}")
    middle = sorted(runs, key=lambda r: r["cpu_ms_per_record"])[len(runs) // 2]  # the run of median CPU time
    results += [dict(middle, stage=f"stage 3 (median run of {args.repeats})"),
                stage3("stage 3, bad words one regex per word", first_bad_word=first_bad_word_v1,  # no screen
                       may_hold_bad_words=lambda texts, *args, **kwargs: [True] * len(texts))]
    added = [r["cue"] + r["continuation"].split("</think>")[0]
             for r in run.read("expansion").select(["cue", "continuation"]).to_pylist()]
    words = config.stage3.bad_words
    check = {}
    batch = 3 * 64  # a chunk of the default size: 64 simple CoTs, three expansions each
    for label, fn in (("one regex per word", per_text(first_bad_word_v1)), ("per text", per_text(
            expansion.first_bad_word)), ("per chunk", expansion.first_bad_words)):
        t = time.perf_counter()
        found = [w for s in range(0, len(added), batch) for w in fn(added[s:s + batch], words)]
        check[label] = (time.perf_counter() - t) / len(added) * 1e6, found
    assert len({tuple(found) for _, found in check.values()}) == 1  # the same answers
    print()
    print(f"{'stage':<40} | {'records':>7} | {'wall s':>6} | {'ms/record (wall)':>16} | {'ms/record (CPU)':>15}")
    for r in results:
        print(f"{r['stage']:<40} | {r['records']:>7} | {r['wall_s']:>6} | {r['ms_per_record']:>16} | "
              f"{r['cpu_ms_per_record']:>15}")
    print(f"\nbad-word check of {len(added)} added texts of ~{args.chars} chars, µs per text: "
          + ", ".join(f"{label} {us:.0f}" for label, (us, _) in check.items())
          + f"; the same answers, {sum(map(bool, check['per chunk'][1]))} with a bad word")


if __name__ == "__main__":
    main()
