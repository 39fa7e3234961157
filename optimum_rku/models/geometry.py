"""Model geometry read from the live modules: per-layer widths, parameter costs of structures, KV-cache bytes."""

from __future__ import annotations

import torch

from optimum_rku.models.blocks import BlockView, blocks


def structure_costs(block: BlockView, granularity: str) -> tuple[int, int]:
    """Parameters owned by one FFN channel and by one attention structure (KV group, or query-head slot)."""
    hidden, hd = block.hidden_size, block.head_dim
    ffn = 3 * hidden + sum(int(block.bias(name) is not None) for name in ("gate_proj", "up_proj"))
    q_bias = block.bias("q_proj") is not None
    kv_bias = block.bias("k_proj") is not None
    per_query_head = 2 * hd * hidden + (hd if q_bias else 0)
    if granularity == "query_head" and block.group_size > 1:
        # GQA: a "slot" removes one query head from every KV group, keeping the groups equal-sized.
        return ffn, per_query_head * block.num_kv_heads
    per_group = per_query_head * block.group_size + 2 * hd * hidden + (2 * hd if kv_bias else 0)
    return ffn, per_group


def prunable_parameters(model: torch.nn.Module) -> int:
    """Parameters of q/k/v/o and gate/up/down (weights and biases) summed over all blocks."""
    total = 0
    for block in blocks(model):
        for linear in block.linears():
            total += linear.weight.numel() + (linear.bias.numel() if linear.bias is not None else 0)
    return total


def layer_widths(model: torch.nn.Module) -> list[dict[str, int]]:
    return [
        {
            "intermediate_size": b.intermediate_size,
            "num_attention_heads": b.num_heads,
            "num_key_value_heads": b.num_kv_heads,
        }
        for b in blocks(model)
    ]


def kv_cache_bytes_per_token(model) -> int:
    """Bytes of K and V cached per token over all layers at the model's dtype."""
    element = next(model.parameters()).element_size()
    return sum(2 * b.num_kv_heads * b.head_dim * element for b in blocks(model))
