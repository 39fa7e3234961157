"""Degenerate calibration: tiny or over-long texts, no pad token, a chat template that fails, empty answers."""

import logging

import datasets
import pytest
import torch
from conftest import make_tokenizer, tiny_model

from optimum_rku import RKUConfig, RKUPruner
from optimum_rku.data import self_generated
from optimum_rku.data.calibration import resolve_calibration
from optimum_rku.data.providers import get_provider

DATASET = RKUConfig(sparsity=0.3, calibration="dataset")
SELF = RKUConfig(sparsity=0.3, generation_max_new_tokens=6)
QUESTIONS = ["What is 2 + 3?", "Tom has 4 pens and buys 3 more. How many?", "Hi"]


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_texts_shorter_than_two_tokens_are_dropped_with_a_warning(caplog):
    pruner = RKUPruner(tiny_model("llama"), make_tokenizer())  # character tokenizer without BOS: "a" is one token
    with caplog.at_level(logging.WARNING, logger="optimum_rku"):
        pruner.compute_scores(DATASET, calibration_dataset=["a", "What is 2 + 3?", "b"], progress=False)
    assert pruner.scores.calibration["num_samples"] == 1
    assert any("Dropped 2 of 3 calibration texts shorter than 2 tokens (rows [0, 2])" in m for m in _warnings(caplog))
    assert all(bool((s > 0).any()) for s in pruner.scores.mlp)  # scored on the one real text


def test_only_one_token_texts_is_an_empty_calibration_set():
    """Before: all-zero gradients, so every score was 0 and the ranking meaningless, silently."""
    pruner = RKUPruner(tiny_model("llama"), make_tokenizer())
    with pytest.raises(ValueError, match="all 3 calibration texts are shorter than 2 tokens"):
        pruner.prune(DATASET, calibration_dataset=["a", "b", "c"], progress=False)
    rows = datasets.Dataset.from_dict({"input_ids": [[5], [], [7]]})
    with pytest.raises(ValueError, match="all 3 calibration texts are shorter than 2 tokens"):
        pruner.prune(DATASET, calibration_dataset=rows, progress=False)
    assert pruner.plan is None


def test_texts_longer_than_the_context_are_cut_at_it(caplog):
    pruner = RKUPruner(tiny_model("llama"), make_tokenizer())  # max_position_embeddings=128
    config = RKUConfig(sparsity=0.3, calibration="dataset", calibration_seq_len=1000)
    with caplog.at_level(logging.WARNING, logger="optimum_rku"):
        pruner.compute_scores(config, calibration_dataset=["x" * 500, "short text"], progress=False)
    assert pruner.scores.calibration["num_tokens"] == 128 + len("short text")
    assert any("cut at 128 tokens, the model's context" in m for m in _warnings(caplog))
    caplog.clear()
    rows = datasets.Dataset.from_dict({"input_ids": [list(range(4, 90)) * 4, [5, 6, 7]]})
    with caplog.at_level(logging.WARNING, logger="optimum_rku"):
        pruner.compute_scores(DATASET, calibration_dataset=rows, progress=False)
    assert pruner.scores.calibration["num_tokens"] == 128 + 3
    assert any("Cut 1 calibration rows longer than the model's context to 128 tokens" in m for m in _warnings(caplog))


def test_answers_fit_the_context_after_the_question(caplog):
    """Before: 256 new tokens on a 128-token model left one token of each question (the loop cuts prompts to fit)."""
    config = RKUConfig(sparsity=0.3, generation_max_new_tokens=256)
    with caplog.at_level(logging.WARNING, logger="optimum_rku"):
        dataset, _ = resolve_calibration(
            QUESTIONS, config, model=tiny_model("llama"), tokenizer=make_tokenizer(), data=get_provider(None)
        )
    longest = len("Question: " + QUESTIONS[1] + "\nAnswer:")
    assert any(
        f"longest calibration prompt ({longest} tokens): answers are capped at {128 - longest}" in m
        for m in _warnings(caplog)
    )
    for row, question in zip(dataset, QUESTIONS):  # every question is read whole
        prompt = len("Question: " + question + "\nAnswer:")
        assert row["input_ids"][:prompt] == make_tokenizer()("Question: " + question + "\nAnswer:")["input_ids"]
        assert len(row["input_ids"]) <= 128


def test_tokenizer_without_pad_token_pads_with_eos():
    """Before: transformers refused to pad the batched prompts ('Asking to pad but the tokenizer does not have...')."""
    config = RKUConfig(generation_max_new_tokens=6)
    with_pad = self_generated.generate_answers(
        tiny_model("llama"), make_tokenizer(), QUESTIONS, config, progress=False
    )
    tokenizer = make_tokenizer()
    tokenizer.pad_token = None
    without = self_generated.generate_answers(tiny_model("llama"), tokenizer, QUESTIONS, config, progress=False)
    assert without == with_pad  # padding is masked out: its id changes nothing
    pruner = RKUPruner(tiny_model("llama"), tokenizer)
    pruner.prune(SELF, calibration_dataset=QUESTIONS, progress=False)
    assert pruner.plan is not None and tokenizer.pad_token is None  # the tokenizer is left as it was


BROKEN = "{{ raise_exception('Conversation roles must alternate system/user/assistant') }}"


def test_chat_template_that_fails_to_render(caplog):
    tokenizer = make_tokenizer()
    tokenizer.chat_template = BROKEN
    pruner = RKUPruner(tiny_model("llama"), tokenizer)
    with caplog.at_level(logging.WARNING, logger="optimum_rku"):
        pruner.compute_scores(SELF, calibration_dataset=QUESTIONS, progress=False)
    assert pruner.scores.calibration["chat_template"] is False  # "auto": plain prompts, and the metadata says so
    assert any(
        "chat_template fails to render a user turn" in m and "roles must alternate" in m for m in _warnings(caplog)
    )
    on = RKUConfig(sparsity=0.3, generation_chat_template="on")
    with pytest.raises(
        ValueError, match=r"'on' but the tokenizer's chat_template fails to render.*roles must alternate"
    ):
        pruner.prune(on, calibration_dataset=QUESTIONS, progress=False)
    assert pruner.plan is None


def test_every_answer_empty_falls_back_to_the_questions(caplog):
    model = tiny_model("llama")
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit ties: greedy picks id 0, <pad>, which decodes to nothing
    pruner = RKUPruner(model, make_tokenizer())
    with caplog.at_level(logging.WARNING, logger="optimum_rku"):
        pruner.compute_scores(SELF, calibration_dataset=QUESTIONS, progress=False)
    assert any("produced no answer tokens" in m for m in _warnings(caplog))
    assert pruner.scores.calibration["fallback"] == "no answer tokens were generated; scored on the question text"
    assert pruner.scores.calibration["num_tokens"] > 0
