"""Allocation: turn per-structure scores into a pruning plan (which channels, heads and KV groups each layer keeps).

Within a layer, structures are removed weakest first as "units": single FFN channels (or chunks, so kept widths stay
multiples of `round_to`), KV groups, or (query_head granularity under GQA) slots of one query head per KV group.
`global` ranks all units of all layers in one pool; `uniform` keeps the same widths in every layer.

How the global pool compares units of different layers and types is `RKUConfig.ranking`:
- ``score``: the importance's normalized score of the unit (the mean over its structures);
- ``per_parameter``: the unit's summed score divided by the parameters it removes;
- ``standardized``: scores z-scored per structure type over all layers (FLAP's way), so neither type's scale wins;
- ``expected_loss``: RKU's diagonal-Fisher estimate of the loss increase, K_s^2 = A_s^2 F_s (raw, before the
  block normalization, which would change its unit), summed over the unit and divided by the parameters it removes;
- ``measured_loss``: 1/2 mean_t (g_s . y_s)^2, the Fisher of a multiplicative mask on the structure (no independence
  assumption between |y| and |g| inside a head's slice), summed over the unit and divided by its parameters.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import torch

from optimum_rku.config import AUTO_ROUND_BLOCKS
from optimum_rku.scoring.scores import PruningScores

logger = logging.getLogger(__name__)

TOLERANCE = 0.01  # achieved sparsity must land within +-1 percentage point of the target


@dataclass
class LayerPlan:
    """What one decoder block keeps (indices into the block's current channels / heads)."""

    kept_channels: list[int]
    kept_heads: list[int]
    kept_kv_heads: list[int]

    @property
    def intermediate_size(self) -> int:
        return len(self.kept_channels)

    @property
    def num_heads(self) -> int:
        return len(self.kept_heads)

    @property
    def num_kv_heads(self) -> int:
        return len(self.kept_kv_heads)


@dataclass
class PruningPlan:
    """Per-layer kept structures plus the parameter accounting that produced them."""

    layers: list[LayerPlan]
    prunable_before: int
    removed: int
    target_sparsity: float
    allocation: str
    notes: list[str] = field(default_factory=list)
    ranking: str = "score"

    @property
    def achieved_sparsity(self) -> float:
        return self.removed / self.prunable_before if self.prunable_before else 0.0

    def is_uniform(self) -> bool:
        shapes = {(lp.intermediate_size, lp.num_heads, lp.num_kv_heads) for lp in self.layers}
        return len(shapes) == 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "allocation": self.allocation,
            "ranking": self.ranking if self.allocation == "global" else None,
            "target_sparsity": self.target_sparsity,
            "achieved_sparsity": self.achieved_sparsity,
            "prunable_before": self.prunable_before,
            "prunable_removed": self.removed,
            "layers": [
                {
                    "layer": i,
                    "intermediate_size": lp.intermediate_size,
                    "num_attention_heads": lp.num_heads,
                    "num_key_value_heads": lp.num_kv_heads,
                    "kept_channels": lp.kept_channels,
                    "kept_heads": lp.kept_heads,
                    "kept_kv_heads": lp.kept_kv_heads,
                }
                for i, lp in enumerate(self.layers)
            ],
            "notes": self.notes,
        }


@dataclass
class _Units:
    """Removal units of one (layer, type), in the only order they may be removed (weakest first)."""

    layer: int
    kind: str  # "mlp" | "attention"
    scores: list[float]
    costs: list[int]
    members: list[list[int]]  # structure indices removed by each unit
    max_units: int  # how many units may go (min_keep, protected layers, at least one structure kept)
    removed: int = 0


def pool_ranking(config) -> str:
    """The ranking a plan uses: `config.resolved_ranking` for a global plan that removes something, else "score".

    A uniform plan (and a plan at sparsity 0) has no pool to order: each layer removes its structures in the
    importance's own order.
    """
    return config.resolved_ranking if config.allocation == "global" and config.sparsity > 0 else "score"


def _yields_fisher(importance: str) -> bool:
    """Whether scores of the method `importance` are kinetic utilities with Fisher statistics (unknown methods:
    scores loaded from a file of a method this process has not registered, are not)."""
    from optimum_rku.importance import available_importances, get_importance

    return importance in available_importances() and get_importance(importance).yields_fisher


def ranking_keys(scores: PruningScores, config) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-structure values the global pool compares (FFN channels, attention structures), by `pool_ranking`.

    Structures removed in an earlier iteration carry -inf in the normalized scores and keep it here.
    """
    ranking = pool_ranking(config)
    mlp, attention = scores.mlp, scores.attention
    if ranking == "expected_loss":
        if not _yields_fisher(scores.importance):
            raise ValueError(
                f"ranking='expected_loss' needs kinetic-utility scores (an importance that yields Fisher statistics), "
                f"but these come from importance={scores.importance!r}."
            )

        def loss(raw: torch.Tensor, normalized: torch.Tensor) -> torch.Tensor:
            return torch.where(torch.isneginf(normalized), normalized, raw.clamp_min(0).pow(2))

        return [loss(r, n) for r, n in zip(scores.mlp_raw, mlp)], [
            loss(r, n) for r, n in zip(scores.attention_raw, attention)
        ]
    if ranking == "measured_loss":
        if scores.mlp_loss is None or scores.attention_loss is None:
            raise ValueError(
                "ranking='measured_loss' needs scores that hold per-structure loss estimates (RKU scores computed by "
                "this version); recompute them, or use ranking 'expected_loss'."
            )
        return [torch.where(torch.isneginf(n), n, v) for v, n in zip(scores.mlp_loss, mlp)], [
            torch.where(torch.isneginf(n), n, v) for v, n in zip(scores.attention_loss, attention)
        ]
    if ranking == "standardized":
        return _standardize_pooled(mlp), _standardize_pooled(attention)
    return mlp, attention


def _standardize_pooled(values: list[torch.Tensor]) -> list[torch.Tensor]:
    """(s - mean) / std over every finite score of one structure type in all layers; constant scores become 0."""
    pooled = torch.cat([v.flatten() for v in values]) if values else torch.zeros(0)
    finite = pooled[torch.isfinite(pooled)]
    if finite.numel() < 2 or not float(finite.std()) > 0:
        return [torch.where(torch.isfinite(v), torch.zeros_like(v), v) for v in values]
    mean, std = finite.mean(), finite.std()
    return [torch.where(torch.isfinite(v), (v - mean) / std, v) for v in values]


def _unit_keys(members: list[list[int]], values: torch.Tensor, costs: list[int], per_parameter: bool) -> list[float]:
    """One key per unit (mean member value, or summed value per parameter), made non-decreasing along the prefix.

    A layer's units must leave weakest first, so a key may not drop below the one before it (this only matters for
    the smaller first chunk under `round_to`, where a mean and a per-parameter sum can disagree by a rounding).
    """
    keys = []
    for unit, cost in zip(members, costs):
        chunk = values[unit]
        key = float(chunk.sum()) / cost if per_parameter else float(chunk.mean())
        keys.append(max(key, keys[-1]) if keys else key)
    return keys


def kv_credit(scores: PruningScores, config, layer: int) -> int:
    """`kv_cache_tokens` times the K/V values per token one attention unit of `layer` stores (0 if it frees none).

    Added to the unit's parameter cost in the per-parameter rankings, so a KV group is priced by the memory it frees
    when serving a sequence of `kv_cache_tokens` tokens, not by its weights alone; a query-head slot under GQA frees
    no cache. The removal budget itself stays in parameters.
    """
    tokens = config.kv_cache_tokens_for(scores.context_length)
    if not tokens:
        return 0
    if scores.head_dim is None:
        raise ValueError(
            "kv_cache_tokens > 0 needs the head_dim of the scored model, which these scores (from an older version) "
            "do not record; prune them through RKUPruner (it fills it in) or set kv_cache_tokens=0."
        )
    width = scores.widths[layer]
    group = width["num_attention_heads"] // width["num_key_value_heads"]
    frees_kv = scores.attention_granularity == "kv_group" or group == 1
    return tokens * 2 * scores.head_dim if frees_kv else 0


def _min_kept(count: int, min_keep: float) -> int:
    return min(count, max(1, math.ceil(min_keep * count - 1e-9)))


def _mlp_units(
    layer: int, scores: torch.Tensor, cost: int, step: int, config, protected: bool, per_parameter: bool
) -> _Units:
    order = torch.argsort(scores, stable=True).tolist()
    total = len(order)
    first = total % step if step > 1 else 1
    sizes = ([first] if first else []) + [step] * ((total - first) // step) if step > 1 else [1] * total
    if step == 1:
        members = [[i] for i in order]
    else:
        members, start = [], 0
        for size in sizes:
            members.append(order[start : start + size])
            start += size
    unit_costs = [cost * len(m) for m in members]
    unit_scores = _unit_keys(members, scores, unit_costs, per_parameter)
    keep = _min_kept(total, config.min_keep)
    if step > 1:
        keep = min(total, math.ceil(keep / step) * step) if keep > 0 else 0
    max_units, removed_structures = 0, 0
    for m in members:
        if total - removed_structures - len(m) < keep:
            break
        removed_structures += len(m)
        max_units += 1
    return _Units(layer, "mlp", unit_scores, unit_costs, members, 0 if protected else max_units)


def _attention_units(
    layer: int,
    scores: torch.Tensor,
    cost: int,
    width: dict[str, int],
    granularity: str,
    config,
    protected: bool,
    per_parameter: bool,
    rank_cost: float,
) -> _Units:
    heads, kv_heads = width["num_attention_heads"], width["num_key_value_heads"]
    group = heads // kv_heads
    if granularity == "query_head" and group > 1:
        # slot r = the r-th weakest query head of every KV group; groups stay equal-sized
        ranked = [torch.argsort(scores[g * group : (g + 1) * group], stable=True) + g * group for g in range(kv_heads)]
        members = [[int(r[slot]) for r in ranked] for slot in range(group)]
        count = group
    else:
        order = torch.argsort(scores, stable=True).tolist()
        members = [[i] for i in order]
        count = len(order)
    unit_scores = _unit_keys(members, scores, [rank_cost] * count, per_parameter)
    keep = _min_kept(count, getattr(config, "attention_floor", config.min_keep))
    max_units = 0 if protected else count - keep
    return _Units(layer, "attention", unit_scores, [cost] * count, members, max_units)


def _build_units(scores: PruningScores, config, cap: int | None = None) -> list[_Units]:
    """Every layer's removable units; `cap` bounds the FFN block `round_to="auto"` may pick."""
    units = []
    protected = set(config.protected_layers)
    mlp_keys, attention_keys = ranking_keys(scores, config)
    per_parameter = pool_ranking(config) in ("per_parameter", "expected_loss", "measured_loss")
    for layer in range(scores.num_layers):
        is_protected = layer in protected
        rank_cost = scores.attention_cost[layer] + kv_credit(scores, config, layer)
        step = config.round_to_for(scores.widths[layer]["intermediate_size"], cap)
        mlp = _mlp_units(layer, mlp_keys[layer], scores.mlp_cost[layer], step, config, is_protected, per_parameter)
        attn = _attention_units(
            layer,
            attention_keys[layer],
            scores.attention_cost[layer],
            scores.widths[layer],
            scores.attention_granularity,
            config,
            is_protected,
            per_parameter,
            rank_cost,
        )
        if not config.prunes_mlp:
            mlp.max_units = 0
        if not config.prunes_attention:
            attn.max_units = 0
        units += [mlp, attn]
    return units


def _allocate_global(units: list[_Units], target: float) -> float:
    """Greedy ascending-score removal; a unit that would overshoot the target is skipped for cheaper ones."""
    candidates = sorted(
        ((u.scores[i], u.layer, u.kind, i, u) for u in units for i in range(u.max_units)),
        key=lambda c: (c[0], c[1], c[2], c[3]),
    )
    removed = 0.0
    blocked: set[int] = set()
    for _score, _layer, _kind, position, unit in candidates:
        if id(unit) in blocked or position != unit.removed:
            continue
        cost = unit.costs[position]
        if removed + cost > target:
            blocked.add(id(unit))  # later units of this (layer, type) come after this one: stop here
            continue
        unit.removed += 1
        removed += cost
    # one fix-up: if a next-in-line unit overshoots by less than the current shortfall, take the weakest such unit
    shortfall = target - removed
    best = None
    for unit in units:
        if unit.removed < unit.max_units:
            cost = unit.costs[unit.removed]
            if removed + cost - target < shortfall and (best is None or unit.scores[unit.removed] < best[0]):
                best = (unit.scores[unit.removed], unit)
    if best is not None:
        unit = best[1]
        removed += unit.costs[unit.removed]
        unit.removed += 1
    return removed


def _allocate_uniform(units: list[_Units], target: float, slack: float, config) -> float:
    """Pick one (mlp units, attention units) removal count shared by all non-protected layers."""
    mlp_units = [u for u in units if u.kind == "mlp" and u.max_units > 0] if config.prunes_mlp else []
    attn_units = [u for u in units if u.kind == "attention" and u.max_units > 0] if config.prunes_attention else []
    free_layers = sorted({u.layer for u in units if u.max_units > 0} - set(config.protected_layers))
    if not free_layers:
        return 0.0
    ref_mlp = next((u for u in units if u.kind == "mlp" and u.layer == free_layers[0]), None)
    ref_attn = next((u for u in units if u.kind == "attention" and u.layer == free_layers[0]), None)
    layers_m, layers_a = len(mlp_units), len(attn_units)
    mlp_options = [0] if not mlp_units else range(min(u.max_units for u in mlp_units) + 1)
    attn_options = [0] if not attn_units else range(min(u.max_units for u in attn_units) + 1)
    mlp_prefix = [0, *accumulate(ref_mlp.costs)] if ref_mlp else [0]
    attn_prefix = [0, *accumulate(ref_attn.costs)] if ref_attn else [0]
    total_mlp, total_attn = max(mlp_prefix[-1], 1), max(attn_prefix[-1], 1)
    best_key, best = None, (0, 0)
    for a in attn_options:
        attn_removed = attn_prefix[a]
        for m in mlp_options:
            mlp_removed = mlp_prefix[m]
            removed = layers_m * mlp_removed + layers_a * attn_removed
            error = abs(removed - target)
            within = error <= slack
            # prefer: within tolerance, then balanced attention/mlp fractions, then smallest error
            balance = abs(attn_removed / total_attn - mlp_removed / total_mlp) if ref_attn and ref_mlp else 0.0
            key = (not within, balance if within else error, error)
            if best_key is None or key < best_key:
                best_key, best = key, (m, a)
    m, a = best
    removed = 0.0
    for unit in mlp_units:
        unit.removed = m
        removed += sum(unit.costs[:m])
    for unit in attn_units:
        unit.removed = a
        removed += sum(unit.costs[:a])
    return removed


def allocate(scores: PruningScores, config, prunable_before: int) -> PruningPlan:
    """Choose what every layer keeps so that `config.sparsity` of the prunable parameters is removed."""
    if config.allocation == "uniform":
        shapes = {tuple(w.values()) for w in scores.widths}
        if len(shapes) > 1:
            raise ValueError("allocation='uniform' needs a model whose layers all have the same widths; use 'global'.")
    target = config.sparsity * prunable_before
    # round_to="auto": the largest FFN block whose plan still meets the target within TOLERANCE (a uniform plan
    # moves every layer by one block at a time, so it may need a smaller one than a global plan)
    for cap in [*AUTO_ROUND_BLOCKS, 1] if config.round_to == "auto" else [None]:
        units = _build_units(scores, config, cap)
        if config.sparsity == 0:
            removed = 0.0
        elif config.allocation == "global":
            removed = _allocate_global(units, target)
        else:  # aim well inside the +-1% band, then prefer balanced attention / FFN removal
            removed = _allocate_uniform(units, target, 0.5 * TOLERANCE * prunable_before, config)
        if abs(removed - target) <= TOLERANCE * prunable_before:
            break
    layers = []
    for layer in range(scores.num_layers):
        width = scores.widths[layer]
        mlp = next(u for u in units if u.layer == layer and u.kind == "mlp")
        attn = next(u for u in units if u.layer == layer and u.kind == "attention")
        gone_channels = {c for m in mlp.members[: mlp.removed] for c in m}
        gone_attn = {s for m in attn.members[: attn.removed] for s in m}
        heads, kv_heads = width["num_attention_heads"], width["num_key_value_heads"]
        group = heads // kv_heads
        if scores.attention_granularity == "query_head" and group > 1:
            kept_heads = [h for h in range(heads) if h not in gone_attn]
            kept_kv = list(range(kv_heads))
        else:  # kv_group (or MHA, where a query head is its own group)
            kept_kv = [g for g in range(kv_heads) if g not in gone_attn]
            kept_heads = [h for h in range(heads) if h // group in kept_kv]
        kept_channels = [c for c in range(width["intermediate_size"]) if c not in gone_channels]
        layers.append(LayerPlan(kept_channels, kept_heads, kept_kv))
    plan = PruningPlan(
        layers,
        prunable_before,
        int(removed),
        config.sparsity,
        config.allocation,
        ranking=config.resolved_ranking,
    )
    gap = abs(plan.achieved_sparsity - config.sparsity)
    if gap > TOLERANCE:
        note = (
            f"Achieved sparsity {plan.achieved_sparsity:.4f} is {gap:.4f} away from the target {config.sparsity}: "
            "min_keep, protected_layers, round_to or the structure sizes do not allow a closer fit."
        )
        plan.notes.append(note)
        logger.warning(note)
    return plan
