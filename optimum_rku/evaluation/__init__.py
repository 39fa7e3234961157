"""Quality evaluation for pruned reasoning models: harness-compatible GSM8K exact match."""

from pathlib import Path

from .gsm8k import (
    DEFAULT_DATASET,
    FEWSHOT_DELIMITER,
    GSM8K_SPLITS,
    STOP_STRINGS,
    TARGET_DELIMITER,
    GSM8KResult,
    build_chat_messages,
    build_prompt,
    evaluate_gsm8k,
    extract_answer,
    format_question,
    is_correct,
    normalize_answer,
    truncate_at_stop,
)

#: Directory of the offline ``evaluate`` metric module; use ``evaluate.load(GSM8K_METRIC_PATH)``.
GSM8K_METRIC_PATH: str = str(Path(__file__).resolve().parent / "metrics" / "gsm8k_exact_match")

__all__ = [
    "DEFAULT_DATASET",
    "FEWSHOT_DELIMITER",
    "GSM8K_METRIC_PATH",
    "GSM8K_SPLITS",
    "STOP_STRINGS",
    "TARGET_DELIMITER",
    "GSM8KResult",
    "build_chat_messages",
    "build_prompt",
    "evaluate_gsm8k",
    "extract_answer",
    "format_question",
    "is_correct",
    "normalize_answer",
    "truncate_at_stop",
]
