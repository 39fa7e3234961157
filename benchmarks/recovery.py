"""Recovery benchmark: GSM8K-style accuracy of the testbed dense / pruned / pruned + LoRA, for RKU and magnitude.

For each sparsity it prunes the bundled reasoning testbed with RKU (questions-only calibration), RKU
(self-generated calibration, `decode_nll`) and magnitude, evaluates 0-shot exact match on the testbed test split
with `optimum_rku.evaluation.evaluate_gsm8k`, then runs a fixed small LoRA budget (`RKUPruner.recover` on the testbed
train split) and evaluates again. Results go to a JSON file and a markdown table on stdout.

    python benchmarks/recovery.py --json docs/recovery.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

VARIANTS = {
    # name: (importance, calibration, objective)
    "rku-questions": ("rku", "dataset", "decode_nll"),  # on plain questions decode_nll is the NLL of every token
    "rku-self-generated": ("rku", "self_generated", "decode_nll"),
    "magnitude": ("magnitude", "dataset", "self_nll"),
}

REPORTED_TEST_PROBLEMS = 1000  # validation excludes the first this many test problems (reports use at most these)

CALIBRATION_LABELS = {
    "rku-questions": "questions only (decode_nll = nll)",
    "rku-self-generated": "self-generated (decode_nll)",
    "magnitude": "none (weights only)",
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="testbed", help="model to prune (default: the bundled testbed)")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.4, 0.5])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--limit", type=int, default=500, help="problems evaluated (the reports use 500)")
    parser.add_argument(
        "--eval-split",
        default="test",
        choices=("test", "validation", "train-heldout"),
        help="test split (reported numbers); validation: test-distribution problems with an unused seed and none of "
        "the reported ones, for tuning; train-heldout: train-split problems with an unused seed",
    )
    parser.add_argument(
        "--validation-seed", type=int, default=9001, help="problem seed of --eval-split validation / train-heldout"
    )
    parser.add_argument("--eval-batch-size", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--calibration-samples", type=int, default=64)
    parser.add_argument("--generation-tokens", type=int, default=128, help="self-generated calibration answer length")
    parser.add_argument("--train-problems", type=int, default=2000, help="testbed train-split problems for LoRA")
    parser.add_argument("--lora-steps", type=int, default=600)
    parser.add_argument("--lora-lr", type=float, default=5e-4)
    parser.add_argument("--lora-batch-size", type=int, default=8)
    parser.add_argument("--lora-rank", type=int, default=32)
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    parser.add_argument("--weight-decay", type=float, default=0.0, help="LoRA AdamW weight decay")
    parser.add_argument("--train-norms", action="store_true", help="also train the RMSNorm weights (modules_to_save)")
    parser.add_argument("--num-iterations", type=int, default=1, help="RKUConfig.num_iterations of the RKU rows")
    parser.add_argument("--min-keep", type=float, default=0.1, help="RKUConfig.min_keep (per-layer floor)")
    parser.add_argument(
        "--bias-compensation", action="store_true", help="RKUConfig.bias_compensation for the calibrated rows"
    )
    parser.add_argument(
        "--distill-alpha",
        type=float,
        default=0.0,
        help="weight of KL to the dense model in the LoRA loss (0: plain cross-entropy; 1: pure distillation)",
    )
    parser.add_argument("--distill-temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=2016)
    parser.add_argument(
        "--lora-seeds",
        type=int,
        nargs="+",
        default=None,
        help="LoRA seeds (adapter init + data order), each from the same pruned model (default: --seed)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default="docs/recovery.json", help="where to write the results")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument(
        "--combine",
        nargs="+",
        metavar="JSON",
        help="merge result files of parallel runs into --json and print the table",
    )
    args = parser.parse_args(argv)
    positive = ("limit", "lora_steps", "lora_batch_size", "lora_rank", "train_problems", "calibration_samples")
    for name in (*positive, "num_iterations"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 <= args.distill_alpha <= 1:
        parser.error(f"--distill-alpha {args.distill_alpha} must be in [0, 1]")
    for s in args.sparsities:
        if not 0 < s <= 0.9:
            parser.error(f"--sparsities value {s} must be in (0, 0.9]")
    return args


def evaluate(model, tokenizer, problems, args) -> dict:
    """0-shot strict/flexible exact match on `problems` (a list of {question, answer})."""
    from optimum_rku.evaluation import evaluate_gsm8k

    start = time.perf_counter()
    result = evaluate_gsm8k(
        model,
        tokenizer,
        dataset=problems,
        num_fewshot=0,
        batch_size=args.eval_batch_size,
        max_new_tokens=args.max_new_tokens,
        progress=args.progress,
    )
    return {
        "exact_match_strict": result.exact_match_strict,
        "exact_match_flexible": result.exact_match_flexible,
        "num_samples": result.num_samples,
        "time_s": round(time.perf_counter() - start, 2),
    }


def load_pruner(args):
    from optimum_rku import RKUPruner

    return RKUPruner.from_pretrained(None if args.model == "testbed" else args.model, torch_dtype=torch.float32)


def write_results(results: dict, args, start: float) -> Path:
    """Write the JSON (after every run, so an interrupted benchmark still leaves its finished rows)."""
    results["config"] = {**vars(args), "json": Path(args.json).name}  # no machine paths in shared results
    results["environment"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": args.threads,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    results["total_time_s"] = round(time.perf_counter() - start, 1)
    results["lora_total_time_s"] = round(sum(x["time_s"] for r in results["runs"] for x in r["lora_runs"]), 1)
    results["lora_total_cpu_s"] = round(sum(x["cpu_s"] for r in results["runs"] for x in r["lora_runs"]), 1)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


def run(args) -> dict:
    from optimum_rku import RKUConfig
    from optimum_rku.testbed import make_problems

    torch.set_num_threads(args.threads)
    if args.eval_split == "test":
        test = make_problems(args.limit, seed=0, split="test")
    elif args.eval_split == "validation":  # test distribution, but none of the problems any report uses
        reported = {p["question"] for p in make_problems(REPORTED_TEST_PROBLEMS, seed=0, split="test")}
        pool = make_problems(args.limit + REPORTED_TEST_PROBLEMS, seed=args.validation_seed, split="test")
        test = [p for p in pool if p["question"] not in reported][: args.limit]
    else:  # held-out train-distribution problems (the first way this benchmark chose its budget)
        test = make_problems(args.limit, seed=args.validation_seed, split="train")
    calibration = [p["question"] for p in make_problems(args.calibration_samples, seed=args.seed, split="train")]
    train = make_problems(args.train_problems, seed=args.seed + 1, split="train")
    training_args = {
        "max_steps": args.lora_steps,
        "learning_rate": args.lora_lr,
        "per_device_train_batch_size": args.lora_batch_size,
        "logging_steps": max(1, args.lora_steps // 10),
        "weight_decay": args.weight_decay,
        "seed": args.seed,
    }
    lora = {"r": args.lora_rank, "lora_alpha": 2 * args.lora_rank, "lora_dropout": args.lora_dropout}
    if args.train_norms:
        lora["modules_to_save"] = ["norm"]  # every *norm module (PEFT matches by name suffix)

    start_all = time.perf_counter()
    distill = {
        # the dense model, distilled into every pruned one
        "teacher": load_pruner(args).model.eval() if args.distill_alpha > 0 else None,
        "distillation_alpha": args.distill_alpha,
        "distillation_temperature": args.distill_temperature,
    }
    dense = load_pruner(args)
    dense.model.eval()
    results = {"dense": {"eval": evaluate(dense.model, dense.tokenizer, test, args)}, "runs": [], "complete": False}
    results["dense"]["parameters"] = dense.dense_parameters
    write_results(results, args, start_all)
    print(f"dense: {results['dense']['eval']}", flush=True)
    del dense
    for sparsity in args.sparsities:
        for name in args.variants:
            importance, calibration_kind, objective = VARIANTS[name]
            pruner = load_pruner(args)
            config = RKUConfig(
                sparsity=sparsity,
                importance=importance,
                calibration=calibration_kind,
                objective=objective,
                num_calibration_samples=args.calibration_samples,
                generation_max_new_tokens=args.generation_tokens,
                num_iterations=args.num_iterations if importance == "rku" else 1,
                min_keep=args.min_keep,
                bias_compensation=args.bias_compensation and importance != "magnitude",
                seed=args.seed,
            )
            start = time.perf_counter()
            model = pruner.prune(config, calibration_dataset=calibration, progress=args.progress)
            prune_s = time.perf_counter() - start
            meta = pruner.metadata()
            pruned_eval = evaluate(model, pruner.tokenizer, test, args)
            pruned_model = copy.deepcopy(model)
            lora_runs = []
            for lora_seed in args.lora_seeds or [args.seed]:
                pruner.model = copy.deepcopy(pruned_model)  # every LoRA seed starts from the same pruned model
                cpu = time.process_time()
                pruner.recover(
                    train,
                    lora_config=lora,
                    training_args={**training_args, "seed": lora_seed},
                    progress=args.progress,
                    seed=lora_seed,
                    **distill,
                )
                lora_cpu = time.process_time() - cpu
                summary = pruner.recovery_summary
                recovered_eval = evaluate(pruner.model, pruner.tokenizer, test, args)
                lora_runs.append(
                    {"seed": lora_seed, "recovered": recovered_eval, "cpu_s": round(lora_cpu, 1)}
                    | {k: summary[k] for k in ("loss_before", "loss_after", "time_s")}
                )
            accuracies = [run["recovered"]["exact_match_strict"] for run in lora_runs]
            recovered_eval = dict(lora_runs[0]["recovered"], exact_match_strict=statistics.mean(accuracies))
            recovered_eval["exact_match_strict_std"] = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
            row = {
                "sparsity": sparsity,
                "variant": name,
                "importance": importance,
                "calibration": calibration_kind,
                "objective": objective,
                "achieved_sparsity": meta["parameters"]["achieved_sparsity"],
                "parameters": meta["parameters"]["total_after"],
                "prune_time_s": round(prune_s, 2),
                "pruned": pruned_eval,
                "recovered": recovered_eval,
                "lora": {k: summary[k] for k in ("steps", "rank", "alpha", "learning_rate")}
                | {
                    "loss_before": lora_runs[0]["loss_before"],
                    "loss_after": statistics.mean(run["loss_after"] for run in lora_runs),
                    "time_s": round(statistics.mean(run["time_s"] for run in lora_runs), 1),
                    "cpu_s": round(statistics.mean(run["cpu_s"] for run in lora_runs), 1),
                    "seeds": [run["seed"] for run in lora_runs],
                    "dropout": args.lora_dropout,
                    "weight_decay": args.weight_decay,
                    "distillation_alpha": args.distill_alpha,
                    "distillation_temperature": args.distill_temperature,
                },
                "lora_runs": lora_runs,
            }
            results["runs"].append(row)
            write_results(results, args, start_all)
            print(
                f"{name} @ {sparsity:.0%}: pruned {pruned_eval['exact_match_strict']:.3f} -> "
                f"LoRA {recovered_eval['exact_match_strict']:.3f} (LoRA {summary['time_s']:.0f}s)",
                flush=True,
            )
    results["complete"] = True
    write_results(results, args, start_all)
    return results


def markdown(results: dict) -> str:
    """The docs table: strict exact match, and recovered accuracy as a fraction of dense."""
    dense = results["dense"]["eval"]["exact_match_strict"]
    lines = [
        f"Dense: **{dense:.1%}** strict exact match ({results['dense']['eval']['num_samples']} test problems).",
        "",
        "| sparsity | method | calibration | params | pruned | pruned + LoRA | LoRA / dense | LoRA seeds | LoRA time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        pruned = r["pruned"]["exact_match_strict"]
        rec = r["recovered"]["exact_match_strict"]
        std = r["recovered"].get("exact_match_strict_std", 0.0)
        seeds = r["lora"].get("seeds", [None])
        shown = f"{rec:.1%} ± {std:.1%}" if len(seeds) > 1 else f"{rec:.1%}"
        ratio = rec / dense if dense else float("nan")
        lines.append(
            f"| {r['sparsity']:.0%} | {r['importance']} | {CALIBRATION_LABELS[r['variant']]} | "
            f"{r['parameters'] / 1e6:.2f}M | {pruned:.1%} | {shown} | {ratio:.1%} | {len(seeds)} | "
            f"{r['lora']['time_s']:.0f}s |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.combine:
        parts = [json.loads(Path(f).read_text()) for f in args.combine]
        results = dict(parts[0])
        results["runs"] = [r for part in parts for r in part["runs"]]
        results["complete"] = all(part.get("complete") for part in parts)
        results["total_time_s"] = max(part["total_time_s"] for part in parts)
        results["lora_total_time_s"] = round(sum(x["time_s"] for r in results["runs"] for x in r["lora_runs"]), 1)
        results["lora_total_cpu_s"] = round(sum(x["cpu_s"] for r in results["runs"] for x in r["lora_runs"]), 1)
        results["combined_from"] = [part["config"] for part in parts]
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(markdown(results))
        return 0
    results = run(args)
    print(markdown(results))
    print(f"wrote {args.json} in {results['total_time_s']:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
