"""How checkpoints, data sources and numbers are named in cards, tables and commands (Hub ids, file names, 1.2M)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from optimum_rku.data.providers import base_model_of, is_model_alias
from optimum_rku.io.packaged import packaged_model

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")


DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt", ".arrow")
#: weight-file suffixes: a name ending in one is a file (e.g. a GGUF), never a Hub model id
WEIGHT_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".pth")


CACHE_DIR = re.compile(r"models--([^/\\]+?)--([^/\\]+)")


def hub_model_id(name: Any) -> str | None:
    """Return `name` as a Hub model id when it looks like one (not a local path or the testbed), else None."""
    if not name or not isinstance(name, str):
        return None
    match = CACHE_DIR.search(name.replace("\\", "/"))
    if match:  # a snapshot in the Hugging Face cache: models--org--name/snapshots/<sha>
        return f"{match.group(1)}/{match.group(2)}"
    if (
        is_model_alias(name)
        or packaged_model(name) is not None  # a packaged GGUF's short or file name
        or Path(name).expanduser().exists()
        or name.lower().endswith(DATA_SUFFIXES + WEIGHT_SUFFIXES)
    ):
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


def source_fingerprint(name: Any) -> str | None:
    """A short content hash that recognises a local model again after its folder moved (None for a Hub id, an
    alias or a path that does not exist): its config.json and weights index (or weight-file names and sizes) for a
    directory, its size and first MiB for a single file such as a GGUF."""
    import hashlib

    if not isinstance(name, (str, os.PathLike)) or hub_model_id(str(name)) or is_model_alias(str(name)):
        return None
    path = Path(name).expanduser()
    digest = hashlib.sha256()
    if path.is_file():
        digest.update(str(path.stat().st_size).encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(1 << 20))
    elif path.is_dir():
        for item in sorted(path.iterdir()):
            if item.name in ("config.json", "model.safetensors.index.json"):
                digest.update(item.name.encode() + item.read_bytes())
            elif item.suffix in (".safetensors", ".bin", ".gguf"):
                digest.update(f"{item.name}:{item.stat().st_size}".encode())
    else:
        return None
    return "sha256:" + digest.hexdigest()[:16]


def portable_source(name: Any) -> dict[str, str | None]:
    """The `base_model` a checkpoint records (never a machine path, see `portable_model_name`), plus
    `base_model_fingerprint` when the source was a local folder or file (`source_fingerprint`)."""
    record: dict[str, str | None] = {"base_model": portable_model_name(name)}
    fingerprint = source_fingerprint(name)
    if fingerprint is not None:
        record["base_model_fingerprint"] = fingerprint
    return record


def portable_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """`meta` (an `rku_config.json`) with every model and dataset name made portable (`portable_model_name`): what
    `push` uploads, so a checkpoint written before records were portable still uploads no machine path."""
    import copy

    out = copy.deepcopy(dict(meta))
    if out.get("base_model"):
        out["base_model"] = portable_model_name(out["base_model"])
    for section in ("calibration", "recovery"):
        part = out.get(section)
        holders = [part, part.get("data")] if isinstance(part, dict) else []
        for holder in holders:
            if isinstance(holder, dict) and isinstance(holder.get("dataset"), str):
                holder["dataset"] = portable_model_name(holder["dataset"]) or holder["dataset"]
    return out


def is_local_record(meta: Mapping[str, Any]) -> bool:
    """Whether a checkpoint's `base_model` names a local folder or file by name only (so only `--base` finds it)."""
    return bool(meta.get("base_model_fingerprint"))


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
