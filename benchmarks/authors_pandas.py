"""The authors' way of assembling the sets, re-implemented for timing: pandas DataFrames and groupby loops.

Modelled on the structure of the authors' ``create_sft_dpo_dataset`` / ``_create_dpo_dataset`` /
``length_weighted_subsample_df`` (MIT; written anew here, not copied): one DataFrame row per kept expansion
carrying its simple CoT's columns; DPO pairs by a loop over ``groupby(simple CoT).get_group(...)`` and one over
``groupby(MCQ).get_group(...)``, each building pair dicts with ``iterrows``, then ``drop_duplicates`` on the
positive (X→O pairs also on the negative); SFT and the simple-CoT set by their length-weighted sampler (a
``get_group`` loop, ``rank``, ``DataFrame.sample(weights=0.5**rank)`` seeded by the group's md5, a uniform
top-up, a shuffle); the added thought by ``apply`` + ``str.replace``; chat rows built with ``apply``
(``parallel_apply`` when ``pandarallel`` is installed, as they did); each set written as a JSON list
(LLaMA-Factory sharegpt, like their ``sft_*.json`` / ``dpo_*.json``).

It reads our run directory (already parsed and labelled rows), so it times the assembly only, as the new
columnar path does. Its sets are the authors' (their sampling RNG, their dedup rule), not byte-identical to
ours; it is a baseline for time and memory, not an oracle.

    python benchmarks/authors_pandas.py RUN_DIR OUT_DIR
"""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from builder.answers import format_answer

try:  # the authors used pandarallel where they could
    from pandarallel import pandarallel

    pandarallel.initialize(nb_workers=2, progress_bar=False, verbose=0)
    PARALLEL = True
except ImportError:
    PARALLEL = False

SEED = 0

with warnings.catch_warnings():  # the authors ran pandas < 3: object strings, not pandas 3's Arrow strings
    warnings.simplefilter("ignore")
    try:
        pd.set_option("future.infer_string", False)
    except (KeyError, pd.errors.OptionError):
        pass


def _apply(df: pd.DataFrame, fn) -> pd.Series:
    return df.parallel_apply(fn, axis=1) if PARALLEL else df.apply(fn, axis=1)


def load(run: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Every column of every stage, as the authors loaded their JSONL outputs."""
    return (pd.read_parquet(run / "mcq"), pd.read_parquet(run / "simple_cot"), pd.read_parquet(run / "expansion"))


def traces(sc: pd.DataFrame, ex: pd.DataFrame) -> pd.DataFrame:
    """The authors' working frame: one row per kept expansion, carrying its simple CoT's columns
    (``simple_cot_*``) beside its own (``extended_cot_*``), as their stage-3 CSV chunks hold them."""
    sc = sc[sc["keep"]]
    df = ex[ex["keep"]].merge(sc, on="sample_id", suffixes=("", "_s"))
    return pd.DataFrame({
        "image_id": df["image_id"], "mcq_unique_id": df["mcq_id"], "simple_cot_unique_id": df["sample_id"],
        "extended_cot_unique_id": df["expansion_id"], "system_prompt": df["system_prompt"],
        "user_text": df["user_text_s"], "options": df["options"], "answer_format": df["answer_format"],
        "simple_cot_parsed_thought": df["thought"], "simple_cot_parsed_answer": df["pred_index_s"],
        "simple_cot_parsed_correct": df["correct_s"], "extended_cot_parsed_thought": df["long_thought"],
        "extended_cot_parsed_answer": df["pred_index"], "extended_cot_parsed_correct": df["correct"]})


def _seed(group: object) -> int:
    """A per-group seed from the md5 of its key (their ``string_to_seed``)."""
    return int(hashlib.md5(str(group).encode()).hexdigest(), 16) % (2 ** 32)


def length_weighted_subsample(df: pd.DataFrame, n_total: int, thought_key: str,
                              group_key: str = "mcq_unique_id") -> pd.DataFrame:
    """Their sampler: a loop over ``groupby(group).get_group``; in each group the rows are ranked by the
    thought's length (longest first), weighted 0.5**rank and ``DataFrame.sample``d (``n_total // groups`` each,
    seeded by the group's md5); then topped up uniformly to ``n_total`` and shuffled."""
    df = df.reset_index(drop=True)
    if n_total <= 0 or df.empty:
        return df.iloc[:0]
    grouped = df.groupby(group_key)
    keys = list(grouped.groups.keys())
    per_group = n_total // len(keys)
    picked = []
    for key in keys:
        g = grouped.get_group(key).copy()
        g["_length"] = g[thought_key].apply(len)
        g["_rank"] = g["_length"].rank(method="first", ascending=False).astype(int) - 1
        g["_weight"] = 0.5 ** g["_rank"]
        w = (g["_weight"] / g["_weight"].sum()).to_numpy()  # what DataFrame.sample(weights=) did in pandas 2 (pandas
        at = np.random.RandomState(_seed(key)).choice(len(g), size=min(per_group, len(g)), replace=False, p=w)
        picked.append(g.iloc[at].drop(columns=["_length", "_rank", "_weight"]))  # 3 refuses such skewed weights)
    chosen = pd.concat(picked)
    gap = n_total - len(chosen)
    if gap > 0:
        rest = df.drop(index=chosen.index)
        chosen = pd.concat([chosen, rest.sample(n=min(gap, len(rest)), random_state=42)])
    return chosen.sample(frac=1.0, random_state=42)


def sft(df: pd.DataFrame) -> pd.DataFrame:
    """O (each correct simple CoT once) ∪ O→O, subsampled to a tenth; X→O subsampled to the same size."""
    o = df[df["simple_cot_parsed_correct"]].drop_duplicates(subset=["simple_cot_unique_id"], keep="first").copy()
    o["extended_cot_parsed_thought"] = o["simple_cot_parsed_thought"]
    o["extended_cot_parsed_answer"] = o["simple_cot_parsed_answer"]
    o["cot_type"] = "O"
    o_o = df[df["extended_cot_parsed_correct"] & df["simple_cot_parsed_correct"]].copy()
    o_o["cot_type"] = "O_O"
    x_o = df[df["extended_cot_parsed_correct"] & ~df["simple_cot_parsed_correct"]].copy()
    x_o["cot_type"] = "X_O"
    for part in (o_o, x_o):
        part["added_thought"] = _apply(part, lambda r: r["extended_cot_parsed_thought"].replace(
            r["simple_cot_parsed_thought"], ""))
    o_any = pd.concat([o, o_o], ignore_index=True)
    o_any = length_weighted_subsample(o_any, int(len(o_any) * 0.1), "extended_cot_parsed_thought")
    x_o = length_weighted_subsample(x_o, len(o_any), "added_thought")
    return pd.concat([x_o, o_any], ignore_index=True)


def simple_cot(df: pd.DataFrame) -> pd.DataFrame:
    o = df[df["simple_cot_parsed_correct"]].drop_duplicates(subset=["simple_cot_unique_id"], keep="first").copy()
    o["extended_cot_parsed_thought"] = o["simple_cot_parsed_thought"]
    o["extended_cot_parsed_answer"] = o["simple_cot_parsed_answer"]
    o["cot_type"] = "O"
    return length_weighted_subsample(o, int(len(o) / 3.75), "simple_cot_parsed_thought")


_SIMPLE = ["simple_cot_parsed_thought", "simple_cot_parsed_answer", "simple_cot_parsed_correct"]
_EXTENDED = ["extended_cot_parsed_thought", "extended_cot_parsed_answer", "extended_cot_parsed_correct"]


def _side(row: pd.Series, which: str) -> tuple:
    return row[f"{which}_cot_parsed_thought"], row[f"{which}_cot_parsed_answer"]


def dpo(df: pd.DataFrame) -> pd.DataFrame:
    """Their ``_create_dpo_dataset``: a loop over ``groupby(simple CoT).get_group`` with ``iterrows`` (O≻O→O,
    O≻O→X, X→O≻X→X, X→O≻X), then one over ``groupby(MCQ).get_group`` (O≻X, O≻X→X); O pairs de-duplicated on the
    positive, X→O pairs on the positive and then the negative. (Their code drops the O≻O→O pairs.)"""
    o_ox, xo_any, o_any = [], [], []
    grouped = df.groupby("simple_cot_unique_id")
    for key in grouped.groups.keys():
        g = grouped.get_group(key).copy()
        head = {"mcq_unique_id": g["mcq_unique_id"].iloc[0], "image_id": g["image_id"].iloc[0],
                "system_prompt": g["system_prompt"].iloc[0], "user_text": g["user_text"].iloc[0],
                "options": g["options"].iloc[0], "answer_format": g["answer_format"].iloc[0]}
        simple = g[_SIMPLE].iloc[0]
        ext = g[_EXTENDED]
        good, bad = ext[ext["extended_cot_parsed_correct"]], ext[~ext["extended_cot_parsed_correct"]]
        if simple["simple_cot_parsed_correct"]:
            o_ox += [{**head, "kind": "O>O_X", "positive": _side(simple, "simple"), "negative": _side(d, "extended")}
                     for _, d in bad.iterrows()]
        elif len(good):
            xo_any += [{**head, "kind": "X_O>X_X", "positive": _side(d1, "extended"),
                        "negative": _side(d2, "extended")} for _, d1 in good.iterrows() for _, d2 in bad.iterrows()]
            xo_any += [{**head, "kind": "X_O>X", "positive": _side(d1, "extended"), "negative": _side(simple, "simple")}
                       for _, d1 in good.iterrows()]
    grouped = df.groupby("mcq_unique_id")
    for key in grouped.groups.keys():
        g = grouped.get_group(key).copy()
        head = {"mcq_unique_id": key, "image_id": g["image_id"].iloc[0], "system_prompt": g["system_prompt"].iloc[0],
                "user_text": g["user_text"].iloc[0], "options": g["options"].iloc[0],
                "answer_format": g["answer_format"].iloc[0]}
        simple = g[_SIMPLE]
        ok = simple["simple_cot_parsed_correct"]
        if ok.sum() > 0 and (~ok).sum() > 0:
            right, wrong = simple[ok], simple[~ok]
            o_any += [{**head, "kind": "O>X", "positive": _side(d1, "simple"), "negative": _side(d2, "simple")}
                      for _, d1 in right.iterrows() for _, d2 in wrong.iterrows()]
            both_wrong = g[~g["extended_cot_parsed_correct"] & ~g["simple_cot_parsed_correct"]]
            o_any += [{**head, "kind": "O>X_X", "positive": _side(d1, "simple"), "negative": _side(d2, "extended")}
                      for _, d1 in right.iterrows() for _, d2 in both_wrong.iterrows()]
    dpo_o = pd.DataFrame(o_ox + o_any)
    dpo_x_o = pd.DataFrame(xo_any)
    kept = []
    if len(dpo_o):
        kept.append(dpo_o.drop_duplicates(subset=["positive"], keep="first"))
    if len(dpo_x_o):
        kept.append(dpo_x_o.drop_duplicates(subset=["positive"], keep="first")
                    .drop_duplicates(subset=["negative"], keep="first"))
    return pd.concat(kept, ignore_index=True) if kept else pd.DataFrame()


def _target(r: pd.Series, thought: str, answer: str) -> str:
    return f"<think> {r[thought]} </think> <answer> " \
           f"{format_answer(list(r['options']), int(r[answer]), r['answer_format'])} </answer>"


def mcq_sets(mcq: pd.DataFrame, sc: pd.DataFrame) -> dict[str, pd.DataFrame]:
    first = sc.sort_values(["mcq_id", "sample_index"]).groupby("mcq_id").first().reset_index()
    m = mcq[mcq["valid"]].merge(first, on="mcq_id", suffixes=("", "_s"))
    m["answer"] = _apply(m, lambda r: format_answer(list(r["options_s"]), r["answer_index_s"], r["answer_format"]))
    direct = m.copy()
    direct["system_prompt"] = direct["system_prompt"].str.replace(
        "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
        "answer.", "The assistant provides the user with the answer.", regex=False)
    return {"mcq": m, "mcq_direct": direct}


def write_json(rows: list[dict], path: Path) -> None:
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")


def chat(system: str, user: str, *assistant: str) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": "<image>" + user}] + \
        [{"role": "assistant", "content": a} for a in assistant]


def main(run: Path, out: Path) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    mcq, sc, ex = load(run)
    df = traces(sc, ex)
    sizes = {}
    for name, part in (("sft", sft(df)), ("simple_cot", simple_cot(df))):
        rows = _apply(part, lambda r: {"messages": chat(r["system_prompt"], r["user_text"], _target(
            r, "extended_cot_parsed_thought", "extended_cot_parsed_answer")), "images": [f"{r['image_id']}.jpg"],
            "cot_type": r["cot_type"]}).tolist() if len(part) else []
        write_json(rows, out / f"{name}.json")
        sizes[name] = len(rows)
    pairs = dpo(df)
    rows = _apply(pairs, lambda r: {
        "messages": chat(r["system_prompt"], r["user_text"]),
        "chosen": {"role": "assistant", "content": f"<think> {r['positive'][0]} </think> <answer> "
                   f"{format_answer(list(r['options']), int(r['positive'][1]), r['answer_format'])} </answer>"},
        "rejected": {"role": "assistant", "content": f"<think> {r['negative'][0]} </think> <answer> "
                     f"{format_answer(list(r['options']), int(r['negative'][1]), r['answer_format'])} </answer>"},
        "images": [f"{r['image_id']}.jpg"]}).tolist() if len(pairs) else []
    write_json(rows, out / "dpo.json")
    sizes["dpo"] = len(rows)
    for name, part in mcq_sets(mcq, sc).items():
        rows = _apply(part, lambda r: {"messages": chat(r["system_prompt"], r["user_text"],
                                                        f"<answer> {r['answer']} </answer>"),
                                       "images": [f"{r['image_id']}.jpg"]}).tolist()
        write_json(rows, out / f"{name}.json")
        sizes[name] = len(rows)
    return sizes


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]))))
