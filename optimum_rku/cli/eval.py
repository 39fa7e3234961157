"""`eval`: GSM8K exact match (or the testbed problems) of a model, written next to a checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from optimum_rku.cli.args import (
    EVAL_RESULTS_FILE,
    GSM8K,
    SAMPLES_FILE,
    TESTBED,
    CLIError,
    add_eval_arguments,
    add_model_arguments,
)
from optimum_rku.cli.runtime import (
    atomic_write_json,
    is_testbed_model,
    load_model,
    looks_like_path,
    model_argument,
    resolve_device,
    say,
)
from optimum_rku.config import CONFIG_NAME


def add(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_eval_arguments(parser, None)
    parser.add_argument("--output", default=None, help=f"per-sample jsonl (default: <checkpoint>/{SAMPLES_FILE})")
    parser.add_argument(
        "--compare-base", action="store_true", help="also evaluate the dense model the checkpoint was pruned from"
    )
    parser.add_argument("--no-save", action="store_true", help=f"do not write <checkpoint>/{EVAL_RESULTS_FILE}")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


# ------------------------------------------------------------------------------------------------- eval
def eval_settings(args: argparse.Namespace, testbed: bool) -> dict[str, Any]:
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
    if not path.exists() and (looks_like_path(dataset) or dataset.endswith(".jsonl")):
        raise FileNotFoundError(f"--dataset {dataset!r}: no such file or directory.")
    benchmark = "gsm8k" if "gsm8k" in dataset.lower() else "custom"
    return {
        "dataset": str(path) if path.exists() else dataset,
        "benchmark": benchmark,
        "description": dataset,
        "limit": args.limit,
        "num_fewshot": 5 if args.num_fewshot is None else args.num_fewshot,
    }


def evaluate_model(model, tokenizer, settings: dict[str, Any], args: argparse.Namespace, output: Path | None):
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


def results_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
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


def result_record(result, settings: dict[str, Any], split: str) -> dict[str, Any]:
    data = result.to_dict()
    data["benchmark"] = settings["benchmark"]
    data["dataset"] = settings["description"]
    data["split"] = split
    return data


def run(args: argparse.Namespace) -> int:
    """Evaluate a model on GSM8K (or the testbed), print a table, write samples and `eval_results.json`."""
    model_name = model_argument(args)
    checkpoint = Path(model_name).expanduser() if model_name else None
    is_checkpoint = bool(checkpoint and (checkpoint / CONFIG_NAME).is_file())
    testbed = not args.gguf_file and is_testbed_model(model_name)
    settings = eval_settings(args, testbed)
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
    device = resolve_device(args.device)

    model, tokenizer = load_model(model_name, args.torch_dtype, args.trust_remote_code, args.gguf_file)
    model.to(device)
    split = args.split
    result = evaluate_model(model, tokenizer, settings, args, output)
    record = result_record(result, settings, split)
    rows = [(model_name or TESTBED, record)]
    if args.compare_base:
        del model
        base, base_tokenizer = load_model(base_name, args.torch_dtype, args.trust_remote_code)
        base.to(device)
        dense = result_record(evaluate_model(base, base_tokenizer, settings, args, None), settings, split)
        record["dense"] = dense
        rows.append((f"dense base ({base_name or TESTBED})", dense))
    say(results_table(rows))
    if output is not None:
        say(f"per-sample results: {output}")
    if is_checkpoint and not args.no_save:
        atomic_write_json(checkpoint / EVAL_RESULTS_FILE, record)
        say(f"summary: {checkpoint / EVAL_RESULTS_FILE}")
        from optimum_rku.io.card import CARD_FILE, is_generated_card, write_model_card

        if is_generated_card(checkpoint / CARD_FILE):
            write_model_card(checkpoint, eval_results=record)
            say(f"model card updated: {checkpoint / CARD_FILE}")
    return 0
