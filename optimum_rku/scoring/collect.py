"""Statistics collection: hooks on every down_proj / o_proj input accumulate per-structure sums over calibration.

Only activations and their gradients are captured: weights are frozen (`requires_grad=False`), the embedding output
is the one leaf that requires grad, so one backward pass yields dPhi/dy at every down_proj / o_proj input and no
weight gradient is ever materialized (unless an importance method explicitly asks for weight gradients).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from tqdm.auto import tqdm

from optimum_rku.data.calibration import iter_batches
from optimum_rku.importance import BlockStats, Importance
from optimum_rku.models.blocks import BlockView, blocks, decoder
from optimum_rku.models.masks import masked_input
from optimum_rku.models.specs import PROJECTIONS
from optimum_rku.scoring.objectives import objective_value
from optimum_rku.scoring.offload import check_no_weight_gradients, stream_offloaded_weights

#: what a statistic key measures, for error messages ("grad_sq" and "mask_sq*" come from backward)
_PART_NAMES = {"ffn": "FFN (down_proj input)", "attn": "attention (o_proj input)"}


def nonfinite_remedy(dtype: torch.dtype) -> str:
    """What to do about NaN / inf met while scoring a model of `dtype` (appended to every such error)."""
    name = str(dtype).replace("torch.", "")
    if dtype in (torch.float32, torch.float64):
        return (
            f"The weights are already {name}: drop the offending calibration text, or check the model's weights "
            "for NaN / inf."
        )
    return (
        f"The weights are {name}: score in float32 (RKUPruner.from_pretrained(..., torch_dtype=torch.float32); "
        "CLI --torch-dtype float32), or drop the offending calibration text."
    )


class NonFiniteError(ValueError):
    """NaN or inf in a scoring statistic: names the layer, the statistic and the calibration rows it came from."""

    def __init__(self, message: str, *, layer: int | None, statistic: str, rows: list[int]):
        super().__init__(message)
        self.layer, self.statistic, self.rows = layer, statistic, rows


def _nonfinite(entries: list[tuple]) -> list[tuple]:
    """The entries `(..., tensor)` whose tensor holds a NaN or inf (one host sync per device, not per tensor)."""
    by_device: dict = {}
    for entry in entries:
        by_device.setdefault(entry[-1].device, []).append(entry)
    bad = []
    for group in by_device.values():
        flags = torch.stack([torch.isfinite(entry[-1]).all() for entry in group]).tolist()
        bad += [entry for entry, ok in zip(group, flags) if not ok]
    return bad


def _kind(value: torch.Tensor) -> str:
    return "NaN" if bool(torch.isnan(value).any()) else "inf"


def _rows_text(rows: list[int]) -> str:
    return f"row {rows[0]}" if len(rows) == 1 else f"rows {rows[0]}-{rows[-1]}"


def check_finite(stats: list[BlockStats], stage: str, rows: list[int], dtype: torch.dtype) -> None:
    """Raise `NonFiniteError` if a `stage` ("forward" or "backward") statistic of any block holds NaN or inf.

    Forward problems are reported at the first layer in forward order (where an overflow starts, later layers only
    inherit it), backward problems at the last layer (where backward meets them first).
    """
    backward = stage == "backward"
    entries = []
    for index, block_stats in enumerate(stats):
        for part, store in (("ffn", block_stats.ffn), ("attn", block_stats.attn)):
            for key, value in store.items():
                if key.startswith(("grad", "mask")) == backward:
                    entries.append((index, part, key, value))
    bad = _nonfinite(entries)
    if not bad:
        return
    index, part, key, value = (max if backward else min)(bad, key=lambda e: e[0])
    what = "gradient" if backward else "activation"
    raise NonFiniteError(
        f"Scoring hit {_kind(value)} in layer {index} {_PART_NAMES[part]}: {what} statistic {key!r} after calibration "
        f"{_rows_text(rows)}. {nonfinite_remedy(dtype)}",
        layer=index,
        statistic=key,
        rows=rows,
    )


def _locate_nonfinite(model: torch.nn.Module, batch: dict) -> tuple[int, str] | None:
    """Re-run one batch forward and return the first (layer, part) whose down_proj / o_proj input is not finite."""
    found: list[tuple[int, str]] = []
    mask = batch["attention_mask"].bool()
    handles = []

    def probe(index: int, part: str):
        def hook(module, args):
            if not found and not bool(torch.isfinite(args[0][mask.to(args[0].device)]).all()):
                found.append((index, part))

        return hook

    for block in blocks(model):
        handles.append(block.o_proj.register_forward_pre_hook(probe(block.index, "attn")))
        handles.append(block.down_proj.register_forward_pre_hook(probe(block.index, "ffn")))
    try:
        with torch.no_grad():
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


def _check_objective(model, batch: dict, value: torch.Tensor, objective: str, rows: list[int]) -> None:
    """The objective of one batch must be finite before its backward spreads NaN into every gradient."""
    if bool(torch.isfinite(value.detach())):
        return
    dtype = next(model.parameters()).dtype
    where = _locate_nonfinite(model, batch)  # only on this failure path: one more forward of one batch
    if where is None:
        place, layer = "the final norm / LM head output", None
    else:
        layer, part = where
        place = f"layer {layer} {_PART_NAMES[part]}"
    raise NonFiniteError(
        f"Scoring hit {_kind(value.detach())} in the objective {objective!r} on calibration {_rows_text(rows)}; it "
        f"first appears in {place}. {nonfinite_remedy(dtype)}",
        layer=layer,
        statistic=f"objective:{objective}",
        rows=rows,
    )


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
            if mask is not None:
                args = masked_input(args, mask)
            y = args[0]
            m = self.token_mask
            if m is None:
                return args if mask is not None else None
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
            return args if mask is not None else None

        return hook

    def set_tokens(self, attention_mask: torch.Tensor) -> None:
        self.token_mask = attention_mask
        count = int(attention_mask.sum())
        for stats in self.stats:
            stats.tokens += count


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
    token_floor: float = 0.0,
) -> tuple[list[BlockStats], int]:
    """Run the calibration set once; return per-block statistics and the number of tokens seen.

    `extra_stats` adds activation statistics the importance itself does not need (e.g. "sum" for bias compensation);
    `token_floor` is the objective's per-token gradient floor (`RKUConfig.token_gradient_floor`).
    """
    check_no_weight_gradients(model, importance)
    pad_id = 0
    device = next(model.parameters()).device
    weights = _gradient_weights(model, importance)
    need_backward = importance.needs_activation_gradients or importance.needs_weight_gradients
    was_training = model.training
    model.eval()
    tokens = 0
    handle = decoder(model).embed_tokens.register_forward_hook(_gradient_leaf(need_backward))
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
            dtype = next(model.parameters()).dtype
            first = 0
            for batch in bar:
                rows = list(range(first, first + batch["input_ids"].shape[0]))
                first = rows[-1] + 1
                collector.set_tokens(batch["attention_mask"])
                tokens += int(batch["attention_mask"].sum())
                _run_batch(model, batch, collector, objective, token_floor, need_backward, rows, dtype)
            stats = collector.stats
            if importance.needs_weight_gradients:  # read while the weights still hold them (frozen_weights clears)
                _attach_weight_grads(model, stats, dtype)
    finally:
        handle.remove()
        model.train(was_training)
    return stats, tokens


def _gradient_weights(model: torch.nn.Module, importance: Importance) -> list[torch.nn.Parameter]:
    """The projection weights whose gradients the importance reads (none unless it needs weight gradients)."""
    weights = []
    if importance.needs_weight_gradients:
        for block in blocks(model):
            weights += [linear.weight for linear in block.linears()]
    return weights


def _gradient_leaf(need_backward: bool):
    """Embedding forward hook: its output is the grad leaf, so backward reaches every input with weights frozen."""

    def leaf_hook(module, args, output):
        if need_backward and not output.requires_grad:
            return output.detach().requires_grad_(True)
        return None

    return leaf_hook


def _run_batch(
    model: torch.nn.Module,
    batch: dict,
    collector: StatsCollector,
    objective: str,
    token_floor: float,
    need_backward: bool,
    rows: list[int],
    dtype: torch.dtype,
) -> None:
    """Forward (and backward) one batch, checking its statistics are finite while the rows are still known."""
    if need_backward:
        with torch.enable_grad():
            value = objective_value(model, batch, objective, token_floor)
            check_finite(collector.stats, "forward", rows, dtype)
            _check_objective(model, batch, value, objective, rows)
            value.backward()
        check_finite(collector.stats, "backward", rows, dtype)
    else:
        with torch.no_grad():
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        check_finite(collector.stats, "forward", rows, dtype)


def _attach_weight_grads(model: torch.nn.Module, stats: list[BlockStats], dtype: torch.dtype) -> None:
    """Hand every block's projection weight gradients to its stats (no copy), stopping on NaN / inf."""
    for block, block_stats in zip(blocks(model), stats):
        block_stats.weight_grads = {
            name: block.weight_grad(name).detach()  # no copy: read out per block by the method
            for name in PROJECTIONS
        }
    entries = [(b.index, name, g) for b, s in zip(blocks(model), stats) for name, g in s.weight_grads.items()]
    bad = _nonfinite(entries)
    if bad:  # accumulated over every batch: the rows cannot be told apart any more
        index, name, grad = max(bad, key=lambda e: e[0])
        raise NonFiniteError(
            f"Scoring hit {_kind(grad)} in layer {index} {name} weight gradient (summed over all "
            f"calibration rows). {nonfinite_remedy(dtype)}",
            layer=index,
            statistic=f"weight_grad:{name}",
            rows=[],
        )
