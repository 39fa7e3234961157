"""Teacher-forced metrics of a model on worked problems: what a pruned model lost, without generating.

- `nll`: mean NLL per token of the *gold* solutions, asked as the model is asked (through its chat template when it
  has one, answer tokens only; plain `Question: ...\\nAnswer:` prompts otherwise),
- `ppl`: perplexity of the same problems as plain text (`Question: ...\\nAnswer: ...`, every token),
- `agreement`: next-token top-1 agreement with a reference model's argmax on that plain text (fidelity to dense).

`GoldTexts` tokenizes the problems once; `likelihood_metrics` measures any number of models on them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from optimum_rku.data.prompts import question_prompt, uses_chat_template

#: tokens kept of one problem (prompt + solution)
MAX_TOKENS = 1024


class GoldTexts:
    """Problems tokenized once: `gold` (prompt + gold solution, loss mask on the solution) and `plain` (every token)."""

    def __init__(self, tokenizer: Any, problems: Sequence[Mapping[str, str]], plain: bool = True) -> None:
        """Tokenize `problems` (rows with "question" and "answer"); `plain=False` skips the plain-text copies."""
        self.chat = uses_chat_template(tokenizer, "auto")
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.gold: list[tuple[list[int], list[int]]] = []
        self.plain: list[tuple[list[int], list[int]]] = []
        for row in problems:
            prompt = question_prompt(tokenizer, row["question"], self.chat)
            prompt_ids = tokenizer(prompt, add_special_tokens=not self.chat)["input_ids"]
            answer = row["answer"] + ((tokenizer.eos_token or "") if self.chat else "")
            answer_ids = tokenizer((" " if not self.chat else "") + answer, add_special_tokens=False)["input_ids"]
            ids = (prompt_ids + answer_ids)[:MAX_TOKENS]
            self.gold.append((ids, [0] * len(prompt_ids) + [1] * (len(ids) - len(prompt_ids))))
            if plain:
                text = tokenizer(f"Question: {row['question']}\nAnswer: {row['answer']}")["input_ids"][:MAX_TOKENS]
                self.plain.append((text, [1] * len(text)))


def _batches(
    rows: list[tuple[list[int], list[int]]], size: int, pad: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Right-padded (ids, attention mask, target mask) batches of `size` rows."""
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        targets = torch.zeros((len(chunk), width), dtype=torch.bool)
        for i, (tokens, mask) in enumerate(chunk):
            ids[i, : len(tokens)] = torch.tensor(tokens)
            attention[i, : len(tokens)] = 1
            targets[i, : len(tokens)] = torch.tensor(mask, dtype=torch.bool)
        yield ids, attention, targets


@torch.no_grad()
def likelihood_metrics(
    model: Any,
    texts: GoldTexts,
    reference_argmax: list[torch.Tensor] | None = None,
    batch_size: int = 8,
    nll_only: bool = False,
) -> dict[str, Any]:
    """`nll`, `ppl` and `agreement` of `model` on `texts` (agreement 1.0 without a reference), plus `argmax`: the
    model's top-1 next tokens on the plain text, to pass as `reference_argmax` for the models compared with it.
    `nll_only` skips the plain-text pass (half the cost): `ppl` and `agreement` are then NaN."""
    model.eval()
    nll_sum = nll_count = 0.0
    for ids, attention, targets in _batches(texts.gold, batch_size, texts.pad):
        logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        mask = targets[:, 1:] & attention[:, 1:].bool()
        nll_sum += float(loss[mask].sum())
        nll_count += int(mask.sum())
    nll = nll_sum / max(nll_count, 1)
    if nll_only:
        return {"nll": nll, "ppl": float("nan"), "agreement": float("nan"), "argmax": []}
    ppl_sum = ppl_count = agree = 0.0
    argmaxes: list[torch.Tensor] = []
    for ids, attention, _ in _batches(texts.plain, batch_size, texts.pad):
        logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        mask = attention[:, 1:].bool()
        ppl_sum += float(loss[mask].sum())
        ppl_count += int(mask.sum())
        top = logits.argmax(-1)
        argmaxes.extend(top[i][mask[i]] for i in range(ids.shape[0]))
    if reference_argmax is not None:
        agree = sum(int((a == b).sum()) for a, b in zip(argmaxes, reference_argmax)) / max(ppl_count, 1)
    return {
        "nll": nll,
        "ppl": math.exp(ppl_sum / max(ppl_count, 1)),
        "agreement": agree if reference_argmax is not None else 1.0,
        "argmax": argmaxes,
    }
