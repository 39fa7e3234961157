"""GGUF export: files read back with gguf.GGUFReader match the checkpoint (architecture, per-layer widths, tensor
names, shapes and values); uniform exports load back in transformers with the same logits; bad input fails first."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import make_tokenizer, tiny_model, token_dataset  # noqa: E402

gguf = pytest.importorskip("gguf", reason="the gguf package writes and reads GGUF files")

from optimum_rku import RKUConfig, RKUPruner  # noqa: E402
from optimum_rku.export.gguf import export_gguf, plan_gguf_export  # noqa: E402
from optimum_rku.export.vocab import detect_pre_tokenizer  # noqa: E402
from optimum_rku.io.checkpoint import RKUModelForCausalLM, load_tokenizer  # noqa: E402

TESTBED = Path(__file__).resolve().parents[1] / "optimum_rku" / "testbed" / "model"
VOCAB = 512  # the testbed's byte-level BPE tokenizer serves the tiny models too


def prune_tiny(family: str, allocation: str, directory: Path, model: dict | None = None, **config) -> Path:
    """A tiny `family` model (config `model` overrides) with the testbed tokenizer, pruned 40% with `allocation` and
    saved to `directory`."""
    overrides = {"vocab_size": VOCAB, **(model or {})}
    if family == "gemma2":
        overrides["tie_word_embeddings"] = True  # as every Gemma2 release (llama.cpp's gemma2 ties them)
    pruner = RKUPruner(tiny_model(family, **overrides), load_tokenizer(TESTBED))
    settings = {"sparsity": 0.4, "allocation": allocation, "min_keep": 0.25, **config}
    pruner.prune(
        RKUConfig(**settings), calibration_dataset=token_dataset(vocab=VOCAB), save_dir=directory, progress=False
    )
    return directory


def fields(path: Path) -> dict:
    reader = gguf.GGUFReader(str(path))
    return {key: value.contents() for key, value in reader.fields.items()}


def tensors(path: Path) -> dict:
    return {t.name: t for t in gguf.GGUFReader(str(path)).tensors}


def state(directory: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v.float().numpy() for f in sorted(directory.glob("*.safetensors")) for k, v in load_file(f).items()}


def config_widths(directory: Path) -> tuple[list[int], list[int], list[int]]:
    config = json.loads((directory / "config.json").read_text())
    per = {int(k): v for k, v in (config.get("per_layer_config") or {}).items()}  # keys "00", "01"... past 10 layers
    layers = [{**config, **per.get(i, {})} for i in range(config["num_hidden_layers"])]
    return (
        [c["num_attention_heads"] for c in layers],
        [c["num_key_value_heads"] for c in layers],
        [c["intermediate_size"] for c in layers],
    )


def unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of llama.cpp's q/k row order (interleaved rotary pairs) back to transformers' half-split order."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_per_layer_checkpoint_writes_deci_with_per_layer_arrays_and_exact_weights(tmp_path, family):
    ckpt = prune_tiny(family, "global", tmp_path / "ckpt")
    heads, kv_heads, ffn = config_widths(ckpt)
    assert len(set(zip(heads, kv_heads, ffn))) > 1, "the global allocation should give layers different widths"
    out = export_gguf(ckpt, tmp_path / "model.gguf", "f32")
    kv = fields(out)
    assert kv["general.architecture"] == "deci"
    assert kv["deci.block_count"] == 3
    assert kv["deci.feed_forward_length"] == ffn
    assert kv["deci.attention.head_count"] == heads
    assert kv["deci.attention.head_count_kv"] == kv_heads
    assert kv["deci.attention.key_length"] == kv["deci.rope.dimension_count"] == 8
    assert kv["tokenizer.ggml.model"] == "gpt2" and kv["tokenizer.ggml.pre"] == "smollm"

    source, written = state(ckpt), tensors(out)
    expected = {"token_embd.weight", "output_norm.weight", "output.weight"}
    for i in range(3):
        names = [
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ]
        expected |= {f"blk.{i}.{n}.weight" for n in names}
        if family == "qwen2":
            expected |= {f"blk.{i}.attn_{n}.bias" for n in "qkv"}
    assert set(written) == expected
    hf = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj"}
    hf |= {"attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj"}
    hf |= {"ffn_down": "mlp.down_proj"}
    for i in range(3):
        for short, long in hf.items():
            tensor = written[f"blk.{i}.{short}.weight"]
            original = source[f"model.layers.{i}.{long}.weight"]
            assert list(tensor.shape) == list(original.shape[::-1])  # ggml lists the row length first
            data = np.asarray(tensor.data)
            if short in ("attn_q", "attn_k"):
                data = unpermute(data, heads[i] if short == "attn_q" else kv_heads[i])
            np.testing.assert_array_equal(data, original)
        if family == "qwen2":
            bias = np.asarray(written[f"blk.{i}.attn_q.bias"].data)
            np.testing.assert_array_equal(unpermute(bias, heads[i]), source[f"model.layers.{i}.self_attn.q_proj.bias"])


def test_per_layer_checkpoint_of_more_than_ten_layers_exports(tmp_path):
    """transformers zero-pads `per_layer_config` keys ("00", "01", ...) past 10 layers; widths must still match."""
    ckpt = prune_tiny("llama", "global", tmp_path / "ckpt", model={"num_hidden_layers": 11}, kv_cache_tokens=6144)
    assert "00" in json.loads((ckpt / "config.json").read_text())["per_layer_config"]
    heads, kv_heads, ffn = config_widths(ckpt)
    assert len(set(ffn)) > 1
    kv = fields(export_gguf(ckpt, tmp_path / "model.gguf", "f32"))
    assert kv["deci.block_count"] == 11
    assert kv["deci.feed_forward_length"] == ffn and kv["deci.attention.head_count_kv"] == kv_heads


@pytest.mark.parametrize(
    ("family", "arch"),
    [("llama", "llama"), ("mistral", "llama"), ("qwen2", None), ("qwen3", "qwen3"), ("gemma2", "gemma2")],
)
def test_uniform_checkpoint_keeps_its_family_architecture_and_scalar_widths(tmp_path, family, arch):
    ckpt = prune_tiny(family, "uniform", tmp_path / "ckpt")
    heads, kv_heads, ffn = config_widths(ckpt)
    out = export_gguf(ckpt, tmp_path / "model.gguf", "f32")
    kv = fields(out)
    if arch is None:  # qwen2's builder needs q width == hidden; with heads removed the file uses llama's builder
        arch = "qwen2" if heads[0] * 8 == 32 else "llama"
    assert kv["general.architecture"] == arch
    assert kv[f"{arch}.feed_forward_length"] == ffn[0]
    assert kv[f"{arch}.attention.head_count"] == heads[0]
    assert kv[f"{arch}.attention.head_count_kv"] == kv_heads[0]
    written = tensors(out)
    assert list(written["blk.0.ffn_down.weight"].shape) == [ffn[0], 32]
    if family == "qwen3":
        assert {"blk.0.attn_q_norm.weight", "blk.0.attn_k_norm.weight"} <= set(written)
    if family == "gemma2":
        source = state(ckpt)
        assert "output.weight" not in written  # tied: llama.cpp reuses token_embd
        np.testing.assert_allclose(
            np.asarray(written["blk.1.post_ffw_norm.weight"].data),
            source["model.layers.1.post_feedforward_layernorm.weight"] + 1.0,  # Gemma's (1 + weight) RMSNorm
        )
        assert kv["gemma2.attn_logit_softcapping"] == pytest.approx(50.0)


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_uniform_export_loads_back_in_transformers_with_the_same_logits(tmp_path, family):
    """transformers' GGUF reader undoes the q/k permutation (its qwen3 reader ignores key_length, so not that one)."""
    from transformers import AutoModelForCausalLM

    ckpt = prune_tiny(family, "uniform", tmp_path / "ckpt")
    out = export_gguf(ckpt, tmp_path / "out" / "model.gguf", "f32")
    back = AutoModelForCausalLM.from_pretrained(out.parent, gguf_file=out.name, dtype=torch.float32).eval()
    pruned = RKUModelForCausalLM.from_pretrained(ckpt).eval()
    ids = torch.randint(4, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, pruned(ids).logits, atol=1e-4, rtol=1e-4)


def test_bundled_testbed_exports_with_its_tokenizer_and_q8_0_rules(tmp_path):
    out = export_gguf(TESTBED, tmp_path / "testbed.gguf", "q8_0")
    kv = fields(out)
    tokenizer = json.loads((TESTBED / "tokenizer.json").read_text())
    vocab = {i: t for t, i in tokenizer["model"]["vocab"].items()}
    assert kv["general.architecture"] == "llama"
    assert kv["tokenizer.ggml.tokens"] == [vocab[i] for i in range(512)]
    assert kv["tokenizer.ggml.pre"] == "smollm"  # Digits(individual) + ByteLevel, no space clean-up
    assert len(kv["tokenizer.ggml.merges"]) == len(tokenizer["model"]["merges"])
    assert kv["tokenizer.ggml.bos_token_id"] == 1 and kv["tokenizer.ggml.eos_token_id"] == 2
    assert kv["tokenizer.ggml.add_bos_token"] is False  # the testbed tokenizer adds no BOS
    assert kv["tokenizer.ggml.token_type"][:4] == [int(gguf.TokenType.CONTROL)] * 4
    assert kv["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    written = tensors(out)
    assert written["blk.0.ffn_up.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert written["blk.0.ffn_down.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0  # 704 = 22 x 32
    assert written["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert "output.weight" not in written  # tied embeddings


def test_per_layer_testbed_q8_0_keeps_rows_that_do_not_split_into_blocks_in_f16(tmp_path):
    pruner = RKUPruner.from_pretrained()
    texts = ["Question: Tom has 3 apples and buys 4 more. How many apples?\nAnswer: 3 + 4 = 7. #### 7"] * 4
    pruner.prune(RKUConfig(sparsity=0.4), calibration_dataset=texts, save_dir=tmp_path / "ckpt", progress=False)
    plan = plan_gguf_export(tmp_path / "ckpt", "q8_0")
    assert plan.arch == "deci" and plan.per_layer
    out = export_gguf(tmp_path / "ckpt", tmp_path / "tb.gguf", "q8_0")
    kv, written = fields(out), tensors(out)
    assert kv["deci.feed_forward_length"] == [w.ffn for w in plan.layers]
    for i, width in enumerate(kv["deci.feed_forward_length"]):
        expected = gguf.GGMLQuantizationType.Q8_0 if width % 32 == 0 else gguf.GGMLQuantizationType.F16
        assert written[f"blk.{i}.ffn_down.weight"].tensor_type == expected
        assert written[f"blk.{i}.ffn_gate.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0  # rows of 256
    assert kv["optimum_rku.sparsity"] == "0.4" and kv["optimum_rku.allocation"] == "global"


def test_gguf_sourced_checkpoint_carries_the_source_tokens_and_can_copy_its_tokenizer(tmp_path):
    from test_sources import write_tiny_gguf

    from optimum_rku.io.sources import gguf_to_checkpoint

    source = tmp_path / "src" / "tiny.gguf"
    source.parent.mkdir()
    write_tiny_gguf(source)
    dense = gguf_to_checkpoint(source, tmp_path / "dense")
    pruner = RKUPruner.from_pretrained(dense)
    pruner.prune(
        RKUConfig(sparsity=0.3, allocation="global", min_keep=0.25),
        calibration_dataset=token_dataset(vocab=263),
        save_dir=tmp_path / "ckpt",
        progress=False,
    )
    original = fields(source)
    out = export_gguf(tmp_path / "ckpt", tmp_path / "rebuilt.gguf", "f16")
    kv = fields(out)
    assert kv["tokenizer.ggml.tokens"] == original["tokenizer.ggml.tokens"]
    assert kv["tokenizer.ggml.merges"] == original["tokenizer.ggml.merges"]
    assert kv["tokenizer.ggml.pre"] == "gpt-2"  # transformers rebuilds a plain ByteLevel pre-tokenizer from a GGUF
    copied = fields(export_gguf(tmp_path / "ckpt", tmp_path / "copied.gguf", "f16", tokenizer_gguf=source))
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"):
        assert copied[key] == original[key]
    named = fields(export_gguf(tmp_path / "ckpt", tmp_path / "named.gguf", pre_tokenizer="smollm"))
    assert named["tokenizer.ggml.pre"] == "smollm"
    assert tensors(out)["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16


def test_pre_tokenizer_shapes_are_recognised():
    from optimum_rku.export.vocab import LLAMA3_SPLIT, QWEN2_SPLIT

    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    no_regex = {**byte_level, "use_regex": False}
    split = lambda regex: {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}  # noqa: E731
    digits = {"type": "Digits", "individual_digits": True}
    seq = lambda *steps: {"pre_tokenizer": {"type": "Sequence", "pretokenizers": list(steps)}}  # noqa: E731
    assert detect_pre_tokenizer({"pre_tokenizer": byte_level}, False) == "gpt-2"
    assert detect_pre_tokenizer(seq(digits, byte_level), False) == "smollm"
    assert detect_pre_tokenizer(seq(digits, byte_level), True) == "starcoder"
    assert detect_pre_tokenizer(seq(split(LLAMA3_SPLIT), no_regex), False) == "llama-bpe"
    assert detect_pre_tokenizer(seq(split(QWEN2_SPLIT), no_regex), False) == "qwen2"
    assert detect_pre_tokenizer(seq(split(r"\s+"), no_regex), False) is None
    assert detect_pre_tokenizer({"pre_tokenizer": {**byte_level, "add_prefix_space": True}}, False) is None


@pytest.mark.parametrize("family", ["qwen3", "gemma2", "gemma3_text"])
def test_per_layer_widths_llama_cpp_cannot_build_fail_before_writing(tmp_path, family):
    ckpt = prune_tiny(family, "global", tmp_path / "ckpt")
    with pytest.raises(ValueError, match="allocation='uniform'") as err:
        export_gguf(ckpt, tmp_path / "model.gguf")
    assert "deci" in str(err.value) and family in str(err.value)
    assert list(tmp_path.glob("*.gguf*")) == [] and list(tmp_path.glob(".model.gguf*")) == []


def test_output_bias_the_architecture_cannot_load_fails_clearly(tmp_path):
    ckpt = prune_tiny("qwen3", "uniform", tmp_path / "ckpt", bias_compensation=True, targets="attention")
    with pytest.raises(ValueError, match="o_proj.bias.*bias_compensation=False"):
        plan_gguf_export(ckpt)
    llama = prune_tiny("llama", "global", tmp_path / "llama", bias_compensation=True)
    plan = plan_gguf_export(llama)
    assert any(t.name.endswith("ffn_down.bias") for t in plan.tensors)  # llama.cpp's deci loads FFN biases
    assert not any(t.name.endswith("attn_q.bias") for t in plan.tensors)  # all-zero biases are left out


def test_bad_inputs_fail_before_any_work(tmp_path):
    ckpt = prune_tiny("llama", "uniform", tmp_path / "ckpt")
    with pytest.raises(ValueError, match="dtype='q4_0'.*'q8_0'"):
        export_gguf(ckpt, tmp_path / "m.gguf", "q4_0")
    with pytest.raises(ValueError, match="must end in .gguf"):
        export_gguf(ckpt, tmp_path / "m.bin")
    source = export_gguf(ckpt, tmp_path / "source.gguf")
    with pytest.raises(ValueError, match="is the tokenizer_gguf input"):
        export_gguf(ckpt, source, tokenizer_gguf=source, overwrite=True)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        export_gguf(tmp_path / "missing", tmp_path / "m.gguf")
    with pytest.raises(TypeError, match="checkpoint_dir"):
        export_gguf(3, tmp_path / "m.gguf")
    with pytest.raises(ValueError, match="pre_tokenizer='Not A Name'"):
        export_gguf(ckpt, tmp_path / "m.gguf", pre_tokenizer="Not A Name")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="missing config.json, \\*.safetensors"):
        export_gguf(tmp_path / "empty", tmp_path / "m.gguf")
    existing = tmp_path / "m.gguf"
    existing.write_bytes(b"keep")
    with pytest.raises(ValueError, match="overwrite=True"):
        export_gguf(ckpt, existing)
    assert existing.read_bytes() == b"keep"
    export_gguf(ckpt, existing, overwrite=True)
    assert fields(existing)["general.architecture"] == "llama"


def test_tokenizers_llama_cpp_cannot_run_are_refused_with_the_alternatives(tmp_path):
    pruner = RKUPruner(tiny_model("llama"), make_tokenizer())  # a character WordLevel tokenizer
    pruner.prune(
        RKUConfig(sparsity=0.3), calibration_dataset=token_dataset(), save_dir=tmp_path / "ckpt", progress=False
    )
    with pytest.raises(ValueError, match="WordLevel.*byte-level BPE.*tokenizer_gguf"):
        export_gguf(tmp_path / "ckpt", tmp_path / "m.gguf")
    assert not list(tmp_path.glob("*.gguf"))


def test_a_failure_while_writing_leaves_no_file(tmp_path, monkeypatch):
    import optimum_rku.export.gguf as exporter

    ckpt = prune_tiny("llama", "global", tmp_path / "ckpt")

    def broken(plan, array):
        raise RuntimeError("disk full")

    monkeypatch.setattr(exporter, "_transform", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_gguf(ckpt, tmp_path / "out" / "model.gguf")
    assert list((tmp_path / "out").iterdir()) == []


def test_cli_export_gguf_writes_the_file_and_the_cards_llama_cpp_section(tmp_path, capsys):
    from optimum_rku.cli import main
    from optimum_rku.hub.card import write_model_card
    from optimum_rku.hub.upload import UPLOAD_PATTERNS

    ckpt = prune_tiny("llama", "global", tmp_path / "ckpt")
    write_model_card(ckpt)
    assert "Use with llama.cpp" not in (ckpt / "README.md").read_text()
    code = main(
        ["export", "gguf", "--checkpoint", str(ckpt), "--output", str(ckpt / "tiny-q8_0.gguf"), "--dtype", "q8_0"]
    )
    out = capsys.readouterr().out
    assert code == 0 and "llama.cpp architecture: deci" in out and "-fa on" in out
    assert fields(ckpt / "tiny-q8_0.gguf")["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    card = (ckpt / "README.md").read_text()
    assert "## Use with llama.cpp" in card and "`tiny-q8_0.gguf` | q8_0 | Q8_0 x" in card
    assert "`deci` (per-layer widths)" in card and "ollama create my-model -f Modelfile" in card
    assert any(Path("tiny-q8_0.gguf").match(pattern) for pattern in UPLOAD_PATTERNS)  # pushed with the checkpoint

    assert main(["export", "gguf", "--checkpoint", str(ckpt), "--output", str(ckpt / "tiny-q8_0.gguf")]) == 2
    assert "overwrite" in capsys.readouterr().err
    for argv in (["gguf", "--dtype", "q4"], ["onnx"]):
        with pytest.raises(SystemExit) as exit_:
            main(["export", *argv, "--checkpoint", str(ckpt), "--output", str(tmp_path / "a.gguf")])
        assert exit_.value.code == 2
    qwen3 = prune_tiny("qwen3", "global", tmp_path / "qwen3")
    capsys.readouterr()
    assert main(["export", "gguf", "--checkpoint", str(qwen3), "--output", str(tmp_path / "q.gguf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "allocation='uniform'" in err[0]
    assert not (tmp_path / "q.gguf").exists()


#: Phi-3 with q width = hidden size (8 heads x 4), as its releases: llama.cpp's phi3 loader sizes q and o that way
PHI3 = {"head_dim": 4}

# a tiny Phi-3 with LongRoPE: short / long factors and an original context shorter than its window
LONGROPE_PHI3 = {
    **PHI3,
    "rope_parameters": {
        "rope_type": "longrope",
        "rope_theta": 10000.0,
        "short_factor": [1.0, 1.5],
        "long_factor": [2.0, 4.0],
        "original_max_position_embeddings": 32,
    },
    "original_max_position_embeddings": 32,
    "max_position_embeddings": 128,
}


def test_phi3_keeping_its_heads_writes_llama_cpp_phi3_with_the_fused_tensors(tmp_path):
    rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    ckpt = prune_tiny("phi3", "uniform", tmp_path / "ckpt", model={**PHI3, "rope_parameters": rope}, targets="mlp")
    out = export_gguf(ckpt, tmp_path / "phi3.gguf", "f32")
    kv, written, source = fields(out), tensors(out), state(ckpt)
    heads, kv_heads, ffn = config_widths(ckpt)
    assert kv["general.architecture"] == "phi3" and kv["phi3.feed_forward_length"] == ffn[0]
    assert kv["phi3.rope.dimension_count"] == 2  # half of each 4-wide head rotates
    assert (heads[0], kv_heads[0]) == (8, 4)
    assert not any(".ffn_gate." in name or ".attn_q." in name for name in written)
    for i in range(3):
        qkv = np.asarray(written[f"blk.{i}.attn_qkv.weight"].data)
        np.testing.assert_array_equal(qkv, source[f"model.layers.{i}.self_attn.qkv_proj.weight"])  # q, k, v rows
        up = written[f"blk.{i}.ffn_up.weight"]
        assert list(up.shape) == [32, 2 * ffn[i]]  # llama.cpp's phi3 splits gate (first half) and up itself
        np.testing.assert_array_equal(np.asarray(up.data), source[f"model.layers.{i}.mlp.gate_up_proj.weight"])


@pytest.mark.parametrize(("allocation", "arch"), [("uniform", "llama"), ("global", "deci")])
def test_phi3_without_all_heads_or_with_per_layer_widths_is_split_into_llama_layers(tmp_path, allocation, arch):
    ckpt = prune_tiny("phi3", allocation, tmp_path / "ckpt", model=PHI3)
    out = export_gguf(ckpt, tmp_path / "phi3.gguf", "f32")
    kv, written, source = fields(out), tensors(out), state(ckpt)
    heads, kv_heads, ffn = config_widths(ckpt)
    assert kv["general.architecture"] == arch
    assert heads[0] * 4 < 32 or len(set(ffn)) > 1  # the phi3 loader could not hold this one
    if arch == "deci":
        assert kv["deci.feed_forward_length"] == ffn and kv["deci.attention.head_count"] == heads
    assert not any("attn_qkv" in name for name in written)
    for i in range(3):
        qkv = source[f"model.layers.{i}.self_attn.qkv_proj.weight"]
        q, k = heads[i] * 4, kv_heads[i] * 4
        parts = {"attn_q": (qkv[:q], heads[i]), "attn_k": (qkv[q : q + k], kv_heads[i]), "attn_v": (qkv[q + k :], 0)}
        for short, (rows, permuted_heads) in parts.items():
            data = np.asarray(written[f"blk.{i}.{short}.weight"].data)
            np.testing.assert_array_equal(unpermute(data, permuted_heads) if permuted_heads else data, rows)
        gate_up = source[f"model.layers.{i}.mlp.gate_up_proj.weight"]
        np.testing.assert_array_equal(np.asarray(written[f"blk.{i}.ffn_gate.weight"].data), gate_up[: ffn[i]])
        np.testing.assert_array_equal(np.asarray(written[f"blk.{i}.ffn_up.weight"].data), gate_up[ffn[i] :])


def test_phi3_that_no_llama_cpp_architecture_holds_names_each_reason(tmp_path):
    rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    ckpt = prune_tiny("phi3", "uniform", tmp_path / "ckpt", model={**PHI3, "rope_parameters": rope})
    with pytest.raises(ValueError) as err:
        export_gguf(ckpt, tmp_path / "phi3.gguf")
    message = str(err.value)
    assert "'phi3' architecture sizes q and o as hidden_size" in message
    assert "'llama' architecture rotates whole heads; this checkpoint rotates 2 of every 4" in message
    assert "targets='mlp'" in message and not list(tmp_path.glob("*.gguf"))


def test_gemma3_writes_its_norms_scales_rotary_bases_and_sliding_pattern(tmp_path):
    layer_types = ["sliding_attention", "full_attention", "sliding_attention"]
    rope = {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
    }
    model = {
        "query_pre_attn_scalar": 12,  # transformers scales q by 12 ** -0.5; llama.cpp's gemma3 by head_dim ** -0.5
        "layer_types": layer_types,
        "sliding_window": 16,
        "rope_parameters": rope,
        "final_logit_softcapping": 30.0,
        "tie_word_embeddings": True,
    }
    ckpt = prune_tiny("gemma3_text", "uniform", tmp_path / "ckpt", model=model)
    out = export_gguf(ckpt, tmp_path / "gemma3.gguf", "f32")
    kv, written, source = fields(out), tensors(out), state(ckpt)
    heads, kv_heads, ffn = config_widths(ckpt)
    assert kv["general.architecture"] == "gemma3"
    assert (kv["gemma3.feed_forward_length"], kv["gemma3.attention.head_count"]) == (ffn[0], heads[0])
    assert kv["gemma3.rope.freq_base"] == 1e6 and kv["gemma3.rope.freq_base_swa"] == 1e4
    assert kv["gemma3.rope.scaling.type"] == "linear" and kv["gemma3.rope.scaling.factor"] == 8.0
    assert kv["gemma3.attention.sliding_window"] == 16
    assert kv["gemma3.attention.sliding_window_pattern"] == [True, False, True]
    assert kv["gemma3.final_logit_softcapping"] == 30.0 and "gemma3.attn_logit_softcapping" not in kv
    assert "output.weight" not in written  # tied
    scale = 8**0.5 / 12**0.5
    for i in range(3):
        prefix = f"model.layers.{i}."
        np.testing.assert_allclose(
            np.asarray(written[f"blk.{i}.attn_q_norm.weight"].data),
            (source[prefix + "self_attn.q_norm.weight"] + 1.0) * scale,  # q is normalized, so the scale goes here
            rtol=1e-6,
        )
        np.testing.assert_array_equal(
            np.asarray(written[f"blk.{i}.attn_k_norm.weight"].data), source[prefix + "self_attn.k_norm.weight"] + 1.0
        )
        np.testing.assert_array_equal(
            np.asarray(written[f"blk.{i}.attn_q.weight"].data), source[prefix + "self_attn.q_proj.weight"]
        )  # gemma3 rotates halves, as transformers: no permutation
        for short, long in (
            ("post_attention_norm", "post_attention_layernorm"),
            ("ffn_norm", "pre_feedforward_layernorm"),
        ):
            np.testing.assert_array_equal(
                np.asarray(written[f"blk.{i}.{short}.weight"].data), source[prefix + long + ".weight"] + 1.0
            )


def test_settings_the_architecture_cannot_apply_are_refused(tmp_path):
    ckpt = prune_tiny("gemma3_text", "uniform", tmp_path / "ckpt", model={"attn_logit_softcapping": 50.0})
    with pytest.raises(ValueError, match="'gemma3' architecture does not apply attn_logit_softcapping"):
        plan_gguf_export(ckpt)
    sliding_scaled = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    rope = {"sliding_attention": sliding_scaled, "full_attention": {"rope_type": "default", "rope_theta": 1e6}}
    ckpt = prune_tiny("gemma3_text", "uniform", tmp_path / "rope", model={"rope_parameters": rope})
    with pytest.raises(ValueError, match="never scales the rotary of sliding-window layers"):
        plan_gguf_export(ckpt)


@pytest.mark.parametrize(("allocation", "arch"), [("global", "deci"), ("uniform", "llama")])
def test_bias_compensated_llama_writes_its_output_biases_and_no_zero_ones(tmp_path, allocation, arch):
    # a 6144-token KV price makes the global plan remove heads on this short-context model (auto prices its context)
    ckpt = prune_tiny("llama", allocation, tmp_path / "ckpt", bias_compensation=True, kv_cache_tokens=6144)
    out = export_gguf(ckpt, tmp_path / "llama.gguf", "f32")
    kv, written, source = fields(out), tensors(out), state(ckpt)
    assert kv["general.architecture"] == arch
    outputs = {"attn_output": "self_attn.o_proj", "ffn_down": "mlp.down_proj"}
    config = json.loads((ckpt / "config.json").read_text())
    assert config["mlp_bias"] and config["attention_bias"]  # heads and channels removed: both outputs compensated
    others = ["mlp.gate_proj", "mlp.up_proj", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
    kept = []
    for i in range(3):
        for short, long in outputs.items():
            original = source[f"model.layers.{i}.{long}.bias"]
            if original.any():  # zero where a layer lost nothing of that part
                np.testing.assert_array_equal(np.asarray(written[f"blk.{i}.{short}.bias"].data), original)
                kept.append(short)
            else:
                assert f"blk.{i}.{short}.bias" not in written
        for long in others:  # the config flags gave these biases too; all zero, so left out
            assert not source[f"model.layers.{i}.{long}.bias"].any()
    assert {name.split(".")[2] for name in written if name.endswith(".bias")} == set(kept) == set(outputs)
    assert arch == "deci" or len(kept) == 6  # uniform: every layer lost heads and channels


def test_a_name_llama_cpp_reads_tokens_for_is_left_out_when_the_tokenizer_lacks_them(tmp_path):
    ckpt = prune_tiny("phi3", "uniform", tmp_path / "phi3-pruned", model=PHI3, targets="mlp")
    plan = plan_gguf_export(ckpt)
    assert plan.metadata["name"] is None and any("general.name 'phi3-pruned-rku' left out" in n for n in plan.notes)
    assert "general.name" not in fields(export_gguf(ckpt, tmp_path / "m.gguf"))
    llama = prune_tiny("llama", "uniform", tmp_path / "llama-pruned")
    assert fields(export_gguf(llama, tmp_path / "l.gguf"))["general.name"] == "llama-pruned-rku"


def test_weights_that_disagree_with_config_are_named(tmp_path):
    ckpt = prune_tiny("llama", "uniform", tmp_path / "ckpt")
    config = json.loads((ckpt / "config.json").read_text())
    config["intermediate_size"] += 1
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"Layer 0 .*config.json says .*gate_proj has \d+ rows \(expected"):
        plan_gguf_export(ckpt)


@pytest.mark.parametrize(("targets", "arch"), [("mlp", "phi3"), ("both", "llama")])
def test_longrope_writes_its_factors_attention_factor_and_original_context(tmp_path, targets, arch):
    import math

    model = LONGROPE_PHI3
    ckpt = prune_tiny("phi3", "uniform", tmp_path / "ckpt", model=model, targets=targets)
    plan = plan_gguf_export(ckpt)
    assert any("long rotary factors whenever its context" in note for note in plan.notes)
    kv, written = fields(export_gguf(ckpt, tmp_path / "m.gguf", "f32")), tensors(tmp_path / "m.gguf")
    assert kv["general.architecture"] == arch
    assert kv[f"{arch}.rope.scaling.type"] == "longrope"
    assert kv[f"{arch}.rope.scaling.original_context_length"] == 32
    assert kv[f"{arch}.rope.scaling.attn_factor"] == pytest.approx(math.sqrt(1 + math.log(4) / math.log(32)))
    np.testing.assert_array_equal(np.asarray(written["rope_factors_long.weight"].data), [2.0, 4.0])
    np.testing.assert_array_equal(np.asarray(written["rope_factors_short.weight"].data), [1.0, 1.5])


def test_rotary_scaling_with_per_layer_head_counts_is_written_and_the_checkpoint_reloads(tmp_path):
    """transformers' rotary functions read the (per-layer) head count; the export must still get their values."""
    llama3 = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    # a 6144-token KV price makes the global plan remove heads on these short-context models (auto prices the context)
    ckpt = prune_tiny("llama", "global", tmp_path / "llama", model={"rope_parameters": llama3}, kv_cache_tokens=6144)
    heads, _, _ = config_widths(ckpt)
    assert len(set(heads)) > 1, "the global allocation should give layers different head counts here"
    written = tensors(export_gguf(ckpt, tmp_path / "llama.gguf", "f32"))
    assert list(written["rope_freqs.weight"].shape) == [4] and np.asarray(written["rope_freqs.weight"].data).max() > 1
    model = LONGROPE_PHI3
    phi3 = prune_tiny("phi3", "global", tmp_path / "phi3", model=model, kv_cache_tokens=6144)
    assert len(set(config_widths(phi3)[0])) > 1
    kv = fields(export_gguf(phi3, tmp_path / "phi3.gguf", "f32"))
    assert kv["general.architecture"] == "deci" and kv["deci.rope.scaling.type"] == "longrope"
    model = RKUModelForCausalLM.from_pretrained(phi3).eval()  # rotary buffers are rebuilt from the config, and
    with torch.no_grad():  # LongRoPE switches to its long factors for sequences over the original context
        assert torch.isfinite(model(torch.randint(4, VOCAB, (1, 40))).logits).all()
    assert model.model.rotary_emb.original_inv_freq.numel() == 2
