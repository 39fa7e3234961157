"""The one generation loop: greedy decoding with continuous batching, per-row stop strings and eos.

Evaluation (`evaluation.runner`) and self-generated calibration (`data.self_generated`) both generate through it.

Greedy decoding runs a loop of our own over one KV cache (`continuous` loop): a row leaves the batch (and the cache) at
the step it finishes, and the next waiting prompt takes its slot, so no step computes a finished row and the batch
stays full while prompts wait. Each prompt is prefilled on its own (as at batch size 1) and then joins the running
batch, left-padded in the cache to the batch's length; its positions count its own tokens only, so padding never
shifts them. Full-attention layers of the running cache append in place into spare capacity (`_GrowingLayer`),
so a decode step does not copy the whole cache as transformers' concatenating layers do. Sampling, and greedy
decoding that the model's `generation_config` would alter (e.g. a repetition penalty), go through `model.generate`
on fixed, length-sorted, left-padded batches instead (`generate` loop).

A row stops at its first eos or stop string either way; the decision is the same per-row rule in both loops (decode
the row's last few generated tokens, look for a stop string), and the continuous loop only skips the decode when the
newest token cannot end a stop string.

One file on purpose (over ~450 lines): both loops share the batching, stop-string and cache-merging rules, and
splitting them would put one decision in two places.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList
from transformers.cache_utils import DynamicLayer

from optimum_rku.data.prompts import STOP_STRINGS

#: values of `generate_completions(loop=...)`
GENERATION_LOOPS = ("auto", "continuous", "generate")


def truncate_at_stop(text: str, stop_strings: Iterable[str] = STOP_STRINGS) -> str:
    """Cut a completion at the earliest stop string, as the harness ``until`` handling does."""
    cut = len(text)
    for stop in stop_strings:
        index = text.find(stop)
        if index != -1:
            cut = min(cut, index)
    return text[:cut]


#: a row stuck in a loop repeats one span of at most LOOP_MAX_PERIOD tokens LOOP_REPEATS times in a row, over its
#: newest LOOP_MIN_TOKENS tokens or more; the check runs when a row's length is a multiple of LOOP_CHECK_EVERY (its
#: own length, so batching cannot move the cut). Greedy decoding that reached such a state repeats it to the budget.
LOOP_REPEATS = 3
LOOP_MIN_TOKENS = 128
LOOP_MAX_PERIOD = 192
LOOP_CHECK_EVERY = 16

#: why a row stopped: its eos, a stop string, the token budget, or a loop (with `stop_loops`)
STOP_REASONS = ("eos", "stop", "budget", "loop")


def repeating_period(tokens: Sequence[int]) -> int | None:
    """The shortest period p <= LOOP_MAX_PERIOD such that `tokens` end in LOOP_REPEATS copies of one p-token span
    covering at least LOOP_MIN_TOKENS tokens, or None."""
    array = np.asarray(tokens[-LOOP_REPEATS * LOOP_MAX_PERIOD :], dtype=np.int64)
    n = len(array)
    if n < LOOP_MIN_TOKENS:
        return None
    back = array[-LOOP_MAX_PERIOD - 1 : -1][::-1]  # back[p - 1] is the token p positions before the newest
    for period in (np.flatnonzero(back == array[-1]) + 1).tolist():
        span = max(LOOP_MIN_TOKENS, LOOP_REPEATS * period)
        if span > n:
            break
        tail = array[n - span :]
        if np.array_equal(tail[period:], tail[:-period]):
            return period
    return None


def loop_stops(tokens: Sequence[int], length: int | None = None) -> bool:
    """Whether the loop stop ends a row after its newest token: its length (`length`, when `tokens` are only its
    newest tokens) is a multiple of LOOP_CHECK_EVERY and it ends in a loop (`repeating_period`)."""
    length = len(tokens) if length is None else length
    return length % LOOP_CHECK_EVERY == 0 and repeating_period(tokens) is not None


def extend_loop(tokens: list[int], budget: int) -> list[int]:
    """`tokens`, which end in a loop (`repeating_period`), continued by repeating its period up to `budget` tokens:
    what greedy decoding that stays in the loop would have generated."""
    period = repeating_period(tokens)
    if period is None:
        raise ValueError("extend_loop: the tokens do not end in a loop")
    cycle = tokens[-period:]
    return tokens + [cycle[i % period] for i in range(max(budget - len(tokens), 0))]


class _StopCheck:
    """The per-row stop rule: done at the first eos (not kept), once the decoded tail shows a stop string (kept), or,
    with `loops`, once the row repeats itself (`repeating_period`, kept).

    The stop-string tail is the row's last `max(len(stop)) + 2` generated tokens, decoded with special tokens. With
    `filtered`, the decode is skipped when the newest token cannot end a stop string: a row that has not stopped yet
    had no stop string in its previous tail, so a new one must end in the text the newest token adds, which then holds
    the stop string's last character (a token whose own text shows the replacement character, i.e. an incomplete
    UTF-8 sequence, or no text at all is always decoded). Stop strings that end in whitespace disable the filter: a
    tokenizer may add a space before a token in context that its own text lacks.
    """

    def __init__(
        self, tokenizer: Any, stop_strings: Sequence[str], eos_ids: set[int], filtered: bool, loops: bool = False
    ) -> None:
        """Remember the tokenizer, the stop strings and eos ids; `filtered` enables the cheap pre-check, `loops` the
        loop stop."""
        self.tokenizer = tokenizer
        self.stop_strings = tuple(stop for stop in stop_strings if stop)
        self.eos_ids = eos_ids
        self.window = max((len(stop) for stop in self.stop_strings), default=0) + 2
        self.loops = loops
        #: how many of a row's newest tokens a decision reads
        self.history = max(self.window, LOOP_REPEATS * LOOP_MAX_PERIOD) if loops else self.window
        self.final_chars = frozenset(stop[-1] for stop in self.stop_strings)
        self.filtered = filtered and not any(char.isspace() for char in self.final_chars)
        self._may_end_stop: dict[int, bool] = {}
        self.decodes = 0

    def may_end_stop(self, token: int) -> bool:
        """Whether `token` can be the one that completes a stop string (memoized per token id)."""
        known = self._may_end_stop.get(token)
        if known is None:
            text = self.tokenizer.decode([token], skip_special_tokens=False)
            known = not text or "\ufffd" in text or any(char in text for char in self.final_chars)
            self._may_end_stop[token] = known
        return known

    def __call__(self, generated: Sequence[int], length: int | None = None) -> tuple[int, int, str] | None:
        """`(generated_count, kept_count, reason)` if the row is done after its newest token, else None. `generated`
        may be only the newest `history` tokens of a row `length` tokens long."""
        if not len(generated):
            return None
        length = len(generated) if length is None else length
        last = int(generated[-1])
        if last in self.eos_ids:
            return length, length - 1, "eos"
        if self.stop_strings and not (self.filtered and not self.may_end_stop(last)):
            self.decodes += 1
            tail = [int(token) for token in generated[-self.window :]]
            text = self.tokenizer.decode(tail, skip_special_tokens=False)
            if any(stop in text for stop in self.stop_strings):
                return length, length, "stop"
        if self.loops and loop_stops(generated, length):
            return length, length, "loop"
        return None


class _StopCriteria(StoppingCriteria):
    """`model.generate` stopping criterion: mark each row done by `_StopCheck`; generation ends once all are."""

    def __init__(self, check: _StopCheck, prompt_length: int, batch_size: int) -> None:
        """Remember where generated tokens start; per-row results start unset."""
        self.check = check
        self.prompt_length = prompt_length
        self.results: list[tuple[int, int, str] | None] = [None] * batch_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        """Return a per-row done mask; decisions depend only on that row's tokens, so batching cannot change them."""
        new_tokens = input_ids[:, self.prompt_length :]
        done = []
        for row in range(new_tokens.shape[0]):
            if self.results[row] is None:
                tail = new_tokens[row, -self.check.history :].tolist()
                self.results[row] = self.check(tail, new_tokens.shape[1])
            done.append(self.results[row] is not None)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def as_id_set(value: Any) -> set[int]:
    """Turn an int, list of ints or None into a set of token ids."""
    if value is None:
        return set()
    if isinstance(value, int):
        return {value}
    return {int(v) for v in value}


def model_device(model: Any) -> torch.device:
    """Find the device the inputs must live on."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def pad_and_eos(model: Any, tokenizer: Any) -> tuple[int, set[int]]:
    """The pad id generation uses (the eos when there is none) and every eos id of the tokenizer and the model."""
    pad_id = getattr(tokenizer, "pad_token_id", None)
    eos_ids = as_id_set(getattr(tokenizer, "eos_token_id", None))
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        eos_ids |= as_id_set(generation_config.eos_token_id)
    if pad_id is None:
        if not eos_ids:
            raise ValueError("tokenizer has neither pad_token_id nor eos_token_id; set tokenizer.pad_token first")
        pad_id = getattr(tokenizer, "eos_token_id", None)
        pad_id = pad_id if pad_id is not None else min(eos_ids)
    return int(pad_id), eos_ids


def _generation_config(pad_id: int, eos_ids: set[int], max_new_tokens: int, sampling: dict | None) -> GenerationConfig:
    """What `model.generate` runs with; other settings (e.g. repetition_penalty) come from model.generation_config."""
    return GenerationConfig(
        do_sample=sampling is not None,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id,
        eos_token_id=sorted(eos_ids) or None,
        use_cache=True,
        # Neutral sampling values (unless sampling is asked for) so a sampling-oriented model generation_config
        # cannot leak in (or warn); other settings (e.g. repetition_penalty) are inherited from
        # model.generation_config, as in the harness.
        temperature=(sampling or {}).get("temperature", 1.0),
        top_p=(sampling or {}).get("top_p", 1.0),
        top_k=50,
        typical_p=1.0,
    )


def _base_model(model: Any) -> Any:
    """The transformers model under a wrapper such as a PEFT model."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def continuous_unsupported(model: Any, generation_config: GenerationConfig) -> str | None:
    """Why the continuous loop cannot reproduce `model.generate` for this model and config, or None if it can.

    It can when decoding is plain greedy: `generate` would add no logits processor and no stopping criterion beyond
    eos and max_new_tokens once the model's own generation_config is merged in.
    """
    from transformers.generation import GenerationMode, LogitsProcessorList

    base = _base_model(model)
    if generation_config.do_sample:
        return "sampling (do_sample=True) runs through model.generate"
    if getattr(getattr(base, "config", None), "is_encoder_decoder", False):
        return "encoder-decoder models are not supported"
    if not callable(getattr(base, "_prepare_generation_config", None)):
        return f"{type(base).__name__} is not a transformers generation model"
    try:
        merged, _ = base._prepare_generation_config(generation_config)
        if merged.get_generation_mode() != GenerationMode.GREEDY_SEARCH:
            return f"model.generation_config selects {merged.get_generation_mode().value}, not greedy search"
        if merged.stop_strings or merged.max_time is not None:
            return "model.generation_config sets stop_strings or max_time"
        processors = base._get_logits_processor(
            generation_config=merged,
            input_ids_seq_length=1,
            encoder_input_ids=None,
            prefix_allowed_tokens_fn=None,
            logits_processor=LogitsProcessorList(),
            device="cpu",
            model_kwargs={},
        )
    except Exception as error:  # noqa: BLE001 - any failure to inspect means: use model.generate
        return f"cannot inspect the model's generation config ({type(error).__name__}: {error})"
    if len(processors):
        names = ", ".join(type(p).__name__ for p in processors)
        return f"model.generation_config adds logits processors ({names})"
    return None


# ---------------------------------------------------------------------------------------------- the continuous loop


class _CacheUnsupported(RuntimeError):
    """The model's KV cache is not one whose rows the continuous loop knows how to move."""


#: spare positions a running batch's full-attention cache reserves, so appending a token writes in place (0: keep
#: transformers' DynamicLayer, which concatenates, copying the whole cache every decode step)
CACHE_HEADROOM = 128


#: a row that finishes while prompts wait leaves its cache slot to the next one (False: re-index the whole cache at
#: every departure and arrival, as before slots were reused; benchmarks/generation_loop.py measures the difference)
REUSE_SLOTS = True


def _cache_layers(cache: Any) -> list[Any]:
    """The layers of a transformers DynamicCache with full or sliding-window attention, else _CacheUnsupported."""
    from transformers.cache_utils import DynamicCache, DynamicSlidingWindowLayer

    if type(cache) is not DynamicCache or getattr(cache, "offloading", False):
        raise _CacheUnsupported(f"the model returned a {type(cache).__name__}, not a plain DynamicCache")
    layers = list(cache.layers)
    for layer in layers:
        if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer, _GrowingLayer) or not layer.is_initialized:
            raise _CacheUnsupported(f"unsupported cache layer {type(layer).__name__}")
        if getattr(layer, "record_past", False):
            raise _CacheUnsupported("the cache records past states")
        if _window(layer) is not None and (not isinstance(_window(layer), int) or _window(layer) < 2):
            raise _CacheUnsupported(f"sliding window {_window(layer)!r}")
    return layers


def _window(layer: Any) -> int | None:
    """The sliding window of a cache layer, None for full attention."""
    return getattr(layer, "sliding_window", None)


def _stored(layer: Any, length: int) -> int:
    """How many positions `layer` holds for a padded sequence of `length` tokens (a sliding layer: window - 1)."""
    window = _window(layer)
    return length if window is None else min(length, window - 1)


def _set_length(layer: Any, length: int) -> None:
    """Record the padded sequence length on a sliding-window layer (full layers read it from their tensors)."""
    if hasattr(layer, "cumulative_length"):
        layer.cumulative_length = length


def _left_pad(tensor: torch.Tensor, amount: int) -> torch.Tensor:
    """Add `amount` zero positions before the sequence axis (-2) of a [batch, heads, seq, dim] tensor."""
    return F.pad(tensor, (0, 0, amount, 0)) if amount else tensor


class _GrowingLayer(DynamicLayer):
    """A full-attention cache layer that appends in place into spare capacity of one buffer per keys / values.

    `keys` / `values` are views of positions `[start, start + length)` of the buffers, so the model sees what a
    DynamicLayer would hold; only running out of capacity (every `CACHE_HEADROOM` steps) copies the cache.
    """

    def __init__(self, key_buffer: torch.Tensor, value_buffer: torch.Tensor, start: int, length: int) -> None:
        """Adopt buffers whose positions `[start, start + length)` hold the cache."""
        super().__init__()
        self.device, self.is_initialized = key_buffer.device, True
        self.key_buffer, self.value_buffer, self.start, self.length = key_buffer, value_buffer, start, length
        self._refresh()

    def _refresh(self) -> None:
        end = self.start + self.length
        self.keys, self.values = self.key_buffer[:, :, self.start : end], self.value_buffer[:, :, self.start : end]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new positions after the cached ones (moving to a larger buffer when full); return the views."""
        new = key_states.shape[-2]
        if self.start + self.length + new > self.key_buffer.shape[-2]:
            capacity = self.length + new + CACHE_HEADROOM
            self.key_buffer = _reserve(self.keys, capacity)
            self.value_buffer = _reserve(self.values, capacity)
            self.start = 0
        end = self.start + self.length
        self.key_buffer[:, :, end : end + new].copy_(key_states)
        self.value_buffer[:, :, end : end + new].copy_(value_states)
        self.length += new
        self._refresh()
        return self.keys, self.values

    def select(self, index: torch.Tensor, drop: int) -> None:
        """Keep the batch rows at `index` and drop the first `drop` positions (padding every kept row shares)."""
        self.key_buffer = self.key_buffer.index_select(0, index)
        self.value_buffer = self.value_buffer.index_select(0, index)
        self.start, self.length = self.start + drop, self.length - drop
        self._refresh()


def _reserve(tensor: torch.Tensor, capacity: int) -> torch.Tensor:
    """A buffer of `capacity` positions whose first ones hold `tensor` ([batch, heads, seq, dim])."""
    shape = (*tensor.shape[:2], capacity, tensor.shape[-1])
    buffer = torch.empty(shape, dtype=tensor.dtype, device=tensor.device)
    buffer[:, :, : tensor.shape[-2]].copy_(tensor)
    return buffer


def _merged_buffer(parts: list[tuple[torch.Tensor, int]], target: int) -> torch.Tensor:
    """One buffer holding each part's rows right-aligned at `target` positions (zeros before), plus headroom.

    `parts` are `(tensor, stored)`: a [rows, heads, stored, dim] cache and how many positions it holds."""
    first = parts[0][0]
    rows = sum(tensor.shape[0] for tensor, _ in parts)
    buffer = torch.empty(
        (rows, first.shape[1], target + CACHE_HEADROOM, first.shape[-1]), dtype=first.dtype, device=first.device
    )
    row = 0
    for tensor, stored in parts:
        count = tensor.shape[0]
        buffer[row : row + count, :, : target - stored].zero_()  # the left padding: masked, but must be finite
        buffer[row : row + count, :, target - stored : target].copy_(tensor)
        row += count
    return buffer


@dataclass
class _Row:
    """One prompt in the running batch: its index, the tokens it holds in the cache, what it generated."""

    index: int
    cached: int
    generated: list[int] = field(default_factory=list)


class _Batch:
    """The running batch: one KV cache whose rows are left-padded to a common `length`, one `_Row` each.

    Full-attention layers become `_GrowingLayer`s (appending writes in place); sliding-window layers stay
    transformers' own (they hold at most window - 1 positions, so their per-step copy stays small). When every layer
    grows in place, a row that leaves while prompts still wait leaves its slot (`None` in `rows`) to the next newcomer,
    which is written into it: neither departure nor arrival copies the cache. Otherwise rows are re-indexed."""

    def __init__(self) -> None:
        """Start empty."""
        self.cache: Any = None
        self.layers: list[Any] = []
        self.rows: list[_Row | None] = []
        self.length = 0

    @property
    def live(self) -> int:
        """How many rows are running (free slots not counted)."""
        return sum(row is not None for row in self.rows)

    def _in_place(self) -> bool:
        return bool(self.layers) and all(isinstance(layer, _GrowingLayer) for layer in self.layers)

    def add(self, newcomers: list[tuple[_Row, Any]]) -> None:
        """Add prefilled rows (each with its own batch-1 cache): into free slots where there are, else appended, every
        row left-padded to the longest."""
        newcomers = self._fill_slots(newcomers)
        self.compact()
        if not newcomers:
            return
        parts = [(_cache_layers(cache), row.cached) for row, cache in newcomers]
        if self.cache is None:
            self.cache, self.layers = newcomers[0][1], parts[0][0]
            parts = parts[1:]
            current = newcomers[0][0].cached
        else:
            current = self.length
        if any(len(layers) != len(self.layers) for layers, _ in parts):
            raise _CacheUnsupported("caches of different depth")
        target = max([current] + [length for _, length in parts])
        for position, layer in enumerate(self.layers):
            if any(_window(layers[position]) != _window(layer) for layers, _ in parts):
                raise _CacheUnsupported("cache layers of different kinds")
            sources = [(layer, current), *((layers[position], length) for layers, length in parts)]
            if _window(layer) is None and CACHE_HEADROOM > 0:
                keys, values = (
                    _merged_buffer([(getattr(source, name), length) for source, length in sources], target)
                    for name in ("keys", "values")
                )
                grown = _GrowingLayer(keys, values, 0, target)
                self.layers[position] = self.cache.layers[position] = grown
                continue
            keys, values = [], []
            for source, length in sources:
                amount = _stored(layer, target) - _stored(layer, length)
                keys.append(_left_pad(source.keys, amount))
                values.append(_left_pad(source.values, amount))
            layer.keys = keys[0] if len(keys) == 1 else torch.cat(keys, dim=0)
            layer.values = values[0] if len(values) == 1 else torch.cat(values, dim=0)
            _set_length(layer, target)
        self.length = target
        self.rows.extend(row for row, _ in newcomers)

    def _fill_slots(self, newcomers: list[tuple[_Row, Any]]) -> list[tuple[_Row, Any]]:
        """Write newcomers into free slots, right-aligned at the batch length (zeros before); return those left over.

        A newcomer longer than the batch first widens it to the left into positions the views no longer show (padding
        dropped earlier); where there are not enough, the free slots are compacted away instead (`add` appends)."""
        free = [slot for slot, row in enumerate(self.rows) if row is None]
        if not free or not newcomers or not self._in_place():
            return newcomers
        longest = max(row.cached for row, _ in newcomers[: len(free)])
        widen = max(longest - self.length, 0)
        if widen > min(layer.start for layer in self.layers):
            self.compact()
            return newcomers
        placed = [(slot, row, _cache_layers(cache)) for slot, (row, cache) in zip(free, newcomers)]
        for position, layer in enumerate(self.layers):
            layer.start, layer.length = layer.start - widen, layer.length + widen
            end = layer.start + layer.length
            for buffer in (layer.key_buffer, layer.value_buffer):
                buffer[:, :, layer.start : layer.start + widen].zero_()  # new left padding: masked, must be finite
            for slot, row, layers in placed:
                source = layers[position]  # a batch-1 prefill of a model whose layers all grow: full attention
                for buffer, tensor in ((layer.key_buffer, source.keys), (layer.value_buffer, source.values)):
                    buffer[slot, :, layer.start : end - row.cached].zero_()
                    buffer[slot, :, end - row.cached : end].copy_(tensor[0])
            layer._refresh()
        self.length += widen
        for slot, row, _ in placed:
            self.rows[slot] = row
        return newcomers[len(placed) :]

    def keep(self, kept: list[int], reuse: bool = False) -> None:
        """Keep only the rows at `kept` (in order), then drop the left padding every remaining row shares. With
        `reuse` (prompts wait) and in-place layers, the others' slots stay for newcomers and the padding is dropped
        by moving the views, so nothing is copied."""
        if len(kept) == len(self.rows):
            return
        if not (reuse and REUSE_SLOTS) or not self._in_place() or not kept:
            self._select(kept)
            return
        kept_set = set(kept)
        self.rows = [row if slot in kept_set else None for slot, row in enumerate(self.rows)]
        shared_pad = self.length - max(row.cached for row in self.rows if row is not None)
        for layer in self.layers:
            layer.start, layer.length = layer.start + shared_pad, layer.length - shared_pad
            layer._refresh()
        self.length -= shared_pad

    def compact(self) -> None:
        """Remove the free slots (re-indexing the cache), so every row in the batch runs."""
        if None in self.rows:
            self._select([slot for slot, row in enumerate(self.rows) if row is not None])

    def _select(self, kept: list[int]) -> None:
        """Re-index the cache to the rows at `kept` and drop the left padding they all share."""
        self.rows = [self.rows[i] for i in kept]
        if not self.rows:
            self.cache, self.layers, self.length = None, [], 0
            return
        index = torch.tensor(kept, dtype=torch.long, device=self.layers[0].keys.device)
        shared_pad = self.length - max(row.cached for row in self.rows)
        length = self.length - shared_pad
        for layer in self.layers:
            if isinstance(layer, _GrowingLayer):
                layer.select(index, shared_pad)
                continue
            stored = _stored(layer, length)
            keys, values = layer.keys.index_select(0, index), layer.values.index_select(0, index)
            layer.keys, layer.values = keys[:, :, keys.shape[2] - stored :], values[:, :, values.shape[2] - stored :]
            _set_length(layer, length)
        self.length = length


def _forward_arguments(model: Any) -> tuple[str, bool]:
    """The model's keyword for the KV cache (`cache` or the older `past_key_values`) and whether it takes
    `logits_to_keep` (then only the last position's logits are computed, as `model.generate` does)."""
    parameters = inspect.signature(_base_model(model).forward).parameters
    return ("cache" if "cache" in parameters else "past_key_values"), "logits_to_keep" in parameters


def _output_cache(output: Any) -> Any:
    """The KV cache a forward returned, under either name."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def _continuous(
    model: Any,
    encoded: list[list[int]],
    order: list[int],
    batch_size: int,
    max_new_tokens: int,
    check: _StopCheck,
    on_done: Any,
) -> None:
    """Greedy-decode the prompts in `order` with at most `batch_size` rows per step; call `on_done(index, tokens,
    (generated, keep, reason))` as each finishes. Raises _CacheUnsupported (before any row finishes) for unknown
    caches."""
    device = model_device(model)
    cache_name, keeps_logits = _forward_arguments(model)
    extra = {"logits_to_keep": 1} if keeps_logits else {}
    queue = list(reversed(order))  # pop() from the end takes the next prompt in order
    batch = _Batch()
    while queue or batch.rows:
        newcomers = []
        while queue and batch.live + len(newcomers) < batch_size:
            index = queue.pop()
            ids = encoded[index]
            output = model(
                input_ids=torch.tensor([ids], dtype=torch.long, device=device),
                position_ids=torch.arange(len(ids), device=device)[None],
                use_cache=True,
                **extra,
            )
            row = _Row(index, len(ids), [int(output.logits[0, -1].float().argmax())])
            cache = _output_cache(output)
            del output
            if batch.cache is None:
                _cache_layers(cache)  # an unknown cache fails here, before any row is reported done
            result = check(row.generated)
            if result is None and max_new_tokens > 1:
                newcomers.append((row, cache))
            else:
                on_done(row.index, row.generated, result or (1, 1, "budget"))
        if newcomers:
            batch.add(newcomers)
        batch.compact()  # free slots no newcomer took
        if not batch.rows:
            continue
        rows = batch.rows
        input_ids = torch.tensor([[row.generated[-1]] for row in rows], dtype=torch.long, device=device)
        positions = torch.tensor([[row.cached] for row in rows], dtype=torch.long, device=device)
        pads = [batch.length - row.cached for row in rows]
        attention_mask = None
        if any(pads):
            attention_mask = (
                torch.arange(batch.length + 1, device=device)[None] >= torch.tensor(pads, device=device)[:, None]
            ).long()
        output = model(
            input_ids=input_ids,
            position_ids=positions,
            attention_mask=attention_mask,
            use_cache=True,
            **{cache_name: batch.cache},
            **extra,
        )
        next_tokens = output.logits[:, -1].float().argmax(dim=-1).tolist()
        del output
        batch.length += 1
        for layer in batch.layers:
            _set_length(layer, batch.length)
        kept = []
        for position, (row, token) in enumerate(zip(rows, next_tokens)):
            row.cached += 1
            row.generated.append(int(token))
            result = check(row.generated)
            if result is None and len(row.generated) < max_new_tokens:
                kept.append(position)
            else:
                on_done(row.index, row.generated, result or (len(row.generated), len(row.generated), "budget"))
        batch.keep(kept, reuse=bool(queue))


# -------------------------------------------------------------------------------------------------- the entry point


class Generations(NamedTuple):
    """What `generate_completions` returns, one entry per prompt."""

    completions: list[str]
    counts: list[int]
    reasons: list[str]


def generate_completions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    batch_size: int,
    max_new_tokens: int,
    add_special_tokens: bool = True,
    pad_id: int | None = None,
    eos_ids: set[int] | None = None,
    progress: bool = True,
    stop_strings: Sequence[str] = STOP_STRINGS,
    desc: str = "generating",
    sampling: dict[str, float] | None = None,
    loop: str = "auto",
    stop_loops: bool = False,
) -> Generations:
    """Decode all prompts, at most `batch_size` at a time; return completions, generated token counts and why each
    row stopped (`STOP_REASONS`).

    Greedy unless `sampling` gives `temperature` and `top_p`. Each row stops at its first eos or stop string (the
    completion is cut there); pad and eos ids default to the tokenizer's and the model's. With `stop_loops`, a row
    that repeats one span of tokens (`repeating_period`) stops computing there and its text is continued by repeating
    that span up to the budget (`extend_loop`): greedy decoding in such a state repeats it, so the text is the one the
    full budget would give (checked on real answers: benchmarks/loop_stop.py), at a fraction of the cost; its count
    is the tokens actually computed. `loop` picks the decoding loop: "continuous" (greedy, finished rows leave the batch and waiting prompts take their place), "generate"
    (fixed, length-sorted, left-padded batches through `model.generate`) or "auto" (continuous when it reproduces
    `model.generate`: greedy, and no logits processor from the model's generation_config; else generate).
    """
    from tqdm.auto import tqdm

    if loop not in GENERATION_LOOPS:
        raise ValueError(f"loop must be one of {GENERATION_LOOPS}, got {loop!r}")
    if pad_id is None or eos_ids is None:
        pad_id, eos_ids = pad_and_eos(model, tokenizer)
    generation_config = _generation_config(pad_id, eos_ids, max_new_tokens, sampling)
    if loop != "generate":
        reason = continuous_unsupported(model, generation_config)
        if reason is not None and loop == "continuous":
            raise ValueError(f"loop='continuous' cannot run here: {reason}; use loop='auto' or loop='generate'")
        loop = "generate" if reason is not None else "continuous"

    encoded = _encode(model, tokenizer, prompts, add_special_tokens, max_new_tokens)
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    completions: list[str] = [""] * len(prompts)
    counts: list[int] = [0] * len(prompts)
    reasons: list[str] = [""] * len(prompts)
    # Decode with special tokens so "</s>"/"<|im_end|>" act as stop strings, then drop the rest like skip_special_tokens.
    special_tokens = sorted((t for t in getattr(tokenizer, "all_special_tokens", ()) if t), key=len, reverse=True)

    with tqdm(total=len(prompts), desc=desc, disable=not progress, unit="q") as bar:

        def finish(index: int, tokens: Sequence[int], result: tuple[int, int, str]) -> None:
            generated, keep, reasons[index] = result
            counts[index] = int(generated)
            kept = list(tokens[:keep])
            if reasons[index] == "loop":
                kept = extend_loop(kept, max_new_tokens)
            text = truncate_at_stop(tokenizer.decode(kept, skip_special_tokens=False), stop_strings)
            for special in special_tokens:
                text = text.replace(special, "")
            completions[index] = text
            bar.update(1)

        if loop == "continuous":
            check = _StopCheck(tokenizer, stop_strings, eos_ids, filtered=True, loops=stop_loops)
            try:
                _continuous(model, encoded, order, batch_size, max_new_tokens, check, finish)
                return Generations(completions, counts, reasons)
            except _CacheUnsupported:
                if bar.n:  # raised only by the first merge, before any row finished; never mix the two loops
                    raise
        check = _StopCheck(tokenizer, stop_strings, eos_ids, filtered=False, loops=stop_loops)
        _fixed_batches(model, encoded, order, batch_size, pad_id, generation_config, check, finish)
    return Generations(completions, counts, reasons)


def _encode(
    model: Any, tokenizer: Any, prompts: Sequence[str], add_special_tokens: bool, max_new_tokens: int
) -> list[list[int]]:
    """Token ids of each prompt, left-truncated (with a warning, as lm-evaluation-harness does) where prompt plus
    answer budget would not fit the model's positions; an empty prompt is an error."""
    encoded = [list(tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]) for prompt in prompts]
    empty = [index for index, ids in enumerate(encoded) if not ids]
    if empty:
        raise ValueError(f"prompt(s) at index {empty[:5]} encode to no tokens; every prompt needs at least one token")
    max_positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(max_positions, int) and max_positions > 0:
        budget = max(max_positions - max_new_tokens, 1)
        truncated = sum(len(ids) > budget for ids in encoded)
        if truncated:
            warnings.warn(
                f"{truncated} prompt(s) exceed max_position_embeddings - max_new_tokens = {budget} tokens and were "
                "left-truncated (as lm-evaluation-harness does); consider a smaller num_fewshot",
                stacklevel=4,
            )
            encoded = [ids[-budget:] for ids in encoded]
    return encoded


def _fixed_batches(
    model: Any,
    encoded: list[list[int]],
    order: list[int],
    batch_size: int,
    pad_id: int,
    generation_config: GenerationConfig,
    check: _StopCheck,
    on_done: Any,
) -> None:
    """`model.generate` on consecutive slices of `order`, left-padded to the slice's longest prompt."""
    device = model_device(model)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, index in enumerate(batch):
            ids = encoded[index]
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        criteria = _StopCriteria(check, width, len(batch))
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            generation_config=generation_config,
            stopping_criteria=StoppingCriteriaList([criteria]),
        )
        new_tokens = output[:, width:].cpu()
        for row, index in enumerate(batch):
            tokens = new_tokens[row].tolist()
            on_done(index, tokens, criteria.results[row] or (len(tokens), len(tokens), "budget"))
