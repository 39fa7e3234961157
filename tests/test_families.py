"""Families added through the spec alone: Gemma3 text (`gemma3_text`) and Phi-3 (`phi3`, fused qkv / gate_up).

Both prune under both allocations with per-layer head counts, equal the zero-masked dense model, reload (plain
transformers when uniform, remote code or RKUModelForCausalLM when per-layer), and refuse what their configs cannot
hold. The parametrized tests of the other files (masking equality, every importance, the spec checks) cover them too.
"""

import copy
import json

import pytest
import torch
import transformers
from conftest import logits, make_tokenizer, masked_logits, tiny_model, token_dataset

from optimum_rku import RKUConfig, RKUModelForCausalLM, RKUPruner
from optimum_rku.models.blocks import blocks
from optimum_rku.models.masks import plan_masks
from optimum_rku.models.specs import SPECS

NEW = ["gemma3_text", "phi3"]
#: settings that leave layers with different head counts (the per-layer path) under each allocation
PER_LAYER = {
    "uniform": {"allocation": "uniform", "protected_layers": [0]},
    "global": {"allocation": "global", "ranking": "score", "targets": "attention", "sparsity": 0.2},
}


def _prune(family, tmp_path, **overrides):
    model = tiny_model(family)
    dense = copy.deepcopy(model)
    pruner = RKUPruner(model, make_tokenizer())
    settings = {"sparsity": 0.4, "min_keep": 0.25, "calibration": "dataset", **overrides}
    pruned = pruner.prune(RKUConfig(**settings), calibration_dataset=token_dataset(), progress=False)
    path = pruner.save_pretrained(tmp_path / "ckpt")
    return pruner, dense, pruned, path


@pytest.mark.parametrize("family", NEW)
@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_per_layer_heads_prune_mask_and_reload(tmp_path, family, allocation):
    pruner, dense, pruned, path = _prune(family, tmp_path, **PER_LAYER[allocation])
    widths = [(b.num_heads, b.num_kv_heads) for b in blocks(pruned)]
    assert len(set(widths)) > 1 and pruned.config.is_heterogeneous  # layers keep different head counts
    expected = logits(pruned)
    assert torch.allclose(expected, masked_logits(dense, plan_masks(dense, pruner.plan)), atol=1e-5)
    assert (path / "modeling_rku.py").is_file()
    auto_map = json.loads((path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForCausalLM"] == f"modeling_rku.RKU{SPECS[family].causal_lm_class}"
    remote = transformers.AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    assert torch.allclose(logits(remote), expected, atol=1e-5)
    ours = RKUModelForCausalLM.from_pretrained(path)
    assert torch.allclose(logits(ours), expected, atol=1e-5)
    assert [(b.num_heads, b.num_kv_heads) for b in blocks(ours)] == widths
    ids = torch.arange(3, 12)[None]
    cached = ours.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(cached, ours.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0, use_cache=False))


@pytest.mark.parametrize("family", NEW)
def test_uniform_checkpoint_is_plain_transformers(tmp_path, family):
    _, dense, pruned, path = _prune(family, tmp_path, allocation="uniform")
    assert {(b.num_heads, b.num_kv_heads, b.intermediate_size) for b in blocks(pruned)} != {(8, 4, 80)}
    assert not (path / "modeling_rku.py").exists()
    plain = transformers.AutoModelForCausalLM.from_pretrained(path)
    assert type(plain).__name__ == SPECS[family].causal_lm_class
    assert torch.allclose(logits(plain), logits(pruned), atol=1e-5)


def test_fused_projections_are_sliced_per_logical_projection(tmp_path):
    """Phi-3's qkv_proj keeps the kept q, k and v rows of each head in place; gate_up_proj keeps gate and up rows."""
    pruner, dense, pruned, _ = _prune("phi3", tmp_path, **PER_LAYER["global"])
    for before, after, plan in zip(blocks(dense), blocks(pruned), pruner.plan.layers):
        for projection, kept in (("q_proj", plan.kept_heads), ("k_proj", plan.kept_kv_heads)):
            rows = before.head_channels(kept)
            assert torch.equal(after.weight(projection), before.weight(projection)[rows])
        assert torch.equal(after.weight("v_proj"), before.weight("v_proj")[before.head_channels(plan.kept_kv_heads)])
        assert after.module("q_proj").out_features == (after.num_heads + 2 * after.num_kv_heads) * after.head_dim
        assert after.attn.config.num_attention_heads == after.num_heads  # the attention reads its own layer's count
    other = copy.deepcopy(pruned)  # without its own config a layer would split qkv by the global head count
    for index, view in enumerate(blocks(other)):
        view.attn.config = other.config.per_layer_config[0 if index else 1]
    with pytest.raises(RuntimeError):
        logits(other)


@pytest.mark.parametrize("family", NEW)
def test_bias_compensation_where_the_config_holds_it(tmp_path, family):
    spec = SPECS[family]
    for targets in ("both", "mlp", "attention"):
        parts = {"both": ["ffn", "attn"], "mlp": ["ffn"], "attention": ["attn"]}[targets]
        config = RKUConfig(importance="flap", bias_compensation=True, targets=targets, calibration="dataset")
        if all(part in spec.output_bias_flags for part in parts):
            continue
        with pytest.raises(ValueError, match=f"bias_compensation.*model_type='{family}'.*Allowed"):
            RKUPruner(tiny_model(family)).prune(config, calibration_dataset=token_dataset(), progress=False)
    if "attn" not in spec.output_bias_flags:
        return
    _, dense, pruned, path = _prune(
        family, tmp_path, importance="flap", bias_compensation=True, targets="attention", allocation="uniform"
    )
    assert all(b.o_proj.bias is not None and b.o_proj.bias.abs().sum() > 0 for b in blocks(pruned))
    assert torch.allclose(logits(RKUModelForCausalLM.from_pretrained(path)), logits(pruned), atol=1e-5)


def test_multimodal_gemma3_is_refused_with_the_reason(tmp_path):
    transformers.Gemma3Config().save_pretrained(tmp_path)  # a config alone: the family is checked before any weights
    with pytest.raises(ValueError, match=r"model_type='gemma3' \(this is the multimodal Gemma3.*'gemma3_text'"):
        RKUPruner.from_pretrained(str(tmp_path))


@pytest.mark.parametrize("family", NEW)
def test_bad_inputs_fail_before_work(family):
    pruner = RKUPruner(tiny_model(family))
    before = logits(pruner.model)
    with pytest.raises(ValueError, match="protected_layers has 7"):
        pruner.prune(RKUConfig(protected_layers=[7]), calibration_dataset=token_dataset(), progress=False)
    with pytest.raises(ValueError, match="sparsity"):
        pruner.prune({"sparsity": 0.95}, progress=False)
    with pytest.raises(TypeError, match="calibration_dataset"):
        pruner.prune(RKUConfig(calibration="dataset"), calibration_dataset=42, progress=False)
    assert torch.equal(logits(pruner.model), before)  # nothing was touched
