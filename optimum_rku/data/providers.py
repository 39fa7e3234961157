"""Default data, behind one seam: what a model is calibrated, recovered and evaluated on when the user passes nothing.

The pipeline asks a `DataProvider` "what are this model's default calibration texts / recovery pairs / evaluation
problems, and how do cards and commands name its base model?". `provider_for(name, metadata)` picks the provider
that claims a model (by the name it was loaded from, or the metadata of a checkpoint pruned from it); every other
model gets `DataProvider`, the GSM8K defaults. The bundled testbed is one provider (`optimum_rku.testbed.provider`),
listed in `PROVIDERS`; nothing outside this seam asks whether a model is the testbed.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optimum_rku.data.gsm8k import GSM8K_CONFIG, GSM8K_HUB_ID, GSM8K_SPLITS
from optimum_rku.data.prompts import qa_pair

#: providers other than the default, as "module:Class" (imported when first asked); adding one is a line here
PROVIDERS: tuple[str, ...] = ("optimum_rku.testbed.provider:TestbedData",)
#: the key of `rku_config.json` that records which provider a checkpoint's base model belongs to
METADATA_KEY = "data"
#: the model `RKUPruner.from_pretrained()` and the commands' `--model` load when given none: the bundled testbed
DEFAULT_MODEL = "testbed"
#: lays out one worked problem (question, answer) as a (prompt, response) training pair
QAFormatter = Callable[[Any, Any], tuple[str, str]]


@dataclass(frozen=True)
class EvaluationProblems:
    """What `eval` runs on by default: a dataset the task loads, how to describe it, and its default shots / limit."""

    dataset: Any
    description: str
    benchmark: str
    #: few-shot examples per prompt (None: the task's default)
    num_fewshot: int | None
    limit: int | None = None


class DataProvider:
    """The GSM8K defaults (Hub `openai/gsm8k`); subclasses answer for models that have data of their own."""

    name = "gsm8k"
    #: the model name that loads the provider's own model (None: the provider has no model)
    model_alias: str | None = None
    #: how cards name a base model of this provider (None: by its Hub id or directory name)
    title: str | None = None
    #: how cards describe such a base model in prose
    origin: str | None = None
    #: the Hub dataset of the provider's own problems (listed in card metadata), or None
    hub_dataset: str | None = GSM8K_HUB_ID
    #: how cards name the calibration texts of a checkpoint that recorded none (None: not named)
    calibration_label: str | None = None
    #: how `recovery_pairs` names its data (what a recovered checkpoint records as its dataset)
    recovery_label: str = GSM8K_HUB_ID
    #: how cards name the provider's own evaluation problems, and their model-index fields
    problems_label = "GSM8K"
    evaluation_card: Mapping[str, Any] = {
        "dataset_type": GSM8K_HUB_ID,
        "dataset_name": "GSM8K",
        "dataset_config": GSM8K_CONFIG,
    }

    def claims(self, name: Any, metadata: Mapping[str, Any] | None) -> bool:
        """Whether this provider answers for the model loaded as `name` (or the checkpoint with `metadata`)."""
        return True

    def model_path(self) -> Path | None:
        """The directory of the provider's own model (None: it has none)."""
        return None

    def calibration_texts(self, num_samples: int, seed: int) -> tuple[list[str], dict[str, Any]]:
        """Label-free calibration texts (GSM8K train questions) and a summary of where they came from."""
        from optimum_rku.data.calibration import load_texts

        return load_texts(GSM8K_HUB_ID, num_samples=num_samples, dataset_config_name=GSM8K_CONFIG, seed=seed)

    def recovery_pairs(
        self, num_samples: int | None, seed: int, qa: QAFormatter = qa_pair
    ) -> tuple[list[tuple[str | None, str]], dict]:
        """(prompt, response) pairs for LoRA recovery: GSM8K train questions with their worked answers, each laid out
        by `qa` (the recovery data passes one that asks the model the way it is asked, e.g. its chat template)."""
        import datasets

        try:
            rows = datasets.load_dataset(GSM8K_HUB_ID, GSM8K_CONFIG, split="train")
        except Exception as err:  # network, auth, missing dataset: one actionable message
            raise RuntimeError(
                f"Could not load the default recovery data {GSM8K_HUB_ID!r} ({type(err).__name__}: {err}). "
                "Offline? Pass local files, e.g. data_files='gsm8k/train.jsonl', or train_dataset=[...]."
            ) from None
        rows = rows.shuffle(seed=seed)
        if num_samples is not None:
            rows = rows.select(range(min(num_samples, len(rows))))
        return [qa(r["question"], r["answer"]) for r in rows], {"dataset": self.recovery_label, "seed": seed}

    def evaluation_problems(self, split: str, limit: int | None, seed: int) -> EvaluationProblems:
        """GSM8K's own split from the Hub (the task's shots: 5, as lm-evaluation-harness)."""
        if split not in GSM8K_SPLITS:
            raise ValueError(f"split {split!r} is not a GSM8K split; allowed: {', '.join(GSM8K_SPLITS)}.")
        return EvaluationProblems(GSM8K_HUB_ID, GSM8K_HUB_ID, self.name, None, limit)

    @property
    def evaluation_splits(self) -> tuple[str, ...]:
        """The splits `evaluation_problems` accepts."""
        return GSM8K_SPLITS


_DEFAULT = DataProvider()
_LOADED: dict[str, DataProvider] = {}


def providers() -> list[DataProvider]:
    """Every registered provider (imported on first use), the GSM8K default last."""
    for entry in PROVIDERS:
        if entry not in _LOADED:
            module, _, name = entry.partition(":")
            _LOADED[entry] = getattr(importlib.import_module(module), name)()
    return [_LOADED[entry] for entry in PROVIDERS] + [_DEFAULT]


def get_provider(name: str | DataProvider | None) -> DataProvider:
    """A provider by name ("gsm8k", "testbed", ...), or the one given; None is the GSM8K default."""
    if isinstance(name, DataProvider):
        return name
    if name is None:
        return _DEFAULT
    for provider in providers():
        if provider.name == name:
            return provider
    allowed = ", ".join(repr(p.name) for p in providers())
    raise ValueError(f"Unknown data provider {name!r}; allowed: {allowed}.")


def provider_for(name: Any = None, metadata: Mapping[str, Any] | None = None) -> DataProvider:
    """The provider of a model loaded as `name` (a name, path or None) or of a checkpoint with this `rku_config.json`."""
    if metadata and metadata.get(METADATA_KEY):
        return get_provider(metadata[METADATA_KEY])
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    return next(p for p in providers() if p.claims(name, metadata))


def base_model_of(metadata: Mapping[str, Any]) -> str | None:
    """The name that reloads the dense model a checkpoint was pruned from (a provider's alias, else `base_model`)."""
    return provider_for(metadata=metadata).model_alias or metadata.get("base_model") or None


def is_model_alias(name: Any) -> bool:
    """Whether `name` is a provider's model alias (e.g. "testbed"), not a Hub id or path."""
    return isinstance(name, str) and any(p.model_alias == name for p in providers())
