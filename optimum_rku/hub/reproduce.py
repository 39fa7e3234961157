"""The `optimum-cli rku prune ...` command line that re-creates a checkpoint, rebuilt from its metadata."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from optimum_rku.data.gsm8k import hub_config
from optimum_rku.data.providers import provider_for
from optimum_rku.hub.labels import DATA_SUFFIXES, checkpoint_name, hub_dataset_id, hub_model_id


def reproduce_command(meta: Mapping[str, Any], output: str | None = None) -> str:
    """The `optimum-cli rku prune ...` line that re-creates this checkpoint (non-default config fields only)."""
    import dataclasses

    from optimum_rku.config import RKUConfig
    from optimum_rku.io.packaged import packaged_model

    config = dict(meta["pruning_config"])
    defaults = {  # from the dataclass itself: instantiating RKUConfig would import torch (importance registry)
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        for f in dataclasses.fields(RKUConfig)
    }
    packaged = packaged_model(meta.get("base_model"))  # its short name loads it anywhere
    model = (
        provider_for(metadata=meta).model_alias
        or hub_model_id(meta.get("base_model"))
        or (packaged.name if packaged else "<path-to-base-model>")
    )
    out = output or checkpoint_name(meta, None)
    parts = ["optimum-cli rku prune", f"--model {model}", f"--output {out}"]
    for key, value in config.items():
        if key not in defaults or (value == defaults[key] and key not in ("sparsity", "importance")):
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{key.replace('_', '-')}")
        elif isinstance(value, (list, tuple)):
            if value:
                parts.append(f"{flag} {' '.join(str(v) for v in value)}")
        else:
            parts.append(f"{flag} {value}")
    calibration = meta.get("calibration") or {}
    source = calibration.get("dataset")
    dataset_id = hub_dataset_id(source)
    if dataset_id:
        parts.append(f"--dataset {dataset_id}")
        if calibration.get("config") != hub_config(dataset_id):
            parts.append(f"--dataset-config {calibration['config']}")
        if calibration.get("split") not in (None, "train"):
            parts.append(f"--dataset-split {calibration['split']}")
    elif source and str(source).lower().endswith(DATA_SUFFIXES):
        parts.append(f"--data-files <{Path(str(source)).name}>")
    column = calibration.get("text_column")
    if isinstance(column, str) and column not in ("question", "preprocess_function"):
        parts.append(f"--text-column {column}")
    return " \\\n    ".join(parts)


def recover_command(
    recovery: Mapping[str, Any], checkpoint: str, output: str, meta: Mapping[str, Any] | None = None
) -> str:
    """The `optimum-cli rku recover ...` line that re-runs a checkpoint's recorded LoRA recovery on the pruned
    `checkpoint` (non-default settings only; data given in Python is shown as a placeholder). `meta` is the
    checkpoint's `rku_config.json`: `recover` reads its provider's dataset unless `--dataset` names another."""
    from optimum_rku.config import DEFAULT_ANSWER_TOKENS
    from optimum_rku.recovery.data import DEFAULT_MAX_LENGTH, own_answers_settings
    from optimum_rku.recovery.defaults import (
        DEFAULT_DISTILLATION_ALPHA,
        DEFAULT_DISTILLATION_TEMPERATURE,
        DEFAULT_LORA,
        DEFAULT_TRAINING_ARGS,
    )

    parts = ["optimum-cli rku recover", f"--checkpoint {checkpoint}", f"--output {output}"]
    if recovery.get("steps") is not None:
        parts.append(f"--max-steps {recovery['steps']}")
    flags = (
        ("--learning-rate", recovery.get("learning_rate"), DEFAULT_TRAINING_ARGS["learning_rate"]),
        ("--lora-r", recovery.get("rank"), DEFAULT_LORA["r"]),
        ("--lora-alpha", recovery.get("alpha"), 2 * (recovery.get("rank") or DEFAULT_LORA["r"])),
        ("--batch-size", recovery.get("per_device_batch_size"), DEFAULT_TRAINING_ARGS["per_device_train_batch_size"]),
        ("--max-length", (recovery.get("data") or {}).get("max_length"), DEFAULT_MAX_LENGTH),
        ("--seed", recovery.get("seed"), DEFAULT_TRAINING_ARGS["seed"]),
    )
    parts += [f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}" for flag, value, default in flags
              if value is not None and value != default]  # fmt: skip
    data = recovery.get("data") or {}
    source = data.get("dataset")
    own = own_answers_settings(source)
    default_data = provider_for(metadata=meta or {}).recovery_label  # what `recover` reads without --dataset
    if own is not None:
        parts.append("--answers self")
        if own["max_new_tokens"] != DEFAULT_ANSWER_TOKENS:
            parts.append(f"--answer-tokens {own['max_new_tokens']}")
        parts.append(f"--num-samples {own['asked']}")
        if own["of"] == "prompts":  # asked as given in Python: the command line asks the data's questions instead
            parts.append("--data-files <the-questions.jsonl>")
    elif source == default_data or hub_dataset_id(source):
        if source != default_data:
            parts.append(f"--dataset {hub_dataset_id(source)}")
        if data.get("num_examples") is not None:
            parts.append(f"--num-samples {data['num_examples']}")
    elif source:
        name = Path(str(source)).name if str(source).lower().endswith(DATA_SUFFIXES) else "your-data.jsonl"
        parts.append(f"--data-files <{name}>")
    distillation = recovery.get("distillation") or {}
    if distillation:
        teacher = distillation.get("teacher")
        parts.append(f"--teacher {'base' if teacher in (None, 'dense') else teacher}")
        for flag, key, default in (
            ("--distillation-alpha", "alpha", DEFAULT_DISTILLATION_ALPHA),
            ("--distillation-temperature", "temperature", DEFAULT_DISTILLATION_TEMPERATURE),
        ):
            if distillation.get(key) is not None and distillation[key] != default:
                parts.append(f"{flag} {distillation[key]:g}")
    if recovery.get("merged") is False:
        parts.append("--no-merge")
    return " \\\n    ".join(parts)


def reproduce_section(meta: Mapping[str, Any], recovery: Mapping[str, Any] | None, name: str | None) -> str:
    """The card's "Reproduce" section: the prune line, then (for a recovered checkpoint) the recover line."""
    sampled = ""
    if recovery:
        from optimum_rku.recovery.data import own_answers_settings

        pruned = checkpoint_name(meta, None)
        output = name if name and name != pruned else f"{pruned}-lora"
        command = reproduce_command(meta, pruned) + "\n" + recover_command(recovery, pruned, output, meta)
        own = own_answers_settings((recovery.get("data") or {}).get("dataset"))
        if own and own["do_sample"]:
            sampled = (
                "The recovery learned *sampled* answers of the dense model; `recover --answers self` asks for greedy "
                "ones, so this line re-creates it with greedy answers (`self_distillation_dataset(..., "
                "do_sample=True)` in Python samples again).\n\n"
            )
    else:
        command = reproduce_command(meta, name)
    return (
        "## Reproduce\n\n```bash\npip install optimum-rku\n"
        + command
        + "\n```\n\n"
        + sampled
        + "`rku_config.json` in this repository records the full configuration, the kept channel and head "
        "indices of every layer, parameter counts"
        + (
            ", the calibration summary and the recovery's settings and data."
            if recovery
            else " and the calibration summary."
        )
    )
