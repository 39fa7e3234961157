"""The main job and the testbed's accuracy through the evaluator (the bundled checkpoint must be present)."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from optimum_rku.testbed import TESTBED_PATH  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (TESTBED_PATH / "model.safetensors").exists(), reason="bundled testbed checkpoint missing"
)


def test_testbed_scores_at_least_85_percent_through_evaluator():
    from optimum_rku.evaluation import evaluate_gsm8k
    from optimum_rku.testbed import load, make_problems

    model, tokenizer = load()
    problems = make_problems(100, seed=0, split="test")
    result = evaluate_gsm8k(
        model, tokenizer, dataset=problems, num_fewshot=0, batch_size=50, max_new_tokens=192, progress=False
    )
    assert result.num_samples == 100
    assert result.exact_match_strict >= 0.85


def test_demo_writes_table_json_and_chart(tmp_path, capsys):
    from optimum_rku.cli.demo import main

    code = main(
        [
            "--limit",
            "6",
            "--methods",
            "rku",
            "magnitude",
            "--output-dir",
            str(tmp_path),
            "--quiet",
            "--calibration-samples",
            "8",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| method | sparsity | params | accuracy | ms/token |" in out
    results = json.loads((tmp_path / "demo_results.json").read_text())
    methods = [r["method"] for r in results["rows"]]
    assert methods == ["dense", "rku", "magnitude"]
    dense, rku, magnitude = results["rows"]
    for row in (rku, magnitude):
        assert abs(row["achieved_sparsity"] - 0.4) <= 0.01
        assert row["params"] < dense["params"]
        assert 0.0 <= row["accuracy"] <= 1.0 and row["ms_per_token"] > 0
    assert (tmp_path / "demo_accuracy.png").stat().st_size > 1000


def test_demo_rejects_bad_arguments(tmp_path):
    from optimum_rku.cli.demo import main

    with pytest.raises(ValueError, match="sparsity"):
        main(["--sparsity", "1.5", "--output-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="Unknown method"):
        main(["--methods", "nope", "--output-dir", str(tmp_path)])
    assert not (tmp_path / "demo_results.json").exists()


def test_default_pruner_is_the_testbed_with_testbed_calibration():
    from optimum_rku import RKUConfig, RKUPruner

    pruner = RKUPruner.from_pretrained()
    assert pruner.data.name == "testbed"
    pruner.prune(RKUConfig(sparsity=0.2, num_calibration_samples=4), progress=False)
    assert "testbed" in pruner.scores.calibration["dataset"]
    assert pruner.scores.calibration["num_samples"] == 4
