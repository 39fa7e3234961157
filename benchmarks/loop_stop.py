"""Would the loop stop change a verdict? Replay it over answers generated to the full budget.

`generate_completions(stop_loops=True)` stops computing a row once the rule `loop_stops` sees its newest tokens
repeat one span, and continues its text by repeating that span to the budget (`extend_loop`). Greedy decoding that
reached such a state is expected to repeat it, so the text should be the full budget's. This script checks that claim
on real answers: it reads the completions `real_model.py --save-completions` wrote *without* `--stop-loops` (rows
generated with it are skipped), re-tokenizes each answer, finds the first length at which the rule would have fired,
continues the answer from there to the length it really had, and compares that text, and the answers extracted from
it (the boxed answer the task judges, and the flexible last number), with the full text. An answer the rule stopped
although it ended on its own before the budget is a false stop.

    python benchmarks/loop_stop.py --model qwen2.5-coder-0.5b --completions runs/select_qwen/base_completions.jsonl

Prints a table per row of the record and writes `<completions stem>_loop_stop.json`.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from optimum_rku.data.generation import extend_loop, loop_stops
from optimum_rku.evaluation.gsm8k import extract_answer
from optimum_rku.evaluation.gsm8k_cot import boxed_number


def first_stop(tokens: list[int]) -> int | None:
    """The length at which the loop stop would end this answer, or None."""
    return next((length for length in range(1, len(tokens) + 1) if loop_stops(tokens[:length])), None)


def replay(samples: list[dict], tokenizer, budget: int) -> dict:
    """The loop stop replayed over one row's answers: how many it stops, how many of those it continues into exactly
    the text the full budget gave, extractions that change, tokens saved."""
    stopped = false_stops = identical = boxed_changed = flexible_changed = saved = 0
    changed = []
    for sample in samples:
        text = sample["completion"]
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        length = first_stop(tokens)
        if length is None:
            continue
        stopped += 1
        ran_out = sample["generated_tokens"] >= budget
        false_stops += not ran_out
        saved += max(sample["generated_tokens"] - length, 0)
        continued = tokenizer.decode(extend_loop(tokens[:length], len(tokens)))
        identical += continued == tokenizer.decode(tokens)
        same_boxed = boxed_number(continued) == boxed_number(text)
        same_flexible = extract_answer(continued, "flexible") == extract_answer(text, "flexible")
        boxed_changed += not same_boxed
        flexible_changed += not same_flexible
        if not (same_boxed and same_flexible):
            changed.append({"problem": sample["problem"], "stopped_at": length, "ran_to_budget": ran_out})
    total = sum(s["generated_tokens"] for s in samples)
    return {
        "answers": len(samples),
        "hit_budget": sum(s["generated_tokens"] >= budget for s in samples),
        "stopped": stopped,
        "false_stops": false_stops,
        "identical_text": identical,
        "boxed_changed": boxed_changed,
        "flexible_changed": flexible_changed,
        "tokens": total,
        "tokens_saved": saved,
        "changed": changed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b", help="the model whose tokenizer generated them")
    parser.add_argument("--completions", nargs="+", required=True, help="<output>_completions.jsonl files")
    parser.add_argument("--budget", type=int, default=768, help="the answer budget they were generated with")
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    from optimum_rku.io.sources import resolve_gguf

    path, gguf_file = resolve_gguf(args.model, None)
    tokenizer = AutoTokenizer.from_pretrained(path, **({"gguf_file": gguf_file} if gguf_file else {}))
    by_row: dict[str, list[dict]] = defaultdict(list)
    for path in args.completions:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            sample = json.loads(line)
            by_row[sample["row"]].append(sample)
    # a row whose answers the loop stop already ended (later runs of the same record) has nothing to replay
    stopped = [row for row, samples in by_row.items() if any(s.get("stopped") == "loop" for s in samples)]
    for row in stopped:
        print(f"skipped (generated with --stop-loops): {row}")
        del by_row[row]
    if not by_row:
        raise SystemExit("every row was generated with --stop-loops; replay needs answers run to the budget")
    results = {row: replay(samples, tokenizer, args.budget) for row, samples in by_row.items()}
    print(
        "| row | answers | hit budget | stopped in a loop | false stops | same text as the budget's | boxed changed | "
        "flexible changed | tokens saved |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row, r in results.items():
        share = r["tokens_saved"] / r["tokens"] if r["tokens"] else 0.0
        print(
            f"| {row} | {r['answers']} | {r['hit_budget']} | {r['stopped']} | {r['false_stops']} | "
            f"{r['identical_text']} | {r['boxed_changed']} | "
            f"{r['flexible_changed']} | {r['tokens_saved']:,} ({share:.0%}) |"
        )
    out = Path(args.completions[0]).with_name(Path(args.completions[0]).stem + "_loop_stop.json")
    out.write_text(json.dumps({"budget": args.budget, "rows": results}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
