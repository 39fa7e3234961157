"""Baseline importance methods, scored in the same pipeline as RKU for an honest comparison.

Every method scores the same structures RKU does (FFN channels; KV groups or query heads) from the same calibration
pass, so the allocation, removal and evaluation that follow are identical and only the importance differs:

- ``magnitude``: L2 norm of all weights a structure owns (data-free).
- ``wanda``: structured Wanda (Wanda-sp), input-norm-weighted absolute weights of down_proj / o_proj columns.
- ``flap``: FLAP's fluctuation metric, standardized per layer and structure type (optional bias compensation).
- ``taylor``: first-order Taylor |W * dL/dW| (LLM-Pruner / GISP) per parameter, from weight gradients of the NLL.
- ``random``: seeded random scores (the floor).
"""

from __future__ import annotations

import torch

from optimum_rku.importance.base import BlockStats, Importance, StructureScores, group_slices
from optimum_rku.importance.registry import register_importance
from optimum_rku.models.blocks import BlockView
from optimum_rku.models.specs import ATTENTION_PROJECTIONS, MLP_PROJECTIONS, PROJECTIONS


# --------------------------------------------------------------------------------------------------------- helpers
def _rows(values: torch.Tensor, width: int) -> torch.Tensor:
    """Sum of a [out, in] tensor over its input dim, grouped into consecutive output rows of `width`."""
    return values.sum(dim=1).view(-1, width).sum(dim=1)


def _cols(values: torch.Tensor, width: int) -> torch.Tensor:
    """Sum of a [out, in] tensor over its output dim, grouped into consecutive input columns of `width`."""
    return values.sum(dim=0).view(-1, width).sum(dim=1)


def ffn_owned_sum(block: BlockView, per_weight: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum a per-weight quantity over what each FFN channel owns: its gate/up rows and its down_proj column."""
    return per_weight["gate_proj"].sum(dim=1) + per_weight["up_proj"].sum(dim=1) + per_weight["down_proj"].sum(dim=0)


def attention_owned_sum(block: BlockView, per_weight: dict[str, torch.Tensor], granularity: str) -> torch.Tensor:
    """Sum a per-weight quantity over what each attention structure owns (per KV group or per query head).

    A query head owns its q_proj rows and o_proj columns; a KV group owns those of all its query heads plus its
    k_proj/v_proj rows. Under GQA with query_head granularity, k/v are shared by a group's heads and owned by none of
    them (under MHA a query head is its own group and owns its k/v rows).
    """
    hd = block.head_dim
    per_head = _rows(per_weight["q_proj"], hd) + _cols(per_weight["o_proj"], hd)
    if granularity == "query_head" and block.group_size > 1:
        return per_head
    kv = _rows(per_weight["k_proj"], hd) + _rows(per_weight["v_proj"], hd)
    return per_head.view(block.num_kv_heads, -1).sum(dim=1) + kv


def _bias_sq(bias: torch.Tensor | None, head_dim: int | None = None) -> torch.Tensor | float:
    """Squared bias entries (summed per head of `head_dim` rows when given), or 0.0 without a bias."""
    if bias is None:
        return 0.0
    b = bias.detach().float().pow(2)
    return b.view(-1, head_dim).sum(dim=1) if head_dim else b


def _weights(block: BlockView) -> dict[str, torch.Tensor]:
    return {name: block.weight(name).detach().float() for name in PROJECTIONS}


def attention_weight_sq(block: BlockView, granularity: str) -> torch.Tensor:
    """Squared L2 norm of all weights (and biases) a KV group (or query head) owns: q/k/v rows and o_proj columns."""
    squares = {name: block.weight(name).detach().float().pow(2) for name in ATTENTION_PROJECTIONS}
    attn = attention_owned_sum(block, squares, granularity)
    hd = block.head_dim
    q_bias = _bias_sq(block.bias("q_proj"), hd)
    if granularity == "query_head" and block.group_size > 1:
        return attn + q_bias
    q_bias = q_bias.view(block.num_kv_heads, -1).sum(dim=1) if torch.is_tensor(q_bias) else q_bias
    return attn + q_bias + _bias_sq(block.bias("k_proj"), hd) + _bias_sq(block.bias("v_proj"), hd)


def _standardize(values: torch.Tensor) -> torch.Tensor:
    """(s - mean) / std over one layer's structures of one type; constant scores become zeros."""
    if values.numel() < 2:
        return torch.zeros_like(values)
    std = values.std()
    if not torch.isfinite(std) or std <= 0:
        return torch.zeros_like(values)
    return (values - values.mean()) / std


def _require(stats: BlockStats, part: str, keys: tuple[str, ...], method: str, block: BlockView) -> bool:
    """Whether `stats` holds `keys` for `part`; a partial set is an error (a hook did not fire on every batch)."""
    store = stats.ffn if part == "ffn" else stats.attn
    present = [k in store for k in keys]
    if any(present) and not all(present):
        missing = [k for k, p in zip(keys, present) if not p]
        raise ValueError(f"{method}: block {block.index} {part} statistics lack {missing}.")
    return all(present)


# --------------------------------------------------------------------------------------------------------- methods
@register_importance("magnitude")
class MagnitudeImportance(Importance):
    """L2 norm of all weights a structure owns (its rows of q/k/v or gate/up, its columns of o/down); data-free."""

    def score_block(self, block: BlockView, stats: BlockStats, config) -> StructureScores:
        squares = {name: block.weight(name).detach().float().pow(2) for name in MLP_PROJECTIONS}
        sq = ffn_owned_sum(block, squares) + _bias_sq(block.bias("gate_proj")) + _bias_sq(block.bias("up_proj"))
        ffn = sq.detach().sqrt()
        attn = attention_weight_sq(block, config.attention_granularity).sqrt()
        return StructureScores(mlp=ffn, attention=attn, mlp_raw=ffn, attention_raw=attn)


@register_importance("wanda")
class WandaImportance(Importance):
    """Structured Wanda (Wanda-sp): sum over a structure's down_proj / o_proj columns of |W_ij| * ||x_j||_2.

    x are the calibration inputs of that projection (||x_j||_2 = sqrt of the summed squares over non-padding tokens).
    A query head sums its head_dim columns of o_proj; a KV group sums all channels of all its query heads. Scores are
    used as they are (no per-layer normalization), as in Wanda-sp.
    """

    activation_stats = frozenset({"sq"})

    def score_block(self, block: BlockView, stats: BlockStats, config) -> StructureScores:
        result = StructureScores()
        if _require(stats, "ffn", ("sq",), self.name, block):
            result.mlp = self._columns(block.down_proj.weight, stats.ffn["sq"])
            result.mlp_raw = result.mlp
        if _require(stats, "attn", ("sq",), self.name, block):
            channels = self._columns(block.o_proj.weight, stats.attn["sq"])
            result.attention = group_slices(channels, block, config.attention_granularity)
            result.attention_raw = result.attention
        return result

    @staticmethod
    def _columns(weight: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
        """Per input channel j: sum_i |W_ij| * ||x_j||_2."""
        return weight.detach().float().abs().sum(dim=0) * sq.to(weight.device).clamp_min(0).sqrt()


@register_importance("flap")
class FlapImportance(Importance):
    """FLAP fluctuation metric: Var_t(x_j) * ||W[:, j]||^2 per down_proj / o_proj input channel, standardized.

    The variance over calibration tokens of each input channel comes from the "sum"/"sq" statistics; a head takes the
    mean over its head_dim channels and a KV group the mean over all channels of its query heads. The normalized
    score is (s - mean) / std over one layer's structures of one type (FLAP's standardization, which lets attention
    and FFN structures of all layers share one global ranking); the raw score is the unstandardized metric.

    Bias compensation is `RKUConfig(bias_compensation=True)` (off by default, as for every method): removal then
    adds W[:, removed] @ mean(x_removed) to the down_proj / o_proj bias (FLAP's compensation), using the calibration
    means collected in the same pass. Only where the saved checkpoint still builds that bias (the family's
    `output_bias_flags` in `models/specs.py`, which also give the part's other projections zero biases); elsewhere
    the pruner says so before scoring.
    """

    activation_stats = frozenset({"sum", "sq"})

    def score_block(self, block: BlockView, stats: BlockStats, config) -> StructureScores:
        tokens = max(stats.tokens, 1)
        result = StructureScores()
        if _require(stats, "ffn", ("sum", "sq"), self.name, block):
            metric = self._fluctuation(block.down_proj.weight, stats.ffn, tokens)
            result.mlp_raw, result.mlp = metric, _standardize(metric)
        if _require(stats, "attn", ("sum", "sq"), self.name, block):
            channels = self._fluctuation(block.o_proj.weight, stats.attn, tokens)
            width = block.structure_width(config.attention_granularity)
            metric = channels.view(-1, width).mean(dim=1)
            result.attention_raw, result.attention = metric, _standardize(metric)
        return result

    @staticmethod
    def _fluctuation(weight: torch.Tensor, part: dict[str, torch.Tensor], tokens: int) -> torch.Tensor:
        """Per input channel j: (E[x_j^2] - E[x_j]^2) * sum_i W_ij^2 (variance is the biased, over-tokens one)."""
        mean = part["sum"] / tokens
        variance = (part["sq"] / tokens - mean * mean).clamp_min(0)
        return variance.to(weight.device) * weight.detach().float().pow(2).sum(dim=0)


@register_importance("taylor")
class TaylorImportance(Importance):
    """First-order Taylor (LLM-Pruner / GISP): sum of |W * dL/dW| over a structure's weights, per parameter.

    L is the next-token NLL of the calibration text (objective forced to "nll"); dL/dW is summed over calibration
    batches and divided by the number of calibration tokens. The raw score is the element-wise sum over the weights
    the structure owns (`ffn_owned_sum` / `attention_owned_sum`: gate/up rows + down column; q rows + o columns, plus k/v rows for a KV group).
    The normalized score divides it by the number of weights the structure owns (block-wise normalization), so that
    a cheap FFN channel and an expensive KV group compete per parameter in the global ranking. Followed: GISP
    (uncc-efficient-ai/GISP, pruners/grad_sp_global.py), which sums |W * grad / n_samples| element-wise per head /
    channel and divides each structure type by a "structural size"; there the attention size is the weights of one
    head (4 * head_dim * hidden) but the MLP size is 3 * intermediate_size, whereas we use the exact count of weights
    each structure owns for both types (3 * hidden per FFN channel), i.e. the per-parameter definition.

    Memory: needs weight gradients, i.e. one extra copy of all q/k/v/o and gate/up/down weights (accumulated in the
    model dtype, read out as float32 per block), on top of the activations kept for one backward pass.
    """

    needs_weight_gradients = True
    objective = "nll"

    def score_block(self, block: BlockView, stats: BlockStats, config) -> StructureScores:
        missing = [name for name in PROJECTIONS if name not in stats.weight_grads]
        if missing:
            raise ValueError(f"taylor: block {block.index} has no weight gradients for {missing}.")
        tokens = max(stats.tokens, 1)
        weights = _weights(block)
        saliency = {
            name: (weights[name] * stats.weight_grads[name].to(weights[name].device).float() / tokens).abs()
            for name in PROJECTIONS
        }
        counts = {name: torch.ones_like(w) for name, w in weights.items()}
        granularity = config.attention_granularity
        ffn_raw, attn_raw = ffn_owned_sum(block, saliency), attention_owned_sum(block, saliency, granularity)
        ffn_count, attn_count = ffn_owned_sum(block, counts), attention_owned_sum(block, counts, granularity)
        return StructureScores(
            mlp=ffn_raw / ffn_count, attention=attn_raw / attn_count, mlp_raw=ffn_raw, attention_raw=attn_raw
        )


@register_importance("random")
class RandomImportance(Importance):
    """Seeded random scores: the floor every method must beat."""

    def score_block(self, block: BlockView, stats: BlockStats, config) -> StructureScores:
        g = torch.Generator().manual_seed(config.seed * 1000 + block.index)
        n_attn = block.num_structures(config.attention_granularity)
        ffn = torch.rand(block.intermediate_size, generator=g)
        attn = torch.rand(n_attn, generator=g)
        return StructureScores(mlp=ffn, attention=attn, mlp_raw=ffn, attention_raw=attn)
