"""The evaluation task registry: a task name -> the class that defines it (imported when first asked for)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from optimum_rku.evaluation.task import EvaluationTask

#: task name -> "module:Class"; adding a task is a file plus a line here
TASKS: dict[str, str] = {
    "gsm8k": "optimum_rku.evaluation.gsm8k:GSM8KTask",
    "gsm8k_cot_boxed": "optimum_rku.evaluation.gsm8k_cot:GSM8KBoxedTask",
}
#: what results written before tasks were recorded are
DEFAULT_TASK = "gsm8k"
_LOADED: dict[str, EvaluationTask] = {}


def available_tasks() -> list[str]:
    """Names of every registered task."""
    return sorted(TASKS)


def get_task(name: str | EvaluationTask | None = None) -> EvaluationTask:
    """The task registered as `name` (default: GSM8K), or the one given."""
    if isinstance(name, EvaluationTask):
        return name
    name = DEFAULT_TASK if name is None else name
    if name not in TASKS:
        raise ValueError(f"Unknown evaluation task {name!r}; allowed: {', '.join(map(repr, available_tasks()))}.")
    if name not in _LOADED:
        module, _, attribute = TASKS[name].partition(":")
        _LOADED[name] = getattr(importlib.import_module(module), attribute)()
    return _LOADED[name]


def task_of(result: Mapping[str, Any]) -> EvaluationTask:
    """The task a result dict (or `eval_results.json`) was produced by."""
    return get_task(result.get("task") or DEFAULT_TASK)
