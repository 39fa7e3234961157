"""Scores that do not belong: another model, architecture, granularity or method, broken or foreign files.

Each is one clear error before any change to the model.
"""

import json

import pytest
import torch
from conftest import make_tokenizer, tiny_model

from optimum_rku import PruningScores, RKUConfig, RKUPruner

CONFIG = RKUConfig(sparsity=0.3, importance="magnitude")


@pytest.fixture(scope="module")
def scores():
    """Data-free scores of the seed-0 tiny Llama (fast; the checks do not depend on the method)."""
    return RKUPruner(tiny_model("llama")).compute_scores(CONFIG, progress=False)


def _refused(scores, match, model=None, config=CONFIG, error=ValueError):
    """prune(scores=...) raises `error` matching `match` in one line, and the model is untouched."""
    model = model if model is not None else tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = RKUPruner(model, make_tokenizer())
    with pytest.raises(error, match=match) as info:
        pruner.prune(config, scores=scores, progress=False)
    assert "\n" not in str(info.value)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    assert pruner.plan is None
    return str(info.value)


def test_scores_of_the_same_model_prune(scores):
    pruner = RKUPruner(tiny_model("llama"))
    pruner.prune(CONFIG, scores=scores, progress=False)
    assert pruner.plan.achieved_sparsity == pytest.approx(0.3, abs=0.01)


def test_scores_of_another_model_of_the_same_shape(scores):
    message = _refused(scores, "another model of the same shape", model=tiny_model("llama", seed=1))
    assert "sampled weights differ" in message and "compute_scores" in message


def test_scores_survive_a_dtype_change():
    """Scoring in float32 and pruning the bfloat16 copy of the same weights is the remedy for overflow: allowed."""
    scores = RKUPruner(tiny_model("llama")).compute_scores(CONFIG, progress=False)
    pruner = RKUPruner(tiny_model("llama").to(torch.bfloat16))
    pruner.prune(CONFIG, scores=scores, progress=False)
    assert pruner.plan is not None


def test_scores_of_another_architecture(scores):
    """Qwen2's tiny config has exactly the Llama widths: only the recorded architecture tells them apart."""
    qwen = RKUPruner(tiny_model("qwen2")).compute_scores(CONFIG, progress=False)
    assert qwen.widths == scores.widths
    _refused(qwen, "computed on a 'qwen2' model; this pruner holds a 'llama' model")


def test_scores_of_other_widths_name_the_difference(scores):
    _refused(scores, "3 layers there, 4 here", model=tiny_model("llama", num_hidden_layers=4))
    _refused(scores, "layer 0 intermediate_size: 80 there, 64 here", model=tiny_model("llama", intermediate_size=64))


def test_scores_of_another_granularity_or_method(scores):
    _refused(
        scores,
        "attention_granularity='kv_group' but the config asks for 'query_head'",
        config=RKUConfig(sparsity=0.3, importance="magnitude", attention_granularity="query_head"),
    )
    _refused(
        scores,
        "importance='magnitude' but the config asks for 'random'",
        config=RKUConfig(sparsity=0.3, importance="random"),
    )


def test_in_memory_scores_edited_inconsistently(scores):
    edited = PruningScores.from_dict(scores.to_dict())
    edited.attention_granularity = "query_head"  # 4 KV-group scores per layer, but 8 query heads
    _refused(
        edited,
        r"attention\[0\] has 4 values, layer 0 has 8 structures",
        config=RKUConfig(sparsity=0.3, importance="magnitude", attention_granularity="query_head"),
    )
    edited = PruningScores.from_dict(scores.to_dict())
    edited.mlp[2][5] = float("nan")
    _refused(edited, r"mlp\[2\] holds NaN")
    _refused(object(), "scores must be PruningScores", error=TypeError)


@pytest.mark.parametrize("suffix", [".json", ".safetensors"])
def test_truncated_files(tmp_path, scores, suffix):
    path = scores.save(tmp_path / f"scores{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    expected = "not valid JSON" if suffix == ".json" else "not a readable safetensors file"
    with pytest.raises(ValueError, match=expected):
        PruningScores.load(path)


def test_hand_edited_json(tmp_path, scores):
    path = scores.save(tmp_path / "scores.json")
    data = json.loads(path.read_text())
    cases = [
        (lambda d: d["mlp"][1].pop(), r"mlp\[1\] has 79 values, layer 1 has 80 structures"),
        (lambda d: d["attention"].pop(), "'attention' has 2 layers, 'widths' has 3"),
        (lambda d: d.pop("widths"), r"missing field\(s\) \['widths'\]"),
        (lambda d: d["mlp_cost"].__setitem__(0, "96"), "'mlp_cost' must hold 3 positive ints"),
        (lambda d: d.__setitem__("attention_granularity", "head"), "attention_granularity='head', allowed"),
        (lambda d: d["mlp"].__setitem__(0, "abc"), "'mlp' does not hold lists of numbers"),
    ]
    for edit, match in cases:
        edited = json.loads(json.dumps(data))
        edit(edited)
        path.write_text(json.dumps(edited))
        with pytest.raises(ValueError, match=match):
            PruningScores.load(path)
    path.write_text(json.dumps(data).replace("[", "[NaN, ", 3).replace("[NaN, [NaN, [NaN, ", "[[NaN, ", 1))
    with pytest.raises(ValueError):
        PruningScores.load(path)


def test_hand_edited_safetensors_metadata(tmp_path, scores):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = scores.save(tmp_path / "scores.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        meta = json.loads(handle.metadata()["rku_scores"])
    del tensors["attention_raw.2"]
    save_file(tensors, str(path), metadata={"rku_scores": json.dumps(meta)})
    with pytest.raises(ValueError, match=r"missing tensors \['attention_raw.2'\]"):
        PruningScores.load(path)
    meta["widths"][0]["intermediate_size"] = 81
    tensors["attention_raw.2"] = tensors["attention_raw.1"].clone()
    save_file(tensors, str(path), metadata={"rku_scores": json.dumps(meta)})
    with pytest.raises(ValueError, match=r"mlp\[0\] has 80 values, layer 0 has 81 structures"):
        PruningScores.load(path)


def test_files_of_another_format(tmp_path):
    model_dir = tmp_path / "model"
    tiny_model("llama").save_pretrained(model_dir)
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes((model_dir / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="without optimum-rku scores metadata"):
        PruningScores.load(weights)
    with pytest.raises(ValueError, match=r"unknown field\(s\)"):
        PruningScores.load(model_dir / "config.json")
    (tmp_path / "list.json").write_text("[1, 2, 3]")
    with pytest.raises(ValueError, match="expected a JSON object, got list"):
        PruningScores.load(tmp_path / "list.json")
    (tmp_path / "binary.json").write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match="not text"):
        PruningScores.load(tmp_path / "binary.json")
    (tmp_path / "gguf.safetensors").write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        PruningScores.load(tmp_path / "gguf.safetensors")
    with pytest.raises(ValueError, match=r"must end in \.json or \.safetensors"):
        PruningScores.load(tmp_path / "scores.bin")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PruningScores.load(tmp_path / "absent.json")


def test_scores_of_older_versions_still_load(tmp_path, scores):
    """Files written before architecture / fingerprint were recorded: accepted, checked by widths as before."""
    data = scores.to_dict()
    for key in ("architecture", "fingerprint", "head_dim"):
        data.pop(key)
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = PruningScores.load(tmp_path / "old.json")
    assert old.architecture is None and old.fingerprint is None
    pruner = RKUPruner(tiny_model("llama"))
    pruner.prune(CONFIG, scores=old, progress=False)
    assert pruner.plan is not None
