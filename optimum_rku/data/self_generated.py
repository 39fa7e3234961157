"""Self-generated calibration: the model answers the calibration questions itself; scoring then reads its own CoT.

The tokenized result holds prompt + generated answer with a `loss_mask` over the generated tokens, which the
`decode_nll` objective uses (NLL of the generated tokens only, prompt masked); every other objective reads the whole
sequence. With `num_iterations > 1` the pruner regenerates the answers between steps with the partially pruned
(masked) model, so later steps score the reasoning the smaller model actually produces.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from optimum_rku.data.context import calibration_length, context_length, report_context_cut
from optimum_rku.data.generation import generate_completions
from optimum_rku.data.prompts import DEFAULT_BATCH_SIZE, question_prompt, uses_chat_template
from optimum_rku.models.masks import masked_model

logger = logging.getLogger(__name__)


def generate_answers(
    model,
    tokenizer,
    prompts: Sequence[str],
    config,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    masks: dict | None = None,
    add_special_tokens: bool = True,
    finished_only: bool = False,
    desc: str = "self-generating calibration",
) -> list[str | None]:
    """Greedy (or sampled, per config) continuations of `prompts`, cut at the first stop string, through the shared
    generation loop; `masks` zero removed structures while it runs (the partially pruned model answers).

    `add_special_tokens=False` for prompts that already carry them (chat-templated text starts with its own BOS).
    With `finished_only`, an answer that ran to the budget or into a loop (stopped early: `stop_loops`) comes back as
    None: training on a cut answer teaches stopping mid-way. Otherwise every entry is a string.
    """
    max_new_tokens = _answer_room(model, tokenizer, prompts, config, add_special_tokens)
    sampling = None
    if config.generation_do_sample:
        sampling = {"temperature": config.generation_temperature, "top_p": config.generation_top_p}
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(config.seed)
    was_training = model.training
    model.eval()
    try:
        with masked_model(model, masks), torch.no_grad():
            out = generate_completions(
                model,
                tokenizer,
                prompts,
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
                add_special_tokens=add_special_tokens,
                progress=progress,
                desc=desc,
                sampling=sampling,
                stop_loops=finished_only,  # a looping answer is dropped anyway: stop computing it
            )
    finally:
        torch.random.set_rng_state(generator_state)
        model.train(was_training)
    return [
        None if finished_only and reason in ("budget", "loop") else text.strip()
        for text, reason in zip(out.completions, out.reasons)
    ]


def _answer_room(model, tokenizer, prompts: Sequence[str], config, add_special_tokens: bool) -> int:
    """`generation_max_new_tokens`, or less where the longest prompt plus that many tokens would not fit the context.

    The generation loop would otherwise cut the prompts down to what is left (one token when the answer budget alone
    fills a small model's context), so the model would answer questions it never saw.
    """
    wanted = config.generation_max_new_tokens
    context = context_length(model)
    if context is None or not prompts:
        return wanted
    longest = max(len(tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"]) for p in prompts)
    if longest + wanted <= context:
        return wanted
    room = max(context - longest, min(wanted, context // 2))  # a prompt that fills the context is cut to fit
    if room == wanted:
        return wanted
    logger.warning(
        "generation_max_new_tokens=%d does not fit the model's context (max_position_embeddings=%d) after the "
        "longest calibration prompt (%d tokens): answers are capped at %d new tokens.",
        wanted,
        context,
        longest,
        room,
    )
    return room


def self_generated_dataset(
    model, tokenizer, questions: Sequence[str], config, progress: bool = True, masks: dict | None = None
):
    """Tokenized dataset of question prompt + the model's own answer, with a loss mask on the answer tokens.

    The prompt is `Question: q\\nAnswer:`, or a user turn of the tokenizer's chat template (see
    `RKUConfig.generation_chat_template`). `masks` (channel masks of already-removed structures) make the partially
    pruned model answer instead of the dense one.
    """
    import datasets

    if not questions:
        raise ValueError("The calibration set is empty: no questions to answer.")
    chat = uses_chat_template(tokenizer, config.generation_chat_template, warn=True)
    prompts = [question_prompt(tokenizer, q, chat) for q in questions]
    max_length = calibration_length(model, config.calibration_seq_len)
    answers = generate_answers(
        model, tokenizer, prompts, config, progress=progress, masks=masks, add_special_tokens=not chat
    )
    rows = {"input_ids": [], "attention_mask": [], "loss_mask": []}
    for prompt, answer in zip(prompts, answers):
        prompt_ids = tokenizer(prompt, add_special_tokens=not chat)["input_ids"]
        text = prompt + (answer if chat else " " + answer) if answer else prompt
        full_ids = tokenizer(text, add_special_tokens=not chat)["input_ids"][:max_length]
        shared = 0
        while shared < min(len(prompt_ids), len(full_ids)) and prompt_ids[shared] == full_ids[shared]:
            shared += 1
        rows["input_ids"].append(full_ids)
        rows["attention_mask"].append([1] * len(full_ids))
        rows["loss_mask"].append([0] * shared + [1] * (len(full_ids) - shared))
    report_context_cut(rows, max_length, config.calibration_seq_len)
    if not any(any(m) for m in rows["loss_mask"]):
        # Nothing to read the model's own reasoning from: score the text itself (decode_nll then equals nll).
        logger.warning(
            "Self-generated calibration produced no answer tokens (the model answered every question with nothing); "
            "scoring on the question text instead."
        )
        del rows["loss_mask"]
    return datasets.Dataset.from_dict(rows)
