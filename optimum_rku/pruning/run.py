"""A pruning run resolved once: the validated config, its importance object, and every check that must pass first.

`RKUPruner` resolves a `PruningRun` at the top of `compute_scores` / `prune` and hands the objects down the pipeline
(calibrate -> score -> allocate -> remove), so no stage looks the importance up by name again.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from optimum_rku.config import RKUConfig
from optimum_rku.importance import Importance, get_importance
from optimum_rku.models.geometry import layer_widths
from optimum_rku.models.specs import check_output_bias, output_bias_flag
from optimum_rku.scoring.scores import PruningScores, fingerprint_mismatch, model_fingerprint

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruningRun:
    """What one `compute_scores` / `prune` call runs with."""

    config: RKUConfig
    importance: Importance
    #: bias compensation was chosen by "auto" (scores without calibration means then switch it off)
    auto_compensation: bool = False

    def with_scores(self, scores: PruningScores) -> PruningRun:
        """The run for precomputed scores: "auto" compensation is off when they hold no calibration means."""
        if self.auto_compensation and self.config.bias_compensation and scores.mlp_input_mean is None:
            return dataclasses.replace(self, config=dataclasses.replace(self.config, bias_compensation=False))
        return self


def resolve_run(pruning_config: Any, model, tokenizer, num_layers: int) -> PruningRun:
    """Validate `pruning_config` (an RKUConfig, a dict of its fields or None) against the model, before any work."""
    if pruning_config is None:
        config = RKUConfig()
    elif isinstance(pruning_config, dict):
        config = RKUConfig.from_dict(pruning_config)
    elif isinstance(pruning_config, RKUConfig):
        config = copy.deepcopy(pruning_config)
        config.validate()
    else:
        raise TypeError(f"pruning_config must be an RKUConfig, a dict or None, got {type(pruning_config).__name__}.")
    importance = get_importance(config.importance)
    # "auto" is recorded as the number it stands for on this model
    config.kv_cache_tokens = config.kv_cache_tokens_for(getattr(model.config, "max_position_embeddings", None))
    auto = config.bias_compensation == "auto"
    if auto:
        holds_bias = all(output_bias_flag(model.config, part) for part in config.target_parts)
        config.bias_compensation = importance.needs_calibration and holds_bias
        if not config.bias_compensation:
            logger.info(
                "bias_compensation='auto' is off here: %s",
                f"model_type={model.config.model_type!r} cannot hold a down_proj / o_proj bias"
                if importance.needs_calibration
                else f"importance {config.importance!r} has no calibration means",
            )
    if config.bias_compensation:
        check_output_bias(model.config, config.target_parts)
    from optimum_rku.scoring.offload import check_no_weight_gradients

    check_no_weight_gradients(model, importance)  # before any scoring
    if config.calibration == "self_generated" and config.generation_chat_template == "on":
        from optimum_rku.data.prompts import uses_chat_template

        if tokenizer is None:
            raise ValueError("This pruner has no tokenizer: pass tokenizer=... to RKUPruner.from_pretrained.")
        uses_chat_template(tokenizer, "on")  # no template: a clear error before any work
    for layer in config.protected_layers:
        if layer >= num_layers:
            raise ValueError(f"RKUConfig.protected_layers has {layer}; allowed: 0..{num_layers - 1} for this model.")
    return PruningRun(config, importance, auto)


def check_scores(scores: Any, config: RKUConfig, widths: list[dict[str, int]], model=None) -> None:
    """Scores of another model, architecture, granularity or method, or inconsistent ones: one clear line each.

    `widths` are the dense model's; `model` (still dense) is compared with the scores' architecture and fingerprint.
    """
    if not isinstance(scores, PruningScores):
        raise TypeError(f"scores must be PruningScores (e.g. PruningScores.load(path)), got {type(scores).__name__}.")
    scores.validate()
    if model is not None and scores.architecture is not None and scores.architecture != model.config.model_type:
        raise ValueError(
            f"These scores were computed on a {scores.architecture!r} model; this pruner holds a "
            f"{model.config.model_type!r} model. Compute scores on this model: pruner.compute_scores(config)."
        )
    if scores.widths != widths:
        difference = _widths_difference(scores.widths, widths)
        raise ValueError(
            f"These scores were computed on a model with other layer widths ({difference}). Compute scores on this "
            "model: pruner.compute_scores(config)."
        )
    if model is not None and scores.fingerprint is not None and layer_widths(model) == widths:
        differs = fingerprint_mismatch(scores.fingerprint, model_fingerprint(model))
        if differs:
            raise ValueError(
                f"These scores were computed on another model of the same shape: {differs}. Compute scores on this "
                "model: pruner.compute_scores(config)."
            )
    if scores.attention_granularity != config.attention_granularity:
        raise ValueError(
            f"Scores use attention_granularity={scores.attention_granularity!r} but the config asks for "
            f"{config.attention_granularity!r}."
        )
    for name in ("importance", "normalization"):
        if getattr(scores, name) != getattr(config, name):
            raise ValueError(
                f"Scores use {name}={getattr(scores, name)!r} but the config asks for {getattr(config, name)!r}; "
                f"pass RKUConfig({name}={getattr(scores, name)!r}, ...) so rku_config.json records what ranked."
            )
    if config.bias_compensation and (scores.mlp_input_mean is None or scores.attention_input_mean is None):
        raise ValueError(
            "bias_compensation=True needs scores that hold calibration input means; compute them with "
            "compute_scores(RKUConfig(..., bias_compensation=True))."
        )


def _widths_difference(scored: list[dict[str, int]], here: list[dict[str, int]]) -> str:
    """The first difference between two per-layer width lists, in words."""
    if len(scored) != len(here):
        return f"{len(scored)} layers there, {len(here)} here"
    for index, (a, b) in enumerate(zip(scored, here)):
        for key in sorted(a.keys() | b.keys()):
            if a.get(key) != b.get(key):
                return f"layer {index} {key}: {a.get(key)} there, {b.get(key)} here"
    return "they differ"
