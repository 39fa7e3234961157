"""GSM8K few-shot exact match as an evaluation task, following the lm-evaluation-harness ``gsm8k`` task conventions.

Extraction and prompts are plain functions (also used by the offline `evaluate` metric in `metrics/`); `GSM8KTask` is
the task the runner and the CLI use; `evaluate_gsm8k` runs it with GSM8K's defaults (5-shot, Hub `openai/gsm8k`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from optimum_rku.data.gsm8k import GSM8K_CONFIG, GSM8K_HUB_ID, GSM8K_SPLITS
from optimum_rku.data.prompts import PROMPT_TEMPLATE
from optimum_rku.evaluation.results import EvaluationResult
from optimum_rku.evaluation.task import EvaluationTask, Metric

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict


AnswerMode = Literal["strict", "flexible"]

FEWSHOT_DELIMITER = "\n\n"
TARGET_DELIMITER = " "
STRICT_PATTERN = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE_PATTERN = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_MODES: tuple[str, ...] = ("strict", "flexible")
_REFERENCE_PREFIX = re.compile(r"(?s).*#### ")
_TRAILING_PERIOD = re.compile(r"\.$")


# --------------------------------------------------------------------------------------------------------------------
# Answer extraction and scoring
# --------------------------------------------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """Normalize an answer like the harness exact_match (drop commas, ``$``, text up to ``#### ``, trailing period)."""
    text = text.strip().replace(",", "").replace("$", "")
    text = _REFERENCE_PREFIX.sub("", text)
    text = _TRAILING_PERIOD.sub("", text.strip())
    return text.strip().lower()


def _check_mode(mode: str) -> None:
    """Reject unknown extraction modes early with the allowed values."""
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")


def extract_answer(completion: str, mode: AnswerMode = "strict") -> str | None:
    """Extract the normalized final answer: strict = first ``#### N``, flexible = last number; None when absent."""
    _check_mode(mode)
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str, got {type(completion).__name__}")
    if mode == "strict":
        match = STRICT_PATTERN.search(completion)
        raw = match.group(1) if match else None
    else:
        matches = FLEXIBLE_PATTERN.findall(completion)
        raw = next((group for group in matches[-1] if group), None) if matches else None
    if raw is None:
        return None
    normalized = normalize_answer(raw)
    return normalized or None


def _reference_target(reference_answer: str) -> str:
    """Return the normalized gold number of a full GSM8K answer (``... #### N``) or of a bare number."""
    if not isinstance(reference_answer, str):
        raise TypeError(f"reference_answer must be a str, got {type(reference_answer).__name__}")
    return normalize_answer(reference_answer)


def is_correct(completion: str, reference_answer: str, mode: AnswerMode = "strict") -> bool:
    """Score one completion against a GSM8K reference (full ``#### N`` answer or bare ``N``) by exact match."""
    predicted = extract_answer(completion, mode)
    return predicted is not None and predicted == _reference_target(reference_answer)


# --------------------------------------------------------------------------------------------------------------------
# Prompt construction
# --------------------------------------------------------------------------------------------------------------------


def format_question(question: str) -> str:
    """Render a question as the harness ``doc_to_text`` (``Question: {q}\\nAnswer:``)."""
    return PROMPT_TEMPLATE.format(question=question)


def _format_example(example: Mapping[str, str]) -> str:
    """Render a solved few-shot example as ``doc_to_text + target_delimiter + full worked answer``."""
    return format_question(example["question"]) + TARGET_DELIMITER + example["answer"]


def build_prompt(question: str, fewshot_examples: Sequence[Mapping[str, str]] = ()) -> str:
    """Build the plain-text few-shot prompt exactly as the harness does (examples joined by blank lines)."""
    context = "".join(_format_example(example) + FEWSHOT_DELIMITER for example in fewshot_examples)
    return context + format_question(question)


def build_chat_messages(question: str, fewshot_examples: Sequence[Mapping[str, str]] = ()) -> list[dict[str, str]]:
    """Build the multi-turn chat (user question / assistant worked answer) used with ``apply_chat_template``."""
    messages: list[dict[str, str]] = []
    for example in fewshot_examples:
        messages.append({"role": "user", "content": format_question(example["question"])})
        messages.append({"role": "assistant", "content": example["answer"]})
    messages.append({"role": "user", "content": format_question(question)})
    return messages


# --------------------------------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------------------------------


class GSM8KResult(EvaluationResult):
    """A GSM8K result: `exact_match_strict` and `exact_match_flexible` (also in `metrics`), settings and samples."""

    def __init__(
        self,
        *,
        exact_match_strict: float | None = None,
        exact_match_flexible: float | None = None,
        metrics: dict[str, float] | None = None,
        task: str = "gsm8k",
        **fields: Any,
    ) -> None:
        metrics = dict(metrics or {})
        for key, value in (("exact_match_strict", exact_match_strict), ("exact_match_flexible", exact_match_flexible)):
            if value is not None:
                metrics[key] = value
        super().__init__(task=task, metrics=metrics, **fields)


class GSM8KTask(EvaluationTask):
    """GSM8K: `Question: ... Answer:` prompts, greedy until `Question:`, exact match of the strict / flexible number."""

    name = "gsm8k"
    title = "GSM8K"
    fields = ("question", "answer")
    metrics = (
        Metric("exact_match_strict", "correct_strict", "exact match, strict-match"),
        Metric("exact_match_flexible", "correct_flexible", "exact match, flexible-extract"),
    )
    default_num_fewshot = 5
    hub_config = GSM8K_CONFIG
    hub_splits = GSM8K_SPLITS
    result_class = GSM8KResult
    card_notes = (
        "Greedy decoding, `Question: ... Answer:` prompts, generation stops at `Question:`; strict-match reads the "
        "number after `####`, flexible-extract the last number of the completion (lm-evaluation-harness `gsm8k`)."
    )

    def prompt(self, row: Mapping[str, str], shots: Sequence[Mapping[str, str]], tokenizer: Any, chat: bool) -> str:
        if chat:
            messages = build_chat_messages(row["question"], shots)
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return build_prompt(row["question"], shots)

    def score(self, row: Mapping[str, str], completion: str) -> dict[str, Any]:
        target = _reference_target(row["answer"])
        strict, flexible = extract_answer(completion, "strict"), extract_answer(completion, "flexible")
        return {
            "extracted_strict": strict,
            "extracted_flexible": flexible,
            "target": target,
            "correct_strict": strict is not None and strict == target,
            "correct_flexible": flexible is not None and flexible == target,
        }


def evaluate_gsm8k(
    model: Any,
    tokenizer: Any,
    dataset: str | os.PathLike[str] | Dataset | DatasetDict | Sequence[Mapping[str, str]] = GSM8K_HUB_ID,
    split: str = "test",
    num_fewshot: int = 5,
    **options: Any,
) -> GSM8KResult:
    """Run harness-compatible few-shot GSM8K (greedy, stop at ``Question:``) and score strict/flexible exact match.

    `options` are those of `optimum_rku.evaluation.runner.evaluate`: `limit`, `batch_size` (32), `max_new_tokens`
    (256), `apply_chat_template`, `output_path`, `fewshot_seed`, `fewshot_split`, `progress`, `fewshot_examples`,
    `generation_loop`.
    """
    from optimum_rku.evaluation.runner import evaluate

    return evaluate(model, tokenizer, "gsm8k", dataset, split=split, num_fewshot=num_fewshot, **options)
