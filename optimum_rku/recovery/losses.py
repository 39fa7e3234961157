"""Recovery losses: the response-token NLL probe and knowledge distillation from the dense model."""

from __future__ import annotations

from typing import Any

import torch

from optimum_rku.recovery.data import IGNORE_INDEX, RecoveryCollator


@torch.no_grad()
def response_loss(model, dataset, batch_size: int = 8, pad_token_id: int = 0) -> float:
    """Mean next-token NLL over the label (response) tokens of a tokenized recovery dataset."""
    collate = RecoveryCollator(pad_token_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            targets = batch["labels"][:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                targets.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            total += float(loss)
            count += int((targets != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    return total / max(count, 1)


def check_distillation(model, teacher, alpha: Any, temperature: Any) -> None:
    """Validate the distillation arguments before any work: a causal LM teacher with the student's vocabulary."""
    from transformers import PreTrainedModel

    if teacher is None:
        return
    if not isinstance(teacher, PreTrainedModel):
        raise TypeError(
            f"teacher must be a transformers PreTrainedModel (the dense model), got {type(teacher).__name__}."
        )
    if teacher is model:
        raise ValueError("teacher is the model being recovered; pass the dense (unpruned) model as the teacher.")
    for name, value, low, high in (
        ("distillation_alpha", alpha, 0.0, 1.0),
        ("distillation_temperature", temperature, 1e-3, 100.0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ValueError(f"{name}={value!r} is out of range; allowed: a number in [{low}, {high}].")
    student_vocab = model.get_output_embeddings().weight.shape[0]
    teacher_vocab = teacher.get_output_embeddings().weight.shape[0]
    if student_vocab != teacher_vocab:
        raise ValueError(
            f"teacher has a vocabulary of {teacher_vocab} tokens and the student {student_vocab}; distillation needs "
            "the same tokenizer (the dense model the student was pruned from)."
        )


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """Mean over response tokens of (1 - alpha) * CE(labels) + alpha * T^2 * KL(teacher_T || student_T).

    Logits are [batch, seq, vocab] and predict the next token; labels are the input ids with -100 on the prompt.
    """
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    student = student_logits[:, :-1][mask].float()
    count = max(int(mask.sum()), 1)
    loss = student.new_zeros(())
    if alpha < 1:
        loss = loss + (1 - alpha) * torch.nn.functional.cross_entropy(student, targets[mask], reduction="sum")
    if alpha > 0:
        teacher = teacher_logits[:, :-1][mask].float()
        kl = torch.nn.functional.kl_div(
            torch.log_softmax(student / temperature, dim=-1),
            torch.log_softmax(teacher / temperature, dim=-1),
            log_target=True,
            reduction="sum",
        )
        loss = loss + alpha * temperature**2 * kl
    return loss / count


def distillation_trainer(teacher, alpha: float, temperature: float, **trainer_kwargs):
    """A `Trainer` whose loss distils the frozen dense teacher into the student on the response tokens."""
    from transformers import Trainer

    class DistillationTrainer(Trainer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            # the loss below is a per-batch mean: let Trainer divide it by the gradient-accumulation steps
            self.model_accepts_loss_kwargs = False
            self.teacher = teacher.to(self.args.device).eval()

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            features = {k: inputs[k] for k in ("input_ids", "attention_mask")}
            outputs = model(**features)
            with torch.no_grad():
                teacher_logits = self.teacher(**features).logits
            loss = distillation_loss(outputs.logits, teacher_logits, inputs["labels"], alpha, temperature)
            return (loss, outputs) if return_outputs else loss

    return DistillationTrainer(**trainer_kwargs)
