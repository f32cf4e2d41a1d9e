"""write_parquet: a config's Arrow rows written straight to Hub-layout parquet load back with `datasets` as the
same rows and features `Dataset.from_list(rows, features)` gives, with the metadata `to_parquet` writes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

import longperceptualthoughts as lpt
from builder import assemble
from builder.importer import import_upstream
from builder.parquet_out import write_parquet

from helpers import UPSTREAM  # noqa: E402

CONFIGS = ["sft", "dpo", "mcq", "mcq_direct", "simple_cot", "raw_mcq", "raw_simple_cot", "raw_expansion"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return import_upstream(UPSTREAM, tmp_path_factory.mktemp("pq") / "run")


def _load(folder: Path, cache: Path) -> datasets.Dataset:
    files = sorted(str(p) for p in folder.glob("train-*.parquet"))
    return datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(cache))


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_a_written_config_loads_as_the_datasets_rows(run, tmp_path):
    cache_before = sorted(Path(datasets.config.HF_DATASETS_CACHE).rglob("*")) \
        if Path(datasets.config.HF_DATASETS_CACHE).exists() else []
    for name in CONFIGS:
        features = lpt.CONFIGS[name].features
        rows = list(lpt.CONFIGS[name].build(lpt.LPTConfig(name=name, run_dir=str(run.path))))
        n = write_parquet(assemble.batches(run, name, batch_rows=100), tmp_path / name, features,
                          cdc=name.startswith("raw"))
        assert n == len(rows) > 0
        # written by datasets itself, for comparison
        ref = datasets.Dataset.from_list(rows, features=features)
        ref.to_parquet(str(tmp_path / f"{name}.ref.parquet"))
        ours = pq.ParquetFile(tmp_path / name / "train-00000-of-00001.parquet")
        theirs = pq.ParquetFile(tmp_path / f"{name}.ref.parquet")
        assert ours.schema_arrow.metadata[b"huggingface"] == theirs.schema_arrow.metadata[b"huggingface"]
        assert ours.schema_arrow.equals(theirs.schema_arrow, check_metadata=False)
        if name.startswith("raw"):  # cdc=True: content-defined chunking recorded as datasets records it
            assert ours.metadata.metadata[b"content_defined_chunking"] == \
                theirs.metadata.metadata[b"content_defined_chunking"]
        else:
            assert b"content_defined_chunking" not in ours.metadata.metadata
        loaded = _load(tmp_path / name, tmp_path / "cache")
        assert loaded.features == features, name
        assert loaded.to_list() == ref.to_list(), name
    cache_after = sorted(Path(datasets.config.HF_DATASETS_CACHE).rglob("*")) \
        if Path(datasets.config.HF_DATASETS_CACHE).exists() else []
    assert cache_after == cache_before  # writing used no datasets cache (loading used tmp_path/cache)


def test_shards_row_groups_replacement_and_same_bytes(run, tmp_path):
    features = lpt.CONFIGS["dpo"].features
    every = assemble.AssembleOptions(dpo_pairs="all")  # every candidate pair: enough rows for several files
    table = assemble.table(run, "dpo", every)
    out = tmp_path / "dpo"
    n = write_parquet(assemble.batches(run, "dpo", every, batch_rows=64), out, features, shard_bytes=500_000,
                      row_group_bytes=120_000)
    files = sorted(p.name for p in out.glob("train-*.parquet"))
    assert n == table.num_rows and len(files) > 2
    assert files == [f"train-{i:05d}-of-{len(files):05d}.parquet" for i in range(len(files))]
    assert all(pq.ParquetFile(out / f).metadata.num_row_groups > 1 for f in files[:-1])
    assert _load(out, tmp_path / "cache").to_list() == table.to_pylist()
    first = _digest(out)
    write_parquet(assemble.batches(run, "dpo", every, batch_rows=64), out, features, shard_bytes=500_000,
                  row_group_bytes=120_000)
    assert _digest(out) == first  # a rerun writes the same bytes
    write_parquet(table, out, features)  # fewer files: the old ones go, no temp file stays
    assert sorted(p.name for p in out.iterdir()) == ["train-00000-of-00001.parquet"]
    assert _load(out, tmp_path / "cache2").to_list() == table.to_pylist()

    def failing():
        yield from table.to_batches(max_chunksize=64)
        raise RuntimeError("the assembly failed")

    with pytest.raises(RuntimeError, match="assembly failed"):
        write_parquet(failing(), out, features, row_group_bytes=120_000)
    assert sorted(p.name for p in out.iterdir()) == ["train-00000-of-00001.parquet"]  # the last good write stays


def test_an_exported_folder_loads_by_config_name(run, tmp_path):
    """The Hub layout: OUT/<config>/train-*.parquet plus the card's YAML; load_dataset(OUT, config) works."""
    from builder.export import render_card

    out = tmp_path / "hub"
    for name in CONFIGS:
        write_parquet(assemble.batches(run, name), out / name, lpt.CONFIGS[name].features)
    render_card(out)
    for name in ("sft", "dpo", "raw_expansion"):
        ds = datasets.load_dataset(str(out), name, split="train", cache_dir=str(tmp_path / "cache"))
        assert ds.features == lpt.CONFIGS[name].features
        assert ds.to_list() == assemble.table(run, name).to_pylist()


def test_no_rows_still_writes_the_schema(tmp_path):
    features = lpt.CONFIGS["sft"].features
    assert write_parquet([], tmp_path / "sft", features) == 0
    f = pq.ParquetFile(tmp_path / "sft" / "train-00000-of-00001.parquet")
    assert f.metadata.num_rows == 0 and f.schema_arrow.equals(features.arrow_schema)
    assert f.schema_arrow.metadata[b"huggingface"] == features.arrow_schema.metadata[b"huggingface"]
