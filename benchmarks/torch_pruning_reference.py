"""Torch-Pruning (https://github.com/VainF/Torch-Pruning) as an external reference for the quality benchmark.

`run_torch_pruning` prunes a Llama-family *ForCausalLM in place with Torch-Pruning's own dependency graph, importance
(GroupMagnitudeImportance(p=2) or GroupTaylorImportance) and `BasePruner`: FFN intermediate channels (gate/up rows
with the matching down_proj columns) and whole GQA KV groups (one KV head of k/v with all query heads that read it,
q rows and o_proj columns). The hidden size (embeddings, norms, lm_head, residual stream) is kept, like optimum-rku.

Three things are needed to make Torch-Pruning 1.6 work on transformers 5.x; none of them changes what is pruned:

* Rotary embeddings are made the identity while the dependency graph is traced. `rotate_half` (slice + neg + cat
  on the head dimension) creates a cycle whose index mapping never reaches a fixed point, so
  `DependencyGraph.get_all_groups` loops forever in `_fix_dependency_graph_non_recursive` / `Group.has_pruning_op`
  (the reported hang). Rotary acts inside each head, and head dimensions are not pruned, so dropping it from the
  trace does not lose a dependency between prunable channels. The real model (with rotary) is used for the Taylor
  gradients and for everything after tracing.
* The trace runs a thin wrapper whose forward returns `model(input_ids).logits` (a plain tensor; transformers 5
  returns a ModelOutput) with eager attention, so `repeat_kv` (expand + reshape) appears in the graph and links the
  query heads of a KV group to their k/v head.
* Torch-Pruning's own GQA mode (num_heads = query heads) prunes query heads inside each KV group and never removes
  k/v heads; with 2 query heads per KV head it ends with as many query heads as KV heads, then stops treating the
  layer as GQA and rejects the group, so no head is pruned at all. Instead each KV group is declared as one "head"
  of `group_size * head_dim` channels of q_proj (num_heads[q_proj] = num_heads[k/v_proj] = num_kv_heads), so TP
  removes whole KV groups through its ordinary multi-head path. The expand mapping of `repeat_kv` lists each k/v
  channel once per query head, and `DependencyGraph.check_pruning_group` counts those duplicates as separate
  channels and rejects the group; the pruner's graph gets a check that counts distinct channels instead. The
  pruning functions de-duplicate the indices of the weights but subtract the duplicates from `out_features`, so
  `in_features` / `out_features` of every Linear are re-read from its weight afterwards.

The attention and FFN ratios are chosen so that the removed q/k/v/o + gate/up/down parameters are `sparsity` of
them (as close as whole KV groups and whole channels allow): round(sparsity * num_kv_heads) KV groups per layer,
the remaining budget from FFN channels. `targets="mlp"` leaves attention alone and takes the whole budget from FFN
channels. TP prunes locally (the same widths in every layer); removing even one KV group per layer this way
collapses the testbed's accuracy (like optimum-rku's allocation=uniform ablation).
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any

import torch
from torch import nn

from optimum_rku.models.blocks import blocks, decoder
from optimum_rku.pruning.removal import update_config


class _LogitsOnly(nn.Module):
    """Wrapper whose forward returns plain logits, the only output type Torch-Pruning's tracer can follow."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


@contextlib.contextmanager
def _traceable(model: nn.Module):
    """Eager attention and identity rotary embeddings while Torch-Pruning traces the model; restored afterwards."""
    config = model.config
    previous_impl = config._attn_implementation
    patched = []
    for view in blocks(model):
        module = sys.modules[type(view.attn).__module__]
        if hasattr(module, "apply_rotary_pos_emb") and all(m is not module for m, _ in patched):
            patched.append((module, module.apply_rotary_pos_emb))
            module.apply_rotary_pos_emb = lambda q, k, *args, **kwargs: (q, k)
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = previous_impl
        for module, function in patched:
            module.apply_rotary_pos_emb = function


def _check_distinct(graph):
    """`DependencyGraph.check_pruning_group` counting distinct channels (repeat_kv maps a k/v channel repeatedly)."""

    def check(group) -> bool:
        for dep, idxs in group:
            if graph.is_out_channel_pruning_fn(dep.handler):
                channels = graph.get_out_channels(dep.target.module)
            elif graph.is_in_channel_pruning_fn(dep.handler):
                channels = graph.get_in_channels(dep.target.module)
            else:
                continue
            if channels is not None and channels <= len(set(idxs)):
                return False
        return True

    return check


def _plan(model: nn.Module, sparsity: float, targets: str = "both") -> tuple[int, int]:
    """(KV groups to remove per layer, FFN channels to remove over all layers) for `sparsity` of q/k/v/o + MLP."""
    views = blocks(model)
    hidden = views[0].hidden_size
    head_dim = views[0].head_dim
    num_kv = views[0].num_kv_heads
    if any(v.num_kv_heads != num_kv or v.num_heads != views[0].num_heads for v in views):
        raise ValueError("run_torch_pruning expects the same number of heads in every layer")
    kv_removed = min(max(round(sparsity * num_kv), 0), num_kv - 1) if targets == "both" else 0
    prunable = 0
    attention_removed = 0
    for view in views:
        attn_per_group = 2 * hidden * head_dim * (view.group_size + 1)  # q rows + o columns + k rows + v rows
        prunable += attn_per_group * view.num_kv_heads + 3 * hidden * view.intermediate_size
        attention_removed += attn_per_group * kv_removed
    channels = round((sparsity * prunable - attention_removed) / (3 * hidden))
    total = sum(v.intermediate_size for v in views)
    return kv_removed, min(max(channels, 0), total - len(views))


def run_torch_pruning(
    model: nn.Module,
    tokenizer,
    calibration_texts: list[str],
    importance: str,
    sparsity: float = 0.4,
    *,
    targets: str = "both",
) -> dict[str, Any]:
    """Prune `model` in place with Torch-Pruning and leave it a consistent transformers model.

    Args:
        model: a Llama-family *ForCausalLM (float weights, every layer with the same head counts).
        tokenizer: its tokenizer (used for the example input and the Taylor calibration texts).
        calibration_texts: texts whose LM-loss gradients feed GroupTaylorImportance (unused for "magnitude").
        importance: "magnitude" (GroupMagnitudeImportance(p=2)) or "taylor" (GroupTaylorImportance).
        sparsity: fraction of the q/k/v/o + gate/up/down parameters to remove.
        targets: "both" (KV groups and FFN channels) or "mlp" (FFN channels only, attention untouched; the FFN
            then carries the whole `sparsity` of the prunable parameters).

    Returns:
        dict with "time_s" (wall time of tracing, gradients and pruning), "scope" (what was pruned and how),
        "pruning_ratio" (FFN ratio given to TP), "head_pruning_ratio" (KV-group ratio given to TP),
        "kv_groups_removed_per_layer", "ffn_channels_removed" and "tp_version".
    """
    import torch_pruning as tp

    if importance not in ("magnitude", "taylor"):
        raise ValueError(f"importance must be 'magnitude' or 'taylor', not {importance!r}")
    if targets not in ("both", "mlp"):
        raise ValueError(f"targets must be 'both' or 'mlp', not {targets!r}")
    start = time.perf_counter()
    views = blocks(model)
    num_kv = views[0].num_kv_heads
    kv_removed, ffn_removed = _plan(model, sparsity, targets)
    if kv_removed and not ffn_removed:
        # TP only visits the attention groups of a scope whose (FFN) pruning_ratio removes something
        raise ValueError(f"sparsity={sparsity} removes KV groups but no FFN channel; TP would prune nothing")
    total_channels = sum(v.intermediate_size for v in views)
    # TP removes ceil(head_ratio * heads) heads and `n - int(n * (1 - ratio))` channels per layer: the half-unit
    # offsets make both land exactly on the planned integers
    head_ratio = (kv_removed - 0.5) / num_kv if kv_removed else 0.0
    ffn_ratio = (ffn_removed / len(views) - 0.5) / views[0].intermediate_size if ffn_removed else 0.0
    # each KV group (its k/v head and all query heads reading it) is one TP "head"
    num_heads = {}
    for view in views:
        for projection in ("q_proj", "k_proj", "v_proj"):
            num_heads[view.module(projection)] = view.num_kv_heads
    imp = (
        tp.importance.GroupMagnitudeImportance(p=2)
        if importance == "magnitude"
        else tp.importance.GroupTaylorImportance()
    )
    example = tokenizer(calibration_texts[0] if calibration_texts else "Question:", return_tensors="pt")["input_ids"]
    example = example[:, :8].to(next(model.parameters()).device)
    ignored = [model.lm_head, decoder(model).embed_tokens]
    if targets == "mlp":
        ignored += [linear for view in views for linear in view.linears("attn")]
    was_training = model.training
    model.eval()
    with torch.enable_grad(), _traceable(model):
        pruner = tp.pruner.BasePruner(
            _LogitsOnly(model),
            example_inputs=example,
            importance=imp,
            pruning_ratio=ffn_ratio,
            ignored_layers=ignored,
            num_heads=num_heads,
            prune_num_heads=kv_removed > 0,
            prune_head_dims=False,
            head_pruning_ratio=head_ratio,
            global_pruning=False,
        )
    pruner.DG.check_pruning_group = _check_distinct(pruner.DG)
    if importance == "taylor":
        device = next(model.parameters()).device
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            for text in calibration_texts:
                ids = tokenizer(text, return_tensors="pt")["input_ids"].to(device)
                model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    pruner.step()
    model.zero_grad(set_to_none=True)
    del pruner
    for module in model.modules():
        if isinstance(module, nn.Linear):
            # TP subtracts len(idxs) including the repeat_kv duplicates; the weights themselves are pruned right
            module.out_features, module.in_features = module.weight.shape
    for view in blocks(model):
        view.set_heads(view.num_heads, view.num_kv_heads)
    update_config(model)
    model.train(was_training)
    elapsed = time.perf_counter() - start
    widths = blocks(model)
    removed_channels = total_channels - sum(v.intermediate_size for v in widths)
    removed_kv = num_kv - widths[0].num_kv_heads
    if removed_kv:
        attention = (
            f"{removed_kv} of {num_kv} GQA KV groups (k/v head + its {views[0].group_size} query heads: q/k/v rows, "
            f"o_proj columns; TP num_heads = KV heads, head_pruning_ratio={head_ratio:.4f}) and "
        )
    else:
        attention = "no attention head (attention untouched) and "
    scope = (
        f"Torch-Pruning {tp.__version__} BasePruner (local, {type(imp).__name__}) pruned per decoder layer "
        f"{attention}{removed_channels // len(widths)} of {views[0].intermediate_size} FFN channels (gate/up rows, "
        f"down_proj columns; pruning_ratio={ffn_ratio:.4f}); hidden size, embeddings, norms and lm_head kept. "
        "Traced with eager attention and identity rotary (rotate_half makes TP's group search loop forever), "
        "k/v duplicates of repeat_kv de-duplicated in TP's group check."
    )
    return {
        "time_s": round(elapsed, 2),
        "scope": scope,
        "pruning_ratio": round(ffn_ratio, 6),
        "head_pruning_ratio": round(head_ratio, 6),
        "kv_groups_removed_per_layer": removed_kv,
        "ffn_channels_removed": removed_channels,
        "tp_version": tp.__version__,
    }
