"""Recovery data: prompt/response pairs from many layouts, tokenized with the loss on the response, and a collator."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from optimum_rku.config import DEFAULT_ANSWER_TOKENS
from optimum_rku.data.prompts import chat_template_error, qa_pair, question_prompt
from optimum_rku.data.providers import get_provider

logger = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 512


IGNORE_INDEX = -100

#: how the description of `self_distillation_dataset`'s rows (what recovery records as its data) begins
OWN_ANSWERS = "the dense model's own answers"

#: how question/answer rows are laid out: "auto" (the tokenizer's chat template when it has one), "on", "off"
CHAT_TEMPLATE_MODES = ("auto", "on", "off")


def recovery_chat_template(tokenizer, mode: str = "auto") -> bool:
    """Whether question/answer rows are asked through the tokenizer's chat template: "auto" when it has one that
    renders a user turn (else plain rows, with a warning when it fails), "on" (required), "off"."""
    if not isinstance(mode, str) or mode not in CHAT_TEMPLATE_MODES:
        raise ValueError(
            f"chat_template={mode!r} is not supported; allowed: {', '.join(map(repr, CHAT_TEMPLATE_MODES))}."
        )
    if mode == "off":
        return False
    if not getattr(tokenizer, "chat_template", None):
        if mode == "on":
            raise ValueError(
                "chat_template='on' but the tokenizer has no chat_template; allowed here: 'auto' or 'off' (plain "
                "'Question: q\\nAnswer: a' rows), or set tokenizer.chat_template."
            )
        return False
    error = chat_template_error(tokenizer)
    if error is None:
        return True
    if mode == "on":
        raise ValueError(
            f"chat_template='on' but the tokenizer's chat_template fails to render a user turn ({error}); allowed "
            "here: 'auto' (falls back to plain 'Question: q\\nAnswer: a' rows) or 'off', or fix the template."
        )
    logger.warning(
        "The tokenizer's chat_template fails to render a user turn (%s): recovery rows use the plain "
        "'Question: q\\nAnswer: a' format instead (chat_template='auto').",
        error,
    )
    return False


class QAFormat:
    """(prompt, response) of a question/answer row, the way the model is asked.

    Chat: the prompt is a user turn of the tokenizer's chat template with its generation prompt, the response the
    answer (the eos that ends the turn is appended at tokenization). Plain: `Question: q\\nAnswer:` and `" " + a`.
    """

    def __init__(self, tokenizer, chat: bool):
        self.tokenizer, self.chat, self.used = tokenizer, chat, False

    def __call__(self, question: Any, answer: Any) -> tuple[str, str]:
        self.used = True
        if not self.chat:
            return qa_pair(question, answer)
        question, answer = str(question).strip(), str(answer).strip()
        try:
            return question_prompt(self.tokenizer, question, True), answer
        except ValueError as err:  # the template rendered a probe question but not this one
            detail = str(err).split("; set RKUConfig.generation_chat_template", 1)[0]
            raise ValueError(f"{detail}; pass chat_template='off' (plain rows) or fix the template.") from None


def _rows_to_pairs(
    rows: Sequence[Any], columns: Sequence[str], source: str, qa: QAFormat
) -> list[tuple[str | None, str]]:
    """(prompt, response) pairs from rows with a `text`, `prompt`/`response` or `question`/`answer` layout."""
    cols = set(columns)
    if {"prompt", "response"} <= cols:
        return [(str(r["prompt"]), str(r["response"])) for r in rows]
    if {"question", "answer"} <= cols:
        return [qa(r["question"], r["answer"]) for r in rows]
    if "text" in cols:
        return [(None, str(r["text"])) for r in rows]
    raise ValueError(
        f"Recovery data {source} has columns {sorted(cols)}; allowed layouts: a 'text' column, "
        "'prompt' + 'response' columns, or 'question' + 'answer' columns."
    )


def _pairs_from_list(items: Sequence[Any], qa: QAFormat) -> list[tuple[str | None, str]]:
    if all(isinstance(x, str) for x in items):
        return [(None, x) for x in items]
    if all(isinstance(x, Mapping) for x in items):
        keys = set(items[0])
        for x in items:
            if set(x) != keys:
                raise ValueError(f"Recovery rows must all have the same keys, got {sorted(keys)} and {sorted(x)}.")
        return _rows_to_pairs(items, sorted(keys), "(list of dicts)", qa)
    kinds = sorted({type(x).__name__ for x in items})
    raise TypeError(f"A recovery list must hold only strings or only dicts, got {kinds}.")


def _local_pairs(data_files: Any, num_samples: int | None, seed: int, qa: QAFormat) -> tuple[list, dict]:
    """Pairs from local json/jsonl/csv/parquet files of any supported layout, shuffled with `seed`."""
    from optimum_rku.data.calibration import files_label, load_local_files

    ds = load_local_files(data_files, "Recovery")
    source = str(data_files)
    if len(ds) == 0:
        raise ValueError(f"The recovery dataset {source!r} is empty.")
    ds = ds.shuffle(seed=seed)
    if num_samples is not None:
        ds = ds.select(range(min(num_samples, len(ds))))
    return _rows_to_pairs(ds, ds.column_names, repr(source), qa), {"dataset": files_label(source), "seed": seed}


def _has_own_bos(tokenizer, prompt: str) -> bool:
    """Whether `prompt` already starts with the BOS text (a rendered chat template): then none is added again."""
    bos = getattr(tokenizer, "bos_token", None)
    return bool(bos) and prompt.startswith(bos)


def _encode_pairs(
    tokenizer, pairs: list[tuple[str | None, str]], max_length: int, templated: bool = False
) -> dict[str, list[list[int]]]:
    """Tokenize prompt + response + eos; labels copy the response (and eos) and are -100 on the prompt.

    Prompts rendered by the chat template (`templated`) carry their own special tokens, as does a prompt that starts
    with the BOS text: no special tokens are added to those.
    """
    eos = tokenizer.eos_token_id
    out: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for prompt, response in pairs:
        if prompt is None:
            ids = list(tokenizer(response)["input_ids"])
            start = 0
        else:
            special = not (templated or _has_own_bos(tokenizer, prompt))
            prompt_ids = list(tokenizer(prompt, add_special_tokens=special)["input_ids"])
            ids = prompt_ids + list(tokenizer(response, add_special_tokens=False)["input_ids"])
            start = len(prompt_ids)
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        ids = ids[:max_length]
        labels = [IGNORE_INDEX] * min(start, len(ids)) + ids[start:]
        if all(label == IGNORE_INDEX for label in labels[1:]):
            continue  # the prompt fills the whole window: nothing to learn from this row
        out["input_ids"].append(ids)
        out["attention_mask"].append([1] * len(ids))
        out["labels"].append(labels)
    return out


def prepare_recovery_dataset(
    tokenizer,
    train_dataset: Any = None,
    *,
    data: Any = None,
    data_files: Any = None,
    num_samples: int | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    seed: int = 2016,
    chat_template: str = "auto",
):
    """Tokenized recovery data (`input_ids`, `attention_mask`, `labels` with the prompt masked) and its summary.

    `train_dataset` may be None (local `data_files`, else the recovery pairs of `data`, a data provider or its name:
    GSM8K train by default, the testbed's train split for the testbed), a `datasets.Dataset` with a `text`,
    `prompt`/`response` or `question`/`answer` layout (or already tokenized with `input_ids` and `labels`), a list of
    strings (loss on every token), or a list of `{"prompt", "response"}` / `{"question", "answer"}` dicts. Prompt and
    response are concatenated as given. Question/answer rows (a provider's pairs too) are asked the way the model is
    asked: with `chat_template="auto"` (default) through the tokenizer's chat template when it has one (prompt = the
    user turn and generation prompt, response = the answer + eos), else as `Question: q\\nAnswer: a`; "on" requires
    the template, "off" always uses the plain format.
    """
    import datasets

    _check_arguments(tokenizer, num_samples, max_length)
    qa = QAFormat(tokenizer, recovery_chat_template(tokenizer, chat_template))
    if isinstance(train_dataset, datasets.Dataset) and data_files is None and _is_tokenized(train_dataset):
        return _tokenized_as_given(train_dataset, num_samples)
    pairs, summary = _recovery_pairs(train_dataset, data, data_files, num_samples, seed, qa)
    if not pairs:
        raise ValueError("The recovery dataset is empty.")
    encoded = _encode_pairs(tokenizer, pairs, max_length, templated=qa.used and qa.chat)
    if not encoded["input_ids"]:
        raise ValueError(f"No recovery example has response tokens within max_length={max_length}.")
    ds = datasets.Dataset.from_dict(encoded)
    summary["num_examples"] = len(ds)
    summary["num_response_tokens"] = int(sum(sum(x != IGNORE_INDEX for x in row) for row in encoded["labels"]))
    summary["max_length"] = max_length
    if qa.used:
        summary["question_format"] = "chat_template" if qa.chat else "plain"
    return ds, summary


def _check_arguments(tokenizer, num_samples: Any, max_length: Any) -> None:
    """Fail before any data is read on a missing tokenizer or a bad `num_samples` / `max_length`."""
    if tokenizer is None or not callable(tokenizer):
        raise TypeError(f"tokenizer must be a transformers tokenizer, got {type(tokenizer).__name__}.")
    if num_samples is not None and (
        isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1
    ):
        raise ValueError(f"num_samples={num_samples!r} must be a positive int or None.")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length={max_length!r} must be an int >= 2.")


def _is_tokenized(dataset) -> bool:
    """Whether a non-empty `datasets.Dataset` is already tokenized (has `input_ids`): it is used as given."""
    return len(dataset) > 0 and "input_ids" in dataset.column_names


def _tokenized_as_given(dataset, num_samples: int | None):
    """An already tokenized dataset, checked for labels, with an all-ones `attention_mask` where it has none."""
    columns = dataset.column_names
    if "labels" not in columns:
        raise ValueError(
            f"A tokenized recovery dataset needs a 'labels' column (-100 on prompt tokens); columns: {columns}."
        )
    keep = [c for c in ("input_ids", "attention_mask", "labels") if c in columns]
    ds = dataset.select_columns(keep)
    if "attention_mask" not in keep:
        ds = ds.map(lambda r: {"attention_mask": [1] * len(r["input_ids"])})
    if num_samples is not None:
        ds = ds.select(range(min(num_samples, len(ds))))
    return ds, {"dataset": "user-provided tokenized dataset", "num_examples": len(ds)}


def _dataset_label(info) -> str:
    """How recovery records a `datasets.Dataset` as its data: the description `self_distillation_dataset` gives its
    rows, else the dataset's name (a Hub dataset's), else a short description, else "user-provided datasets.Dataset"
    (a Hub dataset's paragraph-long description does not belong in a card's table)."""
    description = (info.description or "").strip()
    if description.startswith(OWN_ANSWERS):
        return description
    if info.dataset_name:
        return str(info.dataset_name) + (f" ({info.config_name})" if info.config_name not in (None, "default") else "")
    if description and len(description) <= 200 and "\n" not in description:
        return description
    return "user-provided datasets.Dataset"


def _recovery_pairs(
    train_dataset: Any, data: Any, data_files: Any, num_samples: int | None, seed: int, qa: QAFormat
) -> tuple[list[tuple[str | None, str]], dict]:
    """(prompt, response) pairs and a summary from local files, a provider, an untokenized Dataset or a list."""
    import datasets

    if train_dataset is None and data_files is not None:
        return _local_pairs(data_files, num_samples, seed, qa)
    if train_dataset is None:
        return get_provider(data).recovery_pairs(num_samples, seed, qa=qa)
    if data_files is not None:
        raise ValueError("Pass either train_dataset or data_files, not both.")
    if isinstance(train_dataset, datasets.Dataset):
        if len(train_dataset) == 0:
            raise ValueError("The recovery dataset is empty.")
        rows = (
            train_dataset if num_samples is None else train_dataset.select(range(min(num_samples, len(train_dataset))))
        )
        pairs = _rows_to_pairs(rows, train_dataset.column_names, "(datasets.Dataset)", qa)
        return pairs, {"dataset": _dataset_label(train_dataset.info)}
    if isinstance(train_dataset, (list, tuple)):
        if not train_dataset:
            raise ValueError("The recovery dataset is empty: pass at least one example.")
        return _pairs_from_list(list(train_dataset), qa)[:num_samples], {"dataset": "in-memory list"}
    raise TypeError(
        "train_dataset must be None, a datasets.Dataset, a list of strings or a list of "
        f"{{'prompt', 'response'}} dicts, got {type(train_dataset).__name__}."
    )


def own_answers_settings(description: Any) -> dict[str, Any] | None:
    """What a `self_distillation_dataset` description records (`max_new_tokens`, `asked`, `of`: "questions" or
    "prompts", `do_sample`), or None for any other data: how a card rebuilds the `recover --answers self` line."""
    import re

    found = re.match(
        re.escape(OWN_ANSWERS) + r" \((greedy|sampled), up to (\d+) new tokens; \d+ of (\d+) (questions|prompts)",
        str(description or ""),
    )
    if found is None:
        return None
    sampling, tokens, asked, of = found.groups()
    return {"max_new_tokens": int(tokens), "asked": int(asked), "of": of, "do_sample": sampling == "sampled"}


class _QuestionsOnly:
    """A question/answer layout that keeps the question alone (`recovery_questions`)."""

    used = False

    def __call__(self, question: Any, answer: Any) -> tuple[str, str]:
        self.used = True
        return str(question).strip(), ""


def recovery_questions(
    train_dataset: Any = None,
    *,
    data: Any = None,
    data_files: Any = None,
    num_samples: int | None = None,
    seed: int = 2016,
) -> tuple[list[str], dict]:
    """The questions of the recovery rows `prepare_recovery_dataset` would read from the same sources (their answers
    dropped) and the source's summary: what `self_distillation_dataset` asks the dense model when recovery learns its
    own answers instead of the given ones. Rows without a question/answer layout are a ValueError naming the layout."""
    if num_samples is not None and (
        isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1
    ):
        raise ValueError(f"num_samples={num_samples!r} must be a positive int or None.")
    qa = _QuestionsOnly()
    pairs, summary = _recovery_pairs(train_dataset, data, data_files, num_samples, seed, qa)  # type: ignore[arg-type]
    if not qa.used:
        raise ValueError(
            f"The recovery data {summary.get('dataset')!r} has no question/answer rows (it has prompt/response or "
            "text rows): the dense model can only answer questions. Pass rows with 'question' and 'answer' columns."
        )
    questions = [question for question, _ in pairs if question]
    if not questions:
        raise ValueError("The recovery data has no non-empty question.")
    return questions, summary


class RecoveryCollator:
    """Right-pad `input_ids` (pad id), `attention_mask` (0) and `labels` (-100) to the longest row of a batch."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            mask[row, :n] = torch.as_tensor(f.get("attention_mask", [1] * n), dtype=torch.long)
            labels[row, :n] = torch.as_tensor(f["labels"], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def self_distillation_dataset(
    dense_model,
    tokenizer,
    questions: Sequence[str] | Sequence[Mapping[str, Any]] | None = None,
    *,
    prompts: Sequence[str] | None = None,
    max_new_tokens: int = DEFAULT_ANSWER_TOKENS,
    batch_size: int = 16,
    do_sample: bool = False,
    seed: int = 2016,
    progress: bool = True,
    chat_template: str = "auto",
    finished_only: bool = True,
):
    """`datasets.Dataset` of `{prompt, response}` where the response is the *dense* model's own answer (distillation).

    `questions` are asked the way `prepare_recovery_dataset` asks: through the tokenizer's chat template when it has
    one (`chat_template="auto"`), else with `Question: q\\nAnswer:`. `prompts` instead are asked exactly as given
    (e.g. an evaluation task's rendered prompts, instructions included, so the pruned model learns the format it is
    measured in), and each response is the answer exactly as generated. Answers that ran to `max_new_tokens` or into
    a loop are left out (a cut answer teaches stopping mid-way; `finished_only=False` keeps them); a ValueError if
    none is left. The dataset's `info.description` says what it holds; recovery records it as the training data.
    """
    import datasets

    from optimum_rku.config import RKUConfig
    from optimum_rku.data.self_generated import generate_answers

    if (questions is None) == (prompts is None):
        raise ValueError("pass either questions (asked as recovery asks) or prompts (asked as given), not both.")
    name = "questions" if prompts is None else "prompts"
    given = questions if prompts is None else prompts
    if isinstance(given, (str, bytes)) or not isinstance(given, Sequence):
        raise TypeError(f"{name} must be a list of strings, got {type(given).__name__}.")
    texts = [q["question"] if isinstance(q, Mapping) and prompts is None else q for q in given]
    if not texts:
        raise ValueError(f"{name} is empty: nothing for the dense model to answer.")
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        allowed = "strings (or {'question': ...} dicts)" if prompts is None else "strings"
        raise TypeError(f"{name} must be {allowed}, got {sorted(set(bad))}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int.")
    config = RKUConfig(generation_max_new_tokens=max_new_tokens, generation_do_sample=do_sample, seed=seed)
    if prompts is None:
        qa = QAFormat(tokenizer, recovery_chat_template(tokenizer, chat_template))
        asked, special, respond = [qa(q, "")[0] for q in texts], not qa.chat, lambda a: qa("", a)[1]
    else:  # as given: special tokens only where the prompt does not carry its own BOS (as training tokenizes it)
        asked, special, respond = texts, not all(_has_own_bos(tokenizer, t) for t in texts), lambda a: a
    answers = generate_answers(
        dense_model,
        tokenizer,
        asked,
        config,
        batch_size=batch_size,
        progress=progress,
        add_special_tokens=special,
        finished_only=finished_only,
        desc="dense answers for recovery",
    )
    kept = [(prompt, respond(answer)) for prompt, answer in zip(asked, answers) if answer is not None]
    if not kept:
        raise ValueError(
            f"none of the dense model's {len(asked)} answers ended within max_new_tokens={max_new_tokens}; "
            "raise max_new_tokens or pass finished_only=False."
        )
    description = (
        f"{OWN_ANSWERS} ({'sampled' if do_sample else 'greedy'}, up to {max_new_tokens} new tokens; "
        f"{len(kept)} of {len(asked)} {name}{', finished answers only' if finished_only else ''})"
    )
    return datasets.Dataset.from_dict(
        {"prompt": [p for p, _ in kept], "response": [r for _, r in kept]},
        info=datasets.DatasetInfo(description=description),
    )
