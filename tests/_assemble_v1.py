"""FROZEN ORACLE: builder/assemble.py as it was before the columnar rewrite (commit bab09fa), used only by
tests/test_assemble_equivalence.py to check that the new assembly gives byte-identical rows. Do not edit."""


from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence, TypeVar

from builder.answers import format_answer
from builder.records import content_id, rng_for

T = TypeVar("T")

TRACE_TYPES = ("O", "X", "O_O", "O_X", "X_O", "X_X")
PAIR_KINDS = ("O>X", "O>O_X", "X_O>X", "X_O>X_X", "O>O_O", "O>X_X")
"""Pair kinds, chosen ≻ rejected. The first four are correctness pairs, ``O>O_O`` the compactness pair the
paper describes (the authors' code dropped it); ``O>X_X`` is an extra kind the authors' code built (a
correct simple thought over a wrong-then-still-wrong expansion of the same MCQ), off by default."""
DEFAULT_PAIR_KINDS = PAIR_KINDS[:5]

# Scope of each kind: "mcq" pairs any two traces of one MCQ shown the same prompt; "sample" pairs a simple
# thought with its own expansions, or two expansions of the same simple thought.
_KIND_SCOPE = {"O>X": "mcq", "O>X_X": "mcq", "O>O_X": "sample", "O>O_O": "sample", "X_O>X": "sample",
               "X_O>X_X": "sample"}


@dataclass(frozen=True)
class AssembleOptions:
    """Every knob of the assembly. ``answer_format=None`` keeps the format each prompt asked for."""

    seed: int = 0
    sft_ratio: float = 0.1
    sft_balance: bool = True  # X→O subsampled to the size of the O ∪ O→O half
    simple_cot_ratio: float = 1 / 3.75
    pair_kinds: tuple[str, ...] = DEFAULT_PAIR_KINDS
    answer_format: str | None = None

    def __post_init__(self) -> None:
        unknown = set(self.pair_kinds) - set(PAIR_KINDS)
        if unknown:
            raise ValueError(f"unknown pair kinds {sorted(unknown)}; choose from {PAIR_KINDS}")
        for name in ("sft_ratio", "simple_cot_ratio"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")

    def replace(self, **changes: Any) -> "AssembleOptions":
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------------------------------- traces


@dataclass(frozen=True)
class Trace:
    """One labelled thought (a simple CoT or an expansion) with the prompt it answers."""

    cot_type: str
    trace_id: str  # sample_id for O/X, expansion_id for expansions
    image_id: str
    mcq_id: str
    sample_id: str
    expansion_id: str
    system_prompt: str
    user_text: str
    options: tuple[str, ...]
    answer_index: int
    answer_format: str
    question_type: str
    thought: str
    pred_index: int
    simple_thought: str = ""  # the stage-2 thought an expansion grew from ("" for O / X)

    @property
    def correct(self) -> bool:
        return self.pred_index == self.answer_index

    @property
    def prompt_key(self) -> tuple[str, str]:
        return (self.system_prompt, self.user_text)

    @property
    def added_length(self) -> int:
        """Length of what the expansion added (the whole thought for a simple one)."""
        return len(self.thought) - len(self.simple_thought)

    def answer(self, answer_format: str | None = None) -> str:
        return format_answer(self.options, self.pred_index, answer_format or self.answer_format)

    def target(self, answer_format: str | None = None) -> str:
        """``<think> {thought} </think> <answer> {answer} </answer>``; the answer in the requested format."""
        return f"<think> {self.thought} </think> <answer> {self.answer(answer_format)} </answer>"

    def prompt_messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": self.user_text}]


def _rows(run: Any, stage: str) -> list[dict[str, Any]]:
    try:
        table = run.read(stage)
    except FileNotFoundError:
        return []
    return table.to_pylist() if table is not None else []


def load_traces(run: Any) -> list[Trace]:
    """Every kept simple CoT and expansion of a run, typed O / X / O_O / O_X / X_O / X_X.

    An expansion counts only when its simple thought is itself kept. Order is deterministic (by id).
    """
    samples = {r["sample_id"]: r for r in _rows(run, "simple_cot") if r["keep"]}
    out: list[Trace] = []
    for s in samples.values():
        out.append(_trace(s, "O" if s["correct"] else "X", s["sample_id"], "", s["thought"], s["pred_index"], ""))
    for e in _rows(run, "expansion"):
        s = samples.get(e["sample_id"])
        if not e["keep"] or s is None:
            continue
        kind = ("O" if s["correct"] else "X") + "_" + ("O" if e["correct"] else "X")
        out.append(_trace(s, kind, e["expansion_id"], e["expansion_id"], e["long_thought"], e["pred_index"],
                          s["thought"]))
    out.sort(key=lambda t: (t.cot_type, t.trace_id))
    return out


def _trace(s: dict, kind: str, trace_id: str, expansion_id: str, thought: str, pred: int, simple: str) -> Trace:
    return Trace(
        cot_type=kind, trace_id=trace_id, image_id=s["image_id"], mcq_id=s["mcq_id"], sample_id=s["sample_id"],
        expansion_id=expansion_id, system_prompt=s["system_prompt"], user_text=s["user_text"],
        options=tuple(s["options"]), answer_index=s["answer_index"], answer_format=s["answer_format"],
        question_type=s["question_type"], thought=thought, pred_index=pred, simple_thought=simple,
    )


def by_type(traces: Iterable[Trace]) -> dict[str, list[Trace]]:
    groups: dict[str, list[Trace]] = {k: [] for k in TRACE_TYPES}
    for t in traces:
        groups[t.cot_type].append(t)
    return groups


# ------------------------------------------------------------------------------------------------ sampling


def length_weighted_subsample(
    items: Sequence[T],
    n: int,
    *,
    group: Callable[[T], str],
    length: Callable[[T], int],
    key: Callable[[T], str],
    seed: int,
    tag: str,
) -> list[T]:
    """Draw exactly ``min(n, len(items))`` items, favouring long ones within each group (docs/method.md).

    Within each group rank by length, longest first (ties by ``key``), weight ``0.5**rank``; draw without
    replacement ``n // groups`` per group (all of a smaller group); top up uniformly from the rest to
    exactly ``n``; shuffle. Seeded per group with ``rng_for(seed, tag, group)``.
    """
    items = sorted(items, key=key)
    n = min(n, len(items))
    if n <= 0:
        return []
    groups: dict[str, list[T]] = defaultdict(list)
    for it in items:
        groups[group(it)].append(it)
    per_group = n // len(groups)
    chosen: list[T] = []
    for g in sorted(groups):
        members = sorted(groups[g], key=lambda it: (-length(it), key(it)))
        weights = [0.5**rank for rank in range(len(members))]
        chosen += _weighted_draw(members, weights, min(per_group, len(members)), rng_for(seed, tag, "group", g))
    taken = {key(it) for it in chosen}
    rest = [it for it in items if key(it) not in taken]
    chosen += rng_for(seed, tag, "top-up").sample(rest, n - len(chosen))
    rng_for(seed, tag, "shuffle").shuffle(chosen)
    return chosen


def _weighted_draw(members: list[T], weights: list[float], k: int, rng: random.Random) -> list[T]:
    pool, w, out = list(members), list(weights), []
    for _ in range(k):
        i = rng.choices(range(len(pool)), weights=w)[0]
        out.append(pool.pop(i))
        w.pop(i)
    return out


# -------------------------------------------------------------------------------------------------- the sets


def _trace_row(t: Trace, opts: AssembleOptions) -> dict[str, Any]:
    return {
        "example_id": content_id("trace", t.trace_id, opts.answer_format),
        "image_id": t.image_id,
        "mcq_id": t.mcq_id,
        "sample_id": t.sample_id,
        "expansion_id": t.expansion_id,
        "cot_type": t.cot_type,
        "question_type": t.question_type,
        "messages": t.prompt_messages() + [{"role": "assistant", "content": t.target(opts.answer_format)}],
        "simple_thought": t.simple_thought,
    }


def sft_traces(traces: Iterable[Trace], opts: AssembleOptions = AssembleOptions()) -> list[Trace]:
    """The SFT selection: O ∪ O→O (length-weighted, ``sft_ratio``) plus as many X→O (by added length)."""
    g = by_type(traces)
    pool = g["O"] + g["O_O"]
    n = int(len(pool) * opts.sft_ratio)
    if opts.sft_balance:
        n = min(n, len(g["X_O"]))
    common = dict(group=lambda t: t.mcq_id, key=lambda t: t.trace_id, seed=opts.seed)
    correct = length_weighted_subsample(pool, n, length=lambda t: len(t.thought), tag="sft-O", **common)
    n_xo = n if opts.sft_balance else int(len(g["X_O"]) * opts.sft_ratio)
    corrected = length_weighted_subsample(g["X_O"], n_xo, length=lambda t: t.added_length, tag="sft-X_O", **common)
    return correct + corrected


def build_sft(run: Any, opts: AssembleOptions = AssembleOptions()) -> list[dict[str, Any]]:
    return [_trace_row(t, opts) for t in sft_traces(load_traces(run), opts)]


def build_simple_cot(run: Any, opts: AssembleOptions = AssembleOptions()) -> list[dict[str, Any]]:
    """Correct simple CoTs, length-weighted subsampled to ``simple_cot_ratio`` (the paper's baseline set)."""
    o = by_type(load_traces(run))["O"]
    picked = length_weighted_subsample(o, int(len(o) * opts.simple_cot_ratio), group=lambda t: t.mcq_id,
                                       length=lambda t: len(t.thought), key=lambda t: t.trace_id,
                                       seed=opts.seed, tag="simple_cot")
    return [_trace_row(t, opts) for t in picked]


def dpo_pairs(traces: Iterable[Trace], opts: AssembleOptions = AssembleOptions()) -> list[tuple[str, Trace, Trace]]:
    """``(kind, chosen, rejected)`` for every requested kind; each pair once, chosen and rejected shown the
    same prompt; the rejected side names a (wrong) option so both answers render alike."""
    traces = list(traces)
    by_mcq_prompt: dict[tuple, dict[str, list[Trace]]] = defaultdict(lambda: defaultdict(list))
    by_sample: dict[str, dict[str, list[Trace]]] = defaultdict(lambda: defaultdict(list))
    for t in traces:
        by_mcq_prompt[(t.mcq_id, t.prompt_key)][t.cot_type].append(t)
        by_sample[t.sample_id][t.cot_type].append(t)
    pairs: list[tuple[str, Trace, Trace]] = []
    seen: set[str] = set()
    for kind in opts.pair_kinds:
        chosen_type, rejected_type = kind.split(">")
        groups = by_mcq_prompt.values() if _KIND_SCOPE[kind] == "mcq" else by_sample.values()
        for grp in groups:
            for c in grp.get(chosen_type, []):
                for r in grp.get(rejected_type, []):
                    if r.pred_index < 0 or c.prompt_key != r.prompt_key:
                        continue
                    pid = content_id("pair", c.prompt_key, c.target(opts.answer_format), r.target(opts.answer_format))
                    if pid not in seen:
                        seen.add(pid)
                        pairs.append((kind, c, r))
    return pairs


def build_dpo(run: Any, opts: AssembleOptions = AssembleOptions()) -> list[dict[str, Any]]:
    rows = []
    for kind, c, r in dpo_pairs(load_traces(run), opts):
        rows.append({
            "example_id": content_id("pair", c.trace_id, r.trace_id, opts.answer_format),
            "image_id": c.image_id,
            "mcq_id": c.mcq_id,
            "kind": kind,
            "question_type": c.question_type,
            "prompt": c.prompt_messages(),
            "chosen": [{"role": "assistant", "content": c.target(opts.answer_format)}],
            "rejected": [{"role": "assistant", "content": r.target(opts.answer_format)}],
            "chosen_id": c.trace_id,
            "rejected_id": r.trace_id,
            "chosen_type": c.cot_type,
            "rejected_type": r.cot_type,
        })
    return rows


# ------------------------------------------------------------------------------------------------------ MCQs

MCQ_VARIANTS = ("think", "direct")


def build_mcq(run: Any, opts: AssembleOptions = AssembleOptions(), variant: str = "think") -> list[dict[str, Any]]:
    """One row per valid MCQ: the prompt the VLM saw (think variant) or its direct-answer twin, and the
    gold answer ``<answer> … </answer>`` in the requested format.

    The prompt is the one stage 2 used for that MCQ (its first sample), so the shuffle is the run's own;
    an MCQ that never reached stage 2 is rendered here with a shuffle seeded by its id.
    """
    if variant not in MCQ_VARIANTS:
        raise ValueError(f"variant must be one of {MCQ_VARIANTS}, got {variant!r}")
    first: dict[str, dict] = {}
    for s in sorted(_rows(run, "simple_cot"), key=lambda r: (r["mcq_id"], r["sample_index"])):
        first.setdefault(s["mcq_id"], s)
    rows = []
    for m in sorted(_rows(run, "mcq"), key=lambda r: r["mcq_id"]):
        if not m["valid"]:
            continue
        p = _mcq_prompt(m, first.get(m["mcq_id"]), variant, opts.seed)
        fmt = opts.answer_format or p.answer_format
        answer = format_answer(p.options, p.answer_index, fmt)
        rows.append({
            "example_id": content_id("mcq", m["mcq_id"], variant, opts.answer_format),
            "image_id": m["image_id"],
            "mcq_id": m["mcq_id"],
            "question": m["question"],
            "question_type": m["question_type"],
            "options": list(p.options),
            "answer_index": p.answer_index,
            "answer": answer,
            "messages": [
                {"role": "system", "content": p.system_prompt},
                {"role": "user", "content": p.user_text},
                {"role": "assistant", "content": f"<answer> {answer} </answer>"},
            ],
        })
    return rows


@dataclass(frozen=True)
class _Prompt:
    system_prompt: str
    user_text: str
    options: tuple[str, ...]
    answer_index: int
    answer_format: str


def _mcq_prompt(m: dict, sample: dict | None, variant: str, seed: int) -> _Prompt:
    """The prompt of an MCQ: stage 2's own (shuffle, styles) when it has a sample, else a seeded fresh one."""
    if sample is not None:
        system = sample["system_prompt"] if variant == "think" else _direct_twin(
            sample["system_prompt"], m["question_type"], sample["answer_format"])
        return _Prompt(system, sample["user_text"], tuple(sample["options"]), sample["answer_index"],
                       sample["answer_format"])
    from builder.answers import ANSWER_FORMATS, OPTION_STYLES, shuffle_options

    rng = rng_for(seed, "mcq-prompt", m["mcq_id"])
    options, gold = shuffle_options(m["options"], m["answer_index"], rng)
    style, fmt = rng.choice(OPTION_STYLES), rng.choice(ANSWER_FORMATS)
    return _Prompt(_system_prompt(variant, m["question_type"], fmt), _user_text(m["question"], options, style),
                   tuple(options), gold, fmt)


# The authors' think / direct preambles (their templates, as their published prompts show them): used only to
# turn an imported think prompt into its direct twin when builder.prompts cannot render it.
_THINK_PREAMBLE = ("A conversation between User and Assistant. The user asks a visual question, and the Assistant "
                   "solves it. The assistant first thinks about the reasoning process in the mind and then provides "
                   "the user with the answer. The reasoning process and answer are enclosed within <think> </think> "
                   "and <answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
                   "<answer> answer here </answer>.")
_DIRECT_PREAMBLE = ("A conversation between User and Assistant. The user asks a visual question, and the Assistant "
                    "solves it. The assistant provides the user with the answer. The answer is enclosed within "
                    "<answer> </answer> tags, respectively, i.e., <answer> answer here </answer>.")


def _direct_twin(think_system: str, question_type: str, answer_format: str) -> str:
    """The direct-answer system prompt matching a think system prompt."""
    if think_system.startswith(_THINK_PREAMBLE):  # an imported (authors') prompt: keep their wording
        return _DIRECT_PREAMBLE + think_system[len(_THINK_PREAMBLE):]
    return _system_prompt("direct", question_type, answer_format)


def _system_prompt(variant: str, question_type: str, answer_format: str) -> str:
    from builder.prompts import Prompts  # the project's templates (pipeline helper)

    return Prompts().system(variant=variant, question_type=question_type, answer_format=answer_format)


def _user_text(question: str, options: Sequence[str], style: str) -> str:
    from builder.prompts import Prompts

    return Prompts().vlm_user_text(question=question, options=options, option_style=style)


# ------------------------------------------------------------------------------------------- empty sets


def why_empty(run: Any, name: str, opts: AssembleOptions = AssembleOptions()) -> str:
    """Why the set ``name`` (``sft``, ``dpo``, ``simple_cot``, ``mcq``, ``mcq_direct``) of ``run`` has no rows;
    "" when it has some. ``lpt export`` reports this for every config it leaves out."""
    if name in ("mcq", "mcq_direct"):
        return "" if any(m["valid"] for m in _rows(run, "mcq")) else "stage 1 wrote no valid MCQ"
    if name not in ("sft", "dpo", "simple_cot"):
        raise ValueError(f"unknown set {name!r}")
    traces = load_traces(run)
    if not traces:
        return "the run has no kept simple CoT or expansion"
    g = by_type(traces)
    if name == "simple_cot":
        o = len(g["O"])
        if not o:
            return "the run has no kept correct simple thought (O)"
        if not int(o * opts.simple_cot_ratio):
            return f"{o} correct simple thoughts (O) x simple_cot_ratio {opts.simple_cot_ratio:g} round down to 0"
        return ""
    if name == "dpo":
        if dpo_pairs(traces, opts):
            return ""
        have = ", ".join(f"{k} {len(v)}" for k, v in g.items() if v)
        return (f"no pair of the kinds {', '.join(opts.pair_kinds)} (kept traces: {have}); a pair needs a chosen "
                f"and a rejected trace of the same prompt")
    if sft_traces(traces, opts):
        return ""
    pool, x_o = len(g["O"]) + len(g["O_O"]), len(g["X_O"])
    if opts.sft_balance and not x_o:
        return (f"no X→O trace (a wrong simple thought whose expansion reaches the right answer; the run keeps "
                f"{len(g['X_X'])} X→X); SFT is 50/50 O ∪ O→O / X→O by construction (docs/method.md), so its O ∪ O→O half "
                f"({pool} traces) is cut to 0 as well; sft_balance=False (--no-sft-balance) keeps that half")
    if opts.sft_balance:
        return (f"O ∪ O→O ({pool} traces) x sft_ratio {opts.sft_ratio:g} rounds down to 0; SFT is 50/50 by "
                f"construction, so the X→O half ({x_o} traces) is cut to 0 as well")
    return f"O ∪ O→O ({pool} traces) and X→O ({x_o}) x sft_ratio {opts.sft_ratio:g} round down to 0"


# ------------------------------------------------------------------------------------------------ raw stages


def build_raw(run: Any, stage: str) -> list[dict[str, Any]]:
    """Every record of one stage, as written (every sample, its parse, its label, its provenance)."""
    return _rows(run, stage)


__all__ = [
    "AssembleOptions", "DEFAULT_PAIR_KINDS", "MCQ_VARIANTS", "PAIR_KINDS", "TRACE_TYPES", "Trace",
    "build_dpo", "build_mcq", "build_raw", "build_sft", "build_simple_cot", "by_type", "dpo_pairs",
    "length_weighted_subsample", "load_traces", "sft_traces", "why_empty",
]
