"""Hostile round, concurrency: one lock discipline for every command that writes. A run is held shared by its
writers (generate, a stage) and exclusively by what replaces or rewrites it (import-upstream --overwrite,
relabel); an OUT by the export writing it; a stage's shard count is fixed at its first writer. Two commands at
once either both succeed with the union of their work, or one refuses in one line naming the holder (pid, host,
command). The temporary files a killed command left are removed by the next one that takes the same lock.

Real processes (``python -m builder.cli``) with the REPLAY engine of tests/helpers.py (no model: scripted
replies, slowed down so that a second command starts while the first one holds its lock). Each wait is bounded;
no assertion is about time."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from builder.atomic import lock_path
from builder.importer import import_upstream
from builder.store import RunDir
from helpers import UPSTREAM, make_source

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SLOW = [f"stage{k}.engine=helpers:ReplayEngine" for k in (1, 2, 3)] + [
    "stage1.engine_options={delay: 3.0}", "chunk_size=50"]  # one chunk of stage 1 takes 3 s per image


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]), "HF_HUB_OFFLINE": "1",
            "LPT_ALLOW_ENGINE_MODULES": "1"}


def _lpt(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "builder.cli", *map(str, args)], env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def _start_generate(run: Path, shard: str = "0/1") -> subprocess.Popen:
    args = [sys.executable, "-m", "builder.cli", "generate", str(run), "-q", "--stages", "1", "--shard", shard]
    for s in SLOW:
        args += ["--set", s]
    return subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _until(check, proc: subprocess.Popen, what: str, limit: float = 120.0) -> None:
    """Wait (bounded) until ``check()``; the process must still run."""
    end = time.monotonic() + limit
    while not check():
        assert proc.poll() is None, f"the writer ended before {what}: {proc.communicate()[0][-2000:]}"
        assert time.monotonic() < end, f"no {what} within {limit} s"
        time.sleep(0.1)


def _writing(run: Path, shard: str = "0-of-1"):
    """True once a generate holds the shard's lock (the old code made this lock too): it is inside its stage."""
    lock = run / ".locks" / f"shard-{shard}.lock"
    return lambda: lock.is_file() and lock.read_text().strip() != ""


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=60)


def _one_line_naming(res: subprocess.CompletedProcess, pid: int, command: str) -> None:
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    assert res.returncode != 0 and len(lines) == 1, res.stdout + res.stderr
    assert f"pid {pid}" in lines[0] and command in lines[0] and "Traceback" not in lines[0], lines[0]


@pytest.fixture
def slow_run(tmp_path) -> RunDir:
    run = RunDir(tmp_path / "run")
    make_source(run, tmp_path, n=6)
    return run


@pytest.mark.parametrize("command", ["import-upstream", "relabel"])
def test_a_rewrite_while_generate_writes_refuses_naming_the_writer(slow_run, command):
    gen = _start_generate(slow_run.path)
    try:
        _until(_writing(slow_run.path), gen, "the generate's stage lock")
        res = (_lpt("import-upstream", UPSTREAM, slow_run.path, "--overwrite") if command == "import-upstream"
               else _lpt("relabel", slow_run.path))
        _one_line_naming(res, gen.pid, "generate")
        assert RunDir(slow_run.path).read("source").num_rows == 6  # still the run generate writes into
        assert "imported_from" not in slow_run.manifest
    finally:
        _stop(gen)


def test_generate_while_an_import_replaces_the_run_refuses_naming_the_import(tmp_path):
    run = import_upstream(UPSTREAM, tmp_path / "run")
    from builder.atomic import hold

    with hold(run.path, what="replaced by an import"):  # what import-upstream --overwrite holds while it works
        res = _lpt("generate", run.path, "-q", "--stages", "2", *[a for s in SLOW for a in ("--set", s)])
    _one_line_naming(res, os.getpid(), "")


def test_shard_counts_started_together_cannot_both_write_a_stage(slow_run):
    first = _start_generate(slow_run.path, "0/1")
    try:
        _until(_writing(slow_run.path, "0-of-1"), first, "the first writer's stage lock")
        res = _lpt("generate", slow_run.path, "-q", "--stages", "1", "--shard", "0/2",
                   *[a for s in SLOW for a in ("--set", s)])
        assert res.returncode != 0 and "--shard i/1" in res.stdout + res.stderr, res.stdout + res.stderr
        assert "Traceback" not in res.stdout + res.stderr
    finally:
        _stop(first)
    assert slow_run.shard_counts("mcq") <= {1}  # nothing written in 2 shards
    fast = [s for s in SLOW if "delay" not in s]  # two writers of one N share the run: the union, each input once
    procs = [subprocess.Popen([sys.executable, "-m", "builder.cli", "generate", str(slow_run.path), "-q", "--stages",
                               "1", *[a for x in fast for a in ("--set", x)]], env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    for p in procs:
        out = p.communicate(timeout=300)[0]
        assert p.returncode == 0 or "being written by" in out, out[-2000:]
    mcq = slow_run.read("mcq")
    assert slow_run.done_inputs("mcq") == set(slow_run.read("source").column("image_id").to_pylist())
    assert pc.count_distinct(mcq.column("mcq_id")).as_py() == mcq.num_rows
    assert not lock_path(slow_run.path).exists()


def test_two_exports_into_one_out_end_with_the_union_or_one_refuses(tmp_path):
    run = import_upstream(UPSTREAM, tmp_path / "run")
    for round_ in range(3):
        out = tmp_path / f"out{round_}"
        procs = {name: subprocess.Popen([sys.executable, "-m", "builder.cli", "export", str(run.path), str(out),
                                         "--only", name], env=_env(), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
                 for name in ("mcq", "raw_mcq")}
        results = {name: (p.communicate(timeout=300)[0], p.returncode) for name, p in procs.items()}
        ok = [name for name, (_, rc) in results.items() if rc == 0]
        assert ok, results
        for name, (output, rc) in results.items():
            if rc == 0:
                assert (out / name).is_dir(), f"round {round_}: {name} reported written but missing: {results}"
            else:
                lines = [line for line in output.splitlines() if line.strip()]
                assert len(lines) == 1 and "pid " in lines[0] and "export" in lines[0], output
        report = (out / "export_report.json").read_text()
        assert all(f'"{name}"' in report for name in ok)


def test_a_killed_exports_leftovers_go_with_the_next_export(tmp_path):
    run = import_upstream(UPSTREAM, tmp_path / "run")
    out = tmp_path / "out"
    left = tmp_path / ".out.lpt-export-k1ll3d"  # what a SIGKILLed export leaves beside OUT
    (left / "mcq").mkdir(parents=True)
    (left / "mcq" / "train-00000-of-00001.parquet").write_bytes(b"PAR1 half")
    old = tmp_path / ".out.old-k1ll3d"
    old.mkdir()
    res = _lpt("export", run.path, out, "--only", "mcq")
    assert res.returncode == 0, res.stdout + res.stderr
    assert not left.exists() and not old.exists()
    assert not lock_path(out).exists()  # the lock file goes with its last holder


def test_a_killed_relabels_temp_files_go_with_the_next_command_on_the_run(tmp_path):
    run = import_upstream(UPSTREAM, tmp_path / "run")
    stray = run.path / "simple_cot" / ".tmp-relabel-k1ll3d.parquet"
    stray.write_bytes(b"PAR1 half")
    res = _lpt("relabel", run.path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not stray.exists()
    assert not [p for p in run.path.rglob(".tmp-*")]


def test_card_while_an_export_writes_the_same_out_refuses_naming_the_holder(tmp_path):
    """`lpt card OUT` takes OUT's lock, the one `lpt export` holds while it writes OUT: while another process holds
    it (here one that took it exactly as export does: ``hold(OUT, what="exported")``), card refuses in one line
    naming the holder's pid and command and leaves the card alone. (The old card rewrote README.md regardless.)"""
    run = import_upstream(UPSTREAM, tmp_path / "run")
    out = tmp_path / "out"
    assert _lpt("export", run.path, out, "--only", "mcq").returncode == 0
    card = (out / "README.md").read_bytes()
    (out / "README.md").write_text("the holder's half-written card")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom builder.atomic import hold\nwith hold(sys.argv[1], what='exported'):\n"
        "    print('held', flush=True)\n    time.sleep(120)\n"), str(out), "export-stand-in"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = _lpt("card", out)
        _one_line_naming(res, holder.pid, "export-stand-in")
        assert f"{out} is being used by pid {holder.pid}" in res.stdout + res.stderr
        assert (out / "README.md").read_text() == "the holder's half-written card"
    finally:
        _stop(holder)
    res = _lpt("card", out)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (out / "README.md").read_bytes() == card and not lock_path(out).exists()
