"""Tests for the reasoning testbed: problem generator, tokenizer and the committed checkpoint."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import re  # noqa: E402
import string  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from optimum_rku.testbed import (  # noqa: E402
    TESTBED_PATH,
    build_tokenizer,
    extract_answer,
    format_example,
    format_prompt,
    load,
    make_problems,
)

STEP_RE = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")


def _steps(answer: str) -> list[str]:
    """Return the reasoning sentences of an answer (lines before the #### line)."""
    lines = answer.split("\n")
    assert lines[-1].startswith("#### ")
    return lines[:-1]


def test_deterministic_per_seed_and_split():
    assert make_problems(50, seed=3) == make_problems(50, seed=3)
    assert make_problems(50, seed=3) != make_problems(50, seed=4)
    assert make_problems(20, seed=1, split="test") == make_problems(20, seed=1, split="test")
    assert make_problems(0) == []


def test_splits_disjoint():
    train = {p["question"] for p in make_problems(2000, seed=0, split="train")}
    test = {p["question"] for p in make_problems(500, seed=0, split="test")}
    ood = {p["question"] for p in make_problems(300, seed=0, split="ood")}
    assert len(train) == 2000 and len(test) == 500 and len(ood) == 300
    assert not train & test and not train & ood and not test & ood
    other_seed_train = {p["question"] for p in make_problems(2000, seed=7, split="train")}
    assert not other_seed_train & test


@pytest.mark.parametrize("split,lo,hi,cap", [("train", 2, 4, 1000), ("test", 2, 4, 1000), ("ood", 5, 6, None)])
def test_step_counts_and_arithmetic(split, lo, hi, cap):
    for p in make_problems(300, seed=0, split=split):
        steps = _steps(p["answer"])
        assert lo <= len(steps) <= hi, p
        last = None
        for line in steps:
            m = STEP_RE.search(line)
            assert m, line
            a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
            expected = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
            if op == "/":
                assert a % b == 0
            assert expected == c >= 0, line
            if cap is not None:
                assert c < cap
            last = c
        assert extract_answer(p["answer"]) == str(last)


def test_ood_uses_larger_numbers():
    def biggest(ps):
        return max(int(extract_answer(p["answer"])) for p in ps)

    assert biggest(make_problems(200, split="ood")) > biggest(make_problems(200, split="test"))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="validation"):
        make_problems(5, split="validation")
    with pytest.raises(ValueError, match="-1"):
        make_problems(-1)


def test_prompt_format():
    assert format_prompt("Q?") == "Question: Q?\nAnswer:"
    assert format_example("Q?", "A\n#### 1") == "Question: Q?\nAnswer: A\n#### 1"
    assert extract_answer("x\n#### 42\nmore #### 7") == "42"
    assert extract_answer("no answer") is None


def test_tokenizer_round_trip_and_digits():
    tok = build_tokenizer()
    assert len(tok) <= 512
    for text in [string.printable, "  two  spaces\n\nnewlines\t", "Tom has 12 + 7 = 19 apples.\n#### 19"]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    pieces = tok.convert_ids_to_tokens(tok("12345", add_special_tokens=False)["input_ids"])
    assert pieces == list("12345")
    assert tok.pad_token == "<pad>" and tok.bos_token == "<s>" and tok.eos_token == "</s>"
    assert tok("hi")["input_ids"][0] != tok.bos_token_id


def test_tokenizer_deterministic():
    a, b = build_tokenizer(), build_tokenizer()
    assert a.get_vocab() == b.get_vocab()


@pytest.mark.skipif(not (TESTBED_PATH / "model.safetensors").exists(), reason="testbed checkpoint not present")
def test_load_matches_spec_and_generates():
    model, tok = load()
    cfg = model.config
    assert cfg.model_type == "llama"
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (4, 256, 704)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (8, 4, 32)
    assert cfg.tie_word_embeddings and cfg.vocab_size == len(tok)
    assert 2_500_000 < sum(p.numel() for p in model.parameters()) < 4_500_000
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    q = make_problems(1, seed=0, split="test")[0]["question"]
    enc = tok(format_prompt(q), return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=80, do_sample=False)
    text = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "####" in text
