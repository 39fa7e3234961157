"""The one model loader: Hub ids, directories, optimum-rku checkpoints, GGUF files and provider aliases ("testbed").

`RKUPruner.from_pretrained` and every command load through `load_pretrained`, which returns the model, its tokenizer,
where it came from and its data provider (the seam that knows a model's default data).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optimum_rku.data.providers import DEFAULT_MODEL, DataProvider, get_provider, provider_for


@dataclass
class LoadedModel:
    """A loaded causal LM with its tokenizer, its source (a path, Hub id or GGUF file) and its data provider."""

    model: Any
    tokenizer: Any
    source: str | None
    data: DataProvider
    #: the folder of the LoRA adapter merged into `model` on loading (an adapter checkpoint with `with_adapter`)
    adapter: str | None = None


def load_pretrained(
    model_or_path: str | os.PathLike | None = None,
    *,
    tokenizer: Any = None,
    torch_dtype: Any = "auto",
    device_map: Any = None,
    trust_remote_code: bool = False,
    require_supported: bool = True,
    with_adapter: bool = False,
    **model_kwargs: Any,
) -> LoadedModel:
    """Load a causal LM and its tokenizer; None loads `DEFAULT_MODEL` (the bundled testbed).

    `model_kwargs` go to transformers' `from_pretrained` as they are (`revision`, `token`, `gguf_file`,
    `attn_implementation`, ...). A GGUF source (`gguf_file=...`, a path ending in `.gguf`, or a packaged model's name such as "smollm2") is
    dequantized. optimum-rku checkpoints with per-layer widths load with optimum-rku's classes (no remote code runs).
    With `require_supported`, a family optimum-rku cannot prune is refused before any weights load. With
    `with_adapter`, an adapter checkpoint (`recover(merge=False, save_dir=...)`: pruned base at the top, its LoRA
    adapter in `adapter/`) loads as base + adapter, merged in memory (`LoadedModel.adapter` names the folder); without
    it, as its top-level weights: the pruned base alone.
    """
    if not isinstance(with_adapter, bool):
        raise TypeError(f"with_adapter must be a bool, got {with_adapter!r}.")
    if model_or_path is not None and not isinstance(model_or_path, (str, os.PathLike)):
        raise TypeError(
            "model_or_path must be a Hub id, a directory, a PreTrainedModel or None, got "
            f"{type(model_or_path).__name__}."
        )
    from optimum_rku.io.adapter import ADAPTER_DIR, adapter_in
    from optimum_rku.io.checkpoint import RKUModelForCausalLM, is_rku_checkpoint, load_tokenizer
    from optimum_rku.io.files import restore_interrupted
    from optimum_rku.io.metadata import read_metadata
    from optimum_rku.io.sources import load_causal_lm, load_config, resolve_gguf
    from optimum_rku.models.specs import check_supported

    model_or_path, gguf_file = resolve_gguf(model_or_path, model_kwargs.pop("gguf_file", None))
    if model_or_path is None and gguf_file is None:
        model_or_path = DEFAULT_MODEL
    data = provider_for(model_or_path) if gguf_file is None else get_provider(None)
    own = data.model_path() if gguf_file is None and data.model_alias is not None else None
    path = str(own or model_or_path)
    restore_interrupted(path)  # a checkpoint whose replace was killed between two renames: its previous state
    kwargs: dict[str, Any] = {"dtype": torch_dtype, **model_kwargs}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if gguf_file is None and is_rku_checkpoint(path):  # our own classes: no remote code needs to run
        model = RKUModelForCausalLM.from_pretrained(path, **kwargs)
    else:
        if require_supported:
            config = load_config(path, gguf_file=gguf_file, trust_remote_code=trust_remote_code, **model_kwargs)
            check_supported(config)  # clear error before loading any weights
        model = load_causal_lm(path, gguf_file=gguf_file, trust_remote_code=trust_remote_code, **kwargs)
    adapter = None
    if with_adapter and gguf_file is None and adapter_in(path) is not None:  # its base is this very directory
        from peft import PeftModel

        adapter = ADAPTER_DIR
        model = PeftModel.from_pretrained(model, str(adapter_in(path))).merge_and_unload()
    tokenizer_kwargs = {k: v for k, v in model_kwargs.items() if k in ("revision", "token", "cache_dir")}
    if gguf_file is not None:
        tokenizer_kwargs["gguf_file"] = gguf_file
    if tokenizer is None:
        tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code, **tokenizer_kwargs)
    elif isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)
    source = path if Path(path).exists() else str(model_or_path)
    if gguf_file is not None:
        source = str(Path(path) / gguf_file) if Path(path).is_dir() else f"{path}:{gguf_file}"
    elif own is None and is_checkpoint(path):  # a checkpoint pruned from a provider's model keeps its data
        data = provider_for(path, read_metadata(path))
    return LoadedModel(model, tokenizer, source, data, adapter)


def is_checkpoint(path: str | os.PathLike | None) -> bool:
    """Whether `path` is a local optimum-rku checkpoint directory (it holds `rku_config.json`)."""
    from optimum_rku.config import CONFIG_NAME

    return path is not None and (Path(path).expanduser() / CONFIG_NAME).is_file()
