"""Train the reasoning-testbed Llama model from scratch on generated GSM8K-style problems (CPU friendly)."""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from .problems import format_prompt, make_problems
from .tokenizer import build_tokenizer


def testbed_config(tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    """Return the testbed LlamaConfig (4 layers, hidden 256, GQA 8/4 heads, tied embeddings) for a tokenizer."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=32,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def encode_examples(tokenizer: PreTrainedTokenizerBase, problems: list[dict]) -> list[tuple[list[int], int]]:
    """Tokenize problems as (prompt + " " + answer + eos ids, prompt length), matching the eval prompt exactly."""
    prompts = tokenizer([format_prompt(p["question"]) for p in problems], add_special_tokens=False)["input_ids"]
    answers = tokenizer([" " + p["answer"] for p in problems], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [(pr + an + [eos], len(pr)) for pr, an in zip(prompts, answers)]


def _collate(batch: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; labels cover answer tokens and eos only (prompt and padding are ignored)."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (ids, plen) in enumerate(batch):
        t = torch.tensor(ids, dtype=torch.long)
        input_ids[i, : len(ids)] = t
        labels[i, plen : len(ids)] = t[plen:]
        attention[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def quick_accuracy(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    problems: list[dict],
    batch_size: int = 32,
    max_new_tokens: int = 256,
) -> float:
    """Strict exact match under greedy 0-shot decoding, through the library's GSM8K evaluator."""
    if not problems:
        return 0.0
    from optimum_rku.evaluation import evaluate_gsm8k

    result = evaluate_gsm8k(
        model,
        tokenizer,
        dataset=problems,
        num_fewshot=0,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        progress=False,
    )
    return result.exact_match_strict


def _lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warmup then cosine decay to ``floor * peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_testbed(
    output_dir: str | os.PathLike,
    *,
    steps: int = 850,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    warmup_steps: int = 60,
    weight_decay: float = 0.01,
    seed: int = 0,
    num_threads: int | None = None,
    log_every: int = 50,
    eval_problems: int = 200,
    time_budget_s: float | None = None,
    progress: bool = True,
    init_from: str | os.PathLike | None = None,
) -> dict:
    """Train the testbed model (from scratch, or on from `init_from`) and save it with a training summary."""
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    random.seed(seed)
    torch.manual_seed(seed)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer()
    config = testbed_config(tokenizer)
    model = LlamaForCausalLM.from_pretrained(init_from) if init_from else LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())

    pool = encode_examples(tokenizer, make_problems(steps * batch_size, seed=seed, split="train"))
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    batches = ([pool[i] for i in order[step * batch_size : (step + 1) * batch_size]] for step in range(steps))

    opt = _optimizer(model, learning_rate, weight_decay)
    schedule = _Schedule(steps, learning_rate, warmup_steps, time_budget_s)
    losses, train_time = _train_loop(model, opt, batches, tokenizer.pad_token_id, schedule, log_every, progress)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=256,
    )
    summary: dict = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "steps": len(losses),
        "planned_steps": steps,
        "time_budget_s": time_budget_s,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "warmup_steps": warmup_steps,
        "seed": seed,
        "init_from": str(init_from) if init_from else None,
        "num_threads": torch.get_num_threads(),
        "params": n_params,
        "final_loss": losses[-1] if losses else None,
        "final_loss_mean_last_50": sum(losses[-50:]) / max(1, len(losses[-50:])),
        "wall_time_s": round(train_time, 1),
        "loss": "cross-entropy on answer tokens + eos only (prompt tokens masked)",
    }
    if eval_problems:
        t1 = time.time()
        summary[f"test_accuracy_{eval_problems}"] = quick_accuracy(
            model, tokenizer, make_problems(eval_problems, seed=seed, split="test")
        )
        summary["eval_time_s"] = round(time.time() - t1, 1)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _optimizer(model: torch.nn.Module, learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (norm weights and other vectors are not decayed)."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=learning_rate,
        betas=(0.9, 0.98),
        eps=1e-8,
    )


class _Schedule:
    """The learning rate of a step: warmup then cosine by step, and by wall-clock too under a time budget."""

    def __init__(self, steps: int, peak: float, warmup: int, time_budget_s: float | None):
        self.steps, self.peak, self.warmup, self.time_budget_s = steps, peak, warmup, time_budget_s

    def out_of_time(self, elapsed: float) -> bool:
        """Whether the time budget (if any) is spent: training stops before the next step."""
        return self.time_budget_s is not None and elapsed >= self.time_budget_s

    def lr(self, step: int, elapsed: float) -> float:
        """The learning rate of `step`, `elapsed` seconds into training."""
        lr = _lr_at(step, self.steps, self.peak, self.warmup)
        if self.time_budget_s is not None:
            # Anneal by wall-clock too, so a run cut short by the budget still ends at the low learning rate.
            lr = min(lr, _lr_at(int(self.steps * elapsed / self.time_budget_s), self.steps, self.peak, self.warmup))
        return lr


def _train_loop(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    batches,
    pad_id: int,
    schedule: _Schedule,
    log_every: int,
    progress: bool,
) -> tuple[list[float], float]:
    """One optimizer step per batch until the batches or the time budget run out; return losses and wall time."""
    model.train()
    t0 = time.time()
    ema = None
    losses: list[float] = []
    steps = schedule.steps
    bar = tqdm(range(steps), disable=not progress, desc="testbed", mininterval=5.0)
    for step, batch_examples in zip(bar, batches):
        elapsed = time.time() - t0
        if schedule.out_of_time(elapsed):
            break
        lr = schedule.lr(step, elapsed)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = model(**_collate(batch_examples, pad_id)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        val = loss.item()
        losses.append(val)
        ema = val if ema is None else 0.95 * ema + 0.05 * val
        if progress:
            bar.set_postfix(loss=f"{ema:.4f}", lr=f"{lr:.2e}")
        if log_every and (step + 1) % log_every == 0:
            print(
                f"step {step + 1}/{steps} loss {val:.4f} ema {ema:.4f} lr {lr:.2e} {time.time() - t0:.0f}s", flush=True
            )
    train_time = time.time() - t0
    model.eval()
    return losses, train_time


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point: parse arguments, train the testbed and print the summary as JSON."""
    parser = argparse.ArgumentParser(description="Train the optimum-rku reasoning testbed model.")
    parser.add_argument("--output-dir", default=str(Path(__file__).parent / "model"))
    parser.add_argument("--steps", type=int, default=850)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--warmup-steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--eval-problems", type=int, default=200)
    parser.add_argument("--time-budget-s", type=float, default=None, help="stop (annealed) after this wall time")
    parser.add_argument("--init-from", default=None, help="continue training from this checkpoint directory")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    summary = train_testbed(
        args.output_dir,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        seed=args.seed,
        num_threads=args.num_threads,
        log_every=args.log_every,
        eval_problems=args.eval_problems,
        time_budget_s=args.time_budget_s,
        progress=not args.no_progress,
        init_from=args.init_from,
    )
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
