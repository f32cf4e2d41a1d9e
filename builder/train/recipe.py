"""The default training recipe: the hyper-parameters of the authors' released training configs.

Source: ``config/llama_factory_sft_train_config.yaml`` and ``config/llama_factory_dpo_train_config.yaml`` of
github.com/andrewliao11/LongPerceptualThoughts at commit :data:`AUTHORS_COMMIT` (LLaMA-Factory configs; the
numbers are read from there and mapped onto TRL's names, nothing else is taken). They ran on 4 A40s (the
authors' README), so the global batch there was 4 x per-device 1 x accumulation 1.

The paper's appendix (F.2) names other numbers (global batch 256, LR sweeps, DPO beta 1 with an SFT-loss weight
of 0.5); the README's training section lists both. Every field can be changed from ``lpt train`` flags.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

AUTHORS_COMMIT = "ab1a9a02632e05f7f831907533293c9dbdca54c2"
AUTHORS_CONFIGS = {
    "sft": f"https://github.com/andrewliao11/LongPerceptualThoughts/blob/{AUTHORS_COMMIT}/config/"
           "llama_factory_sft_train_config.yaml",
    "dpo": f"https://github.com/andrewliao11/LongPerceptualThoughts/blob/{AUTHORS_COMMIT}/config/"
           "llama_factory_dpo_train_config.yaml",
}


@dataclass(frozen=True)
class Recipe:
    """One stage's hyper-parameters (TRL / transformers names); ``replace(recipe, learning_rate=…)`` to change one."""

    stage: str
    learning_rate: float = 1e-5            # learning_rate: 0.00001
    num_train_epochs: float = 1.0          # num_train_epochs: 1
    per_device_train_batch_size: int = 1   # per_device_train_batch_size: 1
    gradient_accumulation_steps: int = 1   # gradient_accumulation_steps: 1
    lr_scheduler_type: str = "cosine"      # lr_scheduler_type: cosine
    warmup_steps: int = 5                  # warmup_steps: 5
    max_length: int = 2048                 # cutoff_len: 2048
    image_max_pixels: int = 512 * 512      # image_max_pixels: 262144
    gradient_checkpointing: bool = True    # gradient_checkpointing: true
    freeze_vision: bool = True             # freeze_vision_tower + freeze_multi_modal_projector: True
    logging_steps: int = 5                 # logging_steps: 5
    save_steps: int = 50                   # save_steps: 50
    beta: float = 0.2                      # DPO: pref_beta: 0.2
    loss_type: tuple[str, ...] = ("sigmoid", "sft")  # DPO: pref_loss: sigmoid, plus the SFT term of pref_ftx
    loss_weights: tuple[float, ...] = (1.0, 1.0)     # DPO: pref_ftx: 1.0
    extra: dict[str, Any] = field(default_factory=dict)  # more TrainingArguments, as given

    def with_overrides(self, **changes: Any) -> "Recipe":
        """A copy with the given fields changed (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


SFT_RECIPE = Recipe("sft")
DPO_RECIPE = Recipe("dpo")
RECIPES = {"sft": SFT_RECIPE, "dpo": DPO_RECIPE}

__all__ = ["AUTHORS_COMMIT", "AUTHORS_CONFIGS", "DPO_RECIPE", "RECIPES", "Recipe", "SFT_RECIPE"]
