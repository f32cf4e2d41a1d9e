"""Property-based tests of the answer matcher (builder.answers): the rule holds for generated options and replies.

* an answer that names two different options (letters or texts, joined any way) is never correct;
* a correct answer stays correct in every accepted dressing and container;
* the matcher is total (never raises on any str) and returns on 100 KB replies.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.answers import LETTERS, extract_answer, grade, match_option, parse_thought

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# option texts: one or two lower-case words of 3-8 letters (never a bare letter, never one of the joiners)
_word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=3, max_size=8).filter(
    lambda w: w not in {"and", "not", "the", "nor", "answer", "option", "choice"})
_option = st.builds(lambda ws: " ".join(ws), st.lists(_word, min_size=1, max_size=2))
options_st = st.lists(_option, min_size=2, max_size=10, unique_by=lambda o: o.casefold())


def _forms(options: list[str], i: int) -> list[str]:
    """Ways of naming option i on its own."""
    L, text = LETTERS[i], options[i]
    return [L, f"({L})", f"{L}.", f"{L})", f"({L.lower()})", f"({L}) {text}", f"{L}. {text}", text, text.upper()]


DRESSINGS = [
    "{}", "**{}**", "`{}`", "Answer: {}", "**Answer: {}**", "The correct option is {}.", "The answer is {}",
    "Option {}", "  {}  ", "{}.", "\u201c{}\u201d",
]
LETTER_DRESSINGS = ["\\boxed{{{}}}", "$\\boxed{{{}}}$", "\\boxed{{\\text{{{}}}}}", "\uff08{}\uff09"]
CONTAINERS = [
    "<think>I look at it.</think> <answer>{}</answer>",
    "<think>I look at it.</think>\n<answer>\n{}\n</answer>",
    "<think>I look at it.</think>\nAnswer: {}",
    "<think>I look at it.</think>\nSo the answer is {}",
    "<think>I look at it.</think> <answer>{}</ans",
    "I look at it, the answer is (A).</think> <answer>{}</answer>",
    "<answer>{}</answer>",
]
JOINERS = [" or ", ", ", " and ", " / ", ". ", " ", "\n", " and not ", "; it is ", ", or ", " is incorrect, "]


@SETTINGS
@given(options=options_st, data=st.data())
def test_naming_two_options_is_never_correct(options, data):
    i, j = data.draw(st.lists(st.integers(0, len(options) - 1), min_size=2, max_size=2, unique=True))
    first = data.draw(st.sampled_from(_forms(options, i)))
    second = data.draw(st.sampled_from(_forms(options, j)))
    answer = first + data.draw(st.sampled_from(JOINERS)) + second
    answer = data.draw(st.sampled_from(DRESSINGS)).format(answer)
    reply = data.draw(st.sampled_from(CONTAINERS)).format(answer)
    for gold in (i, j):
        g = grade(reply, options, gold)
        assert not g.correct, (reply, options, gold, g)


@SETTINGS
@given(options=options_st, data=st.data())
def test_any_accepted_dressing_of_the_right_answer_is_correct(options, data):
    gold = data.draw(st.integers(0, len(options) - 1))
    letter_only = data.draw(st.booleans())
    if letter_only:
        core = data.draw(st.sampled_from(LETTER_DRESSINGS)).format(LETTERS[gold])
    else:
        core = data.draw(st.sampled_from(_forms(options, gold)))
    answer = data.draw(st.sampled_from(DRESSINGS)).format(core)
    reply = data.draw(st.sampled_from(CONTAINERS)).format(answer)
    g = grade(reply, options, gold)
    assert g.correct and g.pred_index == gold, (reply, options, g)
    for other in range(len(options)):
        if other != gold:
            assert not grade(reply, options, other).correct


_any_options = st.lists(st.text(max_size=20), max_size=6)


@SETTINGS
@given(reply=st.text(max_size=300), options=_any_options, gold=st.integers(-2, 12))
def test_total_on_any_text(reply, options, gold):
    g = grade(reply, options, gold)
    assert isinstance(g.correct, bool) and -1 <= g.pred_index < max(len(options), 1)
    assert g.correct == (g.pred_index >= 0 and g.pred_index == gold)
    parse_thought(reply)
    match_option(reply, options)
    extract_answer(reply)


_PIECES = ["\n", " ", "\t", "<answer>", "</answer", "<think>", "</think>", "answer is ", "Answer:", "(A", "(B)",
           "**", "\\boxed{", "\\text{", "{", "}", "<", "<|", "|>", "a", "A. ", "$", "The correct option is ",
           "\uff08", "e\u0301", "\u200b"]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=st.lists(st.sampled_from(_PIECES), min_size=1, max_size=4), prefix=st.sampled_from(
    ["", "<think>x</think>", "<answer>", "Answer: ", "<think>x</think> The answer is "]))
def test_returns_on_100kb_replies(pieces, prefix):
    chunk = "".join(pieces)
    reply = prefix + chunk * (100_000 // len(chunk))
    g = grade(reply, ["Green", "Blue", "Orange", "Red"], 1)
    assert isinstance(g.correct, bool)
    parse_thought(reply)
