"""The transformers engine's seeded sampler (all rows at once, each row from its own counter-based uniforms) and its
stop-string check: the same request gives the same bytes alone, in any batch, at any place, re-sharded; the draws
follow the softmax and respect top-k / top-p; other seeds, other samples; a run made by another sampler version is
not resumed. Real transformers, tiny local models, CPU."""

from __future__ import annotations

import random

import pytest
import torch

from builder.engines import Request, SamplingParams, load_engine
from builder.engines.transformers_engine import SAMPLER, _RowSampler, _StopStrings, row_uniforms, sample_rows


def ask(text: str, **params) -> Request:
    return Request([{"role": "user", "content": text}], SamplingParams(**params))


@pytest.fixture(scope="module")
def lm(tiny_lm):
    return load_engine("transformers", str(tiny_lm), batch_size=8)


SAMPLED = dict(n=3, temperature=1.0, top_p=0.95, top_k=40, repetition_penalty=1.05, max_new_tokens=12)


def _texts(samples):
    return [(s.text, s.num_tokens, s.finish_reason) for s in samples]


def test_a_request_gives_the_same_bytes_alone_in_any_batch_at_any_place(lm, tiny_lm):
    req = ask("Describe the photo of the red bus.", seed=11, **SAMPLED)
    others = [ask("Hi", seed=1, **SAMPLED), ask("Count the people walking on the long street, then answer with a "
                                                "letter between A and D.", seed=2, **SAMPLED),
              ask("What is on the wooden table?", seed=3, **SAMPLED)]
    alone = _texts(lm.generate([req])[0])
    assert len({t for t, _, _ in alone}) > 1  # really sampled
    first = lm.generate([req, *others])  # first of a padded batch, beside longer and shorter prompts
    last = lm.generate([*others, req])  # last
    assert _texts(first[0]) == alone and _texts(last[-1]) == alone
    assert [_texts(s) for s in first[1:]] == [_texts(s) for s in last[:-1]]  # the others did not move either
    # re-sharded: other batch boundaries (2 rows a call: the request's 3 samples split across calls)
    small = load_engine("transformers", str(tiny_lm), batch_size=2)
    assert _texts(small.generate([others[0], req, others[2]])[1]) == alone


def test_the_stage_rows_do_not_depend_on_sharding_or_chunking(tmp_path, tiny_vlm):
    """Stage 2 through the transformers engine: one shard with chunks of 4, and 2 shards with chunks of 1, give
    the same rows (other batches, other places in them)."""
    import pyarrow as pa
    from helpers import make_source, small_config

    from builder.runtime import run_with
    from builder.stages import simple_cot
    from builder.stages.mcq import SCHEMA as MCQ
    from builder.stages.mcq import mcq_rows, parse_mcq_response
    from builder.store import RunDir

    cfg = small_config().apply_overrides(["stage2.n=2", "stage2.max_new_tokens=6", "stage2.max_pixels=3136",
                                          "stage2.engine=transformers"])
    engine = load_engine("transformers", str(tiny_vlm), batch_size=3)
    reply = ("1. <question> Which colour? </question> <choices> (A) Red (B) Blue (C) Green (D) Brown "
             "</choices> <answer> Brown </answer> <type> Recognition </type>")
    tables = []
    for name, layout in (("one", [((0, 1), 4)]), ("two", [((0, 2), 1), ((1, 2), 1)])):
        run = RunDir(tmp_path / name)
        src = make_source(run, tmp_path, n=3)
        rows = [r for s in src for r in mcq_rows(s["image_id"], parse_mcq_response(reply), model="given",
                                                 raw_response=reply, formatted_response="")]
        run.write_table("mcq", pa.Table.from_pylist(rows, schema=MCQ))
        for shard, chunk_size in layout:
            run_with(simple_cot.SPEC, run, engine, cfg, shard=shard, chunk_size=chunk_size, progress=False)
        tables.append(run.read("simple_cot"))
        assert {s["sampler"]["engine"] for s in run.chunk_settings("simple_cot").values()} == {SAMPLER}
    assert tables[0].equals(tables[1])
    assert len(set(tables[0].column("response").to_pylist())) > 1


def test_a_run_of_another_sampler_is_not_resumed(tmp_path, tiny_vlm):
    """Chunks written before the sampler's version was recorded (or by another version) are refused by the
    transformers engine; an engine with no sampler of its own may still resume them (engine choice is free)."""
    import json

    import pyarrow.parquet as pq
    from helpers import ReplayEngine, make_source, run_all, small_config

    from builder.runtime import run_with
    from builder.stages import simple_cot
    from builder.store import SETTINGS_KEY, RunDir, StoreError

    run = RunDir(tmp_path / "run")
    make_source(run, tmp_path, n=3)
    cfg = small_config().apply_overrides(["stage2.engine=transformers"])
    run_all(run, ReplayEngine(), cfg)
    files = run.files("simple_cot")
    assert files and all(s["sampler"] == {"engine": SAMPLER} for s in run.chunk_settings("simple_cot").values())
    for edit in (lambda s: s.pop("sampler"), lambda s: s.update(sampler={"engine": "row-generators/0"})):
        for path in files:  # as the chunks of an older engine would read
            table = pq.read_table(path)
            meta = dict(table.schema.metadata)
            settings = json.loads(meta[SETTINGS_KEY])
            edit(settings)
            meta[SETTINGS_KEY] = json.dumps(settings, sort_keys=True).encode()
            pq.write_table(table.replace_schema_metadata(meta), path)
        with pytest.raises(StoreError, match=r"made with other simple_cot settings \(differ in \['sampler'\]\)"):
            run_with(simple_cot.SPEC, run, ReplayEngine(), cfg, progress=False)
        run_with(simple_cot.SPEC, run, ReplayEngine(), cfg.apply_overrides(["stage2.engine=vllm"]), progress=False)


# ----------------------------------------------------------------------------------------------- the sampler


def _draws(logits: list[float], rows: int, **params) -> torch.Tensor:
    scores = torch.tensor([logits]).repeat(rows, 1)
    u = torch.from_numpy(row_uniforms(list(range(rows)), 1)[:, 0])
    return sample_rows(scores, SamplingParams(**params), u).flatten()


def _chi_square(draws: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(draws, minlength=len(probs)).double()
    expected = probs.double() * len(draws)
    assert counts[expected == 0].sum() == 0, "a token outside the kept set was drawn"
    keep = expected > 0
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


LOGITS = [2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0]


def test_draws_follow_the_softmax():
    draws = _draws(LOGITS, 40_000, temperature=0.7)
    probs = (torch.tensor(LOGITS) / 0.7).softmax(-1)
    assert _chi_square(draws, probs) < 24.3  # chi-square, 7 degrees of freedom, p = 0.001
    wrong_t = (torch.tensor(LOGITS) / 1.0).softmax(-1)  # the check tells temperatures apart
    assert _chi_square(draws, wrong_t) > 100


def test_top_k_and_top_p_keep_the_right_tokens_in_the_right_proportions():
    draws = _draws(LOGITS, 40_000, temperature=1.0, top_k=3)
    probs = torch.tensor(LOGITS[:3] + [float("-inf")] * 5).softmax(-1)
    assert set(draws.tolist()) == {0, 1, 2} and _chi_square(draws, probs) < 13.8  # 2 dof
    # top-p 0.7: probabilities 0.40, 0.25, 0.15, ... -> 0.40 + 0.25 < 0.7, so the first three are kept
    full = torch.tensor(LOGITS).softmax(-1)
    assert full[:2].sum() < 0.7 <= full[:3].sum()
    draws = _draws(LOGITS, 40_000, temperature=1.0, top_p=0.7)
    assert set(draws.tolist()) == {0, 1, 2} and _chi_square(draws, probs) < 13.8
    # top-p reached exactly at a token (ties): the tokens before it are kept, it is not (mass before it >= top_p)
    draws = _draws([0.0, 0.0, 0.0, 0.0], 4_000, temperature=1.0, top_p=0.5)
    assert len(set(draws.tolist())) == 2 and abs(torch.bincount(draws).max().item() - 2_000) < 150


def test_the_uniforms_are_uniform_and_other_seeds_draw_otherwise():
    u = row_uniforms(list(range(2_000)), 20)
    counts = torch.histc(torch.from_numpy(u).flatten(), bins=16, min=0, max=1)
    assert float(((counts - 2_500) ** 2 / 2_500).sum()) < 37.7  # chi-square, 15 dof, p = 0.001
    assert abs(float(torch.corrcoef(torch.from_numpy(u[:, :2]).T)[0, 1])) < 0.05  # steps are not correlated
    assert (row_uniforms([7], 20) == u[7:8]).all()  # a row's uniforms depend on its seed only
    flat = _draws([0.0] * 64, 500, temperature=1.0)
    assert len(set(flat.tolist())) > 40  # 500 seeds over 64 equally likely tokens
    again = sample_rows(torch.zeros(500, 64), SamplingParams(temperature=1.0),
                        torch.from_numpy(row_uniforms(list(range(1000, 1500)), 1)[:, 0])).flatten()
    assert (again != flat).float().mean() > 0.9


def test_a_rows_draw_depends_on_its_own_logits_and_uniform_only():
    torch.manual_seed(0)
    scores = torch.randn(6, 50) * 2
    u = torch.from_numpy(row_uniforms([5, 6, 7, 8, 9, 10], 1)[:, 0])
    for kw in ({"temperature": 0.7, "top_p": 0.8}, {"temperature": 1.0, "top_k": 5}, {"temperature": 1.3}):
        params = SamplingParams(**kw)
        batch = sample_rows(scores, params, u).flatten()
        perm = torch.tensor([3, 0, 5, 1, 4, 2])
        assert (sample_rows(scores[perm], params, u[perm]).flatten() == batch[perm]).all()
        assert all(sample_rows(scores[i:i + 1], params, u[i:i + 1]).item() == batch[i] for i in range(6))


def test_the_sampler_does_the_same_work_for_2_rows_as_for_64():
    """One set of tensor operations for the whole batch: no per-row loop (the old sampler ran a
    ``torch.multinomial`` with its own generator for every row at every step)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n = getattr(self, "n", 0) + 1
            return func(*args, **(kwargs or {}))

    def ops(rows: int) -> int:
        params = SamplingParams(temperature=0.7, top_p=0.8, top_k=20, max_new_tokens=4)
        sampler = _RowSampler(params, list(range(rows)))
        sampler(torch.zeros(rows, 3, dtype=torch.long), torch.randn(rows, 100))  # first step: the uniform table
        with Count() as count:
            sampler(torch.zeros(rows, 4, dtype=torch.long), torch.randn(rows, 100))
        return count.n

    assert ops(2) == ops(64)


# ------------------------------------------------------------------------------------------- stop strings


def test_stop_strings_stop_at_the_step_a_full_decode_would(lm):
    """Token streams (pieces of the stop strings, split characters, random tokens) through the stop check, which
    decodes only rows whose last token may complete a stop: the first step it stops at is the first step whose
    generated text holds a stop string."""
    tok = lm.tokenizer
    rng = random.Random(0)
    pieces = ["an", "a", "n", "e", ".", "e.", "</", "answer", ">", "é", "\u00e9t", " t", "h", " th", "the", " ", "x",
              "\n", "ü", "日本", "a "]
    encoded = [tok(p, add_special_tokens=False).input_ids for p in pieces]
    for stops in (("an",), ("e.", "</answer>"), ("é",), (" th",), ("日",), ("a ",)):
        candidates = lm._stop_candidates(stops)
        assert (candidates is None) == (stops == ("a ",))
        check = _StopStrings(tok, stops, 5, candidates)
        hits = 0
        for row in range(40):
            ids = [rng.randrange(len(tok)) for _ in range(5)]
            while len(ids) < 35:
                ids += rng.choice(encoded) if rng.random() < 0.8 else [rng.randrange(len(tok))]
            ids = ids[:35]
            expected = next((k for k in range(1, 31) if any(s in tok.decode(ids[5:5 + k], skip_special_tokens=True)
                                                           for s in stops)), None)
            got = next((k for k in range(1, 31) if check(torch.tensor([ids[:5 + k]]), None)[0].item()), None)
            assert got == expected, (stops, row, tok.convert_ids_to_tokens(ids[5:]))
            hits += expected is not None
        assert hits >= 5, (stops, hits)


def test_stop_strings_decode_nothing_when_no_stop_can_have_appeared(lm, monkeypatch):
    tok = lm.tokenizer
    candidates = lm._stop_candidates(("</answer>",))
    plain = [i for i in range(len(tok)) if not candidates[i]][:8]
    assert plain and candidates.sum() < len(tok) / 2
    decoded = []
    monkeypatch.setattr(tok, "batch_decode", lambda ids, **kw: decoded.append(len(ids)) or ["" for _ in ids])
    check = _StopStrings(tok, ("</answer>",), 2, candidates)
    assert not check(torch.tensor([[1, 2, p] for p in plain]), None).any() and decoded == []
    end = [i for i in range(len(tok)) if candidates[i]][0]
    check(torch.tensor([[1, 2, plain[0]], [1, 2, end]]), None)
    assert decoded == [1]  # only the row whose last token holds a ">"


# ------------------------------------------------------------------------------------------------ evaluation


@pytest.mark.usefixtures("own_datasets_cache")
def test_lpt_evals_greedy_requests_go_to_one_generate_per_batch(tiny_vlm, tmp_path, monkeypatch):
    """``lpt eval`` (run_eval, lighteval's pipeline) on the transformers engine: the items' greedy requests reach
    ``model.generate`` as full batches of rows, not one request at a time."""
    pytest.importorskip("lighteval")
    from eval_tasks import samples
    from eval_tasks.cli import run_eval
    from eval_tasks.tasks import task_string

    for var in ("LPT_ENGINE", "LPT_DTYPE", "LPT_BATCH_SIZE", "LPT_ENGINE_OPTIONS", "LPT_TEMPERATURE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LPT_EVAL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LPT_MAX_NEW_TOKENS", "2")
    data = samples.write_sample_data(tmp_path / "data", n=7, size=(96, 64))
    engine = load_engine("transformers", str(tiny_vlm), batch_size=3)
    asked, rows = [], []
    generate, model_generate = engine.generate, engine.model.generate
    monkeypatch.setattr(engine, "generate", lambda reqs, **kw: asked.append(len(reqs)) or generate(reqs, **kw))
    monkeypatch.setattr(engine.model, "generate",
                        lambda **kw: rows.append(kw["input_ids"].shape[0]) or model_generate(**kw))
    run_eval(str(tiny_vlm), task_string(["lpt_vstar"]), output_dir=str(tmp_path / "out"), data_dir=str(data),
             engine=engine, protocol="project")
    assert asked and sum(asked) == sum(rows) >= 4  # every item one row
    expected = [min(3, n - start) for n in asked for start in range(0, n, 3)]
    assert rows == expected  # full batches of 3, the rest last
