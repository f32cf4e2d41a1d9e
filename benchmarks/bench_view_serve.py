"""`lpt view RUN --serve` on a large run: the authors' example run replicated with distinct ids (1,600 traces
per copy), served in a subprocess; time to index, time of the first page (the API and a headless Chromium),
a filter, a search, and the server's peak RSS (VmHWM).

    python benchmarks/bench_view_serve.py --traces 1000000 --dir /tmp/lpt-view-bench [--export [--export-copies 3]]
    python benchmarks/bench_view_serve.py --run /tmp/lpt-bench/distinct-9999600     # any run directory, as it is

The replicated run is written once (``--dir``) and reused."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
PER_COPY = 1600
ID_COLUMNS = ("mcq_id", "sample_id", "expansion_id")


def replicate(example: Path, out: Path, copies: int) -> None:
    """``copies`` copies of every stage file of ``example`` (ids suffixed ``-k``), the rest of the run as is."""
    shutil.copytree(example, out, ignore=lambda d, names: [n for n in names if n.endswith(".parquet")])
    for f in sorted(example.rglob("*.parquet")):
        t = pq.read_table(f).replace_schema_metadata(None)  # no input-id metadata: the rows' own ids count
        target = out / f.relative_to(example)
        if not any(c in t.column_names for c in ID_COLUMNS) or "source" in f.parts:
            pq.write_table(t, target)
            continue
        with pq.ParquetWriter(target.with_name(target.stem + ".parquet"), t.schema) as w:
            for k in range(copies):
                cols = [pc.binary_join_element_wise(t[c], pa.scalar(f"-{k:06d}"), "") if c in ID_COLUMNS else t[c]
                        for c in t.column_names]
                w.write_table(pa.table(cols, schema=t.schema), row_group_size=20_000)


def replicate_export(hub: Path, out: Path, copies: int) -> None:
    """An export whose raw configs are ``copies`` copies of ``hub``'s (ids suffixed ``-k``), its other configs as
    they are: a bigger export without exporting a bigger run (its sets name the first copy's traces)."""
    shutil.copytree(hub, out, ignore=lambda d, names: [n for n in names if n.endswith(".parquet")
                                                       and Path(d).name.startswith("raw_")])
    for f in sorted(hub.glob("raw_*/*.parquet")):
        pf = pq.ParquetFile(f)
        target = out / f.relative_to(hub)
        with pq.ParquetWriter(target, pf.schema_arrow) as w:
            for k in range(copies):
                for g in range(pf.num_row_groups):
                    t = pf.read_row_group(g)
                    cols = [pc.binary_join_element_wise(t[c], pa.scalar(f"-x{k}"), "") if c in ID_COLUMNS else t[c]
                            for c in t.column_names]
                    w.write_table(pa.table(cols, schema=t.schema))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--traces", type=int, default=1_000_000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/lpt-view-bench"))
    ap.add_argument("--port", type=int, default=8799)
    ap.add_argument("--export", action="store_true", help="serve `lpt export`'s folder of the run instead")
    ap.add_argument("--export-copies", type=int, default=1,
                    help="with --export: serve that export's raw configs copied this many times")
    ap.add_argument("--run", type=Path, help="serve this run directory (e.g. distinct_run.py's) instead of a "
                                             "replicated one")
    args = ap.parse_args()
    copies = max(1, args.traces // PER_COPY)
    example, run = args.dir / "example", args.run or args.dir / f"run-{copies}"
    py = [sys.executable, "-m", "builder.cli"]
    if not args.run and not example.exists():
        subprocess.run([*py, "import-upstream", "--example", str(example)], check=True, cwd=ROOT)
    if not args.run and not run.exists():
        t = time.time()
        replicate(example, run, copies)
        print(f"replicated {copies} copies ({copies * PER_COPY:,} traces) in {time.time() - t:.1f} s")
    if args.export:
        hub = args.dir / f"hub-{copies}"
        if not hub.exists():
            subprocess.run([*py, "export", str(run), str(hub)], check=True, cwd=ROOT, capture_output=True)
        run = hub
        if args.export_copies > 1:
            run = args.dir / f"hub-{copies}-x{args.export_copies}"
            if not run.exists():
                replicate_export(hub, run, args.export_copies)
    t0 = time.time()
    server = subprocess.Popen([*py, "view", str(run), "--serve", "--port", str(args.port), "--no-images"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in server.stdout:
            if line.startswith("serving"):
                break
        ready = time.time() - t0
        url = f"http://127.0.0.1:{args.port}/"
        traces = copies * PER_COPY * args.export_copies
        if args.run:
            from builder.stages import table_for
            from builder.store import RunDir

            counts = RunDir(args.run).counts()
            traces = sum(counts.get(table_for(role), 0) for role in ("short_thought", "long_thought"))
        out = {"input": run.name, "traces": traces, "index_s": round(ready, 2)}
        for name, query in (("first_page", ""), ("page_1000", "page=1000"),
                            ("filter", "stage=expansion&label=wrong&kept=kept"), ("search", "q=sclera"),
                            ("search_again_page_2", "q=sclera&page=2"), ("pairs", "view=pairs")):
            t = time.time()
            with urllib.request.urlopen(url + "api/page?" + query, timeout=600) as r:
                got = json.loads(r.read())
            out[name + "_s"] = round(time.time() - t, 3)
            out[name + "_matches"] = got["matches"]
        chromium = shutil.which("chromium")
        if chromium:
            t = time.time()
            subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--dump-dom", "about:blank"],
                           capture_output=True)
            out["chromium_blank_page_s"] = round(time.time() - t, 2)  # the browser's own start and exit
            t = time.time()
            dom = subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--dump-dom",
                                  "--virtual-time-budget=30000", url], capture_output=True, text=True).stdout
            out["chromium_first_page_s"] = round(time.time() - t, 2)
            out["chromium_ready"] = 'data-ready="1"' in dom
            out["chromium_cards"] = len(re.findall(r"<article ", dom))
        status = Path(f"/proc/{server.pid}/status").read_text()
        out["server_peak_rss_mb"] = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) // 1024
        print(json.dumps(out, indent=1))
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
