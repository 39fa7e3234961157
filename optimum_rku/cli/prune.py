"""`prune`: prune a model with RKU (or a baseline) and save the checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from optimum_rku.cli.args import (
    add_calibration_arguments,
    add_config_arguments,
    add_model_arguments,
    config_from_args,
    positive_int,
)
from optimum_rku.cli.runtime import calibration_texts, check_files, dtype_of, model_argument, say
from optimum_rku.hub.labels import human_count


def add(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--output", required=True, help="directory of the pruned checkpoint")
    parser.add_argument("--config", default=None, help="rku_config.json (or a checkpoint dir) to start from")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="calibration batch size (default: 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output directory")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_calibration_arguments(parser)
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Prune a model and save the checkpoint; print parameters before/after and where it went."""
    config = config_from_args(args)
    model_name = model_argument(args)
    data_files = check_files(args.data_files, "--data-files")
    from optimum_rku.io.checkpoint import check_save_dir

    source = model_name if model_name and Path(model_name).expanduser().exists() else None
    check_save_dir(args.output, source, args.overwrite)

    from optimum_rku.pruner import RKUPruner

    load_kwargs = {"gguf_file": args.gguf_file} if args.gguf_file else {}
    pruner = RKUPruner.from_pretrained(
        model_name, torch_dtype=dtype_of(args.torch_dtype), trust_remote_code=args.trust_remote_code, **load_kwargs
    )
    calibration = calibration_texts(
        args.dataset,
        data_files,
        args.text_column,
        config.num_calibration_samples,
        config.seed,
        args.dataset_config,
        args.dataset_split,
    )
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
    say(
        f"parameters: {human_count(params['total_before'])} -> {human_count(params['total_after'])} "
        f"({params['total_before']:,} -> {params['total_after']:,}, {100 * (1 - params['total_after'] / params['total_before']):.1f}% fewer)"
    )
    say(
        f"prunable parameters removed: {100 * params['achieved_sparsity']:.2f}% (target {100 * config.sparsity:.1f}%), "
        f"KV cache per token: {kv['bytes_per_token_before']:,} -> {kv['bytes_per_token_after']:,} bytes"
    )
    say(f"saved to {Path(args.output).expanduser().resolve()}")
    return 0
