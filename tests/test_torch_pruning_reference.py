"""The Torch-Pruning reference of the quality benchmark (benchmark extra; skipped where torch-pruning is absent)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import make_tokenizer, tiny_model  # noqa: E402

from optimum_rku.models.blocks import blocks  # noqa: E402
from optimum_rku.models.geometry import prunable_parameters  # noqa: E402

pytest.importorskip("torch_pruning")
from torch_pruning_reference import run_torch_pruning  # noqa: E402

TEXTS = ["Question: 2 + 3?\nAnswer: 5 #### 5", "Question: 4 * 2?\nAnswer: 8 #### 8"]


@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
@pytest.mark.parametrize("targets", ["both", "mlp"])
def test_torch_pruning_removes_the_asked_share(importance, targets):
    model = tiny_model("llama", num_hidden_layers=2, intermediate_size=64)
    dense = prunable_parameters(model)
    info = run_torch_pruning(model, make_tokenizer(), TEXTS, importance, 0.4, targets=targets)
    kept = prunable_parameters(model) / dense
    assert abs(kept - 0.6) < 0.03, info
    for view in blocks(model):
        assert view.num_kv_heads == (2 if targets == "both" else 4)
        assert view.num_heads == 2 * view.num_kv_heads  # whole KV groups go with their query heads
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
    out = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 7)
