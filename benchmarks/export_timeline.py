"""``lpt export`` with a timeline: when each phase of each lane starts and ends, the RSS at that moment, and when
the peak RSS was reached (sampled every 10 ms) and what each lane ran then, so that a peak can be put on the phases running side by side.

    python benchmarks/export_timeline.py RUN OUT [--log timeline.log] [--only sft --only dpo ...]

The phases are functions of ``builder.assemble`` and ``builder.export``, wrapped in this process only (a
generator's first and last batch are logged too). Prints the log's lines as they come and the peak at the end.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import threading
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from builder import assemble, export  # noqa: E402

PHASES = {
    assemble: ("trace_index", "_sft_plan", "_dpo_plan", "_simple_cot_plan", "_key_order", "_spill_sort",
               "raw_batches", "sft_batches", "dpo_batches", "simple_cot_batches", "mcq_batches"),
    export: ("_write_columnar", "_check_complete", "write_figures", "render_card"),
}
_PAGE = os.sysconf("SC_PAGE_SIZE")
_T0 = time.time()
_PEAK = [0.0, 0.0]  # GB, seconds in
_AT_PEAK: list[str] = []  # what each lane ran then


def rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("out")
    ap.add_argument("--log", type=Path, help="also write the lines here")
    ap.add_argument("--only", action="append", default=[], help="as lpt export --only (default: every run config)")
    args = ap.parse_args()
    log = args.log.open("w") if args.log else None

    def say(msg: str) -> None:
        line = f"{time.time() - _T0:7.1f} s {rss_gb():5.2f} GB {threading.current_thread().name[:10]:10s} {msg}"
        print(line, flush=True)
        if log:
            log.write(line + "\n")
            log.flush()

    def logged(it, name):
        first = True
        for x in it:
            if first:
                say(f"first batch of {name}")
                first = False
            yield x
        say(f"last batch of {name}")

    def wrap(module, name):
        f = getattr(module, name)

        @functools.wraps(f)
        def phase(*a, **k):
            say(f"> {name}")
            try:
                r = f(*a, **k)
                return logged(r, name) if hasattr(r, "__next__") else r
            finally:
                say(f"< {name}")

        setattr(module, name, phase)

    for module, names in PHASES.items():
        for name in names:
            wrap(module, name)

    def sample() -> None:
        while True:
            r = rss_gb()
            if r > _PEAK[0]:
                _PEAK[:] = [r, time.time() - _T0]
                names = {t.ident: t.name for t in threading.enumerate()}
                _AT_PEAK[:] = [f"{names.get(ident, ident)}: " + " < ".join(
                    f"{fs.name} ({Path(fs.filename).name}:{fs.lineno})" for fs in traceback.extract_stack(frame)[::-1][:4])
                    for ident, frame in sys._current_frames().items() if names.get(ident, "").startswith("export")]
            time.sleep(0.01)

    threading.Thread(target=sample, daemon=True).start()
    from builder.cli import main as lpt

    sys.argv = ["lpt", "export", args.run, args.out] + [a for c in args.only for a in ("--only", c)]
    try:
        lpt(standalone_mode=False)
    finally:
        say(f"peak {_PEAK[0]:.3f} GB at {_PEAK[1]:.0f} s; the lanes were in:")
        for line in _AT_PEAK:
            say(f"  {line}")


if __name__ == "__main__":
    main()
