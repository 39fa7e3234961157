"""`PruningScores`: per-layer scores, costs and calibration statistics of one scoring pass, saved as JSON or safetensors."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

_TENSOR_LISTS = (
    "mlp",
    "attention",
    "mlp_raw",
    "attention_raw",
    "mlp_input_mean",
    "attention_input_mean",
    "mlp_loss",
    "attention_loss",
)


@dataclass
class PruningScores:
    """Per-layer scores (normalized and raw) and parameter cost per structure; reusable across sparsities."""

    importance: str
    objective: str | None
    normalization: str
    attention_granularity: str
    mlp: list[torch.Tensor]
    attention: list[torch.Tensor]
    mlp_raw: list[torch.Tensor]
    attention_raw: list[torch.Tensor]
    mlp_cost: list[int]
    attention_cost: list[int]
    widths: list[dict[str, int]]
    calibration: dict[str, Any] = field(default_factory=dict)
    #: per layer, the calibration mean of each down_proj / o_proj input channel (only with bias_compensation)
    mlp_input_mean: list[torch.Tensor] | None = None
    attention_input_mean: list[torch.Tensor] | None = None
    #: per layer, 1/2 mean_t (dPhi/dm_s)^2: the Fisher estimate of the loss increase when structure s is zeroed
    #: (RKU only; read by `ranking="measured_loss"`)
    mlp_loss: list[torch.Tensor] | None = None
    attention_loss: list[torch.Tensor] | None = None
    #: head_dim of the scored model (sizes the KV cache an attention unit frees; None in files of older versions)
    head_dim: int | None = None

    @property
    def num_layers(self) -> int:
        return len(self.widths)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tensors become lists)."""
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if key in _TENSOR_LISTS:
                out[key] = None if value is None else [t.tolist() for t in value]
            else:
                out[key] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningScores:
        data = dict(data)
        for key in _TENSOR_LISTS:
            if data.get(key) is not None:
                data[key] = [torch.tensor(v, dtype=torch.float32) for v in data[key]]
        return cls(**data)

    def save(self, path: str | os.PathLike) -> Path:
        """Write to `.json` or `.safetensors` (tensors + JSON metadata), chosen by the file suffix."""
        path = Path(path)
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            tensors = {}
            meta = {}
            for key, value in self.__dict__.items():
                if key in _TENSOR_LISTS:
                    meta[f"has_{key}"] = value is not None
                    for i, t in enumerate(value or []):
                        tensors[f"{key}.{i}"] = t.contiguous().clone()  # methods may share raw and normalized
                else:
                    meta[key] = value
            save_file(tensors, str(path), metadata={"rku_scores": json.dumps(meta)})
        elif path.suffix == ".json":
            path.write_text(json.dumps(self.to_dict()))
        else:
            raise ValueError(f"Scores path {str(path)!r} must end in .json or .safetensors.")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> PruningScores:
        path = Path(path)
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                meta = json.loads(handle.metadata()["rku_scores"])
                layers = len(meta["widths"])
                for key in _TENSOR_LISTS:
                    present = meta.pop(f"has_{key}", f"{key}.0" in handle.keys())
                    meta[key] = [handle.get_tensor(f"{key}.{i}") for i in range(layers)] if present else None
            return cls(**meta)
        if path.suffix == ".json":
            return cls.from_dict(json.loads(path.read_text()))
        raise ValueError(f"Scores path {str(path)!r} must end in .json or .safetensors.")
