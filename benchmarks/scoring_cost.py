"""Scoring cost of RKU against the physical floor (forward + backward to activations) and Taylor (weight gradients).

Every variant sees the same calibration tokens and batch size. Time: one process per (model size, token count)
runs the variants in rotating order (floor, rku, taylor, then rku, taylor, floor, ...) and reports medians, so that
load from other jobs on a shared machine hits all variants alike. With one intra-op thread (default), the process
CPU time of a variant is its compute work and is far less sensitive to other jobs than wall time; both are reported.
Peak memory: a fresh subprocess per variant loads the model, runs the variant once on one short sequence (one-time
initialization), resets the kernel's peak-RSS counter (`/proc/self/clear_refs` = 5), runs the variant once and
reports `VmHWM - VmRSS(before)`, with glibc's mmap threshold fixed at 128 KiB so that freed buffers leave RSS; a
5 ms sampling thread of VmRSS is the fallback where clear_refs is not writable (`common.PeakRSS`).

`--memory-model` instead counts the bytes autograd saves for backward (saved-tensor hooks, deduplicated by storage)
on tiny bf16 Llamas, fits bytes/token as a linear function of the shapes and extrapolates to real models
(docs/memory.md).

Usage:
    python benchmarks/scoring_cost.py                      # full run, writes docs/perf_scoring.json
    python benchmarks/scoring_cost.py --sizes 25M --repeats 2 --json /tmp/x.json   # quick check
    python benchmarks/scoring_cost.py --memory-model       # writes docs/perf_memory_model.json

One script on purpose (over ~450 lines): the command recorded in docs/benchmarks.md reproduces every timing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from common import ROOT, SIZES, VOCAB, PeakRSS, build_model, token_dataset  # noqa: E402

VARIANTS = ("floor", "rku", "taylor")


def run_floor(model, dataset, batch_size: int) -> None:
    """Physical floor: frozen weights, embedding output as the grad leaf, self_nll forward + backward, no hooks."""
    from optimum_rku.data.calibration import iter_batches
    from optimum_rku.models.blocks import decoder
    from optimum_rku.scoring.collect import frozen_weights
    from optimum_rku.scoring.objectives import objective_value

    def leaf(module, args, output):
        return output.detach().requires_grad_(True)

    handle = decoder(model).embed_tokens.register_forward_hook(leaf)
    try:
        with frozen_weights(model), torch.enable_grad():
            for batch in iter_batches(dataset, batch_size, 0, "cpu"):
                objective_value(model, batch, "self_nll").backward()
    finally:
        handle.remove()


def run_variant(name: str, model, dataset, batch_size: int) -> None:
    """Run one variant over the whole calibration set."""
    from optimum_rku.config import RKUConfig
    from optimum_rku.scoring import compute_scores

    if name == "floor":
        run_floor(model, dataset, batch_size)
    elif name == "rku":
        compute_scores(model, RKUConfig(), dataset, batch_size, progress=False)
    elif name == "taylor":
        compute_scores(model, RKUConfig(importance="taylor"), dataset, batch_size, progress=False)
    else:
        raise ValueError(f"variant={name!r} is not one of {VARIANTS}.")


# ------------------------------------------------------------------------------------------------------- workers
def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Time (rotating order, `repeats` rounds) or peak memory (one variant, one run) in this process."""
    import gc

    torch.set_num_threads(args.threads)
    model = build_model(args.size)
    dataset = token_dataset(args.seqs, args.seq_len)
    variants = args.variants.split(",")
    if args.mode == "memory":
        (name,) = variants
        run_variant(name, model, token_dataset(1, 32, seed=1), 1)  # one-time init (imports, kernels) not counted
        gc.collect()
        with PeakRSS() as peak:
            start = time.perf_counter()
            run_variant(name, model, dataset, args.batch_size)
            elapsed = time.perf_counter() - start
        return {"variant": name, "peak_mib": peak.peak_mib["VmRSS"], "time_s": elapsed, "method": peak.method}
    warm = token_dataset(1, 32, seed=1)
    for name in variants:  # first-call costs (lazy init, allocator growth) out of the timed rounds
        run_variant(name, model, warm, 1)
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.repeats):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for name in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            run_variant(name, model, dataset, args.batch_size)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {"times": times, "cpu_times": cpu}


def _subprocess(argv: list[str], fixed_mmap_threshold: bool = False) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", *argv]
    env = dict(os.environ)
    if fixed_mmap_threshold:
        # Memory runs only: a fixed mmap threshold makes glibc return every large tensor buffer to the OS on free, so
        # RSS tracks live memory instead of allocator caching (the default threshold adapts upwards after the first
        # big free). Timing runs keep the default allocator, as a user would (fresh mmaps cost page faults).
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"worker {' '.join(argv)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def parameters_of(size: str) -> int:
    """Total parameters of a SIZES config, counted on the meta device (no memory)."""
    with torch.device("meta"):
        model = build_model(size)
    return sum(p.numel() for p in model.parameters())


def measure(size: str, seqs: int, seq_len: int, batch_size: int, repeats: int, threads: int) -> dict[str, Any]:
    """Timing and per-variant peak memory for one model size and token count."""
    common = ["--size", size, "--seqs", str(seqs), "--seq-len", str(seq_len), "--batch-size", str(batch_size)]
    common += ["--threads", str(threads)]
    timing = _subprocess(common + ["--mode", "time", "--repeats", str(repeats), "--variants", ",".join(VARIANTS)])
    memory = {
        v: _subprocess(common + ["--mode", "memory", "--variants", v], fixed_mmap_threshold=True) for v in VARIANTS
    }
    med = {v: statistics.median(t) for v, t in timing["times"].items()}
    med_cpu = {v: statistics.median(t) for v, t in timing["cpu_times"].items()}
    row: dict[str, Any] = {
        "size": size,
        "parameters": parameters_of(size),
        "num_seqs": seqs,
        "seq_len": seq_len,
        "tokens": seqs * seq_len,
        "batch_size": batch_size,
        "threads": threads,
        "times_s": timing["times"],
        "cpu_times_s": timing["cpu_times"],
        "median_s": med,
        "median_cpu_s": med_cpu,
        "peak_mib": {v: memory[v]["peak_mib"] for v in VARIANTS},
        "memory_method": memory["floor"]["method"],
    }
    for v in ("rku", "taylor"):
        per_round = [a / b for a, b in zip(timing["times"][v], timing["times"]["floor"])]
        row[f"{v}_time_ratio"] = med[v] / med["floor"]
        row[f"{v}_cpu_ratio"] = med_cpu[v] / med_cpu["floor"]
        row[f"{v}_time_ratio_per_round_median"] = statistics.median(per_round)
        row[f"{v}_mem_ratio"] = memory[v]["peak_mib"] / memory["floor"]["peak_mib"]
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    """Results as a markdown table (CPU = process CPU seconds, wall = elapsed seconds; medians over rounds)."""
    lines = [
        "| model | params | tokens (seqs x len, batch) | floor CPU s | RKU/floor CPU | Taylor/floor CPU "
        "| RKU/floor wall | Taylor/floor wall | floor MiB | RKU MiB | Taylor MiB | RKU/floor mem | Taylor/floor mem "
        "| floor CPU us/(token*Mparam) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c, p = r["median_cpu_s"], r["peak_mib"]
        per = c["floor"] / r["tokens"] / (r["parameters"] / 1e6) * 1e6
        lines.append(
            f"| {r['size']} | {r['parameters'] / 1e6:.1f}M | {r['tokens']} ({r['num_seqs']}x{r['seq_len']}, "
            f"{r['batch_size']}) | {c['floor']:.2f} | {r['rku_cpu_ratio']:.3f} | {r['taylor_cpu_ratio']:.3f} "
            f"| {r['rku_time_ratio']:.3f} | {r['taylor_time_ratio']:.3f} | {p['floor']:.0f} | {p['rku']:.0f} "
            f"| {p['taylor']:.0f} | {r['rku_mem_ratio']:.3f} | {r['taylor_mem_ratio']:.3f} | {per:.3f} |"
        )
    return "\n".join(lines)


def token_growth(args: argparse.Namespace) -> list[dict[str, Any]]:
    """CPU time of every variant at 1x, 2x and 4x the calibration sequences (same batch size), one process each."""
    rows = []
    for factor in (1, 2, 4):
        seqs = factor * args.seqs
        argv = ["--size", args.growth_size, "--seqs", str(seqs), "--seq-len", str(args.seq_len)]
        argv += ["--batch-size", str(args.batch_size), "--threads", str(args.threads), "--mode", "time"]
        timing = _subprocess(argv + ["--repeats", str(args.repeats), "--variants", ",".join(VARIANTS)])
        rows.append(
            {
                "size": args.growth_size,
                "tokens": seqs * args.seq_len,
                "batch_size": args.batch_size,
                "cpu_times_s": timing["cpu_times"],
                "times_s": timing["times"],
                "median_cpu_s": {v: statistics.median(t) for v, t in timing["cpu_times"].items()},
            }
        )
    return rows


def growth_markdown(rows: list[dict[str, Any]]) -> str:
    """CPU seconds per variant and per 1k tokens as the token count doubles."""
    lines = [
        "| model | tokens | floor CPU s | RKU CPU s | Taylor CPU s | floor ms/1k tok | RKU ms/1k tok | Taylor ms/1k tok "
        "| RKU/floor |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["median_cpu_s"]
        per = {v: c[v] / r["tokens"] * 1e6 for v in VARIANTS}
        lines.append(
            f"| {r['size']} | {r['tokens']} | {c['floor']:.2f} | {c['rku']:.2f} | {c['taylor']:.2f} "
            f"| {per['floor']:.0f} | {per['rku']:.0f} | {per['taylor']:.0f} | {c['rku'] / c['floor']:.3f} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------- memory model
def saved_bytes_per_token(
    config_kwargs: dict[str, int], vocab: int, tokens: int = 64, weight_grads: bool = False
) -> float:
    """Bytes autograd keeps for backward per calibration token (bf16): RKU's pass, or Taylor's (projection grads)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from optimum_rku.models.blocks import blocks, decoder
    from optimum_rku.scoring.collect import frozen_weights
    from optimum_rku.scoring.objectives import objective_value

    config = LlamaConfig(vocab_size=vocab, max_position_embeddings=256, tie_word_embeddings=False, **config_kwargs)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    trainable = []
    if weight_grads:
        for block in blocks(model):
            trainable += [lin.weight for lin in block.linears()]
    handle = decoder(model).embed_tokens.register_forward_hook(lambda m, a, o: o.detach().requires_grad_(True))
    ids = torch.randint(3, vocab, (1, tokens), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    try:
        with (
            frozen_weights(model, trainable),
            torch.enable_grad(),
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        ):
            loss = objective_value(model, batch, "nll" if weight_grads else "self_nll")
    finally:
        handle.remove()
    del loss
    return sum(n for (ptr, _), n in seen.items() if ptr not in params) / tokens


def memory_model() -> dict[str, Any]:
    """Fit saved bytes/token = L*(a*h + b*i + c*kv_dim) + d*V + e*h on tiny bf16 Llamas, for RKU and for Taylor."""
    base = dict(
        hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )
    variants = [
        (base, 2048),
        ({**base, "num_hidden_layers": 4}, 2048),
        ({**base, "intermediate_size": 1024}, 2048),
        ({**base, "hidden_size": 512, "num_attention_heads": 8, "num_key_value_heads": 4}, 2048),
        ({**base, "num_key_value_heads": 4}, 2048),
        (base, 4096),
        ({**base, "num_hidden_layers": 3, "intermediate_size": 768}, 3072),
    ]
    rows = []
    for kwargs, vocab in variants:
        h, i, layers = kwargs["hidden_size"], kwargs["intermediate_size"], kwargs["num_hidden_layers"]
        kv = kwargs["num_key_value_heads"] * h // kwargs["num_attention_heads"]
        rows.append([layers * h, layers * i, layers * kv, vocab, h])
    a = torch.tensor(rows, dtype=torch.float64)
    names = ["per_layer_hidden", "per_layer_intermediate", "per_layer_kv_dim", "vocab", "hidden"]
    out: dict[str, Any] = {
        "dtype": "bfloat16 weights and activations; logits upcast to float32 by the objective",
        "attention": "sdpa",
    }
    for method, weight_grads in (("rku", False), ("taylor", True)):
        targets = [saved_bytes_per_token(kwargs, vocab, weight_grads=weight_grads) for kwargs, vocab in variants]
        b = torch.tensor(targets, dtype=torch.float64)
        coef = torch.linalg.lstsq(a, b).solution
        out[method] = {
            "bytes_per_token_coefficients": dict(zip(names, [round(c, 3) for c in coef.tolist()])),
            "max_abs_residual_bytes": (a @ coef - b).abs().max().item(),
            "measured": [{"shape": r, "bytes_per_token": t} for r, t in zip(rows, targets)],
        }
    return out


REAL_SHAPES: dict[str, dict[str, Any]] = {
    # Published config.json values of the three models (hidden, intermediate, layers, heads, kv heads, vocab).
    "Llama-3-8B": dict(h=4096, i=14336, layers=32, heads=32, kv_heads=8, vocab=128256, qkv_bias=False, tied=False),
    "Qwen2.5-7B": dict(h=3584, i=18944, layers=28, heads=28, kv_heads=4, vocab=152064, qkv_bias=True, tied=False),
    "Llama-3-70B": dict(h=8192, i=28672, layers=80, heads=64, kv_heads=8, vocab=128256, qkv_bias=False, tied=False),
}


GPUS_GIB = (24, 80)
GPU_RESERVE_GIB = 2  # CUDA context, cuBLAS workspace, allocator fragmentation (a rule of thumb)


def projected_memory(
    coefs: dict[str, dict[str, float]], tokens_per_batch: tuple[int, ...] = (2048, 8192)
) -> dict[str, Any]:
    """GiB for weights, activations (saved + transient), RKU accumulators and Taylor gradients at bf16.

    Taylor's `taylor_total_*` counts its bf16 weight gradients during the pass; `taylor_readout_peak_GiB` is the
    moment after the pass when collect_stats holds float32 copies of all projection gradients next to the bf16 ones.
    Max tokens per batch are the largest calibration batches (sequences x length) that fit a GPU of that size.
    """
    gib = 1024**3
    out: dict[str, Any] = {}
    for name, s in REAL_SHAPES.items():
        h, i, layers, hd = s["h"], s["i"], s["layers"], s["h"] // s["heads"]
        kv = s["kv_heads"] * hd
        proj = layers * (2 * h * h + 2 * h * kv + 3 * h * i + ((h + 2 * kv) if s["qkv_bias"] else 0))
        total = proj + layers * 2 * h + h + s["vocab"] * h * (1 if s["tied"] else 2)
        per_token, per_token_taylor = (
            coef["per_layer_hidden"] * layers * h
            + coef["per_layer_intermediate"] * layers * i
            + coef["per_layer_kv_dim"] * layers * kv
            + coef["vocab"] * s["vocab"]
            + coef["hidden"] * h
            for coef in (coefs["rku"], coefs["taylor"])
        )
        # RKU: float32 sums per down_proj input channel (abs, grad_sq) and per o_proj input channel (grad_sq),
        # plus per-head and per-group slice norms.
        accum = 4 * layers * (2 * i + h + s["heads"] + s["kv_heads"])
        row = {
            "parameters_B": total / 1e9,
            "projection_parameters_B": proj / 1e9,
            "weights_bf16_GiB": 2 * total / gib,
            "rku_accumulators_MiB": accum / 1024**2,
            "taylor_grad_bf16_GiB": 2 * proj / gib,
            "taylor_float32_readout_GiB": 4 * proj / gib,
            "taylor_readout_peak_GiB": (2 * total + 2 * proj + 4 * proj) / gib,
            "activation_bytes_per_token_MiB": per_token / 1024**2,
            "taylor_activation_bytes_per_token_MiB": per_token_taylor / 1024**2,
        }
        # Transient at the start of backward (not saved tensors): float32 grads of log-probs and logits plus their
        # bf16 cast, about 10 bytes per vocabulary entry per token (estimate from the op sequence, not measured).
        transient = 10 * s["vocab"]
        row["transient_bytes_per_token_MiB"] = transient / 1024**2
        for gpu in GPUS_GIB:
            free = (gpu - GPU_RESERVE_GIB) * gib - 2 * total - accum
            row[f"rku_max_tokens_per_batch_{gpu}GiB"] = max(0, int(free // (per_token + transient)))
            free_taylor = free + accum - 2 * proj
            row[f"taylor_max_tokens_per_batch_{gpu}GiB"] = max(0, int(free_taylor // (per_token_taylor + transient)))
        for t in tokens_per_batch:
            act = (per_token + transient) * t / gib
            act_taylor = (per_token_taylor + transient) * t / gib
            row[f"activations_{t}_tok_GiB"] = act
            row[f"taylor_activations_{t}_tok_GiB"] = act_taylor
            row[f"rku_total_{t}_tok_GiB"] = row["weights_bf16_GiB"] + act + accum / gib
            row[f"taylor_total_{t}_tok_GiB"] = row["weights_bf16_GiB"] + act_taylor + row["taylor_grad_bf16_GiB"]
            # the float32 read-out happens after the last batch (activations freed): peak is the larger of the two
            row[f"taylor_peak_{t}_tok_GiB"] = max(row[f"taylor_total_{t}_tok_GiB"], row["taylor_readout_peak_GiB"])
        out[name] = row
    return out


# ------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run the benchmark, the memory model or one worker."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("time", "memory"), default="time", help=argparse.SUPPRESS)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--size", default="25M", help=argparse.SUPPRESS)
    parser.add_argument("--seqs", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", default=",".join(SIZES), help="comma-separated subset of " + ",".join(SIZES))
    parser.add_argument(
        "--growth-size", default="25M", help="model size for the token-growth rows (2x and 4x the tokens)"
    )
    parser.add_argument("--json", default=str(ROOT / "docs" / "perf_scoring.json"))
    parser.add_argument("--memory-model", action="store_true")
    parser.add_argument(
        "--growth-only",
        action="store_true",
        help="only the token-growth timing (growth size at 1x, 2x, 4x the sequences); stored under 'token_growth'",
    )
    args = parser.parse_args(argv)
    for name in ("seqs", "seq_len", "batch_size", "repeats", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)} must be a positive int.")
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.memory_model:
        fit = memory_model()
        fit["projection"] = projected_memory({m: fit[m]["bytes_per_token_coefficients"] for m in ("rku", "taylor")})
        path = ROOT / "docs" / "perf_memory_model.json"
        path.write_text(json.dumps(fit, indent=2) + "\n")
        print(json.dumps(fit, indent=2))
        return
    if args.growth_only:
        growth = token_growth(args)
        path = Path(args.json)
        data = json.loads(path.read_text()) if path.is_file() else {"vocab_size": VOCAB, "rows": []}
        data["token_growth"] = growth
        path.write_text(json.dumps(data, indent=2) + "\n")
        print(growth_markdown(growth))
        return
    sizes = [s for s in args.sizes.split(",") if s]
    for s in sizes + [args.growth_size]:
        if s not in SIZES:
            raise ValueError(f"size {s!r} is not one of {sorted(SIZES)}.")
    from tqdm.auto import tqdm

    jobs = [(s, args.seqs) for s in sizes]
    if args.growth_size in sizes:
        jobs += [(args.growth_size, 2 * args.seqs), (args.growth_size, 4 * args.seqs)]
    rows = []
    for size, seqs in tqdm(jobs, desc="scoring cost"):
        rows.append(measure(size, seqs, args.seq_len, args.batch_size, args.repeats, args.threads))
        Path(args.json).write_text(json.dumps({"vocab_size": VOCAB, "rows": rows}, indent=2) + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
