"""Reasoning testbed: a tiny Llama trained in-project on GSM8K-format arithmetic problems for offline pruning tests."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .problems import extract_answer, format_example, format_prompt, make_problems

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TESTBED_PATH = Path(__file__).resolve().parent / "model"
#: the name that stands for the bundled testbed wherever a model name is expected (its data provider's alias)
TESTBED = "testbed"

__all__ = [
    "TESTBED",
    "TESTBED_PATH",
    "build_tokenizer",
    "extract_answer",
    "format_example",
    "format_prompt",
    "load",
    "make_problems",
    "quick_accuracy",
    "train_testbed",
]


def load(torch_dtype: torch.dtype | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the committed testbed model (eval mode, float32 unless `torch_dtype`) and its tokenizer, offline."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = torch.float32 if torch_dtype is None else torch_dtype
    model = AutoModelForCausalLM.from_pretrained(TESTBED_PATH, dtype=torch_dtype)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(TESTBED_PATH)
    return model, tokenizer


def build_tokenizer(*args: Any, **kwargs: Any):
    """Build the testbed tokenizer (lazy wrapper around :func:`optimum_rku.testbed.tokenizer.build_tokenizer`)."""
    from .tokenizer import build_tokenizer as _build

    return _build(*args, **kwargs)


def train_testbed(*args: Any, **kwargs: Any) -> dict:
    """Train the testbed model (lazy wrapper around :func:`optimum_rku.testbed.train.train_testbed`)."""
    from .train import train_testbed as _train

    return _train(*args, **kwargs)


def quick_accuracy(*args: Any, **kwargs: Any) -> float:
    """Greedy 0-shot exact-match accuracy (lazy wrapper around :func:`optimum_rku.testbed.train.quick_accuracy`)."""
    from .train import quick_accuracy as _qa

    return _qa(*args, **kwargs)
