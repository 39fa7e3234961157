"""The one generation loop: batched decoding with left padding, per-row stop strings and eos.

Evaluation (`evaluation.runner`) and self-generated calibration (`data.self_generated`) both generate through it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from optimum_rku.data.prompts import STOP_STRINGS


def truncate_at_stop(text: str, stop_strings: Iterable[str] = STOP_STRINGS) -> str:
    """Cut a completion at the earliest stop string, as the harness ``until`` handling does."""
    cut = len(text)
    for stop in stop_strings:
        index = text.find(stop)
        if index != -1:
            cut = min(cut, index)
    return text[:cut]


class _StopCriteria(StoppingCriteria):
    """Mark each row done at its first eos or stop string; generation ends once every row is done."""

    def __init__(
        self, tokenizer: Any, prompt_length: int, batch_size: int, stop_strings: Sequence[str], eos_ids: set[int]
    ) -> None:
        """Remember where generated tokens start and how many tail tokens must be decoded to see a stop string."""
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.stop_strings = tuple(stop_strings)
        self.eos_ids = eos_ids
        self.window = max((len(stop) for stop in self.stop_strings), default=0) + 2
        self.generated: list[int | None] = [None] * batch_size
        self.keep: list[int | None] = [None] * batch_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        """Return a per-row done mask; decisions depend only on that row's tokens, so batching cannot change them."""
        new_tokens = input_ids[:, self.prompt_length :]
        length = new_tokens.shape[1]
        done = []
        for row in range(new_tokens.shape[0]):
            if self.generated[row] is None and length > 0:
                last = int(new_tokens[row, -1])
                if last in self.eos_ids:
                    self.generated[row], self.keep[row] = length, length - 1
                elif self.stop_strings:
                    tail = new_tokens[row, -self.window :].tolist()
                    text = self.tokenizer.decode(tail, skip_special_tokens=False)
                    if any(stop in text for stop in self.stop_strings):
                        self.generated[row], self.keep[row] = length, length
            done.append(self.generated[row] is not None)
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
) -> tuple[list[str], list[int]]:
    """Decode all prompts in length-sorted, left-padded batches; return completions and generated token counts.

    Greedy unless `sampling` gives `temperature` and `top_p`. Each row stops at its first eos or stop string (the
    completion is cut there); pad and eos ids default to the tokenizer's and the model's.
    """
    from tqdm.auto import tqdm

    if pad_id is None or eos_ids is None:
        pad_id, eos_ids = pad_and_eos(model, tokenizer)

    encoded = [list(tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]) for prompt in prompts]
    max_positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(max_positions, int) and max_positions > 0:
        budget = max(max_positions - max_new_tokens, 1)
        truncated = sum(len(ids) > budget for ids in encoded)
        if truncated:
            warnings.warn(
                f"{truncated} prompt(s) exceed max_position_embeddings - max_new_tokens = {budget} tokens and were "
                "left-truncated (as lm-evaluation-harness does); consider a smaller num_fewshot",
                stacklevel=3,
            )
            encoded = [ids[-budget:] for ids in encoded]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    completions: list[str] = [""] * len(prompts)
    counts: list[int] = [0] * len(prompts)
    device = model_device(model)
    # Decode with special tokens so "</s>"/"<|im_end|>" act as stop strings, then drop the rest like skip_special_tokens.
    special_tokens = sorted((t for t in getattr(tokenizer, "all_special_tokens", ()) if t), key=len, reverse=True)
    generation_config = GenerationConfig(
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
    with tqdm(total=len(prompts), desc=desc, disable=not progress, unit="q") as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, index in enumerate(batch):
                ids = encoded[index]
                input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                attention_mask[row, width - len(ids) :] = 1
            criteria = _StopCriteria(tokenizer, width, len(batch), stop_strings, eos_ids)
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=generation_config,
                stopping_criteria=StoppingCriteriaList([criteria]),
            )
            new_tokens = output[:, width:].cpu()
            for row, index in enumerate(batch):
                keep = criteria.keep[row]
                generated = criteria.generated[row]
                tokens = new_tokens[row].tolist()
                if keep is None:
                    keep = generated = len(tokens)
                counts[index] = int(generated)
                text = truncate_at_stop(tokenizer.decode(tokens[:keep], skip_special_tokens=False), stop_strings)
                for special in special_tokens:
                    text = text.replace(special, "")
                completions[index] = text
            bar.update(len(batch))
    return completions, counts
