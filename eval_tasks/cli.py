"""``lpt eval``: score a model on the paper's benchmarks with lighteval, our tasks and our custom model.

Equivalent to ``lighteval custom MODEL eval_tasks/model.py "lpt_vstar|0,…" --custom-tasks eval_tasks.tasks``,
with the engine options as flags (passed to the model as arguments; the ``LPT_*`` variables are
``lighteval custom``'s way in) and the offline fixes applied first. It checks the model and the benchmark data
before loading anything heavy, so a missing path or unreachable data is one line within seconds. After the run
it prints where the results JSON is and each benchmark's macro accuracy next to the paper's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

ALL = "all"
WEIGHT_ENGINES = ("auto", "transformers", "vllm")  # engines that load the model's weights from MODEL


class ModelUnavailable(RuntimeError):
    """The model cannot be loaded; the message is one line naming it."""


def _task_list(tasks: str, direct: bool) -> str:
    from eval_tasks.catalog import names as benchmark_names
    from eval_tasks.common import task_name

    BENCHMARKS = benchmark_names()
    names = list(BENCHMARKS) if tasks.strip() == ALL else [t.strip() for t in tasks.split(",") if t.strip()]
    out = []
    for name in names:
        base = name.split("|")[0]
        bench = base.removesuffix("_direct")
        if bench not in BENCHMARKS:
            raise click.BadParameter(f"unknown task {name!r}; choose from {sorted(BENCHMARKS)} (each also as "
                                     f"NAME_direct) or 'all'", param_hint="--tasks")
        full = task_name(base, "direct") if direct and base in BENCHMARKS else base
        out.append(f"{full}|0")
    return ",".join(out)


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(?:/[A-Za-z0-9][\w.-]*)?")


def model_problem(model: str) -> str | None:
    """Why ``model`` (a local folder or a Hub id) cannot be loaded, when that is plain without loading it."""
    from eval_tasks._offline import offline

    if Path(model).expanduser().exists():
        return None
    if not _HUB_ID.fullmatch(model):
        return f"model path {model} not found"
    if offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model, "config.json"), str):
            return (f"model {model}: no such local folder, and not in the Hugging Face cache "
                    "(HF_HUB_OFFLINE is set)")
    return None


def check_inputs(tasks: str, data_dir: str | None, protocol: str) -> None:
    """Everything a run reads that can be missing, checked before the heavy stack loads: the benchmarks' data
    (:class:`eval_tasks.catalog.DataUnavailable`) and, under ``authors``, the authors' files
    (:class:`eval_tasks.protocols.AuthorsFilesUnavailable`)."""
    from eval_tasks._offline import check_data
    from eval_tasks.protocols import check_authors_files, get

    check_data([t for t in tasks.split(",") if t.strip()], data_dir, protocol)
    if get(protocol).name == "authors":
        check_authors_files()


def run_eval(model: str, tasks: str, *, output_dir: str, data_dir: str | None = None, max_samples: int | None = None,
             save_details: bool = False, engine: object = None, settings: dict[str, Any] | None = None,
             protocol: str = "authors") -> dict:
    """Build lighteval's Pipeline with :class:`eval_tasks.model.LPTEngineModel` and our tasks; return results.

    ``tasks`` is a lighteval task string (``"lpt_vstar|0,lpt_mmvp|0"``); ``protocol`` is ``authors`` or
    ``project`` (:mod:`eval_tasks.protocols`). ``settings`` (see :func:`eval_tasks.model.engine_settings`)
    default to the ``LPT_*`` variables. ``engine`` replaces the engine that the settings would load (tests pass a
    ready one). Raises :class:`eval_tasks.catalog.DataUnavailable` or
    :class:`eval_tasks.protocols.AuthorsFilesUnavailable` (before loading anything heavy) when an input is
    missing, and :class:`ModelUnavailable` when the model cannot be loaded.
    """
    check_inputs(tasks, data_dir, protocol)
    from eval_tasks._offline import prepare_lighteval

    prepare_lighteval()
    from lighteval.logging.evaluation_tracker import EvaluationTracker
    from lighteval.models.custom.custom_model import CustomModelConfig
    from lighteval.pipeline import ParallelismManager, Pipeline, PipelineParameters

    from eval_tasks import model as model_module
    from eval_tasks.tasks import tasks_module

    settings = settings if settings is not None else model_module.engine_options_from_env()
    config = CustomModelConfig(model_name=model, model_definition_file_path=model_module.__file__)
    try:
        lm = model_module.LPTEngineModel(config, engine=engine, settings=settings)
    except OSError as e:  # transformers: "… is not a local folder and is not a valid model identifier …"
        raise ModelUnavailable(f"model {model}: {str(e).strip().splitlines()[0]}") from e
    pipeline = Pipeline(
        tasks=tasks,
        pipeline_parameters=PipelineParameters(launcher_type=ParallelismManager.CUSTOM,
                                               custom_tasks_directory=tasks_module(
                                                   data_dir, settings["max_pixels"], protocol, max_samples),
                                               max_samples=max_samples),
        evaluation_tracker=EvaluationTracker(output_dir=output_dir, save_details=save_details),
        model=lm,
    )
    pipeline.evaluate()
    pipeline.save_and_push_results()
    return pipeline.get_results()


# ----------------------------------------------------------------------------------------------- report


def _notes(task: str, bench: str, metrics: dict[str, float]) -> list[str]:
    notes = []
    if bench == "lpt_cvbench" and "acc_cvbench_official" not in metrics:
        notes.append(f"{task}: CV-Bench's official formula (acc_cvbench_official) skipped: it needs items from "
                     "every source (ADE20K, COCO, Omni3D), and this run lacked some (--max-samples?)")
    if bench == "lpt_mmvp" and "acc_pair" not in metrics:
        notes.append(f"{task}: MMVP pair accuracy (acc_pair) skipped: no question was scored together with its "
                     "pair (--max-samples?)")
    if metrics.get("skipped"):
        reasons = ", ".join(f"{k.removeprefix('skipped_')} {int(v)}" for k, v in sorted(metrics.items())
                            if k.startswith("skipped_"))
        notes.append(f"{task}: {int(metrics['skipped'])} row(s) could not be parsed and were left out ({reasons}; "
                     "the details name each row)")
    return notes


def summary_lines(results: dict[str, dict[str, float]]) -> list[str]:
    """A compact table per task (%): ``acc_macro`` (our matcher) and ``acc_macro_authors`` (the authors' rule) from
    the same generations, next to the paper's Qwen2.5-VL-7B; then the protocol, and what was not computed and why.
    ``results``: lighteval's ``results`` (keys like ``"lpt_vstar|0"``)."""
    from builder.answers import MATCHER_VERSION
    from eval_tasks.catalog import base_name, paper_scores, titles

    paper_of, title_of = paper_scores(), titles()
    rows, notes, protocols_seen = [], [], set()
    for key, metrics in results.items():
        task = key.split("|")[0].split(":")[0]
        bench = base_name(task)
        if bench not in title_of or "acc_macro" not in metrics:
            continue
        paper = paper_of.get(bench)
        authors = metrics.get("acc_macro_authors")
        rows.append((title_of[bench], task, f"{100 * metrics['acc_macro']:.2f}",
                     "n/a" if authors is None else f"{100 * authors:.2f}", "n/a" if paper is None else f"{paper:.2f}"))
        protocols_seen |= {k.removeprefix("protocol_") for k in metrics if k.startswith("protocol_")}
        notes += _notes(task, bench, metrics)
    if not rows:
        return []
    order = list(title_of.values())
    rows.sort(key=lambda r: (order.index(r[0]), r[1]))
    head = ("benchmark", "task", f"acc_macro % (matcher v{MATCHER_VERSION})", "acc_macro_authors %",
            "paper Qwen2.5-VL-7B %")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    protocol = f"protocol: {', '.join(sorted(protocols_seen)) or 'unknown'} (paper comparisons: acc_macro_authors " \
               "under the authors protocol)"
    return [fmt.format(*head), *(fmt.format(*r) for r in rows), protocol, *notes]


def _engine_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    extra = {}
    for kv in pairs:
        key, sep, value = kv.partition("=")
        if not sep:
            raise click.BadParameter(f"{kv!r} is not KEY=VALUE", param_hint="--engine-option")
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value
    return extra


def _write_samples(out: str, tasks: str) -> None:
    from eval_tasks.catalog import base_name
    from eval_tasks.samples import WRITERS, write_sample_data

    chosen = list(WRITERS) if tasks.strip() == ALL else list(dict.fromkeys(base_name(t) for t in tasks.split(",")))
    write_sample_data(out, tasks=chosen)
    click.echo(f"wrote offline stand-ins (up to 4 items each, flat-colour images) for {', '.join(chosen)} to {out}")
    click.echo(f"use them with: lpt eval MODEL --data-dir {out}   (lighteval custom: LPT_EVAL_DATA_DIR={out})")


@click.command("eval")
@click.argument("model", required=False)
@click.option("--tasks", default=ALL, show_default=True,
              help="Comma-separated: lpt_vstar, lpt_cvbench, lpt_mmvp, lpt_mmstar_v, lpt_mme_rw_v, lpt_realworldqa, "
                   "lpt_mmlu_pro (or 'all').")
@click.option("--direct", is_flag=True, help="Use the direct-answer prompt (the tasks' _direct variants).")
@click.option("--protocol", type=click.Choice(["authors", "project"]), default="authors", show_default=True,
              help="authors: the authors' prompts, 2048 new tokens, their benchmark copies (comparable with the "
                   "paper); project: our prompts, budgets and corrected copies (docs/method.md).")
@click.option("--engine", default="auto", show_default=True,
              help="auto | transformers | vllm (or module:Class of another builder.engines.Engine).")
@click.option("--dtype", default=None, help="e.g. bfloat16 (default: the engine's).")
@click.option("--batch-size", type=int, default=None, help="Requests per batch (transformers engine).")
@click.option("--max-pixels", type=int, default=512 * 512, show_default=True, help="Cap on each image's area.")
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy (the paper).")
@click.option("--max-new-tokens", type=int, default=None,
              help="Upper bound on new tokens (smoke runs); default: the protocol's (authors: 2048; project: 1024, "
                   "2048 for MMLU-Pro).")
@click.option("--engine-option", "engine_options", multiple=True, metavar="KEY=VALUE",
              help="Extra engine option (JSON value), repeatable, e.g. tensor_parallel_size=2.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Folder with local copies, one sub-folder per task (else the Hub).")
@click.option("--sample-data", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Write tiny offline stand-ins of the --tasks to DIR (for --data-dir) and exit.")
@click.option("--output-dir", default="eval_results", show_default=True)
@click.option("--max-samples", type=int, default=None, help="Only this many items per task (partial scores).")
@click.option("--save-details", is_flag=True, help="Also write per-item details (parquet; holds the images).")
def eval_cmd(model: str | None, tasks: str, direct: bool, protocol: str, engine: str, dtype: str | None,
             batch_size: int | None, max_pixels: int, temperature: float, max_new_tokens: int | None, engine_options: tuple[str, ...],
             data_dir: str | None, sample_data: str | None, output_dir: str, max_samples: int | None,
             save_details: bool) -> None:
    """Score MODEL (Hub id or local path) on the paper's benchmarks with lighteval."""
    from eval_tasks._offline import prepare_lighteval, quiet_lighteval

    task_list = _task_list(tasks, direct)
    if sample_data:
        _write_samples(sample_data, tasks)
        return
    if not model:
        raise click.UsageError("missing MODEL (a Hub id or a local folder)")
    if engine in WEIGHT_ENGINES and (why := model_problem(model)):
        raise click.ClickException(why)
    from eval_tasks.catalog import DataUnavailable
    from eval_tasks.protocols import AuthorsFilesUnavailable

    try:  # before the heavy imports: a missing input is one line within seconds
        check_inputs(task_list, data_dir, protocol)
    except (DataUnavailable, AuthorsFilesUnavailable) as e:
        raise click.ClickException(str(e)) from None
    ctx = click.get_current_context()
    if not (ctx.find_root().params.get("verbose") or 0):
        import datasets

        datasets.disable_progress_bars()
    prepare_lighteval()
    quiet_lighteval()
    from eval_tasks.model import engine_settings

    settings = engine_settings(engine, dtype=dtype, batch_size=batch_size, max_pixels=max_pixels,
                               engine_options=_engine_options(engine_options), temperature=temperature,
                               max_new_tokens=max_new_tokens)
    before = set(Path(output_dir).glob("results/**/results_*.json"))
    try:
        res = run_eval(model, task_list, output_dir=str(Path(output_dir)), data_dir=data_dir,
                       max_samples=max_samples, save_details=save_details, settings=settings, protocol=protocol)
    except (DataUnavailable, AuthorsFilesUnavailable, ModelUnavailable) as e:
        raise click.ClickException(str(e)) from None
    written = sorted(set(Path(output_dir).glob("results/**/results_*.json")) - before)
    for line in summary_lines(res.get("results", {})):
        click.echo(line)
    if written:
        click.echo(f"results: {written[-1]}")


__all__ = ["ModelUnavailable", "check_inputs", "eval_cmd", "model_problem", "run_eval", "summary_lines"]
