"""The importance interface: `Importance` (what statistics a method needs, how it scores a block) and its data types."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from optimum_rku.models.blocks import BlockView


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


#: global rankings every method can feed: they read only the scores `score_block` returns
SCORE_RANKINGS = frozenset({"score", "per_parameter", "standardized"})
#: rankings that price a unit in expected loss, for methods that yield Fisher statistics (`yields_fisher`):
#: `expected_loss` squares the raw score (A^2 F), `measured_loss` reads `mlp_loss` / `attention_loss`
FISHER_RANKINGS = frozenset({"expected_loss", "measured_loss"})


class Importance:
    """Base class. Subclasses set which statistics they need and implement `score_block`.

    A method also declares what it can do, so config, allocation and the card ask it instead of naming it:
    `yields_fisher` (its raw score is A * sqrt(F) and it fills the mask-Fisher losses when the ranking is
    `measured_loss`), `default_ranking` (what `ranking="auto"` means for it), `title` (how cards name it), and
    `check_config` for options only it reads.
    """

    name: str = "base"
    #: how model cards name the method (default: "the `name` importance criterion")
    title: str = ""
    #: whether the raw scores are kinetic utilities A * sqrt(F) and, with `ranking="measured_loss"`, `score_block`
    #: fills `mlp_loss` / `attention_loss` (1/2 mean_t (dPhi/dm_s)^2, from the "mask_sq" statistics)
    yields_fisher: bool = False
    #: the global ranking `ranking="auto"` resolves to
    default_ranking: str = "score"
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

    @property
    def rankings(self) -> frozenset[str]:
        """The global rankings this method's scores can feed."""
        return SCORE_RANKINGS | (FISHER_RANKINGS if self.yields_fisher else frozenset())

    @property
    def card_name(self) -> str:
        """How a model card names the method."""
        return self.title or f"the `{self.name}` importance criterion"

    def check_config(self, config) -> None:
        """Raise ValueError for an option of `config` this method cannot run with (none by default)."""

    def config_stats(self, config) -> frozenset[str]:
        """Statistics a config option of this method needs on top of `activation_stats` (none by default)."""
        return frozenset()

    def score_block(self, block: BlockView, stats: BlockStats, config) -> StructureScores:
        """Scores of one block's structures; `config` is the run's RKUConfig (granularity, normalization, seed)."""
        raise NotImplementedError


def group_slices(values: torch.Tensor, block: BlockView, granularity: str) -> torch.Tensor:
    """Sum per-channel o_proj-input values into per-query-head or per-KV-group totals."""
    width = block.structure_width(granularity)
    return values.view(-1, width).sum(dim=1)


def centered_spread(part: dict[str, torch.Tensor], tokens: int) -> torch.Tensor:
    """Per channel, the standard deviation over calibration tokens, sqrt(E[y^2] - E[y]^2) (from "sum" and "sq")."""
    if "sum" not in part or "sq" not in part:
        raise ValueError("activity='centered' needs the 'sum' and 'sq' statistics of the scoring pass.")
    mean = part["sum"] / tokens
    return (part["sq"] / tokens - mean * mean).clamp_min(0).sqrt()
