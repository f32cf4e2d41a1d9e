"""A synthetic run whose every thought is distinct, for export benchmarks (``bench_assembly.py --data distinct``).

Replicating the authors' example (``bench_assembly.build_run``) keeps its 1,200 distinct thoughts: the exports
compress to almost nothing and the sets' texts repeat. Here the structure, labels and lengths are the
example's (copy ``c`` of its 5 images / 40 MCQs / 400 samples / 1,200 expansions, with ids and question tags of
that copy, so every ``correct`` / ``keep`` / ``pred_index`` / ``drop_reason`` and every length in words is the
example's), but each simple thought and each continuation is new text: as many words as the example's row,
drawn from the example's own vocabulary by a generator seeded per chunk of copies. An expansion's
``long_thought`` is its simple thought + the cue + its continuation, its ``prefill`` the example's opening of the
prompt + the simple thought + the cue, a sample's ``response`` ``<think> thought </think>`` + its answer; so the
texts relate as in a real run. The chunk files overlap in id ranges, as in ``build_run``.

    python benchmarks/distinct_run.py --records 300000 --work /tmp/lpt-bench
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import time
from pathlib import Path

REF_RECORDS = 1200  # stage-3 records of the reference generations


def _words(texts) -> "tuple":
    """``(every word of the texts, words per text)``, split on whitespace (drawing from every word, repeats
    included, keeps the words' frequencies and so the texts' lengths in characters)."""
    import numpy as np
    import pyarrow.compute as pc

    split = pc.utf8_split_whitespace(texts)
    vocab = pc.list_flatten(split)
    return vocab, np.asarray(pc.list_value_length(split).fill_null(0), np.int64)


def _random_texts(rng, vocab, counts):
    """One text per count: that many words of ``vocab``, uniformly drawn, joined by spaces."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    counts = np.maximum(counts, 1)
    words = vocab.take(pa.array(rng.integers(0, len(vocab), int(counts.sum()))))
    lists = pa.ListArray.from_arrays(pa.array(np.r_[0, np.cumsum(counts)], pa.int32()), words)
    return pc.binary_join(lists, " ")


def _new_id(values: list[str], c: int) -> list[str]:
    return [hashlib.sha256(f"{v}/{c}".encode()).hexdigest()[:len(v)] for v in values]


def build_distinct_run(work: Path, records: int, rows_per_file: int = 20_000, seed: int = 0) -> Path:
    """A run of about ``records`` stage-3 records with distinct texts, reused when present."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from builder.store import RunDir

    copies = max(1, round(records / REF_RECORDS))
    path = work / f"distinct-{copies * REF_RECORDS}"
    if RunDir(path).manifest.get("bench_distinct_copies") == copies:
        return path
    shutil.rmtree(path, ignore_errors=True)
    base = reference_tables(work)
    vocab, thought_words = _words(pa.concat_arrays([base["simple_cot"]["thought"].combine_chunks(),
                                                    base["expansion"]["continuation"].combine_chunks()]))
    n_s = base["simple_cot"].num_rows
    cont_words = thought_words[n_s:]
    thought_words = thought_words[:n_s]
    e_sample = pc.index_in(base["expansion"]["sample_id"], base["simple_cot"]["sample_id"]).to_numpy(
        zero_copy_only=False)
    opening = pc.binary_join_element_wise(  # the example's opening of the prefill, before the simple thought
        pc.utf8_slice_codeunits(base["expansion"]["prefill"], 0, 200), "\n\n", "")
    run = RunDir(path)
    t0 = time.time()
    per_file = max(1, rows_per_file // n_s)
    for first in range(0, copies, per_file):
        last = min(copies, first + per_file)
        rng = np.random.default_rng([seed, first])
        chunk = {stage: pa.concat_tables([copy_of(t, stage, c) for c in range(first, last)])
                 for stage, t in base.items()}
        k = last - first
        thoughts = _random_texts(rng, vocab, np.tile(thought_words, k))
        conts = _random_texts(rng, vocab, np.tile(cont_words, k))
        of = pa.array(np.tile(e_sample, k) + np.repeat(np.arange(k) * n_s, len(e_sample)))
        chunk["simple_cot"] = _set(chunk["simple_cot"], thought=thoughts, response=pc.binary_join_element_wise(
            "<think> ", thoughts, " </think>\n<answer> ", chunk["simple_cot"]["answer"], " </answer>", ""))
        simple, e = thoughts.take(of), chunk["expansion"]
        sep = pc.if_else(pc.equal(e["separator"], "\n"), "\n", " ")
        chunk["expansion"] = _set(
            e, continuation=conts,
            long_thought=pc.binary_join_element_wise(simple, ". ", e["cue"], " ", conts, ""),
            prefill=pc.binary_join_element_wise(pa.concat_arrays([opening.combine_chunks()] * k), simple, ".", sep,
                                                e["cue"], ""))
        for stage, input_col in (("source", "image_id"), ("mcq", "image_id"), ("simple_cot", "mcq_id"),
                                 ("expansion", "sample_id")):
            t = chunk[stage]
            run.write_chunk(stage, t, t[input_col].to_pylist())
    run.update_manifest(bench_distinct_copies=copies, counts=run.counts())
    print(f"  built {path.name}: {run.counts()} in {time.time() - t0:.0f} s", flush=True)
    return path


def reference_tables(work: Path) -> dict:
    """The reference run's tables by stage: the authors' example outputs (shipped with the package), imported
    once into ``work/reference``. Both benchmark runs (this one and ``bench_assembly.build_run``) copy them."""
    from builder.importer import import_upstream
    from builder.store import RunDir
    from builder.upstream import EXAMPLE_DIR

    ref = RunDir(work / "reference")
    if not ref.has("expansion"):
        import_upstream(EXAMPLE_DIR, ref.path)
    return {stage: ref.read(stage) for stage in ("source", "mcq", "simple_cot", "expansion")}


def copy_of(t, stage: str, c: int):
    """Copy ``c`` of a reference table: new ids, a ``[c]`` tag in its questions and prompts."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for col in ("mcq_id", "sample_id", "expansion_id"):
        if col in t.column_names:
            t = t.set_column(t.schema.get_field_index(col), col, pa.array(_new_id(t[col].to_pylist(), c), pa.string()))
    if "image_id" in t.column_names:
        t = t.set_column(t.schema.get_field_index("image_id"), "image_id",
                         pc.binary_join_element_wise(t["image_id"], f"-{c:05d}", ""))
    for col in {"mcq": ("question",), "simple_cot": ("question", "user_text"), "expansion": ("user_text",)}.get(stage, ()):
        t = t.set_column(t.schema.get_field_index(col), col, pc.binary_join_element_wise(f"[{c}] ", t[col], ""))
    return t


def _set(t, **columns):
    for name, values in columns.items():
        t = t.set_column(t.schema.get_field_index(name), name, values)
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=30_000)
    ap.add_argument("--work", default="/tmp/lpt-bench")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(build_distinct_run(work, args.records))


if __name__ == "__main__":
    main()
