"""Recovery's default settings, in a module of their own (no torch, no other import) so a model card can name them
when it rebuilds a `recover` command line without importing the trainer."""

from __future__ import annotations

from typing import Any

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

#: weight of the KL term and softmax temperature of distillation from the dense model
DEFAULT_DISTILLATION_ALPHA, DEFAULT_DISTILLATION_TEMPERATURE = 0.5, 1.0
