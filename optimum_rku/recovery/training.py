"""LoRA recovery training: PEFT adapters trained with `transformers.Trainer`, merged, saved like `prune` saves."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from optimum_rku.config import CONFIG_NAME
from optimum_rku.data.providers import provider_for
from optimum_rku.hub.card import checkpoint_writers
from optimum_rku.hub.labels import portable_model_name
from optimum_rku.io.adapter import ADAPTER_DIR, PRUNED_BASE_DIR, write_adapter
from optimum_rku.io.checkpoint import check_save_dir, save_checkpoint
from optimum_rku.io.files import install_directory, new_staging_directory, scratch_dir
from optimum_rku.io.metadata import read_metadata
from optimum_rku.models.specs import SPECS
from optimum_rku.recovery.data import DEFAULT_MAX_LENGTH, RecoveryCollator, prepare_recovery_dataset
from optimum_rku.recovery.defaults import (
    DEFAULT_DISTILLATION_ALPHA,
    DEFAULT_DISTILLATION_TEMPERATURE,
    DEFAULT_LORA,
    DEFAULT_TRAINING_ARGS,
)
from optimum_rku.recovery.losses import check_distillation, distillation_trainer, response_loss

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------ configs
def default_lora_config(model: Any = None, **overrides: Any):
    """PEFT `LoraConfig` for causal LMs with adapters on every attention and MLP projection module of `model`'s family
    (its spec's `lora_targets`: q/k/v/o and gate/up/down, or fused ones); for no model (or an unknown family), the
    names of every supported family (PEFT adapts those the model has)."""
    from peft import LoraConfig

    spec = SPECS.get(getattr(getattr(model, "config", model), "model_type", None))
    if spec is not None:
        targets = list(spec.lora_targets)
    else:
        targets = list(dict.fromkeys(name for other in SPECS.values() for name in other.lora_targets))

    fields = {f.name for f in dataclasses.fields(LoraConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"Unknown LoraConfig field(s) {unknown}; see peft.LoraConfig for the allowed fields.")
    kwargs: dict[str, Any] = {**DEFAULT_LORA, "target_modules": targets, "task_type": "CAUSAL_LM"}
    kwargs.update(overrides)
    return LoraConfig(**kwargs)


def _resolve_lora_config(lora_config: Any, model):
    from peft import LoraConfig

    if lora_config is None:
        return default_lora_config(model)
    if isinstance(lora_config, Mapping):
        return default_lora_config(model, **dict(lora_config))
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
        temp_dir = str(scratch_dir("optimum-rku-recovery-"))  # removes those of killed runs
        kwargs["output_dir"] = temp_dir
    try:
        return TrainingArguments(**kwargs), temp_dir
    except (TypeError, ValueError) as err:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
        raise ValueError(f"Invalid training_args {user}: {err}") from None


def _default_metadata(model, source: Any) -> dict[str, Any]:
    from optimum_rku.version import __version__

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


def sharing_copy(model):
    """A second module tree of `model` over the very same parameter and buffer tensors (no weight memory is copied)."""
    return copy.deepcopy(model, {id(t): t for t in itertools.chain(model.parameters(), model.buffers())})


def adopt_tensors(model, other) -> None:
    """Point `model` at the parameters and buffers of its `sharing_copy` `other` wherever training replaced them (a
    device move replaces buffers); a module PEFT wrapped in `other` is read through its `base_layer`."""
    for name, module in model.named_modules():
        try:
            counterpart = other.get_submodule(name) if name else other
        except AttributeError:
            continue
        counterpart = getattr(counterpart, "base_layer", counterpart)
        for table in ("_parameters", "_buffers"):
            mine, theirs = getattr(module, table), getattr(counterpart, table)
            for key, tensor in mine.items():
                if theirs.get(key) is not None and theirs[key] is not tensor:
                    mine[key] = theirs[key]


def _teacher_label(teacher, teacher_name: Any) -> str | None:
    """How the summary names the distillation teacher: portable (a Hub id, an alias, a file name), never a path."""
    if teacher_name is not None and (not isinstance(teacher_name, str) or not teacher_name.strip()):
        raise ValueError(f"teacher_name={teacher_name!r} must be a non-empty str (e.g. 'dense' or a Hub id) or None.")
    if teacher_name is not None and teacher is None:
        raise ValueError("teacher_name names the distillation teacher; pass teacher=... too (or drop teacher_name).")
    if teacher is None:
        return None
    name = teacher_name if teacher_name is not None else getattr(teacher.config, "_name_or_path", None)
    return portable_model_name(name) or teacher.config.model_type


@dataclasses.dataclass
class RecoveryOptions:
    """How `recover_with_lora` runs besides its model, data, LoRA config and training arguments.

    `save_adapter`: also keep the adapter checkpoint (default: with `merge=False` and a `save_dir`); `overwrite`: a
    non-empty `save_dir` may be replaced; `metadata` / `source`: what the checkpoint records (default: read from the
    model); `data`, `data_files`, `num_samples`, `max_length`, `seed`, `chat_template`: the training rows
    (`prepare_recovery_dataset`); `teacher`, `teacher_name`, `distillation_alpha`, `distillation_temperature`:
    knowledge distillation from the dense model; `progress`: progress bars and logs; `return_summary`: also return
    the summary with wall times.
    """

    save_adapter: bool | None = None
    overwrite: bool = False
    metadata: dict[str, Any] | None = None
    source: str | os.PathLike | None = None
    data: Any = None
    data_files: Any = None
    num_samples: int | None = None
    max_length: int = DEFAULT_MAX_LENGTH
    seed: int | None = None
    chat_template: str = "auto"
    teacher: Any = None
    teacher_name: str | None = None
    distillation_alpha: float = DEFAULT_DISTILLATION_ALPHA
    distillation_temperature: float = DEFAULT_DISTILLATION_TEMPERATURE
    progress: bool = True
    return_summary: bool = False


@dataclasses.dataclass
class _Run:
    """One recovery run, checked and resolved before any training: what `_train` and `_save` work from."""

    model: Any
    tokenizer: Any
    options: RecoveryOptions
    merge: bool
    save_adapter: bool
    target: Path | None
    lora: Any
    teacher_label: str | None
    meta: dict[str, Any]
    dataset: Any
    data_summary: dict[str, Any]
    args: Any
    temp_output: Path | None
    pad_id: int


def recover_with_lora(
    model,
    tokenizer,
    train_dataset: Any = None,
    lora_config: Any = None,
    training_args: Any = None,
    save_dir: str | os.PathLike | None = None,
    merge: bool = True,
    options: RecoveryOptions | None = None,
    **keywords: Any,
):
    """Fine-tune LoRA adapters on a pruned model, merge them (by default) and save like `prune` does.

    Everything else is a `RecoveryOptions` field, given as `options=` or as keywords (`teacher=..., seed=...`;
    keywords override `options`).
    Returns the merged model (a `PeftModel` when `merge=False`), or `(model, summary)` with `return_summary=True`; the
    summary holds the wall times (`train_runtime_s`, `time_s`) that the saved `rku_config.json` leaves out, so that the
    same model, data and seed give byte-identical checkpoints. With `merge=False`, `model` itself stays free of LoRA
    layers (the plain base the adapter applies to): the `PeftModel` wraps a second module tree over the same weight
    tensors, so merging it later (`merge_and_unload`) writes into those shared weights.
    With `save_dir`, writes the merged checkpoint (same formats as `prune`, `rku_config.json` gains a "recovery"
    section); with `save_adapter=True` it also holds, in `pruned_base/`, the *adapter checkpoint*: the pruned model
    before recovery with the LoRA adapter in `pruned_base/adapter/`. With `merge=False`, `save_dir` is that adapter
    checkpoint itself (`save_adapter` defaults to True then). The adapter's `base_model_name_or_path` is `..`, the
    directory above it, never an absolute path: the directory can be moved or pushed whole (`optimum_rku.io.adapter`).
    Without `train_dataset` / `data_files`, the pairs come from `data` (a data provider or its name; default: the
    provider of the model the checkpoint was pruned from). With `teacher` (the dense model, same tokenizer) the loss
    is knowledge distillation on the response tokens:
    `(1 - distillation_alpha) * CE + distillation_alpha * T^2 * KL(teacher || student)` at temperature T. The summary
    names the teacher `teacher_name` (default: its Hub id, else its folder or file name; never a machine path).
    Question/answer rows go through the tokenizer's chat template when it has one (`chat_template="auto"`; "on",
    "off"), the way a chat model is asked; see `prepare_recovery_dataset`.
    """
    run = _prepare(model, tokenizer, train_dataset, lora_config, training_args, save_dir, merge, options, keywords)
    staging = None
    start = time.perf_counter()
    try:
        if run.target is not None and run.args.should_save:
            staging = new_staging_directory(run.target)  # beside the target; removed as stale if this run is killed
            if run.save_adapter:  # the adapter's base: the pruned model before any training
                save_checkpoint(model, tokenizer, staging / PRUNED_BASE_DIR, run.meta, overwrite=True)
        peft_model, summary, timing = _train(run, start)
        out = _save(run, peft_model, summary, staging)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if run.temp_output is not None:
            shutil.rmtree(run.temp_output, ignore_errors=True)
    return (out, {**summary, **timing}) if run.options.return_summary else out


def _recovery_options(options: RecoveryOptions | None, keywords: dict[str, Any]) -> RecoveryOptions:
    """`options` with `keywords` applied; an unknown keyword is a TypeError naming it and the allowed ones."""
    if options is not None and not isinstance(options, RecoveryOptions):
        raise TypeError(f"options must be a RecoveryOptions or None, got {type(options).__name__}.")
    allowed = [field.name for field in dataclasses.fields(RecoveryOptions)]
    unknown = sorted(set(keywords) - set(allowed))
    if unknown:
        raise TypeError(f"recover_with_lora got unexpected keyword(s) {unknown}; allowed: {', '.join(allowed)}.")
    return dataclasses.replace(options or RecoveryOptions(), **keywords)


def _prepare(model, tokenizer, train_dataset, lora_config, training_args, save_dir, merge, options, keywords) -> _Run:
    """Every check before any heavy work, then the training rows and arguments."""
    from transformers import PreTrainedModel

    opts = _recovery_options(options, keywords)
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"model must be a transformers PreTrainedModel, got {type(model).__name__}.")
    if tokenizer is None:
        raise ValueError("recover_with_lora needs the model's tokenizer.")
    save_adapter = opts.save_adapter if opts.save_adapter is not None else (not merge and save_dir is not None)
    for name, value in (("merge", merge), ("save_adapter", save_adapter), ("overwrite", opts.overwrite)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {value!r}.")
    seed = opts.seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed={seed!r} must be a non-negative int or None.")
    if save_adapter and save_dir is None:
        raise ValueError("save_adapter=True needs a save_dir to write the adapter into.")
    if not merge and save_dir is not None and not save_adapter:
        raise ValueError(
            "merge=False with a save_dir saves the pruned model and its LoRA adapter; save_adapter=False would leave "
            "nothing to save. Drop save_adapter=False, or use merge=True to save the merged model."
        )
    target = check_save_dir(save_dir, opts.source, opts.overwrite) if save_dir is not None else None
    lora = _resolve_lora_config(lora_config, model)
    check_distillation(model, opts.teacher, opts.distillation_alpha, opts.distillation_temperature)
    teacher_label = _teacher_label(opts.teacher, opts.teacher_name)
    if opts.metadata is not None and not isinstance(opts.metadata, dict):
        raise TypeError(f"metadata must be a dict or None, got {type(opts.metadata).__name__}.")
    meta = copy.deepcopy(opts.metadata) if opts.metadata is not None else _default_metadata(model, opts.source)
    data = opts.data
    if data is None:  # the provider of the model this checkpoint was pruned from (recorded, else by its name)
        data = provider_for(getattr(model.config, "_name_or_path", None) or None, meta)
    dataset, data_summary = prepare_recovery_dataset(
        tokenizer,
        train_dataset,
        data=data,
        data_files=opts.data_files,
        num_samples=opts.num_samples,
        max_length=opts.max_length,
        seed=seed if seed is not None else DEFAULT_TRAINING_ARGS["seed"],
        chat_template=opts.chat_template,
    )
    args, temp_output = resolve_training_args(training_args, progress=opts.progress, seed=seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    return _Run(
        model, tokenizer, opts, merge, save_adapter, target, lora, teacher_label, meta, dataset, data_summary, args,
        temp_output, pad_id,
    )  # fmt: skip


def _train(run: _Run, start: float) -> tuple[Any, dict[str, Any], dict[str, float]]:
    """Train the adapters (distilling from the teacher when there is one); the PEFT model, summary and wall times."""
    from peft import get_peft_model
    from transformers import Trainer, set_seed
    from transformers.trainer_callback import PrinterCallback

    opts, args, model = run.options, run.args, run.model
    # merge=False returns base + adapter while `model` stays the plain model the adapter applies to: PEFT injects
    # its layers into a second module tree over the same weights (no copy of any tensor)
    student = model if run.merge else sharing_copy(model)
    student.train()
    set_seed(args.seed)  # the LoRA A matrices are drawn here: same seed, same adapters, whatever ran before
    peft_model = get_peft_model(student, run.lora)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    trainer_kwargs = {
        "model": peft_model,
        "args": args,
        "train_dataset": run.dataset,
        "data_collator": RecoveryCollator(run.pad_id),
    }
    if opts.teacher is None:
        trainer = Trainer(**trainer_kwargs)
    else:
        alpha, temperature = opts.distillation_alpha, opts.distillation_temperature
        trainer = distillation_trainer(opts.teacher, alpha, temperature, **trainer_kwargs)
    if args.disable_tqdm and not opts.progress:  # silent means silent: no per-step log dicts printed either
        trainer.remove_callback(PrinterCallback)
    # a cheap before/after loss on fixed rows, on the training device (fresh LoRA is a no-op: B = 0); skipped
    # under sharded training (FSDP / DeepSpeed), where a forward outside the engine is not possible
    sharded = bool(getattr(args, "fsdp", None) or getattr(args, "deepspeed", None))
    probe = None if sharded else run.dataset.select(range(min(len(run.dataset), 32)))
    initial_loss = response_loss(peft_model, probe, pad_token_id=run.pad_id) if probe is not None else None
    result = trainer.train()
    peft_model.eval()
    if student is not model:
        adopt_tensors(model, peft_model.get_base_model())
    final_loss = response_loss(peft_model, probe, pad_token_id=run.pad_id) if probe is not None else None
    history = [[int(e["step"]), float(e["loss"])] for e in trainer.state.log_history if "loss" in e]
    lora = run.lora
    summary = {
        "method": "lora",
        "data": run.data_summary,
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
        "merged": run.merge,
    }
    # wall times: returned and logged, never saved (same model, data and seed: byte-identical checkpoints)
    timing = {
        "train_runtime_s": round(float(result.metrics.get("train_runtime", 0.0)), 3),
        "time_s": round(time.perf_counter() - start, 3),
    }
    logger.info("Recovery: %d steps, training %.1f s, %.1f s in all", summary["steps"], *timing.values())
    if str(args.include_num_input_tokens_seen) != "no":  # asked for through training_args
        summary["input_tokens_seen"] = int(trainer.state.num_input_tokens_seen)
    if opts.teacher is not None:
        summary["distillation"] = {
            "teacher": run.teacher_label,
            "alpha": float(opts.distillation_alpha),
            "temperature": float(opts.distillation_temperature),
        }
    return peft_model, summary, timing


def _save(run: _Run, peft_model, summary: dict[str, Any], staging: Path | None):
    """Complete the adapter checkpoint, merge (unless `merge=False`) and install the output; the returned model."""
    merge, tokenizer, meta = run.merge, run.tokenizer, run.meta
    if run.save_adapter and staging is not None:  # complete the adapter checkpoint: adapter, metadata, card
        adapter_checkpoint = staging / PRUNED_BASE_DIR
        write_adapter(peft_model, tokenizer, adapter_checkpoint / ADAPTER_DIR)
        base_meta = {**meta, "recovery": {**summary, "merged": False, "adapter": ADAPTER_DIR}}
        (adapter_checkpoint / CONFIG_NAME).write_text(json.dumps(base_meta, indent=2, sort_keys=False) + "\n")
        for writer in checkpoint_writers(base_meta):
            writer(adapter_checkpoint)
        summary["adapter"] = f"{PRUNED_BASE_DIR}/{ADAPTER_DIR}" if merge else ADAPTER_DIR
    if not merge:
        out = peft_model
    else:
        out = peft_model.merge_and_unload()
        out.eval()
    if run.target is None or not run.args.should_save:
        return out
    source, overwrite = run.options.source, run.options.overwrite
    if merge:
        meta["recovery"] = summary

        def move_staged(directory: Path) -> None:  # before the card, which describes the adapter it finds
            if (staging / PRUNED_BASE_DIR).exists():
                shutil.move(str(staging / PRUNED_BASE_DIR), str(directory / PRUNED_BASE_DIR))

        writers = [move_staged] + checkpoint_writers(meta)
        save_checkpoint(out, tokenizer, run.target, meta, source=source, overwrite=overwrite, writers=writers)
        logger.info("Saved recovered model to %s", run.target)
    else:  # merge=False: the adapter checkpoint is the whole output
        check_save_dir(run.target, source, overwrite)
        install_directory(staging / PRUNED_BASE_DIR, run.target)  # one step: a kill leaves the previous state
        logger.info("Saved the pruned model and its LoRA adapter to %s", run.target)
    return out
