"""`PruningScores`: per-layer scores, costs and calibration statistics of one scoring pass, saved as JSON or safetensors."""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, dataclass, field, fields
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
    #: the scored model's context length (`max_position_embeddings`; resolves `kv_cache_tokens="auto"`)
    context_length: int | None = None
    #: `model_type` of the scored model and a few of its weights (`model_fingerprint`): scores of another model or
    #: architecture are refused by `prune(scores=...)`; None in files of older versions
    architecture: str | None = None
    fingerprint: list[list[float | None]] | None = None

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
    def from_dict(cls, data: dict[str, Any], source: str = "scores") -> PruningScores:
        """Rebuild from `to_dict` output; anything else is a clear ValueError naming `source` and the problem."""
        if not isinstance(data, dict):
            kind = type(data).__name__
            raise ValueError(f"{source} does not hold optimum-rku scores: expected a JSON object, got {kind}.")
        data = dict(data)
        _check_fields(data, source)
        for key in _TENSOR_LISTS:
            if data.get(key) is not None:
                if not isinstance(data[key], list):
                    raise ValueError(f"{source}: {key!r} must be a list with one entry per layer.")
                try:
                    data[key] = [torch.tensor(v, dtype=torch.float32) for v in data[key]]
                except (TypeError, ValueError, RuntimeError) as err:
                    raise ValueError(f"{source}: {key!r} does not hold lists of numbers ({err}).") from None
        scores = cls(**data)
        scores.validate(source)
        return scores

    def validate(self, source: str = "These scores") -> None:
        """Raise a ValueError naming the first inconsistency (sizes against `widths`, NaN or +inf, unknown names).

        -inf is allowed in the scores (structures removed by an earlier iteration rank last).
        """
        from optimum_rku.config import ATTENTION_GRANULARITIES, NORMALIZATIONS

        def bad(problem: str) -> ValueError:
            hint = " (truncated or edited file?)" if source.startswith("Scores file") else ""
            return ValueError(f"{source} cannot be used: {problem}{hint}.")

        for name, value, allowed in (
            ("attention_granularity", self.attention_granularity, ATTENTION_GRANULARITIES),
            ("normalization", self.normalization, NORMALIZATIONS),
        ):
            if value not in allowed:
                raise bad(f"{name}={value!r}, allowed: {', '.join(map(repr, allowed))}")
        if not isinstance(self.importance, str) or not self.importance:
            raise bad(f"importance={self.importance!r} is not a method name")
        if not isinstance(self.widths, list) or not self.widths:
            raise bad("'widths' must be a non-empty list with one entry per layer")
        keys = ("intermediate_size", "num_attention_heads", "num_key_value_heads")
        for i, width in enumerate(self.widths):
            if not isinstance(width, dict) or any(not _count(width.get(k)) for k in keys):
                raise bad(f"widths[{i}]={width!r} needs non-negative ints {list(keys)}")
        for name in ("head_dim", "context_length"):
            if getattr(self, name) is not None and not _positive_int(getattr(self, name)):
                raise bad(f"{name}={getattr(self, name)!r} is not a positive int")
        layers = len(self.widths)
        for key in ("mlp_cost", "attention_cost"):
            costs = getattr(self, key)
            if not isinstance(costs, list) or len(costs) != layers or not all(_positive_int(c) for c in costs):
                raise bad(f"{key!r} must hold {layers} positive ints (one per layer)")
        for key in _TENSOR_LISTS:
            values = getattr(self, key)
            if values is None:
                if key in _REQUIRED_TENSORS:
                    raise bad(f"{key!r} is missing")
                continue
            if len(values) != layers:
                raise bad(f"{key!r} has {len(values)} layers, 'widths' has {layers}")
            for i, tensor in enumerate(values):
                expected = self._size(key, self.widths[i])
                if not isinstance(tensor, torch.Tensor) or tensor.dim() != 1:
                    raise bad(f"{key}[{i}] is not a list of numbers")
                if key == "attention_input_mean":  # one value per o_proj input channel: heads x head_dim
                    if not tensor.numel() or tensor.numel() % max(expected, 1):
                        raise bad(
                            f"{key}[{i}] has {tensor.numel()} values, not a multiple of layer {i}'s {expected} heads"
                        )
                elif tensor.numel() != expected:
                    raise bad(f"{key}[{i}] has {tensor.numel()} values, layer {i} has {expected} structures")
                if bool(torch.isnan(tensor).any()) or bool(torch.isposinf(tensor).any()):
                    raise bad(f"{key}[{i}] holds NaN or +inf")
        if self.fingerprint is not None and (
            not isinstance(self.fingerprint, list)
            or len(self.fingerprint) != layers
            or not all(isinstance(row, list) for row in self.fingerprint)
        ):
            raise bad(f"'fingerprint' must hold one list per layer ({layers})")

    def _size(self, key: str, width: dict[str, int]) -> int:
        """How many values one layer's `key` holds (attention_input_mean: a multiple of the query heads)."""
        if key.startswith("mlp"):
            return width["intermediate_size"]
        if key == "attention_input_mean":
            return width["num_attention_heads"]
        if self.attention_granularity == "query_head":
            return width["num_attention_heads"]
        return width["num_key_value_heads"]

    def save(self, path: str | os.PathLike) -> Path:
        """Write to `.json` or `.safetensors` (tensors + JSON metadata), chosen by the file suffix, atomically."""
        from optimum_rku.io.files import atomic_write, atomic_write_text

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
            metadata = {"rku_scores": json.dumps(meta)}
            atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), suffix=".safetensors")
        elif path.suffix == ".json":
            atomic_write_text(path, json.dumps(self.to_dict()))
        else:
            raise ValueError(f"Scores path {str(path)!r} must end in .json or .safetensors.")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> PruningScores:
        """Read a file written by `save`; a missing, truncated, edited or foreign file is one clear error."""
        path = Path(path)
        source = f"Scores file {str(path)!r}"
        if path.suffix not in (".safetensors", ".json"):
            raise ValueError(f"Scores path {str(path)!r} must end in .json or .safetensors.")
        if not path.is_file():
            raise FileNotFoundError(f"{source} does not exist.")
        if path.suffix == ".safetensors":
            return cls._load_safetensors(path, source)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise ValueError(f"{source} is not text: not a scores .json (another format?).") from None
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{source} is not valid JSON ({err.msg} at line {err.lineno}): truncated or edited? Save it again "
                "with PruningScores.save."
            ) from None
        return cls.from_dict(data, source)

    @classmethod
    def _load_safetensors(cls, path: Path, source: str) -> PruningScores:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                raw = (handle.metadata() or {}).get("rku_scores")
                if raw is None:
                    raise ValueError(
                        f"{source} is a safetensors file without optimum-rku scores metadata (model weights?); "
                        "scores files are written by PruningScores.save."
                    )
                try:
                    meta = json.loads(raw)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{source}: its scores metadata is not valid JSON ({err.msg}).") from None
                if not isinstance(meta, dict) or not isinstance(meta.get("widths"), list):
                    raise ValueError(f"{source}: its scores metadata has no per-layer 'widths'.")
                _check_fields(meta, source, tensors_in_file=True)
                layers, names = len(meta["widths"]), set(handle.keys())
                for key in _TENSOR_LISTS:
                    present = meta.pop(f"has_{key}", f"{key}.0" in names)
                    if not present:
                        meta[key] = None
                        continue
                    missing = [f"{key}.{i}" for i in range(layers) if f"{key}.{i}" not in names]
                    if missing:
                        raise ValueError(f"{source} is missing tensors {missing[:3]} (truncated or edited file?).")
                    meta[key] = [handle.get_tensor(f"{key}.{i}").float() for i in range(layers)]
        except SafetensorError as err:
            raise ValueError(
                f"{source} is not a readable safetensors file ({err}): truncated, or another format?"
            ) from None
        scores = cls(**meta)
        scores.validate(source)
        return scores


_REQUIRED_TENSORS = ("mlp", "attention", "mlp_raw", "attention_raw")


def _positive_int(value: Any) -> bool:
    return _count(value) and value > 0


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_fields(data: dict[str, Any], source: str, tensors_in_file: bool = False) -> None:
    """Unknown or missing fields: a file of another format, or an edit that dropped a key."""
    known = {f.name for f in fields(PruningScores)}
    allowed = known | ({f"has_{k}" for k in _TENSOR_LISTS} if tensors_in_file else set())
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(
            f"{source} does not hold optimum-rku scores: unknown field(s) {unknown[:5]} (another format?)."
        )
    required = {f.name for f in fields(PruningScores) if f.default is MISSING and f.default_factory is MISSING}
    if tensors_in_file:
        required -= set(_TENSOR_LISTS)
    missing = sorted(required - set(data))
    if missing:
        raise ValueError(f"{source} does not hold optimum-rku scores: missing field(s) {missing} (another format?).")


#: weights sampled per layer and projection for `model_fingerprint`
_SAMPLES = 4


def model_fingerprint(model) -> list[list[float | None]]:
    """A few o_proj / down_proj weights of every layer at fixed positions: tells two models of one shape apart.

    Weights on the meta device (offloaded) read as None and are not compared.
    """
    from optimum_rku.models.blocks import blocks

    out = []
    for block in blocks(model):
        row: list[float | None] = []
        for linear in (block.o_proj, block.down_proj):
            weight = linear.weight
            if weight.device.type == "meta":
                row += [None] * _SAMPLES
                continue
            rows, cols = weight.shape
            r = torch.tensor([(k * 2654435761 + 1) % rows for k in range(_SAMPLES)], device=weight.device)
            c = torch.tensor([(k * 40503 + 7) % cols for k in range(_SAMPLES)], device=weight.device)
            row += [float(v) for v in weight.detach()[r, c].float().cpu()]
        out.append(row)
    return out


def fingerprint_mismatch(recorded: list, current: list) -> str | None:
    """None if two fingerprints may come from one model (up to bf16 / fp16 rounding), else where they differ."""
    compared, differ, first = 0, 0, None
    for layer, (a_row, b_row) in enumerate(zip(recorded, current)):
        for a, b in zip(a_row, b_row):
            if a is None or b is None:
                continue
            compared += 1
            if abs(a - b) > 1e-2 * max(abs(a), abs(b)) + 1e-6:
                differ += 1
                if first is None:
                    first = f"layer {layer}: {a:.6g} in the scored model, {b:.6g} here"
    if compared == 0 or 2 * differ <= compared:
        return None
    return f"{differ} of {compared} sampled weights differ ({first})"
