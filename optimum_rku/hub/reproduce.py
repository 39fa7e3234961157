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
