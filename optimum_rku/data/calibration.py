"""Calibration data: unlabeled text -> tokenized `datasets.Dataset` -> padded batches for scoring."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from optimum_rku.data.context import calibration_length, context_length, report_context_cut
from optimum_rku.data.gsm8k import GSM8K_CONFIG, GSM8K_HUB_ID

logger = logging.getLogger(__name__)

#: a calibration row needs a next token to predict: shorter rows are dropped (with a warning)
MIN_ROW_TOKENS = 2

_LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}


def files_label(data_files: Any) -> str:
    """How records name local data files or a local dataset folder: file names only, never a machine path."""
    if isinstance(data_files, dict):
        data_files = [f for files in data_files.values() for f in ([files] if isinstance(files, str) else files)]
    if isinstance(data_files, (list, tuple)):
        return ", ".join(files_label(f) for f in data_files)
    return Path(str(data_files)).name


def _local_builder(data_files: Any) -> str:
    first = data_files
    if isinstance(first, dict):
        first = next(iter(first.values()))
    if isinstance(first, (list, tuple)):
        first = first[0]
    suffix = Path(str(first)).suffix.lower()
    if suffix not in _LOCAL_FORMATS:
        raise ValueError(f"Unsupported calibration file {str(first)!r}; allowed extensions: {sorted(_LOCAL_FORMATS)}.")
    return _LOCAL_FORMATS[suffix]


def load_local_files(data_files: Any, purpose: str = "Calibration"):
    """Local json/jsonl/parquet/csv file(s) as one `datasets.Dataset` split; a missing single path is a clear error."""
    import datasets

    if isinstance(data_files, (str, os.PathLike)) and not Path(data_files).exists():
        raise FileNotFoundError(f"{purpose} data file {str(data_files)!r} does not exist.")
    data_files = str(data_files) if isinstance(data_files, os.PathLike) else data_files
    return datasets.load_dataset(_local_builder(data_files), data_files=data_files, split="train")


class CalibrationTexts(list):
    """A list of calibration texts that remembers where it came from (dataset, split, column, seed)."""

    def __init__(self, texts, summary: dict[str, Any]):
        super().__init__(texts)
        self.summary = dict(summary)


def load_texts(
    dataset_name: str | Sequence[str] | None = GSM8K_HUB_ID,
    *,
    num_samples: int = 128,
    dataset_config_name: str | None = GSM8K_CONFIG,
    dataset_split: str = "train",
    text_column: str | Sequence[str] = "question",
    data_files: Any = None,
    seed: int = 2016,
    preprocess_function: Callable[[dict], str] | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """Pick `num_samples` calibration texts (seeded shuffle) and a summary of where they came from."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples={num_samples!r} must be a positive int.")
    if isinstance(dataset_name, (list, tuple)):
        texts = list(dataset_name)
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"Calibration texts must be strings, got {type(text).__name__}.")
        if not texts:
            raise ValueError("The calibration set is empty: pass at least one text.")
        return texts[:num_samples], {"dataset": "in-memory list", "num_samples": min(num_samples, len(texts))}

    import datasets

    if data_files is not None:
        ds = load_local_files(data_files)
        source = str(data_files)
    else:
        if not isinstance(dataset_name, str) or not dataset_name:
            raise TypeError(f"dataset_name must be a Hub id, a local path or a list of strings, got {dataset_name!r}.")
        try:
            ds = datasets.load_dataset(dataset_name, dataset_config_name, split=dataset_split)
        except Exception as err:  # network, auth, missing dataset: one actionable message
            raise RuntimeError(
                f"Could not load calibration dataset {dataset_name!r} ({type(err).__name__}: {err}). "
                "Offline? Pass local files instead: pruner.get_calibration_dataset(data_files='gsm8k/train.jsonl') "
                "(json/jsonl/parquet/csv; CLI: --data-files), or a list of strings as calibration_dataset."
            ) from None
        source = dataset_name

    if len(ds) == 0:
        raise ValueError(f"The calibration set {source!r} is empty.")
    ds = ds.shuffle(seed=seed).select(range(min(num_samples, len(ds))))
    columns = [text_column] if isinstance(text_column, str) else list(text_column)
    if preprocess_function is None:
        missing = [c for c in columns if c not in ds.column_names]
        if missing:
            raise ValueError(f"text_column {missing} not in the calibration dataset; columns: {ds.column_names}.")
        texts = ["\n".join(str(row[c]) for c in columns) for row in ds]
    else:
        texts = [preprocess_function(row) for row in ds]
    summary = {
        "dataset": files_label(source) if data_files is not None or Path(source).expanduser().exists() else source,
        "config": dataset_config_name if data_files is None else None,
        "split": dataset_split if data_files is None else None,
        "text_column": text_column if preprocess_function is None else "preprocess_function",
        "num_samples": len(texts),
        "seed": seed,
    }
    return CalibrationTexts(texts, summary), summary


def tokenize_texts(tokenizer, texts: Sequence[str], max_length: int):
    """Tokenize texts (truncated to `max_length`) into a `datasets.Dataset` with input_ids/attention_mask."""
    import datasets

    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise ValueError("The calibration set is empty: no non-empty text to calibrate on.")
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    return datasets.Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})


def _preview(rows: list[int]) -> str:
    return f"{rows[:5]}{' ...' if len(rows) > 5 else ''}"


def fit_rows(dataset, max_length: int | None = None):
    """Drop rows with fewer than `MIN_ROW_TOKENS` tokens and cut rows longer than `max_length`, each with a warning.

    A one-token row has no next token to predict, so gradient objectives read nothing from it (only such rows: every
    score would be zero); a row longer than the model's context runs positions the model never saw. An empty result
    is a ValueError.
    """
    lengths = [int(sum(mask)) for mask in dataset["attention_mask"]]
    short = [i for i, n in enumerate(lengths) if n < MIN_ROW_TOKENS]
    if len(short) == len(lengths):
        raise ValueError(
            f"The calibration set is empty: all {len(lengths)} calibration texts are shorter than {MIN_ROW_TOKENS} "
            "tokens (a single token has no next token to predict); pass longer texts."
        )
    if short:
        logger.warning(
            "Dropped %d of %d calibration texts shorter than %d tokens (rows %s): a single token has no next token "
            "to predict.",
            len(short),
            len(lengths),
            MIN_ROW_TOKENS,
            _preview(short),
        )
        dropped = set(short)
        dataset = dataset.select([i for i in range(len(lengths)) if i not in dropped])
    if max_length is not None:
        long = [i for i, ids in enumerate(dataset["input_ids"]) if len(ids) > max_length]
        if long:
            logger.warning(
                "Cut %d calibration rows longer than the model's context to %d tokens (rows %s).",
                len(long),
                max_length,
                _preview(long),
            )
            columns = [c for c in ("input_ids", "attention_mask", "loss_mask") if c in dataset.column_names]
            dataset = dataset.map(lambda row: {c: row[c][:max_length] for c in columns})
    return dataset


def count_tokens(dataset) -> int:
    return int(sum(sum(mask) for mask in dataset["attention_mask"]))


def iter_batches(dataset, batch_size: int, pad_token_id: int, device: torch.device | str = "cpu") -> Iterator[dict]:
    """Right-padded batches of a tokenized dataset; padding is excluded from every statistic via attention_mask."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int.")
    rows = len(dataset)
    has_labels = "loss_mask" in dataset.column_names
    for start in range(0, rows, batch_size):
        chunk = dataset[start : start + batch_size]
        width = max(len(ids) for ids in chunk["input_ids"])
        ids = torch.full((len(chunk["input_ids"]), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        loss_mask = torch.zeros_like(ids)
        for row, seq in enumerate(chunk["input_ids"]):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
            if has_labels:
                loss_mask[row, : len(seq)] = torch.tensor(chunk["loss_mask"][row], dtype=torch.long)
        batch = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        if has_labels:
            batch["loss_mask"] = loss_mask.to(device)
        yield batch


def resolve_calibration(
    calibration_dataset: Any,
    config,
    *,
    model,
    tokenizer,
    data,
    summary: dict[str, Any] | None = None,
    masks: dict | None = None,
):
    """The tokenized calibration set of a run and its summary, from a tokenized Dataset, a list of strings, or None
    (the data provider's default texts).

    Texts become the model's own answers with `calibration="self_generated"` (`masks` make the partially pruned
    model write them), else they are tokenized as they are. `summary` describes a tokenized Dataset given as is.
    """
    if calibration_dataset is None:
        texts, found = data.calibration_texts(config.num_calibration_samples, config.seed)
    elif isinstance(calibration_dataset, (list, tuple)):
        texts, found = load_texts(list(calibration_dataset), num_samples=config.num_calibration_samples)
        found = {**found, **getattr(calibration_dataset, "summary", {})}  # texts from load_texts: keep source
    else:
        import datasets

        if not isinstance(calibration_dataset, datasets.Dataset):
            raise TypeError(
                "calibration_dataset must be a tokenized datasets.Dataset, a list of strings or None, "
                f"got {type(calibration_dataset).__name__}."
            )
        if len(calibration_dataset) == 0:
            raise ValueError("The calibration set is empty.")
        if "input_ids" not in calibration_dataset.column_names:
            raise ValueError(
                "calibration_dataset must be tokenized (an 'input_ids' column); see get_calibration_dataset."
            )
        if "attention_mask" not in calibration_dataset.column_names:
            calibration_dataset = calibration_dataset.map(lambda r: {"attention_mask": [1] * len(r["input_ids"])})
        calibration_dataset = fit_rows(calibration_dataset, context_length(model))
        found = dict(summary or {}) or {"dataset": "user-provided tokenized dataset"}
        found["num_samples"] = len(calibration_dataset)
        found["num_tokens"] = count_tokens(calibration_dataset)
        return calibration_dataset, found
    if tokenizer is None:
        raise ValueError("This pruner has no tokenizer: pass tokenizer=... to RKUPruner.from_pretrained.")
    if config.calibration == "self_generated":
        from optimum_rku.data.prompts import uses_chat_template
        from optimum_rku.data.self_generated import self_generated_dataset

        dataset = self_generated_dataset(model, tokenizer, texts, config, masks=masks)
        found = {
            **found,
            "calibration": "self_generated",
            "generation": "greedy" if not config.generation_do_sample else "sampled",
            "chat_template": uses_chat_template(tokenizer, config.generation_chat_template),
        }
        if "loss_mask" not in dataset.column_names:  # every answer was empty: scored on the questions instead
            found["fallback"] = "no answer tokens were generated; scored on the question text"
    else:
        length = calibration_length(model, config.calibration_seq_len)
        dataset = tokenize_texts(tokenizer, texts, length)
        report_context_cut(dataset, length, config.calibration_seq_len)
    dataset = fit_rows(dataset)
    found["num_samples"] = len(dataset)
    found["num_tokens"] = count_tokens(dataset)
    found.setdefault("seed", config.seed)
    return dataset, found
