"""Quantized GGUF export: llama.cpp's fallback rule, the tensor-type report, argument checks, and (when llama-cpp-python
is installed) the real quantizer on a pruned tiny model."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from test_gguf_export import prune_tiny  # noqa: E402

gguf = pytest.importorskip("gguf", reason="the gguf package writes and reads GGUF files")

from optimum_rku.export.gguf import export_gguf, plan_gguf_export  # noqa: E402
from optimum_rku.export.quantize import (  # noqa: E402
    QUANT_TYPES,
    Fallback,
    check_quantize,
    expected_fallbacks,
    fallback_for,
    read_types,
)


@pytest.mark.parametrize(
    "columns, wanted, got",
    [
        (1280, "Q4_K", None),  # 5 x 256: fits
        (896, "Q4_K", "Q5_0"),  # 3.5 x 256, 28 x 32
        (896, "Q6_K", "Q8_0"),
        (896, "Q5_K", "Q5_1"),
        (896, "Q3_K", "Q4_0"),
        (1266, "Q4_K", "F16"),  # not even a multiple of 32
        (1266, "Q8_0", "F16"),
        (1280, "Q8_0", None),
        (100, "F16", None),  # a float type never falls back
    ],
)
def test_fallback_rule_follows_llama_cpp(columns, wanted, got):
    found = fallback_for("blk.0.ffn_down.weight", columns, wanted)
    assert (found.got if found else None) == got
    if found:
        assert f"row length {columns}" in found.reason and str(256 if "_K" in wanted else 32) in found.reason
        assert ("nor of 32" in found.reason) == (got == "F16")


def test_expected_fallbacks_checks_rows_against_the_mixs_main_type():
    shapes = {"a.weight": (64, 1280), "b.weight": (64, 896), "c.weight": (64, 1266), "norm.weight": (896,)}
    assert {f.tensor: f.got for f in expected_fallbacks(shapes, "q4_k_m")} == {"b.weight": "Q5_0", "c.weight": "F16"}
    assert {f.tensor: f.got for f in expected_fallbacks(shapes, "q8_0")} == {"c.weight": "F16"}
    assert expected_fallbacks(shapes, "Q6_K")[0] == Fallback("b.weight", 896, "Q6_K", "Q8_0")


@pytest.mark.parametrize("bad", ["q4_k", "f16", "", None, 4])
def test_check_quantize_names_the_allowed_types(bad):
    with pytest.raises(ValueError, match="q4_k_m"):
        check_quantize(bad)
    assert check_quantize("Q4_K_M") == "q4_k_m" and set(QUANT_TYPES) >= {"q4_0", "q5_k_m", "q6_k", "q8_0"}


def write_typed_gguf(path, file_type: int, tensors: dict) -> None:
    """A GGUF header with tensors of given (ggml type, numpy shape), data zero (only the header is read)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_file_type(file_type)
    for name, (kind, shape) in tensors.items():
        ggml = gguf.GGMLQuantizationType[kind]
        if kind in ("F32", "F16"):
            writer.add_tensor(name, np.zeros(shape, dtype=np.float32 if kind == "F32" else np.float16))
            continue
        byte_shape = gguf.quant_shape_to_byte_shape(shape, ggml)
        writer.add_tensor(name, np.zeros(byte_shape, dtype=np.uint8), raw_dtype=ggml)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_read_types_names_every_fallback_and_its_reason(tmp_path):
    path = tmp_path / "mix.gguf"
    write_typed_gguf(
        path,
        QUANT_TYPES["q4_k_m"],
        {
            "blk.0.ffn_down.weight": ("Q4_K", (8, 1280)),  # fits its block
            "blk.0.ffn_up.weight": ("Q5_0", (8, 896)),  # Q4_K -> Q5_0
            "blk.1.ffn_up.weight": ("Q5_0", (8, 896)),
            "blk.0.attn_v.weight": ("Q8_0", (8, 896)),  # Q6_K -> Q8_0
            "blk.1.ffn_down.weight": ("F16", (8, 1266)),  # not a multiple of 32
            "blk.0.attn_norm.weight": ("F32", (896,)),
        },
    )
    report = read_types(path)
    assert report.file_type == "Q4_K_M"
    assert report.types == {"Q4_K": 1, "Q5_0": 2, "Q8_0": 1, "F16": 1, "F32": 1}
    got = {f.tensor: (f.wanted, f.got) for f in report.fallbacks}
    assert got == {
        "blk.0.ffn_up.weight": ("Q4_K", "Q5_0"),
        "blk.1.ffn_up.weight": ("Q4_K", "Q5_0"),
        "blk.0.attn_v.weight": ("Q6_K", "Q8_0"),
        "blk.1.ffn_down.weight": ("Q4_K", "F16"),
    }
    lines = report.lines()
    assert lines[0].startswith("tensor types (Q4_K_M): Q5_0 x2")
    assert "fallback: ffn_up x2: Q4_K -> Q5_0 (row length 896 is not a multiple of 256 (Q4_K blocks))" in lines
    assert any(line.startswith("fallback: ffn_down x1: Q4_K -> F16") and "nor of 32" in line for line in lines)


def test_read_types_of_a_float_file_reports_no_fallbacks(tmp_path):
    path = tmp_path / "f16.gguf"
    write_typed_gguf(path, 1, {"blk.0.ffn_down.weight": ("F16", (8, 1266)), "norm.weight": ("F32", (8,))})
    report = read_types(path)
    assert (
        report.file_type == "F16"
        and report.fallbacks == []
        and report.lines() == ["tensor types (F16): F16 x1, F32 x1"]
    )


def test_export_checks_quantize_before_any_work(tmp_path, monkeypatch):
    ckpt = prune_tiny("llama", "global", tmp_path / "ckpt")
    out = tmp_path / "out" / "m.gguf"
    with pytest.raises(ValueError, match="quantize='q4'.*q4_k_m"):
        export_gguf(ckpt, out, quantize="q4")
    with pytest.raises(ValueError, match="float weights"):
        export_gguf(ckpt, out, "q8_0", quantize="q4_k_m")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if llama-cpp-python were not installed
    with pytest.raises(ImportError, match=r"optimum-rku\[llamacpp\]"):
        export_gguf(ckpt, out, quantize="q4_k_m")
    assert not out.parent.exists()


def test_plan_predicts_the_fallbacks_of_pruned_widths(tmp_path):
    ckpt = prune_tiny("llama", "global", tmp_path / "ckpt")
    plan = plan_gguf_export(ckpt, "f16")
    fallbacks = {f.tensor: f for f in plan.fallbacks("q4_k_m")}
    for i, width in enumerate(w.ffn for w in plan.layers):
        down = fallbacks.get(f"blk.{i}.ffn_down.weight")
        assert (down is None) == (width % 256 == 0)
        if down is not None:
            assert down.columns == width and down.got == ("Q5_0" if width % 32 == 0 else "F16")


def test_real_quantizer_writes_the_predicted_types(tmp_path, caplog):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the [llamacpp] extra) runs llama.cpp's quantizer")
    from optimum_rku.cli import main

    ckpt = prune_tiny("llama", "global", tmp_path / "ckpt", round_to=32)
    out = tmp_path / "m-q4_k_m.gguf"
    assert main(["export", "gguf", "--checkpoint", str(ckpt), "--output", str(out), "--quantize", "q4_k_m"]) == 0
    report = read_types(out)
    assert report.file_type == "Q4_K_M" and "logged fallbacks" not in caplog.text  # llama.cpp's log agrees
    predicted = {f.tensor for f in plan_gguf_export(ckpt, "f16").fallbacks("q4_k_m")}
    assert {f.tensor for f in report.fallbacks} == predicted
    assert all(f.got != "F16" for f in report.fallbacks if "ffn_down" in f.tensor)  # round_to=32: FFN rows quantize
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "m-q4_k_m.gguf"]  # no staged file left
