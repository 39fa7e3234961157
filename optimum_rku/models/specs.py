"""The architecture spec registry: one `ArchitectureSpec` per supported `model_type`, the one place that names a family.

A spec says where the decoder layers are, what the attention and MLP projections are called and which of them are
fused into one matrix (and so how to slice it), which config flags can put a bias on a part's projections, what
LoRA adapts, which attention attributes hold head counts, and which config fields pruning rewrites. Block views,
scoring, baselines, removal, recovery, checkpoints (`modeling_rku.py` builds its classes from the class names a spec
records), GGUF export (a spec's `gguf`, with what each llama.cpp architecture accepts in `LLAMA_CPP_ARCHITECTURES`)
and the tests read it; adding a family is one `ArchitectureSpec(...)` in `SPECS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

#: The logical projections every family has, whatever its modules are called or fused into. Attention: q/k/v rows
#: per head and o_proj columns per query head; MLP: gate/up rows and down_proj columns per channel.
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
PROJECTIONS = ATTENTION_PROJECTIONS + MLP_PROJECTIONS
#: Which logical projections belong to which prunable part ("attn": heads / KV groups, "ffn": channels).
PART_PROJECTIONS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"attn": ATTENTION_PROJECTIONS, "ffn": MLP_PROJECTIONS}
)
#: The projection whose input is a part's structure activation (hooks, masks, bias compensation live there).
OUTPUT_PROJECTION: Mapping[str, str] = MappingProxyType({"attn": "o_proj", "ffn": "down_proj"})
#: Per-layer widths pruning changes, by their config field names (head_dim is written explicitly and never changes).
WIDTH_FIELDS = ("intermediate_size", "num_attention_heads", "num_key_value_heads")
PART_NAMES: Mapping[str, str] = MappingProxyType({"ffn": "FFN (down_proj)", "attn": "attention (o_proj)"})


def _frozen(mapping: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class LlamaCppArchitecture:
    """What one llama.cpp architecture's loader and graph builder accept (read from llama.cpp's `src/models/`).

    The GGUF exporter checks a checkpoint against these before writing, so a file llama.cpp would refuse (or load
    and run wrongly) is never written.
    """

    name: str
    #: GGUF tensor kinds whose `.bias` the loader creates; a file with any other bias fails to load
    biases: frozenset[str] = frozenset({"attn_q", "attn_k", "attn_v"})
    #: rotates interleaved pairs (llama.cpp's rope type NORM, where transformers rotates the two halves of a head):
    #: q/k rows are reordered within each head, the rotary must span the whole head, and a `rope_freqs` tensor
    #: (Llama-3 rotary scaling) is read
    interleaved_rope: bool = False
    #: reads LongRoPE rotary (`rope_factors_long` / `rope_factors_short` tensors, attention factor, original context)
    longrope: bool = False
    #: reads feed_forward_length, head_count and head_count_kv as per-layer arrays and builds every layer with its
    #: own widths (elsewhere one FFN width and one head count serve every layer)
    per_layer_widths: bool = False
    #: sizes q and o as hidden_size: only checkpoints with heads x head_dim == hidden_size fit
    query_width_is_hidden: bool = False
    #: logical projections the loader reads as one fused tensor, rows stacked in this order (others are split)
    fused: tuple[tuple[str, ...], ...] = ()
    #: always reuses token_embd as the output matrix (an untied lm_head cannot be written)
    tied_output: bool = False
    #: every architecture here scales attention by 1/sqrt(head_dim) (the exporter folds a family's own query scale
    #: into q), except this one at this many layers (its "27B" size): 1/sqrt(hidden_size // heads of layer 0)
    wide_scale_layers: int | None = None
    #: logit soft-capping config keys it reads -> whether it applies them always (then the config must set them)
    softcapping: Mapping[str, bool] = field(default_factory=_frozen)
    #: reads `sliding_window` and the per-layer sliding pattern (elsewhere every layer attends to the whole context)
    sliding_window: bool = False
    #: reads a rotary base of its own for sliding layers (`rope.freq_base_swa`; their rotary is never scaled)
    sliding_rope_base: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "biases", frozenset(self.biases))
        object.__setattr__(self, "softcapping", _frozen(self.softcapping))


#: llama.cpp architectures the GGUF exporter writes, by llama.cpp's name (as bundled by llama-cpp-python 0.3.36):
#: the knowledge of llama.cpp's loaders the exporter relies on, in one table
LLAMA_CPP_ARCHITECTURES: Mapping[str, LlamaCppArchitecture] = MappingProxyType(
    {
        arch.name: arch
        for arch in (
            LlamaCppArchitecture(
                "llama",
                biases=frozenset({"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"}),
                interleaved_rope=True,
                longrope=True,
            ),
            LlamaCppArchitecture(
                "deci",
                biases=frozenset({"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"}),
                interleaved_rope=True,
                longrope=True,
                per_layer_widths=True,
            ),
            LlamaCppArchitecture("qwen2", query_width_is_hidden=True),
            LlamaCppArchitecture("qwen3"),
            LlamaCppArchitecture(
                "gemma2",
                tied_output=True,
                wide_scale_layers=46,
                softcapping={"attn_logit_softcapping": True, "final_logit_softcapping": True},
                sliding_window=True,
            ),
            LlamaCppArchitecture(
                "gemma3",
                wide_scale_layers=62,
                softcapping={"final_logit_softcapping": False},
                sliding_window=True,
                sliding_rope_base=True,
            ),
            LlamaCppArchitecture(
                "phi3",
                biases=frozenset({"attn_qkv"}),
                query_width_is_hidden=True,
                longrope=True,
                fused=(("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")),
            ),
        )
    }
)


#: `general.name` substrings (lower case) for which llama.cpp's vocabulary loader looks these tokens up by their text
#: (to set Phi-3's per-token attributes) and fails to load the file when one is missing; the exporter leaves the name
#: out of files whose tokenizer lacks them
LLAMA_CPP_NAME_TOKENS: Mapping[tuple[str, ...], tuple[str, ...]] = MappingProxyType(
    {("phi-3", "phi3"): ("</s>", "<unk>", "<s>", "<|endoftext|>")}
)


@dataclass(frozen=True)
class GGUFSpec:
    """How a family's checkpoints are written as GGUF for llama.cpp (read by `export/gguf.py`)."""

    #: the family's own llama.cpp architecture (a key of `LLAMA_CPP_ARCHITECTURES`), used whenever it fits
    architecture: str
    #: architecture for uniform checkpoints the own one cannot hold (e.g. its loader needs heads x head_dim ==
    #: hidden_size, or lacks a bias the checkpoint has); only for families whose layers are Llama layers
    fallback: str | None = None
    #: architecture for per-layer widths (`allocation="global"`), one with `per_layer_widths`; None: refused
    per_layer: str | None = None
    #: added to every norm weight (Gemma's RMSNorm multiplies by 1 + weight, llama.cpp's by the weight)
    norm_shift: float = 0.0
    #: config field of transformers' query pre-scale (attention scale = value ** -0.5), if the family has one
    query_scale_field: str | None = None

    def __post_init__(self) -> None:
        for name in (self.architecture, self.fallback, self.per_layer):
            if name is not None and name not in LLAMA_CPP_ARCHITECTURES:
                raise ValueError(f"GGUF architecture {name!r} is not in {sorted(LLAMA_CPP_ARCHITECTURES)}.")
        if self.per_layer is not None and not LLAMA_CPP_ARCHITECTURES[self.per_layer].per_layer_widths:
            raise ValueError(f"llama.cpp's {self.per_layer!r} builds every layer with the same widths.")


@dataclass(frozen=True)
class ArchitectureSpec:
    """Everything optimum-rku needs to know about one family (one transformers `model_type`)."""

    model_type: str
    #: human-readable name, used in messages and the README
    family: str
    #: transformers class names: the causal LM and its config (the remote-code classes subclass these)
    causal_lm_class: str
    config_class: str
    #: attribute of the causal LM holding the decoder, which holds `layers`, `norm` (final) and `embed_tokens`
    decoder: str = "model"
    #: attributes of a decoder layer holding its attention and MLP modules
    attention: str = "self_attn"
    mlp: str = "mlp"
    #: fused module name -> the logical projections stacked along its output rows, in order (e.g. Phi-3's
    #: `qkv_proj` = q heads, then k heads, then v heads; `gate_up_proj` = gate channels, then up channels).
    #: Unfused logical projections are modules of their own name.
    fused: Mapping[str, tuple[str, ...]] = field(default_factory=_frozen)
    #: part ("ffn" / "attn") -> the config flag that builds a bias on every projection of that part; a part that is
    #: missing here cannot hold an output bias, so bias compensation is refused for it
    output_bias_flags: Mapping[str, str] = field(default_factory=_frozen)
    #: attention-module attributes that hold the query / KV head counts and must follow pruning (set where present)
    query_head_attributes: tuple[str, ...] = ("num_heads", "num_attention_heads")
    kv_head_attributes: tuple[str, ...] = ("num_key_value_heads",)
    #: attention module attribute holding query heads per KV head (`repeat_kv`'s factor)
    group_attribute: str = "num_key_value_groups"
    #: MLP-module attributes that hold the FFN width (set when the module has them)
    width_attributes: tuple[str, ...] = ("intermediate_size",)
    #: the attention module reads head counts from its `config` at run time (Phi-3's qkv split): give every layer
    #: its own config (as a per-layer-config checkpoint reloads it) when layers keep different head counts
    attention_reads_config: bool = False
    #: how checkpoints of the family are written for llama.cpp (None: GGUF export refuses the family)
    gguf: GGUFSpec | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "fused", _frozen(self.fused))
        object.__setattr__(self, "output_bias_flags", _frozen(self.output_bias_flags))
        names = [name for parts in self.fused.values() for name in parts]
        if len(names) != len(set(names)) or not set(names) <= set(PROJECTIONS):
            raise ValueError(
                f"{self.model_type}: fused projections {dict(self.fused)} must name each of {PROJECTIONS} once."
            )

    def module_name(self, projection: str) -> str:
        """The module that holds a logical projection (`qkv_proj` for Phi-3's `q_proj`)."""
        for name, parts in self.fused.items():
            if projection in parts:
                return name
        return projection

    def modules(self, part: str | None = None) -> tuple[str, ...]:
        """Module names of a part's projections ("attn", "ffn", or both), each once, in projection order."""
        projections = PROJECTIONS if part is None else PART_PROJECTIONS[part]
        return tuple(dict.fromkeys(self.module_name(p) for p in projections))

    @property
    def lora_targets(self) -> tuple[str, ...]:
        """LoRA `target_modules`: every attention and MLP projection module."""
        return self.modules()


SPECS: Mapping[str, ArchitectureSpec] = MappingProxyType(
    {
        spec.model_type: spec
        for spec in (
            ArchitectureSpec(
                "llama",
                "Llama (Llama-2/3)",
                "LlamaForCausalLM",
                "LlamaConfig",
                output_bias_flags={"ffn": "mlp_bias", "attn": "attention_bias"},
                gguf=GGUFSpec("llama", per_layer="deci"),
            ),
            ArchitectureSpec(
                "qwen2",
                "Qwen2 (Qwen-2.5)",
                "Qwen2ForCausalLM",
                "Qwen2Config",
                gguf=GGUFSpec("qwen2", fallback="llama", per_layer="deci"),
            ),
            ArchitectureSpec(
                "mistral", "Mistral", "MistralForCausalLM", "MistralConfig", gguf=GGUFSpec("llama", per_layer="deci")
            ),
            ArchitectureSpec(
                "qwen3",
                "Qwen3",
                "Qwen3ForCausalLM",
                "Qwen3Config",
                output_bias_flags={"attn": "attention_bias"},
                gguf=GGUFSpec("qwen3"),
            ),
            ArchitectureSpec(
                "gemma2",
                "Gemma2",
                "Gemma2ForCausalLM",
                "Gemma2Config",
                output_bias_flags={"attn": "attention_bias"},
                gguf=GGUFSpec("gemma2", norm_shift=1.0, query_scale_field="query_pre_attn_scalar"),
            ),
            ArchitectureSpec(
                "gemma3_text",
                "Gemma3 (text)",
                "Gemma3ForCausalLM",
                "Gemma3TextConfig",
                output_bias_flags={"attn": "attention_bias"},
                gguf=GGUFSpec("gemma3", norm_shift=1.0, query_scale_field="query_pre_attn_scalar"),
            ),
            ArchitectureSpec(
                "phi3",
                "Phi-3",
                "Phi3ForCausalLM",
                "Phi3Config",
                fused={"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")},
                attention_reads_config=True,
                gguf=GGUFSpec("phi3", fallback="llama", per_layer="deci"),
            ),
        )
    }
)


#: model types that look close to a supported one but are not, and why (the error names the reason)
NOT_SUPPORTED: Mapping[str, str] = MappingProxyType(
    {
        "gemma3": "this is the multimodal Gemma3: transformers loads it as Gemma3ForConditionalGeneration, whose text "
        "part is a Gemma3TextModel inside the vision-language model rather than a Gemma3 causal LM; text-only Gemma3 "
        "checkpoints (model_type='gemma3_text', e.g. gemma-3-1b) are supported",
    }
)


def supported_families_text() -> str:
    """The supported families as one line, for error messages."""
    return ", ".join(f"{spec.family} [model_type={name!r}]" for name, spec in SPECS.items())


def get_spec(config: Any) -> ArchitectureSpec:
    """The spec of a config's `model_type` (a config, or anything with `model_type`), or a ValueError listing the
    supported families."""
    model_type = getattr(config, "model_type", None)
    spec = SPECS.get(model_type)
    if spec is None:
        reason = f" ({NOT_SUPPORTED[model_type]})" if model_type in NOT_SUPPORTED else ""
        raise ValueError(
            f"Unsupported architecture model_type={model_type!r}{reason}. optimum-rku supports: "
            f"{supported_families_text()}."
        )
    return spec


def check_supported(config: Any) -> str:
    """Return the model_type of a supported config, or raise a ValueError that lists the supported families."""
    return get_spec(config).model_type


def output_bias_flag(config: Any, part: str) -> str | None:
    """The config flag that gives `part`'s ("ffn" / "attn") output projection a bias, or None if there is none."""
    return get_spec(config).output_bias_flags.get(part)


def check_output_bias(config: Any, parts: list[str]) -> None:
    """Raise a ValueError unless the family can save and reload a bias on every part's output projection."""
    spec = get_spec(config)
    missing = [p for p in parts if p not in spec.output_bias_flags]
    if missing:
        able = ", ".join(
            f"{name}: {'+'.join(PART_NAMES[p] for p in other.output_bias_flags)}"
            for name, other in SPECS.items()
            if other.output_bias_flags
        )
        raise ValueError(
            f"bias_compensation needs a bias on the {' and '.join(PART_NAMES[p] for p in missing)} output of "
            f"model_type={spec.model_type!r}, which its config cannot build (the saved checkpoint would not reload "
            f"it). Allowed: {able}; or set targets to the parts that can, or bias_compensation=False."
        )


def stock_config_accepts(config: Any) -> bool:
    """Whether the family's stock config class (and so plain transformers, without remote code) can hold `config`."""
    if getattr(config, "is_heterogeneous", False):
        return False
    import transformers

    stock = getattr(transformers, get_spec(config).config_class)
    try:
        for validator in getattr(stock, "__class_validators__", ()):
            validator(config)
    except (ValueError, TypeError):
        return False
    return True
