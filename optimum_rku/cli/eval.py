"""`eval`: a task's score (GSM8K exact match by default) of a model; next to a checkpoint, results and card follow.

Without `--dataset` the problems are the model's data provider's own (GSM8K from the Hub; the testbed's problems
for the testbed and checkpoints pruned from it). An adapter checkpoint (`recover --no-merge`: pruned base at the top,
LoRA adapter in `adapter/`) is evaluated as base + adapter, the recovered model; `--no-adapter` evaluates the pruned
base alone. The record says which (`evaluated`: "base+adapter" or "base"), and so do the table and the card.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from optimum_rku.cli.args import CLIError, add_eval_arguments, add_model_arguments
from optimum_rku.cli.runtime import (
    base_model_for,
    data_of,
    load_model,
    looks_like_path,
    model_argument,
    resolve_device,
    say,
)
from optimum_rku.io.adapter import ADAPTER_CONFIG_FILE, ADAPTER_DIR, EVALUATED_LABELS, adapter_in
from optimum_rku.io.loading import is_checkpoint
from optimum_rku.io.metadata import EVAL_RESULTS_FILE, read_metadata


def add(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_eval_arguments(parser, None)
    parser.add_argument("--output", default=None, help="per-sample jsonl (default: <checkpoint>/<task>_samples.jsonl)")
    parser.add_argument(
        "--compare-base", action="store_true", help="also evaluate the dense model the checkpoint was pruned from"
    )
    parser.add_argument(
        "--base",
        default=None,
        help="with --compare-base: the dense model (directory or Hub id) when the checkpoint records a local folder "
        "by name only",
    )
    parser.add_argument(
        "--no-adapter",
        action="store_true",
        help="an adapter checkpoint (recover --no-merge): evaluate its pruned base without the LoRA adapter "
        "(default: base + adapter)",
    )
    parser.add_argument("--no-save", action="store_true", help=f"do not write <checkpoint>/{EVAL_RESULTS_FILE}")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def eval_settings(args: argparse.Namespace, model_name: str | None) -> dict[str, Any]:
    """Resolved task / problems / split / limit / shots, validated before any model is loaded."""
    from optimum_rku.data.providers import providers
    from optimum_rku.evaluation.registry import get_task

    task = get_task(args.task)
    if args.dataset is None:
        problems = data_of(model_name).evaluation_problems(args.split, args.limit, args.seed)
        dataset, benchmark, description = problems.dataset, problems.benchmark, problems.description
        limit, shots = problems.limit, problems.num_fewshot
    else:
        dataset = args.dataset
        path = Path(dataset).expanduser()
        if not path.exists() and (looks_like_path(dataset) or dataset.endswith(".jsonl")):
            raise FileNotFoundError(f"--dataset {dataset!r}: no such file or directory.")
        # problems that name a provider's Hub set (its id, or files of it) count as that set; others are "custom"
        benchmark = next((p.name for p in providers() if p.hub_dataset and p.name in dataset.lower()), "custom")
        dataset, description, limit, shots = (str(path) if path.exists() else dataset), args.dataset, args.limit, None
    default_shots = task.default_num_fewshot if shots is None else shots
    return {
        "task": task,
        "dataset": dataset,
        "benchmark": benchmark,
        "description": description,
        "limit": limit,
        "num_fewshot": default_shots if args.num_fewshot is None else args.num_fewshot,
    }


def evaluate_model(model, tokenizer, settings: dict[str, Any], args: argparse.Namespace, output: Path | None):
    """Run the settings' task and return its result as the record `eval_results.json` holds."""
    from optimum_rku.evaluation.runner import evaluate

    result = evaluate(
        model,
        tokenizer,
        settings["task"],
        settings["dataset"],
        split=args.split,
        num_fewshot=settings["num_fewshot"],
        limit=settings["limit"],
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        apply_chat_template=args.apply_chat_template,
        output_path=output,
        progress=not args.quiet,
        stop_loops=args.stop_loops,
    )
    return {**result.to_dict(), "benchmark": settings["benchmark"], "dataset": settings["description"]}


def results_table(rows: list[tuple[str, dict[str, Any]]], task) -> str:
    """One markdown row per evaluated model: problems, shots, every metric of the task, throughput."""
    lines = [
        "| model | dataset | split | n | shots | " + " | ".join(m.label for m in task.metrics) + " | tokens/s |",
        "|---|---|---|---:|---:|" + "---:|" * len(task.metrics) + "---:|",
    ]
    for name, r in rows:
        scores = " | ".join(f"{100 * r[m.key]:.2f}%" for m in task.metrics)
        lines.append(
            f"| {name} | {r['dataset']} | {r['split']} | {r['num_samples']} | {r['num_fewshot']} | {scores} | "
            f"{r['tokens_per_s']:.1f} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Evaluate a model, print a table, write samples and (next to a checkpoint) `eval_results.json` and its card."""
    model_name = model_argument(args)
    checkpoint = Path(model_name).expanduser() if model_name and is_checkpoint(model_name) else None
    settings = eval_settings(args, model_name)
    samples_file = settings["task"].samples_file()
    output = Path(args.output).expanduser() if args.output else (checkpoint / samples_file if checkpoint else None)
    if output is not None and output.is_dir():
        output = output / samples_file
    adapter = adapter_in(checkpoint) if checkpoint is not None else None
    if args.no_adapter and adapter is None:
        raise CLIError(
            f"--no-adapter: {model_name or args.gguf_file!r} is not an adapter checkpoint (no {ADAPTER_DIR}/"
            f"{ADAPTER_CONFIG_FILE}); it has no LoRA adapter to leave out."
        )
    evaluated = None if adapter is None else ("base" if args.no_adapter else "base+adapter")
    base_name = None
    if args.compare_base:
        if checkpoint is None:
            raise CLIError("--compare-base needs --model to be an optimum-rku checkpoint directory.")
        base_name = base_model_for(read_metadata(checkpoint), args.base, "--compare-base")
    device = resolve_device(args.device)

    model, tokenizer = load_model(
        model_name, args.torch_dtype, args.trust_remote_code, args.gguf_file, with_adapter=evaluated == "base+adapter"
    )
    model.to(device)
    record = evaluate_model(model, tokenizer, settings, args, output)
    label = model_name or args.gguf_file
    if evaluated is not None:
        record["evaluated"] = evaluated
        label += f" ({EVALUATED_LABELS[evaluated]})"
    rows = [(label, record)]
    if args.compare_base:
        del model
        base, base_tokenizer = load_model(base_name, args.torch_dtype, args.trust_remote_code)
        base.to(device)
        record["dense"] = evaluate_model(base, base_tokenizer, settings, args, None)
        rows.append((f"dense base ({base_name})", record["dense"]))
    say(results_table(rows, settings["task"]))
    if output is not None:
        say(f"per-sample results: {output}")
    if checkpoint is not None and not args.no_save:
        from optimum_rku.hub.card import CARD_FILE, record_eval_results

        card_updated = record_eval_results(checkpoint, record)
        say(f"summary: {checkpoint / EVAL_RESULTS_FILE}")
        if card_updated:
            say(f"model card updated: {checkpoint / CARD_FILE}")
    return 0
