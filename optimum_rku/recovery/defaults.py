"""Recovery's default settings, in a module of their own (no torch) so a model card can name them when it rebuilds a
`recover` command line without importing the trainer. The distillation defaults live in `optimum_rku.config`, which
the command line reads without importing this package."""

from __future__ import annotations

from typing import Any

from optimum_rku.config import DEFAULT_DISTILLATION_ALPHA, DEFAULT_DISTILLATION_TEMPERATURE

__all__ = ["DEFAULT_DISTILLATION_ALPHA", "DEFAULT_DISTILLATION_TEMPERATURE", "DEFAULT_LORA", "DEFAULT_TRAINING_ARGS"]

DEFAULT_LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05}
DEFAULT_TRAINING_ARGS: dict[str, Any] = {
    "max_steps": 200,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "learning_rate": 2e-4,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.05,
    "weight_decay": 0.0,
    "logging_steps": 10,
    "save_strategy": "no",
    "report_to": "none",
    "seed": 2016,
    "remove_unused_columns": False,
}
