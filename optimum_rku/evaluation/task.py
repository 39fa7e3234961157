"""The evaluation task protocol: what a task decides (prompts, generation settings, answer extraction, scoring, how a
card shows it); `runner.evaluate` does the rest (loading, few-shot sampling, batched generation, aggregation).

Adding a task is one file with an `EvaluationTask` subclass plus a line in `registry.TASKS`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from optimum_rku.data.prompts import STOP_STRINGS
from optimum_rku.evaluation.results import EvaluationResult


@dataclass(frozen=True)
class Metric:
    """One reported number: the mean of a per-sample value, its result key, its card label and model-index type."""

    key: str
    sample_key: str
    label: str
    type: str = "exact_match"


class EvaluationTask:
    """One evaluation task. Subclasses set the class attributes and implement `prompt` and `score`."""

    #: registry name, recorded in every result (`"task"`)
    name: str = ""
    #: how cards and tables name it
    title: str = ""
    #: what every problem row holds (strings)
    fields: tuple[str, ...] = ("question", "answer")
    #: the numbers a result reports
    metrics: tuple[Metric, ...] = ()
    #: few-shot examples per prompt unless asked otherwise
    default_num_fewshot: int = 0
    #: generation: greedy, cut at these strings (and eos)
    stop_strings: tuple[str, ...] = STOP_STRINGS
    max_new_tokens: int = 256
    #: Hub datasets of this task load with this config, and only these splits exist there
    hub_config: str | None = None
    hub_splits: tuple[str, ...] = ("train", "test")
    #: how the card describes the way the task was run
    card_notes: str = ""
    #: the result type `runner.evaluate` returns (a subclass may name its metrics as constructor arguments)
    result_class: type[EvaluationResult] = EvaluationResult

    def prompt(self, row: Mapping[str, str], shots: Sequence[Mapping[str, str]], tokenizer: Any, chat: bool) -> str:
        """The text the model continues: plain few-shot text, or (with `chat`) the tokenizer's chat template."""
        raise NotImplementedError

    def score(self, row: Mapping[str, str], completion: str) -> dict[str, Any]:
        """Per-sample fields for one completion: what was extracted, the target, and every metric's `sample_key`."""
        raise NotImplementedError

    def describe(self, row: Mapping[str, str]) -> dict[str, Any]:
        """What a per-sample record repeats of its problem (the question)."""
        return {self.fields[0]: row[self.fields[0]]}

    def samples_file(self) -> str:
        """File name of the per-sample jsonl written next to a checkpoint."""
        return f"{self.name}_samples.jsonl"

    def card_dataset(self, description: str) -> dict[str, Any]:
        """Model-index dataset fields for problems the user supplied (not a data provider's own set)."""
        name = description.replace("\\", "/").rstrip("/").split("/")[-1] or "custom"
        return {
            "dataset_type": "custom",
            "dataset_name": f"{self.title}-format problems ({name})",
            "dataset_config": None,
        }
