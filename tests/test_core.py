"""Core engine: scoring, allocation, physical removal and checkpoints on tiny models of every family."""

import copy
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import FAMILIES, make_tokenizer, sample_inputs, tiny_model, token_dataset

from optimum_rku import PruningScores, RKUConfig, RKUModelForCausalLM, RKUPruner
from optimum_rku.allocation import TOLERANCE
from optimum_rku.architectures import blocks
from optimum_rku.importance import BlockStats, get_importance
from optimum_rku.removal import plan_masks
from optimum_rku.scoring import StatsCollector, compute_scores, prunable_parameters


def logits(model, ids=None):
    with torch.no_grad():
        return model(sample_inputs() if ids is None else ids).logits


def masked_logits(model, masks):
    """Dense model with the removed structures zeroed at the down_proj / o_proj inputs."""
    importance = get_importance("magnitude")  # a method that needs no statistics: hooks only apply the masks
    with StatsCollector(model, importance, masks), torch.no_grad():
        return model(sample_inputs()).logits


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


def test_iterative_pruning_nested(calib):
    pruner = RKUPruner(tiny_model("llama"))
    pruner.prune(RKUConfig(sparsity=0.4, num_iterations=2), calibration_dataset=calib, progress=False)
    assert abs(pruner.plan.achieved_sparsity - 0.4) <= TOLERANCE


@pytest.mark.parametrize("objective", ["self_nll", "hidden_energy", "nll"])
def test_objectives_give_finite_distinct_scores(calib, objective):
    scores = RKUPruner(tiny_model("gemma2")).compute_scores(
        RKUConfig(objective=objective), calibration_dataset=calib, progress=False
    )
    assert all(torch.isfinite(s).all() and (s > 0).any() for s in scores.mlp + scores.attention)


def test_calibration_accepts_list_of_strings():
    model = tiny_model("llama")
    pruner = RKUPruner(model, make_tokenizer())
    texts = ["Tom has 3 apples and buys 4 more.", "How many pens are left if 2 of 9 are lost?"] * 3
    pruner.prune(RKUConfig(sparsity=0.3), calibration_dataset=texts, progress=False)
    assert pruner.scores.calibration["num_samples"] == 6
    assert pruner.scores.calibration["num_tokens"] > 0
    ds = pruner.get_calibration_dataset(texts, num_samples=4)
    assert len(ds) == 4 and "input_ids" in ds.column_names


def test_calibration_local_jsonl(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(
        "\n".join(json.dumps({"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"}) for i in range(20))
    )
    pruner = RKUPruner(tiny_model("llama"), make_tokenizer())
    ds = pruner.get_calibration_dataset(data_files=str(path), num_samples=5)
    assert len(ds) == 5
    assert pruner.calibration_summary["dataset"] == str(path)
    both = pruner.get_calibration_dataset(data_files=str(path), num_samples=3, text_column=["question", "answer"])
    assert len(both) == 3


def test_self_generated_calibration_with_decode_nll():
    pruner = RKUPruner(tiny_model("llama"), make_tokenizer())
    config = RKUConfig(sparsity=0.3, calibration="self_generated", objective="decode_nll", generation_max_new_tokens=6)
    pruner.prune(config, calibration_dataset=["What is 2 + 3?", "Tom has 4 pens."], progress=False)
    assert pruner.scores.calibration["calibration"] == "self_generated"
    assert pruner.scores.objective == "decode_nll"


# ----------------------------------------------------------------------------------------------- checkpoints
RELOAD_SCRIPT = textwrap.dedent(
    """
    import sys, json, torch
    mode, path, ids_json = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "remote":
        class Block:  # optimum_rku must not be importable in this process
            def find_spec(self, name, path=None, target=None):
                if name == "optimum_rku" or name.startswith("optimum_rku."):
                    raise ImportError("blocked")
        sys.meta_path.insert(0, Block())
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    elif mode == "plain":
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(path)
    else:
        from optimum_rku import RKUModelForCausalLM
        model = RKUModelForCausalLM.from_pretrained(path)
    model.eval()
    ids = torch.tensor(json.loads(ids_json))
    with torch.no_grad():
        out = model(ids).logits
    gen = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0, use_cache=True)
    nocache = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0, use_cache=False)
    assert torch.equal(gen, nocache), "KV-cache generation differs from no-cache generation"
    print(json.dumps({"logits": out.tolist(), "remote": "optimum_rku" in sys.modules}))
    """
)


def _reload(tmp_path, mode, path):
    script = tmp_path / "reload.py"
    script.write_text(RELOAD_SCRIPT)
    ids = json.dumps(sample_inputs().tolist())
    env = {**__import__("os").environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), mode, str(path), ids], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2"])
def test_global_checkpoint_reloads_in_fresh_process(tmp_path, calib, family):
    pruner = RKUPruner(tiny_model(family), make_tokenizer())
    pruned = pruner.prune(
        RKUConfig(sparsity=0.4, allocation="global", min_keep=0.25),
        calibration_dataset=calib,
        save_dir=tmp_path / "ckpt",
        progress=False,
    )
    assert pruned.config.is_heterogeneous
    expected = logits(pruned)
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"config.json", "model.safetensors", "modeling_rku.py", "rku_config.json", "tokenizer.json"} <= files
    remote = _reload(tmp_path, "remote", tmp_path / "ckpt")
    assert remote["remote"] is False
    assert torch.allclose(torch.tensor(remote["logits"]), expected, atol=1e-5)
    ours = _reload(tmp_path, "rku", tmp_path / "ckpt")
    assert torch.allclose(torch.tensor(ours["logits"]), expected, atol=1e-5)
    in_process = RKUModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    assert torch.allclose(logits(in_process), expected, atol=1e-5)
    meta = json.loads((tmp_path / "ckpt" / "rku_config.json").read_text())
    assert meta["pruning_config"]["sparsity"] == 0.4
    assert len(meta["plan"]["layers"]) == 3 and "kept_channels" in meta["plan"]["layers"][0]
    assert meta["parameters"]["total_after"] < meta["parameters"]["total_before"]
    assert meta["calibration"]["num_tokens"] > 0
    assert RKUConfig.from_pretrained(tmp_path / "ckpt").sparsity == 0.4


@pytest.mark.parametrize("family", ["mistral", "qwen3"])
def test_uniform_checkpoint_loads_with_plain_transformers(tmp_path, calib, family):
    pruner = RKUPruner(tiny_model(family), make_tokenizer())
    pruned = pruner.prune(
        RKUConfig(sparsity=0.4, allocation="uniform"),
        calibration_dataset=calib,
        save_dir=tmp_path / "ckpt",
        progress=False,
    )
    assert not getattr(pruned.config, "is_heterogeneous", False)
    assert not (tmp_path / "ckpt" / "modeling_rku.py").exists()
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert "auto_map" not in config and config["head_dim"] == 8
    plain = _reload(tmp_path, "plain", tmp_path / "ckpt")
    assert torch.allclose(torch.tensor(plain["logits"]), logits(pruned), atol=1e-5)


# ----------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sparsity": 1.5}, "sparsity"),
        ({"sparsity": -0.1}, "sparsity"),
        ({"importance": "nope"}, "importance"),
        ({"objective": "nope"}, "objective"),
        ({"allocation": "nope"}, "allocation"),
        ({"min_keep": 2}, "min_keep"),
        ({"round_to": 0}, "round_to"),
        ({"protected_layers": [-1]}, "protected_layers"),
    ],
)
def test_bad_config_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RKUConfig(**kwargs)


def test_config_round_trip(tmp_path):
    config = RKUConfig(sparsity=0.3, protected_layers=[2, 0], round_to=64)
    path = config.save_pretrained(tmp_path)
    assert path.name == "rku_config.json"
    assert RKUConfig.from_pretrained(tmp_path) == config
    assert RKUConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="Unknown RKUConfig field"):
        RKUConfig.from_dict({"sparsty": 0.3})


def test_unsupported_architecture():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="Unsupported architecture.*llama.*qwen2.*mistral.*qwen3.*gemma2"):
        RKUPruner(model)


def test_empty_calibration_and_bad_save_dirs(tmp_path, calib):
    import datasets

    pruner = RKUPruner(tiny_model("llama"), make_tokenizer())
    with pytest.raises(ValueError, match="empty"):
        pruner.prune(RKUConfig(), calibration_dataset=datasets.Dataset.from_dict({"input_ids": []}), progress=False)
    with pytest.raises(ValueError, match="empty"):
        pruner.prune(RKUConfig(), calibration_dataset=[], progress=False)
    source = tmp_path / "source"
    pruner.model.save_pretrained(source)
    loaded = RKUPruner.from_pretrained(str(source), tokenizer=make_tokenizer())
    before = {p.name for p in source.iterdir()}
    with pytest.raises(ValueError, match="source model directory"):
        loaded.prune(RKUConfig(), save_dir=source, calibration_dataset=calib, progress=False)
    assert {p.name for p in source.iterdir()} == before
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        pruner.prune(RKUConfig(), save_dir=full, calibration_dataset=calib, progress=False)
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    assert prunable_parameters(pruner.model) == prunable_parameters(tiny_model("llama"))  # nothing happened
    pruner.prune(RKUConfig(sparsity=0.2), save_dir=full, overwrite=True, calibration_dataset=calib, progress=False)
    assert (full / "model.safetensors").exists() and not (full / "keep.txt").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_bad_pruner_inputs(calib):
    with pytest.raises(TypeError, match="PreTrainedModel"):
        RKUPruner(torch.nn.Linear(2, 2))
    pruner = RKUPruner(tiny_model("llama"))
    with pytest.raises(ValueError, match="batch_size"):
        pruner.prune(RKUConfig(), calibration_dataset=calib, batch_size=0)
    with pytest.raises(ValueError, match="protected_layers"):
        pruner.prune(RKUConfig(protected_layers=[7]), calibration_dataset=calib)
    with pytest.raises(TypeError, match="calibration_dataset"):
        pruner.prune(RKUConfig(), calibration_dataset=42)


def test_quantize_alias_and_optimum_base(calib):
    from optimum.quantization_base import OptimumQuantizer

    pruner = RKUPruner(tiny_model("llama"))
    assert isinstance(pruner, OptimumQuantizer)
    model = pruner.quantize(pruning_config=RKUConfig(sparsity=0.2), calibration_dataset=calib, progress=False)
    assert prunable_parameters(model) < prunable_parameters(tiny_model("llama"))


def test_default_calibration_offline_error_names_local_files():
    pruner = RKUPruner(tiny_model("llama"), make_tokenizer())
    with pytest.raises(RuntimeError, match="data_files"):
        pruner.prune(RKUConfig(sparsity=0.2), progress=False)
    assert prunable_parameters(pruner.model) == prunable_parameters(tiny_model("llama"))


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_head_counts_the_stock_config_rejects_still_save_and_load(tmp_path, calib, family):
    """Uniform 6 of 8 heads (hidden 32 is no multiple of 6) and protected layers (per-layer head counts)."""
    for name, kwargs in (("uniform", {}), ("protected", {"protected_layers": [0]})):
        pruner = RKUPruner(tiny_model(family), make_tokenizer())
        config = RKUConfig(sparsity=0.3, importance="magnitude", allocation="uniform", **kwargs)
        pruned = pruner.prune(config, save_dir=tmp_path / name, progress=False)
        heads = {b.num_heads for b in blocks(pruned)}
        assert 32 % max(heads) or 32 % min(heads) or len(heads) > 1  # something the stock config class rejects
        assert (tmp_path / name / "modeling_rku.py").exists()
        reloaded = RKUModelForCausalLM.from_pretrained(tmp_path / name)
        assert torch.allclose(logits(reloaded), logits(pruned), atol=1e-5)
        again = RKUPruner.from_pretrained(str(tmp_path / name))
        assert torch.allclose(logits(again.model), logits(pruned), atol=1e-5)
    remote = _reload(tmp_path, "remote", tmp_path / "uniform")
    assert torch.allclose(
        torch.tensor(remote["logits"]), logits(RKUModelForCausalLM.from_pretrained(tmp_path / "uniform")), atol=1e-5
    )
