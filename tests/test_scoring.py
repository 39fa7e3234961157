"""Scoring: RKU's definition on real hooks, its invariances, no weight gradients, objectives, scores round trips."""

import copy

import pytest
import torch
from conftest import tiny_model, token_dataset

from optimum_rku import PruningScores, RKUConfig, RKUPruner
from optimum_rku.importance import BlockStats, get_importance
from optimum_rku.models.blocks import blocks
from optimum_rku.models.geometry import prunable_parameters
from optimum_rku.scoring import compute_scores


def test_rku_invariant_to_block_gradient_scale():
    model = tiny_model("llama")
    block = blocks(model)[0]
    rku = get_importance("rku")
    g = torch.Generator().manual_seed(0)
    stats = BlockStats(tokens=10)
    stats.ffn = {"abs": torch.rand(80, generator=g), "grad_sq": torch.rand(80, generator=g)}
    stats.attn = {
        "slice_norm_head": torch.rand(8, generator=g),
        "slice_norm_group": torch.rand(4, generator=g),
        "grad_sq": torch.rand(64, generator=g),
    }
    scaled = copy.deepcopy(stats)
    scaled.ffn["grad_sq"] *= 7.0**2  # gradients x7 -> squared gradients x49
    scaled.attn["grad_sq"] *= 7.0**2
    for granularity in ("kv_group", "query_head"):
        a = rku.score_block(block, stats, RKUConfig(attention_granularity=granularity))
        b = rku.score_block(block, scaled, RKUConfig(attention_granularity=granularity))
        assert torch.allclose(a.mlp, b.mlp, rtol=1e-5) and torch.allclose(a.attention, b.attention, rtol=1e-5)
        raw = rku.score_block(block, scaled, RKUConfig(attention_granularity=granularity, normalization="none"))
        assert torch.allclose(raw.mlp, 7 * a.mlp_raw, rtol=1e-5)


def test_rku_definition_on_real_hooks():
    """A_s and F_s from the hooks match a direct autograd computation of the same quantities."""
    model = tiny_model("llama")
    data = token_dataset(n=2, length=10)
    config = RKUConfig(normalization="none", objective="nll")
    scores = compute_scores(model, config, data, batch_size=2, progress=False)
    captured = {}

    def keep(module, args):
        args[0].retain_grad()
        captured["y"] = args[0]

    layer = blocks(model)[2]
    handle = layer.down_proj.register_forward_pre_hook(keep)
    total_abs = torch.zeros(80)
    total_g2 = torch.zeros(80)
    tokens = 0
    for ids in data["input_ids"]:
        ids = torch.tensor([ids])
        out = model(ids, labels=ids)
        (out.loss * (ids.shape[1] - 1)).backward()  # summed NLL
        y = captured["y"]
        total_abs += y.detach().abs().sum((0, 1))
        total_g2 += (y.grad**2).sum((0, 1))
        tokens += ids.shape[1]
        model.zero_grad()
    handle.remove()
    expected = (total_abs / tokens) * (total_g2 / tokens).sqrt()
    assert torch.allclose(scores.mlp[2], expected, rtol=1e-4, atol=1e-9)


def test_no_weight_gradients_are_materialized(calib):
    model = tiny_model("llama")
    RKUPruner(model).compute_scores(RKUConfig(), calibration_dataset=calib, progress=False)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_scores_round_trip_and_reuse(tmp_path, calib):
    pruner = RKUPruner(tiny_model("llama"))
    scores = pruner.compute_scores(RKUConfig(), calibration_dataset=calib, progress=False)
    for suffix in (".json", ".safetensors"):
        path = scores.save(tmp_path / f"scores{suffix}")
        loaded = PruningScores.load(path)
        assert all(torch.equal(a, b) for a, b in zip(scores.mlp, loaded.mlp))
        assert loaded.mlp_cost == scores.mlp_cost and loaded.calibration == scores.calibration
    sizes = []
    for sparsity in (0.2, 0.5):
        p = RKUPruner(tiny_model("llama"))
        p.prune(RKUConfig(sparsity=sparsity), scores=PruningScores.load(tmp_path / "scores.json"), progress=False)
        sizes.append(prunable_parameters(p.model))
    assert sizes[0] > sizes[1]


@pytest.mark.parametrize("objective", ["self_nll", "hidden_energy", "nll"])
def test_objectives_give_finite_distinct_scores(calib, objective):
    scores = RKUPruner(tiny_model("gemma2")).compute_scores(
        RKUConfig(objective=objective), calibration_dataset=calib, progress=False
    )
    assert all(torch.isfinite(s).all() and (s > 0).any() for s in scores.mlp + scores.attention)


class _FixedLogits(torch.nn.Module):
    """A stand-in causal LM whose logits are one trainable tensor (batch 1), to read per-token logit gradients."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.logits)


@pytest.mark.parametrize("objective", ["nll", "decode_nll", "self_nll"])
def test_token_gradient_floor_lifts_only_saturated_tokens_to_the_floor(objective):
    from optimum_rku.scoring.objectives import objective_value

    # three positions, vocab 4: position 0 predicts token 2 with near certainty, position 1 is unsure between 1 and 3
    logits = torch.tensor([[[0.0, 0.0, 30.0, 0.0], [0.0, 1.0, 0.0, 1.1], [0.0, 0.0, 0.0, 0.0]]])
    batch = {"input_ids": torch.tensor([[0, 2, 3]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    norms = {}
    for floor in (0.0, 0.05):
        model = _FixedLogits(logits)
        objective_value(model, batch, objective, token_floor=floor).backward()
        norms[floor] = model.logits.grad[0, :2].norm(dim=-1)
    p = logits[0, :2].softmax(-1)
    target = torch.tensor([2, 3]) if objective != "self_nll" else logits[0, :2].argmax(-1)
    expected = (p - torch.nn.functional.one_hot(target, 4)).norm(dim=-1)
    assert torch.allclose(norms[0.0], expected, atol=1e-6)  # plain NLL: the gradient is p - e_y
    assert expected[0] < 0.05 < expected[1]
    assert torch.allclose(norms[0.05][0], torch.tensor(0.05), atol=1e-6)  # the saturated token is lifted to the floor
    assert torch.allclose(norms[0.05][1], expected[1], atol=1e-6)  # the unsure token is left as it was


def test_token_gradient_floor_is_validated_and_leaves_taylor_as_published(calib):
    with pytest.raises(ValueError, match="token_gradient_floor"):
        RKUConfig(token_gradient_floor=-0.1)
    with pytest.raises(TypeError, match="token_gradient_floor"):
        RKUConfig(token_gradient_floor="high")
    assert RKUConfig().token_gradient_floor == 0.01

    def scores(**kwargs):
        config = RKUConfig(calibration="dataset", **kwargs)
        return RKUPruner(tiny_model("llama")).compute_scores(config, calibration_dataset=calib, progress=False)

    # a floor above every token's gradient norm weights each token by 1 / ||p - e_y||: RKU's Fisher changes ...
    plain, floored = scores(token_gradient_floor=0.0), scores(token_gradient_floor=1.0)
    assert not all(torch.allclose(a, b) for a, b in zip(plain.mlp_raw, floored.mlp_raw))
    # ... Taylor keeps its own objective (plain NLL of the text), whatever the floor
    plain, floored = (scores(importance="taylor", token_gradient_floor=f) for f in (0.0, 1.0))
    assert all(torch.equal(a, b) for a, b in zip(plain.mlp, floored.mlp))
