"""What a checkpoint directory holds besides the weights: file names, `rku_config.json`, `eval_results.json`.

Torch-free on purpose, so cards, charts and pushes can read a checkpoint without loading a model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from optimum_rku.config import CONFIG_NAME

EVAL_RESULTS_FILE = "eval_results.json"
REMOTE_CODE_FILE = "modeling_rku.py"
#: Files `save_pretrained` of a tokenizer may write (uploaded with checkpoints and adapters alike).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
REQUIRED_META_KEYS = ("pruning_config", "plan", "parameters", "dense_widths")
#: what every evaluation result holds besides its task's metrics
REQUIRED_EVAL_KEYS = ("num_samples", "num_fewshot", "split")


def check_meta(meta: Any) -> dict[str, Any]:
    """Reject anything that is not an `rku_config.json` dict before rendering."""
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta must be the dict of rku_config.json (RKUPruner.metadata()), got {type(meta).__name__}.")
    missing = [key for key in REQUIRED_META_KEYS if key not in meta]
    if missing:
        raise ValueError(f"meta is missing {missing}; expected the dict written to rku_config.json by RKUPruner.")
    if not meta["plan"].get("layers"):
        raise ValueError("meta['plan']['layers'] is empty; expected one entry per decoder layer.")
    return dict(meta)


def result_dict(results: Any, name: str = "eval_results") -> dict[str, Any] | None:
    """Normalize an evaluation result (e.g. `GSM8KResult`), its `to_dict()`, or a path to such a JSON file into a
    plain dict (None stays None); it must hold its task's metrics."""
    if results is None:
        return None
    if hasattr(results, "to_dict") and callable(results.to_dict):
        data = results.to_dict()
    elif isinstance(results, Mapping):
        data = dict(results)
    elif isinstance(results, (str, os.PathLike)):
        path = Path(results)
        if not path.is_file():
            raise FileNotFoundError(f"{name}: no such file {str(path)!r}.")
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{name}: {str(path)!r} does not hold a JSON object.")
    else:
        raise TypeError(
            f"{name} must be an evaluation result (e.g. GSM8KResult), its to_dict() dict, a JSON file path or None, "
            f"got {type(results).__name__}."
        )
    from optimum_rku.evaluation.registry import task_of

    missing = [m.key for m in task_of(data).metrics if m.key not in data]
    missing += [key for key in REQUIRED_EVAL_KEYS if key not in data]
    if missing:
        raise ValueError(
            f"{name} is missing {missing}; pass what optimum_rku.evaluation.evaluate (or evaluate_gsm8k) returns."
        )
    return data


def check_model_dir(checkpoint_dir: Any, files: tuple[str, ...], what: str, hint: str) -> Path:
    """`checkpoint_dir` as a Path when it is a directory holding `files` and safetensors weights; else a TypeError,
    FileNotFoundError or ValueError naming what is missing (`what` names the kind of directory, `hint` how to make
    one)."""
    if not isinstance(checkpoint_dir, (str, os.PathLike)):
        raise TypeError(f"checkpoint_dir must be a directory path, got {type(checkpoint_dir).__name__}.")
    path = Path(checkpoint_dir).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint_dir {str(checkpoint_dir)!r} is not a directory.")
    missing = [name for name in files if not (path / name).is_file()]
    if not any(path.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise ValueError(f"{str(checkpoint_dir)!r} is not {what} (missing {', '.join(missing)}); {hint}.")
    return path


def read_metadata(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's `rku_config.json` (read here without importing torch, so cards and pushes stay light)."""
    path = Path(checkpoint_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{str(checkpoint_dir)!r} has no {CONFIG_NAME}: not an optimum-rku checkpoint.")
    return json.loads(path.read_text(encoding="utf-8"))


def read_eval_results(checkpoint_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The checkpoint's `eval_results.json` as a dict, or None when it has none."""
    path = Path(checkpoint_dir) / EVAL_RESULTS_FILE
    return result_dict(path) if path.is_file() else None
