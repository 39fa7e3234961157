"""The testbed as a data provider: its own problems are its calibration texts, recovery pairs and evaluation set."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from optimum_rku import testbed
from optimum_rku.data.prompts import qa_pair
from optimum_rku.data.providers import DataProvider, EvaluationProblems, QAFormatter
from optimum_rku.testbed.problems import SPLITS, make_problems

#: recovery pairs drawn when no number is asked for
DEFAULT_RECOVERY_PROBLEMS = 2000
#: evaluation problems drawn when no limit is asked for
DEFAULT_EVALUATION_PROBLEMS = 100


class TestbedData(DataProvider):
    """The bundled reasoning testbed and checkpoints pruned from it: offline, seeded, GSM8K-format problems."""

    name = testbed.TESTBED
    model_alias = testbed.TESTBED
    title = "optimum-rku reasoning testbed"
    origin = "the optimum-rku reasoning testbed (a small Llama bundled with optimum-rku)"
    hub_dataset = None
    calibration_label = "optimum-rku testbed (train split, questions only)"
    recovery_label = "optimum-rku testbed (train split, question + worked answer)"
    problems_label = "testbed (GSM8K format)"
    evaluation_card = {
        "dataset_type": "optimum-rku-testbed",
        "dataset_name": "optimum-rku reasoning testbed (GSM8K-format arithmetic)",
        "dataset_config": None,
    }

    def claims(self, name: Any, metadata: Mapping[str, Any] | None) -> bool:
        if metadata and metadata.get("is_testbed"):  # checkpoints written before the "data" key
            return True
        if name == testbed.TESTBED:
            return True
        if not isinstance(name, str) or not name:
            return False
        try:
            return Path(name).expanduser().resolve() == Path(testbed.TESTBED_PATH).resolve()
        except OSError:
            return False

    def model_path(self) -> Path:
        path = Path(testbed.TESTBED_PATH)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                "The bundled testbed model is missing; train it with `optimum-rku testbed train` or pass a model."
            )
        return path

    def calibration_texts(self, num_samples: int, seed: int) -> tuple[list[str], dict[str, Any]]:
        problems = make_problems(num_samples, seed=seed, split="train")
        return [p["question"] for p in problems], {"dataset": self.calibration_label, "seed": seed}

    def recovery_pairs(
        self, num_samples: int | None, seed: int, qa: QAFormatter = qa_pair
    ) -> tuple[list[tuple[str | None, str]], dict]:
        problems = make_problems(num_samples or DEFAULT_RECOVERY_PROBLEMS, seed=seed, split="train")
        pairs = [qa(p["question"], p["answer"]) for p in problems]
        return pairs, {"dataset": self.recovery_label, "seed": seed}

    def evaluation_problems(self, split: str, limit: int | None, seed: int) -> EvaluationProblems:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not a testbed split; allowed: {', '.join(SPLITS)}.")
        limit = limit or DEFAULT_EVALUATION_PROBLEMS
        return EvaluationProblems(
            make_problems(limit, seed=seed, split=split),
            f"optimum-rku testbed ({split}, seed {seed})",
            self.name,
            0,
            limit,
        )

    @property
    def evaluation_splits(self) -> tuple[str, ...]:
        return SPLITS
