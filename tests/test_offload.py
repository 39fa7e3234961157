import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import contextlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import tiny_model, token_dataset  # noqa: E402

from optimum_rku import RKUPruner  # noqa: E402
from optimum_rku.config import RKUConfig  # noqa: E402
from optimum_rku.importance import get_importance  # noqa: E402
from optimum_rku.models.blocks import blocks  # noqa: E402
from optimum_rku.scoring import PruningScores  # noqa: E402

# Layers alternate between CPU RAM and disk; lm_head on disk too, so the objective itself runs through a hook.
DEVICE_MAP = {
    "model.embed_tokens": "cpu",
    "model.rotary_emb": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.layers.2": "cpu",
    "model.layers.3": "disk",
    "model.norm": "cpu",
    "lm_head": "disk",
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny random Llama saved to disk, loaded twice: offloaded (cpu + disk) and normally."""
    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp("offload")
    tiny_model("llama", num_hidden_layers=4).save_pretrained(path / "model")
    offloaded = AutoModelForCausalLM.from_pretrained(
        path / "model", device_map=DEVICE_MAP, offload_folder=str(path / "offload"), dtype=torch.float32
    ).eval()
    reference = AutoModelForCausalLM.from_pretrained(path / "model", dtype=torch.float32).eval()
    return offloaded, reference, path


def test_weights_really_offloaded(saved):
    offloaded, _, _ = saved
    meta = {n for n, p in offloaded.named_parameters() if p.device.type == "meta"}
    assert any(n.startswith("model.layers.1.") for n in meta) and "lm_head.weight" in meta
    assert offloaded.hf_device_map["model.layers.3"] == "disk"


@pytest.mark.parametrize("granularity", ["kv_group", "query_head"])
def test_rku_scores_match_with_offload(saved, granularity):
    offloaded, reference, _ = saved
    config = RKUConfig(attention_granularity=granularity)
    calib = token_dataset()
    got = RKUPruner(offloaded).compute_scores(config, calib, batch_size=2, progress=False)
    want = RKUPruner(reference).compute_scores(config, calib, batch_size=2, progress=False)
    assert got.widths == want.widths and got.num_layers == 4
    for a, b in zip(got.mlp + got.attention + got.mlp_raw, want.mlp + want.attention + want.mlp_raw):
        assert torch.isfinite(a).all() and a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # hooks are removed and the offloaded model still runs normally afterwards
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(offloaded(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-6)


def test_prune_offloaded_raises_before_work_and_scores_transfer(saved):
    from transformers import AutoModelForCausalLM

    offloaded, _, path = saved
    pruner = RKUPruner(offloaded)
    with pytest.raises(ValueError, match="offloaded model"):
        pruner.prune(RKUConfig(sparsity=0.3), calibration_dataset=token_dataset())
    assert pruner.scores is None  # refused before scoring
    assert [b.intermediate_size for b in blocks(offloaded)] == [80] * 4
    # recommended path: score offloaded, save the scores, prune a normally loaded copy with them
    scores = pruner.compute_scores(RKUConfig(sparsity=0.3), token_dataset(), batch_size=2, progress=False)
    file = scores.save(path / "scores.safetensors")
    fresh = AutoModelForCausalLM.from_pretrained(path / "model", dtype=torch.float32).eval()
    pruned = RKUPruner(fresh).prune(RKUConfig(sparsity=0.3), scores=PruningScores.load(file), progress=False)
    direct = RKUPruner(tiny_model("llama", num_hidden_layers=4)).prune(
        RKUConfig(sparsity=0.3), calibration_dataset=token_dataset(), batch_size=2, progress=False
    )
    assert prunable_shapes(pruned) != prunable_shapes(tiny_model("llama", num_hidden_layers=4))
    assert prunable_shapes(pruned) == prunable_shapes(direct)


def prunable_shapes(model) -> list[torch.Size]:
    return [lin.weight.shape for b in blocks(model) for lin in b.linears()]


def _streamed_weights_alive_after_forward(model, streaming: bool) -> tuple[int, int]:
    """(disk-offloaded weight storages still alive after the forward pass, how many were streamed in)."""
    from torch.multiprocessing.reductions import StorageWeakRef

    from optimum_rku.scoring.offload import offload_hooks, stream_offloaded_weights

    refs, originals = [], []
    for hook in offload_hooks(model):
        if not hasattr(hook.weights_map.dataset, "index"):  # only disk-offloaded modules load fresh copies
            continue

        def spy(module, *args, _pre=hook.pre_forward, **kwargs):
            out = _pre(module, *args, **kwargs)
            refs.extend(StorageWeakRef(p.untyped_storage()) for p in module.parameters())
            return out

        originals.append((hook, hook.pre_forward))
        hook.pre_forward = spy
    try:
        ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        with stream_offloaded_weights(model) if streaming else contextlib.nullcontext():
            loss = model(inputs_embeds=embeds).logits.float().logsumexp(-1).sum()
            alive = sum(not ref.expired() for ref in refs)
            loss.backward()  # reloads what it needs from the offload store
    finally:
        for hook, pre in originals:
            hook.pre_forward = pre
    assert embeds.grad is not None and torch.isfinite(embeds.grad).all()
    return alive, len(refs)


def test_streaming_frees_offloaded_weights_before_backward(saved):
    offloaded, reference, _ = saved
    for p in offloaded.parameters():
        p.requires_grad_(False)
    kept, streamed = _streamed_weights_alive_after_forward(offloaded, streaming=False)
    assert streamed >= 15 and kept >= 15  # plain offload: autograd holds every streamed-in projection weight
    freed, streamed = _streamed_weights_alive_after_forward(offloaded, streaming=True)
    assert streamed >= 15 and freed == 0
    # the gradients are the same as without offload
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    grads = []
    for model in (offloaded, reference):
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        from optimum_rku.scoring.offload import stream_offloaded_weights

        with stream_offloaded_weights(model):
            model(inputs_embeds=embeds).logits.float().logsumexp(-1).sum().backward()
        grads.append(embeds.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_weight_gradient_importance_refused_on_offloaded_model(saved, monkeypatch):
    import optimum_rku.scoring.collect as scoring

    offloaded, _, _ = saved

    def no_scoring(*args, **kwargs):
        raise AssertionError("scoring started before the bad input was reported")

    monkeypatch.setattr(scoring, "iter_batches", no_scoring)
    with pytest.raises(ValueError, match="importance 'taylor' needs weight gradients.*allowed with offload"):
        RKUPruner(offloaded).compute_scores(RKUConfig(importance="taylor"), token_dataset(), progress=False)
    with pytest.raises(ValueError, match="importance 'taylor' needs weight gradients"):
        scoring.collect_stats(offloaded, token_dataset(), get_importance("taylor"), "self_nll")
