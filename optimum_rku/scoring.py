"""Scoring: run calibration batches through the model with hooks, accumulate per-structure statistics, score them.

Only activations and their gradients are captured: weights are frozen (`requires_grad=False`), the embedding output
is the one leaf that requires grad, so one backward pass yields dPhi/dy at every down_proj / o_proj input and no
weight gradient is ever materialized (unless an importance method explicitly asks for weight gradients).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from optimum_rku.architectures import BlockView, blocks, decoder
from optimum_rku.calibration import iter_batches
from optimum_rku.importance import BlockStats, Importance, get_importance
from optimum_rku.offload import check_no_weight_gradients, stream_offloaded_weights


def structure_costs(block: BlockView, granularity: str) -> tuple[int, int]:
    """Parameters owned by one FFN channel and by one attention structure (KV group, or query-head slot)."""
    hidden, hd = block.hidden_size, block.head_dim
    mlp = block.mlp
    ffn = 3 * hidden + sum(int(getattr(mlp, n).bias is not None) for n in ("gate_proj", "up_proj"))
    q_bias = block.q_proj.bias is not None
    kv_bias = block.k_proj.bias is not None
    per_query_head = 2 * hd * hidden + (hd if q_bias else 0)
    if granularity == "query_head" and block.group_size > 1:
        # GQA: a "slot" removes one query head from every KV group, keeping the groups equal-sized.
        return ffn, per_query_head * block.num_kv_heads
    per_group = per_query_head * block.group_size + 2 * hd * hidden + (2 * hd if kv_bias else 0)
    return ffn, per_group


def prunable_parameters(model: torch.nn.Module) -> int:
    """Parameters of q/k/v/o and gate/up/down (weights and biases) summed over all blocks."""
    total = 0
    for block in blocks(model):
        for linear in block.attn_linears() + block.mlp_linears():
            total += linear.weight.numel() + (linear.bias.numel() if linear.bias is not None else 0)
    return total


_TENSOR_LISTS = (
    "mlp",
    "attention",
    "mlp_raw",
    "attention_raw",
    "mlp_input_mean",
    "attention_input_mean",
    "mlp_loss",
    "attention_loss",
)


@dataclass
class PruningScores:
    """Per-layer scores (normalized and raw) and parameter cost per structure; reusable across sparsities."""

    importance: str
    objective: str | None
    normalization: str
    attention_granularity: str
    mlp: list[torch.Tensor]
    attention: list[torch.Tensor]
    mlp_raw: list[torch.Tensor]
    attention_raw: list[torch.Tensor]
    mlp_cost: list[int]
    attention_cost: list[int]
    widths: list[dict[str, int]]
    calibration: dict[str, Any] = field(default_factory=dict)
    #: per layer, the calibration mean of each down_proj / o_proj input channel (only with bias_compensation)
    mlp_input_mean: list[torch.Tensor] | None = None
    attention_input_mean: list[torch.Tensor] | None = None
    #: per layer, 1/2 mean_t (dPhi/dm_s)^2: the Fisher estimate of the loss increase when structure s is zeroed
    #: (RKU only; read by `ranking="measured_loss"`)
    mlp_loss: list[torch.Tensor] | None = None
    attention_loss: list[torch.Tensor] | None = None

    @property
    def num_layers(self) -> int:
        return len(self.widths)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tensors become lists)."""
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if key in _TENSOR_LISTS:
                out[key] = None if value is None else [t.tolist() for t in value]
            else:
                out[key] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningScores:
        data = dict(data)
        for key in _TENSOR_LISTS:
            if data.get(key) is not None:
                data[key] = [torch.tensor(v, dtype=torch.float32) for v in data[key]]
        return cls(**data)

    def save(self, path: str | os.PathLike) -> Path:
        """Write to `.json` or `.safetensors` (tensors + JSON metadata), chosen by the file suffix."""
        path = Path(path)
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            tensors = {}
            meta = {}
            for key, value in self.__dict__.items():
                if key in _TENSOR_LISTS:
                    meta[f"has_{key}"] = value is not None
                    for i, t in enumerate(value or []):
                        tensors[f"{key}.{i}"] = t.contiguous().clone()  # methods may share raw and normalized
                else:
                    meta[key] = value
            save_file(tensors, str(path), metadata={"rku_scores": json.dumps(meta)})
        elif path.suffix == ".json":
            path.write_text(json.dumps(self.to_dict()))
        else:
            raise ValueError(f"Scores path {str(path)!r} must end in .json or .safetensors.")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> PruningScores:
        path = Path(path)
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                meta = json.loads(handle.metadata()["rku_scores"])
                layers = len(meta["widths"])
                for key in _TENSOR_LISTS:
                    present = meta.pop(f"has_{key}", f"{key}.0" in handle.keys())
                    meta[key] = [handle.get_tensor(f"{key}.{i}") for i in range(layers)] if present else None
            return cls(**meta)
        if path.suffix == ".json":
            return cls.from_dict(json.loads(path.read_text()))
        raise ValueError(f"Scores path {str(path)!r} must end in .json or .safetensors.")


def layer_widths(model: torch.nn.Module) -> list[dict[str, int]]:
    return [
        {
            "intermediate_size": b.intermediate_size,
            "num_attention_heads": b.num_heads,
            "num_key_value_heads": b.num_kv_heads,
        }
        for b in blocks(model)
    ]


class StatsCollector:
    """Hooks on every down_proj / o_proj input: accumulate activation and gradient statistics, apply masks."""

    def __init__(
        self,
        model: torch.nn.Module,
        importance: Importance,
        masks: dict | None = None,
        extra_stats: frozenset[str] = frozenset(),
    ):
        self.blocks = blocks(model)
        self.importance = importance
        self.wanted = importance.activation_stats | extra_stats
        self.stats = [BlockStats() for _ in self.blocks]
        self.masks = masks or {}
        self.token_mask: torch.Tensor | None = None
        self.handles: list = []

    def __enter__(self) -> StatsCollector:
        for block, stats in zip(self.blocks, self.stats):
            self.handles.append(block.down_proj.register_forward_pre_hook(self._hook(block, stats, "ffn")))
            self.handles.append(block.o_proj.register_forward_pre_hook(self._hook(block, stats, "attn")))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _hook(self, block: BlockView, stats: BlockStats, part: str):
        wanted = self.wanted
        want_grad = self.importance.needs_activation_gradients
        mask = self.masks.get((block.index, part))

        def hook(module, args):
            y = args[0]
            if mask is not None:
                y = y * mask.to(dtype=y.dtype, device=y.device)
            m = self.token_mask
            if m is None:
                return (y,) + tuple(args[1:]) if mask is not None else None
            m = m.to(device=y.device, dtype=torch.float32)
            with torch.no_grad():
                yf = y.detach().float()
                if "abs" in wanted:
                    stats.add(part, "abs", torch.einsum("btc,bt->c", yf.abs(), m))
                if "sq" in wanted:
                    stats.add(part, "sq", torch.einsum("btc,bt->c", yf * yf, m))
                if "sum" in wanted:
                    stats.add(part, "sum", torch.einsum("btc,bt->c", yf, m))
                if "slice_norm" in wanted and part == "attn":
                    b, t, _ = yf.shape
                    heads = yf.view(b, t, block.num_heads, block.head_dim).norm(dim=-1)
                    groups = yf.view(b, t, block.num_kv_heads, -1).norm(dim=-1)
                    stats.add(part, "slice_norm_head", torch.einsum("bth,bt->h", heads, m))
                    stats.add(part, "slice_norm_group", torch.einsum("btg,bt->g", groups, m))
            if want_grad and y.requires_grad:
                # the mask gradient needs y in backward; frozen projections do not keep their input, so hold it
                # only when that statistic is asked for
                y_seen = y.detach() if "mask_sq" in wanted else None

                def grad_hook(grad):
                    with torch.no_grad():
                        g = grad.float()
                        stats.add(part, "grad_sq", torch.einsum("btc,bt->c", g * g, m))
                        if "mask_sq" in wanted:  # (dPhi/dm_s)^2 of a multiplicative mask m_s on each structure
                            gy = g * y_seen.float()
                            if part == "ffn":
                                stats.add(part, "mask_sq", torch.einsum("btc,bt->c", gy * gy, m))
                            else:
                                b, t, _ = gy.shape
                                heads = gy.view(b, t, block.num_heads, block.head_dim).sum(-1)
                                groups = gy.view(b, t, block.num_kv_heads, -1).sum(-1)
                                stats.add(part, "mask_sq_head", torch.einsum("bth,bt->h", heads * heads, m))
                                stats.add(part, "mask_sq_group", torch.einsum("btg,bt->g", groups * groups, m))

                y.register_hook(grad_hook)
            if mask is not None:
                return (y,) + tuple(args[1:])
            return None

        return hook

    def set_tokens(self, attention_mask: torch.Tensor) -> None:
        self.token_mask = attention_mask
        count = int(attention_mask.sum())
        for stats in self.stats:
            stats.tokens += count


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


@contextmanager
def frozen_weights(model: torch.nn.Module, trainable: list[torch.nn.Parameter] | None = None):
    """Freeze every parameter (restoring flags afterwards), optionally re-enabling a chosen few."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    for p in trainable or []:
        p.grad = None  # start from zero: stale gradients (e.g. from training) must not leak into the scores
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
            p.grad = None


def collect_stats(
    model: torch.nn.Module,
    dataset,
    importance: Importance,
    objective: str,
    batch_size: int = 1,
    masks: dict | None = None,
    progress: bool = True,
    extra_stats: frozenset[str] = frozenset(),
) -> tuple[list[BlockStats], int]:
    """Run the calibration set once; return per-block statistics and the number of tokens seen.

    `extra_stats` adds activation statistics the importance itself does not need (e.g. "sum" for bias compensation).
    """
    check_no_weight_gradients(model, importance)
    pad_id = 0
    device = next(model.parameters()).device
    weights = []
    if importance.needs_weight_gradients:
        for block in blocks(model):
            weights += [lin.weight for lin in block.attn_linears() + block.mlp_linears()]
    need_backward = importance.needs_activation_gradients or importance.needs_weight_gradients
    was_training = model.training
    model.eval()
    tokens = 0
    embed = decoder(model).embed_tokens

    def leaf_hook(module, args, output):
        if need_backward and not output.requires_grad:
            return output.detach().requires_grad_(True)
        return None

    handle = embed.register_forward_hook(leaf_hook)
    try:
        with (
            frozen_weights(model, weights),
            StatsCollector(model, importance, masks, extra_stats) as collector,
            stream_offloaded_weights(model),  # offloaded weights are reloaded in backward, not kept alive
        ):
            total = (len(dataset) + batch_size - 1) // batch_size
            bar = tqdm(
                iter_batches(dataset, batch_size, pad_id, device),
                total=total,
                desc=f"scoring ({importance.name})",
                disable=not progress,
            )
            for batch in bar:
                collector.set_tokens(batch["attention_mask"])
                tokens += int(batch["attention_mask"].sum())
                if need_backward:
                    with torch.enable_grad():
                        objective_value(model, batch, objective).backward()
                else:
                    with torch.no_grad():
                        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
            stats = collector.stats
            if importance.needs_weight_gradients:
                for block, block_stats in zip(blocks(model), stats):
                    block_stats.weight_grads = {
                        name: getattr(block, name).weight.grad.detach()  # no copy: read out per block by the method
                        for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
                    }
    finally:
        handle.remove()
        model.train(was_training)
    return stats, tokens


def compute_scores(
    model: torch.nn.Module,
    config,
    dataset=None,
    batch_size: int = 1,
    masks: dict | None = None,
    calibration_summary: dict | None = None,
    progress: bool = True,
) -> PruningScores:
    """Score every FFN channel and attention structure of `model` with `config.importance`."""
    importance = get_importance(config.importance)
    views = blocks(model)
    # calibration means for bias compensation (True, or "auto": the pruner decides later whether to use them)
    wants_means = bool(getattr(config, "bias_compensation", False)) and importance.needs_calibration
    if importance.needs_calibration:
        if dataset is None or len(dataset) == 0:
            raise ValueError(f"The calibration set is empty: importance {config.importance!r} needs calibration data.")
        objective = importance.objective or config.objective
        extra = frozenset({"sum"}) if wants_means else frozenset()
        extra = extra | importance.config_stats(config)
        stats, tokens = collect_stats(model, dataset, importance, objective, batch_size, masks, progress, extra)
    else:
        stats, tokens = [BlockStats() for _ in views], 0
    mlp, attention, mlp_raw, attention_raw, mlp_cost, attention_cost = [], [], [], [], [], []
    mlp_loss, attention_loss = [], []
    for block, block_stats in zip(views, stats):
        result = importance.score_block(block, block_stats, config)
        if result.mlp_loss is not None and result.attention_loss is not None:
            mlp_loss.append(result.mlp_loss.detach().float().cpu())
            attention_loss.append(result.attention_loss.detach().float().cpu())
        zeros_mlp = torch.zeros(block.intermediate_size)
        n_attn = block.num_heads if config.attention_granularity == "query_head" else block.num_kv_heads
        zeros_attn = torch.zeros(n_attn)
        mlp.append((result.mlp if result.mlp is not None else zeros_mlp).detach().float().cpu())
        attention.append((result.attention if result.attention is not None else zeros_attn).detach().float().cpu())
        mlp_raw.append((result.mlp_raw if result.mlp_raw is not None else mlp[-1]).detach().float().cpu())
        attention_raw.append(
            (result.attention_raw if result.attention_raw is not None else attention[-1]).detach().float().cpu()
        )
        ffn_cost, attn_cost = structure_costs(block, config.attention_granularity)
        mlp_cost.append(ffn_cost)
        attention_cost.append(attn_cost)
        if masks:  # structures already removed in an earlier iteration stay removed (nested masks)
            for part, scores in (("ffn", mlp[-1]), ("attn", attention[-1])):
                mask = masks.get((block.index, part))
                if mask is not None:
                    kept = _structure_mask(mask, block, part, config.attention_granularity)
                    scores[~kept] = float("-inf")
    summary = dict(calibration_summary or {})
    summary["num_tokens"] = tokens
    mlp_mean = attention_mean = None
    if wants_means:
        mlp_mean = [s.ffn["sum"].float().cpu() / max(tokens, 1) for s in stats]
        attention_mean = [s.attn["sum"].float().cpu() / max(tokens, 1) for s in stats]
    return PruningScores(
        importance=config.importance,
        objective=(importance.objective or config.objective)
        if importance.needs_activation_gradients or importance.needs_weight_gradients
        else None,
        normalization=config.normalization,
        attention_granularity=config.attention_granularity,
        mlp=mlp,
        attention=attention,
        mlp_raw=mlp_raw,
        attention_raw=attention_raw,
        mlp_cost=mlp_cost,
        attention_cost=attention_cost,
        widths=layer_widths(model),
        calibration=summary,
        mlp_input_mean=mlp_mean,
        attention_input_mean=attention_mean,
        mlp_loss=mlp_loss if len(mlp_loss) == len(views) else None,
        attention_loss=attention_loss if len(attention_loss) == len(views) else None,
    )


def _structure_mask(channel_mask: torch.Tensor, block: BlockView, part: str, granularity: str) -> torch.Tensor:
    """Which structures a channel mask keeps (a structure is kept when any of its channels is)."""
    kept = channel_mask.bool().cpu()
    if part == "ffn":
        return kept
    width = block.head_dim if granularity == "query_head" else block.head_dim * block.group_size
    return kept.view(-1, width).any(dim=1)
