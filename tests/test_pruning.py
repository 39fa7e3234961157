"""Pruning: allocation within ±1%, physical removal equal to masking, attention structures, floors, iterations."""

import copy

import pytest
import torch
from conftest import FAMILIES, logits, masked_logits, sample_inputs, tiny_model

from optimum_rku import RKUConfig, RKUPruner
from optimum_rku.models.blocks import blocks
from optimum_rku.models.geometry import prunable_parameters
from optimum_rku.models.masks import plan_masks
from optimum_rku.pruning.allocation import TOLERANCE


def test_sparsity_zero_is_noop(calib):
    model = tiny_model("llama")
    before = logits(model)
    pruned = RKUPruner(model).prune(RKUConfig(sparsity=0.0), calibration_dataset=calib, progress=False)
    assert torch.equal(before, logits(pruned))
    assert prunable_parameters(pruned) == prunable_parameters(tiny_model("llama"))


@pytest.mark.parametrize("allocation", ["global", "uniform"])
@pytest.mark.parametrize("sparsity", [0.2, 0.4, 0.6])
def test_removed_fraction_within_one_percent(calib, allocation, sparsity):
    model = tiny_model("llama", intermediate_size=160, hidden_size=48, head_dim=6)
    before = prunable_parameters(model)
    pruner = RKUPruner(model)
    pruned = pruner.prune(
        RKUConfig(sparsity=sparsity, allocation=allocation), calibration_dataset=calib, progress=False
    )
    achieved = 1 - prunable_parameters(pruned) / before
    assert abs(achieved - sparsity) <= TOLERANCE
    assert abs(pruner.plan.achieved_sparsity - achieved) < 1e-9
    widths = {(b.intermediate_size, b.num_heads, b.num_kv_heads) for b in blocks(pruned)}
    if allocation == "uniform":
        assert len(widths) == 1


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("granularity", ["kv_group", "query_head"])
def test_physical_removal_equals_masking(calib, family, granularity):
    model = tiny_model(family)
    reference = copy.deepcopy(model)
    pruner = RKUPruner(model)
    config = RKUConfig(sparsity=0.4, attention_granularity=granularity, targets="both", min_keep=0.25)
    pruned = pruner.prune(config, calibration_dataset=calib, progress=False)
    masks = plan_masks(reference, pruner.plan)
    expected = masked_logits(reference, masks)
    assert torch.allclose(logits(pruned), expected, atol=1e-5)
    # something was really removed, attention included
    assert prunable_parameters(pruned) < prunable_parameters(reference)


def test_attention_structures_are_removed_and_kv_cache_shrinks(calib):
    model = tiny_model("qwen2")
    pruner = RKUPruner(model)
    pruned = pruner.prune(
        RKUConfig(sparsity=0.2, targets="attention", allocation="uniform"), calibration_dataset=calib, progress=False
    )
    assert {b.num_kv_heads for b in blocks(pruned)} == {2}
    assert {b.num_heads for b in blocks(pruned)} == {4}
    assert pruned.config.num_key_value_heads == 2 and pruned.config.num_attention_heads == 4
    meta = pruner.metadata()
    assert meta["kv_cache"]["reduction"] == pytest.approx(0.5)
    out = pruned.generate(sample_inputs(), max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 16)


def test_query_head_granularity_keeps_groups_equal(calib):
    model = tiny_model("llama")
    pruner = RKUPruner(model)
    pruned = pruner.prune(
        RKUConfig(sparsity=0.4, targets="attention", attention_granularity="query_head", allocation="uniform"),
        calibration_dataset=calib,
        progress=False,
    )
    for block in blocks(pruned):
        assert block.num_kv_heads == 4 and block.num_heads % 4 == 0 and block.num_heads < 8


def test_round_to_protected_layers_and_min_keep(calib):
    model = tiny_model("llama", intermediate_size=96)
    pruner = RKUPruner(model)
    config = RKUConfig(sparsity=0.5, round_to=16, protected_layers=[1], min_keep=0.3)
    pruned = pruner.prune(config, calibration_dataset=calib, progress=False)
    views = blocks(pruned)
    assert views[1].intermediate_size == 96 and views[1].num_kv_heads == 4
    for b in views:
        assert b.intermediate_size % 16 == 0
        assert b.intermediate_size >= 0.3 * 96 and b.num_kv_heads >= 2


def test_zero_structure_scores_zero_and_goes_first(calib):
    model = tiny_model("llama")
    with torch.no_grad():
        block = blocks(model)[1]
        block.mlp.gate_proj.weight[7].zero_()  # channel 7 of layer 1 never activates
        block.attn.o_proj.weight.zero_()  # keep attention in the pool but irrelevant here
        block.attn.v_proj.weight[8:16].zero_()  # KV group 1 of layer 1 produces nothing
    pruner = RKUPruner(model)
    scores = pruner.compute_scores(RKUConfig(), calibration_dataset=calib, progress=False)
    assert scores.mlp[1][7] == 0
    assert scores.attention[1][1] == 0
    assert float(scores.mlp[1][7]) <= min(float(s.min()) for s in scores.mlp)
    plan_pruner = RKUPruner(tiny_model("llama"))
    plan_pruner.model.load_state_dict(model.state_dict())
    plan_pruner.prune(RKUConfig(sparsity=0.05, targets="mlp"), scores=scores, progress=False)
    assert 7 not in plan_pruner.plan.layers[1].kept_channels


def test_iterative_pruning_nested(calib):
    pruner = RKUPruner(tiny_model("llama"))
    pruner.prune(RKUConfig(sparsity=0.4, num_iterations=2), calibration_dataset=calib, progress=False)
    assert abs(pruner.plan.achieved_sparsity - 0.4) <= TOLERANCE


@pytest.mark.parametrize(
    "width, step", [(4864, 256), (14336, 256), (1536, 64), (704, 32), (2048, 128), (511, 1), (256, 1), (96, 1)]
)
def test_round_to_auto_picks_the_largest_block_with_sixteen_per_layer(width, step):
    assert RKUConfig(round_to="auto").round_to_for(width) == step
    assert RKUConfig(round_to=8).round_to_for(width) == 8


def test_round_to_auto_rounds_each_layer_and_meets_the_target(calib):
    model = tiny_model("llama", intermediate_size=512)  # 16 blocks of 32: "auto" resolves to 32
    prunable = prunable_parameters(model)
    pruned = RKUPruner(model).prune(
        RKUConfig(sparsity=0.4, round_to="auto"), calibration_dataset=calib, progress=False
    )
    widths = [b.intermediate_size for b in blocks(pruned)]
    assert all(w % 32 == 0 for w in widths) and min(widths) < 512
    assert abs((1 - prunable_parameters(pruned) / prunable) - 0.4) <= 0.01
    with pytest.raises(ValueError, match="round_to='fast'.*'auto'"):
        RKUConfig(round_to="fast")


def test_round_to_auto_steps_down_until_a_uniform_plan_meets_the_target(calib):
    """A uniform plan moves every layer by one block: where 32-channel blocks cannot land within a point of the
    target, "auto" takes a smaller block instead of missing it (a fixed round_to=32 misses)."""
    model = tiny_model("llama", intermediate_size=512)
    prunable = prunable_parameters(model)
    settings = dict(sparsity=0.3, allocation="uniform", targets="mlp")
    fixed = RKUPruner(copy.deepcopy(model)).prune(
        RKUConfig(**settings, round_to=32), calibration_dataset=calib, progress=False
    )
    auto = RKUPruner(model).prune(RKUConfig(**settings, round_to="auto"), calibration_dataset=calib, progress=False)
    assert abs((1 - prunable_parameters(fixed) / prunable) - 0.3) > 0.01  # 32-channel steps cannot hit 30%
    assert abs((1 - prunable_parameters(auto) / prunable) - 0.3) <= 0.01
    assert len({b.intermediate_size for b in blocks(auto)}) == 1
