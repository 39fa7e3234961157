"""LoRA recovery of pruned models: a short supervised fine-tune that wins back most of the accuracy pruning cost.

`recover_with_lora` wraps a (pruned) causal LM in PEFT LoRA adapters on every attention and MLP projection, trains
them with `transformers.Trainer` on prompt/response data (loss on the response tokens only), then merges them back
so the result is a plain model of the pruned shape. Because training runs through `Trainer`, `accelerate launch`
(DDP, FSDP, DeepSpeed) works unchanged. With `teacher=` (the dense model) the loss distils the teacher's next-token
distribution into the pruned model on the response tokens; the teacher is frozen and placed on each training device
(not sharded under FSDP / DeepSpeed).

Defaults (every one can be overridden through `lora_config` / `training_args`):

* LoRA: r=16, alpha=32, dropout=0.05, `target_modules` = q/k/v/o_proj and gate/up/down_proj. PEFT builds each
  adapter from its own layer's shape, so non-uniform (global) pruned models get adapters of their own widths.
* Training: max_steps=200, per-device batch 8, gradient accumulation 1, learning rate 2e-4, cosine schedule with 5%
  warmup, no weight decay, bf16 when a CUDA device supports it, seed 2016, logging every 10 steps, `report_to="none"`,
  `save_strategy="no"` (no checkpoints during training), `output_dir` a temporary directory removed afterwards.
* Data: the bundled testbed's train split (2000 problems) for the testbed; GSM8K train (question + worked answer)
  otherwise, from the Hub (`openai/gsm8k`) or local files (`data_files=`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from optimum_rku.checkpoint import check_save_dir, read_metadata, save_checkpoint
from optimum_rku.self_calibration import PROMPT_TEMPLATE

logger = logging.getLogger(__name__)

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05}
DEFAULT_TRAINING_ARGS: dict[str, Any] = {
    "max_steps": 200,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "learning_rate": 2e-4,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.05,
    "weight_decay": 0.0,
    "logging_steps": 10,
    "save_strategy": "no",
    "report_to": "none",
    "seed": 2016,
    "remove_unused_columns": False,
}
DEFAULT_NUM_TESTBED_PROBLEMS = 2000
DEFAULT_MAX_LENGTH = 512
GSM8K_DATASET = "openai/gsm8k"
ADAPTER_DIR = "adapter"
PRUNED_BASE_DIR = "pruned_base"
IGNORE_INDEX = -100


# ---------------------------------------------------------------------------------------------------------- data
def _pair_from_qa(question: Any, answer: Any) -> tuple[str, str]:
    return PROMPT_TEMPLATE.format(question=str(question).strip()), " " + str(answer).strip()


def _rows_to_pairs(rows: Sequence[Any], columns: Sequence[str], source: str) -> list[tuple[str | None, str]]:
    """(prompt, response) pairs from rows with a `text`, `prompt`/`response` or `question`/`answer` layout."""
    cols = set(columns)
    if {"prompt", "response"} <= cols:
        return [(str(r["prompt"]), str(r["response"])) for r in rows]
    if {"question", "answer"} <= cols:
        return [_pair_from_qa(r["question"], r["answer"]) for r in rows]
    if "text" in cols:
        return [(None, str(r["text"])) for r in rows]
    raise ValueError(
        f"Recovery data {source} has columns {sorted(cols)}; allowed layouts: a 'text' column, "
        "'prompt' + 'response' columns, or 'question' + 'answer' columns."
    )


def _pairs_from_list(items: Sequence[Any]) -> list[tuple[str | None, str]]:
    if all(isinstance(x, str) for x in items):
        return [(None, x) for x in items]
    if all(isinstance(x, Mapping) for x in items):
        keys = set(items[0])
        for x in items:
            if set(x) != keys:
                raise ValueError(f"Recovery rows must all have the same keys, got {sorted(keys)} and {sorted(x)}.")
        return _rows_to_pairs(items, sorted(keys), "(list of dicts)")
    kinds = sorted({type(x).__name__ for x in items})
    raise TypeError(f"A recovery list must hold only strings or only dicts, got {kinds}.")


def _default_pairs(is_testbed: bool, num_samples: int | None, seed: int, data_files: Any) -> tuple[list, dict]:
    if is_testbed and data_files is None:
        from optimum_rku.testbed import make_problems

        n = num_samples or DEFAULT_NUM_TESTBED_PROBLEMS
        problems = make_problems(n, seed=seed, split="train")
        pairs = [_pair_from_qa(p["question"], p["answer"]) for p in problems]
        return pairs, {"dataset": "optimum-rku testbed (train split, question + worked answer)", "seed": seed}
    import datasets

    if data_files is not None:
        from optimum_rku.calibration import load_local_files

        ds = load_local_files(data_files, "Recovery")
        source = str(data_files)
    else:
        try:
            ds = datasets.load_dataset(GSM8K_DATASET, "main", split="train")
        except Exception as err:  # network, auth, missing dataset: one actionable message
            raise RuntimeError(
                f"Could not load the default recovery data {GSM8K_DATASET!r} ({type(err).__name__}: {err}). "
                "Offline? Pass local files, e.g. data_files='gsm8k/train.jsonl', or train_dataset=[...]."
            ) from None
        source = GSM8K_DATASET
    if len(ds) == 0:
        raise ValueError(f"The recovery dataset {source!r} is empty.")
    ds = ds.shuffle(seed=seed)
    if num_samples is not None:
        ds = ds.select(range(min(num_samples, len(ds))))
    return _rows_to_pairs(ds, ds.column_names, repr(source)), {"dataset": source, "seed": seed}


def _encode_pairs(tokenizer, pairs: list[tuple[str | None, str]], max_length: int) -> dict[str, list[list[int]]]:
    """Tokenize prompt + response + eos; labels copy the response (and eos) and are -100 on the prompt."""
    eos = tokenizer.eos_token_id
    out: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for prompt, response in pairs:
        if prompt is None:
            ids = list(tokenizer(response)["input_ids"])
            start = 0
        else:
            prompt_ids = list(tokenizer(prompt)["input_ids"])
            ids = prompt_ids + list(tokenizer(response, add_special_tokens=False)["input_ids"])
            start = len(prompt_ids)
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        ids = ids[:max_length]
        labels = [IGNORE_INDEX] * min(start, len(ids)) + ids[start:]
        if all(label == IGNORE_INDEX for label in labels[1:]):
            continue  # the prompt fills the whole window: nothing to learn from this row
        out["input_ids"].append(ids)
        out["attention_mask"].append([1] * len(ids))
        out["labels"].append(labels)
    return out


def prepare_recovery_dataset(
    tokenizer,
    train_dataset: Any = None,
    *,
    is_testbed: bool = False,
    data_files: Any = None,
    num_samples: int | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    seed: int = 2016,
):
    """Tokenized recovery data (`input_ids`, `attention_mask`, `labels` with the prompt masked) and its summary.

    `train_dataset` may be None (testbed train split / GSM8K train), a `datasets.Dataset` with a `text`,
    `prompt`/`response` or `question`/`answer` layout (or already tokenized with `input_ids` and `labels`), a list of
    strings (loss on every token), or a list of `{"prompt", "response"}` / `{"question", "answer"}` dicts. Prompt and
    response are concatenated as given; question/answer rows use the `Question: q\\nAnswer: a` format.
    """
    import datasets

    if tokenizer is None or not callable(tokenizer):
        raise TypeError(f"tokenizer must be a transformers tokenizer, got {type(tokenizer).__name__}.")
    if num_samples is not None and (
        isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1
    ):
        raise ValueError(f"num_samples={num_samples!r} must be a positive int or None.")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length={max_length!r} must be an int >= 2.")
    if train_dataset is None:
        pairs, summary = _default_pairs(is_testbed, num_samples, seed, data_files)
    elif data_files is not None:
        raise ValueError("Pass either train_dataset or data_files, not both.")
    elif isinstance(train_dataset, datasets.Dataset):
        if len(train_dataset) == 0:
            raise ValueError("The recovery dataset is empty.")
        columns = train_dataset.column_names
        if "input_ids" in columns:
            if "labels" not in columns:
                raise ValueError(
                    "A tokenized recovery dataset needs a 'labels' column (-100 on prompt tokens); "
                    f"columns: {columns}."
                )
            keep = [c for c in ("input_ids", "attention_mask", "labels") if c in columns]
            ds = train_dataset.select_columns(keep)
            if "attention_mask" not in keep:
                ds = ds.map(lambda r: {"attention_mask": [1] * len(r["input_ids"])})
            if num_samples is not None:
                ds = ds.select(range(min(num_samples, len(ds))))
            return ds, {"dataset": "user-provided tokenized dataset", "num_examples": len(ds)}
        rows = (
            train_dataset if num_samples is None else train_dataset.select(range(min(num_samples, len(train_dataset))))
        )
        pairs = _rows_to_pairs(rows, columns, "(datasets.Dataset)")
        summary = {"dataset": "user-provided datasets.Dataset"}
    elif isinstance(train_dataset, (list, tuple)):
        if not train_dataset:
            raise ValueError("The recovery dataset is empty: pass at least one example.")
        pairs = _pairs_from_list(list(train_dataset))[:num_samples]
        summary = {"dataset": "in-memory list"}
    else:
        raise TypeError(
            "train_dataset must be None, a datasets.Dataset, a list of strings or a list of "
            f"{{'prompt', 'response'}} dicts, got {type(train_dataset).__name__}."
        )
    if not pairs:
        raise ValueError("The recovery dataset is empty.")
    encoded = _encode_pairs(tokenizer, pairs, max_length)
    if not encoded["input_ids"]:
        raise ValueError(f"No recovery example has response tokens within max_length={max_length}.")
    ds = datasets.Dataset.from_dict(encoded)
    summary["num_examples"] = len(ds)
    summary["num_response_tokens"] = int(sum(sum(x != IGNORE_INDEX for x in row) for row in encoded["labels"]))
    summary["max_length"] = max_length
    return ds, summary


class RecoveryCollator:
    """Right-pad `input_ids` (pad id), `attention_mask` (0) and `labels` (-100) to the longest row of a batch."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            mask[row, :n] = torch.as_tensor(f.get("attention_mask", [1] * n), dtype=torch.long)
            labels[row, :n] = torch.as_tensor(f["labels"], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def self_distillation_dataset(
    dense_model,
    tokenizer,
    questions: Sequence[str] | Sequence[Mapping[str, Any]],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    do_sample: bool = False,
    seed: int = 2016,
    progress: bool = True,
):
    """`datasets.Dataset` of `{prompt, response}` where the response is the *dense* model's own answer (distillation)."""
    import datasets

    from optimum_rku.config import RKUConfig
    from optimum_rku.self_calibration import generate_answers

    if isinstance(questions, (str, bytes)) or not isinstance(questions, Sequence):
        raise TypeError(f"questions must be a list of strings, got {type(questions).__name__}.")
    texts = [q["question"] if isinstance(q, Mapping) else q for q in questions]
    if not texts:
        raise ValueError("questions is empty: nothing for the dense model to answer.")
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"questions must be strings (or {{'question': ...}} dicts), got {sorted(set(bad))}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int.")
    config = RKUConfig(generation_max_new_tokens=max_new_tokens, generation_do_sample=do_sample, seed=seed)
    prompts = [PROMPT_TEMPLATE.format(question=q.strip()) for q in texts]
    answers = generate_answers(dense_model, tokenizer, prompts, config, batch_size=batch_size, progress=progress)
    return datasets.Dataset.from_dict({"prompt": prompts, "response": [" " + a.strip() for a in answers]})


# ------------------------------------------------------------------------------------------------------ configs
def default_lora_config(**overrides: Any):
    """PEFT `LoraConfig` for causal LMs with adapters on every attention and MLP projection (q/k/v/o, gate/up/down)."""
    from peft import LoraConfig

    fields = {f.name for f in dataclasses.fields(LoraConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"Unknown LoraConfig field(s) {unknown}; see peft.LoraConfig for the allowed fields.")
    kwargs: dict[str, Any] = {**DEFAULT_LORA, "target_modules": list(TARGET_MODULES), "task_type": "CAUSAL_LM"}
    kwargs.update(overrides)
    return LoraConfig(**kwargs)


def _resolve_lora_config(lora_config: Any):
    from peft import LoraConfig

    if lora_config is None:
        return default_lora_config()
    if isinstance(lora_config, Mapping):
        return default_lora_config(**dict(lora_config))
    if isinstance(lora_config, LoraConfig):
        return copy.deepcopy(lora_config)
    raise TypeError(f"lora_config must be a peft.LoraConfig, a dict of its fields or None, got {type(lora_config)}.")


def default_bf16() -> bool:
    """Whether to train in bf16 by default: a CUDA device that supports it."""
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def resolve_training_args(training_args: Any = None, *, progress: bool = True, seed: int | None = None):
    """`TrainingArguments` from None / a dict of its fields (merged over the defaults) / an instance (used as is).

    Returns `(args, temp_output_dir)`; `temp_output_dir` is the temporary directory created for `output_dir` (or None)
    so the caller can remove it after training.
    """
    from transformers import TrainingArguments

    if isinstance(training_args, TrainingArguments):
        return training_args, None
    if training_args is not None and not isinstance(training_args, Mapping):
        raise TypeError(
            "training_args must be a transformers.TrainingArguments, a dict of its fields or None, "
            f"got {type(training_args).__name__}."
        )
    user = dict(training_args or {})
    allowed = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    unknown = sorted(set(user) - allowed)
    if unknown:
        hints = {name: difflib.get_close_matches(name, sorted(allowed), n=1) for name in unknown}
        hint = "; ".join(f"{k!r}: did you mean {v[0]!r}?" for k, v in hints.items() if v)
        raise ValueError(
            f"Unknown TrainingArguments field(s) {unknown}{' (' + hint + ')' if hint else ''}; "
            "see transformers.TrainingArguments for the allowed fields."
        )
    kwargs = dict(DEFAULT_TRAINING_ARGS)
    if seed is not None:
        kwargs["seed"] = seed
    kwargs["bf16"] = default_bf16()
    kwargs["dataloader_pin_memory"] = torch.cuda.is_available()
    kwargs["disable_tqdm"] = not progress
    kwargs.update(user)
    temp_dir = None
    if "output_dir" not in user:
        temp_dir = tempfile.mkdtemp(prefix="optimum-rku-recovery-")
        kwargs["output_dir"] = temp_dir
    try:
        return TrainingArguments(**kwargs), temp_dir
    except (TypeError, ValueError) as err:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
        raise ValueError(f"Invalid training_args {user}: {err}") from None


# ------------------------------------------------------------------------------------------------------- training
@torch.no_grad()
def response_loss(model, dataset, batch_size: int = 8, pad_token_id: int = 0) -> float:
    """Mean next-token NLL over the label (response) tokens of a tokenized recovery dataset."""
    collate = RecoveryCollator(pad_token_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            targets = batch["labels"][:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                targets.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            total += float(loss)
            count += int((targets != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    return total / max(count, 1)


def _check_distillation(model, teacher, alpha: Any, temperature: Any) -> None:
    """Validate the distillation arguments before any work: a causal LM teacher with the student's vocabulary."""
    from transformers import PreTrainedModel

    if teacher is None:
        return
    if not isinstance(teacher, PreTrainedModel):
        raise TypeError(
            f"teacher must be a transformers PreTrainedModel (the dense model), got {type(teacher).__name__}."
        )
    if teacher is model:
        raise ValueError("teacher is the model being recovered; pass the dense (unpruned) model as the teacher.")
    for name, value, low, high in (
        ("distillation_alpha", alpha, 0.0, 1.0),
        ("distillation_temperature", temperature, 1e-3, 100.0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ValueError(f"{name}={value!r} is out of range; allowed: a number in [{low}, {high}].")
    student_vocab = model.get_output_embeddings().weight.shape[0]
    teacher_vocab = teacher.get_output_embeddings().weight.shape[0]
    if student_vocab != teacher_vocab:
        raise ValueError(
            f"teacher has a vocabulary of {teacher_vocab} tokens and the student {student_vocab}; distillation needs "
            "the same tokenizer (the dense model the student was pruned from)."
        )


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """Mean over response tokens of (1 - alpha) * CE(labels) + alpha * T^2 * KL(teacher_T || student_T).

    Logits are [batch, seq, vocab] and predict the next token; labels are the input ids with -100 on the prompt.
    """
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    student = student_logits[:, :-1][mask].float()
    count = max(int(mask.sum()), 1)
    loss = student.new_zeros(())
    if alpha < 1:
        loss = loss + (1 - alpha) * torch.nn.functional.cross_entropy(student, targets[mask], reduction="sum")
    if alpha > 0:
        teacher = teacher_logits[:, :-1][mask].float()
        kl = torch.nn.functional.kl_div(
            torch.log_softmax(student / temperature, dim=-1),
            torch.log_softmax(teacher / temperature, dim=-1),
            log_target=True,
            reduction="sum",
        )
        loss = loss + alpha * temperature**2 * kl
    return loss / count


def _distillation_trainer(teacher, alpha: float, temperature: float, **trainer_kwargs):
    """A `Trainer` whose loss distils the frozen dense teacher into the student on the response tokens."""
    from transformers import Trainer

    class DistillationTrainer(Trainer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            # the loss below is a per-batch mean: let Trainer divide it by the gradient-accumulation steps
            self.model_accepts_loss_kwargs = False
            self.teacher = teacher.to(self.args.device).eval()

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            features = {k: inputs[k] for k in ("input_ids", "attention_mask")}
            outputs = model(**features)
            with torch.no_grad():
                teacher_logits = self.teacher(**features).logits
            loss = distillation_loss(outputs.logits, teacher_logits, inputs["labels"], alpha, temperature)
            return (loss, outputs) if return_outputs else loss

    return DistillationTrainer(**trainer_kwargs)


def _default_metadata(model, source: Any) -> dict[str, Any]:
    from optimum_rku import __version__

    name = source if source is not None else getattr(model.config, "_name_or_path", None)
    if name and Path(str(name)).is_dir():
        try:
            return read_metadata(name)
        except FileNotFoundError:
            pass
    return {
        "optimum_rku_version": __version__,
        "base_model": str(name) if name else None,
        "architecture": model.config.model_type,
    }


def _infer_testbed(metadata: dict[str, Any], model) -> bool:
    if metadata.get("is_testbed"):
        return True
    from optimum_rku.pruner import _is_testbed

    name = getattr(model.config, "_name_or_path", "")
    return bool(name) and _is_testbed(name)


def _check_base_checkpoint(base_checkpoint: Any) -> Path | None:
    if base_checkpoint is None:
        return None
    if not isinstance(base_checkpoint, (str, os.PathLike)):
        raise TypeError(f"base_checkpoint must be a directory path, got {type(base_checkpoint).__name__}.")
    path = Path(base_checkpoint).expanduser().resolve()
    if not (path / "config.json").is_file():
        raise ValueError(f"base_checkpoint {str(base_checkpoint)!r} is not a saved model directory (no config.json).")
    return path


def _checkpoint_writers(meta: dict[str, Any]) -> list:
    try:
        from optimum_rku.reporting import checkpoint_writers
    except ImportError:
        return []
    return list(checkpoint_writers(meta))


def recover_with_lora(
    model,
    tokenizer,
    train_dataset: Any = None,
    lora_config: Any = None,
    training_args: Any = None,
    save_dir: str | os.PathLike | None = None,
    merge: bool = True,
    *,
    save_adapter: bool = False,
    base_checkpoint: str | os.PathLike | None = None,
    overwrite: bool = False,
    metadata: dict[str, Any] | None = None,
    source: str | os.PathLike | None = None,
    is_testbed: bool | None = None,
    data_files: Any = None,
    num_samples: int | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    seed: int | None = None,
    teacher=None,
    distillation_alpha: float = 0.5,
    distillation_temperature: float = 1.0,
    progress: bool = True,
    return_summary: bool = False,
):
    """Fine-tune LoRA adapters on a pruned model, merge them (by default) and save like `prune` does.

    Returns the merged model (a `PeftModel` when `merge=False`), or `(model, summary)` with `return_summary=True`.
    With `save_dir`, writes the merged checkpoint (same formats as `prune`, `rku_config.json` gains a "recovery"
    section); with `save_adapter=True` also `<save_dir>/adapter/` whose `base_model_name_or_path` is
    `base_checkpoint` when given, else the un-recovered pruned model written to `<save_dir>/pruned_base/`.
    With `teacher` (the dense model, same tokenizer) the loss is knowledge distillation on the response tokens:
    `(1 - distillation_alpha) * CE + distillation_alpha * T^2 * KL(teacher || student)` at temperature T.
    """
    from peft import get_peft_model
    from transformers import PreTrainedModel, Trainer, set_seed
    from transformers.trainer_callback import PrinterCallback

    # ---- every check before any heavy work ----
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"model must be a transformers PreTrainedModel, got {type(model).__name__}.")
    if tokenizer is None:
        raise ValueError("recover_with_lora needs the model's tokenizer.")
    for name, value in (("merge", merge), ("save_adapter", save_adapter), ("overwrite", overwrite)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {value!r}.")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed={seed!r} must be a non-negative int or None.")
    if save_adapter and save_dir is None:
        raise ValueError("save_adapter=True needs a save_dir to write the adapter into.")
    if not merge and save_dir is not None:
        raise ValueError(
            "save_dir writes the merged model; with merge=False save the returned PeftModel yourself "
            "(model.save_pretrained(dir)) or use merge=True, save_adapter=True."
        )
    target = check_save_dir(save_dir, source, overwrite) if save_dir is not None else None
    base_path = _check_base_checkpoint(base_checkpoint)
    lora = _resolve_lora_config(lora_config)
    _check_distillation(model, teacher, distillation_alpha, distillation_temperature)
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict or None, got {type(metadata).__name__}.")
    meta = copy.deepcopy(metadata) if metadata is not None else _default_metadata(model, source)
    testbed = _infer_testbed(meta, model) if is_testbed is None else bool(is_testbed)
    data_seed = seed if seed is not None else DEFAULT_TRAINING_ARGS["seed"]
    dataset, data_summary = prepare_recovery_dataset(
        tokenizer,
        train_dataset,
        is_testbed=testbed,
        data_files=data_files,
        num_samples=num_samples,
        max_length=max_length,
        seed=data_seed,
    )
    args, temp_output = resolve_training_args(training_args, progress=progress, seed=seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    staging = None
    start = time.perf_counter()
    try:
        main = args.should_save
        if target is not None and main:
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.recovery-", dir=target.parent))
            if save_adapter and base_path is None:  # the adapter's base: the pruned, un-recovered model
                save_checkpoint(model, tokenizer, staging / PRUNED_BASE_DIR, meta, overwrite=True)
        model.train()
        set_seed(args.seed)  # the LoRA A matrices are drawn here: same seed, same adapters, whatever ran before
        peft_model = get_peft_model(model, lora)
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        trainer_kwargs = {
            "model": peft_model,
            "args": args,
            "train_dataset": dataset,
            "data_collator": RecoveryCollator(pad_id),
        }
        if teacher is None:
            trainer = Trainer(**trainer_kwargs)
        else:
            trainer = _distillation_trainer(teacher, distillation_alpha, distillation_temperature, **trainer_kwargs)
        if args.disable_tqdm and not progress:  # silent means silent: no per-step log dicts printed either
            trainer.remove_callback(PrinterCallback)
        # a cheap before/after loss on fixed rows, on the training device (fresh LoRA is a no-op: B = 0); skipped
        # under sharded training (FSDP / DeepSpeed), where a forward outside the engine is not possible
        sharded = bool(getattr(args, "fsdp", None) or getattr(args, "deepspeed", None))
        probe = None if sharded else dataset.select(range(min(len(dataset), 32)))
        initial_loss = response_loss(peft_model, probe, pad_token_id=pad_id) if probe is not None else None
        result = trainer.train()
        peft_model.eval()
        final_loss = response_loss(peft_model, probe, pad_token_id=pad_id) if probe is not None else None
        history = [[int(e["step"]), float(e["loss"])] for e in trainer.state.log_history if "loss" in e]
        summary = {
            "method": "lora",
            "data": data_summary,
            "steps": int(trainer.state.global_step),
            "epochs": round(float(trainer.state.epoch or 0.0), 4),
            "per_device_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "world_size": args.world_size,
            "rank": lora.r,
            "alpha": lora.lora_alpha,
            "dropout": lora.lora_dropout,
            "target_modules": sorted(lora.target_modules),
            "trainable_parameters": trainable,
            "learning_rate": args.learning_rate,
            "lr_scheduler": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
            "bf16": bool(args.bf16),
            "seed": args.seed,
            "train_loss": float(result.training_loss),
            "loss_before": initial_loss,
            "loss_after": final_loss,
            "final_loss": history[-1][1] if history else float(result.training_loss),
            "loss_history": history,
            "time_s": round(time.perf_counter() - start, 3),
            "merged": merge,
        }
        if teacher is not None:
            summary["distillation"] = {
                "teacher": str(getattr(teacher.config, "_name_or_path", "") or teacher.config.model_type),
                "alpha": float(distillation_alpha),
                "temperature": float(distillation_temperature),
            }
        adapter_base = None
        if save_adapter and staging is not None:
            adapter_base = base_path if base_path is not None else target / PRUNED_BASE_DIR
            peft_model.save_pretrained(staging / ADAPTER_DIR)
            config_file = staging / ADAPTER_DIR / "adapter_config.json"
            adapter_config = json.loads(config_file.read_text())
            adapter_config["base_model_name_or_path"] = str(adapter_base)
            config_file.write_text(json.dumps(adapter_config, indent=2) + "\n")
            tokenizer.save_pretrained(staging / ADAPTER_DIR)
            summary["adapter"] = ADAPTER_DIR
            summary["adapter_base"] = PRUNED_BASE_DIR if base_path is None else str(base_path)
        if not merge:
            out = peft_model
        else:
            out = peft_model.merge_and_unload()
            out.eval()
        if target is not None and main:
            meta["recovery"] = summary

            def move_staged(directory: Path) -> None:
                for name in (PRUNED_BASE_DIR, ADAPTER_DIR):
                    if (staging / name).exists():
                        shutil.move(str(staging / name), str(directory / name))

            save_checkpoint(
                out,
                tokenizer,
                target,
                meta,
                source=source,
                overwrite=overwrite,
                writers=_checkpoint_writers(meta) + [move_staged],
            )
            logger.info("Saved recovered model to %s", target)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if temp_output is not None:
            shutil.rmtree(temp_output, ignore_errors=True)
    return (out, summary) if return_summary else out
