"""Hostile round, limits: a prompt template cannot build text without bound, nor run without end; the error names
the template, and the CLI says it in one line."""

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
