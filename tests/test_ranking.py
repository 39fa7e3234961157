"""Global-pool rankings (heads and channels on one scale), attention floors and RKU's centered activity."""

import pytest
import torch
from conftest import tiny_model, token_dataset

from optimum_rku import PruningScores, RKUConfig
from optimum_rku.models.blocks import blocks
from optimum_rku.models.geometry import prunable_parameters
from optimum_rku.pruning.allocation import allocate, ranking_keys
from optimum_rku.scoring import compute_scores

CHANNEL_COST, GROUP_COST = 3, 10


def weights_only(**kwargs) -> RKUConfig:
    """A config whose per-parameter rankings cost units by their weights alone (no KV-cache credit)."""
    return RKUConfig(kv_cache_tokens=0, **kwargs)


def hand_scores(mlp, attention, importance="rku", mlp_raw=None, attention_raw=None) -> PruningScores:
    """Scores of a model with len(mlp) layers, MHA (a KV group is one head), hand-chosen costs."""
    mlp = [torch.tensor(m, dtype=torch.float32) for m in mlp]
    attention = [torch.tensor(a, dtype=torch.float32) for a in attention]
    return PruningScores(
        importance=importance,
        objective=None,
        normalization="fisher_trace",
        attention_granularity="kv_group",
        mlp=mlp,
        attention=attention,
        mlp_raw=[torch.tensor(m, dtype=torch.float32) for m in mlp_raw] if mlp_raw else mlp,
        attention_raw=[torch.tensor(a, dtype=torch.float32) for a in attention_raw] if attention_raw else attention,
        mlp_cost=[CHANNEL_COST] * len(mlp),
        attention_cost=[GROUP_COST] * len(mlp),
        widths=[
            {"intermediate_size": len(m), "num_attention_heads": len(a), "num_key_value_heads": len(a)}
            for m, a in zip(mlp, attention)
        ],
    )


def prunable(scores: PruningScores) -> int:
    return sum(
        len(m) * c + len(a) * g
        for m, a, c, g in zip(scores.mlp, scores.attention, scores.mlp_cost, scores.attention_cost)
    )


def removed(plan, scores):
    """(channels removed, KV groups removed) over all layers."""
    channels = sum(w["intermediate_size"] - lp.intermediate_size for w, lp in zip(scores.widths, plan.layers))
    groups = sum(w["num_key_value_heads"] - lp.num_kv_heads for w, lp in zip(scores.widths, plan.layers))
    return channels, groups


def test_cheap_per_parameter_head_goes_before_a_costly_channel():
    # a KV group scores 12 for 10 parameters (1.2 each); the weakest channel scores 5 for 3 (1.67 each)
    scores = hand_scores([[5, 6, 7, 8], [5, 6, 7, 8]], [[12, 30], [40, 50]])
    target = GROUP_COST / prunable(scores)
    by_score = allocate(scores, weights_only(sparsity=target, min_keep=0.0, ranking="score"), prunable(scores))
    by_parameter = allocate(
        scores, weights_only(sparsity=target, min_keep=0.0, ranking="per_parameter"), prunable(scores)
    )
    assert removed(by_score, scores)[1] == 0  # raw scores: the head never loses to a channel
    assert removed(by_parameter, scores) == (0, 1)
    assert by_parameter.layers[0].kept_kv_heads == [1] and by_parameter.ranking == "per_parameter"
    assert by_parameter.to_dict()["ranking"] == "per_parameter"


def test_standardized_ranking_is_invariant_to_a_constant_factor_on_one_type():
    g = torch.Generator().manual_seed(0)
    mlp = [torch.rand(12, generator=g).tolist() for _ in range(3)]
    attention = [torch.rand(4, generator=g).tolist() for _ in range(3)]
    plans = {}
    for factor in (1.0, 1000.0):
        scores = hand_scores(mlp, [[factor * v for v in a] for a in attention])
        for ranking in ("standardized", "score"):
            config = weights_only(sparsity=0.4, min_keep=0.0, ranking=ranking)
            plans[ranking, factor] = [
                (lp.kept_channels, lp.kept_kv_heads) for lp in allocate(scores, config, prunable(scores)).layers
            ]
    assert plans["standardized", 1.0] == plans["standardized", 1000.0]
    assert plans["score", 1.0] != plans["score", 1000.0]  # the raw pool does depend on the scale of a type


def test_standardized_keys_are_z_scores_per_type_over_all_layers():
    scores = hand_scores([[1, 2], [3, 4]], [[10, 30], [50, 70]])
    mlp, attention = ranking_keys(scores, RKUConfig(ranking="standardized"))
    pooled = torch.tensor([1.0, 2, 3, 4])
    assert torch.allclose(torch.cat(mlp), (pooled - pooled.mean()) / pooled.std())
    assert torch.allclose(torch.cat(attention), (pooled - pooled.mean()) / pooled.std())


def test_expected_loss_ranks_squared_raw_kinetic_per_parameter():
    # normalized scores rank the head first; raw kinetic energies (loss units) say the channel costs less loss
    scores = hand_scores(
        [[1.0, 9.0], [9.0, 9.0]],
        [[0.5, 9.0], [9.0, 9.0]],
        mlp_raw=[[1.0, 9.0], [9.0, 9.0]],
        attention_raw=[[100.0, 900.0], [900.0, 900.0]],
    )
    mlp, attention = ranking_keys(scores, weights_only(ranking="expected_loss"))
    assert mlp[0][0] == 1.0 and attention[0][0] == 100.0**2
    target = CHANNEL_COST / prunable(scores)
    plan = allocate(scores, weights_only(sparsity=target, min_keep=0.0, ranking="expected_loss"), prunable(scores))
    assert removed(plan, scores) == (1, 0) and plan.layers[0].kept_channels == [1]
    score_plan = allocate(
        scores, weights_only(sparsity=GROUP_COST / prunable(scores), min_keep=0.0, ranking="score"), prunable(scores)
    )
    assert removed(score_plan, scores)[1] == 1
    with pytest.raises(ValueError, match="needs kinetic-utility scores.*flap"):
        ranking_keys(hand_scores([[1.0]], [[1.0]], importance="flap"), weights_only(ranking="expected_loss"))


def test_masked_structures_stay_first_under_every_ranking():
    scores = hand_scores([[float("-inf"), 2, 3, 4]], [[5, 6]])
    for ranking in ("score", "per_parameter", "standardized", "expected_loss"):
        mlp, _ = ranking_keys(scores, RKUConfig(ranking=ranking))
        assert torch.isneginf(mlp[0][0]) and torch.isfinite(mlp[0][1:]).all()


def test_attention_floor_is_separate_from_the_channel_floor():
    scores = hand_scores([[9, 9, 9, 9]] * 2, [[1, 2, 3, 4]] * 2)  # heads are the cheapest units
    config = weights_only(sparsity=0.5, min_keep=0.0, min_keep_attention=0.75, ranking="per_parameter")
    plan = allocate(scores, config, prunable(scores))
    assert all(lp.num_kv_heads == 3 for lp in plan.layers)  # at most a quarter of the groups may go
    assert config.attention_floor == 0.75 and weights_only(min_keep=0.3).attention_floor == 0.3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ranking": "cost"}, "ranking"),
        ({"activity": "rms"}, "activity"),
        ({"min_keep_attention": 1.5}, "min_keep_attention"),
        ({"ranking": "expected_loss", "importance": "flap"}, "expected_loss"),
    ],
)
def test_bad_ranking_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RKUConfig(**kwargs)


def test_config_round_trips_the_new_fields():
    config = RKUConfig(ranking="expected_loss", activity="centered", min_keep_attention=0.5)
    assert RKUConfig.from_dict(config.to_dict()) == config


def test_centered_activity_is_the_spread_around_the_calibration_mean():
    """activity='centered': A_s = std over tokens (channels), sqrt of the slice's summed variances (KV groups)."""
    model = tiny_model("llama")
    data = token_dataset(n=3, length=10)
    config = RKUConfig(normalization="none", objective="nll", activity="centered", calibration="dataset")
    scores = compute_scores(model, config, data, batch_size=3, progress=False)
    plain = compute_scores(model, RKUConfig(normalization="none", objective="nll"), data, batch_size=3, progress=False)
    captured = []
    block = blocks(model)[1]

    def keep(module, args):
        captured.append(args[0].detach()[0])

    handle = block.o_proj.register_forward_pre_hook(keep)
    with torch.no_grad():
        for ids in data["input_ids"]:
            model(torch.tensor([ids]))
    handle.remove()
    y = torch.cat(captured)  # [tokens, channels]
    spread = y.var(dim=0, unbiased=False).view(block.num_kv_heads, -1).sum(1).sqrt()
    plain_activity = y.view(len(y), block.num_kv_heads, -1).norm(dim=-1).mean(0)
    # same Fisher in both runs: the ratio of scores is the ratio of the activity terms
    assert torch.allclose(scores.attention[1] / plain.attention[1], spread / plain_activity, rtol=1e-3)


def test_metadata_and_card_show_the_ranking_and_the_attention_removed(calib):
    from optimum_rku import RKUPruner
    from optimum_rku.hub.card import build_model_card

    pruner = RKUPruner(tiny_model("llama"))
    config = RKUConfig(sparsity=0.4, ranking="per_parameter", calibration="dataset", min_keep_attention=0.5)
    pruner.prune(config, calibration_dataset=calib, progress=False)
    meta = pruner.metadata()
    attention = meta["attention"]
    assert attention["kv_groups_before"] == 12 and attention["query_heads_before"] == 24
    removed_groups = 12 - sum(lp.num_kv_heads for lp in pruner.plan.layers)
    assert attention["kv_groups_after"] == 12 - removed_groups
    assert attention["kv_groups_removed_fraction"] == pytest.approx(removed_groups / 12)
    assert meta["plan"]["ranking"] == "per_parameter" and meta["pruning_config"]["ranking"] == "per_parameter"
    card = str(build_model_card(meta, chart=False))
    assert "ranking: per_parameter, KV cache priced at 128 tokens" in card  # "auto": the whole 128-token context
    assert "KV groups (" in card and "(attention: 0.5)" in card
    meta["pruning_config"]["kv_cache_tokens"] = 0
    assert "ranking: per_parameter)" in str(build_model_card(meta, chart=False))


@pytest.mark.parametrize(
    "family, importance, expected", [("llama", "rku", True), ("qwen2", "rku", False), ("llama", "magnitude", False)]
)
def test_auto_bias_compensation_turns_on_where_the_family_holds_a_bias(calib, family, importance, expected):
    from optimum_rku import RKUPruner

    pruner = RKUPruner(tiny_model(family))
    config = RKUConfig(sparsity=0.3, importance=importance, calibration="dataset", bias_compensation="auto")
    pruner.prune(config, calibration_dataset=calib, progress=False)
    assert pruner.metadata()["pruning_config"]["bias_compensation"] is expected
    assert config.bias_compensation == "auto"  # the caller's config is not changed
    down = blocks(pruner.model)[0].down_proj
    assert (down.bias is not None) is expected


def test_auto_bias_compensation_with_scores_that_lack_means(calib):
    from optimum_rku import RKUPruner

    scores = RKUPruner(tiny_model("llama")).compute_scores(
        RKUConfig(calibration="dataset", bias_compensation=False), calib, progress=False
    )
    pruner = RKUPruner(tiny_model("llama"))
    pruner.prune(RKUConfig(sparsity=0.3, bias_compensation="auto"), scores=scores, progress=False)
    assert pruner.metadata()["pruning_config"]["bias_compensation"] is False
    with pytest.raises(ValueError, match="calibration input means"):
        RKUPruner(tiny_model("llama")).prune(RKUConfig(sparsity=0.3, bias_compensation=True), scores=scores)


def test_measured_loss_is_half_the_mean_squared_mask_gradient():
    """ranking='measured_loss': 1/2 mean_t (dPhi/dm_s)^2 with m_s a multiplicative mask on structure s."""
    model = tiny_model("llama")
    data = token_dataset(n=2, length=10)
    config = RKUConfig(objective="nll", calibration="dataset", ranking="measured_loss")
    scores = compute_scores(model, config, data, batch_size=1, progress=False)
    unasked = RKUConfig(objective="nll", ranking="expected_loss")
    assert compute_scores(model, unasked, data, progress=False).mlp_loss is None  # only if asked
    block = blocks(model)[1]
    group = block.o_proj.in_features // block.num_kv_heads
    total_ffn, total_attn, tokens = torch.zeros(block.intermediate_size), torch.zeros(block.num_kv_heads), 0
    for ids in data["input_ids"]:
        ids = torch.tensor([ids])
        masks = {
            "ffn": torch.ones(ids.shape[1], block.intermediate_size, requires_grad=True),
            "attn": torch.ones(ids.shape[1], block.num_kv_heads, requires_grad=True),
        }
        hooks = [
            block.down_proj.register_forward_pre_hook(lambda m, a, masks=masks: (a[0] * masks["ffn"],)),
            block.o_proj.register_forward_pre_hook(
                lambda m, a, masks=masks: (
                    (a[0].view(1, -1, block.num_kv_heads, group) * masks["attn"][..., None]).flatten(2),
                )
            ),
        ]
        out = model(ids, labels=ids)
        (out.loss * (ids.shape[1] - 1)).backward()
        for h in hooks:
            h.remove()
        total_ffn += (masks["ffn"].grad ** 2).sum(0)
        total_attn += (masks["attn"].grad ** 2).sum(0)
        tokens += ids.shape[1]
        model.zero_grad()
    assert torch.allclose(scores.mlp_loss[1], 0.5 * total_ffn / tokens, rtol=1e-4, atol=1e-12)
    assert torch.allclose(scores.attention_loss[1], 0.5 * total_attn / tokens, rtol=1e-4, atol=1e-12)
    plan = allocate(scores, RKUConfig(sparsity=0.3, ranking="measured_loss"), prunable_parameters(model))
    assert plan.ranking == "measured_loss"
    with pytest.raises(ValueError, match="measured_loss"):
        allocate(
            compute_scores(model, unasked, data, progress=False),
            RKUConfig(sparsity=0.3, ranking="measured_loss"),
            prunable_parameters(model),
        )


def test_auto_ranking_resolves_per_importance():
    from optimum_rku.importance import get_importance

    assert RKUConfig(importance="rku").resolved_ranking == get_importance("rku").default_ranking
    assert RKUConfig(importance="flap").resolved_ranking == get_importance("flap").default_ranking == "score"
    assert RKUConfig(importance="rku", ranking="standardized").resolved_ranking == "standardized"
    scores = hand_scores([[5, 6, 7, 8]], [[12, 30]])
    scores.mlp_loss, scores.attention_loss, scores.head_dim = scores.mlp, scores.attention, 1
    plan = allocate(scores, RKUConfig(sparsity=0.3), prunable(scores))
    assert plan.ranking == get_importance("rku").default_ranking == "measured_loss"


def test_kv_cache_credit_prices_a_kv_group_by_the_cache_it_frees():
    # a KV group scores 30 for 10 parameters (3 each); the weakest channel 5 for 3 (1.67 each): weights alone keep
    # the group. With head_dim 1 it stores 2 values per token; at 4 tokens it is credited 8 more: 30 / 18 = 1.67 - e
    scores = hand_scores([[5, 6, 7, 8], [5, 6, 7, 8]], [[29.9, 40], [40, 50]])
    scores.head_dim = 1
    target = GROUP_COST / prunable(scores)
    plain = allocate(scores, weights_only(sparsity=target, min_keep=0.0, ranking="per_parameter"), prunable(scores))
    priced = allocate(
        scores,
        RKUConfig(sparsity=target, min_keep=0.0, ranking="per_parameter", kv_cache_tokens=4),
        prunable(scores),
    )
    assert removed(plain, scores)[1] == 0
    assert removed(priced, scores) == (0, 1) and priced.layers[0].kept_kv_heads == [1]
    assert priced.removed == GROUP_COST  # the budget stays in parameters
    # the raw-score pool has no costs: the credit changes nothing there
    by_score = allocate(
        scores, RKUConfig(sparsity=target, min_keep=0.0, ranking="score", kv_cache_tokens=4), prunable(scores)
    )
    assert removed(by_score, scores)[1] == 0


def test_kv_cache_credit_skips_query_head_slots_that_free_no_cache():
    scores = hand_scores([[5, 6, 7, 8]], [[1.0, 1.0, 1.0, 1.0]])
    scores.widths[0]["num_key_value_heads"] = 2  # GQA: two query heads per KV group
    scores.attention_granularity = "query_head"
    scores.head_dim = 1
    from optimum_rku.pruning.allocation import kv_credit

    config = RKUConfig(ranking="per_parameter", kv_cache_tokens=100, attention_granularity="query_head")
    assert kv_credit(scores, config, 0) == 0
    scores.attention_granularity = "kv_group"
    assert kv_credit(scores, RKUConfig(ranking="per_parameter", kv_cache_tokens=100), 0) == 200


def test_kv_cache_credit_on_scores_without_head_dim(calib):
    scores = hand_scores([[5, 6, 7, 8]], [[12, 30]])
    with pytest.raises(ValueError, match="head_dim"):
        allocate(scores, RKUConfig(sparsity=0.2, ranking="per_parameter", kv_cache_tokens=8), prunable(scores))
    # through the pruner, older score files get the model's head_dim
    from optimum_rku import RKUPruner

    model = tiny_model("llama")
    config = RKUConfig(sparsity=0.3, importance="magnitude", ranking="per_parameter", kv_cache_tokens=64)
    fresh = RKUPruner(model).compute_scores(config)
    assert fresh.head_dim == 8
    fresh.head_dim = None
    pruner = RKUPruner(tiny_model("llama"))
    pruner.prune(config, scores=fresh)
    assert pruner.plan.achieved_sparsity == pytest.approx(0.3, abs=0.01)


@pytest.mark.parametrize("value", [-1, 1.5, True, "4096", "max"])
def test_bad_kv_cache_tokens(value):
    with pytest.raises((ValueError, TypeError), match="kv_cache_tokens"):
        RKUConfig(kv_cache_tokens=value)


def test_auto_kv_cache_tokens_is_one_sequence_of_6144_tokens_or_the_whole_context(calib):
    from optimum_rku import RKUPruner
    from optimum_rku.config import DEFAULT_KV_CACHE_TOKENS
    from optimum_rku.pruning.allocation import kv_credit

    assert RKUConfig().kv_cache_tokens == "auto" and DEFAULT_KV_CACHE_TOKENS == 6144
    assert RKUConfig().kv_cache_tokens_for(8192) == 6144 and RKUConfig().kv_cache_tokens_for(512) == 512
    assert RKUConfig().kv_cache_tokens_for(None) == 6144 and RKUConfig(kv_cache_tokens=9).kv_cache_tokens_for(512) == 9
    pruner = RKUPruner(tiny_model("llama"))  # max_position_embeddings=128
    pruner.prune(RKUConfig(sparsity=0.3, calibration="dataset"), calibration_dataset=calib, progress=False)
    assert pruner.scores.context_length == 128 and pruner.scores.head_dim == 8
    assert pruner.pruning_config.kv_cache_tokens == 128  # recorded as the number it stood for
    assert pruner.metadata()["pruning_config"]["kv_cache_tokens"] == 128
    assert kv_credit(pruner.scores, RKUConfig(), 0) == 128 * 2 * 8  # allocate() alone resolves it from the scores
    with pytest.raises(SystemExit):  # the CLI flag takes 'auto' or an int, nothing else
        import argparse

        from optimum_rku.cli.args import add_config_arguments

        parser = argparse.ArgumentParser()
        add_config_arguments(parser)
        assert parser.parse_args(["--kv-cache-tokens", "auto"]).kv_cache_tokens == "auto"
        assert parser.parse_args(["--kv-cache-tokens", "64"]).kv_cache_tokens == 64
        parser.parse_args(["--kv-cache-tokens", "lots"])
