"""`benchmark`: prune with each method at each sparsity (scores computed once per method), evaluate, tabulate."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from optimum_rku import config as config_module
from optimum_rku.cli.args import CLIError, add_eval_arguments, add_model_arguments, positive_int
from optimum_rku.cli.comparison import compare_methods
from optimum_rku.cli.eval import eval_settings, evaluate_model
from optimum_rku.cli.runtime import calibration_texts, check_files, load_model, model_argument, resolve_device, say
from optimum_rku.config import RKUConfig
from optimum_rku.hub.labels import human_count
from optimum_rku.io.files import atomic_write_json


def add(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--methods", nargs="+", default=["rku", "magnitude"], help="importance methods to compare")
    parser.add_argument(
        "--sparsities", nargs="+", type=float, default=[0.2, 0.4], help="target sparsities (default: 0.2 0.4)"
    )
    parser.add_argument("--allocation", choices=config_module.ALLOCATIONS, default="global", help="allocation")
    parser.add_argument(
        "--num-calibration-samples", type=positive_int, default=128, help="calibration texts (default: 128)"
    )
    parser.add_argument("--calibration-batch-size", type=positive_int, default=1, help="scoring batch size")
    parser.add_argument("--calibration-seed", type=int, default=2016, help="calibration sampling seed")
    parser.add_argument("--output", default=None, help="write the results table as JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_eval_arguments(parser, 50)
    group = parser.add_argument_group("calibration data (default: GSM8K train questions; testbed: its train split)")
    group.add_argument("--calibration-dataset", default=None, help="Hub dataset id for calibration texts")
    group.add_argument("--calibration-data-files", nargs="+", default=None, help="local calibration files instead")
    group.add_argument("--text-column", nargs="+", default=["question"], help="calibration text column(s)")


def run(args: argparse.Namespace) -> int:
    """Prune with each method at each sparsity (scores computed once per method), evaluate, print a table."""
    for sparsity in args.sparsities:
        if not 0 <= sparsity <= 0.9:
            raise CLIError(f"--sparsities has {sparsity}; allowed: [0, 0.9].")
    model_name = model_argument(args)
    data_files = check_files(args.calibration_data_files, "--calibration-data-files")
    settings = eval_settings(args, model_name)
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
    device = resolve_device(args.device)
    dense, tokenizer = load_model(model_name, args.torch_dtype, args.trust_remote_code, args.gguf_file)
    calibration = calibration_texts(
        args.calibration_dataset, data_files, args.text_column, args.num_calibration_samples, args.calibration_seed
    )

    def evaluate(model) -> dict[str, Any]:
        model.to(device)
        record = evaluate_model(model, tokenizer, settings, args, None)
        model.to("cpu")
        return record

    rows = compare_methods(
        dense,
        tokenizer,
        configs,
        args.sparsities,
        evaluate,
        calibration=calibration,
        batch_size=args.calibration_batch_size,
        progress=not args.quiet,
    )
    metrics = settings["task"].metrics
    lines = [
        "| method | target | achieved | params | " + " | ".join(m.label for m in metrics) + " | tokens/s |",
        "|---|---:|---:|---:|" + "---:|" * len(metrics) + "---:|",
    ]
    for r in rows:
        scores = " | ".join(f"{100 * r[m.key]:.2f}%" for m in metrics)
        lines.append(
            f"| {r['method']} | {100 * r['sparsity']:.0f}% | {100 * r['achieved_sparsity']:.1f}% | "
            f"{human_count(r['params'])} | {scores} | {r['tokens_per_s']:.1f} |"
        )
    say(f"{settings['description']}, {rows[0]['num_samples']} problems, {settings['num_fewshot']}-shot")
    say("\n".join(lines))
    if args.output:
        path = atomic_write_json(Path(args.output).expanduser(), {"model": model_name or args.gguf_file, "rows": rows})
        say(f"wrote {path}")
    return 0
