"""Export-side assembly at scale: the columnar path (builder.assemble + builder.parquet_out) against the authors'
pandas path (benchmarks/authors_pandas.py) and, on request, the former ``lpt export``, on synthetic runs of
30K / 300K / 1M stage-3 records.

The runs are made from the bundled reference generations (the authors' example outputs shipped in builder/data/upstream_example,
imported once with builder.importer.import_upstream): copy ``c`` of the 5 images / 40 MCQs / 400 samples /
1,200 expansions gets new ids (sha256 of the old id and ``c``) and its questions and prompts a ``[c]`` tag, so
every copy is a distinct MCQ, sample and pair. Each stage is written as chunk files of about 20K rows with
RunDir.write_chunk, copy after copy, so the files' id ranges overlap as in a real run (the raw configs must
sort). Runs are kept under --work and reused.

Each measurement runs in its own subprocess under a small launcher that reports the child's wall time, CPU
time (user + system) and peak RSS (``resource.getrusage(RUSAGE_CHILDREN)``) and kills it past --max-rss-gb.

    python benchmarks/bench_assembly.py --sizes 30000,300000,1000000 [--pandas-max 300000] [--before-max 300000]
    python benchmarks/bench_assembly.py --data distinct --sizes 30000,300000,1000000,3000000 --rounds 3

``--data distinct`` uses the runs of benchmarks/distinct_run.py instead (the same structure, labels and
lengths, every thought distinct: what a real run's texts cost). ``--rounds N`` measures ``lpt export 5`` and
``pandas`` N times, alternately, at each size up to ``--pandas-max``. Every line records the load average
(1 min) read just before its job started.

Paths: ``lpt export`` is the command itself (run in the measured process through its click entry point):
the completeness check, every run config (sft, dpo, mcq, mcq_direct, simple_cot, raw_mcq, raw_simple_cot,
raw_expansion) to OUT/<config>/train-*.parquet, the figures and the card, with HF_HOME pointed at an empty
folder (files left there are counted: there must be none). ``lpt export 5`` is ``lpt export --only`` the five
sets the authors built, for a like-for-like ratio with ``pandas`` (those five sets, the authors' way, written as
JSON: benchmarks/authors_pandas.py). ``--library`` adds ``columnar``: the eight configs through the library
alone (no check, figures or card). ``before`` is ``lpt export`` as it was (the frozen row code of
tests/_assemble_v1.py through the datasets builder, and the card).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REF_RECORDS = 1200  # stage-3 records of the reference generations
CONFIGS = ("sft", "dpo", "mcq", "mcq_direct", "simple_cot", "raw_mcq", "raw_simple_cot", "raw_expansion")  # lpt's order
SETS = CONFIGS[:5]  # the sets the authors' path builds


# ----------------------------------------------------------------------------------------------- the runs


def build_run(work: Path, records: int, rows_per_file: int = 20_000) -> Path:
    """A run of about ``records`` stage-3 records (whole copies of the reference), reused when present."""
    import pyarrow as pa

    from builder.store import RunDir

    sys.path.insert(0, str(HERE))
    from distinct_run import copy_of, reference_tables

    copies = max(1, round(records / REF_RECORDS))
    path = work / f"run-{copies * REF_RECORDS}"
    if RunDir(path).manifest.get("bench_copies") == copies:
        return path
    shutil.rmtree(path, ignore_errors=True)
    tables = reference_tables(work)
    input_col = {"source": "image_id", "mcq": "image_id", "simple_cot": "mcq_id", "expansion": "sample_id"}
    run = RunDir(path)
    t0 = time.time()
    for stage, base in tables.items():
        per_file = max(1, rows_per_file // max(1, base.num_rows))
        for first in range(0, copies, per_file):
            chunk = pa.concat_tables([copy_of(base, stage, c) for c in range(first, min(copies, first + per_file))])
            run.write_chunk(stage, chunk, chunk[input_col[stage]].to_pylist())
    run.update_manifest(bench_copies=copies, counts=run.counts())
    print(f"  built {path.name}: {run.counts()} in {time.time() - t0:.0f} s", flush=True)
    return path


# ---------------------------------------------------------------------------------------------- the jobs


def job_new(run_dir: str, out_dir: str, cdc: bool = False, configs: tuple[str, ...] = CONFIGS) -> None:
    """Run configs, columnar, straight to parquet; the trace sets share one read of the stage tables."""
    t0 = time.perf_counter()
    import longperceptualthoughts as lpt
    from builder import assemble
    from builder.parquet_out import write_parquet
    from builder.store import RunDir

    run, out = RunDir(run_dir), Path(out_dir)
    times, rows = {"import": time.perf_counter() - t0}, {}
    t = time.perf_counter()
    tr = assemble.trace_index(run)
    times["traces"] = time.perf_counter() - t
    for name in configs:
        t = time.perf_counter()
        batches = assemble.batches(run, name, traces=tr if name in ("sft", "dpo", "simple_cot") else None)
        rows[name] = write_parquet(batches, out / name, lpt.CONFIGS[name].features, cdc=cdc)
        times[name] = time.perf_counter() - t
        if name == "simple_cot":
            del tr, batches  # the last set built from the traces
    print(json.dumps({"rows": rows, "seconds": {k: round(v, 2) for k, v in times.items()}}))


def job_lpt(run_dir: str, out_dir: str, configs: tuple[str, ...] = ()) -> None:
    """``lpt export RUN OUT [--only …]`` itself, in this process: the completeness check, every config to
    parquet, the figures and the card, with ``HF_HOME`` pointed at an empty folder that must stay empty."""
    home = Path(out_dir + ".hf-home")
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    os.environ["HF_HOME"] = str(home)
    os.environ["HF_DATASETS_CACHE"] = str(home / "datasets")
    shutil.rmtree(out_dir, ignore_errors=True)
    from builder.cli import main as lpt

    args = ["export", run_dir, out_dir] + [a for c in configs for a in ("--only", c)]
    try:
        lpt.main(args, standalone_mode=False)
    finally:
        left = [str(p) for p in home.rglob("*") if p.is_file()]
        shutil.rmtree(home, ignore_errors=True)
    rows = json.loads((Path(out_dir) / "export_report.json").read_text())["configs"]
    print(json.dumps({"rows": rows, "cache_files_left": len(left)}))


def job_before(run_dir: str, out_dir: str) -> None:
    """``lpt export`` as it was: the former row code (tests/_assemble_v1.py, frozen) through the datasets
    builder (per-row encoding, Arrow cache, Dataset.to_parquet), then the card."""
    sys.path.insert(0, str(ROOT / "tests"))
    import _assemble_v1 as v1

    from builder import assemble
    from builder.export import export, read_report

    for name in ("build_sft", "build_dpo", "build_mcq", "build_simple_cot", "build_raw", "why_empty"):
        setattr(assemble, name, getattr(v1, name))  # the configs call assemble.<name> at build time
    export(run_dir, out_dir)
    print(json.dumps({"rows": read_report(out_dir)["configs"]}))


def job_pandas(run_dir: str, out_dir: str) -> None:
    sys.path.insert(0, str(HERE))
    import authors_pandas

    print(json.dumps({"rows": authors_pandas.main(Path(run_dir), Path(out_dir))}))


def job_measure(limit_gb: float, cmd: list[str]) -> None:
    """Run ``cmd``; report its wall time, CPU time and peak RSS; kill it past ``limit_gb`` of RSS."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    killed = False
    while proc.poll() is None:
        try:
            rss_kb = int(next(line for line in open(f"/proc/{proc.pid}/status") if line.startswith("VmRSS")).split()[1])
        except (OSError, StopIteration, ValueError):
            rss_kb = 0
        if rss_kb > limit_gb * 1024 * 1024:
            proc.kill()
            killed = True
        time.sleep(0.2)
    out = proc.stdout.read()
    wall = time.perf_counter() - t
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    last = out.strip().splitlines()[-1] if out.strip() else "{}"
    print(json.dumps({"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "peak_rss_gb": ru.ru_maxrss / 1024 ** 2,
                      "rc": proc.returncode, "killed": killed, "job": json.loads(last) if last.startswith("{") else {}}))


def measure(job: list[str], limit_gb: float) -> dict:
    load = os.getloadavg()[0]
    res = _measure(job, limit_gb)
    res["load"] = load
    return res


def _measure(job: list[str], limit_gb: float) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, __file__, "_measure", str(limit_gb), "--", sys.executable, __file__, *job]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        raise SystemExit(res.stderr)
    return json.loads(res.stdout.strip().splitlines()[-1])


def slope(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log(time) against log(records)."""
    if len(points) < 2:
        return None
    xs, ys = [math.log(n) for n, _ in points], [math.log(t) for _, t in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        mode, args = sys.argv[1], sys.argv[2:]
        if mode == "_measure":
            return job_measure(float(args[0]), args[args.index("--") + 1:])
        if mode == "_new":
            return job_new(args[0], args[1], cdc="--cdc" in args, configs=tuple(args[args.index("--configs") + 1]
                                                                              .split(",")) if "--configs" in args
                           else CONFIGS)
        if mode == "_lpt":
            return job_lpt(args[0], args[1], tuple(args[args.index("--configs") + 1].split(","))
                           if "--configs" in args else ())
        if mode == "_before":
            return job_before(args[0], args[1])
        if mode == "_pandas":
            return job_pandas(args[0], args[1])
        raise SystemExit(f"unknown mode {mode}")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="30000,300000", help="stage-3 records per run, comma-separated")
    ap.add_argument("--pandas-max", type=int, default=300_000, help="run the pandas path up to this size")
    ap.add_argument("--before-max", type=int, default=0,
                    help="also time the former lpt export (row code + datasets builder) up to this size")
    ap.add_argument("--work", default="/tmp/lpt-bench", help="where runs and outputs go (runs are reused)")
    ap.add_argument("--max-rss-gb", type=float, default=12.0, help="kill a measured job past this RSS")
    ap.add_argument("--cdc", action="store_true", help="write parquet with content-defined chunking (as datasets)")
    ap.add_argument("--library", action="store_true",
                    help="also time the configs alone through the library (no card, figures or checks)")
    ap.add_argument("--data", choices=("replicated", "distinct"), default="replicated",
                    help="replicated: the example's texts copied; distinct: every thought new (distinct_run.py)")
    ap.add_argument("--rounds", type=int, default=1, help="alternate lpt export 5 and pandas this many times")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        if args.data == "distinct":
            sys.path.insert(0, str(HERE))
            from distinct_run import build_distinct_run

            run = build_distinct_run(work, size)
        else:
            run = build_run(work, size)
        records = json.loads((run / "manifest.json").read_text())["counts"]["expansion"]
        lpt = ["_lpt", str(run), str(work / f"out-lpt-{records}")]
        paths = [("lpt export", lpt)]
        if args.library:
            paths.append(("columnar", ["_new", str(run), str(work / f"out-new-{records}")] + ["--cdc"] * args.cdc))
        if size <= args.pandas_max:  # the same five sets as the authors' path, then the authors' path, alternately
            for _ in range(args.rounds):
                paths.append(("lpt export 5", lpt + ["--configs", ",".join(SETS)]))
                paths.append(("pandas", ["_pandas", str(run), str(work / f"out-pandas-{records}")]))
        if size <= args.before_max:
            paths.append(("before", ["_before", str(run), str(work / f"out-before-{records}")]))
        for label, job in paths:
            r = measure(job, args.max_rss_gb)
            r.update(path=label, records=records)
            results.append(r)
            status = "killed" if r["killed"] else f"rc {r['rc']}"
            left = r["job"].get("cache_files_left")
            print(f"{records:>9,} {label:>12}: {r['wall']:7.1f} s wall, {r['cpu']:7.1f} s CPU, "
                  f"{r['peak_rss_gb']:5.2f} GB peak RSS ({status}), load {r['load']:.1f} "
                  f"{json.dumps(r['job'].get('seconds', ''))}"
                  + (f" cache files left outside OUT: {left}" if left is not None else ""), flush=True)
    print()
    print(f"{'records':>9} | {'path':>12} | {'wall s':>7} | {'CPU s':>7} | {'peak GB':>7} | {'load':>4} | slower path "
          f"/ this (wall, CPU)")
    versus = {"lpt export": "before", "lpt export 5": "pandas", "columnar": "before"}
    for i, r in enumerate(results):  # the comparison run of the same size and round: the next one of that path
        other = next((o for o in results[i:] if o["records"] == r["records"] and o["path"] == versus.get(r["path"])),
                     None)
        ratio = ""
        if other is not None and other["rc"] == 0 and r["rc"] == 0:
            ratio = f"{other['path']}: {other['wall'] / r['wall']:.1f}x, {other['cpu'] / r['cpu']:.1f}x"
        elif other is not None:
            ratio = f"{other['path']}: killed past {args.max_rss_gb:g} GB" if other["killed"] else ""
        print(f"{r['records']:>9,} | {r['path']:>12} | {r['wall']:>7.1f} | {r['cpu']:>7.1f} | "
              f"{r['peak_rss_gb']:>7.2f} | {r['load']:>4.1f} | {ratio}")
    for label in ("lpt export", "lpt export 5", "columnar", "pandas", "before"):
        done = [r for r in results if r["path"] == label and r["rc"] == 0]
        k, kc = slope([(r["records"], r["wall"]) for r in done]), slope([(r["records"], r["cpu"]) for r in done])
        if k is not None:
            print(f"growth exponent ({label}, time vs records, log-log slope): wall {k:.2f}, CPU {kc:.2f}")
    (work / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
