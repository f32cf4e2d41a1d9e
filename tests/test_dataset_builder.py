"""The datasets builder, driven directly (datasets 5 has no loading scripts): every config, typed features."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pytest
from PIL import Image as PILImage

import longperceptualthoughts as lpt
from builder.importer import import_upstream

from helpers import UPSTREAM  # noqa: E402
IDS = [f"train_{i:05d}" for i in range(5)]


def make_images(folder: Path) -> Path:
    """Stand-in pictures for the five DOCCI ids (DOCCI itself cannot be fetched here)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, image_id in enumerate(IDS):
        PILImage.new("RGB", (900 + 10 * i, 600), (40 * i, 120, 200)).save(folder / f"{image_id}.jpg")
    return folder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("b")
    import_upstream(UPSTREAM, tmp / "run", images_dir=make_images(tmp / "docci" / "images"))
    return tmp / "run"


def _build(name, tmp_path, **kw):
    b = lpt.LongPerceptualThoughts(config_name=name, cache_dir=str(tmp_path / "cache"), **kw)
    b.download_and_prepare()
    return b.as_dataset(split="train")


@pytest.mark.parametrize("name", lpt.run_configs())
def test_every_run_config_builds_with_its_features(name, run_dir, tmp_path):
    ds = _build(name, tmp_path, run_dir=str(run_dir))
    assert ds.features == lpt.CONFIGS[name].features
    assert ds.num_rows > 0
    if name == "images":
        assert sorted(ds["image_id"]) == IDS
        w, h = ds[0]["image"].size  # 900×600 source: area capped at 512×512 as the models saw it (not its side)
        assert w * h <= 512 * 512 and w * h > 0.98 * 512 * 512 and abs(w / h - 1.5) < 0.01


def test_config_names_and_unknown_config():
    assert {"sft", "dpo", "mcq", "mcq_direct", "simple_cot", "images", "raw_mcq", "raw_simple_cot",
            "raw_expansion", "lpt30k"} <= set(lpt.LongPerceptualThoughts.builder_configs)
    with pytest.raises(ValueError, match="not found"):
        lpt.LongPerceptualThoughts(config_name="nope")


def test_options_reach_the_builder(run_dir, tmp_path):
    ds = _build("dpo", tmp_path, run_dir=str(run_dir), options=lpt.AssembleOptions(pair_kinds=("O>X",)))
    assert set(ds["kind"]) == {"O>X"}


def test_adding_a_config_is_a_few_lines(run_dir, tmp_path):
    spec = lpt.register(lpt.ConfigSpec(
        "sft_x_o", lpt.SFT_FEATURES,
        lambda cfg: [r for r in lpt.assemble.build_sft(cfg.run(), cfg.options) if r["cot_type"] == "X_O"],
        "SFT rows that start from a wrong simple thought"))
    try:
        ds = _build("sft_x_o", tmp_path, run_dir=str(run_dir))
        assert ds.num_rows > 0 and set(ds["cot_type"]) == {"X_O"}
        assert "sft_x_o" in lpt.run_configs()
    finally:
        lpt.CONFIGS.pop(spec.name)
        lpt.register(lpt.CONFIGS["sft"])  # rebuild BUILDER_CONFIGS without it


def test_lpt30k_reads_a_local_release_and_joins_docci(tmp_path):
    """A small fixture shaped like andrewliao11/LongPerceptualThoughts-30k, with its broken card."""
    release = tmp_path / "LongPerceptualThoughts-30k"
    release.mkdir()
    (release / "README.md").write_text("---\ndataset_info:\n  features:\n  - name: messages\n    dtype: dict\n---\n")
    rows = [{"example_id": f"{image_id}_{k}", "cot_type": ["O", "X_O"][k % 2],
             "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "<image>Q?"},
                          {"role": "assistant", "content": "<think> t </think> <answer> (A) </answer>"}]}
            for k, image_id in enumerate(IDS[:3])]
    (release / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(ValueError, match="Dict"):  # why we read the files ourselves
        datasets.load_dataset(str(release))
    docci = tmp_path / "docci"
    make_images(docci / "images")
    ds = _build("lpt30k", tmp_path, release=str(release), docci_dir=str(docci))
    assert ds.features == lpt.LPT30K_FEATURES
    assert ds["image_id"] == IDS[:3] and ds["cot_type"] == ["O", "X_O", "O"]
    assert ds[0]["image"].size == (900, 600) and ds[0]["messages"][2]["role"] == "assistant"


def test_missing_run_dir_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="run directory|run_dir"):
        _build("sft", tmp_path, run_dir=str(tmp_path / "missing"))


def test_the_builder_streams_the_batches_the_export_writes(run_dir, tmp_path):
    """An ArrowBasedBuilder: its tables are the columnar assembly's record batches as they are (no Python row in
    between), and the rows it loads are the ones `lpt export` writes."""
    from builder import assemble
    from builder.export import export
    from builder.store import RunDir

    assert issubclass(lpt.LongPerceptualThoughts, datasets.ArrowBasedBuilder)
    b = lpt.LongPerceptualThoughts(config_name="dpo", cache_dir=str(tmp_path / "cache"), run_dir=str(run_dir))
    tables = [t for _, t in b._generate_tables()]
    batches = list(assemble.batches(RunDir(run_dir), "dpo"))
    assert [t.num_rows for t in tables] == [x.num_rows for x in batches]
    assert all(t.equals(pa.Table.from_batches([x])) for t, x in zip(tables, batches))
    export(run_dir, tmp_path / "out", configs=["dpo", "raw_expansion"])
    for name in ("dpo", "raw_expansion"):
        exported = datasets.load_dataset(str(tmp_path / "out"), name, split="train", cache_dir=str(tmp_path / "c2"))
        assert _build(name, tmp_path / name, run_dir=str(run_dir)).to_list() == exported.to_list()
