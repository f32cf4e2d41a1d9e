"""Byte-compare the parquet files two git revisions write: the reference import, the tiny demo, a benchmark run.

For each revision, the tree at that revision is checked out (``git worktree add --detach``) at one fixed path,
and, with ``PYTHONPATH`` pointing at it, these runs are made into one fixed work folder (model paths, image paths
and run paths are written into the files, so both revisions must see the same paths):

* ``lpt import-upstream --example``: the authors' example outputs as a run directory;
* ``lpt demo --tiny``: the offline pipeline with tiny models, and its export;
* ``benchmarks/bench_stage_overhead.py`` with small arguments: stages 1-3 with a replaying engine.

Each revision's parquet files are kept under ``OUT/<label>/`` and every file of either side is compared byte
for byte; the counts (files compared / identical / differing / only on one side) are printed, and the exit
status is 1 when any file differs or is missing on one side::

    python benchmarks/compare_runs.py BASE_REV NEW_REV [--out /tmp/lpt-compare] [--python PY]
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_ARGS = ("--images", "6", "--chars", "400", "--repeats", "1")


def sh(cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL if env else None)


def produce(rev: str, out: Path, python: str) -> Path:
    """The parquet files of the three runs at ``rev``, kept under ``out/<rev's short hash>``."""
    short = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], check=True, capture_output=True,
                           text=True).stdout.strip()
    tree, work, kept = out / "tree", out / "work", out / short
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
    for p in (tree, work, kept):
        shutil.rmtree(p, ignore_errors=True)
    subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=True)
    sh(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev])
    env = {**os.environ, "PYTHONPATH": str(tree), "TQDM_DISABLE": "1"}
    try:
        cli = [python, "-m", "builder.cli"]
        sh([*cli, "import-upstream", "--example", str(work / "upstream")], cwd=tree, env=env)
        sh([*cli, "demo", "--tiny", "--quiet", str(work / "demo")], cwd=tree, env=env)
        sh([python, "benchmarks/bench_stage_overhead.py", *BENCH_ARGS, "--work", str(work / "bench")], cwd=tree,
           env=env)
        for p in sorted(work.rglob("*.parquet")):
            dest = kept / p.relative_to(work)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dest)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    return kept


def compare(a: Path, b: Path) -> dict[str, list[str]]:
    """Relative paths of the parquet files under ``a`` and ``b``: identical, differing, only in one."""
    left = {str(p.relative_to(a)) for p in a.rglob("*.parquet")}
    right = {str(p.relative_to(b)) for p in b.rglob("*.parquet")}
    both = sorted(left & right)
    same = [p for p in both if filecmp.cmp(a / p, b / p, shallow=False)]
    return {"identical": same, "differing": [p for p in both if p not in same],
            "only_base": sorted(left - right), "only_new": sorted(right - left)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base", help="a git revision (the reference)")
    ap.add_argument("new", help="another git revision")
    ap.add_argument("--out", default="/tmp/lpt-compare", help="where the trees, runs and kept files go")
    ap.add_argument("--python", default=sys.executable, help="the interpreter that runs both revisions")
    args = ap.parse_args()
    out = Path(args.out)
    a, b = produce(args.base, out, args.python), produce(args.new, out, args.python)
    result = compare(a, b)
    for key in ("differing", "only_base", "only_new"):
        for p in result[key]:
            print(f"{key}: {p}")
    compared = len(result["identical"]) + len(result["differing"])
    print(f"files compared: {compared}, identical: {len(result['identical'])}, differing: "
          f"{len(result['differing'])}, only in {args.base}: {len(result['only_base'])}, only in {args.new}: "
          f"{len(result['only_new'])}")
    return 0 if compared and compared == len(result["identical"]) and not result["only_base"] and \
        not result["only_new"] else 1


if __name__ == "__main__":
    sys.exit(main())
