"""Deployment speed of pruned models: parameters, checkpoint bytes, prefill latency, decode tokens/s, KV-cache bytes.

Dense vs pruned (uniform and global allocation at 20/40/50% sparsity, plus 40% with `round_to`) on a random ~350M
Llama and on the bundled testbed. Pruning uses importance="magnitude" (data-free; speed depends only on the kept
widths, not on which structures were kept). All models stay in memory and every timed quantity is measured in
rounds that visit the models in rotating order; medians over rounds are reported, and ratios are against the dense
model of the same round set, so load from other jobs on a shared machine hits every model alike. With one thread
(default) the process CPU time is the compute work and is much less sensitive to other jobs than wall time; both are
reported.

Prefill: one forward of batch 1 x `--prefill-len` tokens, no cache. Decode: greedy `generate` with KV cache from a
`--prompt-len`-token prompt, `min_new_tokens == max_new_tokens` so the length is fixed; tokens/s counts generated
tokens (batch x new tokens) over the whole call. KV bytes/token: formula (2 x kv_heads x head_dim x dtype bytes per
layer) and measured from the cache a prefill actually allocates.

Usage:
    python benchmarks/deploy.py                                   # writes docs/perf_deploy.json
    python benchmarks/deploy.py --models testbed --repeats 2      # testbed only
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from common import ROOT, SIZES, build_model  # noqa: E402

SPARSITIES = (0.2, 0.4, 0.5)
ALLOCATIONS = ("uniform", "global")


def variants(round_to: int) -> list[tuple[str, dict[str, Any] | None]]:
    """(name, RKUConfig kwargs) for the dense model and every pruned variant."""
    out: list[tuple[str, dict[str, Any] | None]] = [("dense", None)]
    for allocation in ALLOCATIONS:
        for sparsity in SPARSITIES:
            plain = dict(sparsity=sparsity, allocation=allocation, round_to=1)  # unrounded, against the roundN rows
            out.append((f"{allocation}-{int(sparsity * 100)}", plain))
    for allocation in ALLOCATIONS:
        out.append((f"{allocation}-40-round{round_to}", dict(sparsity=0.4, allocation=allocation, round_to=round_to)))
    return out


def checkpoint_bytes(pruner, model) -> tuple[int, str | None]:
    """Bytes of a save_pretrained directory (pruned models via RKUPruner.save_pretrained, with remote code).

    If saving fails, returns the bytes of the weights alone (safetensors of the state dict) and the error text.
    """
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "ckpt"
        try:
            if pruner is None:
                model.save_pretrained(target)
            else:
                pruner.save_pretrained(target)
            return sum(f.stat().st_size for f in target.rglob("*") if f.is_file()), None
        except Exception as err:  # noqa: BLE001 - reported in the results, not hidden
            weights = Path(tmp) / "weights.safetensors"
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(weights))
            return weights.stat().st_size, f"{type(err).__name__}: {str(err).strip().splitlines()[-1]}"


def measured_kv_bytes_per_token(model, tokens: int = 32) -> float:
    """Bytes the KV cache holds after a prefill of `tokens` tokens, per token (read from the cache tensors)."""
    ids = torch.randint(3, model.config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cache = model(input_ids=ids, use_cache=True).past_key_values
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if t is not None:
                total += t.numel() * t.element_size()
    if total == 0:  # older cache layouts
        for k, v in zip(cache.key_cache, cache.value_cache):
            total += k.numel() * k.element_size() + v.numel() * v.element_size()
    return total / tokens


def prefill_s(model, length: int) -> tuple[float, float]:
    """(wall, process CPU) seconds for one batch-1 forward of `length` tokens without cache."""
    ids = torch.randint(3, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(1))
    start, start_cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    return time.perf_counter() - start, time.process_time() - start_cpu


def decode_tokens_per_s(model, batch: int, prompt_len: int, new_tokens: int) -> tuple[float, float]:
    """Generated tokens per (wall, process CPU) second of greedy decoding with KV cache at a fixed length."""
    ids = torch.randint(3, model.config.vocab_size, (batch, prompt_len), generator=torch.Generator().manual_seed(2))
    start, start_cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
        )
    elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    if out.shape[1] - prompt_len != new_tokens:
        raise RuntimeError(f"generate returned {out.shape[1] - prompt_len} new tokens, expected {new_tokens}.")
    return batch * new_tokens / elapsed, batch * new_tokens / elapsed_cpu


def build(name: str, seed: int = 0):
    """The dense model to prune: 'testbed' (bundled, trained) or a random Llama size from common.SIZES."""
    if name == "testbed":
        from optimum_rku.testbed import TESTBED_PATH, load

        if not (Path(TESTBED_PATH) / "model.safetensors").is_file():
            raise FileNotFoundError("The testbed weights (model.safetensors) are not there yet.")
        model, _ = load()
        return model.eval()
    return build_model(name, seed=seed)


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Prune every variant of one dense model and measure all of them in rotating rounds."""
    from tqdm.auto import tqdm

    from optimum_rku import RKUPruner
    from optimum_rku.config import RKUConfig
    from optimum_rku.models.blocks import blocks
    from optimum_rku.models.geometry import kv_cache_bytes_per_token

    dense = build(name)
    dense.generation_config.eos_token_id = None  # random/untrained models: never stop early
    max_pos = dense.config.max_position_embeddings
    prefill_len = min(args.prefill_len, max_pos)
    prompt_len = min(args.prompt_len, max_pos - args.new_tokens)
    keys = ("prefill_s", "decode_b1_tok_s", f"decode_b{args.batch}_tok_s")
    models: dict[str, Any] = {}
    rows: dict[str, dict[str, Any]] = {}
    dense_kv_groups = sum(b.num_kv_heads for b in blocks(dense))
    for vname, kwargs in tqdm(variants(args.round_to), desc=f"pruning {name}", disable=args.quiet):
        pruner = None
        if kwargs is None:
            model = dense
        else:
            pruner = RKUPruner(copy.deepcopy(dense))
            model = pruner.prune(RKUConfig(importance="magnitude", **kwargs), progress=False)
        model.eval()
        views = blocks(model)
        saved_bytes, save_error = checkpoint_bytes(pruner, model)
        rows[vname] = {
            "config": kwargs,
            "parameters": sum(p.numel() for p in model.parameters()),
            "checkpoint_bytes": saved_bytes,
            "save_error": save_error,
            "kv_bytes_per_token": kv_cache_bytes_per_token(model),
            "kv_bytes_per_token_measured": measured_kv_bytes_per_token(model),
            "kv_groups_removed_fraction": 1 - sum(b.num_kv_heads for b in views) / dense_kv_groups,
            "intermediate_sizes": [b.intermediate_size for b in views],
            "kv_heads": [b.num_kv_heads for b in views],
            "achieved_sparsity": pruner.plan.achieved_sparsity if pruner is not None else 0.0,
            **{f"{key}_{clock}": [] for key in keys for clock in ("wall", "cpu")},
        }
        models[vname] = model
    names = list(models)
    for model in models.values():  # warm-up: first-call costs out of the timed rounds
        prefill_s(model, 16)
        decode_tokens_per_s(model, 1, 4, 2)
    for r in tqdm(range(args.repeats), desc=f"timing {name}", disable=args.quiet):
        order = names[r % len(names) :] + names[: r % len(names)]
        for vname in order:
            model, row = models[vname], rows[vname]
            values = (
                prefill_s(model, prefill_len),
                decode_tokens_per_s(model, 1, prompt_len, args.new_tokens),
                decode_tokens_per_s(model, args.batch, prompt_len, args.new_tokens),
            )
            for key, (wall, cpu) in zip(keys, values):
                row[f"{key}_wall"].append(wall)
                row[f"{key}_cpu"].append(cpu)
    base = rows["dense"]
    for row in rows.values():
        for key in (f"{k}_{clock}" for k in keys for clock in ("wall", "cpu")):
            row[f"{key}_median"] = statistics.median(row[key])
            row[f"{key}_vs_dense"] = row[f"{key}_median"] / base[f"{key}_median"]
        row["kv_reduction"] = 1 - row["kv_bytes_per_token"] / base["kv_bytes_per_token"]
        row["kv_reduction_matches_groups"] = abs(row["kv_reduction"] - row["kv_groups_removed_fraction"]) < 1e-9
    return {
        "model": name,
        "prefill_len": prefill_len,
        "prompt_len": prompt_len,
        "new_tokens": args.new_tokens,
        "batch": args.batch,
        "threads": args.threads,
        "repeats": args.repeats,
        "variants": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    """One table per model: CPU-time figures (robust on a shared machine) with wall-time ratios beside them."""
    b = result["batch"]
    lines = [
        f"**{result['model']}** (prefill batch 1 x {result['prefill_len']}; decode {result['new_tokens']} new tokens "
        f"from a {result['prompt_len']}-token prompt; {result['threads']} thread(s); medians of {result['repeats']} "
        "rounds; CPU = process CPU time, wall = elapsed)",
        "",
        "| variant | params | ckpt MB | prefill CPU s | prefill vs dense CPU (wall) | decode b1 tok/CPU-s "
        f"| b1 vs dense CPU (wall) | decode b{b} tok/CPU-s | b{b} vs dense CPU (wall) | KV B/token (measured) "
        "| KV reduction | KV groups removed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["variants"].items():
        d1, db = "decode_b1_tok_s", f"decode_b{b}_tok_s"
        lines.append(
            f"| {name} | {r['parameters'] / 1e6:.1f}M | {r['checkpoint_bytes'] / 1e6:.1f}{'*' if r['save_error'] else ''} "
            f"| {r['prefill_s_cpu_median']:.3f} | {r['prefill_s_cpu_vs_dense']:.3f} ({r['prefill_s_wall_vs_dense']:.3f}) "
            f"| {r[d1 + '_cpu_median']:.1f} | {r[d1 + '_cpu_vs_dense']:.3f} ({r[d1 + '_wall_vs_dense']:.3f}) "
            f"| {r[db + '_cpu_median']:.1f} | {r[db + '_cpu_vs_dense']:.3f} ({r[db + '_wall_vs_dense']:.3f}) "
            f"| {r['kv_bytes_per_token']} ({r['kv_bytes_per_token_measured']:.0f}) | {r['kv_reduction']:.3f} "
            f"| {r['kv_groups_removed_fraction']:.3f} |"
        )
    errors = {r["save_error"] for r in result["variants"].values() if r["save_error"]}
    for err in sorted(errors):
        lines.append(f"\n\\* save_pretrained failed ({err}); size of the weights alone (safetensors).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, benchmark each model, print markdown tables and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="350M,testbed", help="comma-separated: testbed and/or 25M,110M,350M")
    parser.add_argument("--prefill-len", type=int, default=512)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8, help="the larger decode batch (batch 1 is always measured)")
    parser.add_argument("--round-to", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=str(ROOT / "docs" / "perf_deploy.json"))
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    for key in ("prefill_len", "prompt_len", "new_tokens", "batch", "round_to", "repeats", "threads"):
        if getattr(args, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')}={getattr(args, key)} must be a positive int.")
    names = [n for n in args.models.split(",") if n]
    for n in names:
        if n != "testbed" and n not in SIZES:
            raise ValueError(f"model {n!r} is not 'testbed' or one of {sorted(SIZES)}.")
    torch.set_num_threads(args.threads)
    path = Path(args.json)
    results = json.loads(path.read_text()) if path.is_file() else {}
    for n in names:
        try:
            results[n] = bench_model(n, args)
        except FileNotFoundError as err:
            results[n] = {"model": n, "error": str(err)}
            print(f"{n}: skipped ({err})")
            continue
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(markdown(results[n]) + "\n")


if __name__ == "__main__":
    main()
