"""Removal: physically slice the projections of every block to the kept structures and update the config.

The result is a normal `transformers` model with smaller matrices (and a smaller KV cache when KV groups go);
head_dim, embeddings and lm_head never change. `plan_masks` gives the equivalent zero-masks for masked scoring.
"""

from __future__ import annotations

import torch
from torch import nn

from optimum_rku.models.blocks import BlockView, blocks, enable_output_biases, head_dim_of
from optimum_rku.models.geometry import layer_widths
from optimum_rku.models.specs import get_spec, stock_config_accepts
from optimum_rku.pruning.allocation import PruningPlan


def _slice_linear(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    weight = linear.weight.data
    if rows is not None:
        weight = weight.index_select(0, rows.to(weight.device))
    if cols is not None:
        weight = weight.index_select(1, cols.to(weight.device))
    bias = linear.bias.data if linear.bias is not None else None
    if bias is not None and rows is not None:
        bias = bias.index_select(0, rows.to(bias.device))
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    new.weight = nn.Parameter(weight.contiguous().clone(), requires_grad=linear.weight.requires_grad)
    if bias is not None:
        new.bias = nn.Parameter(bias.contiguous().clone(), requires_grad=linear.bias.requires_grad)
    return new


def _check_plan(block: BlockView, plan) -> None:
    if not plan.kept_channels or not plan.kept_heads or not plan.kept_kv_heads:
        raise ValueError(f"Layer {block.index}: a plan must keep at least one channel, query head and KV head.")
    if len(plan.kept_heads) % len(plan.kept_kv_heads):
        raise ValueError(f"Layer {block.index}: kept query heads must split evenly over kept KV heads.")
    group = block.group_size
    for h in plan.kept_heads:
        if h // group not in plan.kept_kv_heads:
            raise ValueError(f"Layer {block.index}: query head {h} is kept but its KV head {h // group} is not.")


def _removed_output(linear: nn.Linear, kept: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """W[:, removed] @ mean[removed]: the average output the removed input channels contributed (FLAP)."""
    removed = torch.ones(linear.in_features, dtype=torch.bool)
    removed[kept] = False
    weight = linear.weight.detach().float()[:, removed.to(linear.weight.device)]
    return weight @ mean.float().to(weight.device)[removed.to(weight.device)]


def _slice_block(block: BlockView, rows: dict[str, torch.Tensor], cols: dict[str, torch.Tensor]) -> None:
    """Replace every module holding a projection in `rows` / `cols` by its kept rows / columns.

    A fused module (Phi-3's `qkv_proj`) keeps, for each logical projection stacked in it, that projection's kept
    rows shifted to where the projection starts inside it.
    """
    done = set()
    for projection in [*rows, *cols]:
        name = block.spec.module_name(projection)
        if name in done:
            continue
        done.add(name)
        parts = block.spec.fused.get(name, (projection,))
        keep_rows = None
        if any(part in rows for part in parts):
            keep_rows = torch.cat(
                [
                    rows[part] + block.rows(part).start
                    if part in rows
                    else torch.arange(block.rows(part).start, block.rows(part).stop)
                    for part in parts
                ]
            )
        owner = block.owner(projection)
        setattr(owner, name, _slice_linear(getattr(owner, name), rows=keep_rows, cols=cols.get(projection)))


def apply_plan(
    model: nn.Module,
    plan: PruningPlan,
    mlp_input_mean: list[torch.Tensor] | None = None,
    attention_input_mean: list[torch.Tensor] | None = None,
) -> nn.Module:
    """Replace every block's projections by their kept rows/columns, in place; return the model.

    With per-layer input means of down_proj / o_proj (bias compensation), the removed channels' mean contribution is
    added to that projection's bias, created (and switched on in the config) where the family allows it.
    """
    views = blocks(model)
    if len(views) != len(plan.layers):
        raise ValueError(f"Plan has {len(plan.layers)} layers but the model has {len(views)}.")
    compensation: dict[str, dict[int, torch.Tensor]] = {"ffn": {}, "attn": {}}
    for block, layer_plan in zip(views, plan.layers):
        _check_plan(block, layer_plan)
        if layer_plan.intermediate_size != block.intermediate_size:
            keep = torch.tensor(layer_plan.kept_channels, dtype=torch.long)
            if mlp_input_mean is not None:
                compensation["ffn"][block.index] = _removed_output(block.down_proj, keep, mlp_input_mean[block.index])
            _slice_block(block, {"gate_proj": keep, "up_proj": keep}, {"down_proj": keep})
            block.set_intermediate_size(layer_plan.intermediate_size)
        if layer_plan.num_heads != block.num_heads or layer_plan.num_kv_heads != block.num_kv_heads:
            q_rows = block.head_channels(layer_plan.kept_heads)
            kv_rows = block.head_channels(layer_plan.kept_kv_heads)
            if attention_input_mean is not None and layer_plan.num_heads != block.num_heads:
                mean = attention_input_mean[block.index]
                compensation["attn"][block.index] = _removed_output(block.o_proj, q_rows, mean)
            _slice_block(block, {"q_proj": q_rows, "k_proj": kv_rows, "v_proj": kv_rows}, {"o_proj": q_rows})
            block.set_heads(layer_plan.num_heads, layer_plan.num_kv_heads)
    for part, deltas in compensation.items():
        if not deltas:
            continue
        enable_output_biases(model, part)
        views = blocks(model)
        for index, delta in deltas.items():
            linear = views[index].output(part)
            with torch.no_grad():
                linear.bias += delta.to(device=linear.bias.device, dtype=linear.bias.dtype)
    update_config(model)
    return model


def update_config(model: nn.Module) -> None:
    """Write the live per-layer widths into the config: plain fields when uniform, `per_layer_config` otherwise."""
    config = model.config
    head_dim = head_dim_of(config)
    widths = layer_widths(model)
    if getattr(config, "is_heterogeneous", False):
        config.per_layer_config = None
    config.head_dim = head_dim
    if all(w == widths[0] for w in widths):
        for key, value in widths[0].items():
            setattr(config, key, value)
    else:
        # global values keep the widest layer; every layer's own widths are explicit
        for key in widths[0]:
            setattr(config, key, max(w[key] for w in widths))
        config.per_layer_config = {i: dict(w) for i, w in enumerate(widths)}
        config.serialize_explicit_per_layer_config = True
    if not stock_config_accepts(config):
        # stock configs that insist hidden_size % num_attention_heads == 0, which pruning breaks
        from optimum_rku.models.modeling_rku import rku_class

        config.__class__ = rku_class(get_spec(config).config_class)
    if get_spec(config).attention_reads_config:
        # the attention reads its head counts from `self.config`: each layer gets its own, as a reload builds it
        for index, view in enumerate(blocks(model)):
            view.attn.config = config.per_layer_config[index] if config.is_heterogeneous else config
