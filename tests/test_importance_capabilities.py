"""Methods declare what they can do: config, allocation and the card ask the registry, never a method's name.

A new method that yields Fisher statistics is one class with `@register_importance` (here, in this file) and can use
the loss-based global rankings without any change to config, allocation or the card.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_tokenizer, tiny_model, token_dataset

from optimum_rku import RKUConfig, RKUPruner
from optimum_rku.importance import Importance, StructureScores, get_importance, register_importance, registry
from optimum_rku.importance.base import FISHER_RANKINGS, SCORE_RANKINGS, group_slices


@pytest.fixture
def fisher_method(monkeypatch):
    """Register 'plain_kinetic' (A * sqrt(F), no block normalization) for one test only."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_importance("plain_kinetic")
    class PlainKinetic(Importance):
        """Kinetic utility without the block-relative normalization."""

        title = "plain kinetic utility"
        activation_stats = frozenset({"abs", "slice_norm"})
        needs_activation_gradients = True
        yields_fisher = True
        default_ranking = "measured_loss"

        def config_stats(self, config) -> frozenset[str]:
            return frozenset({"mask_sq"}) if config.resolved_ranking == "measured_loss" else frozenset()

        def score_block(self, block, stats, config) -> StructureScores:
            tokens = max(stats.tokens, 1)
            key = "slice_norm_head" if config.attention_granularity == "query_head" else "slice_norm_group"
            mlp = stats.ffn["abs"] / tokens * (stats.ffn["grad_sq"] / tokens).sqrt()
            fisher = group_slices(stats.attn["grad_sq"], block, config.attention_granularity) / tokens
            attention = stats.attn[key] / tokens * fisher.sqrt()
            result = StructureScores(mlp=mlp, attention=attention, mlp_raw=mlp, attention_raw=attention)
            mask = "mask_sq_head" if config.attention_granularity == "query_head" else "mask_sq_group"
            if "mask_sq" in stats.ffn:
                result.mlp_loss = 0.5 * stats.ffn["mask_sq"] / tokens
                result.attention_loss = 0.5 * stats.attn[mask] / tokens
            return result

    return PlainKinetic


def test_capabilities_of_the_built_in_methods():
    rku, flap = get_importance("rku"), get_importance("flap")
    assert (
        rku.yields_fisher
        and rku.rankings == SCORE_RANKINGS | FISHER_RANKINGS
        and rku.default_ranking == "measured_loss"
    )
    assert not flap.yields_fisher and flap.rankings == SCORE_RANKINGS and flap.default_ranking == "score"
    assert rku.card_name == "Relative Kinetic Utility (RKU)" and flap.card_name == "the `flap` importance criterion"
    with pytest.raises(ValueError, match=r"ranking='measured_loss' needs Fisher.*'flap'.*allowed.*'rku'"):
        RKUConfig(importance="flap", ranking="measured_loss")


@pytest.mark.parametrize("ranking", ["auto", "measured_loss", "expected_loss", "per_parameter"])
def test_a_new_method_with_fisher_statistics_uses_the_loss_rankings(fisher_method, ranking, tmp_path):
    config = RKUConfig(importance="plain_kinetic", ranking=ranking, sparsity=0.3, calibration="dataset")
    assert config.resolved_ranking == ("measured_loss" if ranking == "auto" else ranking)
    pruner = RKUPruner(tiny_model("llama"), make_tokenizer())
    model = pruner.prune(config, calibration_dataset=token_dataset(), progress=False)
    assert pruner.plan.ranking == config.resolved_ranking
    assert abs(pruner.plan.achieved_sparsity - 0.3) < 0.05
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()
    if ranking == "auto":
        pruner.save_pretrained(tmp_path)
        assert "plain kinetic utility" in (tmp_path / "README.md").read_text()
