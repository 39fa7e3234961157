"""Quality evaluation for pruned reasoning models: harness-compatible GSM8K exact match.

`gsm8k` (prompts, extraction, scoring, `evaluate_gsm8k`), `sources` (where problems come from), `results`
(`GSM8KResult`); generation itself is the shared loop of `optimum_rku.data.generation`.
"""

from pathlib import Path

from optimum_rku.data.generation import truncate_at_stop
from optimum_rku.data.prompts import STOP_STRINGS
from optimum_rku.evaluation.gsm8k import (
    FEWSHOT_DELIMITER,
    TARGET_DELIMITER,
    build_chat_messages,
    build_prompt,
    evaluate_gsm8k,
    extract_answer,
    format_question,
    is_correct,
    normalize_answer,
)
from optimum_rku.evaluation.results import GSM8KResult
from optimum_rku.evaluation.sources import DEFAULT_DATASET, GSM8K_SPLITS

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
