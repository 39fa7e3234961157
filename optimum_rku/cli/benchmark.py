"""`benchmark`: prune with each method at each sparsity (scores computed once per method), evaluate, tabulate."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from optimum_rku import config as config_module
from optimum_rku.cli.args import GSM8K, TESTBED, CLIError, add_eval_arguments, add_model_arguments, positive_int
from optimum_rku.cli.eval import eval_settings, evaluate_model, result_record
from optimum_rku.cli.runtime import (
    atomic_write_json,
    check_files,
    is_testbed_model,
    load_model,
    model_argument,
    resolve_device,
    say,
)
from optimum_rku.config import RKUConfig
from optimum_rku.io.labels import human_count


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


# ------------------------------------------------------------------------------------------------- benchmark
def run(args: argparse.Namespace) -> int:
    """Prune with each method at each sparsity (scores computed once per method), evaluate, print a table."""
    for sparsity in args.sparsities:
        if not 0 <= sparsity <= 0.9:
            raise CLIError(f"--sparsities has {sparsity}; allowed: [0, 0.9].")
    model_name = model_argument(args)
    data_files = check_files(args.calibration_data_files, "--calibration-data-files")
    testbed = not args.gguf_file and is_testbed_model(model_name)
    settings = eval_settings(args, testbed)
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
    import copy

    from optimum_rku.pruner import RKUPruner

    dense, tokenizer = load_model(model_name, args.torch_dtype, args.trust_remote_code, args.gguf_file)
    calibration = None
    if args.calibration_dataset or data_files:
        from optimum_rku.data.calibration import load_texts

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
        record = result_record(evaluate_model(model, tokenizer, settings, args, None), settings, args.split)
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
            f"| {r['method']} | {100 * r['sparsity']:.0f}% | {100 * r['achieved_sparsity']:.1f}% | {human_count(r['params'])} | "
            f"{100 * r['exact_match_strict']:.2f}% | {100 * r['exact_match_flexible']:.2f}% | {r['tokens_per_s']:.1f} |"
        )
    say(f"{settings['description']}, {rows[0]['num_samples']} problems, {settings['num_fewshot']}-shot")
    say("\n".join(lines))
    if args.output:
        path = Path(args.output).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"model": model_name or TESTBED, "rows": rows})
        say(f"wrote {path}")
    return 0
