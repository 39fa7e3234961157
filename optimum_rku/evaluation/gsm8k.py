"""GSM8K few-shot exact-match evaluation that follows the lm-evaluation-harness ``gsm8k`` task conventions."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch

from optimum_rku.data.generation import as_id_set, generate_completions
from optimum_rku.evaluation.results import GSM8KResult
from optimum_rku.evaluation.sources import DEFAULT_DATASET, GSM8K_SPLITS, resolve_source, sample_fewshot, validate_rows

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
    return f"Question: {question}\nAnswer:"


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
# Entry point
# --------------------------------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, minimum: int, allow_none: bool = False) -> None:
    """Raise TypeError/ValueError naming the argument when it is not an int >= minimum."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        allowed = f"an int >= {minimum}" + (" or None" if allow_none else "")
        raise TypeError(f"{name} must be {allowed}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        allowed = f"an int >= {minimum}" + (" or None" if allow_none else "")
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _check_split(name: str, value: Any) -> None:
    """Require a non-empty split name."""
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty str such as one of {GSM8K_SPLITS}, got {value!r}")


def evaluate_gsm8k(
    model: Any,
    tokenizer: Any,
    dataset: str | os.PathLike[str] | Dataset | DatasetDict | Sequence[Mapping[str, str]] = DEFAULT_DATASET,
    split: str = "test",
    num_fewshot: int = 5,
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    apply_chat_template: bool = False,
    output_path: str | os.PathLike[str] | None = None,
    fewshot_seed: int = 1234,
    fewshot_split: str = "train",
    progress: bool = True,
    fewshot_examples: Sequence[Mapping[str, str]] | None = None,
) -> GSM8KResult:
    """Run harness-compatible few-shot GSM8K (greedy, stop at ``Question:``) and score strict/flexible exact match."""
    call_start = time.perf_counter()
    # ---- cheap argument checks first, before any loading or generation ----
    if not callable(getattr(model, "generate", None)):
        raise TypeError(f"model must be a generative transformers model with .generate(), got {type(model).__name__}")
    if not callable(tokenizer) or not callable(getattr(tokenizer, "decode", None)):
        raise TypeError(f"tokenizer must be a transformers tokenizer (callable with .decode), got {type(tokenizer)}")
    _check_int("num_fewshot", num_fewshot, 0)
    _check_int("limit", limit, 1, allow_none=True)
    _check_int("batch_size", batch_size, 1)
    _check_int("max_new_tokens", max_new_tokens, 1)
    if isinstance(fewshot_seed, bool) or not isinstance(fewshot_seed, int):
        raise TypeError(f"fewshot_seed must be an int, got {fewshot_seed!r} ({type(fewshot_seed).__name__})")
    _check_split("split", split)
    _check_split("fewshot_split", fewshot_split)
    if not isinstance(apply_chat_template, bool):
        raise TypeError(f"apply_chat_template must be a bool, got {apply_chat_template!r}")
    if apply_chat_template and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "apply_chat_template=True but the tokenizer has no chat_template; use apply_chat_template=False"
        )
    if output_path is not None and not isinstance(output_path, (str, os.PathLike)):
        raise TypeError(f"output_path must be a str, os.PathLike or None, got {type(output_path).__name__}")
    if fewshot_examples is not None:
        if isinstance(fewshot_examples, (str, bytes)) or not isinstance(fewshot_examples, Sequence):
            raise TypeError(
                f"fewshot_examples must be a list of {{'question', 'answer'}} dicts or None, got {type(fewshot_examples)}"
            )
        fewshot_pool: list[dict[str, str]] | None = validate_rows(fewshot_examples, "fewshot_examples")
    else:
        fewshot_pool = None
    pad_id = getattr(tokenizer, "pad_token_id", None)
    eos_ids = as_id_set(getattr(tokenizer, "eos_token_id", None))
    model_generation_config = getattr(model, "generation_config", None)
    if model_generation_config is not None:
        eos_ids |= as_id_set(model_generation_config.eos_token_id)
    if pad_id is None:
        if not eos_ids:
            raise ValueError("tokenizer has neither pad_token_id nor eos_token_id; set tokenizer.pad_token first")
        pad_id = getattr(tokenizer, "eos_token_id", None)
        pad_id = pad_id if pad_id is not None else min(eos_ids)

    source = resolve_source(dataset, split, fewshot_split)
    same_pool = False
    if num_fewshot > 0 and fewshot_pool is None:
        if source.fewshot_loader is None:
            raise ValueError(
                f"num_fewshot={num_fewshot} needs few-shot examples but none are available for {source.description}: "
                f"pass fewshot_examples=[{{'question': ..., 'answer': ...}}, ...], a path/directory with "
                f"{fewshot_split}.jsonl, or num_fewshot=0"
            )
        same_pool = source.fewshot_is_eval

    # ---- load data ----
    rows = source.rows_loader()
    if not rows:
        raise ValueError(f"dataset {source.description} has no rows")
    if limit is not None:
        rows = rows[:limit]
    if num_fewshot > 0 and fewshot_pool is None:
        fewshot_pool = source.fewshot_loader()
    pool = fewshot_pool or []
    needed = num_fewshot + 1 if same_pool else num_fewshot
    if num_fewshot > 0 and len(pool) < needed:
        raise ValueError(f"num_fewshot={num_fewshot} but only {len(pool)} few-shot examples are available")
    shots = sample_fewshot(rows, pool, num_fewshot, fewshot_seed, same_pool)

    if apply_chat_template:
        prompts = [
            tokenizer.apply_chat_template(
                build_chat_messages(row["question"], examples), tokenize=False, add_generation_prompt=True
            )
            for row, examples in zip(rows, shots)
        ]
    else:
        prompts = [build_prompt(row["question"], examples) for row, examples in zip(rows, shots)]

    # ---- generate ----
    was_training = bool(getattr(model, "training", False))
    if hasattr(model, "eval"):
        model.eval()
    generation_start = time.perf_counter()
    try:
        with torch.inference_mode():
            completions, counts = generate_completions(
                model,
                tokenizer,
                prompts,
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
                add_special_tokens=not apply_chat_template,
                pad_id=int(pad_id),
                eos_ids=eos_ids,
                progress=progress,
            )
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    generation_time = time.perf_counter() - generation_start

    # ---- score ----
    samples: list[dict[str, Any]] = []
    for index, (row, prompt, completion, count) in enumerate(zip(rows, prompts, completions, counts)):
        target = _reference_target(row["answer"])
        strict = extract_answer(completion, "strict")
        flexible = extract_answer(completion, "flexible")
        samples.append(
            {
                "index": index,
                "question": row["question"],
                "prompt": prompt,
                "completion": completion,
                "extracted_strict": strict,
                "extracted_flexible": flexible,
                "target": target,
                "correct_strict": strict is not None and strict == target,
                "correct_flexible": flexible is not None and flexible == target,
                "generated_tokens": count,
            }
        )
    num = len(samples)
    generated_tokens = sum(counts)
    result = GSM8KResult(
        exact_match_strict=sum(s["correct_strict"] for s in samples) / num,
        exact_match_flexible=sum(s["correct_flexible"] for s in samples) / num,
        num_samples=num,
        num_fewshot=num_fewshot,
        split=split,
        dataset=source.description,
        total_time_s=time.perf_counter() - call_start,
        generated_tokens=generated_tokens,
        tokens_per_s=generated_tokens / generation_time if generation_time > 0 else 0.0,
        samples=samples,
        generation_time_s=generation_time,
        apply_chat_template=apply_chat_template,
        max_new_tokens=max_new_tokens,
        fewshot_seed=fewshot_seed,
    )
    if output_path is not None:
        result.save(output_path)
    return result
