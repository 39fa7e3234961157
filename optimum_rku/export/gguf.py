"""GGUF export: a saved checkpoint as one GGUF file that llama.cpp (and Ollama, LM Studio, ...) loads.

What to write for a family comes from its spec (`models/specs.py`: `ArchitectureSpec.gguf`), and what a llama.cpp
architecture accepts from `LLAMA_CPP_ARCHITECTURES`; this module names neither. A checkpoint goes to its family's
own architecture when that architecture can hold it; otherwise, for families whose layers are Llama layers, to
llama.cpp's `llama` (uniform widths) or `deci` (per-layer widths: `feed_forward_length`, `attention.head_count` and
`attention.head_count_kv` as per-layer arrays, every layer built with its own widths). Fused projections are written
fused where the architecture reads them fused and split into their logical projections elsewhere. A checkpoint no
candidate architecture can hold (per-layer widths of a family without a Llama-layer route, a bias the loader does not
create, a rotary or soft-capping setting it cannot express) fails with one error naming what to change, before
anything is written.

`plan_gguf_export` checks everything from `config.json`, the safetensors headers and the tokenizer (no weights are
read except biases); `export_gguf` then streams one tensor at a time into a temporary file beside the output and
renames it into place, so a failed export leaves nothing behind. Tensor names come from gguf-py's
`get_tensor_name_map` (llama.cpp's own table); for architectures that rotate interleaved pairs, q/k rows are reordered
within each head (a fixed permutation, undone by transformers' GGUF loader).

One file on purpose (over ~450 lines): the export plan and the writer share the tensor naming and per-tensor
transforms; the tokenizer keys live in `gguf_vocab.py`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optimum_rku.data.providers import provider_for
from optimum_rku.export.quantize import (
    Fallback,
    check_quantize,
    expected_fallbacks,
    quantize_gguf,
    require_llama_cpp,
    types_of,
)
from optimum_rku.export.vocab import Vocab, check_pre_tokenizer, read_byte_level_bpe, read_gguf_tokenizer
from optimum_rku.io.files import atomic_write, staging_name
from optimum_rku.io.metadata import check_model_dir
from optimum_rku.models.specs import (
    ATTENTION_PROJECTIONS,
    LLAMA_CPP_ARCHITECTURES,
    LLAMA_CPP_NAME_TOKENS,
    OUTPUT_PROJECTION,
    PROJECTIONS,
    SPECS,
    ArchitectureSpec,
    LlamaCppArchitecture,
)

logger = logging.getLogger(__name__)

#: output weight types: `q8_0` quantizes 2-D weights whose rows are a multiple of 32 (others stay f16); 1-D stay f32
GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0")
_SKIPPED = ("rotary_emb.inv_freq",)


@dataclass
class LayerWidths:
    """Attention heads, KV heads and FFN channels of one decoder layer."""

    heads: int
    kv_heads: int
    ffn: int


@dataclass
class TensorPlan:
    """One tensor of the output: where it comes from and what is done to it on the way."""

    source: str
    name: str
    shape: tuple[int, ...]
    qtype: str
    permute_heads: int | None = None
    add: float = 0.0
    scale: float = 1.0
    #: (start, stop) rows of `source` (one logical projection of a fused module), or None for all of it
    rows: tuple[int, int] | None = None


@dataclass
class GGUFPlan:
    """Everything `export_gguf` will write, computed and checked before any weight is read."""

    checkpoint: Path
    family: str
    arch: str
    dtype: str
    layers: list[LayerWidths]
    head_dim: int
    hidden_size: int
    vocab_size: int
    context_length: int
    tensors: list[TensorPlan]
    vocab: Vocab
    config: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def per_layer(self) -> bool:
        return len({(w.heads, w.kv_heads, w.ffn) for w in self.layers}) > 1

    def summary(self) -> str:
        """A few lines for the CLI: architecture, widths, tokenizer, notes."""
        ffn = [w.ffn for w in self.layers]
        heads = [w.heads for w in self.layers]
        kv = [w.kv_heads for w in self.layers]
        width = lambda v: str(v[0]) if len(set(v)) == 1 else str(v)  # noqa: E731
        lines = [
            f"llama.cpp architecture: {self.arch} ({self.family} checkpoint, "
            f"{'per-layer widths' if self.per_layer else 'uniform widths'}), {len(self.layers)} layers, "
            f"weights {self.dtype}",
            f"FFN widths {width(ffn)}, heads {width(heads)}, KV heads {width(kv)}, head_dim {self.head_dim}",
            f"tokenizer: {self.vocab.source}",
        ]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])

    def fallbacks(self, quantize: str) -> list[Fallback]:
        """The tensors llama.cpp's quantizer will not give `quantize`'s main type (row length off its block)."""
        return expected_fallbacks({t.name: t.shape for t in self.tensors}, quantize)


class _Checkpoint:
    """config.json, optional rku_config.json and the safetensors headers of a checkpoint directory."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        meta = directory / "rku_config.json"
        self.metadata = json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else {}
        self.files = sorted(directory.glob("*.safetensors"))
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.where: dict[str, Path] = {}
        self._nonzero: dict[tuple[str, tuple[int, int] | None], bool] = {}
        from safetensors import safe_open

        for file in self.files:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():
                    self.shapes[name] = tuple(handle.get_slice(name).get_shape())
                    self.where[name] = file

    def tensor(self, name: str):
        """One tensor as float32 numpy (bf16 and f16 sources are widened first)."""
        import torch
        from safetensors import safe_open

        with safe_open(str(self.where[name]), framework="pt") as handle:
            return handle.get_tensor(name).to(torch.float32).numpy()

    def nonzero(self, name: str, rows: tuple[int, int] | None = None) -> bool:
        """Whether a tensor (or a row range of it) has any non-zero value (read once, for biases)."""
        key = (name, rows)
        if key not in self._nonzero:
            array = self.tensor(name)
            self._nonzero[key] = bool((array if rows is None else array[rows[0] : rows[1]]).any())
        return self._nonzero[key]


class _Misfit(Exception):
    """A llama.cpp architecture cannot hold this checkpoint: `reason` completes "llama.cpp's 'x' architecture ...",
    `remedy` says what the user can change."""

    def __init__(self, reason: str, remedy: str):
        super().__init__(reason)
        self.reason, self.remedy = reason, remedy


def _check_inputs(checkpoint_dir: Any, dtype: Any, tokenizer_gguf: Any) -> Path:
    if not isinstance(checkpoint_dir, (str, os.PathLike)):
        raise TypeError(f"checkpoint_dir must be a directory path, got {type(checkpoint_dir).__name__}.")
    if dtype not in GGUF_DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; allowed: {', '.join(map(repr, GGUF_DTYPES))}.")
    if tokenizer_gguf is not None and not isinstance(tokenizer_gguf, (str, os.PathLike)):
        raise TypeError(f"tokenizer_gguf must be a path to a .gguf file or None, got {type(tokenizer_gguf).__name__}.")
    return check_model_dir(
        checkpoint_dir,
        ("config.json",),
        "a saved model directory",
        "save one with RKUPruner.save_pretrained, `optimum-rku prune` or `optimum-rku import-gguf`",
    )


def _exportable_spec(config: dict) -> ArchitectureSpec:
    """The spec of the checkpoint's family, or a ValueError listing the families GGUF export supports."""
    family = config.get("model_type")
    spec = SPECS.get(family)
    if spec is None or spec.gguf is None:
        exportable = [repr(name) for name, other in SPECS.items() if other.gguf is not None]
        raise ValueError(f"GGUF export supports model_type {', '.join(exportable)}; got {family!r}.")
    return spec


def _module_name(spec: ArchitectureSpec, layer: int, projection: str, suffix: str = "weight") -> str:
    """The checkpoint tensor holding a logical projection of one layer (its fused module where the family fuses it)."""
    part = spec.attention if projection in ATTENTION_PROJECTIONS else spec.mlp
    return f"{spec.decoder}.layers.{layer}.{part}.{spec.module_name(projection)}.{suffix}"


def _projection_rows(projection: str, widths: LayerWidths, head_dim: int, hidden: int) -> int:
    if projection == "q_proj":
        return widths.heads * head_dim
    if projection in ("k_proj", "v_proj"):
        return widths.kv_heads * head_dim
    if projection in ("gate_proj", "up_proj"):
        return widths.ffn
    return hidden


def _layer_widths(ckpt: _Checkpoint, spec: ArchitectureSpec, n_layers: int, head_dim: int) -> list[LayerWidths]:
    """Widths read from the weights (o_proj / down_proj inputs, the rows of k_proj's module), checked against
    config.json (top level or `per_layer_config`) and against the rows of every projection module."""
    config = ckpt.config
    hidden = int(config["hidden_size"])
    per_layer = config.get("per_layer_config") or {}
    if isinstance(per_layer, list):
        per_layer = dict(enumerate(per_layer))
    # transformers writes the keys zero-padded to sort ("00", "01", ... past 10 layers)
    per_layer = {int(key): layer for key, layer in per_layer.items()}
    widths = []
    for i in range(n_layers):
        modules = {p: _module_name(spec, i, p) for p in PROJECTIONS}
        absent = [name for name in dict.fromkeys(modules.values()) if name not in ckpt.shapes]
        if absent:
            raise ValueError(f"{str(ckpt.directory)!r} has no tensor {absent[0]!r}; the checkpoint is incomplete.")
        o_in = ckpt.shapes[modules[OUTPUT_PROJECTION["attn"]]][1]
        k_parts = spec.fused.get(spec.module_name("k_proj"), ("k_proj",))
        k_rows = ckpt.shapes[modules["k_proj"]][0] - (o_in if "q_proj" in k_parts else 0)
        k_rows //= sum(p in ("k_proj", "v_proj") for p in k_parts)
        found = LayerWidths(o_in // head_dim, k_rows // head_dim, ckpt.shapes[modules[OUTPUT_PROJECTION["ffn"]]][1])
        layer_config = {**config, **per_layer.get(i, {})}
        said = LayerWidths(
            int(layer_config["num_attention_heads"]),
            int(layer_config.get("num_key_value_heads") or layer_config["num_attention_heads"]),
            int(layer_config["intermediate_size"]),
        )
        wrong = []
        for module in dict.fromkeys(modules.values()):
            name = module.split(".")[-2]
            expected = sum(_projection_rows(p, said, head_dim, hidden) for p in spec.fused.get(name, (name,)))
            if ckpt.shapes[module][0] != expected:
                wrong.append(f"{name} has {ckpt.shapes[module][0]} rows (expected {expected})")
        if o_in % head_dim or found != said or wrong:
            raise ValueError(
                f"Layer {i} of {str(ckpt.directory)!r}: config.json says {said} (head_dim {head_dim}) but the weights "
                f"have {o_in} o_proj and {found.ffn} down_proj input channels" + "".join(f", {w}" for w in wrong) + "."
            )
        if min(found.heads, found.kv_heads, found.ffn) < 1 or found.heads % found.kv_heads:
            raise ValueError(f"Layer {i} of {str(ckpt.directory)!r} has widths {found}, which llama.cpp cannot build.")
        widths.append(found)
    return widths


def _rope(ckpt: _Checkpoint, loaded: Any, arch: LlamaCppArchitecture, head_dim: int) -> tuple[dict[str, Any], Any]:
    """(rope keys, extra tensors by GGUF name) for the rotary settings as transformers resolves them."""
    params = dict(getattr(loaded, "rope_parameters", None) or {})
    keys: dict[str, Any] = {}
    if params and "rope_type" not in params and all(isinstance(v, dict) for v in params.values()):
        if len({json.dumps(v, sort_keys=True) for v in params.values()}) == 1:
            params = next(iter(params.values()))
        elif arch.sliding_rope_base and set(params) == {"sliding_attention", "full_attention"}:
            sliding = params["sliding_attention"]
            if sliding.get("rope_type", "default") != "default":
                raise _Misfit(f"never scales the rotary of sliding-window layers; this checkpoint's is {sliding}", "")
            keys["freq_base_swa"] = float(sliding.get("rope_theta", 10000.0))
            params = params["full_attention"]
        else:
            raise _Misfit(
                f"uses one rotary setting for every layer; this checkpoint has one per layer type ({params})", ""
            )
    if not params:
        config = ckpt.config
        params = dict(config.get("rope_scaling") or {})
        params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
        params.setdefault("rope_type", params.get("type", "default"))
    factor = float(params.get("partial_rotary_factor") or ckpt.config.get("partial_rotary_factor") or 1.0)
    keys["dimensions"] = int(head_dim * factor)
    if arch.interleaved_rope and keys["dimensions"] != head_dim:
        raise _Misfit(
            f"rotates whole heads; this checkpoint rotates {keys['dimensions']} of every {head_dim} head channels",
            "keep every attention head (targets='mlp') and prune with allocation='uniform', so that the family's own "
            "architecture holds it",
        )
    keys["freq_base"] = float(params.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        return keys, {}
    if rope_type == "linear":
        keys["linear_factor"] = float(params["factor"])
        return keys, {}
    if rope_type == "longrope" and arch.longrope:
        import numpy as np
        import torch
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        _, attention = ROPE_INIT_FUNCTIONS["longrope"](loaded, torch.device("cpu"))  # transformers' own attn factor
        original = int(params["original_max_position_embeddings"])
        keys["longrope"] = {"attn_factor": float(attention), "original_context": original}
        factors = {
            f"rope_factors_{n}.weight": np.asarray(params[f"{n}_factor"], np.float32) for n in ("long", "short")
        }
        if any(f.shape != (keys["dimensions"] // 2,) for f in factors.values()):
            raise ValueError(f"longrope factors must have {keys['dimensions'] // 2} values each; got {params}.")
        return keys, factors
    if rope_type == "llama3" and arch.interleaved_rope:
        import torch
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](loaded, torch.device("cpu"))
        dim = scaled.numel() * 2
        base = 1.0 / (keys["freq_base"] ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        return keys, {"rope_freqs.weight": (base / scaled.to(torch.float64)).to(torch.float32).numpy()}
    interleaved = [name for name, other in LLAMA_CPP_ARCHITECTURES.items() if other.interleaved_rope]
    longrope = [name for name, other in LLAMA_CPP_ARCHITECTURES.items() if other.longrope]
    raise _Misfit(
        f"cannot be given rope_type={rope_type!r} by this exporter (supported: 'default', 'linear', 'llama3' for "
        f"{', '.join(map(repr, interleaved))}, 'longrope' for {', '.join(map(repr, longrope))})",
        "",
    )


def _qtype(dtype: str, shape: tuple[int, ...]) -> str:
    if len(shape) == 1 or dtype == "f32":
        return "f32"
    if dtype == "q8_0":
        return "q8_0" if shape[-1] % 32 == 0 else "f16"
    return dtype


def _kind(name: str) -> str:
    """The GGUF tensor kind: `attn_q` for `blk.3.attn_q.weight`, `token_embd` for `token_embd.weight`."""
    return name.split(".")[-2] if name.startswith("blk.") else name.split(".")[0]


def _pieces(source: str, shape: tuple[int, ...], fused: dict[str, tuple], arch: LlamaCppArchitecture, rows_of):
    """(logical name, rows) of what `source` holds: itself, or each logical projection of a fused module that the
    architecture does not read fused."""
    where = fused.get(source)
    if where is None or where[2] in arch.fused:
        return [(source, None)]
    layer, module, parts, suffix = where
    pieces, start = [], 0
    for part in parts:
        stop = start + rows_of(layer, part)
        pieces.append((source[: -len(f"{module}.{suffix}")] + f"{part}.{suffix}", (start, stop)))
        start = stop
    if start != shape[0]:
        raise ValueError(f"{source} has {shape[0]} rows; its projections {parts} need {start}.")
    return pieces


def _plan_for(
    ckpt: _Checkpoint,
    spec: ArchitectureSpec,
    loaded: Any,
    arch: LlamaCppArchitecture,
    widths: list[LayerWidths],
    head_dim: int,
    dtype: str,
) -> tuple[list[TensorPlan], dict[str, Any], Any]:
    """(tensors, rope keys, generated tensors) of this checkpoint in `arch`, or a _Misfit saying why it cannot."""
    import gguf

    _check_fits(ckpt.config, spec, arch, widths, head_dim)
    rope_keys, generated = _rope(ckpt, loaded, arch, head_dim)
    n_layers = len(widths)
    names = gguf.get_tensor_name_map(next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch.name), n_layers)
    tensors = _checkpoint_tensors(ckpt, spec, loaded, arch, widths, head_dim, dtype, names)
    _fold_query_scale(tensors, ckpt.config, spec, arch, widths, head_dim)
    for name, array in generated.items():  # written after the checkpoint's tensors, in f32
        tensors.append(TensorPlan(source="<generated>", name=name, shape=array.shape, qtype="f32"))
    return tensors, rope_keys, generated


def _check_fits(
    config: dict, spec: ArchitectureSpec, arch: LlamaCppArchitecture, widths: list[LayerWidths], head_dim: int
) -> None:
    """Raise a _Misfit when `arch` cannot build these widths, fused projections or soft-capping settings."""
    hidden = int(config["hidden_size"])
    if len({(w.heads, w.kv_heads, w.ffn) for w in widths}) > 1 and not arch.per_layer_widths:
        raise _Misfit("builds every layer with one FFN width and one head count", "prune with allocation='uniform'")
    if arch.query_width_is_hidden and any(w.heads * head_dim != hidden for w in widths):
        raise _Misfit(
            f"sizes q and o as hidden_size ({hidden}); this checkpoint keeps {widths[0].heads} heads x {head_dim}",
            "keep every attention head (prune with targets='mlp')",
        )
    missing = [group for group in arch.fused if group not in spec.fused.values()]
    if missing:
        raise _Misfit(f"reads {'+'.join(missing[0])} as one fused tensor, which this family keeps apart", "")
    for key, value in config.items():
        if key.endswith("_softcapping") and value is not None and key not in arch.softcapping:
            raise _Misfit(f"does not apply {key} (this checkpoint sets {value})", "")
    for key, always in arch.softcapping.items():
        if always and config.get(key) is None:
            raise _Misfit(f"always applies {key}; this checkpoint sets it to None", "")


def _checkpoint_tensors(
    ckpt: _Checkpoint,
    spec: ArchitectureSpec,
    loaded: Any,
    arch: LlamaCppArchitecture,
    widths: list[LayerWidths],
    head_dim: int,
    dtype: str,
    names: Any,
) -> list[TensorPlan]:
    """A TensorPlan per tensor `arch` reads (fused modules split as it reads them), or a _Misfit for one it cannot."""
    hidden = int(ckpt.config["hidden_size"])
    fused = _fused_modules(spec, len(widths))
    rows_of = lambda layer, part: _projection_rows(part, widths[layer], head_dim, hidden)  # noqa: E731
    tied = bool(getattr(loaded, "tie_word_embeddings", False))
    tensors: list[TensorPlan] = []
    for source, shape in ckpt.shapes.items():
        if source.endswith(_SKIPPED):
            continue
        if source == "lm_head.weight" and (tied or arch.tied_output):
            if not tied:
                untied = "always reuses the token embeddings as the output matrix; this checkpoint's lm_head is untied"
                raise _Misfit(untied, "")
            continue
        for logical, rows in _pieces(source, shape, fused, arch, rows_of):
            name = names.get_name(logical, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise _Misfit(f"has no place for tensor {logical!r}", "")
            kind = _kind(name)
            if name.endswith(".bias"):
                if not ckpt.nonzero(source, rows):
                    continue  # an all-zero bias (a family flag that gave q/k/v biases too) changes nothing
                if kind not in arch.biases:
                    raise _Misfit(
                        f"does not load the non-zero bias {logical} (its loader creates biases on "
                        f"{', '.join(sorted(arch.biases))} only)",
                        "prune with bias_compensation=False (non-zero output biases come from bias compensation)",
                    )
            piece = shape if rows is None else (rows[1] - rows[0], *shape[1:])
            plan = TensorPlan(source=source, name=name, shape=piece, qtype=_qtype(dtype, piece), rows=rows)
            if arch.interleaved_rope and kind in ("attn_q", "attn_k"):
                layer = widths[int(name.split(".")[1])]
                plan.permute_heads = layer.heads if kind == "attn_q" else layer.kv_heads
            if spec.gguf.norm_shift and logical.endswith("norm.weight"):  # Gemma: x * (1 + w); llama.cpp: x * w
                plan.add = spec.gguf.norm_shift
            tensors.append(plan)
    return tensors


def _fused_modules(spec: ArchitectureSpec, n_layers: int) -> dict[str, tuple]:
    """(layer, module, parts, suffix) by checkpoint tensor name, for every weight and bias of a fused module."""
    fused = {}
    for i in range(n_layers):
        for module, parts in spec.fused.items():
            for suffix in ("weight", "bias"):
                fused[_module_name(spec, i, parts[0], suffix)] = (i, module, parts, suffix)
    return fused


def _fold_query_scale(
    tensors: list[TensorPlan],
    config: dict,
    spec: ArchitectureSpec,
    arch: LlamaCppArchitecture,
    widths: list[LayerWidths],
    head_dim: int,
) -> None:
    """Fold the family's query scale into q (or q's norm): llama.cpp applies its own, so the weights carry the rest."""
    field_name = spec.gguf.query_scale_field
    if not field_name:
        return
    hidden = int(config["hidden_size"])
    wanted = float(config.get(field_name) or head_dim) ** -0.5
    wide = len(widths) == arch.wide_scale_layers
    used = (hidden // widths[0].heads) ** -0.5 if wide else head_dim**-0.5
    scale = wanted / used
    if not math.isclose(scale, 1.0):
        normed = any(_kind(t.name) == "attn_q_norm" for t in tensors)  # q is normalized after its projection
        for tensor in tensors:
            if _kind(tensor.name) == ("attn_q_norm" if normed else "attn_q"):
                tensor.scale = scale


def _route(
    ckpt: _Checkpoint, spec: ArchitectureSpec, loaded: Any, widths: list[LayerWidths], head_dim: int, dtype: str
) -> tuple[LlamaCppArchitecture, list[TensorPlan], dict[str, Any], Any]:
    """The first candidate architecture that holds the checkpoint (the family's own, then its fallback; for
    per-layer widths its per-layer one), with the plan in it, or one ValueError naming what to change."""
    family = spec.model_type
    uniform = len({(w.heads, w.kv_heads, w.ffn) for w in widths}) == 1
    gguf_spec = spec.gguf
    candidates = [gguf_spec.architecture] + ([gguf_spec.fallback] if gguf_spec.fallback else [])
    if not uniform:
        if gguf_spec.per_layer is None:
            able = [name for name, other in SPECS.items() if other.gguf is not None and other.gguf.per_layer]
            routes = sorted({SPECS[name].gguf.per_layer for name in able})
            raise ValueError(
                f"This {family} checkpoint has per-layer widths (allocation='global'), which llama.cpp's "
                f"{gguf_spec.architecture} architecture cannot represent (it builds every layer with one FFN width "
                f"and one head count). Per-layer widths are exported for {', '.join(able)} (llama.cpp's "
                f"{', '.join(map(repr, routes))} architecture); for {family}, prune with allocation='uniform' "
                "(--allocation uniform) to export to GGUF, or run this checkpoint with transformers."
            )
        candidates = [gguf_spec.per_layer]
    misfits = []
    for name in candidates:
        arch = LLAMA_CPP_ARCHITECTURES[name]
        try:
            return (arch, *_plan_for(ckpt, spec, loaded, arch, widths, head_dim, dtype))
        except _Misfit as misfit:
            misfits.append((name, misfit))
    reasons = "; ".join(f"llama.cpp's {name!r} architecture {m.reason}" for name, m in misfits)
    remedies = " or ".join(dict.fromkeys(m.remedy for _, m in misfits if m.remedy))
    advice = f"To export it, {remedies}; or run" if remedies else "Run"
    raise ValueError(
        f"This {spec.family} checkpoint ({str(ckpt.directory)!r}) cannot be exported to GGUF: {reasons}. "
        f"{advice} this checkpoint with transformers."
    )


def plan_gguf_export(
    checkpoint_dir: str | os.PathLike,
    dtype: str = "f16",
    *,
    pre_tokenizer: str | None = None,
    tokenizer_gguf: str | os.PathLike | None = None,
) -> GGUFPlan:
    """Check a checkpoint and decide the GGUF architecture, hyper-parameters, tensors and tokenizer (no weights read
    but biases).

    Raises a ValueError naming what is supported for families, widths, biases, rotary settings or tokenizers that
    llama.cpp cannot represent.
    """
    from optimum_rku.io.checkpoint import load_rku_config

    directory = _check_inputs(checkpoint_dir, dtype, tokenizer_gguf)
    pre_tokenizer = check_pre_tokenizer(pre_tokenizer)
    ckpt = _Checkpoint(directory)
    config = ckpt.config
    spec = _exportable_spec(config)
    loaded = load_rku_config(directory)
    if getattr(loaded, "is_heterogeneous", False):  # transformers' rotary functions read num_attention_heads as a
        loaded.allow_global_per_layer_attribute_access = True  # fallback for head_dim, which checkpoints always set
    n_layers = int(config["num_hidden_layers"])
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // int(config["num_attention_heads"]))
    widths = _layer_widths(ckpt, spec, n_layers, head_dim)
    arch, tensors, rope_keys, generated = _route(ckpt, spec, loaded, widths, head_dim, dtype)
    vocab_size = int(config["vocab_size"])
    context = int(config.get("max_position_embeddings", 2048))
    notes = [
        f"{t.name} kept f16 (q8_0 needs rows that are a multiple of 32; it has {t.shape[-1]})"
        for t in tensors
        if dtype == "q8_0" and t.qtype == "f16"
    ]
    sliding = _sliding(config, loaded, arch, context, notes)
    if "longrope" in rope_keys:
        notes.append(_longrope_note(rope_keys["longrope"]["original_context"]))
    if tokenizer_gguf is not None:
        vocab = read_gguf_tokenizer(Path(tokenizer_gguf).expanduser(), vocab_size, pre_tokenizer)
    else:
        vocab = read_byte_level_bpe(directory, vocab_size, pre_tokenizer)
    meta = ckpt.metadata
    name = _general_name(_model_name(directory, meta), vocab, notes)
    metadata = {
        "rope": rope_keys,
        "generated": generated,
        "softcapping": {key: float(config[key]) for key in arch.softcapping if config.get(key) is not None},
        "sliding": sliding,
        "name": name,
        "rku": {k: meta[k] for k in ("optimum_rku_version", "base_model") if k in meta},
        "pruning": meta.get("pruning_config") or {},
    }
    return GGUFPlan(
        checkpoint=directory,
        family=spec.model_type,
        arch=arch.name,
        dtype=dtype,
        layers=widths,
        head_dim=head_dim,
        hidden_size=hidden,
        vocab_size=vocab_size,
        context_length=context,
        tensors=tensors,
        vocab=vocab,
        config=config,
        metadata=metadata,
        notes=notes,
    )


def _sliding(config: dict, loaded: Any, arch: LlamaCppArchitecture, context: int, notes: list[str]) -> dict | None:
    """Sliding-window keys for `arch` (window, per-layer pattern), or None, with a note when they are lost."""
    window = config.get("sliding_window")
    types = list(getattr(loaded, "layer_types", None) or [])
    slides = bool(window) and int(window) < context and config.get("use_sliding_window", True) is not False
    slides = slides and (not types or "sliding_attention" in types)
    if arch.sliding_window:
        return {"window": int(window or context), "pattern": [t == "sliding_attention" for t in types] or None}
    if slides:
        notes.append(f"sliding_window={window} is not represented: outputs match transformers up to {window} tokens")
    return None


def _longrope_note(original: int) -> str:
    """Where llama.cpp and transformers pick different longrope factors (their context thresholds differ)."""
    return (
        f"longrope: llama.cpp uses the long rotary factors whenever its context (-c, rounded up to a multiple of "
        f"256) exceeds {original} tokens, transformers for sequences longer than that; with -c {original} or "
        "less both use the short ones on shorter sequences"
    )


def _general_name(name: str, vocab: Vocab, notes: list[str]) -> str | None:
    """`general.name`, or None (with a note) where llama.cpp would look up tokens this tokenizer lacks by name."""
    for words, tokens in LLAMA_CPP_NAME_TOKENS.items():
        absent = [t for t in tokens if t not in set(vocab.tokens)]
        if any(word in name.lower() for word in words) and absent:
            notes.append(
                f"general.name {name!r} left out: llama.cpp looks up the tokens {', '.join(absent)} for models so "
                "named and this tokenizer lacks them"
            )
            name = None
    return name


def _model_name(directory: Path, meta: dict) -> str:
    base = str(meta.get("base_model") or "")
    alias = provider_for(metadata=meta).model_alias if meta else None
    stem = alias or (Path(base).name if base else directory.resolve().name)
    return f"{stem}-rku" if meta else stem


def _check_output(output: Any, directory: Path, overwrite: bool, tokenizer_gguf: Any) -> Path:
    if not isinstance(output, (str, os.PathLike)):
        raise TypeError(f"output must be a file path, got {type(output).__name__}.")
    target = Path(output).expanduser()
    if target.suffix != ".gguf":
        raise ValueError(f"output {str(output)!r} must end in .gguf.")
    resolved = target.resolve()
    if resolved == directory.resolve():
        raise ValueError(f"output {str(output)!r} is the checkpoint directory; choose a file path.")
    if tokenizer_gguf is not None and resolved == Path(tokenizer_gguf).expanduser().resolve():
        raise ValueError(f"output {str(output)!r} is the tokenizer_gguf input; choose another path.")
    if target.exists() and (target.is_dir() or not overwrite):
        raise ValueError(f"output {str(output)!r} exists; pass overwrite=True (--overwrite) to replace it.")
    return target


def _write_hparams(writer, plan: GGUFPlan) -> None:
    import gguf

    widths = plan.layers
    uniform = not plan.per_layer
    if plan.metadata["name"] is not None:
        writer.add_name(plan.metadata["name"])
    writer.add_context_length(plan.context_length)
    writer.add_embedding_length(plan.hidden_size)
    writer.add_block_count(len(widths))
    writer.add_feed_forward_length(widths[0].ffn if uniform else [w.ffn for w in widths])
    writer.add_head_count(widths[0].heads if uniform else [w.heads for w in widths])
    writer.add_head_count_kv(widths[0].kv_heads if uniform else [w.kv_heads for w in widths])
    writer.add_key_length(plan.head_dim)
    writer.add_value_length(plan.head_dim)
    rope = plan.metadata["rope"]
    writer.add_rope_dimension_count(rope["dimensions"])
    writer.add_rope_freq_base(rope["freq_base"])
    if "linear_factor" in rope:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["linear_factor"])
    if "longrope" in rope:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
        writer.add_rope_scaling_attn_factors(rope["longrope"]["attn_factor"])
        writer.add_rope_scaling_orig_ctx_len(rope["longrope"]["original_context"])
    if "freq_base_swa" in rope:
        writer.add_rope_freq_base_swa(rope["freq_base_swa"])
    config = plan.config
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(plan.vocab_size)
    for key, value in plan.metadata["softcapping"].items():
        getattr(writer, f"add_{key}")(value)  # gguf-py names its writers after the config keys
    sliding = plan.metadata["sliding"]
    if sliding is not None:
        writer.add_sliding_window(sliding["window"])
        if sliding["pattern"]:
            writer.add_sliding_window_pattern(sliding["pattern"])
    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[plan.dtype]
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value in plan.metadata["rku"].items():
        writer.add_string(f"optimum_rku.{key}", str(value))
    for key in ("sparsity", "allocation", "method"):
        if key in plan.metadata["pruning"]:
            writer.add_string(f"optimum_rku.{key}", str(plan.metadata["pruning"][key]))


_GGML_TYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}


def _encode(array, qtype: str):
    """(data, numpy dtype the writer expects, ggml type) for one float32 array."""
    import gguf
    import numpy as np

    ggml = getattr(gguf.GGMLQuantizationType, _GGML_TYPES[qtype])
    if qtype == "f32":
        return np.ascontiguousarray(array, dtype=np.float32), ggml
    if qtype == "f16":
        return np.ascontiguousarray(array, dtype=np.float16), ggml
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), ggml), ggml


def _transform(plan: TensorPlan, array):
    if plan.permute_heads:
        rows = array.shape[0]
        heads = plan.permute_heads
        array = array.reshape(heads, 2, rows // heads // 2, *array.shape[1:]).swapaxes(1, 2).reshape(array.shape)
    if plan.add:
        array = array + plan.add
    if plan.scale != 1.0:
        array = array * plan.scale
    return array


def _write(plan: GGUFPlan, tmp: Path) -> None:
    """Stream the plan's tensors, one at a time, into the GGUF file `tmp`."""
    import gguf
    import numpy as np

    from optimum_rku.export.vocab import write_vocab

    ckpt = _Checkpoint(plan.checkpoint)
    writer = gguf.GGUFWriter(str(tmp), plan.arch)
    _write_hparams(writer, plan)
    write_vocab(writer, plan.vocab)
    for tensor in plan.tensors:
        if tensor.qtype == "f32":
            dtype_np, nbytes = np.float32, 4 * math.prod(tensor.shape)
        elif tensor.qtype == "f16":
            dtype_np, nbytes = np.float16, 2 * math.prod(tensor.shape)
        else:
            ggml = getattr(gguf.GGMLQuantizationType, _GGML_TYPES[tensor.qtype])
            byte_shape = gguf.quant_shape_to_byte_shape(tensor.shape, ggml)
            writer.add_tensor_info(tensor.name, byte_shape, np.dtype(np.uint8), math.prod(byte_shape), ggml)
            continue
        writer.add_tensor_info(tensor.name, tensor.shape, np.dtype(dtype_np), nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in plan.tensors:
        generated = tensor.source == "<generated>"
        array = plan.metadata["generated"][tensor.name] if generated else ckpt.tensor(tensor.source)
        if tensor.rows is not None:
            array = array[tensor.rows[0] : tensor.rows[1]]
        data, _ = _encode(_transform(tensor, array), tensor.qtype)
        writer.write_tensor_data(data)
    writer.close()


def export_gguf(
    checkpoint_dir: str | os.PathLike,
    output: str | os.PathLike,
    dtype: str = "f16",
    *,
    pre_tokenizer: str | None = None,
    tokenizer_gguf: str | os.PathLike | None = None,
    overwrite: bool = False,
    modelfile: bool = False,
    quantize: str | None = None,
    threads: int | None = None,
) -> Path:
    """Write `checkpoint_dir` (a saved optimum-rku or transformers checkpoint) as one GGUF file for llama.cpp.

    `dtype`: "f32", "f16" (default), "bf16" or "q8_0". `quantize` ("q4_k_m", "q8_0", ...: `QUANT_TYPES`) then runs
    llama.cpp's own quantizer on that float file (needs the `[llamacpp]` extra; `dtype` must be a float type, `threads`
    its threads, default all); `read_types(path)` reports every tensor's type and fallback. `pre_tokenizer` names
    llama.cpp's pre-tokenizer when the one in tokenizer.json is not recognised; `tokenizer_gguf` copies the tokenizer
    of another GGUF of the same base model. `modelfile=True` also writes an Ollama `Modelfile` beside the file
    (`FROM`, the chat template as a Go template, stop tokens; `optimum_rku.export.ollama`). Every file is written to a
    temporary sibling and renamed into place; the checkpoint is never modified.
    """
    directory = _check_inputs(checkpoint_dir, dtype, tokenizer_gguf)
    if quantize is not None:
        quantize = check_quantize(quantize)
        if dtype == "q8_0":
            raise ValueError(f"quantize={quantize!r} starts from float weights: pass dtype 'f32', 'f16' or 'bf16'.")
        require_llama_cpp()
    target = _check_output(output, directory, overwrite, tokenizer_gguf)
    plan = plan_gguf_export(directory, dtype, pre_tokenizer=pre_tokenizer, tokenizer_gguf=tokenizer_gguf)

    reports = []  # the quantizer's type report, read back from the file it wrote

    def write(tmp: Path) -> None:
        if quantize is None:
            return _write(plan, tmp)
        source = tmp.with_name(staging_name(target, suffix=f".{dtype}"))
        try:
            _write(plan, source)
            reports.append(quantize_gguf(source, tmp, quantize, threads))
        finally:
            source.unlink(missing_ok=True)

    atomic_write(target, write)
    logger.info("Wrote %s\n%s", target, plan.summary())
    for report in reports:
        logger.info("\n".join(report.lines()))
    if modelfile:
        from transformers import AutoTokenizer

        from optimum_rku.export.ollama import write_modelfile

        logger.info("Wrote %s", write_modelfile(target, AutoTokenizer.from_pretrained(directory)))
    return target


def describe_gguf(path: str | os.PathLike) -> dict[str, Any]:
    """File name, llama.cpp architecture, weight type, per-layer widths and tensor types / fallbacks, from the header."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch = reader.fields["general.architecture"].contents()
    ffn = reader.fields.get(f"{arch}.feed_forward_length")
    report = types_of(reader)
    return {
        "file": Path(path).name,
        "architecture": arch,
        "dtype": report.file_type.lower(),
        "per_layer": bool(ffn is not None and isinstance(ffn.contents(), list)),
        "types": report.types,
        "fallbacks": report.lines()[1:],  # fallback lines exist for quantized files only
    }


def gguf_files(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """`describe_gguf` of every readable `*.gguf` file at the top of a checkpoint directory (for its model card)."""
    found = []
    for path in sorted(Path(directory).glob("*.gguf")):
        try:
            found.append(describe_gguf(path))
        except (ImportError, OSError, ValueError, KeyError) as err:
            logger.warning("Skipping %s in the model card (%s: %s).", path.name, type(err).__name__, err)
    return found
