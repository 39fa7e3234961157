"""`evaluate` metric: GSM8K exact match with lm-evaluation-harness strict-match / flexible-extract answer filters."""

from __future__ import annotations

import datasets
import evaluate

# The extraction is the library's own: this file ships inside optimum-rku, so wherever `evaluate.load` reads it from,
# optimum_rku is importable (tests check that the metric and the evaluator agree).
from optimum_rku.evaluation.gsm8k import extract_answer, normalize_answer

_MODES = ("both", "strict", "flexible")

_DESCRIPTION = """\
GSM8K exact match as in the lm-evaluation-harness `gsm8k` task. Predictions are raw model completions; references are
gold GSM8K answers (the full worked solution ending in `#### N`, or just `N`). "strict" takes the first `#### N` in the
completion, "flexible" takes the last number. Both sides drop commas, `$` and a trailing period before exact matching.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (list of str): model completions.
    references (list of str): gold GSM8K answers (`... #### 42` or `42`).
    mode (str): "both" (default), "strict" or "flexible".
Returns:
    dict with "exact_match_strict" and/or "exact_match_flexible", each the fraction of exact matches in [0, 1].
Examples:
    >>> metric = evaluate.load("path/to/gsm8k_exact_match")
    >>> metric.compute(predictions=["6 * 7 = 42\\n#### 42"], references=["... #### 42"])
    {'exact_match_strict': 1.0, 'exact_match_flexible': 1.0}
"""

_CITATION = """\
@article{cobbe2021gsm8k,
  title={Training Verifiers to Solve Math Word Problems},
  author={Cobbe, Karl and Kosaraju, Vineet and Bavarian, Mohammad and others},
  journal={arXiv preprint arXiv:2110.14168},
  year={2021}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Gsm8kExactMatch(evaluate.Metric):
    """GSM8K strict/flexible exact match, loadable offline with ``evaluate.load(<path>)``."""

    def _info(self) -> evaluate.MetricInfo:
        """Describe inputs (string completions and string gold answers) and provenance."""
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            reference_urls=["https://github.com/EleutherAI/lm-evaluation-harness/tree/main/lm_eval/tasks/gsm8k"],
        )

    def _compute(self, predictions: list[str], references: list[str], mode: str = "both") -> dict[str, float]:
        """Return the fraction of completions whose extracted answer equals the gold number, per requested mode."""
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        modes = ("strict", "flexible") if mode == "both" else (mode,)
        targets = [normalize_answer(reference) for reference in references]
        results: dict[str, float] = {}
        for name in modes:
            hits = sum(extract_answer(prediction, name) == target for prediction, target in zip(predictions, targets))
            results[f"exact_match_{name}"] = hits / len(targets) if targets else 0.0
        return results
