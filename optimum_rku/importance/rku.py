"""RKU, Relative Kinetic Utility: activity times the square root of the diagonal Fisher, normalized per block."""

from __future__ import annotations

import torch

from optimum_rku.importance.base import BlockStats, Importance, StructureScores, centered_spread, group_slices
from optimum_rku.importance.registry import register_importance
from optimum_rku.models.blocks import BlockView


@register_importance("rku")
class RKUImportance(Importance):
    """Relative Kinetic Utility: A_s * sqrt(F_s), divided by the block mean of sqrt(F) per structure type.

    A_s = mean_t |y_s| (L2 over the slice for heads/groups), F_s = mean_t ||dPhi/dy_s||^2 (diagonal Fisher).
    With `activity="centered"`, A_s is the spread around the calibration mean instead (the standard deviation of a
    channel; for a head, the RMS norm of its slice's deviation): what is lost when the mean is compensated.
    """

    title = "Relative Kinetic Utility (RKU)"
    activation_stats = frozenset({"abs", "slice_norm"})
    needs_activation_gradients = True
    yields_fisher = True
    #: the Fisher of a mask on each structure per unit of cost, chosen on SmolLM2-135M-Instruct (docs/benchmarks.md)
    default_ranking = "measured_loss"

    def config_stats(self, config) -> frozenset[str]:
        extra = {"sum", "sq"} if getattr(config, "activity", "abs") == "centered" else set()
        if getattr(config, "resolved_ranking", "score") == "measured_loss":
            extra.add("mask_sq")  # keeps each down_proj / o_proj input until backward: only when asked for
        return frozenset(extra)

    def score_block(self, block: BlockView, stats: BlockStats, config) -> StructureScores:
        tokens = max(stats.tokens, 1)
        granularity, normalization = config.attention_granularity, config.normalization
        centered = getattr(config, "activity", "abs") == "centered"
        result = StructureScores()
        if "abs" in stats.ffn:
            activity = centered_spread(stats.ffn, tokens) if centered else stats.ffn["abs"] / tokens
            fisher = stats.ffn["grad_sq"] / tokens
            result.mlp_raw, result.mlp = self._kinetic(activity, fisher, normalization)
            if "mask_sq" in stats.ffn:
                result.mlp_loss = 0.5 * stats.ffn["mask_sq"] / tokens
        if "slice_norm_head" in stats.attn:
            if centered:  # RMS of the slice's deviation from its mean: sqrt(sum over the slice of Var(y_c))
                activity = group_slices(centered_spread(stats.attn, tokens).pow(2), block, granularity).sqrt()
            else:
                key = "slice_norm_head" if granularity == "query_head" else "slice_norm_group"
                activity = stats.attn[key] / tokens
            fisher = group_slices(stats.attn["grad_sq"], block, granularity) / tokens
            result.attention_raw, result.attention = self._kinetic(activity, fisher, normalization)
            key = "mask_sq_head" if granularity == "query_head" else "mask_sq_group"
            if key in stats.attn:
                result.attention_loss = 0.5 * stats.attn[key] / tokens
        return result

    @staticmethod
    def _kinetic(
        activity: torch.Tensor, fisher: torch.Tensor, normalization: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        velocity = fisher.clamp_min(0).sqrt()
        kinetic = activity * velocity
        if normalization == "none":
            return kinetic, kinetic.clone()
        scale = velocity.mean()
        normalized = kinetic / scale if scale > 0 else torch.zeros_like(kinetic)
        return kinetic, normalized
