"""The two evaluation protocols (eval_tasks.protocols) and the authors' scoring rule (builder.answers.authors_hit).

The ``authors`` prompt is checked against what the authors' own evaluation code builds: their
``_generate_jsonl_file`` (benchmark_data/data_gen/prepare.py at the pinned commit, kept unmodified under
tests/data/authors_ab1a9a0 with its MIT licence) is imported and run here on the same item, and its system and
user turns must equal ours byte for byte. Their code runs only in this test; the project reads their texts.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("lighteval")

from builder.answers import authors_answer, authors_hit, grade  # noqa: E402
from builder.upstream import EXAMPLE_DIR  # noqa: E402
from builder.prompts import Prompts  # noqa: E402
from eval_tasks import common, protocols, tasks  # noqa: E402

AUTHORS_DIR = Path(__file__).resolve().parent / "data" / "authors_ab1a9a0"


@pytest.fixture(autouse=True)
def authors_files(monkeypatch):
    monkeypatch.setenv("LPT_AUTHORS_DIR", str(AUTHORS_DIR))
    protocols._authors_eval_strings.cache_clear()
    yield
    protocols._authors_eval_strings.cache_clear()


def _their_prepare():
    """The authors' prepare.py as a module (it imports datasets, pandas, PIL and jinja2 at the top)."""
    spec = importlib.util.spec_from_file_location("authors_prepare", AUTHORS_DIR / "benchmark_data" / "data_gen" /
                                                  "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _their_messages(question, options, gold, template_name, image=True, subject=None):
    """What the authors' _generate_jsonl_file writes for one item (their ``(A) text`` choice lines)."""
    import pandas as pd
    from jinja2.sandbox import SandboxedEnvironment

    template = SandboxedEnvironment().from_string((AUTHORS_DIR / "data_gen" / "templates" / template_name).read_text())
    if subject is not None:  # their MMLU-Pro templates also name the subject
        bound = template

        class _Bound:
            def render(self, **kw):
                return bound.render(domain=subject, **kw)

        template = _Bound()
    row = {"question": question, "choices": [f"({chr(65 + i)}) {o}" for i, o in enumerate(options)],
           "answer": f"({chr(65 + gold)})", "index": 0}
    if image:
        row["image_path"] = "x.jpg"
    (entry,) = _their_prepare()._generate_jsonl_file(pd.DataFrame([row]), template, "bench")
    return entry["messages"]


def _doc(bench, line, variant="think", protocol="authors"):
    info = tasks.BENCHMARKS[bench]
    setup = common.Setup(bench=bench, variant=variant, protocol=protocol, hub=(info["HF_REPO"], info["HF_REVISION"]))
    return tasks.module(bench).prompt({"__index": 0, **line}, bench, setup)


@pytest.mark.parametrize("variant,template", [("think", "think_system_prompt.jinja2"),
                                              ("direct", "direct_answer_system_prompt.jinja2")])
def test_authors_prompt_equals_what_their_evaluation_code_sends(variant, template):
    from PIL import Image

    line = {"Index": 3, "Question": "Is the door open or closed?", "Options": "(a) Open (b) Closed",
            "Correct Answer": "(b)", "image": Image.new("RGB", (8, 8))}
    doc = _doc("lpt_mmvp", line, variant)
    system, user, _ = _their_messages("Is the door open or closed?", ["Open", "Closed"], 1, template)
    assert doc.instruction == system["content"]
    assert "<image>" + doc.query == user["content"]  # their <image> marks the image, which our model puts first
    assert doc.images and doc.specific["protocol"] == "authors"


def test_authors_mmlu_pro_prompt_uses_their_template_with_the_subject():
    line = {"question": "2+2?", "options": ["3", "4", "5"], "answer": "B", "answer_index": 1, "category": "math"}
    doc = _doc("lpt_mmlu_pro", line)
    system, user, _ = _their_messages("2+2?", ["3", "4", "5"], 1, "mmlu_pro_think_system_prompt.jinja2", image=False,
                                      subject="math")
    assert doc.instruction == system["content"] and doc.query == user["content"] and doc.images is None
    assert "multiple choice question (with answers) about math" in doc.instruction


def test_authors_system_prompt_comes_from_their_templates_at_the_pinned_commit(tmp_path, monkeypatch):
    """The words are read from their templates at the pinned commit (rendered with prepare.py's
    task_specific_message), not cut out of other text; the R1-style text of the MIT example outputs the package
    ships agrees with them (two published sources), and a changed template changes the prompt."""
    import shutil

    from jinja2.sandbox import SandboxedEnvironment

    instruction = protocols.answer_format_instruction("authors")
    assert instruction == protocols._authors_eval_strings()["answer_format"] and "(X)" in instruction
    for variant, example in (("think", "sft_docci_all_extended_cots.json"),
                             ("direct", "sft_direct_answer_docci_all_mcqs.json")):
        source = (AUTHORS_DIR / protocols.SYSTEM_TEMPLATES[variant]).read_text()
        assert protocols.system_prompt("authors", variant) == SandboxedEnvironment().from_string(source).render(
            task_specific_message=instruction)
        rows = json.loads((Path(EXAMPLE_DIR) / example).read_text())
        turns = {m["content"] for r in rows for m in r["messages"] if m["role"] == "system"}
        assert all(t.startswith(source.split("{{")[0]) for t in turns)
    assert protocols.system_prompt("project") == Prompts().benchmark_system("think")
    assert protocols.answer_format_instruction("project") in Prompts().benchmark_system("think")
    edited = tmp_path / "authors"
    shutil.copytree(AUTHORS_DIR, edited)
    (edited / protocols.SYSTEM_TEMPLATES["think"]).write_text("EDITED {{ task_specific_message }}")
    monkeypatch.setenv("LPT_AUTHORS_DIR", str(edited))
    assert protocols.system_prompt("authors") == "EDITED " + instruction
    (edited / protocols.SYSTEM_TEMPLATES["think"]).unlink()
    with pytest.raises(protocols.AuthorsFilesUnavailable, match="think_system_prompt.jinja2"):
        protocols.system_prompt("authors")


def test_project_prompt_is_ours():
    from PIL import Image

    line = {"Index": 1, "Question": "Is it red?", "Options": "(a) Yes (b) No", "Correct Answer": "(a)",
            "image": Image.new("RGB", (8, 8))}
    doc = _doc("lpt_mmvp", line, protocol="project")
    assert doc.instruction == Prompts().benchmark_system("think")
    assert doc.query == Prompts().benchmark_user_text("Is it red?", ["Yes", "No"])


def test_authors_files_missing_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("LPT_AUTHORS_DIR", str(tmp_path))
    with pytest.raises(protocols.AuthorsFilesUnavailable) as e:
        protocols.check_authors_files()
    assert "LPT_AUTHORS_DIR" in str(e.value) and "\n" not in str(e.value)


def test_authors_files_come_from_the_cache_else_a_download(tmp_path, monkeypatch):
    """Without LPT_AUTHORS_DIR: the cache at the pinned commit, else GitHub. The download is a stand-in
    (urlopen replaced, named so): no network here."""
    import io
    import urllib.request

    monkeypatch.delenv("LPT_AUTHORS_DIR")
    monkeypatch.setenv("LPT_AUTHORS_CACHE", str(tmp_path / "cache"))
    asked = []

    def fake_urlopen(url, timeout):
        asked.append(url)
        relative = url.split(protocols.AUTHORS_COMMIT + "/", 1)[1]
        return io.BytesIO((AUTHORS_DIR / relative).read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    protocols.check_authors_files()
    assert len(asked) == len(protocols.AUTHORS_FILES) and all(protocols.AUTHORS_COMMIT in u for u in asked)
    assert (tmp_path / "cache" / protocols.AUTHORS_COMMIT / protocols.PREPARE_PY).is_file()
    protocols.check_authors_files()
    assert len(asked) == len(protocols.AUTHORS_FILES)  # cached: asked once

    def offline(url, timeout):
        raise OSError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("LPT_AUTHORS_CACHE", str(tmp_path / "empty"))
    with pytest.raises(protocols.AuthorsFilesUnavailable, match="LPT_AUTHORS_DIR=DIR .* --protocol project"):
        protocols.check_authors_files()


# ------------------------------------------------------------------------------ the authors' scoring rule

OPTIONS = ["red", "Blue", "green"]  # gold: (B) Blue


@pytest.mark.parametrize("reply,authors,ours", [
    ("<think>look</think> <answer>(B)</answer>", True, True),
    ("<answer> B </answer>", True, True),
    ("<answer>B. Blue</answer>", True, True),
    ("<answer>blue</answer>", True, True),
    ("<answer>red</answer>", True, False),  # any option's text counts for the authors' rule
    ("<answer>(A) Blue</answer>", False, False),
    ("<answer>(B) or (C)</answer>", True, False),  # first word "(B)"
    ("<answer>b</answer>", False, True),
    ("<think>maybe <answer>(B)</answer></think> <answer>(C)</answer>", True, False),  # first tag, even in the thought
    ("Answer: (B) because it is", True, False),  # ours: an explanation after the letter names no option
    ("I cannot tell.", False, False),
])
def test_authors_rule_next_to_ours(reply, authors, ours):
    assert authors_hit(reply, OPTIONS, 1) is authors
    assert grade(reply, OPTIONS, 1).correct is ours


def test_authors_answer_extraction():
    assert authors_answer("x <answer>  (C) </answer> y <answer>(A)</answer>") == "(C)"
    assert authors_answer("Answer: A Answer: B") == "A"
    assert authors_answer(None) == ""


def test_authors_eval_prompt_has_the_token_layout_of_their_decoded_prompts():
    """Their stage-2 outputs (shipped, MIT) hold the prompts their pipeline decoded through LLaMA-Factory's
    qwen2_vl template: system turn, then a user turn opening with the image tokens. Our model's messages for an
    ``authors`` Doc (image first), rendered through a ChatML template (the tiny test VLM's, written like Qwen's),
    give that layout with the evaluation texts in place."""
    import re

    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from PIL import Image

    from builder.tiny_models import CHAT_TEMPLATE
    from eval_tasks.model import doc_messages

    first = (Path(EXAMPLE_DIR) / "stage2_qwen2.5-vl-7b_simple_cots.jsonl").read_text().splitlines()[0]
    decoded = json.loads(first)["prompt"]
    parts = re.fullmatch(r"(<\|im_start\|>system\n)(.*)(<\|im_end\|>\n<\|im_start\|>user\n"
                         r"<\|vision_start\|><\|image_pad\|><\|vision_end\|>)(.*)(<\|im_end\|>\n<\|im_start\|>assistant\n)",
                         decoded, re.S)
    assert parts, decoded[:300]
    line = {"Index": 1, "Question": "Is it red?", "Options": "(a) Yes (b) No", "Correct Answer": "(a)",
            "image": Image.new("RGB", (8, 8))}
    doc = _doc("lpt_mmvp", line)
    template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(CHAT_TEMPLATE)
    rendered = template.render(messages=doc_messages(doc), add_generation_prompt=True)
    assert rendered == parts.group(1) + doc.instruction + parts.group(3) + doc.query + parts.group(5)
