"""Calibration data: lists, local files, self-generated traces (masked models, regeneration, chat templates)."""

import json

import pytest
import torch
from conftest import logits, make_tokenizer, tiny_model, token_dataset

import optimum_rku.data.self_generated as self_generated
from optimum_rku import RKUConfig, RKUPruner
from optimum_rku.importance import available_importances, get_importance
from optimum_rku.models.geometry import prunable_parameters
from optimum_rku.models.masks import masked_model, plan_masks
from optimum_rku.pruning.removal import apply_plan


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
    assert pruner.calibration_summary["dataset"] == "train.jsonl"  # the file's name, never a machine path
    both = pruner.get_calibration_dataset(data_files=str(path), num_samples=3, text_column=["question", "answer"])
    assert len(both) == 3


def test_self_generated_calibration_with_decode_nll():
    pruner = RKUPruner(tiny_model("llama"), make_tokenizer())
    config = RKUConfig(sparsity=0.3, calibration="self_generated", objective="decode_nll", generation_max_new_tokens=6)
    pruner.prune(config, calibration_dataset=["What is 2 + 3?", "Tom has 4 pens."], progress=False)
    assert pruner.scores.calibration["calibration"] == "self_generated"
    assert pruner.scores.objective == "decode_nll"


# -------------------------------------------------------------------------------- self-generated calibration
def test_masked_generation_model_equals_physical_removal():
    pruner = RKUPruner(tiny_model("llama"), make_tokenizer())
    scores = pruner.compute_scores(RKUConfig(sparsity=0.4), calibration_dataset=token_dataset(), progress=False)
    from optimum_rku.pruning.allocation import allocate

    plan = allocate(scores, RKUConfig(sparsity=0.4), prunable_parameters(pruner.model))
    dense = tiny_model("llama")
    masks = plan_masks(dense, plan)
    with masked_model(dense, masks):
        masked = logits(dense)
    assert torch.allclose(masked, logits(apply_plan(pruner.model, plan)), atol=1e-5)
    assert not torch.allclose(logits(dense), masked, atol=1e-4)  # hooks are removed afterwards


def test_self_generated_traces_are_regenerated_each_iteration(monkeypatch):
    calls = []
    original = self_generated.generate_answers

    def spy(model, tokenizer, prompts, config, batch_size=16, progress=True, masks=None, **kwargs):
        answers = original(model, tokenizer, prompts, config, batch_size, progress, masks, **kwargs)
        calls.append({"masks": masks, "answers": answers})
        return answers

    monkeypatch.setattr(self_generated, "generate_answers", spy)
    # (seed 1: under the default pool, seed 0's random model writes the same 8 tokens dense and pruned)
    pruner = RKUPruner(tiny_model("llama", seed=1), make_tokenizer())
    config = RKUConfig(
        sparsity=0.5,
        num_iterations=3,
        calibration="self_generated",
        objective="decode_nll",
        generation_max_new_tokens=8,
    )
    questions = ["What is 2 + 3?", "Tom has 4 pens.", "Sum 7 and 8.", "Half of 10?"]
    pruner.prune(config, calibration_dataset=questions, progress=False)
    assert len(calls) == 3
    assert calls[0]["masks"] is None
    kept = [sum(int(m.sum()) for m in call["masks"].values()) for call in calls[1:]]
    assert kept[0] > kept[1]  # the second regeneration used the more heavily pruned model
    assert calls[0]["answers"] != calls[2]["answers"]  # the pruned model writes other traces than the dense one
    assert pruner.scores.calibration["regenerated_per_iteration"] is True


@pytest.mark.parametrize("objective", ["self_nll", "nll", "hidden_energy", "decode_nll"])
def test_self_generated_calibration_with_gradient_objectives(objective):
    pruner = RKUPruner(tiny_model("llama"), make_tokenizer())
    config = RKUConfig(sparsity=0.3, calibration="self_generated", objective=objective, generation_max_new_tokens=6)
    scores = pruner.compute_scores(config, calibration_dataset=["What is 2 + 3?", "Tom has 4 pens."], progress=False)
    assert scores.objective == objective and scores.calibration["calibration"] == "self_generated"
    assert all(torch.isfinite(s).all() and s.abs().sum() > 0 for s in scores.mlp + scores.attention)


CALIBRATED = [name for name in available_importances() if get_importance(name).needs_calibration]


@pytest.mark.parametrize("importance", CALIBRATED)
def test_self_generated_calibration_with_every_calibrated_importance(importance):
    pruner = RKUPruner(tiny_model("qwen2"), make_tokenizer())
    config = RKUConfig(sparsity=0.3, importance=importance, calibration="self_generated", generation_max_new_tokens=6)
    pruned = pruner.prune(config, calibration_dataset=["What is 2 + 3?", "Tom has 4 pens."], progress=False)
    assert pruner.scores.calibration["calibration"] == "self_generated" and pruner.scores.calibration["num_tokens"] > 0
    assert all(torch.isfinite(s).all() for s in pruner.scores.mlp_raw + pruner.scores.attention_raw)
    assert torch.isfinite(logits(pruned)).all()


CHAT = "{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<|bot|>{% endif %}"


def test_self_generated_calibration_uses_the_chat_template(monkeypatch):
    seen = []

    def spy(model, tokenizer, prompts, config, **kwargs):
        seen.append((list(prompts), kwargs.get("add_special_tokens", True)))
        return ["4 apples" for _ in prompts]

    monkeypatch.setattr(self_generated, "generate_answers", spy)
    tok = make_tokenizer()
    tok.chat_template = CHAT
    config = RKUConfig(calibration="self_generated", generation_max_new_tokens=4)
    row = self_generated.self_generated_dataset(tiny_model("llama"), tok, ["2+2?"], config, progress=False)[0]
    assert seen[-1] == (["<|user|>2+2?<|bot|>"], False)  # "auto": the template's user turn, its own special tokens
    prompt_len = len(tok("<|user|>2+2?<|bot|>", add_special_tokens=False)["input_ids"])
    assert row["loss_mask"] == [0] * prompt_len + [1] * (len(row["input_ids"]) - prompt_len)
    assert tok.decode([i for i, m in zip(row["input_ids"], row["loss_mask"]) if m]).strip() == "4 apples"

    off = RKUConfig(calibration="self_generated", generation_chat_template="off")
    self_generated.self_generated_dataset(tiny_model("llama"), tok, ["2+2?"], off, progress=False)
    assert seen[-1] == (["Question: 2+2?\nAnswer:"], True)

    pruner = RKUPruner(tiny_model("llama"), tok)
    pruner.compute_scores(config, calibration_dataset=["2+2?", "3+4?"], progress=False)
    assert pruner.scores.calibration["chat_template"] is True

    calls = len(seen)
    plain = RKUPruner(tiny_model("llama"), make_tokenizer())  # no chat template
    on = RKUConfig(calibration="self_generated", generation_chat_template="on")
    with pytest.raises(ValueError, match="generation_chat_template='on' but the tokenizer has no chat_template"):
        plain.prune(on, calibration_dataset=["2+2?"], progress=False)
    assert len(seen) == calls  # refused before generating anything
    with pytest.raises(ValueError, match="generation_chat_template='yes'.*'auto', 'on', 'off'"):
        RKUConfig(generation_chat_template="yes")
