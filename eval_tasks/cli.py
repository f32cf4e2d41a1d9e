"""``lpt eval``: score a model on the paper's benchmarks with lighteval, our tasks and our custom model.

Equivalent to ``lighteval custom MODEL eval_tasks/model.py "lpt_vstar|0,…" --custom-tasks eval_tasks.tasks``,
with the engine options as flags instead of ``LPT_*`` variables and the offline fixes applied first.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

ALL = "all"


def _task_list(tasks: str, direct: bool) -> str:
    from eval_tasks.tasks import BENCHMARKS, task_name

    names = list(BENCHMARKS) if tasks.strip() == ALL else [t.strip() for t in tasks.split(",") if t.strip()]
    out = []
    for name in names:
        base = name.split("|")[0]
        if base not in BENCHMARKS and not base.endswith("_direct"):
            raise click.BadParameter(f"unknown task {name!r}; choose from {sorted(BENCHMARKS)} or 'all'",
                                     param_hint="--tasks")
        full = task_name(base, "direct") if direct and base in BENCHMARKS else base
        out.append(f"{full}|0")
    return ",".join(out)


def run_eval(model: str, tasks: str, *, output_dir: str, data_dir: str | None = None, max_samples: int | None = None,
             save_details: bool = False, engine: object = None) -> dict:
    """Build lighteval's Pipeline with :class:`eval_tasks.model.LPTEngineModel` and our tasks; return results.

    ``tasks`` is a lighteval task string (``"lpt_vstar|0,lpt_mmvp|0"``). ``engine`` replaces the engine that
    ``LPT_ENGINE`` would load (tests pass a ready one). Engine options are read from the ``LPT_*`` variables.
    """
    from eval_tasks._offline import prepare_lighteval

    prepare_lighteval()
    from lighteval.logging.evaluation_tracker import EvaluationTracker
    from lighteval.models.custom.custom_model import CustomModelConfig
    from lighteval.pipeline import ParallelismManager, Pipeline, PipelineParameters

    from eval_tasks import model as model_module
    from eval_tasks.tasks import tasks_module

    config = CustomModelConfig(model_name=model, model_definition_file_path=model_module.__file__)
    lm = model_module.LPTEngineModel(config, engine=engine)
    pipeline = Pipeline(
        tasks=tasks,
        pipeline_parameters=PipelineParameters(launcher_type=ParallelismManager.CUSTOM,
                                               custom_tasks_directory=tasks_module(data_dir),
                                               max_samples=max_samples),
        evaluation_tracker=EvaluationTracker(output_dir=output_dir, save_details=save_details),
        model=lm,
    )
    pipeline.evaluate()
    pipeline.show_results()
    pipeline.save_and_push_results()
    return pipeline.get_results()


@click.command("eval")
@click.argument("model")
@click.option("--tasks", default=ALL, show_default=True,
              help="Comma-separated: lpt_vstar, lpt_cvbench, lpt_mmvp, lpt_mmstar_v, lpt_mme_rw_v, lpt_realworldqa, "
                   "lpt_mmlu_pro (or 'all').")
@click.option("--direct", is_flag=True, help="Use the direct-answer prompt (the tasks' _direct variants).")
@click.option("--engine", default="auto", show_default=True,
              help="auto | transformers | vllm (or module:Class of another builder.engines.Engine).")
@click.option("--dtype", default=None, help="e.g. bfloat16 (default: the engine's).")
@click.option("--batch-size", type=int, default=None, help="Requests per batch (transformers engine).")
@click.option("--max-pixels", type=int, default=512 * 512, show_default=True, help="Cap on each image's area.")
@click.option("--engine-option", "engine_options", multiple=True, metavar="KEY=VALUE",
              help="Extra engine option (JSON value), repeatable, e.g. tensor_parallel_size=2.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Folder with local copies, one sub-folder per task (else $LPT_EVAL_DATA_DIR, else the Hub).")
@click.option("--output-dir", default="eval_results", show_default=True)
@click.option("--max-samples", type=int, default=None, help="Only this many items per task (partial scores).")
@click.option("--save-details", is_flag=True, help="Also write per-item details (parquet; holds the images).")
def eval_cmd(model: str, tasks: str, direct: bool, engine: str, dtype: str | None, batch_size: int | None,
             max_pixels: int, engine_options: tuple[str, ...], data_dir: str | None, output_dir: str,
             max_samples: int | None, save_details: bool) -> None:
    """Score MODEL (Hub id or local path) on the paper's benchmarks with lighteval."""
    import json

    extra = {}
    for kv in engine_options:
        key, sep, value = kv.partition("=")
        if not sep:
            raise click.BadParameter(f"{kv!r} is not KEY=VALUE", param_hint="--engine-option")
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value
    os.environ["LPT_ENGINE"] = engine
    os.environ["LPT_MAX_PIXELS"] = str(max_pixels)
    for var, value in (("LPT_DTYPE", dtype), ("LPT_BATCH_SIZE", batch_size)):
        if value is not None:
            os.environ[var] = str(value)
    if extra:
        os.environ["LPT_ENGINE_OPTIONS"] = json.dumps(extra)
    data_dir = data_dir or os.environ.get("LPT_EVAL_DATA_DIR")
    run_eval(model, _task_list(tasks, direct), output_dir=str(Path(output_dir)), data_dir=data_dir,
             max_samples=max_samples, save_details=save_details)


__all__ = ["eval_cmd", "run_eval"]
