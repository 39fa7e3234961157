"""`evaluate`: run any registered evaluation task on a model, lm-evaluation-harness style.

Checks every argument first, loads the problems (and a few-shot pool), builds the task's prompts, generates greedily
with the shared loop of `optimum_rku.data.generation`, and scores each completion with the task.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from optimum_rku.data.generation import GENERATION_LOOPS, STOP_REASONS, generate_completions, pad_and_eos
from optimum_rku.data.prompts import DEFAULT_BATCH_SIZE
from optimum_rku.evaluation.registry import get_task
from optimum_rku.evaluation.results import EvaluationResult
from optimum_rku.evaluation.sources import resolve_source, sample_fewshot, validate_rows
from optimum_rku.evaluation.task import EvaluationTask


def _check_int(name: str, value: Any, minimum: int, allow_none: bool = False) -> None:
    """Raise TypeError/ValueError naming the argument when it is not an int >= minimum."""
    if value is None and allow_none:
        return
    allowed = f"an int >= {minimum}" + (" or None" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {allowed}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _check_split(name: str, value: Any, task: EvaluationTask) -> None:
    """Require a non-empty split name."""
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty str such as one of {task.hub_splits}, got {value!r}")


def _check_arguments(
    model, tokenizer, task, num_fewshot, limit, batch_size, max_new_tokens, fewshot_seed, split, fewshot_split,
    generation_loop, apply_chat_template, output_path, fewshot_examples, stop_loops,
) -> list[dict[str, str]] | None:  # fmt: skip
    """Every argument of `evaluate` checked (TypeError / ValueError naming it); the validated few-shot pool, if any."""
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
    _check_split("split", split, task)
    if generation_loop not in GENERATION_LOOPS:
        raise ValueError(f"generation_loop must be one of {GENERATION_LOOPS}, got {generation_loop!r}")
    _check_split("fewshot_split", fewshot_split, task)
    for name, flag in (("apply_chat_template", apply_chat_template), ("stop_loops", stop_loops)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    if apply_chat_template and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "apply_chat_template=True but the tokenizer has no chat_template; use apply_chat_template=False"
        )
    if output_path is not None and not isinstance(output_path, (str, os.PathLike)):
        raise TypeError(f"output_path must be a str, os.PathLike or None, got {type(output_path).__name__}")
    fewshot_pool = None
    if fewshot_examples is not None:
        if isinstance(fewshot_examples, (str, bytes)) or not isinstance(fewshot_examples, Sequence):
            listed = ", ".join(repr(name) for name in task.fields)
            raise TypeError(
                f"fewshot_examples must be a list of {{{listed}}} dicts or None, got {type(fewshot_examples)}"
            )
        fewshot_pool = validate_rows(fewshot_examples, "fewshot_examples", task.fields)
    return fewshot_pool


def evaluate(
    model: Any,
    tokenizer: Any,
    task: str | EvaluationTask = "gsm8k",
    dataset: Any = None,
    split: str = "test",
    num_fewshot: int = 0,
    limit: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int | None = None,
    apply_chat_template: bool = False,
    output_path: str | os.PathLike[str] | None = None,
    fewshot_seed: int = 1234,
    fewshot_split: str = "train",
    progress: bool = True,
    fewshot_examples: Sequence[Mapping[str, str]] | None = None,
    generation_loop: str = "auto",
    stop_loops: bool = False,
) -> EvaluationResult:
    """Run `task` on `dataset` (a Hub id, a json/jsonl file or directory, a datasets.Dataset(Dict) or a list of rows)
    with greedy decoding and return its metrics; `output_path` also writes per-sample jsonl and a summary.

    `generation_loop` is `optimum_rku.data.generation.generate_completions`'s `loop` ("auto": continuous batching,
    where finished rows leave the batch and waiting prompts take their slots; "generate": fixed batches through
    `model.generate`); both give the same completions. `stop_loops` stops computing an answer that repeats one span of
    tokens and continues its text by repeating that span to the budget (what greedy decoding does in such a loop):
    much faster on a damaged model, the same text wherever the loop would have held (off by default, the harness
    computes every token); each sample records why it stopped."""
    call_start = time.perf_counter()
    task = get_task(task)
    max_new_tokens = task.max_new_tokens if max_new_tokens is None else max_new_tokens
    fewshot_pool = _check_arguments(
        model, tokenizer, task, num_fewshot, limit, batch_size, max_new_tokens, fewshot_seed, split, fewshot_split,
        generation_loop, apply_chat_template, output_path, fewshot_examples, stop_loops,
    )  # fmt: skip
    pad_id, eos_ids = pad_and_eos(model, tokenizer)
    source = resolve_source(dataset, split, fewshot_split, task)
    rows, prompts = _prompts(task, tokenizer, source, num_fewshot, fewshot_pool, limit, fewshot_seed,
                             fewshot_split, apply_chat_template)  # fmt: skip
    generation_start = time.perf_counter()
    with _eval_mode(model), torch.inference_mode():
        completions, counts, reasons = generate_completions(
            model,
            tokenizer,
            prompts,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            add_special_tokens=not apply_chat_template,
            pad_id=pad_id,
            eos_ids=eos_ids,
            progress=progress,
            stop_strings=task.stop_strings,
            desc=task.title,
            loop=generation_loop,
            stop_loops=stop_loops,
        )
    generation_time = time.perf_counter() - generation_start
    samples = _samples(task, rows, prompts, completions, counts, reasons)
    result = task.result_class(
        task=task.name,
        metrics={m.key: sum(float(s[m.sample_key]) for s in samples) / len(samples) for m in task.metrics},
        num_samples=len(samples),
        num_fewshot=num_fewshot,
        split=split,
        dataset=source.description,
        total_time_s=time.perf_counter() - call_start,
        generated_tokens=sum(counts),
        tokens_per_s=sum(counts) / generation_time if generation_time > 0 else 0.0,
        samples=samples,
        generation_time_s=generation_time,
        apply_chat_template=apply_chat_template,
        max_new_tokens=max_new_tokens,
        fewshot_seed=fewshot_seed,
        stop_loops=stop_loops,
        stopped={reason: reasons.count(reason) for reason in STOP_REASONS if reason in reasons},
    )
    if output_path is not None:
        result.save(output_path)
    return result


def _prompts(
    task, tokenizer, source, num_fewshot, fewshot_pool, limit, fewshot_seed, fewshot_split, apply_chat_template
) -> tuple[list[dict[str, str]], list[str]]:
    """The problems to evaluate (first `limit`) and their prompts, with few-shot examples drawn from the pool given
    or the source's own (a clear error when there is none or too few)."""
    if num_fewshot > 0 and fewshot_pool is None and source.fewshot_loader is None:
        raise ValueError(
            f"num_fewshot={num_fewshot} needs few-shot examples but none are available for {source.description}: "
            f"pass fewshot_examples=[{{...}}, ...], a path/directory with {fewshot_split}.jsonl, or num_fewshot=0"
        )
    same_pool = num_fewshot > 0 and fewshot_pool is None and source.fewshot_is_eval
    rows = source.rows_loader()
    if not rows:
        raise ValueError(f"dataset {source.description} has no rows")
    rows = rows[:limit] if limit is not None else rows
    if num_fewshot > 0 and fewshot_pool is None:
        fewshot_pool = source.fewshot_loader()
    pool = fewshot_pool or []
    if num_fewshot > 0 and len(pool) < num_fewshot + same_pool:
        raise ValueError(f"num_fewshot={num_fewshot} but only {len(pool)} few-shot examples are available")
    shots = sample_fewshot(rows, pool, num_fewshot, fewshot_seed, same_pool)
    return rows, [task.prompt(row, examples, tokenizer, apply_chat_template) for row, examples in zip(rows, shots)]


@contextlib.contextmanager
def _eval_mode(model) -> Iterator[None]:
    """The model in eval mode for the block, back in training mode after it if it was."""
    was_training = bool(getattr(model, "training", False))
    if hasattr(model, "eval"):
        model.eval()
    try:
        yield
    finally:
        if was_training and hasattr(model, "train"):
            model.train()


def _samples(task, rows, prompts, completions, counts, reasons) -> list[dict[str, Any]]:
    """One record per problem: what was asked, answered and judged, how many tokens, why the answer stopped."""
    return [
        {"index": index, **task.describe(row), "prompt": prompt, "completion": completion}
        | task.score(row, completion)
        | {"generated_tokens": count, "stopped": reason}
        for index, (row, prompt, completion, count, reason) in enumerate(
            zip(rows, prompts, completions, counts, reasons)
        )
    ]
