"""Batched vs unbatched GSM8K-style greedy generation on the testbed: tokens/s at batch 8 vs 1, identical answers.

Runs `optimum_rku.evaluation.evaluate_gsm8k` (left padding, KV cache, stop sequences) on the same testbed test
problems at batch size 1 and `--batch` in alternating rounds (1, B, B, 1, ...); reports medians of generated tokens per
wall second (the evaluator's own generation timer) and per process-CPU second (robust on a shared machine), and
asserts that every completion is identical across batch sizes.

Usage:
    python benchmarks/eval_throughput.py                       # testbed, writes docs/perf_eval_throughput.json
    python benchmarks/eval_throughput.py --random-testbed      # same shapes, random weights (before training ends)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from common import ROOT  # noqa: E402


def load_model(random_weights: bool):
    """The trained testbed, or (for a dry run before its weights exist) a random model with the testbed's shapes."""
    from optimum_rku.testbed import TESTBED_PATH, load

    if not random_weights:
        if not (Path(TESTBED_PATH) / "model.safetensors").is_file():
            raise FileNotFoundError(
                "The testbed weights (model.safetensors) are not there yet; use --random-testbed for a dry run."
            )
        return (*load(), "testbed")
    from transformers import AutoModelForCausalLM

    from optimum_rku.testbed import build_tokenizer
    from optimum_rku.testbed.train import testbed_config

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(testbed_config(tokenizer)).eval()
    return model, tokenizer, "random model with testbed shapes"


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Alternate batch 1 and batch B evaluations; compare completions and throughput."""
    from optimum_rku.evaluation import evaluate_gsm8k
    from optimum_rku.testbed import make_problems

    torch.set_num_threads(args.threads)
    model, tokenizer, label = load_model(args.random_testbed)
    problems = make_problems(args.limit, seed=args.seed, split="test")
    sizes = (1, args.batch)
    wall: dict[int, list[float]] = {b: [] for b in sizes}
    cpu: dict[int, list[float]] = {b: [] for b in sizes}
    completions: dict[int, list[str]] = {}
    accuracy: dict[int, float] = {}
    for r in range(args.repeats):
        for b in sizes if r % 2 == 0 else sizes[::-1]:
            start_cpu = time.process_time()
            result = evaluate_gsm8k(
                model,
                tokenizer,
                dataset=problems,
                num_fewshot=0,
                batch_size=b,
                max_new_tokens=args.max_new_tokens,
                progress=not args.quiet,
            )
            cpu_s = time.process_time() - start_cpu
            wall[b].append(result.generated_tokens / result.generation_time_s)
            cpu[b].append(result.generated_tokens / cpu_s)
            texts = [s["completion"] for s in result.samples]
            if b in completions and completions[b] != texts:
                raise RuntimeError(f"batch {b}: completions differ between two identical runs.")
            completions[b] = texts
            accuracy[b] = result.exact_match_strict
            tokens = result.generated_tokens
    mismatches = [i for i, (x, y) in enumerate(zip(completions[1], completions[args.batch])) if x != y]
    med_wall = {b: statistics.median(v) for b, v in wall.items()}
    med_cpu = {b: statistics.median(v) for b, v in cpu.items()}
    return {
        "model": label,
        "problems": args.limit,
        "max_new_tokens": args.max_new_tokens,
        "generated_tokens": tokens,
        "threads": args.threads,
        "repeats": args.repeats,
        "tokens_per_wall_s": {str(b): v for b, v in wall.items()},
        "tokens_per_cpu_s": {str(b): v for b, v in cpu.items()},
        "median_tokens_per_wall_s": {str(b): v for b, v in med_wall.items()},
        "median_tokens_per_cpu_s": {str(b): v for b, v in med_cpu.items()},
        "speedup_wall": med_wall[args.batch] / med_wall[1],
        "speedup_cpu": med_cpu[args.batch] / med_cpu[1],
        "exact_match_strict": {str(b): v for b, v in accuracy.items()},
        "identical_completions": not mismatches,
        "mismatched_indices": mismatches,
        "batch": args.batch,
    }


def markdown(result: dict[str, Any]) -> str:
    """A two-row table: batch 1 and batch B."""
    b = str(result["batch"])
    lines = [
        f"**{result['model']}**: {result['problems']} test problems, 0-shot, max_new_tokens={result['max_new_tokens']}, "
        f"{result['generated_tokens']} generated tokens per run, {result['threads']} thread(s), medians of "
        f"{result['repeats']} runs per batch size; identical completions: {result['identical_completions']}",
        "",
        "| batch | tokens / wall s | tokens / CPU s | speed-up wall | speed-up CPU | strict EM |",
        "|---|---|---|---|---|---|",
    ]
    for key in ("1", b):
        one = key == "1"
        lines.append(
            f"| {key} | {result['median_tokens_per_wall_s'][key]:.1f} | {result['median_tokens_per_cpu_s'][key]:.1f} "
            f"| {1.0 if one else result['speedup_wall']:.2f} | {1.0 if one else result['speedup_cpu']:.2f} "
            f"| {result['exact_match_strict'][key]:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run, print a markdown table, write JSON; exit non-zero if completions differ."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=32, help="number of testbed test problems")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2, help="runs per batch size (alternating order)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--random-testbed", action="store_true", help="random weights with the testbed's shapes")
    parser.add_argument("--json", default=str(ROOT / "docs" / "perf_eval_throughput.json"))
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    for key in ("limit", "batch", "max_new_tokens", "repeats", "threads"):
        if getattr(args, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')}={getattr(args, key)} must be a positive int.")
    if args.batch == 1:
        raise ValueError("--batch must be > 1 (batch 1 is always the reference).")
    result = run(args)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    if not result["identical_completions"]:
        raise SystemExit(f"Completions differ between batch 1 and {args.batch} at {result['mismatched_indices']}.")


if __name__ == "__main__":
    main()
