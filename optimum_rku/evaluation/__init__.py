"""Quality evaluation for pruned reasoning models: tasks (GSM8K exact match), one runner, results.

`task` is the protocol a task implements (prompts, generation settings, extraction, scoring, card metadata) and
`registry` lists the tasks; `runner.evaluate` runs any of them with the shared generation loop of
`optimum_rku.data.generation`; `sources` reads problems; `results` holds what a run returns. `gsm8k` is the GSM8K task.
Names resolve on first access, so reading a task's metadata (cards, pushes) does not import torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

#: Directory of the offline ``evaluate`` metric module; use ``evaluate.load(GSM8K_METRIC_PATH)``.
GSM8K_METRIC_PATH: str = str(Path(__file__).resolve().parent / "metrics" / "gsm8k_exact_match")

_EXPORTS = {
    "DEFAULT_DATASET": ("optimum_rku.data.gsm8k", "GSM8K_HUB_ID"),
    "GSM8K_SPLITS": ("optimum_rku.data.gsm8k", "GSM8K_SPLITS"),
    "STOP_STRINGS": ("optimum_rku.data.prompts", "STOP_STRINGS"),
    "truncate_at_stop": ("optimum_rku.data.generation", "truncate_at_stop"),
    "EvaluationResult": ("optimum_rku.evaluation.results", "EvaluationResult"),
    "EvaluationTask": ("optimum_rku.evaluation.task", "EvaluationTask"),
    "available_tasks": ("optimum_rku.evaluation.registry", "available_tasks"),
    "get_task": ("optimum_rku.evaluation.registry", "get_task"),
    "evaluate": ("optimum_rku.evaluation.runner", "evaluate"),
    **{
        name: ("optimum_rku.evaluation.gsm8k", name)
        for name in (
            "FEWSHOT_DELIMITER",
            "TARGET_DELIMITER",
            "GSM8KResult",
            "GSM8KTask",
            "build_chat_messages",
            "build_prompt",
            "evaluate_gsm8k",
            "extract_answer",
            "format_question",
            "is_correct",
            "normalize_answer",
        )
    },
}


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = ["GSM8K_METRIC_PATH", *_EXPORTS]
