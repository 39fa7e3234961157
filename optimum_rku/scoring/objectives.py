"""Scoring objectives Phi: label-free (self_nll, hidden_energy) or text / decode NLL, summed over tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from optimum_rku.models.blocks import decoder


def objective_value(model: torch.nn.Module, batch: dict, objective: str) -> torch.Tensor:
    """The label-free (or text/decode NLL) objective Phi, summed over tokens, read from the final hidden state."""
    ids, attn = batch["input_ids"], batch["attention_mask"]
    if objective == "hidden_energy":
        hidden = decoder(model)(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state
        return 0.5 * ((hidden.float() ** 2).sum(-1) * attn.float()).sum()
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits.float()
    logp = F.log_softmax(logits, dim=-1)
    if objective == "self_nll":
        own = logits.detach().argmax(-1, keepdim=True)
        return -(logp.gather(-1, own).squeeze(-1) * attn.float()).sum()
    # nll / decode_nll: next-token NLL of the text itself (decode_nll: the response tokens only, when the calibration
    # set marks them with a loss_mask, as self-generated calibration does; on plain text it is the NLL of every token)
    target_mask = attn[:, 1:].float()
    if objective == "decode_nll" and "loss_mask" in batch:
        target_mask = target_mask * batch["loss_mask"][:, 1:].float()
    token_logp = logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    return -(token_logp * target_mask).sum()
