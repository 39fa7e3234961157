"""The architecture spec registry: every entry matches transformers, and the code that must not name a family doesn't."""

import ast
import inspect

import pytest
import torch
import transformers
from conftest import FAMILIES, tiny_model

from optimum_rku.models import modeling_rku
from optimum_rku.models.blocks import blocks
from optimum_rku.models.specs import (
    LLAMA_CPP_ARCHITECTURES,
    PROJECTIONS,
    SPECS,
    ArchitectureSpec,
    GGUFSpec,
    check_output_bias,
    get_spec,
)
from optimum_rku.recovery import default_lora_config


@pytest.mark.parametrize("family", FAMILIES)
def test_spec_matches_transformers(family):
    spec = SPECS[family]
    model_class = getattr(transformers, spec.causal_lm_class)
    config_class = getattr(transformers, spec.config_class)
    assert model_class.config_class is config_class
    assert config_class.model_type == family
    model = tiny_model(family)
    for view in blocks(model):
        names = {name for name, _ in view.attn.named_children()} | {name for name, _ in view.mlp.named_children()}
        assert set(spec.lora_targets) <= names  # every projection module the spec names exists
        for projection in PROJECTIONS:  # logical projections have the widths the block view reports
            assert view.weight(projection).shape[0] == view.width(projection)
        assert view.o_proj.in_features == view.num_heads * view.head_dim
        assert view.down_proj.in_features == view.intermediate_size
        for flag in spec.output_bias_flags.values():
            assert hasattr(model.config, flag)


def test_modeling_rku_names_no_family_and_imports_only_transformers():
    """It is copied into checkpoints: its code (docstrings and comments may give examples) names no family."""
    tree = ast.parse(inspect.getsource(modeling_rku))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef)) and isinstance(node.body[0], ast.Expr)
    }
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    names |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    strings = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]
    for spec in SPECS.values():
        for name in (spec.model_type, spec.causal_lm_class, spec.config_class):
            assert name not in names and not any(name in text for text in strings), name
    imports = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module)])
    }
    assert imports <= {"transformers", "huggingface_hub", "copy"}, (
        imports
    )  # huggingface_hub: a transformers dependency


@pytest.mark.parametrize("family", FAMILIES)
def test_remote_code_classes_follow_the_spec(family):
    spec = SPECS[family]
    model_class = getattr(modeling_rku, "RKU" + spec.causal_lm_class)
    config_class = getattr(modeling_rku, "RKU" + spec.config_class)
    assert issubclass(model_class, getattr(transformers, spec.causal_lm_class))
    assert model_class.config_class is config_class
    assert getattr(modeling_rku, "RKU" + spec.causal_lm_class) is model_class  # built once
    with pytest.raises(AttributeError):
        modeling_rku.RKUNoSuchModelForCausalLM  # noqa: B018


def test_unsupported_and_bias_errors_name_what_is_allowed():
    with pytest.raises(ValueError, match=r"model_type='bert'.*supports: .*model_type='llama'"):
        get_spec(transformers.BertConfig())
    no_bias = next(spec for spec in SPECS.values() if not spec.output_bias_flags)
    with pytest.raises(ValueError, match=rf"model_type='{no_bias.model_type}'.*Allowed: llama: "):
        check_output_bias(getattr(transformers, no_bias.config_class)(), ["attn"])


def test_fused_projections_are_validated_and_sliced_by_name():
    spec = ArchitectureSpec("x", "X", "XForCausalLM", "XConfig", fused={"qkv": ("q_proj", "k_proj", "v_proj")})
    assert spec.module_name("k_proj") == "qkv" and spec.module_name("o_proj") == "o_proj"
    assert spec.lora_targets == ("qkv", "o_proj", "gate_proj", "up_proj", "down_proj")
    with pytest.raises(ValueError, match="must name each"):
        ArchitectureSpec("y", "Y", "Y", "Y", fused={"a": ("q_proj", "k_proj"), "b": ("k_proj", "v_proj")})


def test_lora_targets_come_from_the_model_family():
    model = tiny_model("llama")
    assert sorted(default_lora_config(model).target_modules) == sorted(SPECS["llama"].lora_targets)
    every = {name for spec in SPECS.values() for name in spec.lora_targets}
    assert set(default_lora_config().target_modules) == every
    assert default_lora_config(model, r=4).r == 4


def test_block_weight_views_share_storage():
    model = tiny_model("llama")
    view = blocks(model)[0]
    with torch.no_grad():
        view.weight("k_proj")[:2].zero_()
    assert not view.module("k_proj").weight[:2].any()


def test_readme_family_table_lists_every_spec():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme[readme.index("## Supported architectures") :].split("\n\n")[1]
    rows = [line for line in table.splitlines()[2:] if line.startswith("| ")]
    listed = {line.split("|")[2].strip().strip("`") for line in rows}
    assert listed == set(SPECS)
    for spec in SPECS.values():
        row = next(line for line in rows if f"`{spec.model_type}`" in line)
        assert row.split("|")[1].strip() == spec.family
        for flag in spec.output_bias_flags.values():
            assert f"`{flag}`" in row
        gguf = row.split("|")[5]  # the llama.cpp architectures the GGUF export writes
        for name in (spec.gguf.architecture, spec.gguf.fallback, spec.gguf.per_layer):
            assert name is None or f"`{name}`" in gguf, (spec.model_type, name)


def test_gguf_exporter_names_no_family_and_no_llama_cpp_architecture():
    """Which llama.cpp architecture a family goes to, and what that architecture accepts, live in specs.py only."""
    from optimum_rku.export import gguf as gguf_export

    tree = ast.parse(inspect.getsource(gguf_export))
    strings = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    names |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    forbidden = set(SPECS) | set(LLAMA_CPP_ARCHITECTURES)
    forbidden |= {name for spec in SPECS.values() for name in (spec.causal_lm_class, spec.config_class)}
    assert not forbidden & (strings | names)


def test_gguf_specs_name_llama_cpp_architectures_gguf_py_knows():
    gguf = pytest.importorskip("gguf")
    known = set(gguf.MODEL_ARCH_NAMES.values())
    assert set(LLAMA_CPP_ARCHITECTURES) <= known
    for spec in SPECS.values():
        routes = [spec.gguf.architecture, spec.gguf.fallback, spec.gguf.per_layer]
        assert all(LLAMA_CPP_ARCHITECTURES[name] for name in routes if name)
        if spec.gguf.per_layer:
            assert LLAMA_CPP_ARCHITECTURES[spec.gguf.per_layer].per_layer_widths
    for group in (g for arch in LLAMA_CPP_ARCHITECTURES.values() for g in arch.fused):
        assert set(group) <= set(PROJECTIONS)
    with pytest.raises(ValueError, match="not in"):
        GGUFSpec("no-such-architecture")
    with pytest.raises(ValueError, match="builds every layer with the same widths"):
        GGUFSpec("llama", per_layer="llama")
