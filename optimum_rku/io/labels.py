"""How checkpoints, data sources and numbers are named in cards, tables and commands (Hub ids, file names, 1.2M)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from optimum_rku.data.providers import base_model_of, is_model_alias

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")


DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt", ".arrow")


CACHE_DIR = re.compile(r"models--([^/\\]+?)--([^/\\]+)")


def hub_model_id(name: Any) -> str | None:
    """Return `name` as a Hub model id when it looks like one (not a local path or the testbed), else None."""
    if not name or not isinstance(name, str):
        return None
    match = CACHE_DIR.search(name.replace("\\", "/"))
    if match:  # a snapshot in the Hugging Face cache: models--org--name/snapshots/<sha>
        return f"{match.group(1)}/{match.group(2)}"
    if is_model_alias(name) or Path(name).expanduser().exists() or name.lower().endswith(DATA_SUFFIXES):
        return None
    return name if HUB_ID.match(name) else None


def portable_model_name(name: Any) -> str | None:
    """How saved metadata names a model without a machine path: its Hub id (also read from a Hub cache snapshot), a
    provider alias ("testbed"), else only its folder or file name; None for no name."""
    if not isinstance(name, (str, os.PathLike)) or not str(name).strip():
        return None
    name = str(name).strip()
    hub = hub_model_id(name)
    if hub or is_model_alias(name):
        return hub or name
    return PurePosixPath(name.replace("\\", "/").rstrip("/")).name or None


def hub_dataset_id(name: Any) -> str | None:
    """A dataset name usable in card metadata (Hub ids only; local files and in-memory lists are described in text)."""
    return hub_model_id(name)


def human_count(n: float) -> str:
    """Compact count: 1234 -> 1.23K, 7.6e9 -> 7.60B."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{int(n)}"


def human_bytes(n: float) -> str:
    """Compact byte size."""
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def percent(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def source_label(name: Any) -> Any:
    """A data source as shown in a card: Hub ids as is, local files by file name only (no machine paths)."""
    if not isinstance(name, str) or hub_model_id(name):
        return name
    looks_like_path = ("/" in name or "\\" in name) and " " not in name
    if looks_like_path or name.lower().endswith(DATA_SUFFIXES) or Path(name).expanduser().exists():
        return f"local file `{Path(name).name}`"
    return name


def checkpoint_name(meta: Mapping[str, Any], repo_id: str | None) -> str:
    """Card title / model-index name: the repo name, else `<base>-rku-<sparsity>`."""
    if repo_id:
        return repo_id.split("/")[-1]
    base = base_model_of(meta) or "model"
    base_id = hub_model_id(str(base))
    stem = (base_id or Path(str(base)).name or "model").split("/")[-1]
    target = float(meta["pruning_config"].get("sparsity", meta["plan"].get("target_sparsity", 0.0)))
    return f"{stem}-rku-{round(100 * target)}"


def check_repo_id(repo_id: Any) -> str:
    """Validate a Hub repo id ('user/name' or 'name') before any work; raise ValueError naming what is allowed."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str) or not repo_id:
        raise TypeError(f"repo_id must be a non-empty string like 'user/model-name', got {repo_id!r}.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "invalid"
        raise ValueError(
            f"repo_id={repo_id!r} is not a valid Hub repo id ({first}); use 'user/model-name' with letters, digits, "
            "'-', '_' and '.'."
        ) from None
    if repo_id.count("/") > 1:
        raise ValueError(f"repo_id={repo_id!r} has more than one '/'; use 'user/model-name'.")
    return repo_id
