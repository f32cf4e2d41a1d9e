"""Prompt templates: every prompt renders what docs/method.md describes, user overrides, sandbox and strictness."""

from __future__ import annotations

import pytest

from builder.answers import format_options, match_option
from builder.prompts import BUILTIN_DIR, PromptError, Prompts, join_cue, options_inline
from builder.stages.mcq import parse_mcq_response

P = Prompts()
OPTS = ["Green", "Blue", "Orange", "Red"]


def test_every_builtin_template_is_used_and_packaged():
    names = {p.stem for p in BUILTIN_DIR.glob("*.j2")}
    assert names == {"mcq_generation_system", "mcq_generation", "mcq_reformat", "system", "task", "answer_format",
                     "vlm_user", "reasoning_user", "reasoning_prefill", "benchmark_system", "benchmark_user"}


def test_mcq_generation_asks_for_the_tagged_layout_our_parser_reads():
    system, user = P.mcq_generation("A purple sculpture with four arms.")
    assert system["role"] == "system" and user["role"] == "user"
    u = user["content"]
    assert u.endswith("Image description:\nA purple sculpture with four arms.")
    assert "6 to 10" in u and "(A), (B), (C) and (D)" in u
    for t in ("Recognition", "Spatial and Relational Reasoning", "Counting and Quantification",
              "Causal and Commonsense Reasoning", "Analogical and Goal-Oriented Reasoning"):
        assert t in u
    # the example line in the prompt is itself parseable by the stage-1 parser
    example = next(line for line in u.splitlines() if line.startswith("1. <question>"))
    (item,) = parse_mcq_response(example)
    assert item.choices and item.answer_text and item.question_type
    assert "8 to 9" in P.mcq_generation("x", min_questions=8, max_questions=9)[1]["content"]
    (turn,) = P.mcq_reformat("1. something")
    assert turn["content"].endswith("Text:\n1. something") and "<type>" in turn["content"]


@pytest.mark.parametrize("fmt,phrase", [("paren", "as (X), where X is the letter"), ("dot", "as X., where X"),
                                        ("text", "full text of the correct option")])
def test_system_prompt_variants_name_type_and_format(fmt, phrase):
    think = P.system("think", "Counting and Quantification", fmt)
    direct = P.system("direct", "Counting and Quantification", fmt)
    assert "<think> </think>" in think and "<answer> </answer>" in think
    assert "<think>" not in direct and "<answer> </answer>" in direct
    for s in (think, direct):
        assert '"Counting and Quantification"' in s and phrase in s
    assert "skill" not in P.system("think", "", fmt)  # no type: no type sentence
    assert "Give your answer" not in P.system("think", task=False)


def test_vlm_turns():
    text = P.vlm_user_text("What colour is the iris?", OPTS, "dot")
    assert text == "What colour is the iris?\nSelect from the following choices.\nA. Green\nB. Blue\nC. Orange\nD. Red"
    msgs = P.vlm_messages("Q?", OPTS, image="IMG", question_type="Recognition", option_style="paren",
                          answer_format="text")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert msgs[1]["content"][0] == {"type": "image", "image": "IMG"}
    assert msgs[1]["content"][1]["text"].endswith(format_options(OPTS, "paren"))
    assert msgs[2]["content"] == "<think>"
    assert len(P.vlm_messages("Q?", OPTS, image="IMG", prefill=None)) == 2


def test_reasoning_turns_keep_case_and_join_the_cue():
    thought = "the iris looks Greenish, so (A) Green fits"
    user, assistant = P.reasoning_messages("Big eyes with a blue iris.", "What colour is the iris?", OPTS, thought,
                                           cue="Wait,", separator="\n", question_type="Recognition",
                                           answer_format="dot", option_style="paren")
    assert user["role"] == "user" and assistant["role"] == "assistant"
    u = user["content"]
    assert "Image description: Big eyes with a blue iris.\nQuestion: What colour is the iris?\n" in u
    assert u.endswith("Select from the following choices.\n" + format_options(OPTS, "paren"))
    assert "<answer> </answer>" in u and '"Recognition"' in u and "as X., where X" in u
    a = assistant["content"]
    assert a.startswith("<think>\n") and "What colour is the iris?" in a and options_inline(OPTS) in a
    assert a.endswith("\n\n" + thought + ".\nWait,")  # thought as written (defect 3), full stop added
    assert P.reasoning_prefill("Q?", OPTS, "Done.", cue="Hmm,", separator=" ").endswith("Done. Hmm,")
    assert join_cue("x.  ", "Wait,", " ") == "x. Wait,"
    with pytest.raises(ValueError, match="separator"):
        join_cue("x", "Wait,", "\t")


def test_benchmark_prompt_of_the_paper():
    msgs = P.benchmark_messages("How many cars?", ["1", "2", "3"], image="IMG", variant="think")
    system, user = msgs
    assert system["content"].endswith("Format the answer with the letter of the correct option in parentheses.")
    assert "<think> </think>" in system["content"] and "skill" not in system["content"]
    assert user["content"][0] == {"type": "image", "image": "IMG"}
    assert user["content"][1]["text"] == "How many cars?\nSelect from the following choices.\n(A) 1\n(B) 2\n(C) 3"
    direct = P.benchmark_messages("Q?", ["x", "y"], variant="direct")
    assert "<think>" not in direct[0]["content"] and direct[1]["content"] == "Q?\nSelect from the following " \
        "choices.\n(A) x\n(B) y"  # text-only: plain string content
    assert match_option("(B)", ["x", "y"]) == 1  # the requested format is what the matcher reads


def test_bad_arguments_are_errors():
    for call in (lambda: P.system("chatty"), lambda: P.system(answer_format="letter"),
                 lambda: P.vlm_user_text("Q", OPTS, "bullet"), lambda: P.vlm_user_text("Q", ["only one"]),
                 lambda: P.benchmark_system("cot")):
        with pytest.raises(PromptError):
            call()


def test_user_template_dir_overrides_by_name(tmp_path):
    (tmp_path / "vlm_user.j2").write_text("Q: {{ question }}\n{{ options_text }}\nAnswer now.")
    (tmp_path / "answer_format.j2").write_text("Reply with the letter only.")
    p = Prompts(tmp_path)
    assert p.vlm_user_text("Why?", ["a", "b"]) == "Q: Why?\n(A) a\n(B) b\nAnswer now."
    # an included template is overridden too, everywhere it is used
    assert p.system("think", "Recognition", "paren").endswith('"Recognition". Reply with the letter only.')
    assert p.benchmark_user_text("Why?", ["a", "b"]) == P.benchmark_user_text("Why?", ["a", "b"])  # not overridden
    with pytest.raises(FileNotFoundError):
        Prompts(tmp_path / "missing")


def test_strict_undefined_and_sandbox(tmp_path):
    (tmp_path / "vlm_user.j2").write_text("{{ question }} {{ not_given }}")
    with pytest.raises(PromptError, match="vlm_user.j2: UndefinedError"):
        Prompts(tmp_path).vlm_user_text("Q", OPTS)
    (tmp_path / "vlm_user.j2").write_text("{{ question.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(PromptError, match="SecurityError|UndefinedError"):
        Prompts(tmp_path).vlm_user_text("Q", OPTS)


def test_rendering_is_byte_stable():
    a = Prompts().reasoning_messages("d", "q?", OPTS, "t", cue="Wait,", separator=" ")
    b = Prompts().reasoning_messages("d", "q?", OPTS, "t", cue="Wait,", separator=" ")
    assert a == b
