"""Channel masks: the zero-masks over down_proj / o_proj inputs that stand for removed structures.

`plan_masks` turns a plan into masks (masked model == physically pruned model), `combine_masks` nests them across
iterations, `masked_input` applies one to a projection's input (the one hook body scoring and generation share),
and `masked_model` keeps a model masked while generating with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from optimum_rku.models.blocks import blocks

if TYPE_CHECKING:
    from optimum_rku.pruning.allocation import PruningPlan


def masked_input(args: tuple, mask: torch.Tensor) -> tuple:
    """A forward pre-hook's arguments with the first (the structure activations) multiplied by a 0/1 channel mask."""
    y = args[0]
    return (y * mask.to(dtype=y.dtype, device=y.device),) + tuple(args[1:])


def plan_masks(model: nn.Module, plan: PruningPlan) -> dict[tuple[int, str], torch.Tensor]:
    """0/1 masks over down_proj / o_proj input channels that zero exactly the structures `plan` removes."""
    masks = {}
    for block, layer_plan in zip(blocks(model), plan.layers):
        ffn = torch.zeros(block.intermediate_size)
        ffn[layer_plan.kept_channels] = 1.0
        attn = torch.zeros(block.num_heads * block.head_dim)
        attn[block.head_channels(layer_plan.kept_heads)] = 1.0
        masks[(block.index, "ffn")] = ffn
        masks[(block.index, "attn")] = attn
    return masks


def combine_masks(old: dict | None, new: dict) -> dict:
    """Nested masks: a structure removed earlier stays removed."""
    if not old:
        return dict(new)
    return {key: new[key] * old[key] if key in old else new[key] for key in new}


def _mask_hook(mask: torch.Tensor):
    def hook(module, args):
        return masked_input(args, mask)

    return hook


@contextmanager
def masked_model(model, masks: dict | None) -> Iterator[None]:
    """Zero the masked channels at every down_proj / o_proj input (the removal masks of `plan_masks`) while active."""
    handles = []
    if masks:
        for block in blocks(model):
            for part in ("ffn", "attn"):
                mask = masks.get((block.index, part))
                if mask is not None:
                    handles.append(block.output(part).register_forward_pre_hook(_mask_hook(mask)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
