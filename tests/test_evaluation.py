"""Tests for harness-compatible GSM8K evaluation: extraction, prompts, batched generation, I/O and the evaluate metric.

Over ~450 lines on purpose: every test reads the same scripted models, tokenizer and GSM8K rows built at the top.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import random
import string
from pathlib import Path

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from optimum_rku.evaluation import (
    GSM8K_METRIC_PATH,
    GSM8KResult,
    build_chat_messages,
    build_prompt,
    evaluate_gsm8k,
    extract_answer,
    is_correct,
    normalize_answer,
    truncate_at_stop,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_GSM8K = REPO_ROOT / ".." / "shared" / "gsm8k"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
# Multi-character tokens the character-level pre-tokenizer never produces, so only a (scripted) model can emit them.
SCRIPT_TOKENS = [" 6 * 7 = 42.\n#### 42", "\n\n", "Question:", " and so on"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)

QUESTIONS = [
    "Tom has 3 apples and buys 4 more. How many apples does he have?",
    "A box holds 12 eggs. How many eggs are in 5 boxes?",
    "Sara reads 7 pages a day for a week. How many pages?",
    "What is 100 - 37?",
    "A pen costs $2 and a book costs $15. What do 3 pens and 2 books cost in total?",
    "Lily had 50 stickers, gave away 18 and then bought 9. How many now?",
    "There are 4 rows of 6 chairs. How many chairs?",
    "If 8 friends share 64 candies equally, how many does each get?",
    "A train travels 60 miles per hour for 3 hours. How far does it go?",
    "Half of 90 is what?",
]
ROWS = [{"question": q, "answer": f"Some reasoning.\n#### {i * 11}"} for i, q in enumerate(QUESTIONS)]
SHOTS = [
    {"question": "What is 2 + 3?", "answer": "2 + 3 = <<2+3=5>>5\n#### 5"},
    {"question": "Jo has 4 cats and 1 dog. How many pets?", "answer": "4 + 1 = <<4+1=5>>5\n#### 5"},
    {"question": "A bag has 10 marbles; 4 are red. How many are not red?", "answer": "10 - 4 = 6\n#### 6"},
]


# --------------------------------------------------------------------------------------------------------------------
# Tiny in-process tokenizer and models
# --------------------------------------------------------------------------------------------------------------------


def make_tokenizer(chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """Build a character-level tokenizer (plus a few multi-char tokens) with pad/bos/eos/unk."""
    chars = sorted(set(string.printable))
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + chars + SCRIPT_TOKENS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def llama_config(tokenizer: PreTrainedTokenizerFast, **sizes) -> LlamaConfig:
    """A small Llama config with the tokenizer's vocabulary and special ids, untied, long enough positions."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **sizes,
    )


def make_random_llama(
    tokenizer: PreTrainedTokenizerFast, seed: int = 11, attn_implementation: str = "sdpa"
) -> LlamaForCausalLM:
    """Build a tiny random Llama; eos is made likelier so some rows finish early and others run to the limit."""
    torch.manual_seed(seed)
    config = llama_config(
        tokenizer,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config).eval()
    model.set_attn_implementation(attn_implementation)
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id] *= 3
    return model


def make_scripted_llama(tokenizer: PreTrainedTokenizerFast, successors: dict[str, str]) -> LlamaForCausalLM:
    """Build a 1-layer Llama whose greedy next token depends only on the current token (a fixed bigram script)."""
    vocab = tokenizer.get_vocab()
    size = len(tokenizer)
    config = llama_config(
        tokenizer,
        hidden_size=size,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(size))
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        head = torch.zeros(size, size)
        head[tokenizer.eos_token_id, :] = 1.0  # default successor: eos
        for source, target in successors.items():
            head[:, vocab[source]] = 0.0
            head[vocab[target], vocab[source]] = 5.0
        model.lm_head.weight.copy_(head)
    return model


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer shared by the module."""
    return make_tokenizer(CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def scripted_model(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """Model that answers ' 6 * 7 = 42.\\n#### 42', then a blank line, then starts a new 'Question:' forever."""
    script = {":": SCRIPT_TOKENS[0], SCRIPT_TOKENS[0]: "\n\n", "\n\n": "Question:", "Question:": SCRIPT_TOKENS[3]}
    script[SCRIPT_TOKENS[3]] = SCRIPT_TOKENS[3]
    return make_scripted_llama(tokenizer, script)


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    """Write rows as jsonl."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


# --------------------------------------------------------------------------------------------------------------------
# Extraction and scoring
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "strict", "flexible"),
    [
        ("So the total is 1,000.\n#### 1,000", "1000", "1000"),
        ("It costs $5.\n#### 5", "5", "5"),
        ("#### $5", None, "5"),
        ("He lost 3 points.\n#### -3", "-3", "-3"),
        ("Each costs 3.50 dollars.\n#### 3.50", "3.50", "3.50"),
        ("#### 7.", "7", "7"),
        ("The answer is 12.", None, "12"),
        ("I do not know the answer.", None, None),
        ("", None, None),
        ("First try:\n#### 12\nActually:\n#### 13", "12", "13"),
        ("####12", None, "12"),
        ("The total is $1,234.56.", None, "1234.56"),
        ("Temperature went from 4 to -2", None, "-2"),
        ("#### 18\n\nQuestion: next one has 99", "18", "99"),
    ],
)
def test_extract_answer_tricky_strings(completion: str, strict: str | None, flexible: str | None) -> None:
    """Strict takes the first '#### N', flexible the last number, both normalized like the harness."""
    assert extract_answer(completion, "strict") == strict
    assert extract_answer(completion, mode="flexible") == flexible


def test_normalize_answer() -> None:
    """Commas, dollar signs, the '#### ' prefix, a trailing period and outer whitespace are removed."""
    assert normalize_answer(" $1,000. ") == "1000"
    assert normalize_answer("Step 1.\nStep 2.\n#### 72") == "72"
    assert normalize_answer("3.50") == "3.50"


def test_is_correct_full_reference_and_bare_number() -> None:
    """References may be full GSM8K answers or bare numbers; matching is exact after normalization."""
    full = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nShe sold 48+24 = <<48+24=72>>72 clips.\n#### 72"
    assert is_correct("48 + 24 = 72\n#### 72", full)
    assert is_correct("48 + 24 = 72\n#### 72", "72")
    assert is_correct("She sold $72.", full, mode="flexible")
    assert not is_correct("She sold $72.", full, mode="strict")
    assert is_correct("#### 1,000", "#### 1000")
    assert is_correct("#### -5", "-5")
    assert not is_correct("#### 3.5", "3.50")
    assert not is_correct("#### 71", full)
    assert not is_correct("no number", "72", mode="flexible")


def test_bad_mode_raises() -> None:
    """Unknown extraction modes are rejected with the allowed values."""
    with pytest.raises(ValueError, match="strict"):
        extract_answer("#### 1", mode="loose")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        extract_answer(None)  # type: ignore[arg-type]


def _shared_rows(split: str) -> list[dict[str, str]]:
    """Load real GSM8K rows from ../shared/gsm8k, skipping when absent."""
    path = SHARED_GSM8K / f"{split}.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_gold_answers_score_full_marks() -> None:
    """Gold GSM8K solutions used as completions score 100% strict and flexible on the whole test split."""
    rows = _shared_rows("test")
    assert len(rows) == 1319
    for row in rows:
        assert is_correct(row["answer"], row["answer"], "strict"), row["answer"]
        assert is_correct(row["answer"], row["answer"], "flexible"), row["answer"]
        bare = row["answer"].split("#### ")[-1]
        assert is_correct(row["answer"], bare, "strict")


# --------------------------------------------------------------------------------------------------------------------
# Prompt construction
# --------------------------------------------------------------------------------------------------------------------


def test_two_shot_prompt_matches_harness_format() -> None:
    """Shots are 'Question: q\\nAnswer: a' joined by blank lines, then the target 'Question: q\\nAnswer:'."""
    prompt = build_prompt("What is 6 * 7?", SHOTS[:2])
    expected = (
        "Question: What is 2 + 3?\nAnswer: 2 + 3 = <<2+3=5>>5\n#### 5\n\n"
        "Question: Jo has 4 cats and 1 dog. How many pets?\nAnswer: 4 + 1 = <<4+1=5>>5\n#### 5\n\n"
        "Question: What is 6 * 7?\nAnswer:"
    )
    assert prompt == expected
    assert build_prompt("What is 6 * 7?") == "Question: What is 6 * 7?\nAnswer:"


def test_chat_messages_are_multi_turn() -> None:
    """Chat mode alternates user questions and assistant worked answers, ending with the target question."""
    messages = build_chat_messages("What is 6 * 7?", SHOTS[:2])
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[0]["content"] == "Question: What is 2 + 3?\nAnswer:"
    assert messages[1]["content"] == SHOTS[0]["answer"]
    assert messages[-1]["content"] == "Question: What is 6 * 7?\nAnswer:"


def test_truncate_at_earliest_stop_string() -> None:
    """Completions are cut at the first of 'Question:', '</s>' or '<|im_end|>'."""
    assert truncate_at_stop("#### 4</s>Question: x") == "#### 4"
    assert truncate_at_stop("#### 4\n\nQuestion: x</s>") == "#### 4\n\n"
    assert truncate_at_stop("#### 4<|im_end|>") == "#### 4"
    assert truncate_at_stop("#### 4") == "#### 4"


def test_fewshot_sampling_is_seeded_and_per_question(tokenizer, scripted_model) -> None:
    """Few-shot sets come from one RNG seeded with fewshot_seed, advanced per question like the harness sampler."""
    result = evaluate_gsm8k(
        scripted_model, tokenizer, ROWS[:2], num_fewshot=2, fewshot_examples=SHOTS, max_new_tokens=4, progress=False
    )
    rng = random.Random(1234)
    for sample, row in zip(result.samples, ROWS[:2]):
        assert sample["prompt"] == build_prompt(row["question"], rng.sample(SHOTS, 2))


# --------------------------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_batched_generation_matches_batch_size_one(tokenizer, attn_implementation) -> None:
    """Left-padded, length-sorted batches (incl. a ragged last batch) give exactly the batch-size-1 completions."""
    model = make_random_llama(tokenizer, attn_implementation=attn_implementation)
    kwargs = {"num_fewshot": 2, "fewshot_examples": SHOTS, "limit": 10, "max_new_tokens": 20, "progress": False}
    runs = {size: evaluate_gsm8k(model, tokenizer, ROWS, batch_size=size, **kwargs) for size in (1, 3, 8)}
    reference = runs[1]
    assert reference.num_samples == 10
    for result in runs.values():
        for key in ("prompt", "completion", "generated_tokens", "extracted_flexible"):
            assert [s[key] for s in result.samples] == [s[key] for s in reference.samples], key
        assert result.generated_tokens == reference.generated_tokens
    counts = [s["generated_tokens"] for s in reference.samples]
    # The seed is chosen so rows stop at different steps (eos / stop string) while others run to the limit.
    assert len(set(counts)) > 1 and max(counts) == 20 and min(counts) < 20


def test_stops_at_question_and_scores(tokenizer, scripted_model) -> None:
    """Generation stops once 'Question:' appears; the completion is truncated there and scored."""
    rows = [{"question": q, "answer": "6 * 7 = 42\n#### 42"} for q in QUESTIONS[:5]]
    result = evaluate_gsm8k(
        scripted_model, tokenizer, rows, num_fewshot=0, batch_size=4, max_new_tokens=40, progress=False
    )
    assert [s["completion"] for s in result.samples] == [" 6 * 7 = 42.\n#### 42\n\n"] * 5
    assert [s["generated_tokens"] for s in result.samples] == [3] * 5
    assert result.exact_match_strict == result.exact_match_flexible == 1.0
    assert result.samples[0]["extracted_strict"] == result.samples[0]["target"] == "42"
    wrong = [{"question": q, "answer": "#### 41"} for q in QUESTIONS[:2]]
    result = evaluate_gsm8k(scripted_model, tokenizer, wrong, num_fewshot=0, max_new_tokens=40, progress=False)
    assert result.exact_match_strict == result.exact_match_flexible == 0.0


def test_stops_at_eos_and_pads_without_pad_token() -> None:
    """A row ending in eos stops there; a tokenizer without a pad token falls back to eos for padding."""
    tokenizer = make_tokenizer()
    model = make_scripted_llama(tokenizer, {":": SCRIPT_TOKENS[0]})  # then eos
    tokenizer.pad_token = None
    assert tokenizer.pad_token_id is None
    rows = [{"question": q, "answer": "#### 42"} for q in QUESTIONS[:3]]
    result = evaluate_gsm8k(model, tokenizer, rows, num_fewshot=0, batch_size=2, max_new_tokens=10, progress=False)
    assert [s["completion"] for s in result.samples] == [SCRIPT_TOKENS[0]] * 3
    assert result.generated_tokens == 6
    assert result.exact_match_strict == 1.0


def test_long_prompts_are_left_truncated(tokenizer) -> None:
    """Prompts longer than the context budget are left-truncated with a warning, keeping the question at the end."""
    model = make_random_llama(tokenizer)
    model.config.max_position_embeddings = 64
    with pytest.warns(UserWarning, match="left-truncated"):
        result = evaluate_gsm8k(
            model, tokenizer, ROWS[:2], num_fewshot=2, fewshot_examples=SHOTS, max_new_tokens=8, progress=False
        )
    assert result.num_samples == 2
    assert all(s["generated_tokens"] <= 8 for s in result.samples)


def test_chat_template_mode(tokenizer, scripted_model) -> None:
    """Chat mode renders few-shot turns through the tokenizer's template with a generation prompt."""
    rows = [{"question": "What is 6 * 7?", "answer": "#### 42"}]
    result = evaluate_gsm8k(
        scripted_model,
        tokenizer,
        rows,
        num_fewshot=1,
        fewshot_examples=SHOTS[:1],
        apply_chat_template=True,
        max_new_tokens=10,
        progress=False,
    )
    expected = (
        "user: Question: What is 2 + 3?\nAnswer:\nassistant: 2 + 3 = <<2+3=5>>5\n#### 5\n"
        "user: Question: What is 6 * 7?\nAnswer:\nassistant:"
    )
    assert result.samples[0]["prompt"] == expected
    assert result.exact_match_strict == 1.0
    assert result.apply_chat_template is True


# --------------------------------------------------------------------------------------------------------------------
# Dataset inputs and outputs
# --------------------------------------------------------------------------------------------------------------------


def test_local_jsonl_path_and_directory(tmp_path, tokenizer, scripted_model) -> None:
    """A jsonl path reads few-shot examples from train.jsonl beside it; a directory picks {split}.jsonl."""
    write_jsonl(tmp_path / "test.jsonl", ROWS[:4])
    write_jsonl(tmp_path / "train.jsonl", SHOTS)
    kwargs = {"num_fewshot": 2, "max_new_tokens": 4, "progress": False}
    by_file = evaluate_gsm8k(scripted_model, tokenizer, str(tmp_path / "test.jsonl"), limit=3, **kwargs)
    assert by_file.num_samples == 3
    assert by_file.dataset == str(tmp_path / "test.jsonl")
    assert all(s["prompt"].count("Question:") == 3 for s in by_file.samples)
    by_dir = evaluate_gsm8k(scripted_model, tokenizer, tmp_path, **kwargs)
    assert by_dir.num_samples == 4
    assert [s["prompt"] for s in by_dir.samples[:3]] == [s["prompt"] for s in by_file.samples]
    on_train = evaluate_gsm8k(scripted_model, tokenizer, tmp_path, split="train", **kwargs)
    for sample in on_train.samples:  # a question never appears among its own shots when both come from one split
        assert sample["prompt"].count(sample["question"]) == 1


def test_shared_gsm8k_files(tokenizer, scripted_model) -> None:
    """The real ../shared/gsm8k/test.jsonl works as a path, with 5-shot examples from train.jsonl beside it."""
    _shared_rows("train")
    _shared_rows("test")
    result = evaluate_gsm8k(
        scripted_model, tokenizer, str(SHARED_GSM8K / "test.jsonl"), limit=2, max_new_tokens=4, progress=False
    )
    assert result.num_samples == 2
    assert result.num_fewshot == 5
    assert result.samples[0]["prompt"].count("Question:") == 6
    assert result.samples[0]["target"] == "18"


def test_list_and_dataset_inputs(tokenizer, scripted_model) -> None:
    """Lists of dicts and datasets.Dataset work; few-shot needs fewshot_examples for them."""
    import datasets

    result = evaluate_gsm8k(scripted_model, tokenizer, ROWS[:3], num_fewshot=0, max_new_tokens=4, progress=False)
    assert result.num_samples == 3 and result.num_fewshot == 0
    assert result.dataset == "list (3 rows)"
    with pytest.raises(ValueError, match="fewshot_examples"):
        evaluate_gsm8k(scripted_model, tokenizer, ROWS[:3], num_fewshot=2, progress=False)
    table = datasets.Dataset.from_list(ROWS[:2])
    result = evaluate_gsm8k(
        scripted_model, tokenizer, table, num_fewshot=1, fewshot_examples=SHOTS, max_new_tokens=4, progress=False
    )
    assert result.num_samples == 2 and result.samples[0]["prompt"].count("Question:") == 2


def test_output_path_writes_jsonl_and_summary(tmp_path, tokenizer, scripted_model) -> None:
    """output_path gets one jsonl record per sample and a summary json beside it, with no temp files left."""
    out = tmp_path / "run" / "gsm8k.jsonl"
    result = evaluate_gsm8k(
        scripted_model, tokenizer, ROWS[:5], num_fewshot=0, max_new_tokens=4, output_path=out, progress=False
    )
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 5
    record = json.loads(lines[0])
    for key in ("question", "prompt", "completion", "extracted_strict", "extracted_flexible", "target"):
        assert key in record
    assert {"correct_strict", "correct_flexible"} <= set(record)
    summary = json.loads((out.parent / "gsm8k_summary.json").read_text(encoding="utf-8"))
    assert summary["num_samples"] == 5 and "samples" not in summary
    assert summary == json.loads(json.dumps(result.to_dict()))
    assert sorted(p.name for p in out.parent.iterdir()) == ["gsm8k.jsonl", "gsm8k_summary.json"]
    assert len(result.to_dict(include_samples=True)["samples"]) == 5
    samples_path, summary_path = result.save(tmp_path)
    assert samples_path == tmp_path / "gsm8k_samples.jsonl" and summary_path.is_file()
    assert isinstance(result, GSM8KResult) and result.tokens_per_s >= 0


# --------------------------------------------------------------------------------------------------------------------
# evaluate metric module
# --------------------------------------------------------------------------------------------------------------------


def test_evaluate_metric_loads_by_path() -> None:
    """The metric loads offline by directory or file path and agrees with the package helpers."""
    import evaluate

    predictions = ["6 * 7 = 42\n#### 42", "It is $1,000.", "#### 3.50", "no idea", "#### 12\n#### 13"]
    references = ["x\n#### 42", "#### 1000", "3.5", "5", "13"]
    metric = evaluate.load(GSM8K_METRIC_PATH)
    scores = metric.compute(predictions=predictions, references=references)
    expected_strict = sum(is_correct(p, r, "strict") for p, r in zip(predictions, references)) / 5
    expected_flexible = sum(is_correct(p, r, "flexible") for p, r in zip(predictions, references)) / 5
    assert scores == {"exact_match_strict": expected_strict, "exact_match_flexible": expected_flexible}
    assert scores == {"exact_match_strict": 0.2, "exact_match_flexible": 0.6}
    by_file = evaluate.load(os.path.join(GSM8K_METRIC_PATH, "gsm8k_exact_match.py"))
    assert by_file.compute(predictions=predictions, references=references, mode="strict") == {
        "exact_match_strict": 0.2
    }


def test_evaluate_metric_on_gold_answers() -> None:
    """Gold GSM8K answers as predictions score 1.0 through the evaluate metric."""
    import evaluate

    answers = [row["answer"] for row in _shared_rows("test")]
    scores = evaluate.load(GSM8K_METRIC_PATH).compute(predictions=answers, references=answers)
    assert scores == {"exact_match_strict": 1.0, "exact_match_flexible": 1.0}


# --------------------------------------------------------------------------------------------------------------------
# Argument validation
# --------------------------------------------------------------------------------------------------------------------


class _NoGenerateModel(torch.nn.Module):
    """Model stub whose generate must never be reached by invalid calls."""

    def generate(self, *args, **kwargs):  # noqa: D401
        """Fail loudly: validation should have rejected the call before generation."""
        raise AssertionError("generate reached despite invalid arguments")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_fewshot": -1}, ValueError, "num_fewshot"),
        ({"num_fewshot": "5"}, TypeError, "num_fewshot"),
        ({"limit": -3}, ValueError, "limit"),
        ({"limit": 0}, ValueError, "limit"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"max_new_tokens": 0}, ValueError, "max_new_tokens"),
        ({"split": "validation"}, ValueError, "split"),
        ({"fewshot_split": "dev"}, ValueError, "fewshot_split"),
        ({"dataset": 123}, TypeError, "dataset"),
        ({"dataset": "missing/test.jsonl"}, FileNotFoundError, "missing"),
        ({"dataset": [{"question": "q"}]}, ValueError, "answer"),
        ({"dataset": ROWS, "num_fewshot": 2}, ValueError, "fewshot_examples"),
        ({"dataset": ROWS, "num_fewshot": 4, "fewshot_examples": SHOTS}, ValueError, "num_fewshot=4"),
        ({"output_path": 3.5}, TypeError, "output_path"),
        ({"fewshot_seed": "1234"}, TypeError, "fewshot_seed"),
        ({"apply_chat_template": "yes"}, TypeError, "apply_chat_template"),
    ],
)
def test_bad_arguments_raise_before_generation(kwargs, error, match) -> None:
    """Invalid arguments raise a clear error naming the value before any loading or generation."""
    with pytest.raises(error, match=match):
        evaluate_gsm8k(_NoGenerateModel(), make_tokenizer(), **{"progress": False, **kwargs})


def test_bad_model_tokenizer_and_template_raise(tmp_path) -> None:
    """Non-generative models, missing chat templates and directories without the split are rejected."""
    with pytest.raises(TypeError, match="generate"):
        evaluate_gsm8k(object(), make_tokenizer(), ROWS, num_fewshot=0)
    with pytest.raises(TypeError, match="tokenizer"):
        evaluate_gsm8k(_NoGenerateModel(), object(), ROWS, num_fewshot=0)
    with pytest.raises(ValueError, match="chat_template"):
        evaluate_gsm8k(_NoGenerateModel(), make_tokenizer(), ROWS, num_fewshot=0, apply_chat_template=True)
    write_jsonl(tmp_path / "train.jsonl", SHOTS)
    with pytest.raises(ValueError, match="test.jsonl"):
        evaluate_gsm8k(_NoGenerateModel(), make_tokenizer(), tmp_path, num_fewshot=0)


def test_unreachable_hub_error_explains_local_files() -> None:
    """When the Hub cannot be reached the error says how to pass local files instead."""
    with pytest.raises(RuntimeError, match="path/to/test.jsonl"):
        evaluate_gsm8k(
            _NoGenerateModel(),
            make_tokenizer(),
            "optimum-rku-no-such-org/no-such-gsm8k",
            num_fewshot=0,
            progress=False,
        )


# --------------------------------------------------------------------------------------------------------------------
# GSM8K chain of thought, boxed answers (the instrument of the real-model benchmark)
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("so Janet makes \\(\\boxed{20}\\) dollars.", "20"),
        ("\\boxed{\\$1{,}000}", "1000"),
        ("\\boxed{1,234}.", "1234"),
        ("\\boxed{18.00 \\text{ dollars}}", "18"),
        ("\\boxed{18.50}", "18.5"),
        ("\\boxed{50\\%}", "50"),
        ("\\boxed{-3}", "-3"),
        ("first \\boxed{1}, then \\boxed{2}", "2"),
        ("\\boxed{\\text{yes}}", None),
        ("no box: 42", None),
        ("\\boxed{12", None),  # cut off by the budget before the box closed
    ],
)
def test_boxed_number_reads_the_last_box(completion: str, expected: str | None) -> None:
    from optimum_rku.evaluation.gsm8k_cot import boxed_number

    assert boxed_number(completion) == expected


def test_boxed_task_prompts_with_qwen_instruction_and_judges_the_box(tokenizer) -> None:
    """The boxed task asks 0-shot through the chat template and scores the box numerically, flexible beside it."""
    from optimum_rku.evaluation import evaluate
    from optimum_rku.evaluation.gsm8k_cot import BOXED_INSTRUCTION, GSM8KBoxedTask

    task = GSM8KBoxedTask()
    row = {"question": "What is 6 * 7?", "answer": "6 * 7 = 42\n#### 42"}
    assert task.prompt(row, [], tokenizer, chat=True) == f"user: What is 6 * 7?\n{BOXED_INSTRUCTION}\nassistant:"
    with pytest.raises(ValueError, match="0-shot"):
        task.prompt(row, SHOTS[:1], tokenizer, chat=True)
    assert task.score(row, "6 * 7 = \\boxed{42.0}") == {
        "extracted_boxed": "42",
        "extracted_flexible": "42.0",
        "target": "42",
        "correct_boxed": True,
        "correct_flexible": False,
    }
    assert task.score(row, "it is 42, not \\boxed{41}")["correct_boxed"] is False

    model = make_random_llama(tokenizer)
    result = evaluate(
        model, tokenizer, "gsm8k_cot_boxed", ROWS[:3], max_new_tokens=6, apply_chat_template=True, progress=False
    )
    assert result.task == "gsm8k_cot_boxed" and result.max_new_tokens == 6
    assert set(result.metrics) == {"exact_match_boxed", "exact_match_flexible"}
    assert all(s["prompt"].endswith(f"{BOXED_INSTRUCTION}\nassistant:") for s in result.samples)


def test_paired_difference_interval_and_mcnemar() -> None:
    from optimum_rku.evaluation.stats import mcnemar_p_value, paired_difference, wilson_interval

    same = [1, 0, 1, 1, 0] * 20
    result = paired_difference(same, same)
    assert result.difference == result.low == result.high == 0.0 and result.p_value == 1.0
    better = [1] * 60 + [0] * 40
    worse = [1] * 40 + [0] * 60  # a strictly better on 20 problems, never worse
    result = paired_difference(better, worse, resamples=4000)
    assert result.difference == pytest.approx(0.2) and (result.only_a, result.only_b) == (20, 0)
    assert 0.1 < result.low < 0.2 < result.high < 0.3 and result.p_value < 1e-5
    assert paired_difference(better, worse, resamples=4000) == result  # seeded
    flipped = paired_difference(worse, better, resamples=4000)
    assert flipped.difference == pytest.approx(-0.2) and flipped.high < 0
    # discordant 3 vs 1: exact two-sided binomial p = 2 * (1 + 4) / 16
    assert mcnemar_p_value(3, 1) == pytest.approx(0.625) and mcnemar_p_value(0, 0) == 1.0
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    with pytest.raises(ValueError, match="one length"):
        paired_difference([1, 0], [1])
    with pytest.raises(ValueError, match="0/1"):
        paired_difference([2], [1])
    with pytest.raises(ValueError, match="confidence"):
        paired_difference([1], [1], confidence=1.5)


def test_likelihood_metrics_gold_nll_perplexity_and_agreement(tokenizer) -> None:
    """Gold NLL counts the solution tokens only; a model agrees fully with itself; nll_only skips the plain pass."""
    from optimum_rku.evaluation.likelihood import GoldTexts, likelihood_metrics

    model = make_random_llama(tokenizer)
    texts = GoldTexts(tokenizer, ROWS[:3])
    assert texts.chat and len(texts.gold) == len(texts.plain) == 3  # asked through the chat template
    ids, mask = texts.gold[0]
    answer = tokenizer(ROWS[0]["answer"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    assert sum(mask) == len(answer) and ids[-len(answer) :] == answer and mask[-len(answer) - 1] == 0
    with torch.no_grad():  # the first problem's NLL by hand: mean over its solution tokens
        logits = model(torch.tensor([ids])).logits[0, :-1]
        losses = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")
        expected_first = float(losses[torch.tensor(mask[1:], dtype=torch.bool)].mean())
    single = likelihood_metrics(model, GoldTexts(tokenizer, ROWS[:1]))
    assert single["nll"] == pytest.approx(expected_first, rel=1e-5)
    dense = likelihood_metrics(model, texts, batch_size=2)
    assert dense["agreement"] == 1.0 and dense["ppl"] > 1 and len(dense["argmax"]) == 3
    same = likelihood_metrics(model, texts, dense["argmax"], batch_size=3)  # batching does not change it
    assert same["agreement"] == 1.0 and same["nll"] == pytest.approx(dense["nll"], rel=1e-5)
    other = likelihood_metrics(make_random_llama(tokenizer, seed=3), texts, dense["argmax"])
    assert 0.0 <= other["agreement"] < 1.0
    quick = likelihood_metrics(model, texts, nll_only=True)
    assert quick["nll"] == pytest.approx(dense["nll"], rel=1e-5) and math.isnan(quick["ppl"])
