"""GSM8K as chat models are asked it: 0-shot chain of thought, final answer in `\\boxed{}` (Qwen's own prompt).

Instruction-tuned reasoning models (Qwen2.5, Llama-3, ...) answer a GSM8K question step by step in their own format
and never write the harness's `#### N`, so the harness's strict match scores them 0. This task asks the way Qwen's
evaluation does ("Please reason step by step, and put your final answer within \\boxed{}.", through the chat template)
and judges the content of the *last* `\\boxed{...}`: units, `$`, `\\%`, thousands separators and `\\text{...}` are
dropped, then its number is compared with the gold number as a number (`18.00` == `18`). The flexible last-number
match of the harness is reported beside it. One documented choice, applied to every model and row alike.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from optimum_rku.data.gsm8k import GSM8K_CONFIG, GSM8K_SPLITS
from optimum_rku.data.prompts import PROMPT_TEMPLATE
from optimum_rku.evaluation.gsm8k import GSM8KResult, _reference_target, extract_answer
from optimum_rku.evaluation.task import EvaluationTask, Metric

#: appended to every question (Qwen2.5's math evaluation prompt)
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
_BOXED = "\\boxed{"
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_DROPPED = re.compile(r"\\text\{[^{}]*\}|\\mathrm\{[^{}]*\}|\\[$%,!;: ]|[$%,]|\^\{?\\circ\}?|\\left|\\right")


def last_boxed(completion: str) -> str | None:
    """The content of the last `\\boxed{...}` of a completion (braces matched), or None when there is none."""
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str, got {type(completion).__name__}")
    start = completion.rfind(_BOXED)
    if start == -1:
        return None
    depth, position = 1, start + len(_BOXED)
    for index in range(position, len(completion)):
        char = completion[index]
        depth += char == "{"
        depth -= char == "}"
        if depth == 0:
            return completion[position:index]
    return None  # unclosed: cut off by the answer budget


def boxed_number(completion: str) -> str | None:
    """The number of the last boxed answer, normalized (no units, `$`, `%`, separators; `18.50` -> `18.5`)."""
    content = last_boxed(completion)
    if content is None:
        return None
    content = _DROPPED.sub("", content.replace("{,}", ""))
    match = _NUMBER.search(content)
    if match is None:
        return None
    try:
        value = Decimal(match.group(0))
    except InvalidOperation:  # pragma: no cover - the pattern only matches valid decimals
        return None
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def _same_number(predicted: str | None, target: str) -> bool:
    """Whether a predicted number equals the gold number as a number."""
    if predicted is None:
        return False
    try:
        return Decimal(predicted) == Decimal(target)
    except InvalidOperation:
        return False


class GSM8KBoxedTask(EvaluationTask):
    """GSM8K 0-shot chain of thought: the question plus Qwen's boxed-answer instruction, judged on the last box."""

    name = "gsm8k_cot_boxed"
    title = "GSM8K (CoT, boxed)"
    fields = ("question", "answer")
    metrics = (
        Metric("exact_match_boxed", "correct_boxed", "exact match, last \\boxed{} answer"),
        Metric("exact_match_flexible", "correct_flexible", "exact match, flexible-extract"),
    )
    default_num_fewshot = 0
    #: answers of a 0.5B model run to 455 tokens on the first 32 test problems; 768 truncates (almost) none
    max_new_tokens = 768
    hub_config = GSM8K_CONFIG
    hub_splits = GSM8K_SPLITS
    result_class = GSM8KResult
    card_notes = (
        "0-shot chain of thought through the chat template, greedy; the question is followed by "
        f'"{BOXED_INSTRUCTION}" and the last `\\boxed{{}}` is compared with the gold number as a number.'
    )

    def prompt(self, row: Mapping[str, str], shots: Sequence[Mapping[str, str]], tokenizer: Any, chat: bool) -> str:
        if shots:
            raise ValueError(f"{self.name} is 0-shot (the model answers in its own format); use num_fewshot=0")
        question = f"{row['question']}\n{BOXED_INSTRUCTION}"
        if chat:
            messages = [{"role": "user", "content": question}]
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return PROMPT_TEMPLATE.format(question=question)

    def score(self, row: Mapping[str, str], completion: str) -> dict[str, Any]:
        target = _reference_target(row["answer"])
        boxed, flexible = boxed_number(completion), extract_answer(completion, "flexible")
        return {
            "extracted_boxed": boxed,
            "extracted_flexible": flexible,
            "target": target,
            "correct_boxed": _same_number(boxed, target),
            "correct_flexible": flexible is not None and flexible == target,
        }
