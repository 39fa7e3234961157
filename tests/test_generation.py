"""The shared generation loop: continuous batching gives today's completions, computes no finished row, and its cheap
stop-string pre-check makes the same per-row decisions as decoding every step.

The reference everywhere is the `generate` loop (fixed, length-sorted, left-padded batches through `model.generate`),
at batch size 1 and at the batch size under test.
"""

from __future__ import annotations

import random

import pytest
import torch
from conftest import FAMILIES, make_tokenizer, tiny_model, token_dataset

from optimum_rku import RKUConfig, RKUPruner
from optimum_rku.data import generation
from optimum_rku.data.generation import _StopCheck, continuous_unsupported, generate_completions, pad_and_eos

#: families whose tiny models get a short sliding window, so decoding runs past it
SLIDING = {"gemma2", "gemma3_text", "mistral"}
STOPS = ("cc", "5E", "PP", "Je", "jj", "Zx")


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _prompts(n: int = 8, seed: int = 0) -> list[str]:
    """Prompts of 2 to 24 characters (ragged, so batches are left-padded)."""
    rng = random.Random(seed)
    return ["".join(rng.choice("abcdefghij klmnop") for _ in range(rng.randint(2, 24))) for _ in range(n)]


def _model(family: str, **overrides):
    """A tiny random model with eos made likelier, so rows stop at different steps while others reach the limit."""
    if family in SLIDING:
        overrides.setdefault("sliding_window", 4)
    model = tiny_model(family, **overrides)
    with torch.no_grad():
        model.get_output_embeddings().weight[1] *= 3.0
    return model


def _run(model, tokenizer, prompts, loop: str, batch_size: int, **kwargs):
    """Completions and counts of one loop."""
    options = {"max_new_tokens": 20, "progress": False, "stop_strings": STOPS, **kwargs}
    return generate_completions(model, tokenizer, prompts, batch_size=batch_size, loop=loop, **options)


class DecodeRows:
    """Forward pre-hook recording the rows of every one-token (decode) forward."""

    def __init__(self, model) -> None:
        """Hook `model`."""
        self.rows: list[int] = []
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs) -> None:
        """Record one forward."""
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[1] == 1:
            self.rows.append(int(ids.shape[0]))


# -------------------------------------------------------------------------------------------- same completions


@pytest.mark.parametrize("family", FAMILIES)
def test_continuous_matches_generate_for_every_family(family) -> None:
    """Every family (sliding windows and softcapping included) decodes the same text and counts in both loops."""
    model, tokenizer, prompts = _model(family), make_tokenizer(), _prompts()
    reference = _run(model, tokenizer, prompts, "generate", 1)
    assert _run(model, tokenizer, prompts, "generate", 3) == reference
    assert _run(model, tokenizer, prompts, "continuous", 3) == reference
    assert _run(model, tokenizer, prompts, "continuous", 1) == reference
    assert _run(model, tokenizer, prompts, "auto", 8) == reference
    completions, counts, _ = reference
    assert len(set(counts)) > 2  # ragged: rows stop at different steps
    # one character per token: a row cut by a stop string kept fewer characters than it generated tokens (eos: one)
    assert any(len(text) < count - 1 for text, count in zip(completions, counts))


def test_sliding_window_is_exercised() -> None:
    """The sliding window the family tests use changes the completions, so the cache moves above respect it."""
    tokenizer, prompts = make_tokenizer(), _prompts()
    windowed = _run(_model("gemma2"), tokenizer, prompts, "continuous", 3)
    full = _run(_model("gemma2", sliding_window=4096), tokenizer, prompts, "continuous", 3)
    assert windowed != full


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_continuous_matches_generate_per_attention_implementation(attn_implementation) -> None:
    """Padding masks reach both attention kernels the same way in both loops."""
    model, tokenizer, prompts = _model("llama"), make_tokenizer(), _prompts(10, seed=3)
    model.set_attn_implementation(attn_implementation)
    reference = _run(model, tokenizer, prompts, "generate", 1, max_new_tokens=24)
    assert _run(model, tokenizer, prompts, "continuous", 4, max_new_tokens=24) == reference


@pytest.mark.parametrize("family", ["llama", "gemma2", "phi3"])
def test_continuous_matches_generate_on_per_layer_pruned_models(family) -> None:
    """Globally pruned models whose layers keep different head counts (different KV shapes per layer)."""
    settings = {"allocation": "global", "ranking": "score", "targets": "attention", "sparsity": 0.2}
    pruner = RKUPruner(_model(family), make_tokenizer())
    config = RKUConfig(min_keep=0.25, calibration="dataset", **settings)
    pruned = pruner.prune(config, calibration_dataset=token_dataset(), progress=False).eval()
    assert pruned.config.is_heterogeneous
    tokenizer, prompts = make_tokenizer(), _prompts()
    reference = _run(pruned, tokenizer, prompts, "generate", 1)
    assert _run(pruned, tokenizer, prompts, "continuous", 3) == reference


def test_without_pad_token() -> None:
    """A tokenizer without a pad token (eos pads) decodes the same in both loops."""
    tokenizer = make_tokenizer()
    tokenizer.pad_token = None
    assert tokenizer.pad_token_id is None
    model, prompts = _model("qwen2"), _prompts()
    assert _run(model, tokenizer, prompts, "continuous", 3) == _run(model, tokenizer, prompts, "generate", 1)


def test_max_new_tokens_one_and_prompts_that_stop_at_once() -> None:
    """A single new token (every row finishes at prefill) and an eos-only model never enter a decode step."""
    tokenizer, prompts = make_tokenizer(), _prompts()
    model = _model("llama")
    assert _run(model, tokenizer, prompts, "continuous", 3, max_new_tokens=1) == _run(
        model, tokenizer, prompts, "generate", 3, max_new_tokens=1
    )
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()  # every logit ties: argmax is token 0, made an eos here
    model.generation_config.eos_token_id = [0, 1]
    counter = DecodeRows(model)
    completions, counts, _ = _run(model, tokenizer, prompts, "continuous", 3)
    counter.handle.remove()
    assert counts == [1] * len(prompts) and completions == [""] * len(prompts) and counter.rows == []


def test_testbed_completions_are_unchanged() -> None:
    """The bundled testbed: 100 test questions decode to the same completions and counts in both loops."""
    from optimum_rku.evaluation import evaluate_gsm8k
    from optimum_rku.testbed import TESTBED_PATH, load, make_problems

    if not (TESTBED_PATH / "model.safetensors").is_file():
        pytest.skip("testbed checkpoint not present")
    model, tokenizer = load()
    problems = make_problems(100, seed=2016, split="test")
    runs = {
        loop: evaluate_gsm8k(
            model,
            tokenizer,
            dataset=problems,
            num_fewshot=0,
            batch_size=batch,
            max_new_tokens=96,
            progress=False,
            generation_loop=loop,
        )
        for loop, batch in (("generate", 8), ("continuous", 16))
    }
    for key in ("completion", "generated_tokens"):
        assert [s[key] for s in runs["continuous"].samples] == [s[key] for s in runs["generate"].samples], key
    assert runs["continuous"].exact_match_strict == runs["generate"].exact_match_strict > 0.5


# ------------------------------------------------------------------------------------- no finished row computed


def test_finished_rows_leave_the_batch_and_waiting_prompts_fill_it() -> None:
    """Decode steps compute exactly one row per token still to generate (none for finished rows); the batch is full
    until the queue runs dry, then only shrinks. The fixed-batch loop computes finished rows, so it fails this."""
    model, tokenizer, prompts = _model("llama"), make_tokenizer(), _prompts(12, seed=5)
    counter = DecodeRows(model)
    continuous = _run(model, tokenizer, prompts, "continuous", 4)
    completions, counts, _ = continuous
    counter.handle.remove()
    assert len(set(counts)) > 2
    assert sum(counter.rows) == sum(count - 1 for count in counts)
    assert counter.rows[0] == min(4, sum(count > 1 for count in counts))
    assert all(a >= b for a, b in zip(counter.rows, counter.rows[1:]))
    old = DecodeRows(model)
    assert _run(model, tokenizer, prompts, "generate", 4) == continuous
    old.handle.remove()
    assert sum(old.rows) > sum(counter.rows)


# ----------------------------------------------------------------------------------------- which loop runs


def test_sampling_and_generation_config_processors_use_generate() -> None:
    """Sampling, and a generation_config that adds logits processors, go through model.generate; asking for the
    continuous loop there is a clear error."""
    model, tokenizer, prompts = _model("llama"), make_tokenizer(), _prompts()
    sampling = {"temperature": 0.7, "top_p": 0.95}
    torch.manual_seed(0)
    sampled = _run(model, tokenizer, prompts, "auto", 3, sampling=sampling)
    torch.manual_seed(0)
    assert _run(model, tokenizer, prompts, "generate", 3, sampling=sampling) == sampled
    with pytest.raises(ValueError, match="sampling"):
        _run(model, tokenizer, prompts, "continuous", 3, sampling=sampling)

    model.generation_config.repetition_penalty = 1.5
    pad_id, eos_ids = pad_and_eos(model, tokenizer)
    from optimum_rku.data.generation import _generation_config

    reason = continuous_unsupported(model, _generation_config(pad_id, eos_ids, 8, None))
    assert reason is not None and "RepetitionPenalty" in reason
    assert _run(model, tokenizer, prompts, "auto", 3) == _run(model, tokenizer, prompts, "generate", 3)
    with pytest.raises(ValueError, match="RepetitionPenalty"):
        _run(model, tokenizer, prompts, "continuous", 3)
    model.generation_config.repetition_penalty = None
    assert continuous_unsupported(model, _generation_config(pad_id, eos_ids, 8, None)) is None


def test_bad_loop_is_rejected_before_generation() -> None:
    """An unknown loop name fails with the allowed values, before any model call; so does an empty prompt."""
    with pytest.raises(ValueError, match="continuous"):
        generate_completions(object(), make_tokenizer(), ["x"], batch_size=1, max_new_tokens=1, loop="fast")
    with pytest.raises(ValueError, match=r"index \[1\] encode to no tokens"):
        generate_completions(_model("llama"), make_tokenizer(), ["x", ""], batch_size=1, max_new_tokens=1)
    from optimum_rku.evaluation import evaluate_gsm8k

    with pytest.raises(ValueError, match="generation_loop"):
        evaluate_gsm8k(_model("llama"), make_tokenizer(), [{"question": "q", "answer": "#### 1"}], generation_loop="x")


def test_peft_model_runs_the_continuous_loop() -> None:
    """A PEFT-wrapped model (e.g. a recovered adapter checkpoint) decodes the same in both loops."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        _model("llama"), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    model.eval()
    tokenizer, prompts = make_tokenizer(), _prompts()
    assert _run(model, tokenizer, prompts, "continuous", 3) == _run(model, tokenizer, prompts, "generate", 1)


# -------------------------------------------------------------------------------------- stop-string pre-check


def _byte_level_tokenizer():
    """A byte-level BPE tokenizer trained in-process on text with multi-byte characters (tokens split UTF-8)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    text = ["Question: café → 42 ✓ naïve résumé", "Answer: the total is 7 × 6 = 42 €", "Question:→✓ done"] * 20
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(text, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>")


def _metaspace_tokenizer():
    """A SentencePiece-style (Metaspace) BPE tokenizer: a token's own text drops the space it has in context."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    text = ["Question: how many apples ? Answer: 6 * 7 = 42 .", "so on and so forth : Question"] * 20
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"])
    backend.train_from_iterator(text, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def _first_stop(check: _StopCheck, stream: list[int]):
    """(step, result) of the first stop decision over a growing stream, as the loops call the check."""
    for step in range(1, len(stream) + 1):
        result = check(stream[:step])
        if result is not None:
            return step, result
    return None


@pytest.mark.parametrize(
    ("build", "stops"),
    [
        (make_tokenizer, ("Question:", "</s>", "<|im_end|>")),
        (_byte_level_tokenizer, ("Question:", "→✓", "é", "ñ!ñ")),
        (_metaspace_tokenizer, ("Question:", "? Answer", " :")),
        (_metaspace_tokenizer, ("so on", "42 .")),
        (make_tokenizer, ("ab ", "\n\n")),  # stop strings ending in whitespace: the pre-check is off
    ],
)
def test_stop_precheck_makes_the_same_decisions(build, stops) -> None:
    """On random token streams seeded with stop strings, the pre-checked rule stops every stream at the same step
    with the same kept length as decoding the tail at every step, and decodes less often where it is on."""
    tokenizer = build()
    eos = {tokenizer.eos_token_id}
    rng = random.Random(0)
    pieces = [tokenizer(stop, add_special_tokens=False)["input_ids"] for stop in stops]
    pieces += [tokenizer(f"x{stop}y", add_special_tokens=False)["input_ids"] for stop in stops]
    ids = [i for i in range(len(tokenizer)) if i not in eos]
    exhaustive = _StopCheck(tokenizer, stops, eos, filtered=False)
    cheap = _StopCheck(tokenizer, stops, eos, filtered=True)
    stopped = 0
    for _ in range(300):
        stream: list[int] = []
        while len(stream) < 40:
            stream += rng.choice(pieces) if rng.random() < 0.08 else [rng.choice(ids)]
        if rng.random() < 0.1:
            stream.insert(rng.randrange(len(stream)), tokenizer.eos_token_id)
        expected = _first_stop(exhaustive, stream)
        assert _first_stop(cheap, stream) == expected, tokenizer.decode(stream)
        stopped += expected is not None
    assert 30 < stopped < 300
    if any(stop[-1].isspace() for stop in stops):
        assert not cheap.filtered and cheap.decodes == exhaustive.decodes
    else:
        assert cheap.filtered and cheap.decodes < 0.75 * exhaustive.decodes


# -------------------------------------------------------------------------------------------- the growing cache


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
@pytest.mark.parametrize("headroom", [0, 1, 3])
def test_continuous_matches_generate_when_the_cache_outgrows_its_headroom(family, headroom, monkeypatch) -> None:
    """With a headroom of 1-3 positions, full-attention layers move to a larger buffer every few steps (and rows join
    and leave in between); with 0 they stay transformers' concatenating layers. The text and counts stay those of
    `model.generate` either way."""
    monkeypatch.setattr(generation, "CACHE_HEADROOM", headroom)
    model, tokenizer, prompts = _model(family), make_tokenizer(), _prompts(10, seed=3)
    reference = _run(model, tokenizer, prompts, "generate", 1, max_new_tokens=24)
    assert _run(model, tokenizer, prompts, "continuous", 4, max_new_tokens=24) == reference


def test_decode_steps_append_in_place() -> None:
    """A decode step writes into the buffer the layer already has and hands the model views of it: no full-attention
    layer copies its cache per token (transformers' DynamicLayer concatenates, copying all of it every step)."""
    model, tokenizer = _model("llama"), make_tokenizer()
    seen: list[tuple[int, int, bool]] = []
    original = generation._GrowingLayer.update

    def update(layer, keys, values, *args, **kwargs):
        before = layer.key_buffer.data_ptr()
        result = original(layer, keys, values, *args, **kwargs)
        shared = result[0].untyped_storage().data_ptr() == layer.key_buffer.untyped_storage().data_ptr()
        seen.append((before, layer.key_buffer.data_ptr(), shared))
        return result

    generation._GrowingLayer.update = update
    try:
        _run(model, tokenizer, _prompts(6), "continuous", 3, max_new_tokens=16)
    finally:
        generation._GrowingLayer.update = original
    assert len(seen) >= 20  # 16 tokens per row stay inside the headroom: no update moves the cache
    assert all(before == after and shared for before, after, shared in seen)


def _direct(model, tokenizer, prompts, order_key, batch_size: int = 4) -> dict[int, tuple[list[int], tuple]]:
    """Each prompt's tokens and stop result from the continuous loop run on prompts in a given order."""
    encoded = generation._encode(model, tokenizer, prompts, True, 20)
    order = sorted(range(len(prompts)), key=lambda i: order_key(encoded[i]))
    check = _StopCheck(tokenizer, STOPS, pad_and_eos(model, tokenizer)[1], filtered=True)
    out: dict[int, tuple[list[int], tuple]] = {}
    with torch.inference_mode():
        generation._continuous(
            model, encoded, order, batch_size, 20, check, lambda i, t, r: out.update({i: (list(t), r)})
        )
    return out


def test_freed_slots_take_the_next_prompts_without_copying_the_cache(monkeypatch) -> None:
    """While prompts wait, a finished row's slot takes the next one (the whole cache is re-indexed only once the queue
    runs dry), and a newcomer longer than the batch (prompts shortest first) widens it to the left; the tokens stay
    those of the longest-first order and the texts those of `model.generate`."""
    model, tokenizer, prompts = _model("llama"), make_tokenizer(), _prompts(14, seed=5)
    selects: list[int] = []
    placed: list[tuple[int, int]] = []  # (newcomers written into free slots, how far the batch widened for them)
    select, fill = generation._Batch._select, generation._Batch._fill_slots

    def counting_select(batch, kept):
        selects.append(len(kept))
        return select(batch, kept)

    def counting_fill(batch, newcomers):
        before = batch.length
        left = fill(batch, newcomers)
        if len(left) < len(newcomers):
            placed.append((len(newcomers) - len(left), batch.length - before))
        return left

    monkeypatch.setattr(generation._Batch, "_select", counting_select)
    monkeypatch.setattr(generation._Batch, "_fill_slots", counting_fill)
    longest_first = _direct(model, tokenizer, prompts, lambda ids: -len(ids))
    assert len(selects) <= 4 and sum(count for count, _ in placed) >= len(prompts) - 4 - len(selects)
    assert not any(width for _, width in placed)  # longest first: no newcomer outgrows the batch
    assert _run(model, tokenizer, prompts, "generate", 1) == _run(model, tokenizer, prompts, "continuous", 4)
    placed.clear()
    shortest_first = _direct(model, tokenizer, prompts, lambda ids: len(ids))
    assert shortest_first == longest_first
    assert any(width > 0 for _, width in placed)  # some newcomer outgrew the batch and widened it in place


def test_generation_flops_counts_blocks_per_token_and_the_head_per_answer_token():
    from optimum_rku.models.geometry import generation_flops, matmul_rate

    for tied in (False, True):
        model = tiny_model("llama", tie_word_embeddings=tied)
        hidden, vocab = model.config.hidden_size, model.config.vocab_size
        layer = model.model.layers[0]
        linears = [m for m in layer.modules() if isinstance(m, torch.nn.Linear)]
        per_layer = sum(m.weight.numel() for m in linears)
        body = per_layer * model.config.num_hidden_layers
        # 2 answers: 7 + 5 prompt tokens, 4 + 3 generated -> 12 + 7 - 2 block tokens, 7 head positions
        assert generation_flops(model, 12, 7, 2) == 2.0 * (body * 17 + vocab * hidden * 7)
    with pytest.raises(ValueError, match="generated_tokens >= sequences"):
        generation_flops(model, 10, 1, 2)
    assert matmul_rate(8, 16, 32, seconds=0.01) > 0


def test_matmul_rate_is_the_best_timing_window(monkeypatch):
    """A window slowed by load elsewhere does not lower the rate: the fastest of the windows is returned."""
    import time

    from optimum_rku.models.geometry import matmul_rate

    # each window: a start and four checks (three products); the first window takes 4 s, the second 0.5 s
    clock = iter([0.0, 1.0, 2.0, 3.0, 4.0, 10.0, 10.125, 10.25, 10.375, 10.5])
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    assert matmul_rate(8, 16, 32, seconds=0.0, windows=2) == 2.0 * 8 * 16 * 32 * 3 / 0.5
    with pytest.raises(ValueError, match="windows must be >= 1, got 0"):
        matmul_rate(8, 16, 32, windows=0)


# ------------------------------------------------------------------------------------------------------- loop stop


def test_repeating_period_finds_the_shortest_span_repeated_enough() -> None:
    from optimum_rku.data.generation import LOOP_MIN_TOKENS, LOOP_REPEATS, extend_loop, repeating_period

    rng = random.Random(0)
    prefix = [rng.randrange(1000, 2000) for _ in range(40)]
    span = [rng.randrange(100) for _ in range(50)]
    assert repeating_period(prefix + span * LOOP_REPEATS) == 50
    assert repeating_period(prefix + span * (LOOP_REPEATS - 1)) is None  # seen twice: not yet a loop
    assert repeating_period(prefix + [7] * LOOP_MIN_TOKENS) == 1
    assert repeating_period(prefix + [7] * (LOOP_MIN_TOKENS - 1)) is None  # a short run of one token is no loop
    assert repeating_period([3, 4] * LOOP_MIN_TOKENS) == 2  # the shortest period, not a multiple of it
    broken = prefix + span * LOOP_REPEATS
    broken[-60] += 1  # one changed token inside the copies
    assert repeating_period(broken) is None
    assert repeating_period([rng.randrange(50) for _ in range(600)]) is None
    assert repeating_period([]) is None
    looping = prefix + span * LOOP_REPEATS + span[:7]
    assert extend_loop(looping, 400) == (prefix + span * 8)[:400]  # continued in phase, to the budget
    assert extend_loop(looping, 10) == looping  # already past the budget: unchanged
    with pytest.raises(ValueError, match="do not end in a loop"):
        extend_loop(broken, 400)


def test_loop_stops_only_at_checked_lengths() -> None:
    from optimum_rku.data.generation import LOOP_CHECK_EVERY, LOOP_MIN_TOKENS, loop_stops

    tokens = [7] * (LOOP_MIN_TOKENS + LOOP_CHECK_EVERY)
    assert loop_stops(tokens) and not loop_stops(tokens[:-1])  # the row's own length must be a checked one
    assert loop_stops(tokens[-LOOP_MIN_TOKENS:], length=len(tokens))  # only its newest tokens, its length given
    assert not loop_stops(tokens[: LOOP_MIN_TOKENS - LOOP_CHECK_EVERY])  # a checked length, but too short a run


def test_loop_stop_cuts_looping_rows_the_same_way_in_both_loops() -> None:
    """Rows of a tiny random model fall into loops: with `stop_loops` they stop computing there and their text is
    continued by the loop's period into the full-budget text, identically in both loops and at every batch size; rows
    that do not loop are unchanged."""
    from optimum_rku.data.generation import LOOP_CHECK_EVERY

    model, tokenizer = tiny_model("llama", max_position_embeddings=512), make_tokenizer()
    prompts = _prompts(6, seed=5)
    options = {"max_new_tokens": 300, "stop_strings": ()}
    full = _run(model, tokenizer, prompts, "continuous", 3, **options)
    assert "loop" not in full.reasons  # off by default
    reference = _run(model, tokenizer, prompts, "generate", 1, stop_loops=True, **options)
    assert _run(model, tokenizer, prompts, "continuous", 3, stop_loops=True, **options) == reference
    assert _run(model, tokenizer, prompts, "generate", 4, stop_loops=True, **options) == reference
    assert "loop" in reference.reasons and set(reference.reasons) - {"loop"}  # both kinds of row are exercised
    for i, (text, count, reason) in enumerate(zip(*reference)):
        if reason == "loop":
            assert count < 300 and count % LOOP_CHECK_EVERY == 0  # computed only until the loop was seen ...
            assert text == full.completions[i]  # ... continued by its period: the text of the full budget
        else:
            assert (text, count, reason) == (full.completions[i], full.counts[i], full.reasons[i])


def test_evaluate_records_why_each_answer_stopped() -> None:
    from optimum_rku.evaluation import evaluate

    model, tokenizer = tiny_model("llama", max_position_embeddings=512), make_tokenizer()
    rows = [{"question": question, "answer": "#### 2"} for question in _prompts(4, seed=5)]
    result = evaluate(model, tokenizer, "gsm8k", rows, max_new_tokens=200, progress=False, stop_loops=True)
    reasons = [sample["stopped"] for sample in result.samples]
    assert result.stop_loops and "loop" in reasons
    assert result.stopped == {reason: reasons.count(reason) for reason in set(reasons)}
    assert sum(result.stopped.values()) == len(rows)
    with pytest.raises(TypeError, match="stop_loops must be a bool"):
        evaluate(model, tokenizer, "gsm8k", rows, stop_loops="yes", progress=False)


def test_generation_loop_benchmark_compares_slot_reuse_and_reindexing(tmp_path) -> None:
    """benchmarks/generation_loop.py runs the loop with and without slot reuse on the testbed and finds the same
    completions (it exits non-zero otherwise) with the same decode work."""
    import json

    import generation_loop

    out = tmp_path / "loop.json"
    generation_loop.main(
        [
            "--limit",
            "10",
            "--max-new-tokens",
            "24",
            "--runs",
            "continuous:4",
            "reindex:4",
            "--json",
            str(out),
            "--quiet",
        ]
    )
    rows = json.loads(out.read_text())["variants"][0]["rows"]
    assert [row["loop"] for row in rows] == ["continuous", "reindex"]
    assert rows[1]["identical_to_reference"] and rows[0]["decode_row_steps"] == rows[1]["decode_row_steps"]
    assert generation.REUSE_SLOTS  # restored after the reindex run
