"""llama.cpp speed of exported GGUF files: file size, prefill and decode tokens/s, and the KV cache llama.cpp allocates,
in float and in llama.cpp-quantized weights; plus what the quantizer does to each file's answers.

All variants (see `common.py`, "llama.cpp variants") are loaded once per (flash-attention setting, weight type) and
measured round-robin in one run (round r measures every variant before round r+1), so the ratios to the dense model of
the same source and weight type compare like with like; medians over --rounds. Flash attention is measured on and
off: without it llama.cpp pads the V cache of layers with unequal KV widths to the widest layer. The KV size is the one
llama.cpp reports when it creates the context (`llama_kv_cache: size = ...`). Prompt tokens are fixed random ids
(speed does not depend on them). `--types`: f32 / f16 / bf16 are written by the exporter; q4_k_m, q8_0, ... by
llama.cpp's quantizer from the f16 file (`export gguf --quantize`), and each row counts the quantizer's fallbacks.
"decode bound" is the dense file's size over the variant's: decode reads every weight once per token, so it cannot
beat that ratio. `--agreement N` then compares each quantized file with the same variant's f16 file on N GSM8K test
questions (greedy completions identical, top-1 next-token agreement over the prompt): the dense rows are the noise
floor quantization adds anyway. Prints tables and writes JSON (needs llama-cpp-python).

    python benchmarks/llamacpp_speed.py --variants qwen:dense qwen:global:0.2 qwen:global:0.4 \\
        --types f16 q8_0 q4_k_m --threads 2 --agreement 10 --output docs/llamacpp_speed_quantized.json
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from common import ROOT, SHARED_GSM8K, gguf_file, llama_greedy, parse_variant, prompts, write_results  # noqa: E402

from optimum_rku.export.gguf import GGUF_DTYPES  # noqa: E402
from optimum_rku.export.quantize import QUANT_TYPES, llama_log, read_types  # noqa: E402

DEFAULT_VARIANTS = ["testbed:dense", "testbed:global:0.4", "testbed:uniform:0.4"]
TYPES = tuple(t for t in GGUF_DTYPES if t != "q8_0") + tuple(QUANT_TYPES)
KV_LINE = re.compile(
    r"llama_kv_cache: size =\s*([\d.]+) MiB.*K \((\w+)\):\s*([\d.]+) MiB, V \((\w+)\):\s*([\d.]+) MiB"
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--variants", nargs="+", default=DEFAULT_VARIANTS, help="SOURCE:dense | SOURCE:ALLOC:SPARSITY[:roundN]"
    )
    p.add_argument("--types", nargs="+", default=["f16"], choices=TYPES, help="GGUF weight types (see above)")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--flash-attn", nargs="+", default=["off", "on"], choices=["off", "on"])
    p.add_argument("--agreement", type=int, default=0, help="GSM8K test questions for quantized-vs-f16 agreement")
    p.add_argument("--agreement-tokens", type=int, default=48, help="greedy tokens per agreement question")
    p.add_argument("--work-dir", default=str(ROOT / "runs" / "llamacpp"), help="checkpoints and GGUF files (cached)")
    p.add_argument("--gsm8k-dir", default=str(SHARED_GSM8K), help="GSM8K train.jsonl (real-model calibration)")
    p.add_argument("--calibration-questions", type=int, default=32)
    p.add_argument("--output", default=None, help="JSON file to write")
    return p.parse_args(argv)


def file_of(variant, kind: str, args) -> tuple[Path, Path]:
    """(checkpoint, GGUF file) of a variant in weight type `kind` (quantized types from the f16 export)."""
    quantized = kind in QUANT_TYPES
    return gguf_file(
        variant,
        Path(args.work_dir),
        "f16" if quantized else kind,
        quantize=kind if quantized else None,
        calibration_questions=args.calibration_questions,
        gsm8k_dir=Path(args.gsm8k_dir),
    )


def load(path: Path, args, flash: bool, logits_all: bool = False, n_ctx: int | None = None):
    """A llama.cpp context and the KV-cache sizes it logged while being created."""
    from llama_cpp import Llama

    with llama_log() as log:
        llm = Llama(
            model_path=str(path),
            n_ctx=n_ctx or args.prompt_tokens + args.decode_tokens + 16,
            n_batch=args.prompt_tokens,
            n_threads=args.threads,
            n_threads_batch=args.threads,
            flash_attn=flash,
            logits_all=logits_all,
            verbose=True,
            seed=0,
        )
    llm.verbose = False
    match = KV_LINE.search("".join(log))
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


def speed_rows(variants, kind: str, setting: str, args) -> list[dict]:
    """One (weight type, flash-attention setting): every variant loaded, measured round-robin, medians."""
    files = {v: file_of(v, kind, args)[1] for v in variants}
    contexts = {v: load(files[v], args, setting == "on") for v in variants}
    prompts_ = {}
    for v, (llm, _) in contexts.items():
        prompts_[v] = np.random.default_rng(0).integers(10, llm.n_vocab(), args.prompt_tokens).tolist()
        measure(llm, prompts_[v][:16], 4)  # warm-up
    timings = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v, (llm, _) in contexts.items():
            timings[v].append(measure(llm, prompts_[v], args.decode_tokens))
    rows = []
    for v in variants:
        report = read_types(files[v])
        rows.append(
            {
                "variant": v.name,
                "source": v.source,
                "type": kind,
                "flash_attn": setting,
                "prefill_tps": statistics.median(t[0] for t in timings[v]),
                "decode_tps": statistics.median(t[1] for t in timings[v]),
                "kv_cache": contexts[v][1],
                "file_mib": files[v].stat().st_size / 2**20,
                "tensor_types": report.types,
                "fallbacks": len(report.fallbacks),
                "f16_fallbacks": sum(f.got == "F16" for f in report.fallbacks),
            }
        )
    for llm, _ in contexts.values():
        llm.close()
    return rows


def agreement(variant, kind: str, args) -> dict:
    """Greedy completions and prompt top-1 of the `kind` file against the same variant's f16 file."""
    from optimum_rku.io.checkpoint import load_tokenizer

    ckpt, reference = file_of(variant, "f16", args)
    quantized = file_of(variant, kind, args)[1]
    tokenizer = load_tokenizer(ckpt)
    questions = prompts(variant, tokenizer, args.agreement, Path(args.gsm8k_dir))
    n_ctx = max(map(len, questions)) + args.agreement_tokens + 16
    outputs = []
    for path in (reference, quantized):
        llm = load(path, args, False, logits_all=True, n_ctx=n_ctx)[0]
        outputs.append([llama_greedy(llm, ids, args.agreement_tokens, tokenizer.eos_token_id) for ids in questions])
        llm.close()
    same = sum(a[0] == b[0] for a, b in zip(*outputs))
    top1 = float(np.mean([(a[1].argmax(-1) == b[1].argmax(-1)).mean() for a, b in zip(*outputs)]))
    return {"variant": variant.name, "type": kind, "questions": len(questions), "identical": same, "top1": top1}


def run(args) -> tuple[list[dict], list[dict]]:
    variants = [parse_variant(v) for v in args.variants]
    for kind in args.types:  # build (prune, export, quantize) everything before timing anything
        for v in variants:
            file_of(v, kind, args)
    results = [
        row for setting in args.flash_attn for kind in args.types for row in speed_rows(variants, kind, setting, args)
    ]
    for row in results:
        same = (
            r
            for r in results
            if r["variant"] == f"{row['source']}-dense"
            and (r["flash_attn"], r["type"]) == (row["flash_attn"], row["type"])
        )
        dense = next(same, None)
        row["prefill_ratio"] = row["prefill_tps"] / dense["prefill_tps"] if dense else None
        row["decode_ratio"] = row["decode_tps"] / dense["decode_tps"] if dense else None
        row["kv_ratio"] = row["kv_cache"]["total_mib"] / dense["kv_cache"]["total_mib"] if dense else None
        row["file_ratio"] = row["file_mib"] / dense["file_mib"] if dense else None
    quantized = [k for k in args.types if k in QUANT_TYPES]
    agreements = [agreement(v, k, args) for v in variants for k in quantized] if args.agreement else []
    return results, agreements


def table(results: list[dict]) -> str:
    ratio = lambda x: f"{x:.2f}x" if x is not None else "-"  # noqa: E731
    lines = [
        "| variant | weights | flash attn | file MiB | vs dense | prefill tok/s | vs dense | decode tok/s | vs dense | "
        "decode bound | KV cache MiB (K + V) | vs dense | fallbacks (to F16) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        kv = r["kv_cache"]
        bound = ratio(1 / r["file_ratio"]) if r["file_ratio"] else "-"
        lines.append(
            f"| {r['variant']} | {r['type']} | {r['flash_attn']} | {r['file_mib']:.1f} | {ratio(r['file_ratio'])} | "
            f"{r['prefill_tps']:.0f} | {ratio(r['prefill_ratio'])} | {r['decode_tps']:.1f} | "
            f"{ratio(r['decode_ratio'])} | {bound} | {kv['total_mib']:.2f} ({kv['k_mib']:.2f} + {kv['v_mib']:.2f}) | "
            f"{ratio(r['kv_ratio'])} | {r['fallbacks']} ({r['f16_fallbacks']}) |"
        )
    return "\n".join(lines)


def agreement_table(rows: list[dict]) -> str:
    lines = [
        "| variant | weights vs f16 | greedy completions identical | prompt top-1 agreement |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['type']} | {r['identical']}/{r['questions']} | {r['top1']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    results, agreements = run(args)
    print(table(results))
    if agreements:
        print()
        print(agreement_table(agreements))
    if args.output:
        extra = {"agreement": agreements} if agreements else None
        write_results(args.output, "llamacpp_speed.py", list(argv or sys.argv[1:]), args, results, extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
