"""Baseline importance methods: definitions on hand-built tensors, sanity, and end-to-end pruning."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import FAMILIES, tiny_model, token_dataset  # noqa: E402

from optimum_rku import RKUConfig, RKUPruner  # noqa: E402
from optimum_rku.importance import BlockStats, available_importances, get_importance  # noqa: E402
from optimum_rku.models.blocks import blocks  # noqa: E402
from optimum_rku.models.geometry import prunable_parameters  # noqa: E402
from optimum_rku.models.specs import PROJECTIONS  # noqa: E402
from optimum_rku.pruning.allocation import TOLERANCE  # noqa: E402
from optimum_rku.scoring import compute_scores  # noqa: E402
from optimum_rku.scoring.objectives import objective_value  # noqa: E402

METHODS = ["magnitude", "wanda", "flap", "taylor", "random"]
PROJ = PROJECTIONS


def config(**kw):
    return RKUConfig(**kw)


def block_of(family="llama", **overrides):
    model = tiny_model(family, **overrides)
    return model, blocks(model)[1]


def head_members(block, granularity):
    """Query heads, and KV heads owned, of each attention structure (independent of the library's helpers)."""
    group = block.group_size
    if granularity == "query_head" and group > 1:
        return [([h], []) for h in range(block.num_heads)]
    return [(list(range(g * group, (g + 1) * group)), [g]) for g in range(block.num_kv_heads)]


def rows(w, h, hd):
    return w[h * hd : (h + 1) * hd, :]


def cols(w, h, hd):
    return w[:, h * hd : (h + 1) * hd]


def random_stats(block, seed=0, tokens=37):
    g = torch.Generator().manual_seed(seed)
    stats = BlockStats(tokens=tokens)
    for part, width in (("ffn", block.intermediate_size), ("attn", block.num_heads * block.head_dim)):
        total = torch.randn(width, generator=g) * tokens * 0.3
        # sq >= sum^2 / tokens (Cauchy-Schwarz) so the variances are valid
        sq = total.pow(2) / tokens + torch.rand(width, generator=g) * tokens
        stats.add(part, "sum", total)
        stats.add(part, "sq", sq)
    return stats


def test_registry_lists_all_methods():
    assert set(METHODS + ["rku"]) <= set(available_importances())
    for name in METHODS:
        assert RKUConfig(importance=name).importance == name
    with pytest.raises(ValueError, match="importance"):
        RKUConfig(importance="obs")


@pytest.mark.parametrize("granularity,kv", [("kv_group", 4), ("query_head", 4), ("query_head", 8)])
def test_magnitude_definition(granularity, kv):
    model, block = block_of("qwen2", num_key_value_heads=kv)  # qwen2: q/k/v biases are owned too
    W = {n: block.weight(n).detach() for n in PROJ}
    B = {n: block.bias(n) for n in ("q_proj", "k_proj", "v_proj")}
    scores = get_importance("magnitude").score_block(block, BlockStats(), config(attention_granularity=granularity))
    for j in range(block.intermediate_size):
        expected = (
            W["gate_proj"][j].pow(2).sum() + W["up_proj"][j].pow(2).sum() + W["down_proj"][:, j].pow(2).sum()
        ).sqrt()
        assert torch.isclose(scores.mlp[j], expected, rtol=1e-5)
    hd = block.head_dim
    for s, (heads, kvs) in enumerate(head_members(block, granularity)):
        total = sum(rows(W["q_proj"], h, hd).pow(2).sum() + cols(W["o_proj"], h, hd).pow(2).sum() for h in heads)
        total = total + sum(B["q_proj"][h * hd : (h + 1) * hd].pow(2).sum() for h in heads)
        for g in kvs:
            for n in ("k_proj", "v_proj"):
                total = total + rows(W[n], g, hd).pow(2).sum() + B[n][g * hd : (g + 1) * hd].pow(2).sum()
        assert torch.isclose(scores.attention[s], total.sqrt(), rtol=1e-5)


@pytest.mark.parametrize("granularity", ["kv_group", "query_head"])
def test_wanda_definition(granularity):
    model, block = block_of()
    stats = random_stats(block)
    scores = get_importance("wanda").score_block(block, stats, config(attention_granularity=granularity))
    down, o = block.down_proj.weight.detach(), block.o_proj.weight.detach()
    for j in range(block.intermediate_size):
        expected = sum(abs(float(down[i, j])) * float(stats.ffn["sq"][j]) ** 0.5 for i in range(down.shape[0]))
        assert scores.mlp[j].item() == pytest.approx(expected, rel=1e-5)
    hd = block.head_dim
    for s, (heads, _) in enumerate(head_members(block, granularity)):
        channels = [h * hd + d for h in heads for d in range(hd)]
        expected = sum(o[:, c].abs().sum().item() * stats.attn["sq"][c].item() ** 0.5 for c in channels)
        assert scores.attention[s].item() == pytest.approx(expected, rel=1e-5)
    assert torch.equal(scores.mlp, scores.mlp_raw)


@pytest.mark.parametrize("granularity", ["kv_group", "query_head"])
def test_flap_definition(granularity):
    model, block = block_of()
    stats = random_stats(block, seed=3, tokens=50)
    scores = get_importance("flap").score_block(block, stats, config(attention_granularity=granularity))
    n = stats.tokens

    def fluct(weight, part, c):
        var = part["sq"][c].item() / n - (part["sum"][c].item() / n) ** 2
        return var * weight[:, c].pow(2).sum().item()

    down, o = block.down_proj.weight.detach(), block.o_proj.weight.detach()
    raw = torch.tensor([fluct(down, stats.ffn, j) for j in range(block.intermediate_size)])
    assert torch.allclose(scores.mlp_raw, raw, rtol=1e-4)
    assert torch.allclose(scores.mlp, (raw - raw.mean()) / raw.std(), rtol=1e-4, atol=1e-5)
    hd = block.head_dim
    attn = []
    for heads, _ in head_members(block, granularity):
        values = [fluct(o, stats.attn, h * hd + d) for h in heads for d in range(hd)]
        attn.append(sum(values) / len(values))
    attn = torch.tensor(attn)
    assert torch.allclose(scores.attention_raw, attn, rtol=1e-4)
    assert torch.allclose(scores.attention, (attn - attn.mean()) / attn.std(), rtol=1e-4, atol=1e-5)
    assert abs(scores.mlp.mean().item()) < 1e-5 and scores.mlp.std().item() == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("granularity,kv", [("kv_group", 4), ("query_head", 4), ("query_head", 8)])
def test_taylor_definition(granularity, kv):
    model, block = block_of(num_key_value_heads=kv)
    g = torch.Generator().manual_seed(5)
    stats = BlockStats(tokens=20)
    stats.weight_grads = {n: torch.randn(block.weight(n).shape, generator=g) for n in PROJ}
    scores = get_importance("taylor").score_block(block, stats, config(attention_granularity=granularity))
    sal = {n: (block.weight(n).detach() * stats.weight_grads[n] / 20).abs() for n in PROJ}
    hidden, hd = block.hidden_size, block.head_dim
    for j in range(block.intermediate_size):
        raw = sal["gate_proj"][j].sum() + sal["up_proj"][j].sum() + sal["down_proj"][:, j].sum()
        assert torch.isclose(scores.mlp_raw[j], raw, rtol=1e-5)
        assert torch.isclose(scores.mlp[j], raw / (3 * hidden), rtol=1e-5)
    for s, (heads, kvs) in enumerate(head_members(block, granularity)):
        raw = sum(rows(sal["q_proj"], h, hd).sum() + cols(sal["o_proj"], h, hd).sum() for h in heads)
        raw = raw + sum(rows(sal[n], k, hd).sum() for k in kvs for n in ("k_proj", "v_proj"))
        owned = (2 * len(heads) + 2 * len(kvs)) * hd * hidden
        assert torch.isclose(scores.attention_raw[s], raw, rtol=1e-5)
        assert torch.isclose(scores.attention[s], raw / owned, rtol=1e-5)


def test_taylor_weight_gradients_accumulate_over_batches():
    """collect_stats' dL/dW equals the sum of per-sample NLL gradients computed directly with autograd."""
    model = tiny_model("llama")
    calib = token_dataset(n=4)
    expected = {n: torch.zeros_like(blocks(model)[0].weight(n)) for n in PROJ}
    for row in calib:
        batch = {
            "input_ids": torch.tensor([row["input_ids"]]),
            "attention_mask": torch.tensor([row["attention_mask"]]),
        }
        params = [blocks(model)[0].module(n).weight for n in PROJ]
        grads = torch.autograd.grad(objective_value(model, batch, "nll"), params)
        for n, grad in zip(PROJ, grads):
            expected[n] += grad
    for p in model.parameters():
        p.requires_grad_(False)
    # stale gradients from before scoring must not leak in
    blocks(model)[0].down_proj.weight.grad = torch.ones_like(blocks(model)[0].down_proj.weight)
    tokens = sum(len(r) for r in calib["input_ids"])
    scores = compute_scores(model, config(importance="taylor", objective="hidden_energy"), calib, progress=False)
    assert scores.objective == "nll"  # forced by the method, whatever the config says
    block = blocks(model)[0]
    sal = {n: (block.weight(n).detach() * expected[n] / tokens).abs() for n in PROJ}
    ffn = sal["gate_proj"].sum(1) + sal["up_proj"].sum(1) + sal["down_proj"].sum(0)
    assert torch.allclose(scores.mlp_raw[0], ffn, rtol=1e-4, atol=1e-9)
    # flags and gradients are restored afterwards
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


def test_taylor_without_gradients_is_a_clear_error():
    _, block = block_of()
    with pytest.raises(ValueError, match="weight gradients"):
        get_importance("taylor").score_block(block, BlockStats(tokens=3), config(importance="taylor"))


@pytest.mark.parametrize("method", ["magnitude", "wanda", "taylor"])
def test_zeroed_channel_and_head_score_lowest(method):
    model = tiny_model("llama")
    with torch.no_grad():
        for block in blocks(model):
            block.weight("gate_proj")[5].zero_()
            block.weight("up_proj")[5].zero_()
            block.down_proj.weight[:, 5].zero_()
            hd = block.head_dim
            block.o_proj.weight[:, 2 * hd : 4 * hd].zero_()  # query heads 2 and 3 = KV group 1 write nothing
            block.weight("q_proj")[2 * hd : 4 * hd].zero_()
            block.weight("k_proj")[hd : 2 * hd].zero_()
            block.weight("v_proj")[hd : 2 * hd].zero_()
    for granularity, dead in (("kv_group", [1]), ("query_head", [2, 3])):
        scores = compute_scores(
            model, config(importance=method, attention_granularity=granularity), token_dataset(), progress=False
        )
        for layer in range(scores.num_layers):
            mlp, attn = scores.mlp[layer], scores.attention[layer]
            assert int(mlp.argmin()) == 5 and mlp[5] == 0
            assert set(torch.argsort(attn)[: len(dead)].tolist()) == set(dead)
            assert all(attn[d] == 0 for d in dead)


def test_flap_constant_channel_scores_lowest():
    """A channel with zero variance over tokens (a constant) has zero fluctuation: FLAP removes it first."""
    model, block = block_of()
    stats = random_stats(block)
    stats.ffn["sq"][7] = stats.ffn["sum"][7] ** 2 / stats.tokens
    scores = get_importance("flap").score_block(block, stats, config(importance="flap"))
    assert int(scores.mlp.argmin()) == 7 and scores.mlp_raw[7].abs() < 1e-4


def test_random_is_seeded():
    model, block = block_of()
    method = get_importance("random")
    a = method.score_block(block, BlockStats(), config(seed=1))
    b = method.score_block(block, BlockStats(), config(seed=1))
    c = method.score_block(block, BlockStats(), config(seed=2))
    assert torch.equal(a.mlp, b.mlp) and not torch.equal(a.mlp, c.mlp)


def _prune_and_check(family, method, allocation, granularity, sparsity=0.4):
    model = tiny_model(family)
    before = prunable_parameters(model)
    pruner = RKUPruner(model)
    cfg = RKUConfig(sparsity=sparsity, importance=method, allocation=allocation, attention_granularity=granularity)
    pruned = pruner.prune(cfg, calibration_dataset=token_dataset(), progress=False)
    achieved = 1 - prunable_parameters(pruned) / before
    assert abs(achieved - sparsity) <= TOLERANCE
    with torch.no_grad():
        out = pruned(torch.tensor([[5, 6, 7, 8, 9]])).logits
    assert torch.isfinite(out).all()
    return pruner


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("allocation", ["global", "uniform"])
@pytest.mark.parametrize("granularity", ["kv_group", "query_head"])
def test_end_to_end_grid(method, allocation, granularity):
    pruner = _prune_and_check("llama", method, allocation, granularity)
    assert pruner.metadata()["scoring"]["importance"] == method


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["wanda", "taylor"])
def test_every_family(family, method):
    _prune_and_check(family, method, "global", "query_head" if method == "wanda" else "kv_group")


# ------------------------------------------------------------------------------------------- FLAP bias compensation
def _down_proj_inputs(model, dataset, layer=0):
    """Non-padding inputs and outputs of one layer's down_proj over a calibration set (hand-collected)."""
    inputs, outputs = [], []
    down = blocks(model)[layer].down_proj

    def hook(module, args, out):
        inputs.append(args[0][0])
        outputs.append(out[0])

    handle = down.register_forward_hook(hook)
    with torch.no_grad():
        for row in dataset:
            model(input_ids=torch.tensor([row["input_ids"]]))
    handle.remove()
    return torch.cat(inputs), torch.cat(outputs)


@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_flap_bias_compensation_known_answer(allocation, tmp_path):
    from copy import deepcopy

    from optimum_rku import RKUModelForCausalLM

    dense = tiny_model("llama")
    data = token_dataset()
    cfg = RKUConfig(sparsity=0.4, importance="flap", bias_compensation=True, allocation=allocation, targets="mlp")
    scores = RKUPruner(dense).compute_scores(cfg, calibration_dataset=data, progress=False)
    x, y_dense = _down_proj_inputs(dense, data)
    assert torch.allclose(scores.mlp_input_mean[0], x.mean(0), atol=1e-5)  # mean over every calibration token

    pruner = RKUPruner(deepcopy(dense))
    pruned = pruner.prune(cfg, scores=scores, progress=False)
    assert pruned.config.mlp_bias is True
    for dense_block, block, layer in zip(blocks(dense), blocks(pruned), pruner.plan.layers):
        removed = sorted(set(range(dense_block.intermediate_size)) - set(layer.kept_channels))
        expected = dense_block.down_proj.weight[:, removed] @ scores.mlp_input_mean[block.index][removed]
        assert torch.allclose(block.down_proj.bias, expected, atol=1e-5)
        assert not block.bias("gate_proj").any() and not block.bias("up_proj").any()
    # layer 0 sees the same inputs as the dense model (attention untouched): its mean output is preserved exactly
    _, y_pruned = _down_proj_inputs(pruned, data)
    assert torch.allclose(y_pruned.mean(0), y_dense.mean(0), atol=1e-5)
    assert not torch.allclose(y_pruned, y_dense, atol=1e-3)

    pruner.save_pretrained(tmp_path / "ckpt")
    reloaded = RKUModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, pruned(ids).logits, atol=1e-5)


def test_flap_bias_compensation_attention_and_iterations():
    model = tiny_model("llama")
    cfg = RKUConfig(sparsity=0.4, importance="flap", bias_compensation=True, allocation="uniform", num_iterations=2)
    pruned = RKUPruner(model).prune(cfg, calibration_dataset=token_dataset(), progress=False)
    assert pruned.config.attention_bias is True and pruned.config.mlp_bias is True
    assert all(b.o_proj.bias.abs().sum() > 0 and b.down_proj.bias.abs().sum() > 0 for b in blocks(pruned))
    assert all(not b.bias("q_proj").any() and not b.bias("k_proj").any() for b in blocks(pruned))
    with torch.no_grad():
        assert torch.isfinite(pruned(torch.tensor([[5, 6, 7, 8]])).logits).all()


def test_bias_compensation_errors():
    with pytest.raises(ValueError, match="data-free"):
        RKUConfig(importance="magnitude", bias_compensation=True)
    with pytest.raises(TypeError, match="bias_compensation"):
        RKUConfig(bias_compensation="yes")
    for family, targets in (("qwen2", "mlp"), ("mistral", "attention"), ("qwen3", "both"), ("gemma2", "mlp")):
        cfg = RKUConfig(importance="flap", bias_compensation=True, targets=targets)
        with pytest.raises(ValueError, match=f"model_type='{family}'"):
            RKUPruner(tiny_model(family)).prune(cfg, calibration_dataset=token_dataset(), progress=False)
    # attention-only compensation is possible on Qwen3 (attention_bias)
    cfg = RKUConfig(importance="flap", bias_compensation=True, targets="attention", allocation="uniform")
    pruned = RKUPruner(tiny_model("qwen3")).prune(cfg, calibration_dataset=token_dataset(), progress=False)
    assert pruned.config.attention_bias is True
    # scores computed without the means cannot be compensated
    model = tiny_model("llama")
    plain = RKUPruner(model).compute_scores(RKUConfig(importance="flap"), token_dataset(), progress=False)
    with pytest.raises(ValueError, match="input means"):
        RKUPruner(model).prune(RKUConfig(importance="flap", bias_compensation=True), scores=plain, progress=False)


@pytest.mark.parametrize("suffix", [".json", ".safetensors"])
def test_scores_with_input_means_round_trip(tmp_path, suffix):
    from optimum_rku import PruningScores

    model = tiny_model("llama")
    cfg = RKUConfig(importance="wanda", bias_compensation=True)
    scores = RKUPruner(model).compute_scores(cfg, token_dataset(), progress=False)
    loaded = PruningScores.load(scores.save(tmp_path / f"s{suffix}"))
    for a, b in zip(
        scores.mlp_input_mean + scores.attention_input_mean, loaded.mlp_input_mean + loaded.attention_input_mean
    ):
        assert torch.allclose(a, b)
    plain = RKUPruner(model).compute_scores(RKUConfig(importance="wanda"), token_dataset(), progress=False)
    assert plain.mlp_input_mean is None
    assert PruningScores.load(plain.save(tmp_path / f"p{suffix}")).attention_input_mean is None
    # the loaded means drive the same compensation as the fresh ones
    a = RKUPruner(tiny_model("llama")).prune(
        RKUConfig(importance="wanda", bias_compensation=True), scores=scores, progress=False
    )
    b = RKUPruner(tiny_model("llama")).prune(
        RKUConfig(importance="wanda", bias_compensation=True), scores=loaded, progress=False
    )
    assert all(torch.allclose(x.down_proj.bias, y.down_proj.bias, atol=1e-6) for x, y in zip(blocks(a), blocks(b)))
