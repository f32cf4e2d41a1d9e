"""Crash safety: a stage killed with SIGKILL mid-way, then rerun, ends with exactly the rows of a clean run.

The stage runs in a child process with the REPLAY engine of test_stages (slowed down so the kill lands
mid-run); the parent watches the stage folder and kills the child as soon as the first chunk file appears.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ReplayEngine, make_source, small_config

from builder.stages import expansion, mcq, simple_cot
from builder.runtime import run_with
from builder.store import RunDir

TESTS = Path(__file__).resolve().parent
CHILD = """
import sys
sys.path.insert(0, {tests!r})
from helpers import ReplayEngine, small_config
from builder.stages import {stage}
from builder.runtime import run_with
from builder.store import RunDir
cfg = small_config().apply_overrides(["chunk_size=1"])
run_with({stage}.SPEC, RunDir({run!r}), ReplayEngine(delay={delay}), cfg, progress=False)
print("finished")
"""


def _kill_after_first_chunk(run: RunDir, stage: str, module: str, delay: float) -> int:
    code = CHILD.format(tests=str(TESTS), stage=module, run=str(run.path), delay=delay)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while not run.files(stage):
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"child ended before writing a chunk: {out.decode()} {err.decode()}")
            if time.monotonic() > deadline:
                pytest.fail("no chunk written within 120 s")
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        rc = proc.wait()
    return rc


def _prepared(tmp_path: Path, name: str, n_images: int = 8) -> RunDir:
    run = RunDir(tmp_path / name)
    make_source(run, tmp_path, n=n_images)
    cfg = small_config()
    run_with(mcq.SPEC, run, ReplayEngine(), cfg, progress=False)
    return run


@pytest.mark.parametrize("stage,module", [("simple_cot", "simple_cot"), ("expansion", "expansion")])
def test_sigkill_mid_stage_then_rerun_equals_clean_run(tmp_path, stage, module):
    cfg = small_config().apply_overrides(["chunk_size=1"])
    clean = _prepared(tmp_path, "clean")
    crashed = _prepared(tmp_path, "crashed")
    if stage == "expansion":
        for run in (clean, crashed):
            run_with(simple_cot.SPEC, run, ReplayEngine(), cfg, progress=False)
    runner = simple_cot if stage == "simple_cot" else expansion
    run_with(runner.SPEC, clean, ReplayEngine(), cfg, progress=False)
    total = clean.read(stage).num_rows
    n_inputs = len(clean.done_inputs(stage))
    assert n_inputs >= 10

    rc = _kill_after_first_chunk(crashed, stage, module, delay=0.05)
    assert rc == -signal.SIGKILL
    done = crashed.done_inputs(stage)
    assert 0 < len(done) < n_inputs  # killed mid-way: some chunks written, not all
    partial = crashed.read(stage)  # what survived is readable (no half-written file is visible)
    assert 0 < partial.num_rows < total

    engine = ReplayEngine()
    summary = run_with(runner.SPEC, crashed, engine, cfg, progress=False)
    assert summary.counts["items_already_done"] == len(done)
    per_input = 1 if stage == "simple_cot" else cfg.stage3.n  # requests per input
    assert len(engine.calls) == (n_inputs - len(done)) * per_input  # only the missing inputs are generated
    after = crashed.read(stage)
    assert after.num_rows == total  # no loss, no duplicate
    key = "sample_id" if stage == "simple_cot" else "expansion_id"
    assert len(set(after.column(key).to_pylist())) == total
    assert after.equals(clean.read(stage))
    # a third run finds nothing to do
    idle = ReplayEngine()
    run_with(runner.SPEC, crashed, idle, cfg, progress=False)
    assert idle.calls == []
