"""The llama.cpp benchmarks' variants (sources, rounding, weight types) and tables; the timed run itself needs
llama-cpp-python and skips without it."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from common import Variant, checkpoint, gguf_file, parse_variant  # noqa: E402

gguf = pytest.importorskip("gguf", reason="the gguf package writes and reads GGUF files")


@pytest.mark.parametrize(
    "text, variant, name",
    [
        ("qwen:dense", Variant("qwen"), "qwen-dense"),
        ("smollm2:global:0.4", Variant("smollm2", "global", 0.4), "smollm2-global-0.4"),
        ("testbed:uniform:0.4:bias", Variant("testbed", "uniform", 0.4, True), "testbed-uniform-0.4-bias"),
        ("qwen:global:0.4:round256", Variant("qwen", "global", 0.4, round_to=256), "qwen-global-0.4-round256"),
        ("qwen:uniform:0.2:roundauto", Variant("qwen", "uniform", 0.2, round_to="auto"), "qwen-uniform-0.2-roundauto"),
        (
            "testbed:global:0.2:bias:round32",
            Variant("testbed", "global", 0.2, True, 32),
            "testbed-global-0.2-bias-round32",
        ),
    ],
)
def test_parse_variant(text, variant, name):
    assert parse_variant(text) == variant and variant.name == name


@pytest.mark.parametrize(
    "text",
    [
        "llama:dense",
        "qwen",
        "qwen:global",
        "qwen:local:0.4",
        "qwen:global:x",
        "qwen:global:0.4:round0",
        "qwen:global:0.4:round32:round64",
        "qwen:global:0.4:fast",
    ],
)
def test_parse_variant_names_the_forms(text):
    with pytest.raises(ValueError, match="SOURCE:dense or SOURCE:global"):
        parse_variant(text)


def test_rounded_testbed_variant_keeps_widths_on_the_block(tmp_path):
    from optimum_rku.export.gguf import plan_gguf_export

    variant = parse_variant("testbed:global:0.4:round32")
    ckpt, file = gguf_file(variant, tmp_path, "f16")
    assert ckpt == checkpoint(variant, tmp_path) == tmp_path / "testbed-global-0.4-round32"
    assert file == tmp_path / "testbed-global-0.4-round32.f16.gguf" and file.is_file()
    widths = [w.ffn for w in plan_gguf_export(ckpt, "f16").layers]
    assert all(w % 32 == 0 for w in widths) and len(set(widths)) > 1


def test_speed_tables_render():
    from llamacpp_speed import agreement_table, table

    kv = {"total_mib": 2.0, "k_mib": 1.0, "v_mib": 1.0, "type": "f16"}
    row = dict(
        variant="qwen-dense", type="q4_k_m", flash_attn="off", file_mib=100.0, prefill_tps=50.0, decode_tps=10.0
    )
    row |= dict(
        kv_cache=kv, fallbacks=3, f16_fallbacks=0, file_ratio=0.5, prefill_ratio=1.5, decode_ratio=1.2, kv_ratio=1.0
    )
    text = table([row])
    assert (
        "| qwen-dense | q4_k_m | off | 100.0 | 0.50x | 50 | 1.50x | 10.0 | 1.20x | 2.00x |" in text
        and "| 3 (0) |" in text
    )
    assert "| qwen-dense | q8_0 | 9/10 | 0.950 |" in agreement_table(
        [{"variant": "qwen-dense", "type": "q8_0", "questions": 10, "identical": 9, "top1": 0.95}]
    )


def test_speed_benchmark_runs_on_the_testbed(tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the [llamacpp] extra) runs the timed benchmark")
    import json

    from llamacpp_speed import main

    out = tmp_path / "speed.json"
    argv = ["--variants", "testbed:dense", "testbed:global:0.4:round32", "--types", "f16", "q8_0", "--rounds", "1"]
    argv += ["--prompt-tokens", "32", "--decode-tokens", "4", "--flash-attn", "on", "--threads", "1"]
    argv += ["--work-dir", str(tmp_path / "work"), "--output", str(out)]
    assert main(argv) == 0
    rows = json.loads(out.read_text())["results"]
    assert [(r["variant"], r["type"]) for r in rows] == [
        ("testbed-dense", "f16"),
        ("testbed-global-0.4-round32", "f16"),
        ("testbed-dense", "q8_0"),
        ("testbed-global-0.4-round32", "q8_0"),
    ]
    assert rows[2]["file_ratio"] == 1.0 and rows[3]["file_ratio"] < 1.0 and rows[3]["f16_fallbacks"] == 0


def test_write_results_keeps_machine_paths_out_of_the_record(tmp_path):
    import argparse
    import json

    from common import write_results

    argv = ["--variants", "qwen:dense", "--work-dir", "/somewhere/runs", "--gsm8k-dir=x", "--output", "o.json"]
    args = argparse.Namespace(variants=["qwen:dense"], work_dir="/somewhere/runs", gsm8k_dir="x", output="o.json")
    write_results(tmp_path / "o.json", "llamacpp_speed.py", argv, args, [{"a": 1}], {"agreement": []})
    record = json.loads((tmp_path / "o.json").read_text())
    assert "/somewhere" not in json.dumps(record) and record["agreement"] == [] and record["results"] == [{"a": 1}]
    assert record["command"] == "python benchmarks/llamacpp_speed.py --variants qwen:dense --output o.json"
