"""Round trip through llama.cpp: exported GGUF files against transformers on the same prompts (needs llama-cpp-python).

For each variant (see `common.py`, "llama.cpp variants") the checkpoint is exported to GGUF, then on N test questions:
- `tokens`: does llama.cpp tokenize the prompt text to the ids transformers uses (testbed; chat prompts are compared
  after the template is applied);
- `completions`: greedy completions (up to --max-new-tokens, from the same prompt ids) identical token for token;
- `max_logit_diff`: largest |difference| of next-token logits over every prompt position; `top1`: share of prompt
  positions whose argmax agrees.
Prints a table and writes JSON.

    pip install -e ".[llamacpp]"      # builds llama.cpp (about 17 minutes on 2 cores)
    python benchmarks/llamacpp_roundtrip.py --variants testbed:dense testbed:global:0.4 testbed:uniform:0.4 \\
        smollm2:dense smollm2:global:0.2 smollm2:uniform:0.2 --questions 20 --output docs/llamacpp_roundtrip.json
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import ROOT, SHARED_GSM8K, gguf_file, llama_greedy, parse_variant, prompts, write_results  # noqa: E402

DEFAULT_VARIANTS = ["testbed:dense", "testbed:global:0.4", "testbed:uniform:0.4"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, help="SOURCE:dense | SOURCE:ALLOC:SPARSITY")
    p.add_argument("--questions", type=int, default=20, help="test questions per variant")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16", "q8_0"], help="GGUF weight type")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work-dir", default=str(ROOT / "runs" / "llamacpp"), help="checkpoints and GGUF files (cached)")
    p.add_argument("--gsm8k-dir", default=str(SHARED_GSM8K), help="GSM8K train.jsonl / test.jsonl (SmolLM2 rows)")
    p.add_argument("--calibration-questions", type=int, default=32, help="SmolLM2 self-generated calibration")
    p.add_argument("--output", default=None, help="JSON file to write")
    return p.parse_args(argv)


@torch.no_grad()
def hf_greedy(model, ids: list[int], steps: int, eos: int | None) -> tuple[list[int], np.ndarray]:
    tensor = torch.tensor([ids])
    logits = model(tensor).logits[0].float().numpy()
    generated = model.generate(
        tensor,
        attention_mask=torch.ones_like(tensor),
        max_new_tokens=steps,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=eos if eos is not None else 0,
    )[0, len(ids) :].tolist()
    if eos is not None and eos in generated:
        generated = generated[: generated.index(eos)]
    return generated, logits


def run_variant(variant, args) -> dict:
    from llama_cpp import Llama

    from optimum_rku.export.gguf import describe_gguf
    from optimum_rku.io.checkpoint import RKUModelForCausalLM, load_tokenizer

    work = Path(args.work_dir)
    ckpt, file = gguf_file(
        variant, work, args.dtype, calibration_questions=args.calibration_questions, gsm8k_dir=Path(args.gsm8k_dir)
    )
    model = RKUModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    tokenizer = load_tokenizer(ckpt)
    eos = tokenizer.eos_token_id
    llm = Llama(model_path=str(file), n_ctx=512, logits_all=True, verbose=False, n_threads=args.threads, seed=0)
    rows = []
    started = time.perf_counter()
    try:
        for ids in prompts(variant, tokenizer, args.questions, Path(args.gsm8k_dir)):
            text = tokenizer.decode(ids)
            same_tokens = llm.tokenize(text.encode(), add_bos=False, special=True) == ids
            ours, hf_logits = hf_greedy(model, ids, args.max_new_tokens, eos)
            theirs, lc_logits = llama_greedy(llm, ids, args.max_new_tokens, eos)
            rows.append(
                {
                    "tokens_match": bool(same_tokens),
                    "completion_match": ours == theirs,
                    "max_logit_diff": float(np.abs(hf_logits - lc_logits).max()),
                    "top1": float((hf_logits.argmax(-1) == lc_logits.argmax(-1)).mean()),
                }
            )
    finally:
        llm.close()
    info = describe_gguf(file)
    return {
        "variant": variant.name,
        "architecture": info["architecture"],
        "per_layer": info["per_layer"],
        "dtype": args.dtype,
        "questions": len(rows),
        "tokens_match": sum(r["tokens_match"] for r in rows),
        "completions_match": sum(r["completion_match"] for r in rows),
        "max_logit_diff": max(r["max_logit_diff"] for r in rows),
        "top1_agreement": float(np.mean([r["top1"] for r in rows])),
        "seconds": round(time.perf_counter() - started, 1),
    }


def table(results: list[dict]) -> str:
    lines = [
        "| variant | llama.cpp arch | weights | tokenization | greedy completions | max next-token logit diff | top-1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        arch = r["architecture"] + (" (per-layer)" if r["per_layer"] else "")
        lines.append(
            f"| {r['variant']} | {arch} | {r['dtype']} | {r['tokens_match']}/{r['questions']} | "
            f"{r['completions_match']}/{r['questions']} identical | {r['max_logit_diff']:.2e} | {r['top1_agreement']:.3f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = [parse_variant(v) for v in args.variants]
    results = [run_variant(v, args) for v in variants]
    print(table(results))
    if args.output:
        write_results(args.output, "llamacpp_roundtrip.py", list(argv or os.sys.argv[1:]), args, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
