"""Importance methods: how to score a structure. Small, swappable classes kept apart from allocation and removal.

Each method turns one block's calibration statistics (`BlockStats`) and weights into a score per FFN channel and per
attention structure (KV group or query head). Scores are returned raw and normalized; allocation ranks normalized
scores across layers. Register new methods with `@register_importance("name")`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from optimum_rku.architectures import BlockView

_REGISTRY: dict[str, type[Importance]] = {}


def register_importance(name: str):
    """Class decorator adding an importance method to the registry under `name`."""

    def wrap(cls: type[Importance]) -> type[Importance]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def available_importances() -> list[str]:
    _load_builtin_methods()
    return sorted(_REGISTRY)


def get_importance(name: str) -> Importance:
    """Instantiate the importance method registered as `name`."""
    _load_builtin_methods()
    if name not in _REGISTRY:
        raise ValueError(f"Unknown importance {name!r}; allowed: {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[name]()


def _load_builtin_methods() -> None:
    # Baseline methods live in their own module; importing it registers them.
    try:
        import optimum_rku.baselines  # noqa: F401
    except ModuleNotFoundError as err:
        if err.name != "optimum_rku.baselines":
            raise


@dataclass
class BlockStats:
    """Float32 sums over non-padding calibration tokens for one block.

    FFN statistics are per channel of the down_proj input; attention statistics are per channel of the o_proj input
    (heads are contiguous slices of `head_dim` channels), plus per-head and per-KV-group sums of slice L2 norms.
    """

    tokens: int = 0
    ffn: dict[str, torch.Tensor] = field(default_factory=dict)
    attn: dict[str, torch.Tensor] = field(default_factory=dict)
    #: accumulated dL/dW per projection name ("q_proj", ..., "down_proj"), only for weight-gradient methods
    weight_grads: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(self, part: str, key: str, value: torch.Tensor) -> None:
        store = self.ffn if part == "ffn" else self.attn
        if key in store:
            store[key] += value
        else:
            store[key] = value.clone()


@dataclass
class StructureScores:
    """Scores of one block: `mlp` per FFN channel, `attention` per KV group or query head."""

    mlp: torch.Tensor | None = None
    attention: torch.Tensor | None = None
    mlp_raw: torch.Tensor | None = None
    attention_raw: torch.Tensor | None = None
    #: optional: 1/2 mean_t (dPhi/dm_s)^2, the loss increase estimate of zeroing each structure
    mlp_loss: torch.Tensor | None = None
    attention_loss: torch.Tensor | None = None


class Importance:
    """Base class. Subclasses set which statistics they need and implement `score_block`."""

    name: str = "base"
    #: statistics to accumulate: "abs" (sum |y|), "sq" (sum y^2), "sum" (sum y), "slice_norm" (sum of head/group L2)
    activation_stats: frozenset[str] = frozenset()
    #: whether sum of squared activation gradients (dPhi/dy)^2 is needed (one backward to activations)
    needs_activation_gradients: bool = False
    #: whether weight gradients of the projections are needed (expensive; Taylor-style methods only)
    needs_weight_gradients: bool = False
    #: objective this method always uses (e.g. Taylor: "nll"); None means `RKUConfig.objective`
    objective: str | None = None

    @property
    def needs_calibration(self) -> bool:
        return bool(self.activation_stats) or self.needs_activation_gradients or self.needs_weight_gradients

    def config_stats(self, config) -> frozenset[str]:
        """Statistics a config option of this method needs on top of `activation_stats` (none by default)."""
        return frozenset()

    def score_block(self, block: BlockView, stats: BlockStats, config) -> StructureScores:
        """Scores of one block's structures; `config` is the run's RKUConfig (granularity, normalization, seed)."""
        raise NotImplementedError


def group_slices(values: torch.Tensor, block: BlockView, granularity: str) -> torch.Tensor:
    """Sum per-channel o_proj-input values into per-query-head or per-KV-group totals."""
    width = block.head_dim if granularity == "query_head" else block.head_dim * block.group_size
    return values.view(-1, width).sum(dim=1)


def centered_spread(part: dict[str, torch.Tensor], tokens: int) -> torch.Tensor:
    """Per channel, the standard deviation over calibration tokens, sqrt(E[y^2] - E[y]^2) (from "sum" and "sq")."""
    if "sum" not in part or "sq" not in part:
        raise ValueError("activity='centered' needs the 'sum' and 'sq' statistics of the scoring pass.")
    mean = part["sum"] / tokens
    return (part["sq"] / tokens - mean * mean).clamp_min(0).sqrt()


@register_importance("rku")
class RKUImportance(Importance):
    """Relative Kinetic Utility: A_s * sqrt(F_s), divided by the block mean of sqrt(F) per structure type.

    A_s = mean_t |y_s| (L2 over the slice for heads/groups), F_s = mean_t ||dPhi/dy_s||^2 (diagonal Fisher).
    With `activity="centered"`, A_s is the spread around the calibration mean instead (the standard deviation of a
    channel; for a head, the RMS norm of its slice's deviation): what is lost when the mean is compensated.
    """

    activation_stats = frozenset({"abs", "slice_norm"})
    needs_activation_gradients = True

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
