"""Peak memory of RKU scoring on an accelerate-offloaded model, with and without streaming offloaded weights.

A random Llama (default: the 110M config of common.SIZES) is saved once, then each variant runs in a fresh
subprocess: `resident` (loaded normally), `offload` (every decoder layer on "disk" via `device_map`, scores computed
with autograd keeping each streamed-in weight, i.e. `optimum_rku.scoring.offload.stream_offloaded_weights` disabled) and
`offload+stream` (the library default: saved weights are handles, reloaded from disk in backward). It reports the
peak resident memory above the level before scoring (VmRSS, which includes mapped offload-file pages, and RssAnon,
sampled every 2 ms), the scoring wall time, and checks that the scores are identical across variants.

    python benchmarks/offload_memory.py --json docs/perf_offload.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from common import ROOT, SIZES, PeakRSS, build_model, token_dataset  # noqa: E402

VARIANTS = ("resident", "offload", "offload+stream")


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Score once (after a small warm-up) in this process and report peak memory, time and a score digest."""
    import gc

    from transformers import AutoModelForCausalLM

    import optimum_rku.scoring.collect as scoring
    from optimum_rku import RKUConfig, RKUPruner

    torch.set_num_threads(args.threads)
    path = Path(args.model_dir)
    if args.variant == "resident":
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    else:
        layers = model_layers(path)
        device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
        device_map.update({f"model.layers.{i}": "disk" for i in range(layers)})
        offload_dir = tempfile.mkdtemp(prefix="offload-", dir=path)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, device_map=device_map, offload_folder=offload_dir
        ).eval()
    if args.variant == "offload":  # what plain offload does: autograd keeps every streamed-in weight
        scoring.stream_offloaded_weights = lambda model: contextlib.nullcontext()
    pruner = RKUPruner(model)
    config = RKUConfig(calibration="dataset")
    pruner.compute_scores(config, token_dataset(1, 16, seed=1), batch_size=1, progress=False)  # warm-up
    gc.collect()
    data = token_dataset(args.seqs, args.seq_len)
    # VmRSS includes the pages of memory-mapped offload files still mapped (on CPU, accelerate's disk offload hands
    # out tensors backed by them), RssAnon only allocated memory; the kernel keeps no peak of RssAnon: both sampled
    with PeakRSS(fields=("VmRSS", "RssAnon"), interval_s=0.002, high_water_mark=False) as peak:
        start = time.perf_counter()
        scores = pruner.compute_scores(config, data, batch_size=args.batch_size, progress=False)
        elapsed = time.perf_counter() - start
    digest = [float(s.double().sum()) for s in scores.mlp + scores.attention]
    return {
        "variant": args.variant,
        "peak_rss_mib": peak.peak_mib["VmRSS"],
        "peak_anon_mib": peak.peak_mib["RssAnon"],
        "time_s": elapsed,
        "digest": digest,
    }


def model_layers(path: Path) -> int:
    return json.loads((path / "config.json").read_text())["num_hidden_layers"]


def run_subprocess(argv: list[str]) -> dict[str, Any]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")  # freed tensor buffers leave RSS at once
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", *argv]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"worker {' '.join(argv)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, default="resident", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--size", default="110M", choices=sorted(SIZES))
    parser.add_argument("--seqs", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=str(ROOT / "docs" / "perf_offload.json"))
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    with tempfile.TemporaryDirectory(prefix="offload-memory-") as tmp:
        model = build_model(args.size)
        weight_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
        layer_mib = sum(p.numel() * p.element_size() for p in model.model.layers.parameters()) / 2**20
        model.save_pretrained(tmp)
        del model
        common = ["--model-dir", tmp, "--seqs", str(args.seqs), "--seq-len", str(args.seq_len)]
        common += ["--batch-size", str(args.batch_size), "--threads", str(args.threads)]
        rows = [run_subprocess(common + ["--variant", v]) for v in VARIANTS]
    same = all(row["digest"] == rows[0]["digest"] for row in rows)
    result = {
        "size": args.size,
        "weights_mib": weight_mib,
        "decoder_layer_weights_mib": layer_mib,
        "tokens": args.seqs * args.seq_len,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "scores_identical": same,
        "rows": [{k: v for k, v in row.items() if k != "digest"} for row in rows],
        "command": "python benchmarks/offload_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print(f"{args.size}: weights {weight_mib:.0f} MiB (decoder layers {layer_mib:.0f} MiB, all offloaded to disk)")
    print(
        "| variant | peak VmRSS above start (MiB) | peak RssAnon above start (MiB) | scoring time (s) | time vs resident |"
    )
    print("|---|---|---|---|---|")
    base = rows[0]["time_s"]
    for row in rows:
        print(
            f"| {row['variant']} | {row['peak_rss_mib']:.0f} | {row['peak_anon_mib']:.0f} | {row['time_s']:.2f} | "
            f"{row['time_s'] / base:.2f}x |"
        )
    print(f"scores identical across variants: {same}")
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
