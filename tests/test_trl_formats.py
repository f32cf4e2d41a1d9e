"""The exported rows go straight into TRL 1.16: its own dataset preparation (chat template + tokenisation)
accepts SFT (conversational ``messages``) and DPO (conversational ``prompt``/``chosen``/``rejected``), and
the vision rows follow TRL's ``images`` convention. Uses a tiny local Qwen2 model with a locally trained
tokenizer and chat template (random weights; nothing downloaded)."""

from __future__ import annotations


import datasets
import pytest
from PIL import Image as PILImage

import longperceptualthoughts as lpt
from builder.export import export
from builder.importer import import_upstream

trl = pytest.importorskip("trl")
from trl.data_utils import apply_chat_template, is_conversational, prepare_multimodal_messages  # noqa: E402

from helpers import UPSTREAM  # noqa: E402
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'text' %}{{ p['text'] }}{% else %}<|image|>{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trl")
    (tmp / "img").mkdir()
    for i in range(5):
        PILImage.new("RGB", (640, 480), (i * 50, 0, 0)).save(tmp / "img" / f"train_{i:05d}.jpg")
    import_upstream(UPSTREAM, tmp / "run", images_dir=tmp / "img")
    return export(tmp / "run", tmp / "hub", configs=["sft", "dpo", "images"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, out):
    """A locally trained BPE tokenizer with a chat template + a 1-layer Qwen2 with random weights."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image|>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = [m["content"] for r in datasets.load_dataset(str(out), "sft", split="train") for m in r["messages"]]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 bos_token=None)
    hf.chat_template = CHAT_TEMPLATE
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(hf), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                         max_position_embeddings=4096, eos_token_id=hf.eos_token_id,
                                         pad_token_id=hf.pad_token_id))
    return hf, model


def test_sft_rows_follow_trl_conversational_vision_contract(out):
    sft = lpt.load("sft", out)
    row = sft[0]
    assert is_conversational(row)
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    parts = prepare_multimodal_messages(row["messages"], row["images"])
    assert parts[1]["content"][0]["type"] == "image" and parts[1]["content"][0]["image"] is row["images"][0]


def test_dpo_rows_follow_trl_preference_contract(out, tiny):
    tok, _ = tiny
    dpo = lpt.load("dpo", out)
    row = dpo[0]
    assert is_conversational(row) and {"prompt", "chosen", "rejected", "images"} <= set(row)
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert [m["role"] for m in row["chosen"]] == [m["role"] for m in row["rejected"]] == ["assistant"]
    text = apply_chat_template({k: row[k] for k in ("prompt", "chosen", "rejected")}, tok)
    assert text["prompt"].endswith("<|im_start|>assistant\n") and text["chosen"].startswith("<think>")


def test_sft_trainer_prepares_the_rows(out, tiny, tmp_path):
    tok, model = tiny
    ds = datasets.load_dataset(str(out), "sft", split="train").select_columns(["messages"])
    args = trl.SFTConfig(output_dir=str(tmp_path), report_to=[], max_length=512, dataset_num_proc=None,
                         use_cpu=True, assistant_only_loss=False)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    prepared = trainer.train_dataset
    assert len(prepared) == len(ds) and "input_ids" in prepared.column_names
    assert tok.decode(prepared[0]["input_ids"]).count("<|im_start|>") == 3


def test_dpo_trainer_prepares_the_rows(out, tiny, tmp_path):
    tok, model = tiny
    ds = datasets.load_dataset(str(out), "dpo", split="train").select_columns(["prompt", "chosen", "rejected"])
    ds = ds.select(range(min(40, len(ds))))
    args = trl.DPOConfig(output_dir=str(tmp_path), report_to=[], max_length=512, use_cpu=True)
    import copy

    trainer = trl.DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=ds,
                             processing_class=tok)
    prepared = trainer.train_dataset
    assert len(prepared) == len(ds)
    ids = [c for c in prepared.column_names if c.endswith("ids")]
    assert any(c.startswith("chosen") for c in ids) and any(c.startswith("rejected") for c in ids), ids
