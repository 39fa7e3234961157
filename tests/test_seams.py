"""The two seams: default data comes from a data provider (the testbed is one), and evaluation is a task protocol
(GSM8K is one task): a new provider or task plugs in without touching the pipeline, the CLI or the cards."""

import ast
import json
from pathlib import Path

import pytest
from conftest import make_tokenizer, tiny_model

import optimum_rku.data.providers as providers_module
import optimum_rku.evaluation.registry as task_registry
from optimum_rku import RKUConfig, RKUPruner
from optimum_rku.data.providers import DataProvider, EvaluationProblems, base_model_of, get_provider, provider_for
from optimum_rku.evaluation.runner import evaluate
from optimum_rku.evaluation.task import EvaluationTask, Metric
from optimum_rku.hub.card import build_model_card
from optimum_rku.io.metadata import result_dict
from optimum_rku.recovery import prepare_recovery_dataset

PACKAGE = Path(__file__).resolve().parents[1] / "optimum_rku"


class LettersData(DataProvider):
    """A provider of its own: short letter strings as calibration texts, recovery pairs and evaluation problems."""

    name = "letters"
    model_alias = "letters-model"
    title = "the letters model"
    origin = "the letters model (a test provider)"
    hub_dataset = None
    problems_label = "letters"
    evaluation_card = {"dataset_type": "letters", "dataset_name": "Letters", "dataset_config": None}

    def __init__(self):
        self.asked = []

    def claims(self, name, metadata):
        return name == self.model_alias

    def calibration_texts(self, num_samples, seed):
        self.asked.append("calibration")
        return ["abc def"] * num_samples, {"dataset": "letters (calibration)", "seed": seed}

    def recovery_pairs(self, num_samples, seed, qa=None):  # pairs of its own: no (question, answer) to lay out
        self.asked.append("recovery")
        return [("Q: ab", " cd")] * (num_samples or 4), {"dataset": "letters (recovery)", "seed": seed}

    def evaluation_problems(self, split, limit, seed):
        rows = [{"question": "ab", "answer": "ab"}] * (limit or 3)
        return EvaluationProblems(rows, "letters problems", self.name, 0, limit)


class LengthTask(EvaluationTask):
    """A task of its own: the model's completion is scored by whether it is non-empty and how long it is."""

    name = "length"
    title = "Length"
    metrics = (Metric("nonempty_rate", "nonempty", "non-empty completion", type="accuracy"),)
    max_new_tokens = 3
    card_notes = "Completions of at most 3 tokens; a non-empty one counts."

    def prompt(self, row, shots, tokenizer, chat):
        return row["question"]

    def score(self, row, completion):
        return {"target": row["answer"], "nonempty": bool(completion.strip())}


@pytest.fixture
def letters(monkeypatch):
    provider = LettersData()
    monkeypatch.setattr(providers_module, "PROVIDERS", (*providers_module.PROVIDERS, "letters:provider"))
    monkeypatch.setitem(providers_module._LOADED, "letters:provider", provider)
    return provider


def test_pipeline_asks_the_provider_for_default_data(letters):
    assert provider_for("letters-model") is letters and get_provider("letters") is letters
    pruner = RKUPruner(tiny_model("llama"), make_tokenizer(), data="letters")
    pruner.prune(RKUConfig(sparsity=0.2, calibration="dataset", num_calibration_samples=3), progress=False)
    assert letters.asked == ["calibration"] and pruner.scores.calibration["dataset"] == "letters (calibration)"
    meta = pruner.metadata()
    assert meta["data"] == "letters" and provider_for(metadata=meta) is letters
    ds, summary = prepare_recovery_dataset(make_tokenizer(), data=letters, num_samples=2)
    assert letters.asked[-1] == "recovery" and len(ds) == 2 and summary["dataset"] == "letters (recovery)"
    card = build_model_card({**meta, "base_model": "/somewhere/local"}).content
    assert "the letters model (a test provider)" in card and "--model letters-model" in card
    assert base_model_of(meta) == "letters-model"


def test_checkpoints_from_before_the_data_key_keep_their_provider():
    assert provider_for(metadata={"is_testbed": True}).name == "testbed"
    assert base_model_of({"is_testbed": True, "base_model": "/old/machine/testbed/model"}) == "testbed"
    assert provider_for(metadata={"base_model": "org/model"}).name == "gsm8k"
    assert base_model_of({"base_model": "org/model"}) == "org/model"
    with pytest.raises(ValueError, match="Unknown data provider 'nope'; allowed: 'testbed', 'gsm8k'"):
        get_provider("nope")


def test_nothing_outside_the_seam_asks_whether_a_model_is_the_testbed():
    """Only the testbed's own provider (and its package, and the testbed demo) know the testbed."""
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("testbed/") or rel in ("data/providers.py", "cli/demo.py"):
            continue
        tree = ast.parse(path.read_text())
        imported = [
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("optimum_rku.testbed")
        ]
        assert not imported, f"{rel} imports {imported}"
        assert "is_testbed" not in path.read_text(), rel


def test_a_new_task_is_a_class_and_a_registry_line(monkeypatch, tmp_path):
    monkeypatch.setitem(task_registry.TASKS, "length", "test_seams:LengthTask")
    rows = [{"question": "abc", "answer": "x"}, {"question": "de", "answer": "y"}]
    model, tokenizer = tiny_model("llama"), make_tokenizer()
    result = evaluate(model, tokenizer, "length", rows, progress=False, output_path=tmp_path / "out.jsonl")
    assert result.task == "length" and 0.0 <= result.nonempty_rate <= 1.0
    assert result.max_new_tokens == 3 and all(s["generated_tokens"] <= 3 for s in result.samples)
    record = result_dict({**result.to_dict(), "benchmark": "custom"})
    assert json.loads((tmp_path / "out_summary.json").read_text())["nonempty_rate"] == result.nonempty_rate
    with pytest.raises(ValueError, match=r"missing \['nonempty_rate'\]"):
        result_dict({"task": "length", "num_samples": 1, "num_fewshot": 0, "split": "test"})
    pruner = RKUPruner(tiny_model("llama"), make_tokenizer())
    pruner.prune(RKUConfig(sparsity=0.2, importance="magnitude"), progress=False)
    card = build_model_card(pruner.metadata(), record)
    assert "non-empty completion" in card.content and "Completions of at most 3 tokens" in card.content
    assert "accuracy" in card.content and "Length-format problems" in card.content


def test_evaluation_and_self_generated_calibration_share_one_generation_loop(monkeypatch):
    import optimum_rku.data.generation as generation

    calls = []
    original = generation.generate_completions

    def spy(*args, **kwargs):
        calls.append(kwargs.get("desc"))
        return original(*args, **kwargs)

    monkeypatch.setattr(generation, "generate_completions", spy)
    import optimum_rku.data.self_generated as self_generated
    import optimum_rku.evaluation.runner as runner

    monkeypatch.setattr(self_generated, "generate_completions", spy)
    monkeypatch.setattr(runner, "generate_completions", spy)
    model, tokenizer = tiny_model("llama"), make_tokenizer()
    config = RKUConfig(generation_max_new_tokens=2, num_calibration_samples=2, sparsity=0.1)
    RKUPruner(model, tokenizer).compute_scores(config, ["1+1?", "2+2?"], progress=False)
    evaluate(model, tokenizer, "gsm8k", [{"question": "1+1?", "answer": "#### 2"}], max_new_tokens=2, progress=False)
    assert calls == ["self-generating calibration", "GSM8K"]
