"""NaN / inf during scoring: the run stops with one line naming the layer, the statistic and what to do."""

import pytest
import torch
from conftest import make_tokenizer, tiny_model

from optimum_rku import RKUConfig, RKUPruner
from optimum_rku.scoring import NonFiniteError

TEXTS = ["Question: 2 + 3?\nAnswer: 5", "Name a colour.", "Count to five, please.", "abc def ghi"]


def _state(model):
    return {name: p.detach().clone() for name, p in model.state_dict().items()}


def _unchanged(model, before):
    after = model.state_dict()
    return after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def _fp16_overflow_model(layer: int = 1):
    """A float16 tiny Llama whose layer `layer` FFN overflows: gate and up outputs near 1e3 make their product inf."""
    model = tiny_model("llama").half()
    with torch.no_grad():
        model.model.layers[layer].mlp.gate_proj.weight.mul_(1e4)
        model.model.layers[layer].mlp.up_proj.weight.mul_(1e4)
    return model


@pytest.mark.parametrize("importance", ["rku", "wanda", "flap"])
def test_fp16_activation_overflow_names_layer_statistic_and_remedy(importance):
    model = _fp16_overflow_model(layer=1)
    before = _state(model)
    pruner = RKUPruner(model, make_tokenizer())
    config = RKUConfig(sparsity=0.3, importance=importance, calibration="dataset")
    with pytest.raises(NonFiniteError) as info:
        pruner.prune(config, calibration_dataset=TEXTS, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert "layer 1 FFN (down_proj input)" in message and "activation statistic" in message
    assert "float16" in message and "float32" in message and "drop the offending calibration text" in message
    assert "row 0" in message and "Question: 2 + 3?" in message  # the text that overflowed, to drop it
    assert info.value.layer == 1 and info.value.rows == [0]
    assert _unchanged(model, before) and pruner.plan is None  # stopped before any change to the model


def test_fp16_overflow_without_activation_statistics_is_located_from_the_objective():
    """Taylor collects no activation statistics: the NaN objective is traced back to the layer where it starts."""
    pruner = RKUPruner(_fp16_overflow_model(layer=2), make_tokenizer())
    with pytest.raises(NonFiniteError, match=r"objective 'nll'.*first appears in layer 2 FFN \(down_proj input\)"):
        pruner.prune(RKUConfig(sparsity=0.3, importance="taylor"), calibration_dataset=TEXTS, progress=False)


def test_fp16_gradient_overflow_is_named_at_the_last_layer():
    """Finite forward, overflowing backward (a huge LM head in fp16): backward meets it at the last layer first."""
    model = tiny_model("llama").half()
    with torch.no_grad():
        model.lm_head.weight.mul_(1e5)
    pruner = RKUPruner(model, make_tokenizer())
    with pytest.raises(NonFiniteError, match=r"layer 2 FFN \(down_proj input\): gradient statistic 'grad_sq'"):
        pruner.prune(RKUConfig(sparsity=0.3, calibration="dataset"), calibration_dataset=TEXTS, progress=False)


def test_poisoned_calibration_text_is_named_by_row_and_text():
    """A token whose embedding is NaN poisons only the texts that contain it; the error points at that text."""
    tokenizer = make_tokenizer()
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.embed_tokens.weight[tokenizer.convert_tokens_to_ids("#")] = float("nan")
    texts = ["fine text", "also fine", "poisoned # text", "fine again"]
    pruner = RKUPruner(model, tokenizer)
    with pytest.raises(NonFiniteError) as info:
        pruner.prune(RKUConfig(sparsity=0.3, calibration="dataset"), calibration_dataset=texts, progress=False)
    message = str(info.value)
    assert "NaN in layer 0" in message and "row 2" in message and "poisoned # text" in message
    assert "already float32" in message  # float32 is no remedy here: drop the text or check the weights
    # the same run without the poisoned text succeeds
    texts.pop(2)
    pruner.prune(RKUConfig(sparsity=0.3, calibration="dataset"), calibration_dataset=texts, progress=False)
    assert pruner.plan is not None


def test_batched_rows_are_named_as_a_range():
    pruner = RKUPruner(_fp16_overflow_model(), make_tokenizer())
    with pytest.raises(NonFiniteError, match=r"after calibration rows 0-1\. "):
        pruner.compute_scores(
            RKUConfig(calibration="dataset"), calibration_dataset=TEXTS, batch_size=2, progress=False
        )


def test_data_free_scores_of_broken_weights_stop_too():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight[0, 0] = float("inf")
    pruner = RKUPruner(model, make_tokenizer())
    with pytest.raises(NonFiniteError, match=r"'magnitude' gave inf attention scores in layer 2.*Check the model's"):
        pruner.prune(RKUConfig(sparsity=0.3, importance="magnitude"), progress=False)
