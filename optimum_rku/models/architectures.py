"""Architecture specifics in one place: where each family keeps its blocks, projections and head counts."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

# model_type -> human-readable family name. All share the layout
# model.model.layers[i].self_attn.{q,k,v,o}_proj and .mlp.{gate,up,down}_proj with GQA via repeat_kv.
SUPPORTED_FAMILIES: dict[str, str] = {
    "llama": "Llama (Llama-2/3)",
    "qwen2": "Qwen2 (Qwen-2.5)",
    "mistral": "Mistral",
    "qwen3": "Qwen3",
    "gemma2": "Gemma2",
}


# model_type -> {part: config flag that builds a bias on that part's projections}. "ffn": Llama's `mlp_bias` (gate, up
# and down); "attn": `attention_bias` (q, k, v and o). Mistral and Qwen2 configs cannot put a bias on down_proj/o_proj.
OUTPUT_BIAS_FLAGS: dict[str, dict[str, str]] = {
    "llama": {"ffn": "mlp_bias", "attn": "attention_bias"},
    "qwen2": {},
    "mistral": {},
    "qwen3": {"attn": "attention_bias"},
    "gemma2": {"attn": "attention_bias"},
}


def supported_families_text() -> str:
    return ", ".join(f"{v} [model_type={k!r}]" for k, v in SUPPORTED_FAMILIES.items())


def check_supported(config) -> str:
    """Return the model_type of a supported config, or raise a ValueError that lists the supported families."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_FAMILIES:
        raise ValueError(
            f"Unsupported architecture model_type={model_type!r}. optimum-rku supports: {supported_families_text()}."
        )
    return model_type


def layer_attr(config, layer_index: int, name: str):
    """Read a possibly per-layer config attribute (transformers' heterogeneous `per_layer_config`)."""
    if getattr(config, "is_heterogeneous", False):
        return getattr(config.per_layer_config[layer_index], name)
    return getattr(config, name)


def head_dim_of(config) -> int:
    head_dim = getattr(config, "head_dim", None)
    if head_dim is None:
        head_dim = config.hidden_size // layer_attr(config, 0, "num_attention_heads")
    return int(head_dim)


@dataclass
class BlockView:
    """One decoder block's prunable modules and current widths."""

    index: int
    attn: nn.Module
    mlp: nn.Module
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    hidden_size: int

    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.num_heads // self.num_kv_heads

    @property
    def q_proj(self) -> nn.Linear:
        return self.attn.q_proj

    @property
    def k_proj(self) -> nn.Linear:
        return self.attn.k_proj

    @property
    def v_proj(self) -> nn.Linear:
        return self.attn.v_proj

    @property
    def o_proj(self) -> nn.Linear:
        return self.attn.o_proj

    @property
    def gate_proj(self) -> nn.Linear:
        return self.mlp.gate_proj

    @property
    def up_proj(self) -> nn.Linear:
        return self.mlp.up_proj

    @property
    def down_proj(self) -> nn.Linear:
        return self.mlp.down_proj

    def mlp_linears(self) -> list[nn.Linear]:
        return [self.gate_proj, self.up_proj, self.down_proj]

    def attn_linears(self) -> list[nn.Linear]:
        return [self.q_proj, self.k_proj, self.v_proj, self.o_proj]


def decoder(model: nn.Module) -> nn.Module:
    """The decoder stack (`model.model` for every supported *ForCausalLM)."""
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers"):
        raise ValueError(f"{type(model).__name__} has no `.model.layers`; expected a supported *ForCausalLM model.")
    return inner


def blocks(model: nn.Module) -> list[BlockView]:
    """Views of every decoder block, with widths read from the live modules (correct after pruning too)."""
    config = model.config
    check_supported(config)
    head_dim = head_dim_of(config)
    views = []
    for index, layer in enumerate(decoder(model).layers):
        attn, mlp = layer.self_attn, layer.mlp
        num_heads = attn.q_proj.out_features // head_dim
        num_kv_heads = attn.k_proj.out_features // head_dim
        views.append(
            BlockView(
                index=index,
                attn=attn,
                mlp=mlp,
                num_heads=num_heads,
                num_kv_heads=num_kv_heads,
                head_dim=head_dim,
                intermediate_size=mlp.down_proj.in_features,
                hidden_size=config.hidden_size,
            )
        )
    return views


def set_attention_heads(attn: nn.Module, num_heads: int, num_kv_heads: int) -> None:
    """Update the head bookkeeping attributes an attention module reads at run time."""
    attn.num_key_value_groups = num_heads // num_kv_heads
    for name, value in (
        ("num_heads", num_heads),
        ("num_attention_heads", num_heads),
        ("num_key_value_heads", num_kv_heads),
    ):
        if hasattr(attn, name):
            setattr(attn, name, value)


def final_norm(model: nn.Module) -> nn.Module:
    """The final RMSNorm whose output feeds lm_head (read by the hidden_energy objective)."""
    return decoder(model).norm


def output_bias_flag(config, part: str) -> str | None:
    """The config flag that gives `part`'s ("ffn" / "attn") output projection a bias, or None if there is none."""
    return OUTPUT_BIAS_FLAGS.get(check_supported(config), {}).get(part)


def check_output_bias(config, parts: list[str]) -> None:
    """Raise a ValueError unless the family can save and reload a bias on every part's output projection."""
    model_type = check_supported(config)
    names = {"ffn": "FFN (down_proj)", "attn": "attention (o_proj)"}
    missing = [p for p in parts if output_bias_flag(config, p) is None]
    if missing:
        able = ", ".join(f"{k}: {'+'.join(names[p] for p in v)}" for k, v in OUTPUT_BIAS_FLAGS.items() if v)
        raise ValueError(
            f"bias_compensation needs a bias on the {' and '.join(names[p] for p in missing)} output of "
            f"model_type={model_type!r}, which its config cannot build (the saved checkpoint would not reload it). "
            f"Allowed: {able}; or set targets to the parts that can, or bias_compensation=False."
        )


def enable_output_biases(model: nn.Module, part: str) -> None:
    """Turn on `part`'s bias flag in the config and give every projection of that part a (zero) bias if it has none.

    The flag builds biases on all of the part's projections (Llama's `mlp_bias`: gate/up/down; `attention_bias`:
    q/k/v/o), so they all get one and the saved checkpoint reloads exactly.
    """
    flag = output_bias_flag(model.config, part)
    if flag is None:
        check_output_bias(model.config, [part])
    setattr(model.config, flag, True)
    for view in blocks(model):
        for linear in view.mlp_linears() if part == "ffn" else view.attn_linears():
            if linear.bias is None:
                weight = linear.weight
                linear.bias = nn.Parameter(weight.new_zeros(linear.out_features), requires_grad=weight.requires_grad)


def stock_config_accepts(config) -> bool:
    """Whether the family's stock config class (and so plain transformers, without remote code) can hold `config`."""
    if getattr(config, "is_heterogeneous", False):
        return False
    from transformers import AutoConfig

    stock = type(AutoConfig.for_model(config.model_type))
    try:
        stock.validate_architecture(config)
    except (ValueError, TypeError):
        return False
    return True
