"""Shared runtime of the commands: model names and loading, devices, dtypes, files, printing."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from optimum_rku.cli.args import TESTBED, CLIError
from optimum_rku.config import CONFIG_NAME


# ------------------------------------------------------------------------------------------------- shared runtime
def say(*parts: Any) -> None:
    print(*parts, flush=True)


def looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or name.endswith(".json")


def check_model_name(name: str | None) -> str | None:
    """None for the testbed, else the name; a path-like name that does not exist is a clear input error."""
    if name is None or name == TESTBED:
        return None
    if not isinstance(name, str) or not name.strip():
        raise CLIError(f"--model {name!r} is empty; pass a Hub id, a directory or 'testbed'.")
    path = Path(name).expanduser()
    if path.exists() and not path.is_dir() and path.suffix != ".gguf":
        raise CLIError(f"--model {name!r} is a file; pass a model directory, a .gguf file, a Hub id or 'testbed'.")
    if not path.exists() and name.endswith(".gguf"):
        raise FileNotFoundError(f"--model {name!r}: no such file.")
    if not path.exists() and looks_like_path(name):
        raise FileNotFoundError(f"--model {name!r}: no such directory.")
    return name


def model_argument(args: argparse.Namespace) -> str | None:
    """--model checked; None with --gguf-file alone (a path to a GGUF file or 'smollm2': no testbed involved)."""
    if getattr(args, "gguf_file", None) and args.model == TESTBED:
        return None
    return check_model_name(args.model)


def check_files(files: Sequence[str] | None, flag: str) -> list[str] | None:
    if not files:
        return None
    for name in files:
        if not Path(name).expanduser().is_file():
            raise FileNotFoundError(f"{flag} {name!r}: no such file.")
    return [str(Path(name).expanduser()) for name in files]


def is_testbed_model(name: str | None) -> bool:
    """The testbed itself, or a local checkpoint pruned from it (rku_config.json says is_testbed)."""
    if name is None or name == TESTBED:
        return True
    path = Path(name).expanduser()
    if (path / CONFIG_NAME).is_file():
        try:
            return bool(json.loads((path / CONFIG_NAME).read_text()).get("is_testbed", False))
        except (OSError, json.JSONDecodeError):
            return False
    try:
        from optimum_rku.testbed import TESTBED_PATH
    except ImportError:
        return False
    return path.exists() and path.resolve() == Path(TESTBED_PATH).resolve()


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


def require_testbed() -> None:
    """Clear error when the bundled testbed weights are not there (they are trained in-project)."""
    from optimum_rku import testbed

    if not (Path(testbed.TESTBED_PATH) / "config.json").is_file():
        raise FileNotFoundError(
            "The bundled testbed model is missing; train it with `optimum-rku testbed train` or pass --model."
        )


def load_model(
    name: str | None, torch_dtype: str = "auto", trust_remote_code: bool = False, gguf_file: str | None = None
):
    """(model, tokenizer) for the testbed, an optimum-rku checkpoint (any width layout), a GGUF file or any causal LM."""
    from optimum_rku.io.sources import load_causal_lm, resolve_gguf

    name, gguf_file = resolve_gguf(name, gguf_file)
    if gguf_file is not None:
        from optimum_rku.io.checkpoint import load_tokenizer

        model = load_causal_lm(name, gguf_file=gguf_file, dtype=dtype_of(torch_dtype))
        return model.eval(), load_tokenizer(name, gguf_file=gguf_file)
    if name is None or name == TESTBED:
        from optimum_rku import testbed

        require_testbed()
        return testbed.load() if torch_dtype == "auto" else testbed.load(torch_dtype=dtype_of(torch_dtype))
    kwargs: dict[str, Any] = {"dtype": dtype_of(torch_dtype)}
    if (Path(name).expanduser() / CONFIG_NAME).is_file():
        from optimum_rku.io.checkpoint import RKUModelForCausalLM

        model = RKUModelForCausalLM.from_pretrained(name, **kwargs)
    else:
        model = load_causal_lm(name, trust_remote_code=trust_remote_code, **kwargs)
    from optimum_rku.io.checkpoint import load_tokenizer

    tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code)
    return model.eval(), tokenizer


def atomic_write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
