"""Self-generated calibration: the model answers the calibration questions itself; scoring then reads its own CoT.

The tokenized result holds prompt + generated answer with a `loss_mask` over the generated tokens, which the
`decode_nll` objective uses (NLL of the generated tokens only, prompt masked).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

PROMPT_TEMPLATE = "Question: {question}\nAnswer:"
STOP_STRINGS = ("Question:", "</s>", "<|im_end|>")


def generate_answers(model, tokenizer, prompts: Sequence[str], config, batch_size: int = 16, progress: bool = True):
    """Greedy (or sampled, per config) continuations of `prompts`, cut at the first stop string."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(config.seed)
    answers: list[str] = []
    try:
        for start in tqdm(
            range(0, len(prompts), batch_size), desc="self-generating calibration", disable=not progress
        ):
            chunk = list(prompts[start : start + batch_size])
            enc = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
            kwargs = {"do_sample": config.generation_do_sample}
            if config.generation_do_sample:
                kwargs.update(temperature=config.generation_temperature, top_p=config.generation_top_p)
            with torch.no_grad():
                out = model.generate(
                    **enc, max_new_tokens=config.generation_max_new_tokens, pad_token_id=pad_id, **kwargs
                )
            for row in out[:, enc["input_ids"].shape[1] :]:
                text = tokenizer.decode(row, skip_special_tokens=True)
                cut = min((text.find(s) for s in STOP_STRINGS if s in text), default=len(text))
                answers.append(text[:cut].rstrip())
    finally:
        tokenizer.padding_side = side
        torch.random.set_rng_state(generator_state)
    return answers


def self_generated_dataset(model, tokenizer, questions: Sequence[str], config, progress: bool = True):
    """Tokenized dataset of `Question: q\\nAnswer: <model's own answer>` with a loss mask on the answer tokens."""
    import datasets

    if not questions:
        raise ValueError("The calibration set is empty: no questions to answer.")
    prompts = [PROMPT_TEMPLATE.format(question=q) for q in questions]
    answers = generate_answers(model, tokenizer, prompts, config, progress=progress)
    rows = {"input_ids": [], "attention_mask": [], "loss_mask": []}
    for prompt, answer in zip(prompts, answers):
        prompt_ids = tokenizer(prompt)["input_ids"]
        full_ids = tokenizer(prompt + " " + answer)["input_ids"][: config.calibration_seq_len]
        shared = 0
        while shared < min(len(prompt_ids), len(full_ids)) and prompt_ids[shared] == full_ids[shared]:
            shared += 1
        rows["input_ids"].append(full_ids)
        rows["attention_mask"].append([1] * len(full_ids))
        rows["loss_mask"].append([0] * shared + [1] * (len(full_ids) - shared))
    return datasets.Dataset.from_dict(rows)
