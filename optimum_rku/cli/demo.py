"""`optimum-rku demo`: the whole study on the bundled testbed in minutes, offline.

Evaluates the dense testbed, prunes it with RKU and every baseline at the same sparsity, evaluates each pruned
model on the same test problems, prints a table and writes `demo_results.json` plus a PNG chart.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from optimum_rku.config import ALLOCATIONS
from optimum_rku.io.files import atomic_write, atomic_write_json


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optimum-rku demo",
        description="Prune the bundled reasoning testbed with RKU and baselines; compare accuracy, size and speed.",
    )
    parser.add_argument("--sparsity", type=float, default=0.4, help="fraction of prunable parameters to remove")
    parser.add_argument("--methods", nargs="+", default=None, help="importance methods (default: all registered)")
    parser.add_argument("--limit", type=int, default=100, help="testbed test problems to evaluate")
    parser.add_argument("--calibration-samples", type=int, default=128, help="testbed train questions for scoring")
    parser.add_argument("--batch-size", type=int, default=32, help="generation batch size")
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--allocation", choices=ALLOCATIONS, default="global")
    parser.add_argument("--output-dir", default=".", help="where demo_results.json and demo_accuracy.png go")
    parser.add_argument("--seed", type=int, default=2016)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _check_args(args: argparse.Namespace, methods: list[str]) -> None:
    if not 0 <= args.sparsity <= 0.9:
        raise ValueError(f"--sparsity {args.sparsity} is out of range; allowed: [0, 0.9].")
    if args.limit < 1:
        raise ValueError(f"--limit {args.limit} must be >= 1.")
    if args.batch_size < 1 or args.max_new_tokens < 1 or args.calibration_samples < 1:
        raise ValueError("--batch-size, --max-new-tokens and --calibration-samples must be >= 1.")
    from optimum_rku.importance import available_importances

    unknown = [m for m in methods if m not in available_importances()]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}; allowed: {', '.join(available_importances())}.")


def _default_methods() -> list[str]:
    from optimum_rku.importance import available_importances

    names = available_importances()
    return ["rku"] + [n for n in names if n != "rku"]


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """Run the comparison and return the results dict that is also written to demo_results.json."""
    methods = args.methods or _default_methods()
    _check_args(args, methods)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    import torch

    from optimum_rku import RKUConfig
    from optimum_rku.cli.comparison import compare_methods
    from optimum_rku.evaluation import evaluate_gsm8k
    from optimum_rku.testbed import load, make_problems

    torch.manual_seed(args.seed)
    progress = not args.quiet
    dense, tokenizer = load()
    problems = make_problems(args.limit, seed=args.seed, split="test")

    def evaluate(model) -> dict[str, Any]:
        result = evaluate_gsm8k(
            model,
            tokenizer,
            dataset=problems,
            num_fewshot=0,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            progress=progress,
        )
        return {
            "accuracy": result.exact_match_strict,
            "accuracy_flexible": result.exact_match_flexible,
            "ms_per_token": 1000.0 / result.tokens_per_s if result.tokens_per_s else float("nan"),
            "eval_time_s": result.total_time_s,
        }

    # warm-up (untimed): the first generate pays one-time start-up costs that would be charged to the dense row
    evaluate_gsm8k(dense, tokenizer, dataset=problems[:2], num_fewshot=0, max_new_tokens=8, progress=False)
    configs = {
        method: RKUConfig(
            sparsity=args.sparsity,
            importance=method,
            bias_compensation=method == "flap",  # FLAP as published (the testbed is a Llama: the bias reloads)
            allocation=args.allocation,
            num_calibration_samples=args.calibration_samples,
            seed=args.seed,
        )
        for method in methods
    }
    rows = compare_methods(dense, tokenizer, configs, [args.sparsity], evaluate, progress=progress)
    results = {
        "model": "optimum-rku testbed",
        "num_problems": args.limit,
        "split": "test",
        "num_fewshot": 0,
        "allocation": args.allocation,
        "calibration": f"{args.calibration_samples} testbed train questions (label-free), answered by the model "
        "itself (RKUConfig defaults: calibration='self_generated', objective='decode_nll')",
        "rows": rows,
    }
    json_path = atomic_write_json(out_dir / "demo_results.json", results)
    results["chart"] = str(plot_results(results, out_dir / "demo_accuracy.png"))
    results["json"] = str(json_path)
    return results


def plot_results(results: dict[str, Any], path: Path) -> Path:
    """Bar chart of accuracy per method, annotated with kept parameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    names = [r["method"] for r in rows]
    acc = [100 * r["accuracy"] for r in rows]
    dense_params = rows[0]["params"]
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 2, 3.6))
    colors = ["#888888"] + ["#d62728" if n == "rku" else "#1f77b4" for n in names[1:]]
    bars = ax.bar(names, acc, color=colors)
    for bar, row in zip(bars, rows):
        ax.annotate(
            f"{100 * row['params'] / dense_params:.0f}% params",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylabel("exact match (%)")
    ax.set_ylim(0, 105)
    sparsity = rows[1]["sparsity"] if len(rows) > 1 else 0.0
    ax.set_title(
        f"Testbed GSM8K-style accuracy at {100 * sparsity:.0f}% structured sparsity (n={results['num_problems']})"
    )
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"), suffix=".png")
    plt.close(fig)
    return path


def format_table(results: dict[str, Any]) -> str:
    lines = [
        "| method | sparsity | params | accuracy | ms/token |",
        "|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['method']} | {100 * r['achieved_sparsity']:.1f}% | {r['params'] / 1e6:.2f}M | "
            f"{100 * r['accuracy']:.1f}% | {r['ms_per_token']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results = run_demo(args)
    print(format_table(results))
    print(f"\nwrote {results['json']} and {results['chart']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
