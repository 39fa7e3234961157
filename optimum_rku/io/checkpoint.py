"""Checkpoints: atomic save of pruned models (plain or per-layer-config + remote code) and `RKUModelForCausalLM`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from optimum_rku.config import CONFIG_NAME
from optimum_rku.io.files import clean_stale, restore_interrupted, staged_directory
from optimum_rku.io.metadata import REMOTE_CODE_FILE
from optimum_rku.models.specs import get_spec


def check_save_dir(save_dir: str | os.PathLike, source: str | os.PathLike | None, overwrite: bool) -> Path:
    """Validate an output directory before any heavy work: never the source model, never a non-empty dir silently."""
    target = Path(save_dir).expanduser().resolve()
    clean_stale(target)  # leftovers of killed saves; one killed mid-replace gets its previous checkpoint back
    if source is not None and Path(source).expanduser().exists():
        source_path = Path(source).expanduser().resolve()
        if source_path.is_file():  # a GGUF file: its directory holds the source
            source_path = source_path.parent
        if source_path == target or source_path.is_relative_to(target):
            raise ValueError(
                f"save_dir {str(save_dir)!r} is (or holds) the source model directory; choose another directory."
            )
    if target.exists():
        if not target.is_dir():
            raise ValueError(f"save_dir {str(save_dir)!r} exists and is not a directory.")
        if any(target.iterdir()) and not overwrite:
            raise ValueError(f"save_dir {str(save_dir)!r} is not empty; pass overwrite=True to replace it.")
    return target


def needs_remote_code(config) -> bool:
    """Per-layer widths, or head counts the stock config class rejects, need `modeling_rku.py` to load."""
    from optimum_rku.models.specs import stock_config_accepts

    return not stock_config_accepts(config)


def is_rku_checkpoint(path: str | os.PathLike) -> bool:
    """A local checkpoint that needs optimum-rku's classes (per-layer widths or relaxed head-count config)."""
    file = Path(path) / "config.json"
    if not file.is_file():
        return False
    config = json.loads(file.read_text())
    auto_map = config.get("auto_map") or {}
    return bool(config.get("per_layer_config")) or any(REMOTE_CODE_FILE[:-3] in str(v) for v in auto_map.values())


def _write_model(model, tokenizer, directory: Path) -> None:
    config = model.config
    remote = needs_remote_code(config)
    spec = get_spec(config)
    if remote:
        from optimum_rku.models.modeling_rku import rku_class

        module = REMOTE_CODE_FILE[:-3]
        class_name = rku_class(spec.causal_lm_class).__name__
        config.__class__ = rku_class(spec.config_class)  # relaxed head-count validation for save and load
        config.auto_map = {
            "AutoConfig": f"{module}.{config.__class__.__name__}",
            "AutoModelForCausalLM": f"{module}.{class_name}",
        }
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
        from optimum_rku.models import modeling_rku

        shutil.copyfile(modeling_rku.__file__, directory / REMOTE_CODE_FILE)
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
    with staged_directory(target) as tmp:
        _write_model(model, tokenizer, tmp)
        (tmp / CONFIG_NAME).write_text(json.dumps(metadata, indent=2, sort_keys=False) + "\n")
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        for writer in writers or []:
            writer(tmp)
    return target


#: `from_pretrained` arguments that say where a checkpoint's files are (passed on to the config as well).
HUB_KWARGS = ("revision", "token", "subfolder", "cache_dir", "local_files_only")


def load_rku_config(path: str | os.PathLike, **hub_kwargs: Any):
    """The config of a checkpoint (a directory, or a Hub id with `HUB_KWARGS`), read with optimum-rku's relaxed config
    class for its family."""
    from transformers import PretrainedConfig

    from optimum_rku.models.modeling_rku import rku_class

    raw, _ = PretrainedConfig.get_config_dict(str(path), **hub_kwargs)
    spec = get_spec(SimpleNamespace(model_type=raw.get("model_type")))  # raises, listing the supported families
    return rku_class(spec.config_class).from_pretrained(path, **hub_kwargs)


def load_tokenizer(path: str | os.PathLike, trust_remote_code: bool = False, **kwargs):
    """`AutoTokenizer.from_pretrained`, also for checkpoints whose config only optimum-rku's classes accept.

    `kwargs` (e.g. `gguf_file`, `revision`, `token`) go to `AutoTokenizer.from_pretrained`.
    """
    from transformers import AutoTokenizer

    if not kwargs.get("gguf_file") and is_rku_checkpoint(path):
        return AutoTokenizer.from_pretrained(str(path), config=load_rku_config(path), **kwargs)
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code, **kwargs)


class RKUModelForCausalLM:
    """Loads any optimum-rku checkpoint (uniform or per-layer widths) without remote code."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """Like `AutoModelForCausalLM.from_pretrained`, using optimum-rku's own classes for per-layer widths."""
        from optimum_rku.models.modeling_rku import rku_class

        kwargs.pop("trust_remote_code", None)
        restore_interrupted(pretrained_model_name_or_path)
        hub = {key: kwargs[key] for key in HUB_KWARGS if kwargs.get(key) is not None}
        config = kwargs.pop("config", None) or load_rku_config(pretrained_model_name_or_path, **hub)
        spec = get_spec(config)
        if hasattr(config, "auto_map"):
            config.auto_map = None
        return rku_class(spec.causal_lm_class).from_pretrained(pretrained_model_name_or_path, config=config, **kwargs)
