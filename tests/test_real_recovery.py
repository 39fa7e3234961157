"""benchmarks/real_recovery.py end to end on a tiny chat model (the real model is never needed here)."""

import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import real_recovery  # noqa: E402
import torch  # noqa: E402
from conftest import chat_benchmark_workspace  # noqa: E402

from optimum_rku import RKUConfig  # noqa: E402
from optimum_rku.evaluation.gsm8k_cot import BOXED_INSTRUCTION  # noqa: E402
from optimum_rku.importance import get_importance  # noqa: E402


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny chat model directory and GSM8K-style jsonl files."""
    return chat_benchmark_workspace(tmp_path_factory.mktemp("real_recovery"))


def args_for(workspace, tmp_path, *extra):
    return [
        *("--model", str(workspace / "model"), "--data-dir", str(workspace / "gsm8k")),
        *("--steps", "2", "--batch-size", "4", "--rank", "2", "--max-length", "64", "--train-problems", "16"),
        *("--num-calibration", "2", "--generation-tokens", "4", "--nll-problems", "4", "--threads", "1"),
        *("--output", str(tmp_path / "out" / "rec"), "--cache-dir", str(tmp_path / "cache")),
        *extra,
    ]


def test_rows_before_and_after_with_training_records(workspace, tmp_path):
    torch.set_num_threads(1)
    argv = args_for(workspace, tmp_path, "--baseline", "wanda", "--baseline-min-keep", "0.3")
    assert (
        real_recovery.main([*argv, "--recoveries", "lora", "distill", "--em-problems", "3", "--em-tokens", "8"]) == 0
    )
    result = json.loads((tmp_path / "out" / "rec.json").read_text())
    assert result["complete"] and result["chat_template"] is True and result["sparsity"] == 0.3
    assert (
        result["command"].startswith("python benchmarks/real_recovery.py --model ")
        and "--baseline wanda" in result["command"]
    )
    rows = {(r["method"], r["recovery"]): r for r in result["rows"]}
    assert list(rows) == [
        ("dense", "lora"),
        ("rku", "lora"),
        ("rku", "distill"),
        ("wanda", "lora"),
        ("wanda", "distill"),
    ]
    dense = result["dense"]
    assert (
        rows["dense", "lora"]["before"]["nll"] == dense["nll"] and rows["dense", "lora"]["params"] == dense["params"]
    )
    for method in ("rku", "wanda"):  # both recoveries start from the same pruned model
        lora, distill = rows[method, "lora"], rows[method, "distill"]
        assert lora["before"] == distill["before"] and lora["params"] < dense["params"]
        assert lora["training"]["distillation"] is None and distill["training"]["distillation"] == {
            "teacher": "dense",
            "alpha": 0.5,
            "temperature": 1.0,
        }
        assert distill["after"]["nll"] != lora["after"]["nll"]  # a different loss, a different model
    assert rows["wanda", "lora"]["setting"]["min_keep"] == 0.3 and rows["wanda", "lora"]["label"].startswith("wanda")
    assert rows["rku", "lora"]["setting"]["ranking"] == get_importance("rku").default_ranking  # RKU with its defaults
    for method in ("rku", "wanda"):  # aligned widths for the baseline too, as in the test table's baseline rows
        assert rows[method, "lora"]["setting"]["round_to"] == RKUConfig().round_to == "auto"
    for row in result["rows"]:
        t = row["training"]
        assert t["steps"] == 2 and t["examples_seen"] == 8 and 8 <= t["input_tokens_seen"] <= 8 * 64
        assert t["question_format"] == "chat_template" and t["train_examples"] == 16
        assert 0 < t["train_runtime_s"] <= t["wall_s"] + 0.5 and t["cpu_s"] > 0
        assert math.isfinite(row["after"]["nll"]) and row["after"]["nll"] != row["before"]["nll"]
        assert 0 <= row["after"]["agreement"] <= 1
        assert len(row["after"]["em_correct"]) == 3 and len(row["before"]["em_correct"]) == 3
    table = (tmp_path / "out" / "rec.md").read_text()
    assert table.count("| LoRA on gold solutions |") == 3 and table.count("| LoRA + distillation") == 2
    # exact match before -> after with Wilson intervals, the paired change and the share of dense kept
    assert "| change [95%], p | % of dense | last number before -> after |" in table and table.count("], p=") == 5
    assert (tmp_path / "out" / "rec.png").stat().st_size > 0
    assert not list((tmp_path / "out").glob(".*"))  # no temporary file left behind

    # the calibration set and the scores are cached: a second run of one row reuses them and prunes the same model
    again, cached = tmp_path / "again", sorted((tmp_path / "cache").iterdir())
    assert [f.name.split("_")[0] for f in cached] == ["scores", "scores", "self"]  # rku, wanda, the calibration set
    argv = args_for(workspace, tmp_path, "--rows", "rku", "--recoveries", "lora", "--output", str(again / "rec"))
    assert real_recovery.main(argv) == 0
    row = json.loads((again / "rec.json").read_text())["rows"][0]
    first = rows["rku", "lora"]
    assert all(row["before"][k] == first["before"][k] for k in ("nll", "ppl", "agreement"))
    assert row["after"]["nll"] == first["after"]["nll"]
    assert sorted((tmp_path / "cache").iterdir()) == cached


def test_self_recovery_trains_on_the_dense_models_finished_answers(workspace, tmp_path, monkeypatch):
    """`self` runs LoRA on the dense model's own answers: only those that ended (eos or a stop string) are kept, the
    prompts are the chat-rendered questions of the run's budget, and the answers are cached for the next run."""
    import optimum_rku.data.generation as generation
    import optimum_rku.data.self_generated as self_generated

    torch.set_num_threads(1)
    asked, real = [], generation.generate_completions

    def scripted(answer):
        """The dense answers for recovery come from `answer`; the calibration set is generated for real."""

        def generate(model, tokenizer, prompts, **kwargs):
            if kwargs.get("desc") != "dense answers for recovery":
                return real(model, tokenizer, prompts, **kwargs)
            return answer(prompts, **kwargs)

        return generate

    def answers(prompts, *, max_new_tokens, stop_loops, **kwargs):
        asked.append((list(prompts), max_new_tokens, stop_loops))
        reasons = [("eos", "budget", "stop", "loop")[i % 4] for i in range(len(prompts))]
        texts = [f"Step one. The answer is \\boxed{{{i}}}." for i in range(len(prompts))]
        return generation.Generations(texts, [8] * len(prompts), reasons)

    monkeypatch.setattr(self_generated, "generate_completions", scripted(answers))
    argv = args_for(
        workspace, tmp_path, "--rows", "rku", "--recoveries", "self", "--max-length", "256", "--self-tokens", "32",
        "--micro-batch", "2",
    )  # fmt: skip
    assert real_recovery.main(argv) == 0
    ((prompts, budget, stop_loops),) = asked
    assert len(prompts) == 2 * 4 and budget == 32 and stop_loops  # steps x batch questions, the --self-tokens budget
    assert all(prompt != prompts[0] for prompt in prompts[1:])  # one prompt per question
    assert all(BOXED_INSTRUCTION in prompt for prompt in prompts)  # asked as the measured task (gsm8k_cot_boxed) asks
    (row,) = json.loads((tmp_path / "out" / "rec.json").read_text())["rows"]
    assert row["recovery"] == "self" and row["training"]["train_examples"] == 4  # eos and stop answers only
    assert row["training"]["examples_seen"] == 2 * 4  # micro-batches of 2, accumulated to the step's 4 examples
    assert row["after"]["nll"] != row["before"]["nll"]
    assert "LoRA on the dense model's own answers" in (tmp_path / "out" / "rec.md").read_text()
    assert len(list((tmp_path / "cache").glob("recovery_self_*.json"))) == 1
    assert row["training"]["data"] == "the dense model's own answers (greedy, up to 32 new tokens; 4 of 8 prompts, " \
        "finished answers only)"  # fmt: skip

    def no_generation(prompts, **kwargs):
        raise AssertionError("the cached answers were generated again")

    monkeypatch.setattr(self_generated, "generate_completions", scripted(no_generation))
    assert real_recovery.main([*argv, "--output", str(tmp_path / "again" / "rec")]) == 0
    (again,) = json.loads((tmp_path / "again" / "rec.json").read_text())["rows"]
    assert again["after"]["nll"] == row["after"]["nll"]  # same answers, same recovery

    def unfinished(prompts, **kwargs):
        return generation.Generations(["1 2 3"] * len(prompts), [4] * len(prompts), ["budget"] * len(prompts))

    monkeypatch.setattr(self_generated, "generate_completions", scripted(unfinished))
    with pytest.raises(SystemExit, match="--self-tokens 16: none of the dense model's 8 answers ended within"):
        real_recovery.main([*argv, "--self-tokens", "16"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--baseline", "rku"), "--baseline 'rku' is not a baseline"),
        (("--baseline", "nope"), "--baseline 'nope' is not a baseline"),
        (("--baseline", "flap", "--baseline-ranking", "expected_loss"), "baseline setting: .*expected_loss"),
        (("--steps", "0"), "--steps 0 must be >= 1"),
        (("--sparsity", "1.2"), "--sparsity 1.2"),
        (("--distill-alpha", "2"), "--distill-alpha 2.0"),
        (("--self-tokens", "0"), "--self-tokens 0 must be >= 1"),
        (("--micro-batch", "3"), "--micro-batch 3 must be >= 1 and divide --batch-size 8"),
    ],
)
def test_bad_arguments_fail_before_loading(extra, message, capsys, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("loaded a model before the bad argument was reported")

    monkeypatch.setattr(real_recovery.RKUPruner, "from_pretrained", no_load)
    with pytest.raises(SystemExit) as exit_info:
        real_recovery.main(["--model", "unused", *extra])
    assert exit_info.value.code == 2
    import re

    assert re.search(message, capsys.readouterr().err)


def test_dense_from_reuses_verdicts_and_save_dir_writes_checkpoints(workspace, tmp_path, monkeypatch, capsys):
    """--dense-from takes the dense row's verdicts from a real_model.py result measured the same way (none answered
    again); --save-dir keeps each recovered model as a checkpoint whose eval_results.json and card carry its exact
    match; a second run into the same directory and a result measured differently are refused before any work."""
    torch.set_num_threads(1)
    earlier = {
        "model": str(workspace / "model"),
        "split": "test",
        "em_task": "gsm8k_cot_boxed",
        "em_tokens": 8,
        "stop_loops": False,
        "rows": [{"method": "dense", "em_correct": "101", "em_correct_flexible": "100"}],
    }
    source = tmp_path / "earlier.json"
    source.write_text(json.dumps(earlier))
    calls, real = [], real_recovery.exact_match

    def counted(model, *args, **kwargs):
        calls.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(real_recovery, "exact_match", counted)
    save = tmp_path / "saved"
    argv = args_for(
        workspace, tmp_path, "--rows", "rku", "--recoveries", "lora", "--em-problems", "2", "--em-tokens", "8",
        "--dense-from", str(source), "--save-dir", str(save),
    )  # fmt: skip
    assert real_recovery.main(argv) == 0
    result = json.loads((tmp_path / "out" / "rec.json").read_text())
    dense = result["dense"]
    assert dense["em_correct"] == "10" and dense["exact_match"] == 0.5 and dense["em_from"] == "earlier.json"
    assert len(calls) == 2  # the pruned model before and after recovery; the dense model answered nothing
    (row,) = result["rows"]
    assert "verdicts come from `earlier.json`" in (tmp_path / "out" / "rec.md").read_text()
    checkpoint = save / "rku-30-lora"
    assert (checkpoint / "config.json").is_file() and (checkpoint / "model.safetensors").is_file()
    record = json.loads((checkpoint / "eval_results.json").read_text())
    assert record["num_samples"] == 2 and record["split"] == "test" and record["benchmark"] == "gsm8k"
    assert record[next(k for k in record if k.startswith("exact_match"))] == row["after"]["exact_match"]
    card = (checkpoint / "README.md").read_text()
    assert "| this model (pruned + LoRA recovery, merged) | GSM8K, 2 problems |" in card and "## Recovery" in card
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # the checkpoint exists: refused, never overwritten
        real_recovery.main([*argv, "--output", str(tmp_path / "again" / "rec")])
    assert exit_info.value.code == 2 and "rku-30-lora exists" in capsys.readouterr().err
    for key, value, message in (
        ("em_tokens", 16, "has em_tokens=16, this run 8"),
        ("rows", [{"method": "dense", "em_correct": "1", "em_correct_flexible": "1"}], "has 1 exact-match verdicts"),
    ):
        source.write_text(json.dumps({**earlier, key: value}))
        with pytest.raises(SystemExit) as exit_info:
            real_recovery.main([*argv, "--save-dir", str(tmp_path / "other")])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_recovery_targets_judge_default_rku_rows_only():
    """After recovery, RKU with its defaults is judged against dense at 30% (>= 85%) and 40% (>= 70%); a row pruned
    before round_to="auto" (no round_to recorded) and a baseline row are not judged."""

    def row(method, recovery, em, setting):
        return {"method": method, "recovery": recovery, "setting": setting, "after": {"exact_match": em}}

    default = {"round_to": RKUConfig().round_to}
    result = {
        "sparsity": 0.3,
        "dense": {"exact_match": 0.4},
        "rows": [row("rku", "self", 0.36, default), row("rku", "lora", 0.2, default), row("rku", "self", 0.4, {}),
                 row("flap", "self", 0.4, default)],
    }  # fmt: skip
    checks = real_recovery.recovery_targets(result)
    assert [(c["recovery"], round(c["kept"], 2), c["met"]) for c in checks] == [
        ("self", 0.9, True),
        ("lora", 0.5, False),
    ]
    assert real_recovery.recovery_targets(dict(result, sparsity=0.2)) == []  # no target at 20%
    assert real_recovery.recovery_targets(dict(result, sparsity=0.4))[0]["target"] == 0.7
