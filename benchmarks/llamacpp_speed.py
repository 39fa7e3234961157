"""llama.cpp speed of exported GGUF files: prefill and decode tokens/s and the KV cache llama.cpp allocates.

All variants (see `common.py`, "llama.cpp variants") are loaded once per flash-attention setting and measured round-robin in one
run (round r measures every variant before round r+1), so the ratios to the dense model of the same source compare
like with like; medians over --rounds. Flash attention is measured on and off: without it llama.cpp pads the V
cache of layers with unequal KV widths to the widest layer. The KV size is the one llama.cpp reports when it creates
the context (`llama_kv_cache: size = ...`). Prompt tokens are fixed random ids (speed does not depend on them).
Prints a table and writes JSON (needs llama-cpp-python).

    python benchmarks/llamacpp_speed.py --variants testbed:dense testbed:global:0.4 testbed:uniform:0.4 \\
        smollm2:dense smollm2:global:0.2 smollm2:uniform:0.2 smollm2:global:0.4 smollm2:uniform:0.4 \\
        --threads 2 --output docs/llamacpp_speed.json
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from common import ROOT, SHARED_GSM8K, gguf_file, parse_variant, write_results  # noqa: E402

DEFAULT_VARIANTS = ["testbed:dense", "testbed:global:0.4", "testbed:uniform:0.4"]
KV_LINE = re.compile(
    r"llama_kv_cache: size =\s*([\d.]+) MiB.*K \((\w+)\):\s*([\d.]+) MiB, V \((\w+)\):\s*([\d.]+) MiB"
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, help="SOURCE:dense | SOURCE:ALLOC:SPARSITY")
    p.add_argument("--dtype", default="f16", choices=["f32", "f16", "bf16", "q8_0"], help="GGUF weight type")
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--flash-attn", nargs="+", default=["off", "on"], choices=["off", "on"])
    p.add_argument("--work-dir", default=str(ROOT / "runs" / "llamacpp"), help="checkpoints and GGUF files (cached)")
    p.add_argument("--gsm8k-dir", default=str(SHARED_GSM8K), help="GSM8K train.jsonl (SmolLM2 calibration)")
    p.add_argument("--calibration-questions", type=int, default=32)
    p.add_argument("--output", default=None, help="JSON file to write")
    return p.parse_args(argv)


def load(path: Path, args, flash: bool):
    """A llama.cpp context and the KV-cache sizes it reported while being created (stderr captured at fd level)."""
    from llama_cpp import Llama

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as log:
        os.dup2(log.fileno(), 2)
        try:
            llm = Llama(
                model_path=str(path),
                n_ctx=args.prompt_tokens + args.decode_tokens + 16,
                n_batch=args.prompt_tokens,
                n_threads=args.threads,
                n_threads_batch=args.threads,
                flash_attn=flash,
                verbose=True,
                seed=0,
            )
            llm.verbose = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        text = log.read().decode(errors="replace")
    match = KV_LINE.search(text)
    if match is None:
        raise RuntimeError(f"llama.cpp did not report its KV cache size for {path.name}")
    kv = {"total_mib": float(match[1]), "k_mib": float(match[3]), "v_mib": float(match[5]), "type": match[2]}
    return llm, kv


def next_token(llm) -> int:
    """Greedy next token from the last position's logits (the context keeps only those: logits_all is off)."""
    import llama_cpp

    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
    return int(np.argmax(logits))


def measure(llm, prompt: list[int], decode: int) -> tuple[float, float]:
    """(prefill tokens/s, decode tokens/s) of one round."""
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    prefill = len(prompt) / (time.perf_counter() - start)
    token = next_token(llm)
    start = time.perf_counter()
    for _ in range(decode):
        llm.eval([token])
        token = next_token(llm)
    return prefill, decode / (time.perf_counter() - start)


def run(args) -> list[dict]:
    variants = [parse_variant(v) for v in args.variants]
    work = Path(args.work_dir)
    files = {
        v: gguf_file(
            v, work, args.dtype, calibration_questions=args.calibration_questions, gsm8k_dir=Path(args.gsm8k_dir)
        )[1]
        for v in variants
    }
    results = []
    for setting in args.flash_attn:
        contexts = {v: load(files[v], args, setting == "on") for v in variants}
        prompts = {}
        for v, (llm, _) in contexts.items():
            rng = np.random.default_rng(0)
            prompts[v] = rng.integers(10, llm.n_vocab(), args.prompt_tokens).tolist()
            measure(llm, prompts[v][:16], 4)  # warm-up
        timings = {v: [] for v in variants}
        for _ in range(args.rounds):
            for v, (llm, _) in contexts.items():
                timings[v].append(measure(llm, prompts[v], args.decode_tokens))
        for v in variants:
            prefill = statistics.median(t[0] for t in timings[v])
            decode = statistics.median(t[1] for t in timings[v])
            results.append(
                {
                    "variant": v.name,
                    "source": v.source,
                    "flash_attn": setting,
                    "prefill_tps": prefill,
                    "decode_tps": decode,
                    "kv_cache": contexts[v][1],
                    "file_mib": files[v].stat().st_size / 2**20,
                }
            )
        for llm, _ in contexts.values():
            llm.close()
    for row in results:
        same = (
            r for r in results if r["variant"] == f"{row['source']}-dense" and r["flash_attn"] == row["flash_attn"]
        )
        dense = next(same, None)
        row["prefill_ratio"] = row["prefill_tps"] / dense["prefill_tps"] if dense else None
        row["decode_ratio"] = row["decode_tps"] / dense["decode_tps"] if dense else None
        row["kv_ratio"] = row["kv_cache"]["total_mib"] / dense["kv_cache"]["total_mib"] if dense else None
    return results


def table(results: list[dict]) -> str:
    ratio = lambda x: f"{x:.2f}x" if x is not None else "-"  # noqa: E731
    lines = [
        "| variant | flash attn | prefill tok/s | vs dense | decode tok/s | vs dense | KV cache MiB (K + V) | vs dense | file MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        kv = r["kv_cache"]
        lines.append(
            f"| {r['variant']} | {r['flash_attn']} | {r['prefill_tps']:.0f} | {ratio(r['prefill_ratio'])} | "
            f"{r['decode_tps']:.0f} | {ratio(r['decode_ratio'])} | {kv['total_mib']:.2f} ({kv['k_mib']:.2f} + "
            f"{kv['v_mib']:.2f}) | {ratio(r['kv_ratio'])} | {r['file_mib']:.1f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    results = run(args)
    print(table(results))
    if args.output:
        write_results(args.output, "llamacpp_speed.py", list(argv or sys.argv[1:]), args, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
