"""Reasoning testbed: a tiny Llama trained in-project on GSM8K-format arithmetic problems for offline pruning tests."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .problems import extract_answer, format_example, format_prompt, make_problems
from .tokenizer import build_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TESTBED_PATH = Path(__file__).resolve().parent / "model"
#: the name that stands for the bundled testbed wherever a model name is expected
TESTBED = "testbed"

__all__ = [
    "TESTBED",
    "TESTBED_PATH",
    "build_tokenizer",
    "extract_answer",
    "format_example",
    "format_prompt",
    "is_testbed_name",
    "load",
    "make_problems",
    "quick_accuracy",
    "train_testbed",
]


def load(torch_dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the committed testbed model (eval mode) and its tokenizer from ``TESTBED_PATH``, offline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(TESTBED_PATH, dtype=torch_dtype)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(TESTBED_PATH)
    return model, tokenizer


def is_testbed_name(name: Any) -> bool:
    """Whether a model name means the bundled testbed: None, "testbed", or the path of its directory."""
    if name is None or name == TESTBED:
        return True
    try:
        return Path(str(name)).expanduser().resolve() == TESTBED_PATH
    except OSError:
        return False


def train_testbed(*args: Any, **kwargs: Any) -> dict:
    """Train the testbed model (lazy wrapper around :func:`optimum_rku.testbed.train.train_testbed`)."""
    from .train import train_testbed as _train

    return _train(*args, **kwargs)


def quick_accuracy(*args: Any, **kwargs: Any) -> float:
    """Greedy 0-shot exact-match accuracy (lazy wrapper around :func:`optimum_rku.testbed.train.quick_accuracy`)."""
    from .train import quick_accuracy as _qa

    return _qa(*args, **kwargs)
