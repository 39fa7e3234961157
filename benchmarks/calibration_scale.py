"""Scoring and pruning with 1x and 10x the default calibration count: peak memory stays bounded.

Scoring keeps float32 *sums* per structure (issue #15): what grows with the calibration count is only the tokenized
calibration set itself (input_ids + attention_mask, a few bytes per token), never per-token statistics. Each count
runs in a fresh subprocess (glibc's mmap threshold fixed at 128 KiB, so freed tensors leave RSS): load the model, warm
up on one short row, reset the kernel's peak-RSS counter and `prune()` with `calibration="dataset"` on random token
rows. Reported: peak RSS above the level before `prune()`, the tokenized set's size, the statistics' size (summed
tensor bytes of one scoring pass) and the time.

Usage:
    python benchmarks/calibration_scale.py                       # 25M Llama, 128 and 1280 rows of 128 tokens
    python benchmarks/calibration_scale.py --size tiny --json /tmp/x.json    # seconds, for a quick check
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from common import ROOT, SIZES, PeakRSS, build_model, token_dataset  # noqa: E402

DEFAULT_JSON = ROOT / "docs" / "perf_calibration_scale.json"
#: the tiny test-suite shape (tests/conftest.py), for quick checks
TINY = dict(hidden_size=32, intermediate_size=80, num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=4)


def load_model(size: str):
    """A random Llama of `size` ("tiny" or one of common.SIZES), vocab 8192 (96 for tiny)."""
    if size != "tiny":
        return build_model(size)
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=96, max_position_embeddings=512, tie_word_embeddings=False, head_dim=8, **TINY)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def statistics_bytes(model, importance: str) -> int:
    """Bytes of the per-block statistics one scoring pass accumulates (the same for any calibration count)."""
    from optimum_rku.importance import get_importance
    from optimum_rku.scoring.collect import collect_stats

    method = get_importance(importance)
    vocab = model.config.vocab_size
    stats, _ = collect_stats(model, token_dataset(2, 16, vocab), method, "nll", progress=False)
    return sum(t.numel() * t.element_size() for s in stats for part in (s.ffn, s.attn) for t in part.values())


def prune_once(model, dataset, importance: str, batch_size: int) -> dict[str, Any]:
    """Peak RSS (MiB above the level at entry) and time of one `prune()` on `dataset`; the statistics' size."""
    from optimum_rku import RKUConfig, RKUPruner

    config = RKUConfig(sparsity=0.3, importance=importance, calibration="dataset")
    gc.collect()
    with PeakRSS() as peak:
        start = time.perf_counter()
        pruner = RKUPruner(model)
        pruner.prune(config, calibration_dataset=dataset, batch_size=batch_size, progress=False)
        elapsed = time.perf_counter() - start
    return {
        "peak_mib": peak.peak_mib["VmRSS"],
        "memory_method": peak.method,
        "time_s": elapsed,
        "tokens": pruner.scores.calibration["num_tokens"],
        "achieved_sparsity": pruner.plan.achieved_sparsity,
    }


def worker(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    model = load_model(args.size)
    vocab = model.config.vocab_size
    stats = statistics_bytes(model, args.importance)  # also the warm-up: one-time initialization is not counted
    dataset = token_dataset(args.rows, args.seq_len, vocab)
    row = prune_once(model, dataset, args.importance, args.batch_size)
    row.update(rows=args.rows, seq_len=args.seq_len, dataset_mib=dataset.data.nbytes / 2**20, statistics_bytes=stats)
    return row


def run(size: str, counts: list[int], seq_len: int, batch_size: int, importance: str, threads: int) -> list[dict]:
    rows = []
    for count in counts:
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker", "--size", size, "--rows", str(count)]
        argv += ["--seq-len", str(seq_len), "--batch-size", str(batch_size), "--importance", importance]
        argv += ["--threads", str(threads)]
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"worker for {count} rows failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| rows | tokens | peak MiB (above start) | tokenized set MiB | statistics KiB | time s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['rows']} | {r['tokens']} | {r['peak_mib']:.1f} | {r['dataset_mib']:.2f} | "
            f"{r['statistics_bytes'] / 1024:.0f} | {r['time_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="25M", choices=["tiny", *SIZES])
    parser.add_argument(
        "--counts", type=int, nargs="+", default=[128, 1280], help="calibration rows (default 1x, 10x)"
    )
    parser.add_argument("--rows", type=int, default=128, help=argparse.SUPPRESS)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--importance", default="rku")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    rows = run(args.size, args.counts, args.seq_len, args.batch_size, args.importance, args.threads)
    result = {
        "size": args.size,
        "importance": args.importance,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "threads": args.threads,
        "command": "python benchmarks/calibration_scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "rows": rows,
        "peak_ratio_10x_over_1x": rows[-1]["peak_mib"] / rows[0]["peak_mib"] if len(rows) > 1 else None,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(rows))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
