"""Chaos: `lpt generate` on two shards, with a third writer racing one of them, SIGKILLed at random points of all
three stages, round after round; then every shard is rerun to the end. The rows equal those of a clean run, no
input's rows appear twice, and no temporary file is left behind.

The stages run in real child processes through the CLI, with the REPLAY engine of tests/helpers.py (no model:
scripted replies, slowed down so that kills land mid-chunk) named as a ``module:Class`` engine."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc

from builder.records import TABLES
from builder.store import RunDir
from helpers import make_source

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SETTINGS = [f"stage{k}.engine=helpers:ReplayEngine" for k in (1, 2, 3)] + [
    "stage1.engine_options={delay: 0.01}", "stage2.engine_options={delay: 0.01}",
    "stage3.engine_options={delay: 0.01}", "stage2.n=3", "stage3.n=2", "chunk_size=3"]


def _cmd(run: Path, shard: str | None) -> list[str]:
    args = [sys.executable, "-m", "builder.cli", "generate", str(run), "-q", "--wait", "120"]
    for s in SETTINGS:
        args += ["--set", s]
    return args + (["--shard", shard] if shard else [])


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]), "HF_HUB_OFFLINE": "1"}


def _run_to_end(run: Path, shards: list[str | None]) -> None:
    procs = [subprocess.Popen(_cmd(run, s), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for s in shards]
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-3000:]


def test_kills_races_and_shards_end_in_the_rows_of_a_clean_run(tmp_path):
    rng = random.Random(1234)
    clean, chaos = RunDir(tmp_path / "clean"), RunDir(tmp_path / "chaos")
    make_source(clean, tmp_path, n=10)
    make_source(chaos, tmp_path, n=10)
    _run_to_end(clean.path, [None])

    kills = 0
    for _ in range(6):
        procs = [subprocess.Popen(_cmd(chaos.path, s), env=_env(), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for s in ("0/2", "1/2", "0/2")]  # two writers of shard 0
        time.sleep(rng.uniform(1.0, 8.0))
        victim = rng.choice(procs)
        if victim.poll() is None:
            victim.send_signal(signal.SIGKILL)
            kills += 1
        time.sleep(rng.uniform(0.0, 1.0))
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                kills += 1
            p.wait()
    assert kills >= 3  # the rounds did interrupt work

    _run_to_end(chaos.path, ["0/2", "1/2"])
    for stage in ("mcq", "simple_cot", "expansion"):
        table = chaos.read(stage)
        assert table.equals(clean.read(stage)), stage
        key = {"mcq": "mcq_id", "simple_cot": "sample_id", "expansion": "expansion_id"}[stage]
        assert pc.count_distinct(table.column(key)).as_py() == table.num_rows
        assert TABLES[stage].input_column in table.column_names
    leftovers = [p for p in chaos.path.rglob(".tmp-*")]
    assert not leftovers, leftovers
