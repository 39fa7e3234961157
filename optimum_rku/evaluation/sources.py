"""Where evaluation problems come from: a Hub id, local json/jsonl files or directories, datasets, or lists of dicts.

Sources are classified without loading anything big, so argument checks never trigger downloads; few-shot pools are
read lazily from the train split beside the evaluated one. Every row must hold the task's string `fields`; Hub
datasets load with the task's `hub_config` and `hub_splits`.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any


def _offline_hint(task) -> str:
    example = ", ".join(f"{name!r}: ..." for name in task.fields)
    return (
        f"If you are offline or the Hub is unreachable, pass local {task.title} files instead: "
        "dataset='path/to/test.jsonl' (few-shot examples are read from train.jsonl beside it), "
        "a directory containing test.jsonl and train.jsonl, a datasets.Dataset, "
        f"or a list of {{{example}}} dicts (with fewshot_examples=... when num_fewshot > 0)."
    )


def _named(fields: Sequence[str]) -> str:
    return " and ".join(repr(name) for name in fields)


def validate_rows(rows: Sequence[Any], source: str, fields: Sequence[str]) -> list[dict]:
    """Check that every row has the string `fields` and keep only those."""
    clean: list[dict[str, str]] = []
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"{source}: row {index} must be a mapping with {_named(fields)}, got {type(row)}")
        missing = [key for key in fields if not isinstance(row.get(key), str)]
        if missing:
            raise ValueError(f"{source}: row {index} needs string fields {_named(fields)} (bad: {missing})")
        clean.append({key: row[key] for key in fields})
    return clean


def _read_json_rows(path: Path, fields: Sequence[str]) -> list[dict[str, str]]:
    """Read rows from a jsonl file (one object per line) or a json list."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        rows = json.loads(stripped)
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number} is not valid JSON: {exc}") from exc
    return validate_rows(rows, str(path), fields)


def _split_file(directory: Path, split: str) -> Path | None:
    """Find ``{split}.jsonl`` (or ``.json``) inside a directory."""
    for suffix in (".jsonl", ".json"):
        candidate = directory / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _load_hub(dataset: str, split: str, task) -> list[dict[str, str]]:
    """Load a split of a Hub dataset (the task's config), turning connection failures into an actionable error."""
    import datasets

    try:
        loaded = datasets.load_dataset(dataset, task.hub_config, split=split)
    except Exception as exc:  # any Hub/offline/config failure gets the same actionable hint
        raise RuntimeError(
            f"Could not load dataset {dataset!r} (config {task.hub_config!r}, split {split!r}) from the Hugging Face "
            f"Hub: {type(exc).__name__}: {exc}. {_offline_hint(task)}"
        ) from exc
    return validate_rows(loaded.to_list(), f"{dataset}[{split}]", task.fields)


class ProblemSource:
    """A resolved evaluation source: its rows, a description and a lazy few-shot pool loader."""

    def __init__(
        self,
        rows_loader: Callable[[], list[dict[str, str]]],
        description: str,
        fewshot_loader: Callable[[], list[dict[str, str]]] | None,
        fewshot_is_eval: bool,
    ) -> None:
        """Store loaders so that argument checks never trigger heavy downloads."""
        self.rows_loader = rows_loader
        self.description = description
        self.fewshot_loader = fewshot_loader
        self.fewshot_is_eval = fewshot_is_eval


def resolve_source(dataset: Any, split: str, fewshot_split: str, task) -> ProblemSource:
    """Classify the ``dataset`` argument (Hub id, local path, Dataset(Dict) or list) without loading anything big."""
    fields = task.fields
    if isinstance(dataset, (str, os.PathLike)):
        path = Path(dataset).expanduser()
        if path.is_dir():
            eval_file = _split_file(path, split)
            if eval_file is None:
                available = sorted(p.name for p in path.iterdir() if p.suffix in (".json", ".jsonl"))
                raise ValueError(f"split {split!r}: no {split}.jsonl in directory {str(path)!r} (found: {available})")
            fewshot_file = _split_file(path, fewshot_split)
            return ProblemSource(
                lambda: _read_json_rows(eval_file, fields),
                str(eval_file),
                (lambda: _read_json_rows(fewshot_file, fields)) if fewshot_file is not None else None,
                fewshot_file == eval_file,
            )
        if path.is_file():
            fewshot_file = _split_file(path.parent, fewshot_split)
            return ProblemSource(
                lambda: _read_json_rows(path, fields),
                str(path),
                (lambda: _read_json_rows(fewshot_file, fields)) if fewshot_file is not None else None,
                fewshot_file is not None and fewshot_file.resolve() == path.resolve(),
            )
        text = os.fspath(dataset)
        if text.endswith((".json", ".jsonl")) or text.startswith((".", "/", "~")):
            raise FileNotFoundError(
                f"dataset file {text!r} does not exist (pass a jsonl file, a directory or a Hub id)"
            )
        if split not in task.hub_splits:
            raise ValueError(f"split must be one of {task.hub_splits} for Hub dataset {text!r}, got {split!r}")
        if fewshot_split not in task.hub_splits:
            raise ValueError(
                f"fewshot_split must be one of {task.hub_splits} for Hub dataset {text!r}, got {fewshot_split!r}"
            )
        return ProblemSource(
            lambda: _load_hub(text, split, task),
            f"{text} ({task.hub_config}, {split})",
            lambda: _load_hub(text, fewshot_split, task),
            split == fewshot_split,
        )

    if isinstance(dataset, (list, tuple)):
        rows = validate_rows(dataset, "dataset list", fields)
        return ProblemSource(lambda: rows, f"list ({len(rows)} rows)", None, False)

    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ValueError(f"split {split!r} not in DatasetDict (available: {sorted(dataset)})")
        has_fewshot = fewshot_split in dataset
        return ProblemSource(
            lambda: validate_rows(dataset[split].to_list(), f"DatasetDict[{split}]", fields),
            f"DatasetDict[{split}]",
            (lambda: validate_rows(dataset[fewshot_split].to_list(), f"DatasetDict[{fewshot_split}]", fields))
            if has_fewshot
            else None,
            split == fewshot_split,
        )
    if isinstance(dataset, datasets.Dataset):
        missing = set(fields) - set(dataset.column_names)
        if missing:
            raise ValueError(f"Dataset needs {_named(fields)} columns, missing {sorted(missing)}")
        name = dataset.info.dataset_name or "Dataset"
        return ProblemSource(
            lambda: validate_rows(dataset.to_list(), name, fields), f"{name} ({dataset.num_rows} rows)", None, False
        )
    if isinstance(dataset, Sequence) and not isinstance(dataset, (bytes, bytearray)):
        rows = validate_rows(dataset, "dataset list", fields)
        return ProblemSource(lambda: rows, f"list ({len(rows)} rows)", None, False)
    listed = ", ".join(repr(name) for name in fields)
    raise TypeError(
        "dataset must be a Hub id, a json/jsonl path or directory, a datasets.Dataset/DatasetDict or a list of "
        f"{{{listed}}} dicts, got {type(dataset).__name__}"
    )


def sample_fewshot(
    rows: Sequence[Mapping[str, str]], pool: Sequence[Mapping[str, str]], num_fewshot: int, seed: int, same_pool: bool
) -> list[list[Mapping[str, str]]]:
    """Draw per-question few-shot examples with one seeded RNG in document order, like the harness sampler."""
    if num_fewshot == 0:
        return [[] for _ in rows]
    rng = random.Random(seed)
    pool = list(pool)
    draw = num_fewshot + 1 if same_pool else num_fewshot
    chosen: list[list[Mapping[str, str]]] = []
    for row in rows:
        candidates = rng.sample(pool, draw)
        if same_pool:
            candidates = [example for example in candidates if example != row]
        chosen.append(candidates[:num_fewshot])
    return chosen
