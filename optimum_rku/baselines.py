"""Baseline importance methods, scored in the same pipeline as RKU for honest comparison."""

from __future__ import annotations

import torch

from optimum_rku.architectures import BlockView
from optimum_rku.importance import BlockStats, Importance, StructureScores, register_importance


def _head_rows(weight: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Sum of squares of a projection's output rows, grouped per head: shape [num_heads]."""
    return weight.float().pow(2).sum(dim=1).view(-1, head_dim).sum(dim=1)


def _head_cols(weight: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Sum of squares of a projection's input columns, grouped per head: shape [num_heads]."""
    return weight.float().pow(2).sum(dim=0).view(-1, head_dim).sum(dim=1)


def _bias_sq(linear, head_dim: int | None = None) -> torch.Tensor | float:
    if linear.bias is None:
        return 0.0
    b = linear.bias.float().pow(2)
    return b.view(-1, head_dim).sum(dim=1) if head_dim else b


def attention_weight_sq(block: BlockView, granularity: str) -> torch.Tensor:
    """Squared L2 norm of all weights a KV group (or query head) owns: its q/k/v rows and o_proj columns."""
    hd = block.head_dim
    q = _head_rows(block.q_proj.weight, hd) + _bias_sq(block.q_proj, hd)
    o = _head_cols(block.o_proj.weight, hd)
    per_query_head = q + o
    if granularity == "query_head" and block.group_size > 1:
        return per_query_head
    kv = _head_rows(block.k_proj.weight, hd) + _head_rows(block.v_proj.weight, hd)
    kv = kv + _bias_sq(block.k_proj, hd) + _bias_sq(block.v_proj, hd)
    return per_query_head.view(block.num_kv_heads, -1).sum(dim=1) + kv


@register_importance("magnitude")
class MagnitudeImportance(Importance):
    """L2 norm of all weights a structure owns (its rows of q/k/v or gate/up, its columns of o/down)."""

    def score_block(self, block: BlockView, stats: BlockStats, config) -> StructureScores:
        mlp = block.mlp
        sq = mlp.gate_proj.weight.float().pow(2).sum(1) + mlp.up_proj.weight.float().pow(2).sum(1)
        sq = sq + mlp.down_proj.weight.float().pow(2).sum(0) + _bias_sq(mlp.gate_proj) + _bias_sq(mlp.up_proj)
        ffn = sq.sqrt()
        attn = attention_weight_sq(block, config.attention_granularity).sqrt()
        return StructureScores(mlp=ffn, attention=attn, mlp_raw=ffn, attention_raw=attn)


@register_importance("random")
class RandomImportance(Importance):
    """Seeded random scores: the floor every method must beat."""

    def score_block(self, block: BlockView, stats: BlockStats, config) -> StructureScores:
        g = torch.Generator().manual_seed(config.seed * 1000 + block.index)
        n_attn = block.num_heads if config.attention_granularity == "query_head" else block.num_kv_heads
        ffn = torch.rand(block.intermediate_size, generator=g)
        attn = torch.rand(n_attn, generator=g)
        return StructureScores(mlp=ffn, attention=attn, mlp_raw=ffn, attention_raw=attn)
