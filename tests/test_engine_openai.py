"""OpenAIEngine against real HTTP servers on 127.0.0.1.

* ``served_lm``: a real ``transformers serve`` process (transformers' own OpenAI-compatible server) on a
  free port, serving the session's tiny random Qwen2 model (``tiny_lm`` from conftest), started once for
  the module. Its ``generation_config.json`` is given ``do_sample: true`` so that ``temperature`` and
  ``seed`` take effect (``transformers serve`` samples only when the model's config says so).
  ``transformers serve`` ignores ``n`` and rejects vLLM's extra fields with 422: both paths are tested.
* ``FakeChatServer``: a FAKE, a stdlib HTTP handler that answers canned errors (500/429) for its first
  requests and then canned completions, and records every request body. It stands in for what cannot
  run here (a flaky hosted API, a vLLM server) to test retries and the exact JSON the engine sends.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from builder.engines import Request, SamplingParams, load_engine
from builder.engines.cache import JSONLinesCache, SQLiteCache, open_cache
from builder.engines.openai_engine import OpenAIEngine, OpenAIEngineError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ask(text: str, **params) -> Request:
    return Request([{"role": "user", "content": text}], SamplingParams(**params))


# ----- the real server -----


@pytest.fixture(scope="module")
def served_lm(request, tmp_path_factory):
    """``(base_url, model)`` of a ``transformers serve`` process serving a sampling copy of ``tiny_lm``."""
    try:
        tiny_lm = request.getfixturevalue("tiny_lm")
    except pytest.FixtureLookupError:
        pytest.skip("fixture tiny_lm (tests/conftest.py) not available yet")
    model_dir = tmp_path_factory.mktemp("served") / "tiny-lm"
    shutil.copytree(tiny_lm, model_dir)
    gen_path = model_dir / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.exists() else {}
    gen_path.write_text(json.dumps({**gen, "do_sample": True, "top_k": 0, "top_p": 1.0, "temperature": 1.0}))
    with transformers_serve(model_dir, model_dir.parent / "serve.log") as base_url:
        yield base_url, str(model_dir)


@contextlib.contextmanager
def transformers_serve(model_dir, log_path):
    """Run ``transformers serve <model_dir>`` (offline, CPU) on a free 127.0.0.1 port; yield its base URL."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1"}
    cmd = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(model_dir),
           "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]  # fmt: skip
    with open(log_path, "w") as log, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT) as proc:
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(f"transformers serve did not start:\n{Path(log_path).read_text()}")
                time.sleep(0.2)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def build_tiny_idefics3(out_dir: Path) -> Path:
    """A tiny random Idefics3 (SmolVLM v1 architecture) with a locally trained BPE, for image requests.

    ``transformers serve`` loads processors with ``AutoProcessor``; Idefics3's stock processor needs no
    torchvision (unlike Qwen2.5-VL's, which needs an image-only subclass that AutoProcessor cannot name).
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        PreTrainedTokenizerFast,
    )

    specials = [
        "<|endoftext|>",
        "<|im_start|>",
        "<end_of_utterance>",
        "<fake_token_around_image>",
        "<image>",
        "<global-img>",
    ]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer, tk.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    corpus = ["A red bus on a city street.", "What colour is the cat?", "Answer: (A) yes"] * 10
    tk.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    chat = (
        "<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}: {% if m['content'] is string %}"
        "{{ m['content'] }}{% else %}{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}"
        "{% elif c['type'] == 'image' %}<image>{% endif %}{% endfor %}{% endif %}<end_of_utterance>\n"
        "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
        additional_special_tokens=specials[3:],
        chat_template=chat,
    )
    images = Idefics3ImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": 32}, max_image_size={"longest_edge": 32}
    )
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
    text = {
        "model_type": "llama",
        "vocab_size": len(tok),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "bos_token_id": ids["<|im_start|>"],
        "eos_token_id": ids["<end_of_utterance>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(
        Idefics3Config(text_config=text, vision_config=vision, scale_factor=2, image_token_id=ids["<image>"])
    )
    model.save_pretrained(out_dir)
    Idefics3Processor(images, tok, image_seq_len=4, chat_template=chat).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def served_vlm(tmp_path_factory):
    """``(base_url, model)`` of ``transformers serve`` serving a tiny random Idefics3."""
    model_dir = build_tiny_idefics3(tmp_path_factory.mktemp("served-vlm") / "tiny-idefics3")
    with transformers_serve(model_dir, model_dir.parent / "serve.log") as base_url:
        yield base_url, str(model_dir)


def engine_for(served, **options) -> OpenAIEngine:
    base_url, model = served
    return load_engine("openai", model, base_url=base_url, **options)


def test_basic_completion_greedy_is_repeatable(served_lm):
    engine = engine_for(served_lm)
    (samples,) = engine.generate([ask("Describe the photo.", temperature=0.0, max_new_tokens=6)])
    assert len(samples) == 1
    s = samples[0]
    assert isinstance(s.text, str) and s.finish_reason in ("stop", "length")
    assert s.num_tokens is not None and 1 <= s.num_tokens <= 6
    (again,) = engine.generate([ask("Describe the photo.", temperature=0.0, max_new_tokens=6)])
    assert again == samples
    assert engine.stats == {"calls": 2, "cache_hits": 0}


def test_n_falls_back_to_seeded_calls(served_lm):
    # transformers serve ignores `n` (one choice back): the engine makes n calls with seeds 7, 8, 9.
    # concurrency=1 because transformers serve sets its seed globally per request.
    engine = engine_for(served_lm, concurrency=1)
    (samples,) = engine.generate([ask("Is the cat red?", n=3, temperature=1.0, seed=7, max_new_tokens=8)])
    assert len(samples) == 3 and engine.native_n is False
    assert engine.stats["calls"] == 1 + 3  # the probe call (its single choice is discarded) + 3 seeded calls
    assert len({s.text for s in samples}) > 1, "different seeds should give different samples"
    # Deterministic: sample j is exactly the one-sample request with seed 7 + j.
    (second,) = engine.generate([ask("Is the cat red?", n=1, temperature=1.0, seed=8, max_new_tokens=8)])
    assert second == [samples[1]]
    fresh = engine_for(served_lm, concurrency=1)
    assert fresh.generate([ask("Is the cat red?", n=3, temperature=1.0, seed=7, max_new_tokens=8)]) == [samples]
    # Under concurrency only one request probes whether n is honoured; the others wait for the answer.
    busy = engine_for(served_lm, concurrency=4)
    out = busy.generate([ask(f"q{i}", n=2, temperature=0.0, max_new_tokens=3) for i in range(5)])
    assert [len(o) for o in out] == [2] * 5
    assert busy.stats["calls"] == 1 + 5 * 2


def test_order_preserved_under_concurrency(served_lm):
    requests = [ask(f"Question number {i}: what is in image {i * 7}?", temperature=0.0, max_new_tokens=4 + i % 3)
                for i in range(10)]  # fmt: skip
    one_by_one = [engine_for(served_lm, concurrency=1).generate([r])[0] for r in requests]
    together = engine_for(served_lm, concurrency=6).generate(requests, progress=True)
    assert together == one_by_one
    assert all(s[0].num_tokens <= 4 + i % 3 for i, s in enumerate(together))
    assert len({s[0].text for s in together}) > 1  # the prompts differ, so would a shuffled order


def test_stop_strings_are_cut_off(served_lm):
    engine = engine_for(served_lm)
    (full,) = engine.generate([ask("Tell me.", temperature=0.0, max_new_tokens=12)])
    text = full[0].text
    stop = next(c for c in text[1:] if c.strip() and c != "\ufffd")  # a character the model did write
    (cut,) = engine.generate([ask("Tell me.", temperature=0.0, max_new_tokens=12, stop=(stop,))])
    assert cut[0].text == text[: text.index(stop)]
    assert stop not in cut[0].text


@pytest.mark.parametrize("suffix", [".sqlite", ".jsonl"])
def test_cache_hit_skips_the_server_and_is_keyed_by_the_whole_request(served_lm, tmp_path, suffix):
    path = tmp_path / f"cache{suffix}"
    first = engine_for(served_lm, cache=path)
    req = ask("Cache me.", n=2, temperature=1.0, seed=3, max_new_tokens=5)
    out = first.generate([req])
    first.close()
    assert first.stats["calls"] >= 1 and first.stats["cache_hits"] == 0

    second = engine_for(served_lm, cache=path)  # a new engine (as after a restart) on the same file
    assert second.generate([req]) == out
    assert second.stats == {"calls": 0, "cache_hits": 1}
    # Any change in the request is a miss: temperature, seed, max tokens, the prompt.
    for changed in (
        ask("Cache me.", n=2, temperature=0.5, seed=3, max_new_tokens=5),
        ask("Cache me.", n=2, temperature=1.0, seed=4, max_new_tokens=5),
        ask("Cache me.", n=2, temperature=1.0, seed=3, max_new_tokens=6),
        ask("Cache me!", n=2, temperature=1.0, seed=3, max_new_tokens=5),
    ):
        before = second.stats["calls"]
        second.generate([changed])
        assert second.stats["calls"] > before, changed
    assert second.stats["cache_hits"] == 1
    second.close()


def test_images_reach_a_real_vlm_server(served_vlm):
    def look(colour, size=(64, 48)):
        image = Image.new("RGB", size, colour)
        content = [{"type": "image", "image": image}, {"type": "text", "text": "What colour is it?"}]
        return Request([{"role": "user", "content": content}], SamplingParams(max_new_tokens=8), max_pixels=32 * 24)

    engine = engine_for(served_vlm, concurrency=2)
    red, blue, red_again, big_red = engine.generate([look("red"), look("blue"), look("red"), look("red", (640, 480))])
    assert red == red_again and all(s.num_tokens for s in red + blue)
    assert red[0].text != blue[0].text  # the model saw the pixels
    assert big_red == red  # the same picture, capped to the same 32x24 before sending


def test_continue_final_message_is_refused_clearly(served_lm):
    prefill = Request(
        [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "Because"}],
        SamplingParams(max_new_tokens=4),
        continue_final_message=True,
    )
    # transformers serve has no continue_final_message: it answers 422, and the error says why.
    with pytest.raises(OpenAIEngineError, match="422.*continue_final_message.*vLLM or SGLang"):
        engine_for(served_lm, max_retries=0).generate([prefill])
    # A hosted API would start a new turn instead: refused before anything is sent.
    hosted = engine_for(served_lm, server_kind="openai")
    with pytest.raises(ValueError, match="does not continue a prefilled assistant message"):
        hosted.generate([prefill])
    assert hosted.stats["calls"] == 0


# ----- the fake server -----


class FakeChatServer:
    """FAKE OpenAI-compatible endpoint: fails the first requests with ``errors`` (status codes), then
    answers ``"<first message's text> -> canned <i> STOP tail"`` for each of the ``n`` choices asked for
    (after sleeping X s if that text starts with ``sleep:X``). Records the JSON bodies it receives."""

    def __init__(self, errors: list[int] | None = None) -> None:
        self.errors = list(errors or [])
        self.bodies: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                with lock:
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    self._answer()
                finally:
                    with lock:
                        fake.in_flight -= 1

            def _answer(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.bodies.append(body)
                if fake.errors:
                    status = fake.errors.pop(0)
                    payload = {"error": {"message": f"canned failure {status}", "type": "server_error"}}
                    self._send(status, payload, {"retry-after-ms": "5"})
                    return
                n = body.get("n", 1)
                first = body["messages"][0]["content"]
                prompt = first if isinstance(first, str) else " ".join(p["text"] for p in first if p["type"] == "text")
                if prompt.startswith("sleep:"):  # lets a test make early requests finish last
                    time.sleep(float(prompt.split()[0][len("sleep:") :]))
                choices = [{"index": i, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": f"{prompt} -> canned {i} STOP tail"}}
                           for i in range(n)]  # fmt: skip
                self._send(200, {"id": "fake", "object": "chat.completion", "created": 0, "model": body["model"],
                                 "choices": choices, "usage": {"prompt_tokens": 3, "completion_tokens": 4 * n,
                                                               "total_tokens": 3 + 4 * n}})  # fmt: skip

            def _send(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake():
    servers: list[FakeChatServer] = []

    def make(errors=None) -> FakeChatServer:
        servers.append(FakeChatServer(errors))
        return servers[-1]

    yield make
    for s in servers:
        s.stop()


def test_retries_on_500_and_429_then_succeed(fake):
    server = fake([500, 429, 503])
    engine = OpenAIEngine("m", base_url=server.base_url, max_retries=5)
    (samples,) = engine.generate([ask("hi", max_new_tokens=3, stop=("STOP",))])
    assert [s.text for s in samples] == ["hi -> canned 0 "]  # stop string and what follows it cut off
    assert len(server.bodies) == 4  # 3 failures + 1 success
    assert engine.stats["calls"] == 1  # one logical call; the retries happen inside the openai client


def test_clear_error_after_max_retries(fake):
    server = fake([500] * 10)
    engine = OpenAIEngine("m", base_url=server.base_url, max_retries=2)
    with pytest.raises(OpenAIEngineError, match=r"request 0 .* HTTP 500 after 2 retries: .*canned failure 500"):
        engine.generate([ask("hi")])
    assert len(server.bodies) == 3  # first try + 2 retries


def test_vllm_payload_images_and_native_n(fake):
    server = fake()
    engine = OpenAIEngine("qwen", base_url=server.base_url, server_kind="vllm")
    image = Image.new("RGB", (400, 200), (200, 10, 10))
    req = Request(
        [
            {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What colour?"}]},
            {"role": "assistant", "content": "<think>\nThe image"},
        ],
        SamplingParams(
            n=3,
            temperature=0.7,
            top_p=0.9,
            top_k=20,
            repetition_penalty=1.05,
            max_new_tokens=9,
            stop=("</answer>",),
            bad_words=("Wait",),
            seed=11,
        ),
        continue_final_message=True,
        max_pixels=100 * 50,
    )
    (samples,) = engine.generate([req])
    assert [s.text for s in samples] == [f"What colour? -> canned {i} STOP tail" for i in range(3)]
    (body,) = server.bodies
    assert body["n"] == 3 and body["seed"] == 11 and body["max_tokens"] == 9 and body["stop"] == ["</answer>"]
    assert (body["temperature"], body["top_p"], body["top_k"], body["repetition_penalty"]) == (0.7, 0.9, 20, 1.05)
    assert body["bad_words"] == ["Wait"]
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["messages"][1] == {"role": "assistant", "content": "<think>\nThe image"}
    image_part, text_part = body["messages"][0]["content"]
    assert text_part == {"type": "text", "text": "What colour?"}
    url = image_part["image_url"]["url"]
    assert image_part["type"] == "image_url" and url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.size == (100, 50)  # capped to max_pixels, aspect ratio kept
    assert sent.getpixel((10, 10)) == (200, 10, 10)


def test_defaults_send_no_vllm_fields(fake):
    server = fake()
    OpenAIEngine("m", base_url=server.base_url).generate([ask("hi", max_new_tokens=2)])
    (body,) = server.bodies
    assert not {"top_k", "repetition_penalty", "bad_words", "continue_final_message", "n", "seed"} & set(body)
    hosted = OpenAIEngine("m", base_url=server.base_url, server_kind="openai")
    with pytest.raises(ValueError, match="top_k"):
        hosted.generate([ask("hi", top_k=5)])


def test_cache_answers_when_the_server_is_gone_and_images_key_by_bytes(fake, tmp_path):
    server = fake()
    cache = tmp_path / "c.sqlite"

    def req(colour):
        img = Image.new("RGB", (8, 8), colour)
        return Request([{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "?"}]}])

    engine = OpenAIEngine("m", base_url=server.base_url, cache=cache)
    out = engine.generate([req("red"), req("blue")])
    assert len(server.bodies) == 2
    server.stop()
    again = OpenAIEngine("m", base_url=server.base_url, cache=cache, max_retries=0)
    assert again.generate([req("red"), req("blue")]) == out
    assert again.stats == {"calls": 0, "cache_hits": 2}
    with pytest.raises(OpenAIEngineError, match="could not reach"):
        again.generate([req("green")])  # new image bytes: a miss, and the server is down


def test_results_keep_request_order_when_answers_arrive_out_of_order(fake):
    server = fake()
    prompts = [f"sleep:{0.03 * (8 - i):.2f} q{i}" for i in range(8)]  # the first request is answered last
    engine = OpenAIEngine("m", base_url=server.base_url, concurrency=8)
    out = engine.generate([ask(p) for p in prompts])
    assert [s[0].text for s in out] == [f"{p} -> canned 0 STOP tail" for p in prompts]
    arrived = [b["messages"][0]["content"] for b in server.bodies]
    assert sorted(arrived) == sorted(prompts)


def test_concurrency_is_bounded(fake):
    server = fake()
    engine = OpenAIEngine("m", base_url=server.base_url, concurrency=3)
    out = engine.generate([ask(f"sleep:0.02 q{i}") for i in range(12)])
    assert len(out) == 12 and len(server.bodies) == 12
    assert 1 <= server.max_in_flight <= 3


def test_generate_works_inside_a_running_event_loop(fake):
    import asyncio

    server = fake()
    engine = OpenAIEngine("m", base_url=server.base_url)

    async def inside():
        return engine.generate([ask("from a loop")])

    assert asyncio.run(inside())[0][0].text == "from a loop -> canned 0 STOP tail"


# ----- the cache backends -----


def test_jsonl_cache_last_write_wins_and_survives_a_torn_line(tmp_path):
    path = tmp_path / "c.jsonl"
    c = open_cache(path)
    assert isinstance(c, JSONLinesCache)
    c.put("k", [{"text": "a", "finish_reason": "stop", "num_tokens": 1}])
    c.put("k", [{"text": "b", "finish_reason": "stop", "num_tokens": 1}])
    c.close()
    with open(path, "a") as f:
        f.write('{"key": "torn", "samp')  # a crash in the middle of a write
    with pytest.warns(UserWarning, match="truncated last cache line"):
        c = JSONLinesCache(path)
    assert c.get("k")[0]["text"] == "b" and c.get("torn") is None
    c.put("z", [])
    c.close()
    assert JSONLinesCache(path).get("z") == []
    path.write_text('{"key": "k", "samples": []}\n{"key": "j"}\n{"key": "x", "samples": []}\n')
    with pytest.raises(ValueError, match=r"c\.jsonl:2: bad cache line \(missing field 'samples'\)"):
        JSONLinesCache(path)


def test_sqlite_cache_is_shared_across_processes(tmp_path):
    path = tmp_path / "c.sqlite"
    c = open_cache(path)
    assert isinstance(c, SQLiteCache)
    c.put("mine", [{"text": "x", "finish_reason": None, "num_tokens": None}])
    code = (
        "from builder.engines.cache import SQLiteCache; import sys; c = SQLiteCache(sys.argv[1]); "
        "assert c.get('mine')[0]['text'] == 'x'; c.put('theirs', [{'text': 'y'}]); c.close()"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    assert c.get("theirs") == [{"text": "y"}] and len(c) == 2
    c.close()
    with pytest.raises(ValueError, match="unknown suffix"):
        open_cache(tmp_path / "c.pkl")
