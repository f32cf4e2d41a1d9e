"""Hostile round, limits: a prompt template cannot build text without bound, nor run without end; the error names
the template, and the CLI says it in one line. A prompt past the model's context is measured before it is sent:
under --skip-bad a counted skip that a resume does not retry, else one line naming the stage, model and request."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import builder.prompts as prompts
from builder.cli import main
from builder.prompts import Prompts, RenderLimit
from builder.store import RunDir
from helpers import make_source

GROWING = {
    "a string doubled in a loop":
        '{% set ns = namespace(s="ab") %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}',
    "a string repeated": '{{ "a" * 10000000000 }}',
    "a repeat the other way round": '{{ 10000000000 * "a" }}',
    "loops within loops": '{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}',
    "a template that includes itself": '{% include "mcq_generation.j2" %}',
}


@pytest.mark.parametrize("source", GROWING.values(), ids=GROWING.keys())
def test_a_template_that_grows_without_bound_is_stopped_naming_it(tmp_path, source):
    (tmp_path / "mcq_generation.j2").write_text(source)
    with pytest.raises(RenderLimit, match="template mcq_generation.j2: "):
        Prompts(tmp_path).mcq_generation("a red bus")


def test_a_template_that_runs_without_end_is_stopped_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr(prompts, "MAX_RENDER_SECONDS", 0.3)
    (tmp_path / "mcq_generation.j2").write_text(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
    with pytest.raises(RenderLimit, match=r"template mcq_generation.j2: ran for over 0.3 s"):
        Prompts(tmp_path).mcq_generation("a red bus")


def test_a_template_within_the_limits_renders_as_before(tmp_path):
    (tmp_path / "mcq_generation.j2").write_text('{{ "ab" * 1000 }}{% for i in range(3) %}{{ i ~ description }}{% endfor %}')
    assert Prompts(tmp_path).mcq_generation("x")[-1]["content"] == "ab" * 1000 + "0x1x2x"


def test_the_cli_names_the_template_in_one_line(tmp_path):
    run = RunDir(tmp_path / "run")
    make_source(run, tmp_path, n=2)
    folder = tmp_path / "tpl"
    folder.mkdir()
    (folder / "mcq_generation.j2").write_text(GROWING["a string doubled in a loop"])
    res = CliRunner().invoke(main, ["stage1", str(run.path), "--set", "stage1.engine=helpers:ReplayEngine",
                                    "--set", f"template_dir={folder}"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.strip().splitlines()[-1].count("template mcq_generation.j2: builds a text of over") == 1


def test_a_prompt_past_the_models_context_is_refused_before_generating(tmp_path):
    """A description far longer than the model's 2,048 positions: one error naming the model, the lengths and the
    request, at once (it used to run for 900 s at 1.6 GB)."""
    from builder.engines import Request, SamplingParams, load_engine
    from builder.engines.transformers_engine import PromptTooLong
    from builder.tiny_models import build_tiny_lm

    engine = load_engine("transformers", str(build_tiny_lm(tmp_path / "lm")))
    long = "A red bus parks near a tall building. " * 2000
    with pytest.raises(PromptTooLong, match=r"a prompt of \d+ tokens plus 16 new tokens passes the model's context "
                                            r"of 2048 positions \(request starting 'A red bus"):
        engine.generate([Request([{"role": "user", "content": long}], SamplingParams(max_new_tokens=16))])
    fits = engine.generate([Request([{"role": "user", "content": "A red bus."}], SamplingParams(max_new_tokens=4))])
    assert len(fits[0]) == 1


# ------------------------------------------------------------------- a prompt past the context: a counted skip

LONG = "A red bus parks near a tall building. " * 2000  # far past the tiny model's 2,048 positions


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from builder.tiny_models import build_tiny_lm

    return str(build_tiny_lm(tmp_path_factory.mktemp("lm") / "lm"))


def _long_source(run: RunDir, tmp_path, long_at: int = 2) -> str:
    """A source of five images whose ``long_at``-th description is far past the model's context; its id."""
    import pyarrow as pa

    from builder.records import SOURCE

    rows = make_source(run, tmp_path, n=5)
    rows[long_at]["description"] = LONG
    run.write_table("source", pa.Table.from_pylist(rows, schema=SOURCE))
    return rows[long_at]["image_id"]


def _stage1(tiny_lm: str) -> list[str]:
    return ["--set", "stage1.engine=transformers", "--set", f"stage1.model={tiny_lm}", "--set",
            "stage1.max_new_tokens=4", "--set", "stage1.reformat=false", "--set", "chunk_size=4"]


def test_a_prompt_past_the_context_is_a_counted_skip_under_skip_bad_and_not_retried(tmp_path, tiny_lm):
    """`--skip-bad`: the too-long input makes no rows, the rest of its chunk does (the chunk is halved until the
    input is alone); the chunk covers it with its reason, so a resume does not retry it, and the summary and
    `lpt status` count it by kind. (The old code stopped the stage on it, --skip-bad or not.)"""
    from builder.runtime import skipped_inputs

    run = RunDir(tmp_path / "run")
    long_id = _long_source(run, tmp_path)
    res = CliRunner().invoke(main, ["stage1", str(run.path), "-q", "--skip-bad", *_stage1(tiny_lm)])
    assert res.exit_code == 0, res.output
    assert "items skipped" in res.output and "skipped: prompt past the model's context" in res.output
    made = set(run.read("mcq", ["image_id"]).column("image_id").to_pylist())
    assert made == {f"img_{i:03d}" for i in range(5)} - {long_id}
    assert long_id in run.done_inputs("mcq")
    reasons = skipped_inputs(run, "mcq")
    assert list(reasons) == [long_id]
    assert reasons[long_id].startswith("prompt past the model's context: stage1 (mcq): ")
    assert "plus 4 new tokens passes the model's context of 2048 positions" in reasons[long_id]
    summary = run.manifest["summaries"]["mcq/0-of-1"]
    assert summary["items_skipped"] == 1 and summary["skipped"] == {"prompt past the model's context": 1}
    status = CliRunner().invoke(main, ["status", str(run.path)])
    assert status.exit_code == 0 and "5 (1 skipped)" in status.output
    assert "mcq: 1 x prompt past the model's context" in " ".join(status.output.split())
    again = CliRunner().invoke(main, ["stage1", str(run.path), "-q", "--skip-bad", *_stage1(tiny_lm)])
    assert again.exit_code == 0, again.output
    summary = run.manifest["summaries"]["mcq/0-of-1"]
    assert summary["items_already_done"] == summary["items_in"] == 5 and summary["items_skipped"] == 1


def test_without_skip_bad_a_prompt_past_the_context_stops_the_stage_in_one_line_naming_it(tmp_path, tiny_lm):
    run = RunDir(tmp_path / "run")
    _long_source(run, tmp_path, long_at=0)
    res = CliRunner().invoke(main, ["stage1", str(run.path), "-q", *_stage1(tiny_lm)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("Error: stage1 (mcq): ") and tiny_lm in line
    assert "passes the model's context of 2048 positions (request starting " in line
    assert not run.has("mcq")


def test_vllm_measures_each_prompt_against_max_model_len_with_the_models_tokenizer(tiny_lm):
    """The vLLM engine's check (vllm itself needs a GPU: its pure parts run here on a real tokenizer): a prompt
    whose text tokens pass max_model_len is refused before it is sent; vLLM's own refusal (a prompt long through
    its images) becomes the same error."""
    from transformers import AutoTokenizer

    from builder.engines import PromptTooLong, Request
    from builder.engines.vllm_engine import _too_long, check_context, text_tokens

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    short = Request([{"role": "user", "content": [{"type": "text", "text": "A red bus."}]}])
    long = Request([{"role": "user", "content": LONG}, {"role": "assistant", "content": "<think>"}],
                   continue_final_message=True)
    n = text_tokens(tok, short)
    assert n == len(tok.apply_chat_template([{"role": "user", "content": "A red bus."}], tokenize=True,
                                            add_generation_prompt=True)["input_ids"])
    check_context("m", tok, n, [short])  # fits exactly
    with pytest.raises(PromptTooLong, match=r"m: a prompt of \d+ tokens passes the model's context of 2048 "
                                            r"positions \(request starting 'A red bus"):
        check_context("m", tok, 2048, [short, long])
    vllm_says = ValueError("The decoder prompt (length 9000) is longer than the maximum model length of 2048. Make "
                           "sure that `max_model_len` is no smaller than the number of text tokens plus multimodal "
                           "tokens.")
    err = _too_long("m", vllm_says, [long])
    assert isinstance(err, PromptTooLong) and "longer than the maximum model length" in str(err)
    assert _too_long("m", ValueError("some other problem"), [long]) is None
