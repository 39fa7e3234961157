"""RKUPruner and RKUConfig at the edges: bad values, round trips, unsupported models, bad inputs before any work."""

import pytest
import torch
from conftest import make_tokenizer, tiny_model

from optimum_rku import RKUConfig, RKUPruner
from optimum_rku.models.geometry import prunable_parameters


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
