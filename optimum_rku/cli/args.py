"""Parser building blocks shared by the commands: one-line errors, argument types, RKUConfig flags, common groups."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from optimum_rku import config as config_module
from optimum_rku.config import RKUConfig
from optimum_rku.data.gsm8k import GSM8K_HUB_ID
from optimum_rku.data.prompts import DEFAULT_BATCH_SIZE
from optimum_rku.data.providers import DEFAULT_MODEL
from optimum_rku.evaluation.registry import DEFAULT_TASK, TASKS
from optimum_rku.models.specs import SPECS

INPUT_ERRORS = (ValueError, TypeError, LookupError, FileNotFoundError, NotADirectoryError, IsADirectoryError)
DTYPES = ("auto", "float32", "bfloat16", "float16")

#: One-line help of every RKUConfig field; a field missing here still gets a flag (help names the field).
CONFIG_HELP = {
    "sparsity": "fraction of prunable decoder parameters (q/k/v/o + gate/up/down) to remove, in [0, 0.9]",
    "targets": "which structures may be removed",
    "importance": "how structures are scored (rku, magnitude, wanda, flap, taylor, random, or a registered name)",
    "objective": "label-free objective for gradient-based scores",
    "normalization": "block-relative normalization of RKU",
    "allocation": "one ranking across layers (global) or equal widths per layer (uniform)",
    "ranking": "how global allocation compares heads and channels of all layers (score, per parameter, ...)",
    "min_keep_attention": "fraction of each layer's heads/groups always kept (default: --min-keep)",
    "kv_cache_tokens": "price a KV group in the per-parameter rankings as its weights plus the KV cache it frees at this many tokens",
    "token_gradient_floor": "lift each token's NLL gradient (at the logits) to at least this norm when scoring (0: plain NLL)",
    "activity": "RKU's activity term: mean |y|, or the spread around the calibration mean (centered)",
    "attention_granularity": "unit of attention pruning",
    "min_keep": "fraction of each layer's channels and heads/groups always kept",
    "protected_layers": "layer indices that are never pruned",
    "round_to": "round kept FFN widths to a multiple of this (auto: 256 / 128 / 64 / 32 by layer width)",
    "num_calibration_samples": "number of calibration texts",
    "calibration_seq_len": "tokens per calibration text",
    "num_iterations": "re-score on the masked model between this many steps",
    "seed": "seed of calibration sampling and of the random baseline",
    "calibration": "score on the given texts, or on the model's own answers to them",
    "generation_max_new_tokens": "answer length for self-generated calibration",
    "generation_do_sample": "sample (instead of greedy) self-generated answers",
    "generation_temperature": "temperature of sampled self-generated answers",
    "generation_top_p": "top-p of sampled self-generated answers",
    "bias_compensation": "add removed channels' mean output to a down_proj / o_proj bias (FLAP; "
    + ", ".join(spec.family for spec in SPECS.values() if spec.output_bias_flags)
    + ")",
}


class CLIError(ValueError):
    """A bad command-line argument or input, reported as one line with exit code 2."""


# ------------------------------------------------------------------------------------------------- parser helpers
def one_line_error(parser: argparse.ArgumentParser, message: str) -> typing.NoReturn:
    """argparse errors as a single line (no usage block) with exit code 2."""
    parser.exit(2, f"{parser.prog}: error: {message} (see --help)\n")


class OneLineParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line."""

    def error(self, message: str) -> typing.NoReturn:
        one_line_error(self, message)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 1")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 0")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number > 0")
    return value


def unit_float(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number in [0, 1]")
    return value


def int_or_auto(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return non_negative_int(text)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"{text!r} must be 'auto' or an integer >= 0") from None


positive_int.__name__ = "positive integer"
int_or_auto.__name__ = "'auto' or a non-negative integer"
unit_float.__name__ = "number in [0, 1]"
non_negative_int.__name__ = "non-negative integer"
positive_float.__name__ = "positive number"


def _choices_for(name: str) -> tuple[str, ...] | None:
    """Allowed values of a string RKUConfig field, read from the config module's constants (e.g. TARGETS)."""
    upper = name.upper()
    candidates = [upper + "S", upper[:-1] + "IES" if upper.endswith("Y") else None, upper]
    for candidate in candidates:
        value = getattr(config_module, candidate, None) if candidate else None
        if isinstance(value, tuple) and all(isinstance(v, str) for v in value):
            return value
    return None


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per RKUConfig dataclass field (`--sparsity`, `--protected-layers 0 1`, ...), all defaulting to None."""
    group = parser.add_argument_group("pruning configuration (RKUConfig fields; override --config)")
    hints = typing.get_type_hints(RKUConfig)
    for field in dataclasses.fields(RKUConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = hints[field.name]
        if type(kind) is types.UnionType and set(typing.get_args(kind)) == {int, str}:  # an int or "auto"
            kind = int_or_auto
        elif type(kind) is types.UnionType:  # `float | None`: the flag takes the non-None type
            kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        help_text = f"{CONFIG_HELP.get(field.name, 'RKUConfig.' + field.name)} (default: {default!r})"
        flags = [flag]
        if field.name == "num_calibration_samples":
            flags.append("--num-samples")
        if kind is bool:
            group.add_argument(
                *flags, dest=field.name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif typing.get_origin(kind) is list:
            (item,) = typing.get_args(kind) or (str,)
            group.add_argument(
                *flags, dest=field.name, nargs="*", type=item, default=None, metavar="N", help=help_text
            )
        else:
            group.add_argument(
                *flags,
                dest=field.name,
                type=kind if kind in (int, float, str, int_or_auto) else str,
                choices=_choices_for(field.name) if kind is str else None,
                default=None,
                metavar=None if kind is str and _choices_for(field.name) else field.name.upper(),
                help=help_text,
            )


def config_from_args(args: argparse.Namespace) -> RKUConfig:
    """RKUConfig from `--config` (a rku_config.json or a checkpoint dir) with every given field flag on top."""
    data: dict[str, Any] = {}
    if getattr(args, "config", None):
        path = Path(args.config)
        if not path.exists():
            raise FileNotFoundError(f"--config {args.config!r}: no such file or directory.")
        data = RKUConfig.from_pretrained(path).to_dict()
    for field in dataclasses.fields(RKUConfig):
        value = getattr(args, field.name, None)
        if value is not None:
            data[field.name] = value
    return RKUConfig.from_dict(data)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"Hub id, local directory, or 'testbed' for the bundled reasoning testbed (default: {DEFAULT_MODEL})",
    )
    parser.add_argument("--torch-dtype", choices=DTYPES, default="auto", help="weights dtype (default: auto)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow remote code of Hub models")
    parser.add_argument(
        "--gguf-file",
        default=None,
        help="a GGUF file inside --model (or a path to one; 'smollm2' / 'qwen2.5-coder-0.5b' for a packaged model), "
        "dequantized to float weights (needs the gguf package)",
    )


def add_calibration_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("calibration data (default: GSM8K train questions; testbed: its train split)")
    group.add_argument("--dataset", default=None, help=f"Hub dataset id (e.g. {GSM8K_HUB_ID})")
    group.add_argument("--dataset-config", default=None, help="dataset config (default: 'main' for GSM8K)")
    group.add_argument("--dataset-split", default="train", help="dataset split (default: train)")
    group.add_argument("--data-files", nargs="+", default=None, help="local json/jsonl/csv/parquet/txt files instead")
    group.add_argument("--text-column", nargs="+", default=["question"], help="column(s) joined into each text")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")


def add_eval_arguments(parser: argparse.ArgumentParser, limit_default: int | None) -> None:
    group = parser.add_argument_group("evaluation (GSM8K exact match, lm-evaluation-harness conventions)")
    group.add_argument(
        "--task", choices=sorted(TASKS), default=DEFAULT_TASK, help=f"evaluation task (default: {DEFAULT_TASK})"
    )
    group.add_argument(
        "--dataset",
        default=None,
        help=f"Hub id ({GSM8K_HUB_ID}), a GSM8K-format json/jsonl file or a directory with test.jsonl/train.jsonl "
        "(default: GSM8K; the testbed and checkpoints pruned from it: the testbed's own problems, offline)",
    )
    group.add_argument("--split", default="test", help="split to evaluate (default: test; testbed: train/test/ood)")
    group.add_argument(
        "--limit", type=positive_int, default=limit_default, help="evaluate the first N problems (testbed: 100)"
    )
    group.add_argument("--num-fewshot", type=non_negative_int, default=None, help="few-shot examples (5; testbed 0)")
    group.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_BATCH_SIZE,
        help=f"generation batch size (default: {DEFAULT_BATCH_SIZE})",
    )
    group.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=None,
        help="generation budget (default: the task's: 256 for gsm8k, 768 for gsm8k_cot_boxed)",
    )
    group.add_argument(
        "--stop-loops",
        action="store_true",
        help="stop computing an answer that repeats one span of tokens over and over (a damaged model's loop) and "
        "continue its text by repeating that span to the budget; much faster, the same text where the loop holds",
    )
    group.add_argument(
        "--apply-chat-template", action="store_true", help="prompt through the tokenizer's chat template"
    )
    group.add_argument("--seed", type=int, default=0, help="seed of the testbed problems (default: 0)")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:0, ... (default: cuda when available)")
