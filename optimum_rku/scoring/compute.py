"""`compute_scores`: one calibration pass (if the importance needs one), then every block scored into `PruningScores`."""

from __future__ import annotations

import torch

from optimum_rku.importance import BlockStats, Importance, StructureScores, get_importance
from optimum_rku.models.blocks import BlockView, blocks
from optimum_rku.models.geometry import layer_widths, structure_costs
from optimum_rku.scoring.collect import NonFiniteError, collect_stats, nonfinite_remedy
from optimum_rku.scoring.scores import PruningScores, model_fingerprint


def compute_scores(
    model: torch.nn.Module,
    config,
    dataset=None,
    batch_size: int = 1,
    masks: dict | None = None,
    calibration_summary: dict | None = None,
    progress: bool = True,
    importance: Importance | None = None,
) -> PruningScores:
    """Score every FFN channel and attention structure of `model` with `importance` (default: `config.importance`)."""
    importance = get_importance(config.importance) if importance is None else importance
    views = blocks(model)
    # calibration means for bias compensation (True, or "auto": the pruner decides later whether to use them)
    wants_means = bool(getattr(config, "bias_compensation", False)) and importance.needs_calibration
    if importance.needs_calibration:
        stats, tokens = _calibrate(model, config, importance, dataset, batch_size, masks, progress, wants_means)
    else:
        stats, tokens = [BlockStats() for _ in views], 0
    scored = _score_blocks(views, stats, importance, config, masks, next(model.parameters()).dtype)
    summary = dict(calibration_summary or {})
    summary["num_tokens"] = tokens
    mlp_mean = attention_mean = None
    if wants_means:
        mlp_mean = [s.ffn["sum"].float().cpu() / max(tokens, 1) for s in stats]
        attention_mean = [s.attn["sum"].float().cpu() / max(tokens, 1) for s in stats]
    return PruningScores(
        importance=config.importance,
        objective=(importance.objective or config.objective)
        if importance.needs_activation_gradients or importance.needs_weight_gradients
        else None,
        normalization=config.normalization,
        attention_granularity=config.attention_granularity,
        **scored,
        widths=layer_widths(model),
        calibration=summary,
        mlp_input_mean=mlp_mean,
        attention_input_mean=attention_mean,
        head_dim=views[0].head_dim if views else None,
        context_length=getattr(model.config, "max_position_embeddings", None),
        architecture=getattr(getattr(model, "config", None), "model_type", None),
        fingerprint=model_fingerprint(model),
    )


def _calibrate(
    model: torch.nn.Module,
    config,
    importance: Importance,
    dataset,
    batch_size: int,
    masks: dict | None,
    progress: bool,
    wants_means: bool,
) -> tuple[list[BlockStats], int]:
    """The calibration pass: per-block statistics (with the sums bias compensation needs) and the tokens seen."""
    if dataset is None or len(dataset) == 0:
        raise ValueError(f"The calibration set is empty: importance {config.importance!r} needs calibration data.")
    objective = importance.objective or config.objective
    extra = frozenset({"sum"}) if wants_means else frozenset()
    extra = extra | importance.config_stats(config)
    # a method with its own published objective (Taylor: plain NLL) keeps it as published: no token floor
    floor = 0.0 if importance.objective else config.token_gradient_floor
    return collect_stats(model, dataset, importance, objective, batch_size, masks, progress, extra, floor)


def _score_blocks(
    views: list[BlockView],
    stats: list[BlockStats],
    importance: Importance,
    config,
    masks: dict | None,
    dtype: torch.dtype,
) -> dict[str, list | None]:
    """Score every block: the `PruningScores` lists (scores, raw scores, costs, losses), masked structures -inf."""
    mlp, attention, mlp_raw, attention_raw, mlp_cost, attention_cost = [], [], [], [], [], []
    mlp_loss, attention_loss = [], []
    for block, block_stats in zip(views, stats):
        result = importance.score_block(block, block_stats, config)
        _check_scores_finite(result, block.index, importance, dtype)
        if result.mlp_loss is not None and result.attention_loss is not None:
            mlp_loss.append(result.mlp_loss.detach().float().cpu())
            attention_loss.append(result.attention_loss.detach().float().cpu())
        zeros_mlp = torch.zeros(block.intermediate_size)
        n_attn = block.num_structures(config.attention_granularity)
        zeros_attn = torch.zeros(n_attn)
        mlp.append((result.mlp if result.mlp is not None else zeros_mlp).detach().float().cpu())
        attention.append((result.attention if result.attention is not None else zeros_attn).detach().float().cpu())
        # a missing raw score shares its score's storage: the -inf of masked structures below reaches it too
        mlp_raw.append((result.mlp_raw if result.mlp_raw is not None else mlp[-1]).detach().float().cpu())
        attention_raw.append(
            (result.attention_raw if result.attention_raw is not None else attention[-1]).detach().float().cpu()
        )
        ffn_cost, attn_cost = structure_costs(block, config.attention_granularity)
        mlp_cost.append(ffn_cost)
        attention_cost.append(attn_cost)
        if masks:  # structures already removed in an earlier iteration stay removed (nested masks)
            for part, scores in (("ffn", mlp[-1]), ("attn", attention[-1])):
                mask = masks.get((block.index, part))
                if mask is not None:
                    kept = _structure_mask(mask, block, part, config.attention_granularity)
                    scores[~kept] = float("-inf")
    return {
        "mlp": mlp,
        "attention": attention,
        "mlp_raw": mlp_raw,
        "attention_raw": attention_raw,
        "mlp_cost": mlp_cost,
        "attention_cost": attention_cost,
        "mlp_loss": mlp_loss if len(mlp_loss) == len(views) else None,
        "attention_loss": attention_loss if len(attention_loss) == len(views) else None,
    }


def _check_scores_finite(result, layer: int, importance, dtype: torch.dtype) -> None:
    """NaN or inf scores would be ranked as if they meant something: stop, naming the layer and the score."""
    for name in ("mlp", "attention", "mlp_raw", "attention_raw", "mlp_loss", "attention_loss"):
        value = getattr(result, name)
        if value is not None and not bool(torch.isfinite(value).all()):
            kind = "NaN" if bool(torch.isnan(value).any()) else "inf"
            if importance.needs_calibration:
                cause, remedy = "its weights or statistics hold NaN / inf", nonfinite_remedy(dtype)
            else:
                cause, remedy = "a data-free method: the weights hold NaN / inf", "Check the model's weights."
            raise NonFiniteError(
                f"Importance {importance.name!r} gave {kind} {name} scores in layer {layer} ({cause}). {remedy}",
                layer=layer,
                statistic=f"score:{name}",
                rows=[],
            )


def _structure_mask(channel_mask: torch.Tensor, block: BlockView, part: str, granularity: str) -> torch.Tensor:
    """Which structures a channel mask keeps (a structure is kept when any of its channels is)."""
    kept = channel_mask.bool().cpu()
    if part == "ffn":
        return kept
    width = block.structure_width(granularity)
    return kept.view(-1, width).any(dim=1)


class _Unscored(Importance):
    """Scores every structure 0 and needs no data: what a plan that removes nothing is allocated from."""

    def score_block(self, block: BlockView, stats: BlockStats, config) -> StructureScores:
        return StructureScores()


def zero_scores(model: torch.nn.Module, config) -> PruningScores:
    """All-zero scores with the model's widths and costs (sparsity 0 needs a plan but no scoring pass)."""
    return compute_scores(model, config, progress=False, importance=_Unscored())
