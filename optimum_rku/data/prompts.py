"""Prompts shared by calibration, recovery and evaluation: the `Question: ...\nAnswer:` format, its stop strings and
how many prompts the generation loop decodes at once by default."""

from __future__ import annotations

from typing import Any

#: the plain question prompt (lm-evaluation-harness gsm8k `doc_to_text`)
PROMPT_TEMPLATE = "Question: {question}\nAnswer:"
#: where a completion ends: the next question, or an end-of-turn token written out as text
STOP_STRINGS: tuple[str, ...] = ("Question:", "</s>", "<|im_end|>")
#: rows decoded at once unless asked otherwise (evaluation, the CLI, self-generated calibration): the fastest batch
#: size measured for the generation loop on SmolLM2-135M on CPU (docs/benchmarks.md, "The generation loop")
DEFAULT_BATCH_SIZE = 32


def uses_chat_template(tokenizer, mode: str = "auto") -> bool:
    """Whether questions go through the tokenizer's chat template: "auto" when it has one, "on" (required), "off"."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if mode == "on" and not has_template:
        raise ValueError(
            "RKUConfig.generation_chat_template='on' but the tokenizer has no chat_template; allowed here: 'auto' "
            "or 'off' (plain 'Question: q\\nAnswer:' prompts), or set tokenizer.chat_template."
        )
    return mode != "off" and has_template


def question_prompt(tokenizer, question: str, chat: bool) -> str:
    """The text the model answers: a user turn of its chat template (generation prompt added), or the plain prompt."""
    if not chat:
        return PROMPT_TEMPLATE.format(question=question)
    messages = [{"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def qa_pair(question: Any, answer: Any) -> tuple[str, str]:
    """A worked problem as a (prompt, response) training pair: `Question: q\\nAnswer:` and " " + the answer."""
    return PROMPT_TEMPLATE.format(question=str(question).strip()), " " + str(answer).strip()
