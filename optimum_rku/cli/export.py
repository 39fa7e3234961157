"""`export gguf`: write a saved checkpoint as one GGUF file for llama.cpp / Ollama."""

from __future__ import annotations

import argparse
from pathlib import Path

from optimum_rku.cli.runtime import say
from optimum_rku.export.gguf import GGUF_DTYPES  # a light module: torch and gguf load when the command runs
from optimum_rku.export.quantize import QUANT_TYPES

FORMATS = ("gguf",)


def add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=FORMATS, help="output format: gguf (llama.cpp, Ollama, LM Studio)")
    parser.add_argument("--checkpoint", required=True, help="saved checkpoint directory (pruned or dense)")
    parser.add_argument("--output", required=True, help="the .gguf file to write")
    parser.add_argument(
        "--dtype",
        choices=GGUF_DTYPES,
        default="f16",
        help="weight type (default: f16; q8_0 keeps odd rows in f16); with --quantize, the float file it starts from",
    )
    parser.add_argument(
        "--quantize",
        choices=tuple(QUANT_TYPES),
        default=None,
        help="then quantize with llama.cpp's own quantizer (e.g. q4_k_m, q8_0; needs the [llamacpp] extra) and print "
        "every tensor's type and fallback",
    )
    parser.add_argument("--threads", type=int, default=None, help="quantizer threads (default: every core)")
    parser.add_argument(
        "--pre-tokenizer",
        default=None,
        help="llama.cpp pre-tokenizer name when tokenizer.json's is not recognised (e.g. smollm, llama-bpe, qwen2)",
    )
    parser.add_argument(
        "--tokenizer-gguf", default=None, help="copy the tokenizer of this GGUF of the same base model instead"
    )
    parser.add_argument(
        "--modelfile",
        action="store_true",
        help="also write an Ollama Modelfile beside the file (chat template and stop tokens): ollama create NAME -f "
        "Modelfile",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")


def run(args: argparse.Namespace) -> int:
    """Export, print what was written and how to run it; a generated model card beside the file gains its section."""
    from optimum_rku.export.gguf import export_gguf, plan_gguf_export
    from optimum_rku.hub.card import CARD_FILE, is_generated_card, write_model_card

    plan = plan_gguf_export(
        args.checkpoint, args.dtype, pre_tokenizer=args.pre_tokenizer, tokenizer_gguf=args.tokenizer_gguf
    )
    path = export_gguf(
        args.checkpoint,
        args.output,
        args.dtype,
        pre_tokenizer=args.pre_tokenizer,
        tokenizer_gguf=args.tokenizer_gguf,
        overwrite=args.overwrite,
        modelfile=args.modelfile,
        quantize=args.quantize,
        threads=args.threads,
    )
    say(plan.summary())
    if args.quantize:
        from optimum_rku.export.quantize import read_types

        for line in read_types(path).lines():
            say(line)
    say(f"wrote {path.resolve()} ({path.stat().st_size / 2**20:.1f} MiB)")
    flash = " -fa on" if plan.per_layer else ""
    say(f'run it: llama-cli -m {path} -p "Question: ...\\nAnswer:" -n 256{flash}')
    if args.modelfile:
        say(
            f"wrote {path.resolve().parent / 'Modelfile'}; Ollama: ollama create my-model -f {path.parent / 'Modelfile'}"
        )
    checkpoint = Path(args.checkpoint)
    if path.resolve().parent == checkpoint.resolve() and is_generated_card(checkpoint / CARD_FILE):
        write_model_card(checkpoint)
        say(f"updated {CARD_FILE} with a 'Use with llama.cpp' section")
    return 0
