"""``lpt train``: the paper's loop (import -> export -> SFT -> DPO -> ``lpt eval``) on the tiny models, offline.

Real parts throughout: the authors' shipped example generations, the real export, TRL's trainers and collators,
the tiny random-weight Qwen2.5-VL of ``builder.tiny_models`` and lighteval through ``lpt eval``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image as PILImage

pytest.importorskip("trl")

from builder.answers import format_answer, grade, parse_options  # noqa: E402
from builder.cli import main  # noqa: E402
from builder.export import export  # noqa: E402
from builder.importer import import_upstream  # noqa: E402
from builder.upstream import EXAMPLE_DIR  # noqa: E402
from builder.train import data as train_data  # noqa: E402
from builder.train.recipe import DPO_RECIPE, SFT_RECIPE  # noqa: E402
from builder.train.trainer import Options, build_trainer, trl_args  # noqa: E402

SMOKE = ["--max-steps", "2", "--max-rows", "4", "-q"]


def _lpt(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line_error(result, expected: str) -> None:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert expected in lines[0], lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """The authors' example generations imported as a run, with flat-colour stand-ins for the 5 DOCCI images."""
    tmp = tmp_path_factory.mktemp("train")
    (tmp / "img").mkdir()
    for i in range(5):
        PILImage.new("RGB", (640, 480), (i * 50, 90, 0)).save(tmp / "img" / f"train_{i:05d}.jpg")
    return import_upstream(EXAMPLE_DIR, tmp / "run", images_dir=tmp / "img") and tmp / "run"


@pytest.fixture(scope="module")
def hub(run_dir, tmp_path_factory):
    return export(run_dir, tmp_path_factory.mktemp("hub") / "out", configs=["sft", "dpo", "images"])


@pytest.fixture(scope="module")
def sft_ckpt(hub, tiny_vlm, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "sft"
    result = _lpt("train", "sft", hub, tiny_vlm, "--output", out, *SMOKE)
    assert result.exit_code == 0, result.output
    return out


def _summary(folder: Path) -> dict:
    return json.loads((folder / "train_summary.json").read_text())


# ------------------------------------------------------------------------------------------------ the loop


def test_the_loop_sft_dpo_eval_on_tiny_models(run_dir, sft_ckpt, tmp_path, monkeypatch):
    pytest.importorskip("lighteval")
    sft = _summary(sft_ckpt)
    assert sft["steps"] == 2 and sft["batches"] >= 2 and sft["batches_with_images"] == sft["batches"]
    assert 0 < sft["labelled_tokens"] < sft["tokens"] and (sft_ckpt / "loss.png").stat().st_size > 0
    # DPO straight from the run directory (exported to a temporary folder first), on the SFT checkpoint
    dpo_out = tmp_path / "dpo"
    result = _lpt("train", "dpo", run_dir, sft_ckpt, "--output", dpo_out, *SMOKE)
    assert result.exit_code == 0, result.output
    dpo = _summary(dpo_out)
    assert dpo["steps"] == 2 and dpo["batches_with_images"] == dpo["batches"] > 0
    assert "images in" in result.output and "tokens/s" in result.output
    # lpt eval scores both checkpoints (transformers engine) on the offline stand-ins
    monkeypatch.setenv("LPT_EVAL_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "evaldata"
    assert _lpt("eval", "--sample-data", data, "--tasks", "lpt_mmvp").exit_code == 0
    for ckpt in (sft_ckpt, dpo_out):
        result = _lpt("eval", ckpt, "--tasks", "lpt_mmvp", "--engine", "transformers", "--data-dir", data,
                      "--max-samples", "2", "--max-new-tokens", "4", "--max-pixels", str(64 * 64),
                      "--output-dir", tmp_path / "eval")
        assert result.exit_code == 0, result.output
        assert any(line.startswith("MMVP") for line in result.output.splitlines()), result.output


def test_images_reach_the_model_and_only_the_assistant_turn_is_labelled(hub, tiny_vlm, tmp_path):
    trainer = build_trainer("sft", hub, str(tiny_vlm), tmp_path, SFT_RECIPE,
                            Options(max_steps=1, max_rows=2, progress=False))
    assert trainer._is_vlm  # the processor, not a bare tokenizer: TRL trains a vision-language model
    row = trainer.train_dataset[0]
    batch = trainer.data_collator([dict(row)])
    assert batch["pixel_values"].numel() > 0 and "image_grid_thw" in batch
    tok = trainer.lpt_processing.tokenizer
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    assert (ids == tok.convert_tokens_to_ids("<|image_pad|>")).sum() > 0
    labelled = tok.decode(ids[labels != -100])
    assert labelled.strip() == row["completion"][0]["content"] + "<|im_end|>"
    prompt_part = tok.decode(ids[labels == -100])
    assert row["prompt"][0]["content"] in prompt_part and "<|image_pad|>" in prompt_part


# ------------------------------------------------------------------------------- training == evaluation words


def _eval_doc(question: str, options: list[str], gold: int, image):
    """What the evaluation code sends for one item under the project protocol (eval_tasks.common.to_doc)."""
    pytest.importorskip("lighteval")
    from eval_tasks.common import Item, Setup, to_doc

    return to_doc(Item(question=question, options=options, gold_index=gold, category="c", image=image),
                  "lpt_mmvp", Setup(bench="mmvp", protocol="project"))


def test_project_protocol_rows_match_what_lpt_eval_sends(hub):
    rows = train_data.load_rows(hub, "sft", protocol="project", max_rows=8)
    for row in rows:
        system, user = row["prompt"]
        completion = row["completion"][0]["content"]
        question, _, _ = user["content"].partition("\nSelect from the following choices.")
        options = parse_options(user["content"][len(question):])
        gold = grade(completion, options, 0).pred_index  # SFT rows are right answers: what they name is the gold
        assert gold >= 0
        doc = _eval_doc(question, options, gold, row["images"][0])
        assert system["content"] == doc.instruction  # the system prompt lpt eval sends
        assert user["content"] == doc.query  # the same question / choices layout
        # the answer format that system prompt asks for: "(X)"
        answer = re.findall(r"<answer>(.*?)</answer>", completion, re.S)[-1].strip()
        assert re.fullmatch(r"\([A-J]\)", answer), answer
        assert answer == format_answer(options, "ABCDEFGHIJ".index(answer[1]), "paren")


def test_authors_protocol_is_their_evaluation_prompt_read_from_their_files(hub):
    from eval_tasks import protocols

    authors = train_data.system_prompt("authors")
    assert authors == protocols.system_prompt("authors", "think")  # one source: what lpt eval sends
    raw = json.loads((EXAMPLE_DIR / "sft_docci_all_extended_cots.json").read_text())
    # their training turns name the capability; their evaluation prompt is the same text without that sentence
    paren = [r["messages"][0]["content"] for r in raw if "(X)" in r["messages"][0]["content"]]
    assert paren and {re.sub(r' The following question requires the capability of "[^"]*"', "", t)
                      for t in paren} == {authors}
    rows = train_data.load_rows(hub, "dpo", protocol="authors", max_rows=20)
    for row in rows:
        assert row["prompt"][0]["content"] == authors
        options = parse_options(row["prompt"][1]["content"])
        chosen = row["chosen"][0]["content"]
        assert grade(chosen, options, 0).pred_index >= 0  # still names one option after the rewrite
        assert re.search(r"<answer> \([A-J]\) </answer>$", chosen), chosen[-60:]
    kept = train_data.load_rows(hub, "sft", protocol="rows", max_rows=3)
    assert "requires the capability" in kept[0]["prompt"][0]["content"]  # 'rows' keeps the rows' own words


# ---------------------------------------------------------------------------------------------- refusals


def test_refusals_are_one_line(run_dir, hub, tiny_vlm, tiny_lm, tmp_path):
    no_images = export(run_dir, tmp_path / "no-images", configs=["sft", "dpo"])
    _one_line_error(_lpt("train", "sft", no_images, tiny_vlm, "-o", tmp_path / "a"), "has no images config")
    only_dpo = export(run_dir, tmp_path / "only-dpo", configs=["dpo", "images"])
    _one_line_error(_lpt("train", "sft", only_dpo, tiny_vlm, "-o", tmp_path / "b"), "has no sft config")
    _one_line_error(_lpt("train", "sft", hub, tmp_path / "no-model", "-o", tmp_path / "c"), "model path")
    _one_line_error(_lpt("train", "dpo", tmp_path / "nothing", tiny_vlm, "-o", tmp_path / "d"), "not found")
    _one_line_error(_lpt("train", "sft", hub, tiny_lm, "-o", tmp_path / "e"), "--text-only")


def test_text_only_when_asked_for(hub, tiny_lm, tmp_path):
    import torch

    torch.set_grad_enabled(False)  # as importing lighteval's transformers model does, for the whole process
    try:
        result = _lpt("train", "sft", hub, tiny_lm, "-o", tmp_path / "t", "--text-only", "--max-steps", "1",
                      "--max-rows", "2", "-q")
    finally:
        torch.set_grad_enabled(True)
    assert result.exit_code == 0, result.output
    s = _summary(tmp_path / "t")
    assert s["text_only"] and s["batches_with_images"] == 0 and 0 < s["labelled_tokens"] < s["tokens"]


def test_resumes_from_trl_checkpoints(hub, tiny_vlm, tmp_path):
    out = tmp_path / "r"
    first = _lpt("train", "sft", hub, tiny_vlm, "-o", out, "--max-steps", "2", "--save-steps", "1", "--max-rows",
                 "4", "-q")
    assert first.exit_code == 0 and (out / "checkpoint-2").is_dir(), first.output
    again = _lpt("train", "sft", hub, tiny_vlm, "-o", out, "--max-steps", "3", "--save-steps", "1", "--max-rows",
                 "4", "-q")
    assert again.exit_code == 0, again.output
    s = _summary(out)
    assert s["resumed_from"].endswith("checkpoint-2") and s["steps"] == 3 and s["batches"] <= 2
    assert "resumed from" in again.output


def test_lora_is_merged_into_a_plain_checkpoint(hub, tiny_vlm, tmp_path):
    from transformers import AutoModelForImageTextToText

    result = _lpt("train", "sft", hub, tiny_vlm, "-o", tmp_path / "l", "--lora", "4", "--max-steps", "1",
                  "--max-rows", "2", "-q")
    assert result.exit_code == 0, result.output
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "l")
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert not (tmp_path / "l" / "adapter_config.json").exists()


def test_recipe_maps_the_authors_configs_onto_trl(tmp_path):
    sft = trl_args("sft", SFT_RECIPE, tmp_path, Options(), use_gpu=False)
    assert (sft.learning_rate, sft.num_train_epochs, sft.per_device_train_batch_size, sft.warmup_steps,
            sft.max_length, str(sft.lr_scheduler_type.value)) == (1e-5, 1.0, 1, 5, 2048, "cosine")
    assert sft.completion_only_loss and sft.use_cpu and not sft.bf16
    dpo = trl_args("dpo", DPO_RECIPE, tmp_path, Options(max_steps=3), use_gpu=False)
    assert dpo.beta == 0.2 and dpo.loss_type == ["sigmoid", "sft"] and dpo.loss_weights == [1.0, 1.0]
    assert dpo.max_steps == 3 and dpo.logging_steps == 1


@pytest.mark.gpu
def test_checkpoint_loads_in_vllm(sft_ckpt):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (vLLM)")
    pytest.importorskip("vllm")
    from builder.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine(str(sft_ckpt))
    assert engine is not None
