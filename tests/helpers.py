"""Helpers shared by the tests: the packaged authors' example outputs, a REPLAY engine, small sources and configs.

``ReplayEngine`` is a REPLAY stand-in for the GPU models (no model runs): it answers each request with text
that a real model could have written (tagged MCQs built from the description; thoughts and answers), chosen
deterministically from the request's content and seed. It is used to test parsing and flow with outputs that
parse; it never decides a label (that is builder.answers' job on whatever text comes back).
"""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
from PIL import Image

from builder.settings import PipelineConfig, load_config
from builder.engines.base import Engine, Request, Sample
from builder.upstream import EXAMPLE_DIR
from builder.records import SOURCE, stable_int
from builder.stages import expansion, mcq, simple_cot
from builder.runtime import run_with
from builder.store import RunDir

UPSTREAM = EXAMPLE_DIR  # the authors' example outputs, as the package ships them

COLOURS = ["red", "blue", "green", "yellow", "purple", "orange"]


class ReplayEngine(Engine):
    """REPLAY engine (not a model): deterministic scripted replies per request kind, for flow tests.

    ``fail_after``: raise after that many ``generate`` calls (a crash in the middle of a stage).
    ``delay``: seconds to sleep per request (so a subprocess can be killed mid-way).
    """

    name = "replay"

    def __init__(self, model: str = "replay", *, fail_after: int | None = None, delay: float = 0.0,
                 continuation: str | None = None) -> None:
        super().__init__(model)
        self.calls: list[Request] = []
        self.fail_after = fail_after
        self.delay = delay
        self.continuation = continuation
        self.generate_calls = 0

    def generate(self, requests, *, progress=False):
        import time

        if self.fail_after is not None and self.generate_calls >= self.fail_after:
            raise RuntimeError("replay engine: simulated crash")
        self.generate_calls += 1
        out = []
        for req in requests:
            if self.delay:
                time.sleep(self.delay)
            self.calls.append(req)
            out.append([Sample(self._reply(req, k), "stop") for k in range(req.params.n)])
        return out

    def _reply(self, req: Request, k: int) -> str:
        text = _text_of(req.messages[-1]) if not req.continue_final_message else _text_of(req.messages[-2])
        rng = random.Random(stable_int(req.params.seed, k, text))
        reply_head = "Here are the questions:\n\n"
        described = next((m for m in ("Image description:", "Image Description:") if m in text), None)  # ours, theirs
        if req.messages[-1]["role"] == "user" and described and reply_head not in text:  # stage 1 generation
            desc = text.split(described)[1].strip()
            items = []
            for i, word in enumerate(w for w in COLOURS if w in desc):
                wrong = [c.capitalize() for c in COLOURS if c != word][:3]
                opts = wrong[:i % 4] + [word.capitalize()] + wrong[i % 4:]
                choices = " ".join(f"({'ABCD'[j]}) {o}" for j, o in enumerate(opts))
                items.append(f"{i + 1}. <question> Which colour is thing {i}? </question> <choices> {choices} "
                             f"</choices> <answer> {word.capitalize()} </answer> <type> Recognition </type>")
            items.append(f"{len(items) + 1}. <question> A broken one? </question> <choices> (A) Yes (B) No "
                         "</choices> <answer> Maybe </answer> <type> Recognition </type>")
            return reply_head + "\n\n".join(items)
        if req.messages[-1]["role"] == "user":  # stage 1 re-format: echo the list of the reply it was given
            return text.split("Text:\n", 1)[1] if "Text:\n" in text else text[text.index(reply_head):]
        if req.messages[-1]["content"] == "<think>":  # stage 2
            letter = rng.choice("ABCD")
            if rng.random() < 0.15:
                return " I cannot tell."  # unparseable
            if rng.random() < 0.2:
                return " The object looks plain. </think>\n<answer>(A)</answer>"  # duplicates likely
            return f" Looking at the texture, option {letter} fits. </think>\n<answer>({letter})</answer>"
        if self.continuation is not None:
            return self.continuation
        letter = rng.choice("ABCD")
        bad = rng.random() < 0.3
        word = "the description says" if bad else "the texture shows"
        return f" looking again, {word} option {letter}.\n</think>\n\nSo.\n\n<answer>({letter})</answer>"


def _text_of(message: dict) -> str:
    c = message["content"]
    return c if isinstance(c, str) else " ".join(p.get("text", "") for p in c if p.get("type") == "text")


def make_source(run: RunDir, tmp: Path, n: int = 6) -> list[dict]:
    rows = []
    for i in range(n):
        img = tmp / f"img_{i}.png"
        Image.new("RGB", (64 + i, 48), (40 * i % 255, 90, 200)).save(img)
        colours = [COLOURS[(i + j) % len(COLOURS)] for j in range(2 + i % 3)]
        rows.append({"image_id": f"img_{i:03d}", "source": "test", "split": "train", "image_path": str(img),
                     "description": f"A still life with {', '.join(colours)} objects on a wooden table."})
    run.write_table("source", pa.Table.from_pylist(rows, schema=SOURCE))
    return rows


def small_config(**over) -> PipelineConfig:
    cfg = load_config("paper", overrides=["stage2.n=3", "stage3.n=2", "chunk_size=4"])
    return cfg.merge(over) if over else cfg


def run_all(run: RunDir, engine: Engine, cfg: PipelineConfig, **kw):
    return (run_with(mcq.SPEC, run, engine, cfg, progress=False, **kw), run_with(simple_cot.SPEC, run, engine, cfg, progress=False, **kw),
            run_with(expansion.SPEC, run, engine, cfg, progress=False, **kw))
