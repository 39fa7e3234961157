"""benchmarks/loop_stop.py: the replay of the loop stop over answers generated to the full budget."""

from conftest import make_tokenizer
from loop_stop import first_stop, replay

from optimum_rku.data.generation import LOOP_CHECK_EVERY, LOOP_MIN_TOKENS


def test_replay_finds_the_stop_and_the_same_text_as_the_budget():
    tokenizer = make_tokenizer()  # one token per character
    looping = "abc " + "xy" * 200  # loops from the 5th character on, to a budget of 404 tokens
    ended = "a short answer that ended on its own"
    samples = [
        {"problem": 0, "completion": looping, "generated_tokens": 404},
        {"problem": 1, "completion": ended, "generated_tokens": len(ended)},
    ]
    tokens = tokenizer(looping, add_special_tokens=False)["input_ids"]
    stop = first_stop(tokens)
    assert stop is not None and stop % LOOP_CHECK_EVERY == 0 and LOOP_MIN_TOKENS <= stop < len(tokens)
    assert first_stop(tokenizer(ended, add_special_tokens=False)["input_ids"]) is None
    result = replay(samples, tokenizer, budget=404)
    assert (result["answers"], result["hit_budget"], result["stopped"], result["false_stops"]) == (2, 1, 1, 0)
    assert result["identical_text"] == 1 and result["boxed_changed"] == result["flexible_changed"] == 0
    assert result["tokens_saved"] == 404 - stop and not result["changed"]
