"""Block views: one decoder block's projections and widths, read through its family's `ArchitectureSpec`.

Code outside `models/` asks a `BlockView` for a *logical* projection ("q_proj", ..., "down_proj") and gets its
weight rows, bias and gradient whether the family keeps it in a module of its own or fused with others (Phi-3's
`qkv_proj` / `gate_up_proj`: the rows of each logical projection are a slice of the fused module's rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from optimum_rku.models.specs import (
    OUTPUT_PROJECTION,
    PART_PROJECTIONS,
    ArchitectureSpec,
    check_output_bias,
    get_spec,
    output_bias_flag,
)


def layer_attr(config, layer_index: int, name: str):
    """Read a possibly per-layer config attribute (transformers' heterogeneous `per_layer_config`)."""
    if getattr(config, "is_heterogeneous", False):
        return getattr(config.per_layer_config[layer_index], name)
    return getattr(config, name)


def head_dim_of(config) -> int:
    """The attention head width: the config's `head_dim`, else hidden_size / heads (it never changes under pruning)."""
    head_dim = getattr(config, "head_dim", None)
    if head_dim is None:
        head_dim = config.hidden_size // layer_attr(config, 0, "num_attention_heads")
    return int(head_dim)


@dataclass
class BlockView:
    """One decoder block's prunable projections and current widths."""

    index: int
    spec: ArchitectureSpec
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

    def structure_width(self, granularity: str) -> int:
        """o_proj input channels per attention structure: a query head's `head_dim`, or a KV group's heads."""
        return self.head_dim if granularity == "query_head" else self.head_dim * self.group_size

    def num_structures(self, granularity: str) -> int:
        """Attention structures of the block: query heads, or KV groups."""
        return self.num_heads if granularity == "query_head" else self.num_kv_heads

    def owner(self, projection: str) -> nn.Module:
        """The attention or MLP module that holds `projection`."""
        return self.attn if projection in PART_PROJECTIONS["attn"] else self.mlp

    def module(self, projection: str) -> nn.Linear:
        """The linear layer holding a logical projection (the fused one where the family fuses it)."""
        return getattr(self.owner(projection), self.spec.module_name(projection))

    def width(self, projection: str) -> int:
        """Output rows of a logical projection (q: heads x head_dim, k / v: KV heads x head_dim, gate / up: FFN)."""
        if projection == "q_proj":
            return self.num_heads * self.head_dim
        if projection in ("k_proj", "v_proj"):
            return self.num_kv_heads * self.head_dim
        if projection in ("gate_proj", "up_proj"):
            return self.intermediate_size
        return self.hidden_size

    def rows(self, projection: str) -> slice:
        """The rows of `module(projection)` that belong to `projection` (all of them unless it is fused)."""
        start = 0
        for part in self.spec.fused.get(self.spec.module_name(projection), (projection,)):
            if part == projection:
                return slice(start, start + self.width(part))
            start += self.width(part)
        raise KeyError(projection)

    def weight(self, projection: str) -> torch.Tensor:
        """The [out, in] weight of a logical projection (a view into its module's weight)."""
        return self.module(projection).weight[self.rows(projection)]

    def bias(self, projection: str) -> torch.Tensor | None:
        """The bias of a logical projection (a view), or None."""
        bias = self.module(projection).bias
        return None if bias is None else bias[self.rows(projection)]

    def weight_grad(self, projection: str) -> torch.Tensor | None:
        """The accumulated weight gradient of a logical projection (a view), or None."""
        grad = self.module(projection).weight.grad
        return None if grad is None else grad[self.rows(projection)]

    def head_channels(self, heads: list[int]) -> torch.Tensor:
        """Row indices of q_proj (or columns of o_proj) of query heads `heads`; of k/v_proj for KV heads."""
        index = torch.tensor(heads, dtype=torch.long)
        return (index[:, None] * self.head_dim + torch.arange(self.head_dim)[None, :]).reshape(-1)

    @property
    def o_proj(self) -> nn.Linear:
        """The attention output projection: its input channels are the query heads' slices."""
        return self.module(OUTPUT_PROJECTION["attn"])

    @property
    def down_proj(self) -> nn.Linear:
        """The FFN output projection: its input channels are the FFN channels."""
        return self.module(OUTPUT_PROJECTION["ffn"])

    def output(self, part: str) -> nn.Linear:
        """The output projection of a part ("attn" -> o_proj, "ffn" -> down_proj), where hooks read structures."""
        return self.module(OUTPUT_PROJECTION[part])

    def linears(self, part: str | None = None) -> list[nn.Linear]:
        """The linear modules of a part ("attn", "ffn") or of both, each once."""
        parts = ("attn", "ffn") if part is None else (part,)
        return [getattr(self.attn if p == "attn" else self.mlp, name) for p in parts for name in self.spec.modules(p)]

    def set_heads(self, num_heads: int, num_kv_heads: int) -> None:
        """Write new head counts into the attention attributes the family reads at run time."""
        setattr(self.attn, self.spec.group_attribute, num_heads // num_kv_heads)
        for names, value in (
            (self.spec.query_head_attributes, num_heads),
            (self.spec.kv_head_attributes, num_kv_heads),
        ):
            for name in names:
                if hasattr(self.attn, name):
                    setattr(self.attn, name, value)
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads

    def set_intermediate_size(self, size: int) -> None:
        """Write a new FFN width into the MLP attributes that hold it."""
        for name in self.spec.width_attributes:
            if hasattr(self.mlp, name):
                setattr(self.mlp, name, size)
        self.intermediate_size = size


def decoder(model: nn.Module) -> nn.Module:
    """The decoder stack of a supported causal LM (it holds `layers`, the final `norm` and `embed_tokens`)."""
    spec = get_spec(model.config)
    inner = getattr(model, spec.decoder, None)
    if inner is None or not hasattr(inner, "layers"):
        raise ValueError(
            f"{type(model).__name__} has no `.{spec.decoder}.layers`; expected a {spec.causal_lm_class} model."
        )
    return inner


def _query_heads(layer_attn: nn.Module, spec: ArchitectureSpec, head_dim: int) -> int:
    return getattr(layer_attn, spec.module_name(OUTPUT_PROJECTION["attn"])).in_features // head_dim


def _kv_heads(layer_attn: nn.Module, spec: ArchitectureSpec, head_dim: int, num_heads: int) -> int:
    """KV heads from the rows of the module holding k_proj (minus the query rows it fuses, split over k and v)."""
    name = spec.module_name("k_proj")
    parts = spec.fused.get(name, ("k_proj",))
    rows = getattr(layer_attn, name).out_features - (num_heads * head_dim if "q_proj" in parts else 0)
    return rows // (head_dim * sum(p in ("k_proj", "v_proj") for p in parts))


def blocks(model: nn.Module) -> list[BlockView]:
    """Views of every decoder block, with widths read from the live modules (correct after pruning too)."""
    config = model.config
    spec = get_spec(config)
    head_dim = head_dim_of(config)
    views = []
    for index, layer in enumerate(decoder(model).layers):
        attn, mlp = getattr(layer, spec.attention), getattr(layer, spec.mlp)
        num_heads = _query_heads(attn, spec, head_dim)
        views.append(
            BlockView(
                index=index,
                spec=spec,
                attn=attn,
                mlp=mlp,
                num_heads=num_heads,
                num_kv_heads=_kv_heads(attn, spec, head_dim, num_heads),
                head_dim=head_dim,
                intermediate_size=getattr(mlp, spec.module_name(OUTPUT_PROJECTION["ffn"])).in_features,
                hidden_size=config.hidden_size,
            )
        )
    return views


def final_norm(model: nn.Module) -> nn.Module:
    """The final RMSNorm whose output feeds lm_head (read by the hidden_energy objective)."""
    return decoder(model).norm


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
        for linear in view.linears(part):
            if linear.bias is None:
                weight = linear.weight
                linear.bias = nn.Parameter(weight.new_zeros(linear.out_features), requires_grad=weight.requires_grad)
