"""Checkpoints: atomic save of pruned models (plain or per-layer-config + remote code) and `RKUModelForCausalLM`."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from optimum_rku.architectures import check_supported

REMOTE_CODE_FILE = "modeling_rku.py"
RKU_METADATA_FILE = "rku_config.json"


def check_save_dir(save_dir: str | os.PathLike, source: str | os.PathLike | None, overwrite: bool) -> Path:
    """Validate an output directory before any heavy work: never the source model, never a non-empty dir silently."""
    target = Path(save_dir).expanduser().resolve()
    if source is not None and Path(source).expanduser().exists():
        if Path(source).expanduser().resolve() == target:
            raise ValueError(f"save_dir {str(save_dir)!r} is the source model directory; choose another directory.")
    if target.exists():
        if not target.is_dir():
            raise ValueError(f"save_dir {str(save_dir)!r} exists and is not a directory.")
        if any(target.iterdir()) and not overwrite:
            raise ValueError(f"save_dir {str(save_dir)!r} is not empty; pass overwrite=True to replace it.")
    return target


def needs_remote_code(config) -> bool:
    return bool(getattr(config, "is_heterogeneous", False))


def _write_model(model, tokenizer, directory: Path) -> None:
    config = model.config
    remote = needs_remote_code(config)
    model_type = check_supported(config)
    if remote:
        from optimum_rku.modeling_rku import MODEL_CLASSES

        class_name = MODEL_CLASSES[model_type].__name__
        config.auto_map = {"AutoModelForCausalLM": f"{REMOTE_CODE_FILE[:-3]}.{class_name}"}
        config.architectures = [class_name]
    else:
        if hasattr(config, "auto_map"):
            config.auto_map = None
    try:
        model.save_pretrained(directory, safe_serialization=True)
    finally:
        if remote:
            config.auto_map = None
            config.architectures = [type(model).__name__]
    if remote:
        shutil.copyfile(Path(__file__).with_name(REMOTE_CODE_FILE), directory / REMOTE_CODE_FILE)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def save_checkpoint(
    model,
    tokenizer,
    save_dir: str | os.PathLike,
    metadata: dict[str, Any],
    *,
    source: str | os.PathLike | None = None,
    overwrite: bool = False,
    extra_files: dict[str, bytes] | None = None,
    writers: list | None = None,
) -> Path:
    """Write model, tokenizer and `rku_config.json` to a temp dir beside `save_dir`, then move it into place.

    `writers` are callables `f(directory)` run inside the temp dir (model card, charts) before the move.
    """
    target = check_save_dir(save_dir, source, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _write_model(model, tokenizer, tmp)
        (tmp / RKU_METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=False) + "\n")
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        for writer in writers or []:
            writer(tmp)
        if target.exists():
            backup = target.parent / f".{target.name}.old-{os.getpid()}"
            target.rename(backup)
            tmp.rename(target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def read_metadata(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
    """The `rku_config.json` of a pruned checkpoint."""
    path = Path(checkpoint_dir) / RKU_METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{str(checkpoint_dir)!r} has no {RKU_METADATA_FILE}: not an optimum-rku checkpoint.")
    return json.loads(path.read_text())


class RKUModelForCausalLM:
    """Loads any optimum-rku checkpoint (uniform or per-layer widths) without remote code."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """Like `AutoModelForCausalLM.from_pretrained`, using optimum-rku's own classes for per-layer widths."""
        from transformers import AutoConfig

        from optimum_rku.modeling_rku import MODEL_CLASSES

        kwargs.pop("trust_remote_code", None)
        config = kwargs.pop("config", None) or AutoConfig.from_pretrained(pretrained_model_name_or_path)
        model_type = check_supported(config)
        if hasattr(config, "auto_map"):
            config.auto_map = None
        return MODEL_CLASSES[model_type].from_pretrained(pretrained_model_name_or_path, config=config, **kwargs)
