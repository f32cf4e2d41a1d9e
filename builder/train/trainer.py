"""``lpt train sft|dpo`` on TRL: the model and its processor, the trainer, the run summary.

The model is loaded as a vision-language model with its processor
(:func:`builder.engines.hf_processors.load_processor`: a plain ``AutoProcessor`` of a saved Qwen2.5-VL without
torchvision is only its tokenizer, and TRL would then train the model on text alone). Images are capped with
:func:`builder.engines.base.cap_pixels` before the processor, as the evaluation does. The vision tower and the
projector are frozen (the authors' configs). bf16 on a GPU; on a machine without one, float32 on the CPU.
TRL's ``checkpoint-N`` folders in the output are picked up by a rerun. The finished model (LoRA merged) and its
processor are written into the output folder, ``config.json`` last, so the folder loads in ``lpt eval``
(transformers or vLLM) and as ``lpt train dpo``'s model.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.atomic import atomic_write, write_json
from builder.engines.base import cap_pixels
from builder.train.data import DEFAULT_PROTOCOL, TrainError, export_folder, load_rows
from builder.train.recipe import RECIPES, Recipe

log = logging.getLogger(__name__)
VISION_PARTS = ("visual.", "vision_tower", "multi_modal_projector", "vision_model")
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
SUMMARY, LOSS_PNG = "train_summary.json", "loss.png"


@dataclass
class Options:
    """What ``lpt train`` was asked for beside the recipe."""

    protocol: str = DEFAULT_PROTOCOL
    text_only: bool = False
    max_steps: int | None = None
    max_rows: int | None = None
    lora_r: int | None = None  # None: full fine-tuning of the language model
    resume: bool = True
    progress: bool = True


@dataclass
class BatchStats:
    """What reached the model, counted by the collator: batches, batches with pixel values, tokens, labelled tokens."""

    batches: int = 0
    with_pixels: int = 0
    tokens: int = 0
    labelled: int = 0
    examples: list = field(default_factory=list, repr=False)  # the first collated batch, for tests and the curious


class CountingCollator:
    """Wraps TRL's collator: caps each image's area first, then counts what each batch carries."""

    def __init__(self, inner: Any, max_pixels: int, stats: BatchStats) -> None:
        self.inner, self.max_pixels, self.stats = inner, max_pixels, stats

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        for ex in examples:
            if ex.get("images"):
                ex["images"] = [cap_pixels(im.convert("RGB"), self.max_pixels) for im in ex["images"]]
        batch = self.inner(examples)
        s = self.stats
        s.batches += 1
        s.with_pixels += int(batch.get("pixel_values") is not None)
        s.tokens += int(batch["attention_mask"].sum())
        if "labels" in batch:
            s.labelled += int((batch["labels"] != -100).sum())
        elif "completion_mask" in batch:
            s.labelled += int(batch["completion_mask"].sum())
        if not s.examples:
            s.examples.append(batch)
        return batch


# ------------------------------------------------------------------------------------------------ model


def model_problem(model: str) -> str | None:
    """Why ``model`` cannot be a training model, when that is plain without loading weights."""
    p = Path(model).expanduser()
    if p.exists():
        return None if (p / "config.json").is_file() else f"model path {model} has no config.json"
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        return f"model path {model} not found"
    return None  # a Hub id: transformers says the rest


def load_model(model: str, text_only: bool, use_gpu: bool) -> tuple[Any, Any, bool]:
    """(model, processor or tokenizer, is_vlm) of ``model``; a text model asked to train with images is refused."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    if why := model_problem(model):
        raise TrainError(why)
    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as e:
        raise TrainError(f"model {model}: {str(e).splitlines()[0]}") from None
    is_vlm = getattr(config, "vision_config", None) is not None
    if not is_vlm and not text_only:
        raise TrainError(f"model {model} ({config.model_type}) is not a vision-language model: pass --text-only "
                         f"to train it on the text of the rows, or give a VLM (e.g. Qwen/Qwen2.5-VL-7B-Instruct)")
    dtype = torch.bfloat16 if use_gpu else torch.float32
    cls = AutoModelForImageTextToText if is_vlm else AutoModelForCausalLM
    net = cls.from_pretrained(model, dtype=dtype)
    if is_vlm and not text_only:
        from builder.engines.hf_processors import load_processor

        return net, load_processor(model, config.model_type), True
    return net, AutoTokenizer.from_pretrained(model), is_vlm


def freeze_vision(net: Any) -> int:
    """Freeze the vision tower and the projector; the number of parameters frozen."""
    n = 0
    for name, p in net.named_parameters():
        if any(part in name for part in VISION_PARTS):
            p.requires_grad_(False)
            n += p.numel()
    return n


def lora_config(r: int, is_vlm: bool) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.05, task_type="CAUSAL_LM",
                      target_modules=LORA_TARGETS if is_vlm else "all-linear")


# ---------------------------------------------------------------------------------------------- trainer


def trl_args(stage: str, recipe: Recipe, output: Path, opts: Options, use_gpu: bool) -> Any:
    """TRL's SFTConfig / DPOConfig from the recipe."""
    import trl

    logging_steps = recipe.logging_steps
    if opts.max_steps:
        logging_steps = max(1, min(logging_steps, opts.max_steps // 3))
    common = dict(
        output_dir=str(output), learning_rate=recipe.learning_rate, num_train_epochs=recipe.num_train_epochs,
        per_device_train_batch_size=recipe.per_device_train_batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps, lr_scheduler_type=recipe.lr_scheduler_type,
        warmup_steps=recipe.warmup_steps, max_length=recipe.max_length, logging_steps=logging_steps,
        save_steps=recipe.save_steps, **{_checkpointing_field(trl.SFTConfig): recipe.gradient_checkpointing and use_gpu},
        bf16=use_gpu, use_cpu=not use_gpu, report_to=[], max_steps=opts.max_steps or -1,
        disable_tqdm=not opts.progress, dataloader_num_workers=0, remove_unused_columns=False, **recipe.extra)
    if stage == "sft":
        return trl.SFTConfig(**common, completion_only_loss=True)
    return trl.DPOConfig(**common, beta=recipe.beta, loss_type=list(recipe.loss_type),
                         loss_weights=list(recipe.loss_weights))


def _checkpointing_field(config_class: type) -> str:
    """transformers 5.24 renamed ``gradient_checkpointing`` to ``activation_checkpointing`` (the old name warns);
    the GPU set's older transformers has only the old one."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(config_class)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def build_trainer(stage: str, source: Path, model: str, output: Path, recipe: Recipe, opts: Options) -> Any:
    """A ready TRL trainer (rows loaded, model and processor loaded, collator wrapped); ``.lpt_stats`` counts."""
    import torch
    import trl

    use_gpu = torch.cuda.is_available()
    rows = load_rows(source, stage, protocol=opts.protocol, text_only=opts.text_only, max_rows=opts.max_rows)
    net, processing, is_vlm = load_model(model, opts.text_only, use_gpu)
    if is_vlm and recipe.freeze_vision:
        freeze_vision(net)
    args = trl_args(stage, recipe, output, opts, use_gpu)
    peft = lora_config(opts.lora_r, is_vlm) if opts.lora_r else None
    cls = trl.SFTTrainer if stage == "sft" else trl.DPOTrainer
    trainer = cls(model=net, args=args, train_dataset=rows, processing_class=processing, peft_config=peft)
    trainer.lpt_stats = BatchStats()
    trainer.data_collator = CountingCollator(trainer.data_collator, recipe.image_max_pixels, trainer.lpt_stats)
    trainer.lpt_processing = processing
    return trainer


def train(stage: str, source: str | Path, model: str, output: str | Path, recipe: Recipe | None = None,
          opts: Options | None = None) -> dict[str, Any]:
    """Train ``model`` on the ``stage`` rows of ``source`` (exported folder or run directory) into ``output``.

    Returns the summary (also written to ``OUTPUT/train_summary.json``, with ``OUTPUT/loss.png``).
    """
    import torch
    from transformers.trainer_utils import get_last_checkpoint

    recipe, opts, output = recipe or RECIPES[stage], opts or Options(), Path(output)
    with export_folder(source, stage) as out:
        trainer = build_trainer(stage, out, model, output, recipe, opts)
        last = get_last_checkpoint(str(output)) if opts.resume and output.is_dir() else None
        if last:
            log.warning("resuming from %s", last)
        start = time.perf_counter()
        with torch.enable_grad():  # whatever ran before in this process (an evaluation) may have turned it off
            result = trainer.train(resume_from_checkpoint=last)
        seconds = time.perf_counter() - start
    save_final(trainer, output)
    return write_summary(trainer, output, stage, model, recipe, opts, result, seconds, last)


def save_final(trainer: Any, output: Path) -> Path:
    """The trained model (LoRA merged) and its processor into ``output``, ``config.json`` moved in last."""
    tmp = output / f".final.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    net = trainer.model
    if hasattr(net, "merge_and_unload"):
        net = net.merge_and_unload()
    net.save_pretrained(tmp)
    trainer.lpt_processing.save_pretrained(tmp)
    names = sorted(p.name for p in tmp.iterdir())
    for name in [n for n in names if n != "config.json"] + ["config.json"]:
        os.replace(tmp / name, output / name)
    tmp.rmdir()
    return output


def write_summary(trainer: Any, output: Path, stage: str, model: str, recipe: Recipe, opts: Options, result: Any,
                  seconds: float, resumed: str | None) -> dict[str, Any]:
    s: BatchStats = trainer.lpt_stats
    losses = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    summary = {
        "stage": stage, "model": model, "output": str(output), "protocol": opts.protocol,
        "text_only": opts.text_only, "lora_r": opts.lora_r, "device": _device(), "steps": trainer.state.global_step,
        "resumed_from": resumed, "train_loss": result.training_loss, "losses": losses, "seconds": round(seconds, 2),
        "batches": s.batches, "batches_with_images": s.with_pixels, "tokens": s.tokens,
        "labelled_tokens": s.labelled, "tokens_per_second": round(s.tokens / seconds, 1) if seconds else None,
        "rows": len(trainer.train_dataset), "recipe": recipe.as_dict(),
    }
    write_json(output / SUMMARY, summary, indent=2)
    if losses:
        plot_losses(losses, output / LOSS_PNG, f"lpt train {stage}: {Path(model).name}")
    return summary


def plot_losses(losses: list[tuple[int, float]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([s for s, _ in losses], [v for _, v in losses], marker="o" if len(losses) < 30 else None)
    ax.set(xlabel="step", ylabel="training loss", title=title)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


def _device() -> str:
    import torch

    return f"cuda ({torch.cuda.get_device_name(0)}, bf16)" if torch.cuda.is_available() else "cpu (float32)"


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary printed at the end of ``lpt train``."""
    loss = summary["losses"]
    curve = f"{loss[0][1]:.3f} -> {loss[-1][1]:.3f}" if loss else f"{summary['train_loss']:.3f}"
    images = (f"images in {summary['batches_with_images']}/{summary['batches']} batches" if not summary["text_only"]
              else "text only (--text-only)")
    return [
        f"{summary['stage']}: {summary['steps']} steps on {summary['rows']} rows, {summary['device']}, "
        f"{summary['seconds']} s, {summary['tokens_per_second']} tokens/s, loss {curve}",
        f"{images}; {summary['labelled_tokens']}/{summary['tokens']} tokens labelled (assistant turn only); "
        f"protocol {summary['protocol']}" + (f"; resumed from {summary['resumed_from']}" if summary["resumed_from"]
                                              else ""),
        f"model: {summary['output']}  (summary: {SUMMARY}, loss curve: {LOSS_PNG})",
    ]


__all__ = ["BatchStats", "CountingCollator", "Options", "build_trainer", "freeze_vision", "load_model",
           "model_problem", "save_final", "summary_lines", "train"]
