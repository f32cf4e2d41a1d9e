"""The trace sets in constant memory: the trace index keeps no text (ids as prefixes, hashes and ranks), and a
set's texts are routed to their rows through spill files when they pass a memory budget. Rows byte-identical
to the frozen row code (tests/_assemble_v1.py) and to the in-memory route, on runs whose ids tie in their
first bytes (so the index must read ids in full to order them)."""

from __future__ import annotations

import random
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import _assemble_v1 as v1
from builder import assemble
from builder.store import RunDir
from test_assemble_equivalence import OPTIONS, _old, _rows, _same, synthetic_run

TRACE_SETS = ("sft", "dpo", "simple_cot")


def _prefixed(src: RunDir, dst, prefix: str) -> RunDir:
    """``src`` with every sample and expansion id behind ``prefix`` (ids then tie in their first 16 bytes);
    one id in five loses its last characters too (ids of several lengths)."""
    shutil.copytree(src.path, dst)
    for stage, columns in (("simple_cot", ("sample_id",)), ("expansion", ("expansion_id", "sample_id"))):
        for f in RunDir(dst).files(stage):
            t = pq.read_table(f)
            for col in columns:
                ids = t[col].to_pylist()
                new = [prefix + (v[: len(v) // 2] if int(v[:2], 16) % 5 == 0 else v) for v in ids]
                t = t.set_column(t.schema.get_field_index(col), col, pa.array(new, pa.string()))
            pq.write_table(t, f)
    return RunDir(dst)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("spill")
    plain = synthetic_run(tmp / "plain")
    return {"plain": plain, "tied": _prefixed(plain, tmp / "tied", "run-2026/thoughts/é/")}


def _set(run, name, opts, tr, batch_rows=37):
    return pa.Table.from_batches(list(assemble.batches(run, name, opts, batch_rows, traces=tr)),
                                 schema=assemble.SCHEMAS[name])


@pytest.mark.parametrize("which", ["plain", "tied"])
def test_spilled_sets_equal_the_in_memory_ones_and_the_row_code(runs, which):
    run = runs[which]
    for opts in (OPTIONS[0], OPTIONS[2], assemble.AssembleOptions()):
        small = assemble.trace_index(run, memory_bytes=4_000)
        big = assemble.trace_index(run)
        for name in TRACE_SETS:
            spilled, held = _set(run, name, opts, small), _set(run, name, opts, big)
            assert spilled.equals(held), name
            if opts.dpo_pairs == "all":
                _same(spilled.to_pylist(), _rows(v1, run, name, _old(opts)))
        assert max(small.src.buckets) > 1  # the texts went through several spill buckets
        assert not any(big.src.buckets)  # under the default budget a set this small stays in memory


def test_tied_ids_are_read_in_full(runs):
    """Ids that share their first 16 bytes are ordered by their full text: traces, picks and pairs as before."""
    run = runs["tied"]
    got = assemble.load_traces(run)
    assert got == [assemble.Trace(**t.__dict__) for t in v1.load_traces(run)]
    ids = [t.trace_id for t in got]
    assert len({i[:16] for i in ids}) == 1 and len(set(ids)) == len(ids)


def test_id_ranks_order_like_the_strings():
    rng = random.Random(3)
    alphabet = ["a", "b", "é", "😀", "\x00", "0", "f"]
    ids = ["".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 15, 16, 17, 30]))) for _ in range(3000)]
    ids += ids[:200]  # duplicates: equal ranks
    arr = pa.array(ids, pa.string())
    hi, lo = assemble._id_prefix(arr)
    read = []
    rank = assemble._id_ranks(hi, lo, lambda at: (read.append(len(at)), arr.take(pa.array(at)))[1])
    want = np.unique(np.array(ids, dtype=object), return_inverse=True)[1]
    assert (rank == want.ravel()).all()
    assert 0 < read[0] < len(ids)  # only the ids whose prefixes tie were read in full
    from builder.ids import id_hash

    read.clear()
    assert (assemble._id_ranks(hi, lo, lambda at: (read.append(len(at)), arr.take(pa.array(at)))[1],
                               id_hash(arr)) == want.ravel()).all()
    repeated = pa.array(["same-long-prefix-0123456789/a"] * 50 + ["same-long-prefix-0123456789/b"] * 50)
    hi, lo = assemble._id_prefix(repeated)
    assert (assemble._id_ranks(hi, lo, lambda at: pytest.fail("read"), np.zeros(100, np.uint64) + 7)[:50] == 0).all()
    r = assemble._id_ranks(hi, lo, lambda at: repeated.take(pa.array(at)), id_hash(repeated))
    assert r.tolist() == [0] * 50 + [1] * 50


def test_the_index_holds_no_text(runs):
    """The planning columns are numbers; texts and ids come back only from the files, for the rows asked."""
    tr = assemble.trace_index(runs["plain"])
    for name in ("cot_type", "key", "mcq", "sample", "prompt", "length", "added", "pred", "thought_bytes"):
        assert isinstance(getattr(tr, name), np.ndarray) and getattr(tr, name).dtype.kind in "iu", name
    at = np.array([5, 0, len(tr) - 1, 5])
    assert assemble.trace_ids(tr, at).to_pylist() == [v1.load_traces(runs["plain"])[i].trace_id for i in at]


def test_a_stage_changed_under_the_route_is_named(runs, tmp_path):
    """A stage file rewritten between the index and the rendering: an error, not rows from the wrong records."""
    run = RunDir(tmp_path / "run")
    shutil.copytree(runs["plain"].path, run.path)
    tr = assemble.trace_index(run)
    for f in run.files("expansion"):
        t = pq.read_table(f)
        pq.write_table(t.slice(0, t.num_rows // 2), f)
    with pytest.raises(Exception, match="changed while it was read|rows expected"):
        list(assemble.batches(run, "sft", assemble.AssembleOptions(sft_ratio=1.0), traces=tr))


def test_a_kept_sample_written_twice_is_named_by_the_index(runs, tmp_path):
    """Two rows of one kept sample_id (a chunk written twice into one file): the index refuses the run (the check
    is a sort of the ids' hashes)."""
    from builder.store import StoreError

    run = RunDir(tmp_path / "run")
    shutil.copytree(runs["plain"].path, run.path)
    f = run.files("simple_cot")[0]
    t = pq.read_table(f)
    kept = t.filter(pc.fill_null(t["keep"], False)).slice(0, 1)
    pq.write_table(pa.concat_tables([t, kept]).replace_schema_metadata(t.schema.metadata), f)
    with pytest.raises(StoreError, match="a kept sample_id occurs twice"):
        assemble.trace_index(run)


@pytest.mark.parametrize("which", ["plain", "tied"])
def test_the_raw_configs_sort_by_ranks_and_spill_through_the_same_route(runs, which):
    """The raw configs' order comes from key ranks (ids that tie in 16 bytes read in full): RunDir.read's rows,
    in memory and through spill files."""
    run = runs[which]
    for stage in ("simple_cot", "expansion"):
        want = run.read(stage)
        for budget in (20_000, assemble.SORT_MEMORY_BYTES):
            got = pa.Table.from_batches(list(assemble.raw_batches(run, stage, 100, sort_memory_bytes=budget)))
            assert got.equals(want), (stage, budget)
    assert pc.count_distinct(got["expansion_id"]).as_py() == want.num_rows


def test_a_spilled_raw_config_cuts_its_batches_whatever_its_bucket_size(runs, monkeypatch):
    """A raw config's batches (hence its parquet row groups and bytes) end where they did with one bucket per
    ``sort_memory_bytes / 3``: every ``batch_rows`` rows of each such block, however small the spill buckets."""
    run = runs["plain"]
    want = run.read("expansion")
    sizes = {}
    for bucket_bytes in (1 << 40, 30_000, 2_000):
        monkeypatch.setattr(assemble, "SPILL_BUCKET_BYTES", bucket_bytes)
        got = list(assemble.raw_batches(run, "expansion", 16, sort_memory_bytes=200_000))
        assert pa.Table.from_batches(got).equals(want)
        sizes[bucket_bytes] = [b.num_rows for b in got]
    assert sizes[1 << 40] == sizes[30_000] == sizes[2_000]
    assert any(n < 16 for n in sizes[2_000][:-1])  # a block ended inside the run: a short batch before the last


def test_a_spill_too_big_for_the_free_disk_is_compressed_and_gives_the_same_rows(runs, monkeypatch):
    """A spill estimated at over half the temporary folder's free space is written with LZ4 (a 10M-record raw sort
    spills ~37 GB uncompressed); the rows and their batches are the same as with plain spill files, whether the
    pieces of a bucket are held and joined before they are written or written one by one."""
    run = runs["plain"]
    opts = assemble.AssembleOptions()
    plain = list(assemble.raw_batches(run, "expansion", 16, sort_memory_bytes=200_000))
    plain_set = _set(run, "dpo", opts, assemble.trace_index(run, memory_bytes=4_000))
    codecs = []
    real_put = assemble._Routed._put

    def put(self, *a, **k):
        codecs.append(self.codec)
        return real_put(self, *a, **k)

    monkeypatch.setattr(assemble._Routed, "_put", put)
    monkeypatch.setattr(assemble, "_free_bytes", lambda: 1_000)
    monkeypatch.setattr(assemble, "SPILL_FLUSH_BYTES", 1)  # and every piece written at once (not held, joined)
    squeezed = list(assemble.raw_batches(run, "expansion", 16, sort_memory_bytes=200_000))
    assert pa.Table.from_batches(squeezed).equals(pa.Table.from_batches(plain))
    assert [b.num_rows for b in squeezed] == [b.num_rows for b in plain]
    assert _set(run, "dpo", opts, assemble.trace_index(run, memory_bytes=4_000)).equals(plain_set)
    assert codecs and set(codecs) == {"lz4"}
    monkeypatch.setattr(assemble, "_free_bytes", lambda: 1 << 50)
    codecs.clear()
    list(assemble.raw_batches(run, "expansion", 16, sort_memory_bytes=200_000))
    assert set(codecs) == {None}
