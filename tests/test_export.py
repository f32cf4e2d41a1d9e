"""`lpt export` writes a Hub-layout folder that plain `datasets.load_dataset` reads offline; the card's
numbers are computed from the data; LLaMA-Factory JSON; the CLI commands."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import datasets
import pytest
from click.testing import CliRunner
from huggingface_hub import DatasetCard

import longperceptualthoughts as lpt
from builder.answers import parse_thought
from builder.assemble import AssembleOptions
from builder.cli import card_cmd, export_cmd, import_upstream_cmd
from builder.cli import main as main_cli
from builder.export import (build_dataset, card_stats, export,
                            read_report, render_card)
from builder.importer import import_upstream

from helpers import UPSTREAM  # noqa: E402
IDS = [f"train_{i:05d}" for i in range(5)]


def make_images(folder: Path) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, image_id in enumerate(IDS):
        Image.new("RGB", (1024, 700 + i), (50 * i, 90, 30)).save(folder / f"{image_id}.jpg")
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    run = import_upstream(UPSTREAM, tmp / "run", images_dir=make_images(tmp / "images"))
    out = export(tmp / "run", tmp / "hub")
    return run, out, tmp / "run"


def test_every_config_loads_offline_with_declared_features(built):
    run, out, _ = built
    names = datasets.get_dataset_config_names(str(out))
    assert sorted(names) == sorted(lpt.run_configs())
    for name in names:
        ds = datasets.load_dataset(str(out), name, split="train")
        assert ds.features == lpt.CONFIGS[name].features, name
        assert ds.num_rows > 0
    assert datasets.load_dataset(str(out), split="train").features == lpt.SFT_FEATURES  # sft is the default
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet"))
    assert files == sorted(f"{n}/train-00000-of-00001.parquet" for n in names)


def test_images_are_stored_once_and_attached_by_load(built):
    run, out, _ = built
    images = datasets.load_dataset(str(out), "images", split="train")
    area = lambda im: im.size[0] * im.size[1]  # capped at the 512×512 area the models saw
    assert sorted(images["image_id"]) == IDS and 0.98 * 512 * 512 < area(images[0]["image"]) <= 512 * 512
    sft = lpt.load("sft", out)
    assert isinstance(sft.features["images"], datasets.List)
    row = sft[0]
    assert area(row["images"][0]) <= 512 * 512 and len(row["images"]) == 1
    assert "images" not in datasets.load_dataset(str(out), "sft", split="train").column_names
    assert lpt.load("sft", out, with_images=False).column_names == list(lpt.SFT_FEATURES)


def test_card_numbers_are_computed_from_the_data(built):
    run, out, _ = built
    card = DatasetCard.load(out / "README.md")
    meta = card.data.to_dict()
    # the imported example: the authors' MIT generations on DOCCI (the card used to say Apache-2.0 for any run)
    assert meta["license"] == ["mit", "cc-by-4.0"] and meta["source_datasets"] == ["google/docci"]
    assert "visual-question-answering" in meta["task_categories"] and "@inproceedings{OnoeDocci2024" in card.text
    # the size over every config (raw_expansion alone has 1,200 rows), and no size that was never measured
    assert meta["size_categories"] == ["1K<n<10K"] and "num_bytes" not in card.content
    assert "dataset_size" not in card.content and "download_size" in card.content
    assert {c["config_name"] for c in meta["configs"]} == set(lpt.run_configs())
    stats = card_stats(out)
    dpo = datasets.load_dataset(str(out), "dpo", split="train")
    sft = datasets.load_dataset(str(out), "sft", split="train")
    rows = {c["name"]: c["rows"] for c in stats["configs"]}
    assert rows["sft"] == sft.num_rows and rows["dpo"] == dpo.num_rows
    assert {k["kind"]: k["pairs"] for k in stats["pair_kinds"]} == dict(Counter(dpo["kind"]))
    words = [len(parse_thought(m[-1]["content"])[0].split()) for m in sft["messages"]]
    assert stats["sft_mean_words"] == pytest.approx(sum(words) / len(words))
    s2 = run.read("simple_cot").to_pylist()
    kept = [r for r in s2 if r["keep"]]
    acc2 = next(s for s in stats["stages"] if s["stage"] == "2 simple CoT")["accuracy"]
    assert acc2 == pytest.approx(sum(r["correct"] for r in kept) / len(kept))
    text = (out / "README.md").read_text()
    assert f"| `dpo` | {dpo.num_rows} |" in text and f"{acc2:.3f}" in text
    for k, v in Counter(dpo["kind"]).items():
        assert f"| `{k}` | {v} |" in text


def test_paths_instead_of_bytes(built, tmp_path):
    _, _, run_dir = built
    out = export(run_dir, tmp_path / "p", embed_images=False, configs=["images"])
    raw = datasets.load_dataset(str(out), "images", split="train").cast_column("image", datasets.Image(decode=False))
    assert raw[0]["image"]["bytes"] is None and Path(raw[0]["image"]["path"]).is_absolute()


def test_llamafactory_format(built, tmp_path):
    _, _, run_dir = built
    out = export(run_dir, tmp_path / "lf", fmt="llamafactory")
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["LongPerceptualThoughts_DPO"]["ranking"] is True
    sft = json.loads((out / info["LongPerceptualThoughts_SFT"]["file_name"]).read_text())
    dpo = json.loads((out / "LongPerceptualThoughts_DPO.json").read_text())
    assert [m["role"] for m in sft[0]["messages"]] == ["system", "user", "assistant"]
    assert sft[0]["messages"][1]["content"].startswith("<image>") and (out / sft[0]["images"][0]).is_file()
    assert set(dpo[0]) == {"messages", "chosen", "rejected", "images"} and dpo[0]["chosen"]["role"] == "assistant"


def test_cli_commands(tmp_path):
    runner = CliRunner()
    images = make_images(tmp_path / "img")
    r = runner.invoke(import_upstream_cmd, [str(UPSTREAM), str(tmp_path / "run"), "--images-dir", str(images)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(export_cmd, [str(tmp_path / "run"), str(tmp_path / "out"), "--only", "sft", "--only",
                                   "dpo", "--pair-kinds", "O>X,X_O>X"])
    assert r.exit_code == 0, r.output
    assert set(datasets.load_dataset(str(tmp_path / "out"), "dpo", split="train")["kind"]) == {"O>X", "X_O>X"}
    (tmp_path / "out" / "README.md").unlink()
    assert runner.invoke(card_cmd, [str(tmp_path / "out")]).exit_code == 0
    assert "LongPerceptualThoughts" in (tmp_path / "out" / "README.md").read_text()


# --------------------------------------------------------------------------------------------- empty configs


@pytest.fixture(scope="module")
def no_x_o(tmp_path_factory):
    """The imported run without any X→O expansion (no wrong simple thought is corrected): SFT is empty."""
    import pyarrow as pa

    from builder.records import EXPANSION

    tmp = tmp_path_factory.mktemp("no_x_o")
    run = import_upstream(UPSTREAM, tmp / "run", images_dir=make_images(tmp / "images"))
    rows = [e for e in run.read("expansion").to_pylist() if not (e["correct"] and not e["simple_correct"])]
    run.write_table("expansion", pa.Table.from_pylist(rows, schema=EXPANSION), input_ids=run.done_inputs("expansion"))
    return run


def test_datasets_cannot_load_a_zero_row_split(tmp_path):
    """Why export leaves an empty config out instead of writing a zero-row parquet: `datasets` refuses the
    split even when the file carries the schema. (If this starts passing, empty configs could be written.)"""
    empty = datasets.Dataset.from_dict({k: [] for k in lpt.SFT_FEATURES}, features=lpt.SFT_FEATURES)
    (tmp_path / "sft").mkdir()
    empty.to_parquet(str(tmp_path / "sft" / "train-00000-of-00001.parquet"))
    (tmp_path / "README.md").write_text("---\nconfigs:\n- config_name: sft\n  data_files:\n  - split: train\n"
                                        "    path: sft/train-*\n---\n")
    with pytest.raises(ValueError, match="corresponds to no data"):
        datasets.load_dataset(str(tmp_path), "sft", split="train")


def test_empty_config_is_left_out_with_its_reason_and_every_listed_config_loads(no_x_o, tmp_path):
    run = no_x_o
    out = tmp_path / "hub"
    export(run.path, out, configs=["sft"], options=AssembleOptions(sft_balance=False))  # an older export's sft goes
    export(run.path, out, configs=["sft", "dpo", "mcq", "raw_expansion"])
    names = datasets.get_dataset_config_names(str(out))
    assert sorted(names) == ["dpo", "mcq", "raw_expansion"] and not (out / "sft").exists()
    for name in names:
        ds = datasets.load_dataset(str(out), name, split="train")
        assert ds.num_rows > 0 and ds.features == lpt.CONFIGS[name].features
    report = read_report(out)
    assert set(report["configs"]) == set(names) and list(report["empty"]) == ["sft"]
    why = report["empty"]["sft"]
    assert "no X→O trace" in why and "50/50" in why and "sft_balance=False" in why
    card = (out / "README.md").read_text()
    assert "- `sft`: no X→O trace" in card and "config_name: sft" not in card
    assert card_stats(out)["empty_configs"] == [{"name": "sft", "reason": why}]
    # the builder itself answers an empty set with 0 rows and the declared features (no "no data" error)
    ds = build_dataset(run.path, "sft")
    assert ds.num_rows == 0 and ds.features == lpt.SFT_FEATURES
    # without the 50/50 balance the correct half is exported, and the report forgets the old reason
    export(run.path, out, configs=["sft"], options=AssembleOptions(sft_balance=False))
    sft = datasets.load_dataset(str(out), "sft", split="train")
    assert sft.num_rows > 0 and set(sft["cot_type"]) <= {"O", "O_O"}
    assert read_report(out)["empty"] == {} and "sft" in datasets.get_dataset_config_names(str(out))


def test_empty_sets_in_cli_and_llamafactory(no_x_o, tmp_path):
    r = CliRunner().invoke(export_cmd, [str(no_x_o.path), str(tmp_path / "out"), "--only", "sft", "--only",
                                        "mcq"])
    assert r.exit_code == 0, r.output
    assert "sft: empty, not written: no X→O trace" in r.output and "mcq: " in r.output
    r = CliRunner().invoke(export_cmd, [str(no_x_o.path), str(tmp_path / "out2"), "--only", "sft",
                                        "--no-sft-balance"])
    assert r.exit_code == 0 and "sft: empty" not in r.output
    assert datasets.load_dataset(str(tmp_path / "out2"), "sft", split="train").num_rows > 0
    lf = export(no_x_o.path, tmp_path / "lf", fmt="llamafactory")
    info = json.loads((lf / "dataset_info.json").read_text())
    assert "LongPerceptualThoughts_SFT" not in info and not (lf / "LongPerceptualThoughts_SFT.json").exists()
    assert "LongPerceptualThoughts_DPO" in info and "no X→O trace" in read_report(lf)["empty"]["sft"]


def test_why_empty_for_each_set(no_x_o, tmp_path):
    from builder import assemble
    from builder.records import MCQ, SIMPLE_COT
    from builder.store import RunDir

    opts = AssembleOptions()
    assert assemble.why_empty(no_x_o, "dpo", opts) == "" and assemble.why_empty(no_x_o, "mcq", opts) == ""
    assert assemble.why_empty(no_x_o, "sft", opts.replace(sft_balance=False, sft_ratio=1e-6)) == \
        "O ∪ O→O (562 traces) and X→O (0) x sft_ratio 1e-06 round down to 0"
    assert "round down to 0" in assemble.why_empty(no_x_o, "simple_cot", opts.replace(simple_cot_ratio=1e-6))
    bare = RunDir(tmp_path / "bare")
    bare.write_table("mcq", MCQ.empty_table())
    bare.write_table("simple_cot", SIMPLE_COT.empty_table())
    assert assemble.why_empty(bare, "mcq_direct", opts) == "stage 1 wrote no valid MCQ"
    assert assemble.why_empty(bare, "sft", opts) == "the run has no kept simple CoT or expansion"
    why_dpo = assemble.why_empty(no_x_o, "dpo", opts.replace(pair_kinds=("X_O>X",)))
    assert why_dpo.startswith("no pair of the kinds X_O>X (kept traces: O 234")


def test_images_missing_everywhere_or_in_part(tmp_path):
    """Imported without images: the images config is left out, saying why; one image missing: a clear error
    naming the image id, the field and the file, with no traceback, and nothing written."""
    run = import_upstream(UPSTREAM, tmp_path / "run")  # no --images-dir: the paths point nowhere
    r = CliRunner().invoke(export_cmd, [str(run.path), str(tmp_path / "out"), "--only", "images", "--only", "mcq"])
    assert r.exit_code == 0, r.output
    assert "images: empty, not written: none of the run's 5 source images is on this machine" in r.output
    assert read_report(tmp_path / "out")["empty"]["images"].startswith("none of the run's 5 source images")
    assert datasets.load_dataset(str(tmp_path / "out"), "mcq", split="train").num_rows == 40

    images = make_images(tmp_path / "images")
    run = import_upstream(UPSTREAM, tmp_path / "run2", images_dir=images)
    victim = sorted(images.iterdir())[0]
    victim.unlink()
    r = CliRunner().invoke(export_cmd, [str(run.path), str(tmp_path / "out2"), "--only", "images"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert f"source image_id '{victim.stem}': field 'image_path': no file" in r.output, r.output
    assert not (tmp_path / "out2" / "README.md").exists()


def test_card_names_the_paper_the_makers_the_fields_and_only_configs_that_exist(tmp_path):
    run = import_upstream(UPSTREAM, tmp_path / "run")  # no images on this machine: no images config
    out = export(run.path, tmp_path / "out", configs=["sft", "dpo", "raw_expansion"])
    card = (out / "README.md").read_text()
    assert "https://arxiv.org/abs/2504.15362" in card and "@inproceedings{liao2025longperceptualthoughts" in card
    assert "| stage3 (expansion) | deepseek-ai/DeepSeek-R1-Distill-Qwen-32B |" in card
    assert (out / "run_manifest.json").is_file() and "run_manifest.json" in read_report(out)["files"]
    assert "| `kind` | string | the pair kind" in card and "## An example row (`sft`" in card
    assert f'load_dataset("{out}", "sft"' in card and '"images"' not in card.split("## Load")[1].split("##")[0]
    assert "has no `images` config" in card
    assert "![Records per stage" in card and "](figures/funnel.png)" in card  # the figures, beside the card
    from PIL import Image
    assert Image.open(out / "figures" / "funnel.png").format == "PNG"
    with pytest.raises(ValueError, match="with_images=False"):
        lpt.load("sft", str(out))
    assert lpt.load("sft", str(out), with_images=False).num_rows == read_report(out)["configs"]["sft"]


def test_push_fills_in_the_repo_id_and_fails_in_one_line_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = import_upstream(UPSTREAM, tmp_path / "run")
    out = export(run.path, tmp_path / "out", configs=["mcq"])
    card = (out / "README.md").read_bytes()
    res = CliRunner().invoke(main_cli, ["push", str(out), "me/lpt-test", "--token", "hf_x"])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1 and "me/lpt-test" in res.output
    assert (out / "README.md").read_bytes() == card  # a failed push changes nothing on disk
    assert render_card(out, repo_id="me/lpt-test").count('load_dataset("me/lpt-test", "mcq"') == 1


def test_export_leaves_nothing_in_the_datasets_cache(built, tmp_path):
    """`lpt export` (configs, card, figures) writes under OUT only: no Arrow copy of a config in the user's
    ``datasets`` cache (the card once loaded every config through ``load_dataset``, ~2 GB per 300K export)."""
    import os
    import subprocess
    import sys

    home = tmp_path / "hf-home"
    env = {**os.environ, "HF_HOME": str(home), "HF_DATASETS_CACHE": str(home / "datasets"),
           "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "builder.cli", "export", str(built[2]), str(tmp_path / "out")],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "out" / "README.md").is_file() and (tmp_path / "out" / "sft").is_dir()
    left = [str(p.relative_to(home)) for p in home.rglob("*") if p.is_file()] if home.exists() else []
    assert left == []
