"""Prompts shared by calibration, recovery and evaluation: the `Question: ...\nAnswer:` format, its stop strings and
how many prompts the generation loop decodes at once by default."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

#: the plain question prompt (lm-evaluation-harness gsm8k `doc_to_text`)
PROMPT_TEMPLATE = "Question: {question}\nAnswer:"
#: where a completion ends: the next question, or an end-of-turn token written out as text
STOP_STRINGS: tuple[str, ...] = ("Question:", "</s>", "<|im_end|>")
#: rows decoded at once unless asked otherwise (evaluation, the CLI, self-generated calibration): the fastest batch
#: size measured for the generation loop on SmolLM2-135M on CPU (docs/benchmarks.md, "The generation loop")
DEFAULT_BATCH_SIZE = 32


def chat_template_error(tokenizer) -> str | None:
    """Why the tokenizer's chat template cannot render one user turn (e.g. a template that needs a system turn), or
    None when it renders."""
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "What is 1 + 1?"}], tokenize=False, add_generation_prompt=True
        )
    except Exception as err:  # jinja TemplateError, raise_exception(...) in the template, missing variables, ...
        return f"{type(err).__name__}: {' '.join(str(err).split())}"
    if not isinstance(text, str) or not text.strip():
        return "it renders an empty prompt"
    return None


def uses_chat_template(tokenizer, mode: str = "auto", warn: bool = False) -> bool:
    """Whether questions go through the tokenizer's chat template: "auto" when it has one that renders a user turn,
    "on" (required: a missing or failing template is a ValueError), "off". `warn` logs the "auto" fallback."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if mode == "on" and not has_template:
        raise ValueError(
            "RKUConfig.generation_chat_template='on' but the tokenizer has no chat_template; allowed here: 'auto' "
            "or 'off' (plain 'Question: q\\nAnswer:' prompts), or set tokenizer.chat_template."
        )
    if mode == "off" or not has_template:
        return False
    error = chat_template_error(tokenizer)
    if error is None:
        return True
    if mode == "on":
        raise ValueError(
            f"RKUConfig.generation_chat_template='on' but the tokenizer's chat_template fails to render a user turn "
            f"({error}); allowed here: 'auto' (falls back to plain 'Question: q\\nAnswer:' prompts) or 'off', or fix "
            "tokenizer.chat_template."
        )
    if warn:
        logger.warning(
            "The tokenizer's chat_template fails to render a user turn (%s): self-generated calibration uses plain "
            "'Question: q\\nAnswer:' prompts instead (generation_chat_template='auto').",
            error,
        )
    return False


def question_prompt(tokenizer, question: str, chat: bool) -> str:
    """The text the model answers: a user turn of its chat template (generation prompt added), or the plain prompt."""
    if not chat:
        return PROMPT_TEMPLATE.format(question=question)
    messages = [{"role": "user", "content": question}]
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as err:  # the template rendered a probe question but not this one
        detail = " ".join(str(err).split())
        raise ValueError(
            f"The tokenizer's chat_template fails on the question {question[:60]!r} ({type(err).__name__}: {detail}); "
            "set RKUConfig.generation_chat_template='off' (plain 'Question: q\\nAnswer:' prompts) or fix the template."
        ) from None


def qa_pair(question: Any, answer: Any) -> tuple[str, str]:
    """A worked problem as a (prompt, response) training pair: `Question: q\\nAnswer:` and " " + the answer."""
    return PROMPT_TEMPLATE.format(question=str(question).strip()), " " + str(answer).strip()
