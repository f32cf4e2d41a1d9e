"""The authors' way of assembling the sets, re-implemented for timing: pandas DataFrames and groupby loops.

Modelled on docs/method.md ("The sets") and the authors' released outputs: whole stage outputs loaded
into DataFrames, traces joined with ``merge``, length-weighted sampling by a loop over ``groupby('mcq_id')``
with ``numpy`` weighted choice per group, DPO pairs enumerated per MCQ group with ``itertools.product`` over
the group's records and then ``drop_duplicates`` on the positive (for X→O pairs also on the negative), chat rows
built with ``apply`` (``parallel_apply`` when ``pandarallel`` is installed), each set written as a JSON list
(LLaMA-Factory sharegpt, like their ``sft_*.json`` / ``dpo_*.json``).

It reads our run directory (already parsed and labelled rows), so it times the assembly only, as the new
columnar path does. Its sets are the authors' (their sampling RNG, their dedup rule), not byte-identical to
ours; it is a baseline for time and memory, not an oracle.

    python benchmarks/authors_pandas.py RUN_DIR OUT_DIR
"""

from __future__ import annotations

import itertools
import json
import sys
import warnings
from collections import defaultdict
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
    sc = sc[sc["keep"]].copy()
    simple = sc.assign(cot_type=np.where(sc["correct"], "O", "X"), trace_id=sc["sample_id"], cot=sc["thought"],
                       simple_thought="", expansion_id="")
    merged = ex[ex["keep"]].merge(sc, on="sample_id", suffixes=("_e", ""))
    merged["cot_type"] = _apply(merged, lambda r: ("O" if r["correct"] else "X") + "_"
                                + ("O" if r["correct_e"] else "X"))
    merged["trace_id"] = merged["expansion_id"]
    merged["cot"] = merged["long_thought"]
    merged["simple_thought"] = merged["thought"]
    merged["pred_index"] = merged["pred_index_e"]
    cols = ["trace_id", "cot_type", "mcq_id", "sample_id", "expansion_id", "image_id", "question_type", "options",
            "pred_index", "answer_format", "system_prompt", "user_text", "cot", "simple_thought"]
    out = pd.concat([simple[cols], merged[cols]], ignore_index=True)
    out["target"] = _apply(out, lambda r: f"<think> {r['cot']} </think> <answer> "
                                          f"{format_answer(list(r['options']), r['pred_index'], r['answer_format'])}"
                                          f" </answer>")
    out["length"] = out["cot"].str.len()
    out["added_length"] = out["length"] - out["simple_thought"].str.len()
    return out


def weighted_sample(df: pd.DataFrame, n: int, length: str) -> pd.DataFrame:
    """Per MCQ: rank by length, weight 0.5**rank, draw n // groups; top up uniformly; shuffle."""
    n = min(n, len(df))
    if n <= 0:
        return df.iloc[:0]
    per_group = n // df["mcq_id"].nunique()
    rng = np.random.default_rng(SEED)
    picked = []
    for _, g in df.groupby("mcq_id"):
        g = g.sort_values(length, ascending=False)
        k = min(per_group, len(g))
        if k:
            w = 0.5 ** np.arange(len(g))
            picked.append(g.iloc[rng.choice(len(g), size=k, replace=False, p=w / w.sum())])
    chosen = pd.concat(picked) if picked else df.iloc[:0]
    rest = df.drop(chosen.index)
    chosen = pd.concat([chosen, rest.sample(n=n - len(chosen), random_state=SEED)])
    return chosen.sample(frac=1, random_state=SEED)


def sft(tr: pd.DataFrame) -> pd.DataFrame:
    pool = tr[tr["cot_type"].isin(["O", "O_O"])]
    x_o = tr[tr["cot_type"] == "X_O"]
    n = min(int(len(pool) * 0.1), len(x_o))
    return pd.concat([weighted_sample(pool, n, "length"), weighted_sample(x_o, n, "added_length")])


def simple_cot(tr: pd.DataFrame) -> pd.DataFrame:
    o = tr[tr["cot_type"] == "O"]
    return weighted_sample(o, int(len(o) / 3.75), "length")


def dpo(tr: pd.DataFrame) -> pd.DataFrame:
    """Candidate pairs by a loop over the MCQ groups (itertools.product of the group's records per prompt / per
    sample), then drop_duplicates on the positive (X→O pairs: also on the negative)."""
    pairs = []
    for _, g in tr.groupby("mcq_id", sort=False):
        by_prompt, by_sample = defaultdict(lambda: defaultdict(list)), defaultdict(lambda: defaultdict(list))
        for r in g.to_dict("records"):
            by_prompt[(r["system_prompt"], r["user_text"])][r["cot_type"]].append(r)
            by_sample[r["sample_id"]][r["cot_type"]].append(r)
        for group in by_prompt.values():
            for p, q in itertools.product(group["O"], group["X"]):
                if q["pred_index"] >= 0:
                    pairs.append(_pair("O>X", p, q))
        for group in by_sample.values():
            for kind in ("O>O_X", "X_O>X", "X_O>X_X", "O>O_O"):
                a, b = kind.split(">")
                for p, q in itertools.product(group[a], group[b]):
                    if q["pred_index"] >= 0:
                        pairs.append(_pair(kind, p, q))
    df = pd.DataFrame(pairs)
    if df.empty:
        return df
    x_o = df["kind"].str.startswith("X_O")
    kept = [df[~x_o].drop_duplicates(subset=["chosen"]),
            df[x_o].drop_duplicates(subset=["chosen"]).drop_duplicates(subset=["rejected"])]
    return pd.concat(kept, ignore_index=True)


def _pair(kind: str, p: dict, q: dict) -> dict:
    return {"kind": kind, "image_id": p["image_id"], "system_prompt": p["system_prompt"],
            "user_text": p["user_text"], "chosen": p["target"], "rejected": q["target"]}


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
    tr = traces(sc, ex)
    sizes = {}
    for name, df in (("sft", sft(tr)), ("simple_cot", simple_cot(tr))):
        rows = _apply(df, lambda r: {"messages": chat(r["system_prompt"], r["user_text"], r["target"]),
                                     "images": [f"{r['image_id']}.jpg"], "cot_type": r["cot_type"]}).tolist()
        write_json(rows, out / f"{name}.json")
        sizes[name] = len(rows)
    pairs = dpo(tr)
    rows = _apply(pairs, lambda r: {"messages": chat(r["system_prompt"], r["user_text"]),
                                    "chosen": {"role": "assistant", "content": r["chosen"]},
                                    "rejected": {"role": "assistant", "content": r["rejected"]},
                                    "images": [f"{r['image_id']}.jpg"]}).tolist() if len(pairs) else []
    write_json(rows, out / "dpo.json")
    sizes["dpo"] = len(rows)
    for name, df in mcq_sets(mcq, sc).items():
        rows = _apply(df, lambda r: {"messages": chat(r["system_prompt"], r["user_text"],
                                                      f"<answer> {r['answer']} </answer>"),
                                     "images": [f"{r['image_id']}.jpg"]}).tolist()
        write_json(rows, out / f"{name}.json")
        sizes[name] = len(rows)
    return sizes


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]))))
