"""The answer matcher: the one rule for labelling data and scoring benchmarks."""


import pytest

from builder.answers import (
    MATCHER_VERSION,
    answer_region,
    extract_answer,
    format_answer,
    format_options,
    grade,
    match_option,
    parse_options,
    parse_thought,
    shuffle_options,
)
from builder.records import content_id, rng_for, shard_of

OPTS = ["Green", "Blue", "Orange", "Red"]


ACCEPTED = [
    "B", "(B)", "B.", "B)", "(b)", "**(B)**", "**B**", "Option B", "option (B)", "(B) Blue", "B. Blue", "Blue",
    "blue.", "  (B)  ", "The answer is (B)",
    # were marked wrong before MATCHER_VERSION 2
    "\\boxed{B}", "$\\boxed{B}$", "\\boxed{\\text{(B)}}", "b", "**Answer: (B)**", "The correct option is (B).",
    "Final answer: B", "B: Blue", "(B) - Blue", "`B`", "\u201cBlue\u201d", "\uff08B\uff09", "(\uff22)",
]
# each names two options, or negates, hedges or qualifies its letter: it names none (-1), which is wrong
REJECTED = [
    "(A) or (B)", "(B) or (C)", "A, B, or C", "B, C, or D", "(A) and (C)", "(B) and (C)", "A. B.", "B. C.",
    "(A) is incorrect", "(B) is incorrect", "(A) is not the answer; it is (C)", "(C) is not the answer; it is (B)",
    "A. None of these", "B. None of these", "(A) Green (B) Blue (C) Orange (D) Red",
    "(A) Green\n(B) Blue\n(C) Orange\n(D) Red", "(B) Green", "Blue or Green", "Either B or C", "B/C", "(B)(C)",
    "not B", "B is wrong", "(B) Blue, not (A) Green",
]
CONTAINERS = [
    "<think>looking</think> <answer> {} </answer>",
    "<think>looking</think>\nAnswer: {}",
    "<think>looking</think>\nThe answer is {}.",
    "<think>looking</think> <answer>{}",  # cut off before </answer>
    "looking</think> <answer>{}</answer>",  # R1-style: the thought was opened in the prompt
]


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("answer", ACCEPTED)
def test_accepted_spellings_of_the_right_answer(answer, container):
    g = grade(container.format(answer), OPTS, 1)
    assert g.correct and g.pred_index == 1, g


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("answer", REJECTED)
def test_two_options_negations_and_hedges_name_none(answer, container):
    for gold in range(len(OPTS)):  # never right, whichever option is gold
        g = grade(container.format(answer), OPTS, gold)
        assert not g.correct and g.pred_index == -1, (gold, g)


def test_unicode_is_normalised_before_matching():
    assert match_option("Caf\u00e9", ["Cafe\u0301", "Bar"]) == 0  # composed vs decomposed accent
    assert match_option("\u2018Blue\u2019", ["Green", "'Blue'"]) == 1  # curly vs straight quotes
    assert extract_answer("<think>t</think>\uff1canswer\uff1e(B)\uff1c/answer\uff1e") == "(B)"  # full-width tags


def test_only_the_text_after_the_thought_counts():
    # R1-style: "answer is (D)" inside the thought; the final answer was cut off
    assert grade("so the answer is (D)</think>\n<ans", OPTS, 3).correct is False
    assert grade("so the answer is (D)</think>\n<answer>", OPTS, 3).correct is False
    assert grade("<think><answer>(D)</answer></think> <answer>(B)</answer>", OPTS, 1).correct
    assert answer_region("<think>unfinished") is None and answer_region("(B)") == "(B)"
    assert answer_region("a</think>b</think>c") == "b</think>c"  # the first </think> ends the thought
    assert extract_answer("<think>t</think> so the answer is $\\boxed{C}$") == "$\\boxed{C}$"
    assert extract_answer("<think>t</think> hence \\boxed{C}.") == "\\boxed{C}"


def test_matcher_version_is_recorded():
    assert MATCHER_VERSION == 2


@pytest.mark.parametrize("answer", ["Green", "(A)", "A", "(A) Green", "orange"])
def test_a_wrong_option_is_wrong_including_its_text(answer):
    # upstream defect 1: any option's text counted as correct. Here the text of a wrong option is wrong.
    g = grade(f"<answer>{answer}</answer>", OPTS, 1)
    assert g.parsed and not g.correct


@pytest.mark.parametrize("answer", ["", "E", "(E)", "Purple", "(A) Blue", "I am not sure", "Blue or Green"])
def test_anything_else_is_wrong_never_right(answer):
    # "(A) Blue" contradicts itself (letter A, text of option B): never right.
    g = grade(f"<answer>{answer}</answer>", OPTS, 1)
    assert not g.correct and g.pred_index == -1


def test_first_answer_tag_wins():
    assert extract_answer("<answer>(C)</answer> then <answer>(B)</answer>") == "(C)"
    assert grade("<answer>(C)</answer> <answer>(B)</answer>", OPTS, 1).correct is False


def test_fallbacks_after_the_thought_only():
    assert extract_answer("<think>the answer is (A)</think>\nThe answer is (C).") == "(C)"
    assert extract_answer("reasoning...\nAnswer: B") == "B"
    assert extract_answer("<think>answer is (A) but I keep thinking") is None  # unclosed thought: no answer
    assert extract_answer("no answer at all") is None


def test_an_option_that_starts_like_a_letter():
    opts = ["A red car", "A blue car"]
    assert match_option("A blue car", opts) == 1
    assert match_option("A", opts) == 0
    assert match_option("a blue car", ["red car", "blue car"]) == -1  # "a" is an article here, not the letter
    assert match_option("b", ["b", "a"]) == -1  # the text says A, the letter says B: names none
    assert match_option("B", ["A", "B"]) == 1  # both readings agree
    assert match_option("Blue", ["Blue", "blue"]) == -1  # the text of two options


def test_letters_beyond_the_options_are_wrong():
    assert match_option("(E)", OPTS) == -1
    assert match_option("J", [str(i) for i in range(10)]) == 9


def test_parse_thought():
    thought, answer = parse_thought("<think> I see a blue iris. </think>\n<answer>(B)</answer><|im_end|>")
    assert thought == "I see a blue iris." and answer == "(B)"
    assert parse_thought("<think> unfinished") == (None, None)
    assert parse_thought("opened by the template </think> <answer>(B)<|im_end|>") == ("opened by the template", "(B)")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("(A) Red (B) Blue (C) Green (D) Orange", ["Red", "Blue", "Green", "Orange"]),
        ("(A) Red\n(B) Blue", ["Red", "Blue"]),
        ("A. x y\nB. z\nC. w", ["x y", "z", "w"]),
        ("A) one\nB) two", ["one", "two"]),
        ("Options: A: cat, B: dog, C: bird, D: fish", ["cat", "dog", "bird", "fish"]),
        ("(a) Open (b) Closed", ["Open", "Closed"]),
        (" ".join(f"({c}) o{c}" for c in "ABCDEFGHIJ"), [f"o{c}" for c in "ABCDEFGHIJ"]),
    ],
)
def test_parse_options(text, expected):
    assert parse_options(text) == expected


def test_parse_options_rejects_text_without_options():
    with pytest.raises(ValueError, match="no lettered options"):
        parse_options("What colour is the bus?")


def test_format_round_trip():
    assert format_options(OPTS, "paren").splitlines()[1] == "(B) Blue"
    assert format_options(OPTS, "dot").splitlines()[3] == "D. Red"
    assert parse_options(format_options(OPTS, "dot")) == OPTS
    assert [format_answer(OPTS, 2, f) for f in ("paren", "dot", "text")] == ["(C)", "C.", "Orange"]
    for fmt in ("paren", "dot", "text"):
        assert grade(f"<answer>{format_answer(OPTS, 2, fmt)}</answer>", OPTS, 2).correct


def test_seeded_shuffle_is_per_item_and_reproducible():
    a = shuffle_options(OPTS, 1, rng_for(42, "mcq-1"))
    assert a == shuffle_options(OPTS, 1, rng_for(42, "mcq-1"))
    options, gold = a
    assert sorted(options) == sorted(OPTS) and options[gold] == "Blue"
    shuffles = {tuple(shuffle_options(OPTS, 1, rng_for(42, f"mcq-{i}"))[0]) for i in range(30)}
    assert len(shuffles) > 5  # different items get different orders
    assert rng_for(1, "x").random() != rng_for(2, "x").random()


def test_ids_and_shards_are_stable():
    assert content_id("a", ["b", 1]) == content_id("a", ["b", 1]) != content_id("a", ["b", 2])
    assert len(content_id("x")) == 64
    counts = [0, 0, 0, 0]
    for i in range(400):
        counts[shard_of(content_id(i), 4)] += 1
    assert min(counts) > 60 and shard_of("abc", 4) == shard_of("abc", 4)


def test_unclosed_answer_tag_runs_to_the_end_less_a_cut_off_closing_tag():
    """A prediction cut off by the token limit is still graded on what it names (SPEC: anything else is wrong)."""
    assert extract_answer("<think>t</think> <answer>A</answer") == "A"
    assert extract_answer("<think>t</think> <answer> (B) </ans") == "(B)"
    assert extract_answer("<answer>(C)") == "(C)" and extract_answer("<answer> A <") == "A"
    assert extract_answer("<answer>x < y</answer>") == "x < y"  # a closed tag is taken as written
    assert grade("<think>t</think> <answer>Blue</answ", OPTS, 1).correct
    assert not grade("<think>t</think> <answer>Blue, no wait", OPTS, 1).parsed  # names no option: wrong
    assert parse_thought("<think> t </think> <answer> (B)")[1] == "(B)"
