"""Every family through llama.cpp: tiny random models pruned, exported to GGUF and run against transformers.

For each family of the spec registry (or --families), a tiny random model (4 layers, GQA, q width = hidden size,
weights large enough that attention is far from uniform) with the testbed's byte-level BPE tokenizer is pruned 40%
with RKU in several ways, exported f32, loaded by llama.cpp (llama-cpp-python) and compared with transformers on the
same token ids:
- `global`: the default allocation (per-layer widths); `uniform`: heads and channels removed evenly;
  `uniform-mlp`: FFN channels only (every head kept, so families whose llama.cpp loader sizes q as the hidden size
  keep their own architecture); `bias-*`: `bias_compensation=True` on the parts whose output bias the family can
  hold; `partial-rotary`: a rotary over half of each head, where the config has `partial_rotary_factor`;
  `longrope-*`: LongRoPE with an original context above (short factors) or below (long factors) the tokens run, in
  both runtimes, where the config has `original_max_position_embeddings`.
- the config exercises what the export must carry where the family has it: a query pre-scale other than head_dim,
  alternating sliding-window / full layers with a window shorter than the sequences, a separate rotary base (and
  linear scaling of the full layers) per layer type, final logit soft-capping.
- `max |diff|`: largest difference of next-token logits over every position of --sequences random sequences of
  --length tokens; `rel`: that over the largest |logit|; `top-1`: share of positions whose argmax agrees;
  `greedy`: identical --new-tokens greedy continuations. An export refused by design shows its error instead.
llama.cpp runs with an f32 KV cache so that differences reflect the export, not cache rounding.
`--ablate` also writes every file again with one translation left out at a time (query-scale fold, norm shift,
q/k row permutation, rotary scaling, LongRoPE, sliding-layer rotary base, sliding window, soft-capping), where the
file has it, to show the comparison catches each. `--ggml-gelu` runs transformers' GELU the way llama.cpp's CPU
backend does (f16-rounded input, a table of f16 results), to tell that rounding apart from export errors.

    pip install -e ".[llamacpp]"
    python benchmarks/llamacpp_families.py --ablate --output docs/llamacpp_families.json
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import ROOT, write_results  # noqa: E402

TESTBED = ROOT / "optimum_rku" / "testbed" / "model"
VOCAB = 512  # the testbed tokenizer's


def parse_args(argv=None) -> argparse.Namespace:
    from optimum_rku.models.specs import SPECS

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--families", nargs="+", default=[n for n, s in SPECS.items() if s.gguf], choices=list(SPECS))
    p.add_argument("--sequences", type=int, default=4)
    p.add_argument("--length", type=int, default=48, help="tokens per sequence (longer than the sliding window)")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ablate", action="store_true", help="also leave out one translation at a time")
    p.add_argument("--ggml-gelu", action="store_true", help="transformers' GELU with llama.cpp's f16 rounding")
    p.add_argument("--output", default=None, help="JSON file to write")
    return p.parse_args(argv)


def tiny_config(family: str, **extra):
    """A 4-layer config of `family` whose family-specific settings are the ones the export must carry."""
    import transformers

    from optimum_rku.models.specs import SPECS

    cls = getattr(transformers, SPECS[family].config_class)
    defaults = cls()
    settings = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=8,
        max_position_embeddings=256,
        tie_word_embeddings=bool(defaults.tie_word_embeddings),  # as the family's releases (Gemma ties them)
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if getattr(defaults, "query_pre_attn_scalar", None) is not None:
        settings["query_pre_attn_scalar"] = 12  # transformers scales by 12 ** -0.5, llama.cpp by head_dim ** -0.5
    if "sliding_attention" in (getattr(defaults, "layer_types", None) or []):
        settings["layer_types"] = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]
        settings["sliding_window"] = 12
    rope = getattr(defaults, "rope_parameters", None) or {}
    if set(rope) == {"sliding_attention", "full_attention"}:
        settings["rope_parameters"] = {
            "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},  # not llama.cpp's default (10k)
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
        }
    for key, value in (("final_logit_softcapping", 20.0), ("attn_logit_softcapping", 40.0)):
        if key in defaults.to_dict() and getattr(defaults, key) is not None:
            settings[key] = value  # not the family's defaults, which llama.cpp assumes when the key is missing
    if "final_logit_softcapping" in defaults.to_dict() and defaults.final_logit_softcapping is None:
        settings["final_logit_softcapping"] = 30.0
    settings.update(extra)
    config = cls(**settings)
    config._attn_implementation = "eager"
    return config


def tiny_model(family: str, seed: int, **extra):
    """Random weights with std 0.15 (attention far from uniform) and norm weights / biases that are not trivial."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **extra))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.copy_(0.2 * torch.randn_like(param))
            else:
                param.normal_(0.0, 0.15)
    return model.eval()


def variants(family: str) -> list[tuple[str, dict, dict]]:
    """(name, RKUConfig settings, config extras) for one family."""
    from optimum_rku.models.specs import PART_NAMES, SPECS

    spec = SPECS[family]
    rows = [
        ("global", {"allocation": "global"}, {}),
        ("uniform", {"allocation": "uniform"}, {}),
        ("uniform-mlp", {"allocation": "uniform", "targets": "mlp"}, {}),
    ]
    parts = set(spec.output_bias_flags)
    if parts:
        targets = "both" if parts == set(PART_NAMES) else {"attn": "attention", "ffn": "mlp"}[parts.pop()]
        for allocation in ("global", "uniform"):
            settings = {"allocation": allocation, "targets": targets, "bias_compensation": True}
            rows.append((f"bias-{allocation}", settings, {}))
    if "partial_rotary_factor" in (tiny_config(family).rope_parameters or {}):
        rope = {**tiny_config(family).rope_parameters, "partial_rotary_factor": 0.5}
        rows.append(("partial-rotary", {"allocation": "uniform", "targets": "mlp"}, {"rope_parameters": rope}))
    if "original_max_position_embeddings" in tiny_config(family).to_dict():  # LongRoPE families (Phi-3.5, Phi-4)
        # llama.cpp picks the long factors when its context, rounded up to a multiple of 256, exceeds the original
        # context; transformers when the sequence does: original 256 (short factors in both) and 32 (long in both)
        for original, factors, allocations in ((256, "short", ("uniform-mlp",)), (32, "long", ("uniform", "global"))):
            rope = {
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "short_factor": [1.0, 1.3, 2.0, 3.0],
                "long_factor": [1.5, 3.0, 6.0, 12.0],
                "original_max_position_embeddings": original,
            }
            extra = {"rope_parameters": rope, "original_max_position_embeddings": original}
            extra["max_position_embeddings"] = 4 * original if factors == "short" else 256
            for allocation in allocations:
                settings = {"allocation": allocation.split("-")[0]} | (
                    {"targets": "mlp"} if "mlp" in allocation else {}
                )
                rows.append((f"longrope-{factors}-{allocation}", settings, extra))
    return rows


def prune(family: str, settings: dict, extra: dict, directory: Path, seed: int) -> Path:
    from optimum_rku import RKUConfig, RKUPruner
    from optimum_rku.io.checkpoint import load_tokenizer

    g = torch.Generator().manual_seed(seed)
    texts = [torch.randint(4, VOCAB, (24,), generator=g).tolist() for _ in range(8)]
    import datasets

    calibration = datasets.Dataset.from_dict({"input_ids": texts, "attention_mask": [[1] * 24] * 8})
    pruner = RKUPruner(tiny_model(family, seed, **extra), load_tokenizer(TESTBED))
    config = RKUConfig(sparsity=0.4, min_keep=0.25, num_calibration_samples=8, **settings)
    pruner.prune(config, calibration_dataset=calibration, save_dir=directory, progress=False)
    return directory


class GgmlGelu(torch.nn.Module):
    """An activation as llama.cpp's CPU GELU computes it: input rounded to f16, result read as an f16 table value,
    identity above 10 and zero below -10."""

    def __init__(self, act: torch.nn.Module):
        super().__init__()
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        table = self.act(x.half().float()).half().float()
        return torch.where(x <= -10, torch.zeros_like(x), torch.where(x >= 10, x, table))


#: translations the exporter makes, each as a change to a plan that leaves it out: (applies to this plan?, undo it)
ABLATIONS = {
    "query-scale fold": (
        lambda p: any(t.scale != 1.0 for t in p.tensors),
        lambda p: [setattr(t, "scale", 1.0) for t in p.tensors],
    ),
    "norm shift": (lambda p: any(t.add for t in p.tensors), lambda p: [setattr(t, "add", 0.0) for t in p.tensors]),
    "q/k permutation": (
        lambda p: any(t.permute_heads for t in p.tensors),
        lambda p: [setattr(t, "permute_heads", None) for t in p.tensors],
    ),
    "rotary scaling": (
        lambda p: "linear_factor" in p.metadata["rope"],
        lambda p: p.metadata["rope"].pop("linear_factor"),
    ),
    "sliding rotary base": (
        lambda p: "freq_base_swa" in p.metadata["rope"],
        lambda p: p.metadata["rope"].pop("freq_base_swa"),
    ),
    "LongRoPE factors and attention factor": (
        lambda p: "longrope" in p.metadata["rope"],
        lambda p: (
            p.metadata["rope"].pop("longrope"),
            p.tensors.__setitem__(slice(None), [t for t in p.tensors if not t.name.startswith("rope_factors")]),
        ),
    ),
    "sliding window": (lambda p: bool(p.metadata["sliding"]), lambda p: p.metadata.update(sliding=None)),
    "soft-capping": (lambda p: bool(p.metadata["softcapping"]), lambda p: p.metadata.update(softcapping={})),
}


def export_without(ckpt: Path, target: Path, ablation: str) -> Path | None:
    """The f32 export with one translation left out, or None when the plan does not make it."""
    import optimum_rku.export.gguf as exporter

    applies, undo = ABLATIONS[ablation]
    original = exporter.plan_gguf_export
    if not applies(original(ckpt, "f32")):
        return None

    def plan_without(*a, **k):
        plan = original(*a, **k)
        undo(plan)
        return plan

    exporter.plan_gguf_export = plan_without
    try:
        return exporter.export_gguf(ckpt, target, "f32")
    finally:
        exporter.plan_gguf_export = original


def compare(ckpt: Path, gguf_path: Path, args) -> dict:
    from llama_cpp import Llama

    from optimum_rku.io.checkpoint import RKUModelForCausalLM
    from optimum_rku.models.blocks import blocks

    model = RKUModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    if args.ggml_gelu:
        for block in blocks(model):
            if "gelu" in type(block.mlp.act_fn).__name__.lower():
                block.mlp.act_fn = GgmlGelu(block.mlp.act_fn)
    llm = Llama(
        model_path=str(gguf_path),
        n_ctx=args.length + args.new_tokens + 8,
        logits_all=True,
        verbose=False,
        n_threads=args.threads,
        seed=0,
        type_k=0,  # GGML_TYPE_F32
        type_v=0,
    )
    g = torch.Generator().manual_seed(args.seed + 1)
    diffs, scales, top1, same = [], [], [], 0
    try:
        for _ in range(args.sequences):
            ids = torch.randint(4, VOCAB, (args.length,), generator=g).tolist()
            with torch.no_grad():
                ours = model(torch.tensor([ids])).logits[0].numpy()
                generated = []  # plain argmax steps (no generation config: eos is just another token here)
                for _ in range(args.new_tokens):
                    step = model(torch.tensor([ids + generated])).logits[0, -1]
                    generated.append(int(step.argmax()))
            llm.reset()
            llm.eval(ids)
            theirs = np.array(llm.scores[: len(ids)], dtype=np.float32)
            continuation = []
            for _ in range(args.new_tokens):
                token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                continuation.append(token)
                llm.eval([token])
            diffs.append(float(np.abs(ours - theirs).max()))
            scales.append(float(np.abs(ours).max()))
            top1.append(float((ours.argmax(-1) == theirs.argmax(-1)).mean()))
            same += continuation == generated
    finally:
        llm.close()
    return {
        "max_logit_diff": max(diffs),
        "relative": max(d / s for d, s in zip(diffs, scales)),
        "top1": float(np.mean(top1)),
        "greedy_match": same,
        "sequences": args.sequences,
    }


def run(family: str, name: str, settings: dict, extra: dict, work: Path, args) -> dict:
    from optimum_rku.export.gguf import describe_gguf, export_gguf, plan_gguf_export

    ckpt = prune(family, settings, extra, work / f"{family}-{name}", args.seed)
    row = {"family": family, "variant": name}
    try:
        plan = plan_gguf_export(ckpt, "f32")
    except ValueError as err:
        return row | {"refused": str(err).split(": ", 1)[-1].split(". ")[0]}
    path = export_gguf(ckpt, work / f"{family}-{name}.gguf", "f32")
    info = describe_gguf(path)
    row |= {"architecture": info["architecture"], "per_layer": info["per_layer"], "notes": plan.notes}
    row |= compare(ckpt, path, args)
    if args.ablate:
        row["ablations"] = {}
        for ablation in ABLATIONS:
            broken = export_without(ckpt, work / f"{family}-{name}-ablated.gguf", ablation)
            if broken is not None:
                result = compare(ckpt, broken, args)
                row["ablations"][ablation] = {k: result[k] for k in ("max_logit_diff", "top1")}
                broken.unlink()
    return row


def table(results: list[dict]) -> str:
    lines = [
        "| family | variant | llama.cpp arch | max abs logit diff | rel. to max logit | top-1 | greedy identical |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "refused" in r:
            lines.append(f"| {r['family']} | {r['variant']} | refused: {r['refused']} | | | | |")
            continue
        arch = r["architecture"] + (" (per-layer)" if r["per_layer"] else "")
        lines.append(
            f"| {r['family']} | {r['variant']} | {arch} | {r['max_logit_diff']:.1e} | {r['relative']:.1e} | "
            f"{r['top1']:.3f} | {r['greedy_match']}/{r['sequences']} |"
        )
    return "\n".join(lines)


def ablation_table(results: list[dict]) -> str:
    lines = ["| family | variant | left out | max abs logit diff | top-1 |", "|---|---|---|---|---|"]
    for r in results:
        for ablation, result in (r.get("ablations") or {}).items():
            diff, top1 = result["max_logit_diff"], result["top1"]
            lines.append(f"| {r['family']} | {r['variant']} | {ablation} | {diff:.2g} | {top1:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            for name, settings, extra in variants(family):
                results.append(run(family, name, settings, extra, Path(tmp), args))
                print(table(results[-1:]).splitlines()[-1], flush=True)
    print(table(results))
    if args.ablate:
        print(ablation_table(results))
    if args.output:
        write_results(args.output, "llamacpp_families.py", list(argv or os.sys.argv[1:]), args, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
