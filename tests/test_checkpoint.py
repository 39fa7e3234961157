"""Checkpoints: uniform and per-layer widths save, reload (plain transformers, remote code, RKUModelForCausalLM)."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import logits, make_tokenizer, sample_inputs, tiny_model

from optimum_rku import RKUConfig, RKUModelForCausalLM, RKUPruner
from optimum_rku.models.blocks import blocks

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


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2", "phi3"])
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
