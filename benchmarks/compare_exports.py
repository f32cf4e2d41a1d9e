"""Compare what ``lpt export`` writes at two revisions, on the same run directories.

Each revision's tree is unpacked with ``git archive`` (read-only for the repository; ``WORKTREE`` means the
files as they are now) and ``python -m builder.cli export RUN OUT`` runs with ``PYTHONPATH`` at that tree. Then
every config's parquet files are compared twice: their bytes, and their rows read back with pyarrow
(``Table.equals``, schema metadata included). Prints one line per run and config; exit status 1 when anything
differs or exists on one side only::

    python benchmarks/compare_exports.py BASE_REV WORKTREE /tmp/run-a /tmp/run-b [--out /tmp/lpt-compare-exports]
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


def tree_of(rev: str, out: Path) -> Path:
    if rev == "WORKTREE":
        return ROOT
    tree = out / f"tree-{rev}"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def export(tree: Path, run: Path, out: Path, python: str) -> None:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(tree), "TQDM_DISABLE": "1"}
    subprocess.run([python, "-m", "builder.cli", "export", str(run), str(out)], cwd=tree, env=env, check=True,
                   stdout=subprocess.DEVNULL)


def compare(a: Path, b: Path) -> dict[str, str]:
    """``{config: verdict}`` over the configs of two exports."""
    configs = sorted({p.parent.name for p in a.rglob("*.parquet")} | {p.parent.name for p in b.rglob("*.parquet")})
    out = {}
    for c in configs:
        left = sorted(p.name for p in (a / c).glob("*.parquet")) if (a / c).is_dir() else []
        right = sorted(p.name for p in (b / c).glob("*.parquet")) if (b / c).is_dir() else []
        if left != right:
            out[c] = f"files differ: {left} / {right}"
            continue
        same_bytes = all(filecmp.cmp(a / c / f, b / c / f, shallow=False) for f in left)
        rows = sum(pq.ParquetFile(a / c / f).metadata.num_rows for f in left)
        same_rows = all(pq.read_table(a / c / f).equals(pq.read_table(b / c / f), check_metadata=True) for f in left)
        out[c] = f"{rows} rows, {len(left)} files: " + ("rows equal" if same_rows else "ROWS DIFFER") + ", " + \
            ("bytes equal" if same_bytes else "BYTES DIFFER")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base", help="a git revision (the reference), or WORKTREE")
    ap.add_argument("new", help="another git revision, or WORKTREE")
    ap.add_argument("runs", nargs="+", help="run directories to export at both revisions")
    ap.add_argument("--out", default="/tmp/lpt-compare-exports")
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trees = {rev: tree_of(rev, out) for rev in (args.base, args.new)}
    bad = 0
    for run in map(Path, args.runs):
        for label, rev in (("base", args.base), ("new", args.new)):
            export(trees[rev], run, out / label / run.name, args.python)
        for config, verdict in compare(out / "base" / run.name, out / "new" / run.name).items():
            bad += "DIFFER" in verdict or "files differ" in verdict
            print(f"{run.name:>24} {config:>16}: {verdict}", flush=True)
    print("identical" if not bad else f"{bad} configs differ")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
