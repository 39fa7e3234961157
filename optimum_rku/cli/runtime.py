"""What the commands share at run time: model names checked before work, loading, devices, dtypes, files, printing."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from optimum_rku.cli.args import CLIError


def say(*parts: Any) -> None:
    print(*parts, flush=True)


def looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or name.endswith(".json")


def check_model_name(name: Any) -> str:
    """The name as given; a model alias ("testbed") passes, a path-like name that does not exist is an input error."""
    from optimum_rku.data.providers import is_model_alias

    if not isinstance(name, str) or not name.strip():
        raise CLIError(f"--model {name!r} is empty; pass a Hub id, a directory or 'testbed'.")
    if is_model_alias(name):
        return name
    path = Path(name).expanduser()
    if path.exists() and not path.is_dir() and path.suffix != ".gguf":
        raise CLIError(f"--model {name!r} is a file; pass a model directory, a .gguf file, a Hub id or 'testbed'.")
    if not path.exists() and name.endswith(".gguf"):
        raise FileNotFoundError(f"--model {name!r}: no such file.")
    if not path.exists() and looks_like_path(name):
        raise FileNotFoundError(f"--model {name!r}: no such directory.")
    return name


def model_argument(args: argparse.Namespace) -> str | None:
    """--model checked; None with --gguf-file alone (a path to a GGUF file or a packaged model's name, e.g. 'smollm2', names the model itself)."""
    from optimum_rku.data.providers import DEFAULT_MODEL

    if getattr(args, "gguf_file", None) and args.model == DEFAULT_MODEL:
        return None
    return check_model_name(args.model)


def base_model_for(meta: dict[str, Any], explicit: str | None, flag: str) -> str:
    """The dense model a checkpoint was pruned from: `--base` when given (checked against the recorded content hash
    of a local source), else the name the checkpoint records, unless that is a local folder known by name only."""
    from optimum_rku.data.providers import base_model_of, is_model_alias
    from optimum_rku.hub.labels import is_local_record, source_fingerprint

    recorded = base_model_of(meta)
    if explicit is not None:
        expected, found = meta.get("base_model_fingerprint"), source_fingerprint(explicit)
        if expected and found and expected != found:
            raise CLIError(
                f"--base {explicit!r} is not the model this checkpoint was pruned from ({recorded!r}): its content "
                f"hash is {found}, the checkpoint records {expected}."
            )
        return explicit
    if not recorded:
        raise CLIError(f"{flag}: the checkpoint does not record its base model; pass --base PATH_OR_HUB_ID.")
    if is_local_record(meta) and not is_model_alias(recorded):  # an alias ("testbed") loads wherever it lives
        raise CLIError(
            f"{flag}: the checkpoint was pruned from a local model it records by name only ({recorded!r}, no machine "
            "path is kept); pass --base PATH to that model."
        )
    return recorded


def data_of(name: str | None):
    """The data provider of the model named `name` (for a checkpoint: the one its `rku_config.json` records)."""
    from optimum_rku.data.providers import provider_for
    from optimum_rku.io.loading import is_checkpoint
    from optimum_rku.io.metadata import read_metadata

    return provider_for(name, read_metadata(name) if is_checkpoint(name) else None)


def check_files(files: Sequence[str] | None, flag: str) -> list[str] | None:
    if not files:
        return None
    for name in files:
        if not Path(name).expanduser().is_file():
            raise FileNotFoundError(f"{flag} {name!r}: no such file.")
    return [str(Path(name).expanduser()) for name in files]


def dtype_of(name: str):
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(f"--device {name!r} but no CUDA device is available; use --device cpu.")
    return name


def load_model(
    name: str | None,
    torch_dtype: str = "auto",
    trust_remote_code: bool = False,
    gguf_file: str | None = None,
    with_adapter: bool = False,
):
    """(model, tokenizer) in eval mode through the library's loader; any causal LM loads (evaluation needs no family
    optimum-rku can prune). `with_adapter`: an adapter checkpoint loads as base + adapter (merged in memory)."""
    from optimum_rku.io.loading import load_pretrained

    loaded = load_pretrained(
        name,
        torch_dtype=dtype_of(torch_dtype),
        trust_remote_code=trust_remote_code,
        require_supported=False,
        with_adapter=with_adapter,
        **({"gguf_file": gguf_file} if gguf_file else {}),
    )
    return loaded.model.eval(), loaded.tokenizer


def calibration_texts(
    dataset: str | None,
    data_files: Sequence[str] | None,
    text_column: Sequence[str],
    num_samples: int,
    seed: int,
    dataset_config: str | None = None,
    dataset_split: str = "train",
):
    """The calibration texts named on the command line (a Hub dataset or local files), or None: the model's default."""
    if not dataset and not data_files:
        return None
    from optimum_rku.data.calibration import load_texts
    from optimum_rku.data.gsm8k import GSM8K_HUB_ID, hub_config

    dataset = dataset or GSM8K_HUB_ID
    texts, _ = load_texts(
        dataset,
        num_samples=num_samples,
        dataset_config_name=dataset_config or hub_config(dataset, data_files),
        dataset_split=dataset_split,
        text_column=text_column[0] if len(text_column) == 1 else list(text_column),
        data_files=data_files[0] if data_files and len(data_files) == 1 else data_files,
        seed=seed,
    )
    return texts
