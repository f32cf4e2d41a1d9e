"""The ``authors`` wording, proven on the authors' own artefacts: every prompt of their published example outputs
is rendered again, byte for byte, from its MCQ (their option order, answer format and reasoning type) with the
words :mod:`builder.prompts.authors` reads from those files, and the stage-2 prompts through the Qwen2.5-VL chat
template. Our own wording (``project``) is untouched by it."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from PIL import Image

from builder.upstream import EXAMPLE_DIR, parse_qwen_prompt
from builder.prompts import AuthorsWordsError, PromptError, Prompts, authors_templates


@pytest.fixture(scope="module")
def mcqs() -> dict[str, dict]:
    with open(EXAMPLE_DIR / "docci_mcq.csv", newline="", encoding="utf-8") as f:
        return {r["mcq_unique_id"]: r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def stage2() -> list[dict]:
    path = next(EXAMPLE_DIR.glob("stage2_*_simple_cots.jsonl"))
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def shown(stage2) -> dict[str, dict]:
    """What each MCQ was shown in stage 2 (their option order, option style and answer format)."""
    return {r["metadata"]["metadata"]["mcq_unique_id"]: parse_qwen_prompt(r["prompt"]) for r in stage2}


@pytest.fixture(scope="module")
def authors() -> Prompts:
    return Prompts(wording="authors")


def _their_order(mcq: dict, seen: dict) -> list[str]:
    """The MCQ's own options, in the order the authors showed them (checked to be the same options)."""
    from builder.answers import parse_options

    own = parse_options(mcq["mcq_choices"])
    assert sorted(own) == sorted(seen["options"])
    return sorted(own, key=seen["options"].index)


def test_every_stage2_prompt_is_rendered_again_byte_for_byte_through_the_qwen_chat_template(
        tmp_path, stage2, mcqs, shown, authors):
    from builder.engines.hf_processors import load_processor
    from builder.tiny_models import build_tiny_vlm

    processor = load_processor(str(build_tiny_vlm(tmp_path / "vlm")), "qwen2_5_vl")
    image = Image.new("RGB", (28, 28))
    same = 0
    for record in stage2:
        mcq = mcqs[record["metadata"]["metadata"]["mcq_unique_id"]]
        seen = shown[mcq["mcq_unique_id"]]
        messages = authors.vlm_messages(mcq["mcq_question"], _their_order(mcq, seen), image=image,
                                        question_type=mcq["mcq_question_type"], option_style=seen["option_style"],
                                        answer_format=seen["answer_format"], variant="think", prefill=None)
        prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert prompt == record["prompt"]
        same += len(record["predict"])  # each simple CoT was sampled from this prompt
    assert same == 400


def test_every_stage3_user_turn_and_opening_is_rendered_again(mcqs, shown, authors):
    records = json.loads((EXAMPLE_DIR / "sft_docci_thought_expansion.json").read_text(encoding="utf-8"))
    for record in records:
        mcq = mcqs[record["metadata"]["mcq_unique_id"]]
        seen = shown[mcq["mcq_unique_id"]]
        options = _their_order(mcq, seen)
        user = authors.reasoning_user_text(mcq["description"], mcq["mcq_question"], options,
                                           question_type=mcq["mcq_question_type"],
                                           answer_format=seen["answer_format"], option_style=seen["option_style"])
        assert user == record["messages"][0]["content"]
        thought = record["metadata"]["simple_cot"]
        opening = authors.reasoning_opening(mcq["mcq_question"], options, thought, option_style=seen["option_style"])
        theirs = record["messages"][1]["content"]
        head = opening[: len(opening) - len(thought.strip())]
        assert theirs.startswith(head)  # the opening to the letter; the thought they changed in case (defect 3)
        assert theirs.casefold().startswith(opening.casefold())
    assert len(records) == 400


def test_the_direct_system_prompts_and_the_stage1_prompts_are_the_authors(mcqs, shown, authors):
    direct = json.loads((EXAMPLE_DIR / "sft_direct_answer_docci_all_mcqs.json").read_text(encoding="utf-8"))
    for record in direct:
        mcq = mcqs[record["metadata"]["mcq_unique_id"]]
        fmt = shown[mcq["mcq_unique_id"]]["answer_format"]
        assert authors.system("direct", mcq["mcq_question_type"], fmt) == record["messages"][0]["content"]
    for mcq in mcqs.values():
        assert authors.mcq_generation(mcq["description"]) == [{"role": "user", "content": mcq["_mcq_gen_prompt"]}]
        assert authors.mcq_reformat(mcq["_mcq_gen_raw_response"])[0]["content"] == mcq["_parse_to_mcq_prompt"]


def test_our_wording_stays_ours_and_a_combination_the_authors_never_wrote_fails_naming_it(tmp_path, authors):
    ours = Prompts()
    assert "A conversation between User and Assistant" not in ours.system("think", "Recognition", "paren")
    assert ours.fingerprint() != authors.fingerprint()
    folder = tmp_path / "upstream"
    shutil.copytree(EXAMPLE_DIR, folder)
    path = folder / "sft_direct_answer_docci_all_mcqs.json"
    records = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps([r for r in records if "as (X)" in r["messages"][0]["content"]]), encoding="utf-8")
    fewer = Prompts(wording="authors", authors_dir=folder)
    assert fewer.system("direct", "Recognition", "paren").startswith("A conversation between User and Assistant")
    with pytest.raises(PromptError, match="the authors' published files hold no system prompt for direct/text"):
        fewer.system("direct", "Recognition", "text")


def test_a_folder_whose_words_disagree_is_refused_naming_the_file_and_line(tmp_path):
    folder = tmp_path / "upstream"
    shutil.copytree(EXAMPLE_DIR, folder)
    path = next(folder.glob("stage2_*_simple_cots.jsonl"))
    lines = path.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[6])
    record["prompt"] = record["prompt"].replace("A conversation", "A dialogue", 1)
    lines[6] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(AuthorsWordsError, match=rf"{path.name}: line 7: system: the authors' words differ"):
        authors_templates(folder)
    with pytest.raises(AuthorsWordsError, match="not the authors' published example outputs"):
        authors_templates(tmp_path)


def _generate(tmp_path, name, *flags):
    from click.testing import CliRunner

    from builder.cli import main
    from builder.store import RunDir
    from helpers import make_source

    run = RunDir(tmp_path / name)
    make_source(run, tmp_path, n=2)
    res = CliRunner().invoke(main, ["generate", str(run.path), "-q", *flags, "--set", "stage2.n=2", "--set",
                                    "stage3.n=1", *[a for k in (1, 2, 3) for a in ("--set",
                                                                                     f"stage{k}.engine=helpers:ReplayEngine")],
                                    "--set", "stage1.reformat_engine=helpers:ReplayEngine"])
    return run, res


def test_generate_speaks_the_authors_words_when_asked_and_the_authors_preset_implies_it(tmp_path):
    ours = Prompts().system("think", "Recognition", "paren")[:40]
    for name, flags, authors_words in (("asked", ["--prompts", "authors"], True), ("preset", ["--preset", "authors"], True),
                                       ("preset-ours", ["--preset", "authors", "--prompts", "project"], False),
                                       ("default", [], False)):
        run, res = _generate(tmp_path, name, *flags)
        assert res.exit_code == 0, res.output
        systems = set(run.read("simple_cot").column("system_prompt").to_pylist())
        users = set(run.read("expansion").column("user_text").to_pylist())
        assert systems and users
        theirs = all(s.startswith("A conversation between User and Assistant") for s in systems)
        assert theirs == authors_words and all(s.startswith(ours) for s in systems) == (not authors_words)
        assert all(u.startswith("You are a large language model that answers visual questions") for u in users) \
            == authors_words
    run, res = _generate(tmp_path, "default", "--prompts", "authors")  # resuming with other words: refused
    assert res.exit_code == 1 and "made with other" in res.output and "templates" in res.output
