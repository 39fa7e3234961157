"""Scoring objectives Phi: label-free (self_nll, hidden_energy) or text / decode NLL, summed over tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from optimum_rku.models.blocks import decoder


def objective_value(model: torch.nn.Module, batch: dict, objective: str, token_floor: float = 0.0) -> torch.Tensor:
    """The label-free (or text/decode NLL) objective Phi, summed over tokens, read from the final hidden state.

    `token_floor` > 0 (NLL objectives only) weights each token by max(1, floor / ||p - e_y||), detached: a token the
    model is sure of has a vanishing NLL gradient p - e_y at the logits, so without the floor a confident model's
    Fisher is decided by its few uncertain tokens; with it every token's gradient counts at least at norm `floor`.
    """
    ids, attn = batch["input_ids"], batch["attention_mask"]
    if objective == "hidden_energy":
        hidden = decoder(model)(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state
        return 0.5 * ((hidden.float() ** 2).sum(-1) * attn.float()).sum()
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits.float()
    if objective == "self_nll":
        return _nll(logits, logits.detach().argmax(-1), attn.float(), token_floor)
    # nll / decode_nll: next-token NLL of the text itself (decode_nll: the response tokens only, when the calibration
    # set marks them with a loss_mask, as self-generated calibration does; on plain text it is the NLL of every token)
    target_mask = attn[:, 1:].float()
    if objective == "decode_nll" and "loss_mask" in batch:
        target_mask = target_mask * batch["loss_mask"][:, 1:].float()
    return _nll(logits[:, :-1], ids[:, 1:], target_mask, token_floor)


def _nll(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, floor: float) -> torch.Tensor:
    """sum_t mask_t * w_t * NLL_t with w_t = max(1, floor / ||p_t - e_y||) (1 when floor is 0), w_t detached.

    With a floor, the backward reaches the logits as exactly w_t (p_t - e_y), with p_y - 1 taken as -sum_{v != y} p_v:
    autograd's float32 softmax rounds p_y to 1 on near-certain tokens, and the weight would magnify that rounding.
    """
    if floor <= 0:
        return -(F.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1) * mask).sum()
    # the gradient goes through `linear` below, so the log-softmax (vocab-wide) keeps no autograd graph here
    with torch.no_grad():
        logp = F.log_softmax(logits, dim=-1)
        token_logp = logp.gather(-1, targets[..., None]).squeeze(-1)
        grad = logp.exp().scatter(-1, targets[..., None], 0.0)  # p - e_y: p_v off the target, and at it
        grad.scatter_(-1, targets[..., None], -grad.sum(-1, keepdim=True))  # p_y - 1 = -sum_{v != y} p_v
        norm = grad.norm(dim=-1)
        weight = (floor / norm.clamp_min(torch.finfo(norm.dtype).tiny)).clamp_min(1.0) * mask
        grad *= weight[..., None]
    value = -(token_logp * weight).sum()
    linear = (logits * grad).sum()  # its gradient at the logits is the weighted NLL gradient above
    return value + (linear - linear.detach())
