"""GGUF export: a saved checkpoint as one GGUF file that llama.cpp (and Ollama, LM Studio, ...) loads.

Uniform checkpoints keep their family's own llama.cpp architecture (`llama` for Llama and Mistral, `qwen2`, `qwen3`,
`gemma2`). Checkpoints with per-layer widths (`allocation="global"`, the default) are written for llama.cpp's `deci`
architecture, which reads `feed_forward_length`, `attention.head_count` and `attention.head_count_kv` as per-layer
arrays and builds every layer with its own widths; its layers are Llama layers (optional q/k/v/o and FFN biases), so
Llama, Mistral and Qwen2 go that way. llama.cpp's qwen3 and gemma2 builders use one width for all layers, so such
per-layer checkpoints fail with an error that names `allocation="uniform"`, before anything is written.

`plan_gguf_export` checks everything from `config.json`, the safetensors headers and the tokenizer (no weights are
read except biases); `export_gguf` then streams one tensor at a time into a temporary file beside the output and
renames it into place, so a failed export leaves nothing behind. Tensor names come from gguf-py's
`get_tensor_name_map` (llama.cpp's own table); llama.cpp's rotary layout for the `llama`/`deci` builders is the
interleaved one, so q/k rows are reordered within each head (a fixed permutation, undone by transformers' GGUF loader).

One file on purpose (over ~450 lines): the export plan and the writer share the tensor naming and per-family
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
from optimum_rku.io.files import atomic_write
from optimum_rku.io.gguf_vocab import Vocab, check_pre_tokenizer, read_byte_level_bpe, read_gguf_tokenizer

logger = logging.getLogger(__name__)

#: output weight types: `q8_0` quantizes 2-D weights whose rows are a multiple of 32 (others stay f16); 1-D stay f32
GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0")
#: model_type -> families exported; per-layer widths only for the first group (llama.cpp `deci`)
PER_LAYER_FAMILIES = ("llama", "mistral", "qwen2")
UNIFORM_ONLY_FAMILIES = ("qwen3", "gemma2")
#: llama.cpp architecture -> the bias tensors its loader accepts (others make the file fail to load)
ARCH_BIASES = {
    "llama": {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"},
    "deci": {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"},
    "qwen2": {"attn_q", "attn_k", "attn_v"},
    "qwen3": {"attn_q", "attn_k", "attn_v"},
    "gemma2": {"attn_q", "attn_k", "attn_v"},
}
#: llama.cpp builders that rotate interleaved pairs (q/k rows are permuted for them)
INTERLEAVED_ROPE = ("llama", "deci")
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


def _check_inputs(checkpoint_dir: Any, dtype: Any, tokenizer_gguf: Any) -> Path:
    if not isinstance(checkpoint_dir, (str, os.PathLike)):
        raise TypeError(f"checkpoint_dir must be a directory path, got {type(checkpoint_dir).__name__}.")
    if dtype not in GGUF_DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; allowed: {', '.join(map(repr, GGUF_DTYPES))}.")
    if tokenizer_gguf is not None and not isinstance(tokenizer_gguf, (str, os.PathLike)):
        raise TypeError(f"tokenizer_gguf must be a path to a .gguf file or None, got {type(tokenizer_gguf).__name__}.")
    directory = Path(checkpoint_dir).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint_dir {str(checkpoint_dir)!r} is not a directory.")
    missing = [] if (directory / "config.json").is_file() else ["config.json"]
    if not any(directory.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise ValueError(
            f"{str(checkpoint_dir)!r} is not a saved model directory (missing {', '.join(missing)}); save one with "
            "RKUPruner.save_pretrained, `optimum-rku prune` or `optimum-rku import-gguf`."
        )
    return directory


def _layer_widths(ckpt: _Checkpoint, n_layers: int, head_dim: int) -> list[LayerWidths]:
    """Widths read from the weights, checked against config.json (top level or `per_layer_config`)."""
    config = ckpt.config
    per_layer = config.get("per_layer_config") or {}
    if isinstance(per_layer, list):
        per_layer = {str(i): layer for i, layer in enumerate(per_layer)}
    widths = []
    for i in range(n_layers):
        prefix = f"model.layers.{i}."
        needed = {p: prefix + p + ".weight" for p in ("self_attn.q_proj", "self_attn.k_proj", "mlp.gate_proj")}
        absent = [name for name in needed.values() if name not in ckpt.shapes]
        if absent:
            raise ValueError(f"{str(ckpt.directory)!r} has no tensor {absent[0]!r}; the checkpoint is incomplete.")
        q_rows = ckpt.shapes[needed["self_attn.q_proj"]][0]
        k_rows = ckpt.shapes[needed["self_attn.k_proj"]][0]
        found = LayerWidths(q_rows // head_dim, k_rows // head_dim, ckpt.shapes[needed["mlp.gate_proj"]][0])
        layer_config = {**config, **per_layer.get(str(i), {})}
        said = LayerWidths(
            int(layer_config["num_attention_heads"]),
            int(layer_config.get("num_key_value_heads") or layer_config["num_attention_heads"]),
            int(layer_config["intermediate_size"]),
        )
        if q_rows % head_dim or k_rows % head_dim or found != said:
            raise ValueError(
                f"Layer {i} of {str(ckpt.directory)!r}: config.json says {said} but the weights have "
                f"q_proj {q_rows} rows, k_proj {k_rows} rows (head_dim {head_dim}) and {found.ffn} FFN channels."
            )
        if min(found.heads, found.kv_heads, found.ffn) < 1 or found.heads % found.kv_heads:
            raise ValueError(f"Layer {i} of {str(ckpt.directory)!r} has widths {found}, which llama.cpp cannot build.")
        widths.append(found)
    return widths


def _route(family: str, widths: list[LayerWidths], head_dim: int, hidden: int) -> str:
    """The llama.cpp architecture for this family and these widths, or a ValueError naming what is supported."""
    uniform = len({(w.heads, w.kv_heads, w.ffn) for w in widths}) == 1
    if family in ("llama", "mistral"):
        return "llama" if uniform else "deci"
    if family == "qwen2":
        if not uniform:
            return "deci"
        return "qwen2" if widths[0].heads * head_dim == hidden else "llama"  # qwen2's builder needs q width == hidden
    if family in UNIFORM_ONLY_FAMILIES:
        if uniform:
            return family
        raise ValueError(
            f"This {family} checkpoint has per-layer widths (allocation='global'), which llama.cpp's {family} "
            "architecture cannot represent (it builds every layer with one FFN width and one head count). Per-layer "
            f"widths are exported for {', '.join(PER_LAYER_FAMILIES)} (llama.cpp's 'deci' architecture); for "
            f"{family}, prune with allocation='uniform' (--allocation uniform) to export to GGUF, or run this "
            "checkpoint with transformers."
        )
    raise ValueError(
        f"GGUF export supports model_type {', '.join(map(repr, PER_LAYER_FAMILIES + UNIFORM_ONLY_FAMILIES))}; "
        f"got {family!r}."
    )


def _rope(ckpt: _Checkpoint, arch: str) -> tuple[dict[str, Any], Any]:
    """(rope keys, extra rope_freqs tensor or None) for the checkpoint's rotary settings."""
    config = ckpt.config
    params = config.get("rope_parameters") or {}
    if params and "rope_type" not in params and all(isinstance(v, dict) for v in params.values()):
        distinct = {json.dumps(v, sort_keys=True) for v in params.values()}
        if len(distinct) > 1:
            raise ValueError(f"Per-layer-type rotary settings {params} cannot be written to GGUF.")
        params = next(iter(params.values()))
    if not params:
        params = dict(config.get("rope_scaling") or {})
        params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
        params.setdefault("rope_type", params.get("type", "default"))
    rope_type = params.get("rope_type", "default")
    keys: dict[str, Any] = {"freq_base": float(params.get("rope_theta", 10000.0))}
    if rope_type == "default":
        return keys, None
    if rope_type == "linear":
        keys["linear_factor"] = float(params["factor"])
        return keys, None
    if rope_type == "llama3" and arch in INTERLEAVED_ROPE:
        import torch
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        from optimum_rku.io.checkpoint import load_rku_config

        loaded = load_rku_config(ckpt.directory)
        scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](loaded, torch.device("cpu"))
        dim = scaled.numel() * 2
        base = 1.0 / (keys["freq_base"] ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        return keys, (base / scaled.to(torch.float64)).to(torch.float32).numpy()
    raise ValueError(
        f"Rotary scaling rope_type={rope_type!r} cannot be exported for llama.cpp's {arch!r} architecture by this "
        "exporter; supported: 'default', 'linear', and 'llama3' (Llama/Mistral/Qwen2 routes)."
    )


def _qtype(dtype: str, shape: tuple[int, ...]) -> str:
    if len(shape) == 1 or dtype == "f32":
        return "f32"
    if dtype == "q8_0":
        return "q8_0" if shape[-1] % 32 == 0 else "f16"
    return dtype


def _gemma2_q_scale(config: dict, n_layers: int, hidden: int, heads0: int, head_dim: int) -> float:
    """Factor folded into q so that llama.cpp's fixed gemma2 attention scale equals transformers' one."""
    wanted = float(config.get("query_pre_attn_scalar") or head_dim) ** -0.5
    used = (hidden / heads0) ** -0.5 if n_layers == 46 else head_dim**-0.5  # llama.cpp: 27B uses n_embd / n_head
    return wanted / used


def plan_gguf_export(
    checkpoint_dir: str | os.PathLike,
    dtype: str = "f16",
    *,
    pre_tokenizer: str | None = None,
    tokenizer_gguf: str | os.PathLike | None = None,
) -> GGUFPlan:
    """Check a checkpoint and decide the GGUF architecture, hyper-parameters, tensors and tokenizer (no weights read).

    Raises a ValueError naming what is supported for families, widths, biases, rotary settings or tokenizers that
    llama.cpp cannot represent.
    """
    import gguf

    directory = _check_inputs(checkpoint_dir, dtype, tokenizer_gguf)
    pre_tokenizer = check_pre_tokenizer(pre_tokenizer)
    ckpt = _Checkpoint(directory)
    config = ckpt.config
    family = config.get("model_type")
    if family not in PER_LAYER_FAMILIES + UNIFORM_ONLY_FAMILIES:
        _route(str(family), [], 0, 0)
    n_layers = int(config["num_hidden_layers"])
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // int(config["num_attention_heads"]))
    widths = _layer_widths(ckpt, n_layers, head_dim)
    arch = _route(family, widths, head_dim, hidden)
    vocab_size = int(config["vocab_size"])
    notes: list[str] = []

    names = gguf.get_tensor_name_map(next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch), n_layers)
    tied = bool(config.get("tie_word_embeddings", family == "gemma2"))
    tensors: list[TensorPlan] = []
    q_scale = _gemma2_q_scale(config, n_layers, hidden, widths[0].heads, head_dim) if arch == "gemma2" else 1.0
    for source, shape in ckpt.shapes.items():
        if source.endswith(_SKIPPED):
            continue
        if source == "lm_head.weight" and (tied or arch == "gemma2"):
            if not tied:
                raise ValueError("llama.cpp's gemma2 architecture ties lm_head to the embeddings; this one is untied.")
            continue
        name = names.get_name(source, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(
                f"Tensor {source!r} of {str(directory)!r} has no place in llama.cpp's {arch!r} architecture; "
                "the exporter writes every weight or nothing."
            )
        kind = name.split(".")[-2] if name.startswith("blk.") else name.split(".")[0]
        if name.endswith(".bias"):
            if not ckpt.tensor(source).any():
                continue  # an all-zero bias (a family flag that gave q/k/v biases too) changes nothing
            if kind not in ARCH_BIASES[arch]:
                raise ValueError(
                    f"{source} is a non-zero bias, which llama.cpp's {arch!r} architecture does not load (it accepts "
                    f"biases on {', '.join(sorted(ARCH_BIASES[arch]))}). It usually comes from bias_compensation; "
                    "prune with bias_compensation=False, or (Llama) keep the per-layer export, to get a GGUF."
                )
        plan = TensorPlan(source=source, name=name, shape=shape, qtype=_qtype(dtype, shape))
        if arch in INTERLEAVED_ROPE and kind in ("attn_q", "attn_k"):
            layer = widths[int(name.split(".")[1])]
            plan.permute_heads = layer.heads if kind == "attn_q" else layer.kv_heads
        if arch == "gemma2" and source.endswith("norm.weight"):
            plan.add = 1.0  # Gemma's RMSNorm multiplies by (1 + weight); llama.cpp's by weight
        if arch == "gemma2" and kind == "attn_q" and not math.isclose(q_scale, 1.0):
            plan.scale = q_scale
        if dtype == "q8_0" and plan.qtype == "f16":
            notes.append(f"{name} kept f16 (q8_0 needs rows that are a multiple of 32; it has {shape[-1]})")
        tensors.append(plan)
    rope_keys, rope_freqs = _rope(ckpt, arch)
    if rope_freqs is not None:
        tensors.append(
            TensorPlan(source="<rope_freqs>", name="rope_freqs.weight", shape=rope_freqs.shape, qtype="f32")
        )
    window = config.get("sliding_window")
    if arch != "gemma2" and window and int(window) < int(config.get("max_position_embeddings", 0)):
        if family != "qwen2" or config.get("use_sliding_window"):
            notes.append(
                f"sliding_window={window} is not represented: outputs match transformers up to {window} tokens"
            )

    if tokenizer_gguf is not None:
        vocab = read_gguf_tokenizer(Path(tokenizer_gguf).expanduser(), vocab_size, pre_tokenizer)
    else:
        vocab = read_byte_level_bpe(directory, vocab_size, pre_tokenizer)
    meta = ckpt.metadata
    metadata = {
        "rope": rope_keys,
        "rope_freqs": rope_freqs,
        "name": _model_name(directory, meta),
        "rku": {k: meta[k] for k in ("optimum_rku_version", "base_model") if k in meta},
        "pruning": meta.get("pruning_config") or {},
    }
    return GGUFPlan(
        checkpoint=directory,
        family=family,
        arch=arch,
        dtype=dtype,
        layers=widths,
        head_dim=head_dim,
        hidden_size=hidden,
        vocab_size=vocab_size,
        context_length=int(config.get("max_position_embeddings", 2048)),
        tensors=tensors,
        vocab=vocab,
        config=config,
        metadata=metadata,
        notes=notes,
    )


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
    writer.add_name(plan.metadata["name"])
    writer.add_context_length(plan.context_length)
    writer.add_embedding_length(plan.hidden_size)
    writer.add_block_count(len(widths))
    writer.add_feed_forward_length(widths[0].ffn if uniform else [w.ffn for w in widths])
    writer.add_head_count(widths[0].heads if uniform else [w.heads for w in widths])
    writer.add_head_count_kv(widths[0].kv_heads if uniform else [w.kv_heads for w in widths])
    writer.add_key_length(plan.head_dim)
    writer.add_value_length(plan.head_dim)
    writer.add_rope_dimension_count(plan.head_dim)
    rope = plan.metadata["rope"]
    writer.add_rope_freq_base(rope["freq_base"])
    if "linear_factor" in rope:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["linear_factor"])
    config = plan.config
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(plan.vocab_size)
    if plan.arch == "gemma2":
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            if config.get(key) is None:
                raise ValueError(f"llama.cpp's gemma2 always applies {key}; this checkpoint sets it to None.")
        writer.add_attn_logit_softcapping(float(config["attn_logit_softcapping"]))
        writer.add_final_logit_softcapping(float(config["final_logit_softcapping"]))
        writer.add_sliding_window(int(config.get("sliding_window") or 4096))
        types = config.get("layer_types")
        if types:
            writer.add_sliding_window_pattern([t == "sliding_attention" for t in types])
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


def export_gguf(
    checkpoint_dir: str | os.PathLike,
    output: str | os.PathLike,
    dtype: str = "f16",
    *,
    pre_tokenizer: str | None = None,
    tokenizer_gguf: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `checkpoint_dir` (a saved optimum-rku or transformers checkpoint) as one GGUF file for llama.cpp.

    `dtype`: "f32", "f16" (default), "bf16" or "q8_0". `pre_tokenizer` names llama.cpp's pre-tokenizer when the one in
    tokenizer.json is not recognised; `tokenizer_gguf` copies the tokenizer of another GGUF of the same base model.
    The file is written to a temporary sibling and renamed into place; the checkpoint is never modified.
    """
    import gguf

    directory = _check_inputs(checkpoint_dir, dtype, tokenizer_gguf)
    target = _check_output(output, directory, overwrite, tokenizer_gguf)
    plan = plan_gguf_export(directory, dtype, pre_tokenizer=pre_tokenizer, tokenizer_gguf=tokenizer_gguf)
    ckpt = _Checkpoint(directory)

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), plan.arch)
        _write_hparams(writer, plan)
        from optimum_rku.io.gguf_vocab import write_vocab

        write_vocab(writer, plan.vocab)
        import numpy as np

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
            array = plan.metadata["rope_freqs"] if tensor.source == "<rope_freqs>" else ckpt.tensor(tensor.source)
            data, _ = _encode(_transform(tensor, array), tensor.qtype)
            writer.write_tensor_data(data)
        writer.close()

    atomic_write(target, write)
    logger.info("Wrote %s\n%s", target, plan.summary())
    return target


def describe_gguf(path: str | os.PathLike) -> dict[str, Any]:
    """File name, llama.cpp architecture, weight type and whether widths are per layer, read from a GGUF header."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch = reader.fields["general.architecture"].contents()
    ffn = reader.fields.get(f"{arch}.feed_forward_length")
    file_type = reader.fields.get("general.file_type")
    names = {int(v): k for k, v in {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}.items()}
    return {
        "file": Path(path).name,
        "architecture": arch,
        "dtype": names.get(int(file_type.contents()), "other") if file_type is not None else "unknown",
        "per_layer": bool(ffn is not None and isinstance(ffn.contents(), list)),
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
