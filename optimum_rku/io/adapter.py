"""PEFT adapters that travel with their pruned base: the on-disk layout, writing, reloading and what `push` uploads.

An *adapter checkpoint* is a directory whose top level is the pruned model before recovery (a complete optimum-rku
checkpoint: weights, config, tokenizer, `rku_config.json`, card) and whose `adapter/` holds the LoRA adapter trained
on it, in PEFT's format. `recover(merge=False, save_dir=...)` writes one; `recover(save_adapter=True)` writes the
merged model with one in `pruned_base/`.

The adapter's `base_model_name_or_path` never names an absolute local path, so the directory can be moved, copied or
uploaded as a whole: on disk it is `..` (the directory above `adapter/`), and `push_to_hub` rewrites it to the
repository id, because the pushed repository keeps the same layout (pruned base at its root, adapter in `adapter/`).
PEFT resolves a relative base against the working directory, not against the adapter; `load_adapter_model` resolves
it against the adapter's own directory (or its place in a Hub repository) and loads per-layer-width bases without
remote code. On the Hub, `PeftModel.from_pretrained(base, repo_id, subfolder="adapter")` is the plain-PEFT way.
"""

from __future__ import annotations

import fnmatch
import json
import os
import posixpath
import shutil
from pathlib import Path
from typing import Any

from optimum_rku.io.metadata import TOKENIZER_FILES

ADAPTER_DIR = "adapter"
PRUNED_BASE_DIR = "pruned_base"
ADAPTER_CONFIG_FILE = "adapter_config.json"
#: `base_model_name_or_path` of a saved adapter: its base is the directory above `adapter/`.
LOCAL_BASE_REFERENCE = ".."
#: What an evaluation record of an adapter checkpoint measured (its `evaluated` key), as tables and cards name it:
#: the recovered model (`eval` by default) or the top-level weights alone (`eval --no-adapter`).
EVALUATED_LABELS = {
    "base+adapter": "pruned base + LoRA adapter",
    "base": "pruned base alone, without its LoRA adapter",
}
#: Files of an adapter directory that are uploaded: PEFT's config and weights, and the tokenizer saved beside them.
ADAPTER_UPLOAD_PATTERNS = (
    ADAPTER_CONFIG_FILE,
    "adapter_model.safetensors",
    *TOKENIZER_FILES,
)


def write_adapter(peft_model, tokenizer, directory: str | os.PathLike, base_reference: str = LOCAL_BASE_REFERENCE):
    """Save a `PeftModel`'s adapter (and the tokenizer) to `directory` with `base_model_name_or_path=base_reference`.

    PEFT records the base model's own `name_or_path` (an absolute path, the dense source or nothing); that is replaced.
    PEFT's blank model-card template is not kept: the checkpoint's own card says how to load the adapter. Fields PEFT
    holds as sets (`target_modules`) are written sorted, so the file does not depend on the process's hash seed.
    """
    directory = Path(directory)
    peft_model.save_pretrained(directory, save_embedding_layers=False)  # embeddings are never adapted or resized
    config_file = directory / ADAPTER_CONFIG_FILE
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_reference
    for adapter_config in getattr(peft_model, "peft_config", {}).values():  # sets (target_modules): sorted, not in
        for field, value in vars(adapter_config).items():  # hash order, so the same run writes the same bytes
            if isinstance(value, (set, frozenset)) and isinstance(config.get(field), list):
                config[field] = sorted(value, key=str)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (directory / "README.md").unlink(missing_ok=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def adapter_in(checkpoint_dir: str | os.PathLike) -> Path | None:
    """`<checkpoint_dir>/adapter` when `checkpoint_dir` is an adapter checkpoint (whose top level is its base)."""
    path = Path(checkpoint_dir) / ADAPTER_DIR
    return path if (path / ADAPTER_CONFIG_FILE).is_file() else None


def nested_adapter_checkpoint(checkpoint_dir: str | os.PathLike) -> Path | None:
    """`<checkpoint_dir>/pruned_base` when a merged checkpoint carries the adapter checkpoint it was merged from."""
    path = Path(checkpoint_dir) / PRUNED_BASE_DIR
    return path if adapter_in(path) is not None and (path / "config.json").is_file() else None


def read_adapter_config(adapter_dir: str | os.PathLike) -> dict[str, Any]:
    """The `adapter_config.json` of an adapter directory, as a dict."""
    file = Path(adapter_dir) / ADAPTER_CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{str(adapter_dir)!r} has no {ADAPTER_CONFIG_FILE}: not a PEFT adapter directory.")
    return json.loads(file.read_text(encoding="utf-8"))


def stage_adapter(adapter_dir: Path, target: Path, base_model_id: str) -> list[str]:
    """Hard-link (or copy) an adapter's uploadable files into `target/adapter`, the config naming `base_model_id`.

    Returns the staged names relative to `target` (`adapter/adapter_config.json`, ...). The source is not modified.
    """
    out = target / ADAPTER_DIR
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for item in sorted(adapter_dir.iterdir()):
        if not item.is_file() or not any(fnmatch.fnmatch(item.name, p) for p in ADAPTER_UPLOAD_PATTERNS):
            continue
        destination = out / item.name
        if item.name == ADAPTER_CONFIG_FILE:
            config = read_adapter_config(adapter_dir)
            config["base_model_name_or_path"] = base_model_id
            destination.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        else:
            try:
                os.link(item, destination)
            except OSError:
                shutil.copy2(item, destination)
        names.append(f"{ADAPTER_DIR}/{item.name}")
    return names


def _is_relative_reference(reference: str) -> bool:
    """A base written as a path relative to the adapter (`..`, `../pruned_base`, `./x`), not a Hub id."""
    return reference.startswith(".")


def load_adapter_model(
    model_name_or_path: str | os.PathLike,
    *,
    subfolder: str | None = ADAPTER_DIR,
    revision: str | None = None,
    token: str | None = None,
    is_trainable: bool = False,
    **kwargs: Any,
):
    """The `PeftModel` of a saved adapter on its pruned base, found through the adapter's `base_model_name_or_path`.

    `model_name_or_path` is an adapter checkpoint (a directory or a Hub id; the adapter in its `subfolder`, default
    `adapter`) or an adapter directory itself. A relative base is resolved against the adapter's directory (or its
    place in the Hub repository), a Hub id is downloaded (at the adapter config's `revision`). The base loads through
    `RKUModelForCausalLM` (per-layer widths without remote code); `kwargs` (`torch_dtype`, `device_map`, ...) go to
    its `from_pretrained`.
    """
    from peft import PeftModel

    from optimum_rku.io.checkpoint import RKUModelForCausalLM

    if not isinstance(model_name_or_path, (str, os.PathLike)) or not str(model_name_or_path):
        raise TypeError(f"model_name_or_path must be a directory or a Hub repo id, got {model_name_or_path!r}.")
    if subfolder is not None and (not isinstance(subfolder, str) or not subfolder.strip("/")):
        raise ValueError(f"subfolder={subfolder!r} must be a non-empty folder name or None (adapter at the top).")
    local = Path(model_name_or_path).expanduser()
    if local.is_dir():
        candidates = [local / subfolder, local] if subfolder else [local]
        adapter_dir = next((c for c in candidates if (c / ADAPTER_CONFIG_FILE).is_file()), None)
        if adapter_dir is None:
            raise FileNotFoundError(
                f"No {ADAPTER_CONFIG_FILE} in {' or '.join(repr(str(c)) for c in candidates)}: not a saved adapter "
                "(recover(merge=False, save_dir=...) or recover(save_adapter=True) writes one)."
            )
        reference = _base_reference(read_adapter_config(adapter_dir), adapter_dir)
        base_dir = Path(reference) if Path(reference).is_absolute() else adapter_dir / reference
        if (base_dir / "config.json").is_file():
            base = RKUModelForCausalLM.from_pretrained(str(base_dir.resolve()), **kwargs)
        elif _is_relative_reference(reference) or Path(reference).is_absolute():
            raise FileNotFoundError(
                f"The adapter in {str(adapter_dir)!r} names its base {reference!r}, and {str(base_dir)!r} holds no "
                "model: keep the adapter checkpoint's directory together when moving it."
            )
        else:  # a Hub id
            hub = {"revision": read_adapter_config(adapter_dir).get("revision"), "token": token}
            base = RKUModelForCausalLM.from_pretrained(reference, **{k: v for k, v in hub.items() if v}, **kwargs)
        return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=is_trainable)

    from huggingface_hub import hf_hub_download

    from optimum_rku.hub.labels import check_repo_id

    repo_id = check_repo_id(str(model_name_or_path))
    config_file = hf_hub_download(repo_id, ADAPTER_CONFIG_FILE, subfolder=subfolder, revision=revision, token=token)
    config = json.loads(Path(config_file).read_text(encoding="utf-8"))
    reference = _base_reference(config, f"{repo_id}/{subfolder or ''}")
    hub: dict[str, Any] = {"token": token}
    if _is_relative_reference(reference):  # a folder of the same repository, at the same revision
        folder = posixpath.normpath(posixpath.join(subfolder or "", reference))
        if folder.startswith(".."):
            raise ValueError(f"The adapter in {repo_id!r} names its base {reference!r}, outside the repository.")
        base_id = repo_id
        hub.update(revision=revision, subfolder=None if folder == "." else folder)
    else:
        base_id = reference
        hub.update(revision=config.get("revision"))
    base = RKUModelForCausalLM.from_pretrained(base_id, **{k: v for k, v in hub.items() if v}, **kwargs)
    adapter_kwargs = {k: v for k, v in {"subfolder": subfolder, "revision": revision, "token": token}.items() if v}
    return PeftModel.from_pretrained(base, repo_id, is_trainable=is_trainable, **adapter_kwargs)


def _base_reference(config: dict[str, Any], where: Any) -> str:
    reference = config.get("base_model_name_or_path")
    if not isinstance(reference, str) or not reference:
        raise ValueError(f"The adapter in {str(where)!r} does not name its base model (base_model_name_or_path).")
    return reference
