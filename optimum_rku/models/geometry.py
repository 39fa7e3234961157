"""Model geometry read from the live modules: per-layer widths, parameter costs of structures, KV-cache bytes."""

from __future__ import annotations

import torch

from optimum_rku.models.blocks import BlockView, blocks


def structure_costs(block: BlockView, granularity: str) -> tuple[int, int]:
    """Parameters owned by one FFN channel and by one attention structure (KV group, or query-head slot)."""
    hidden, hd = block.hidden_size, block.head_dim
    ffn = 3 * hidden + sum(int(block.bias(name) is not None) for name in ("gate_proj", "up_proj"))
    q_bias = block.bias("q_proj") is not None
    kv_bias = block.bias("k_proj") is not None
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
        for linear in block.linears():
            total += linear.weight.numel() + (linear.bias.numel() if linear.bias is not None else 0)
    return total


def layer_widths(model: torch.nn.Module) -> list[dict[str, int]]:
    return [
        {
            "intermediate_size": b.intermediate_size,
            "num_attention_heads": b.num_heads,
            "num_key_value_heads": b.num_kv_heads,
        }
        for b in blocks(model)
    ]


def kv_cache_bytes_per_token(model) -> int:
    """Bytes of K and V cached per token over all layers at the model's dtype."""
    element = next(model.parameters()).element_size()
    return sum(2 * b.num_kv_heads * b.head_dim * element for b in blocks(model))


def generation_flops(model, prompt_tokens: int, generated_tokens: int, sequences: int) -> float:
    """Multiply-add FLOPs of the weight matrices to greedy-decode `sequences` answers (attention scores excluded).

    Each sequence is prefilled (its prompt tokens through every block, logits at the last position only) and then
    decoded one token per step; so the blocks see `prompt_tokens + generated_tokens - sequences` tokens and the
    vocabulary projection `generated_tokens` positions. Dividing by a measured matmul rate gives generation's compute
    floor, the time it cannot beat at that rate."""
    if min(prompt_tokens, generated_tokens, sequences) < 0 or generated_tokens < sequences:
        raise ValueError(
            f"need non-negative counts and generated_tokens >= sequences, got {prompt_tokens}, {generated_tokens}, "
            f"{sequences}"
        )
    head = model.get_output_embeddings()
    embedding = model.get_input_embeddings()
    skipped = {id(module.weight) for module in (head, embedding) if module is not None}
    body = sum(p.numel() for p in model.parameters() if id(p) not in skipped and p.dim() >= 2)
    head_parameters = head.weight.numel() if head is not None else 0
    return 2.0 * (body * (prompt_tokens + generated_tokens - sequences) + head_parameters * generated_tokens)


def matmul_rate(
    rows: int, inner: int, columns: int, dtype=torch.float32, seconds: float = 1.0, windows: int = 5
) -> float:
    """Measured FLOP/s of a `[rows, inner] x [inner, columns]` matrix product on this machine (current threads): the
    best of `windows` timing windows of `seconds / windows` each, so a moment of load elsewhere does not lower the
    compute floor it defines."""
    import time

    if windows < 1:
        raise ValueError(f"windows must be >= 1, got {windows!r}")
    x, w = torch.randn(rows, inner, dtype=dtype), torch.randn(columns, inner, dtype=dtype)
    for _ in range(3):  # warm-up
        x @ w.T
    best = 0.0
    for _ in range(windows):
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / windows or count < 3:
            x @ w.T
            count += 1
        best = max(best, 2.0 * rows * inner * columns * count / elapsed)
    return best
