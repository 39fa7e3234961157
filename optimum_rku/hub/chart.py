"""The kept-width chart of a checkpoint (`rku_allocation.png`): kept fraction of FFN channels, heads and KV groups."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from optimum_rku.hub.labels import percent
from optimum_rku.io.files import atomic_write
from optimum_rku.io.metadata import check_meta

CHART_FILE = "rku_allocation.png"


def plot_allocation(meta: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write a PNG bar chart of the kept fraction of FFN channels, query heads and KV groups in every layer."""
    meta = check_meta(meta)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers = meta["plan"]["layers"]
    dense = meta["dense_widths"]
    if len(dense) != len(layers):
        raise ValueError(f"meta has {len(dense)} dense_widths for {len(layers)} plan layers; they must match.")
    ffn = [lp["intermediate_size"] / d["intermediate_size"] for lp, d in zip(layers, dense)]
    heads = [lp["num_attention_heads"] / d["num_attention_heads"] for lp, d in zip(layers, dense)]
    groups = [lp["num_key_value_heads"] / d["num_key_value_heads"] for lp, d in zip(layers, dense)]
    n = len(layers)
    width = 0.27
    fig = Figure(figsize=(max(6.0, 0.42 * n + 2.5), 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs = list(range(n))
    ax.bar([x - width for x in xs], ffn, width, label="FFN channels", color="#1f77b4")
    ax.bar(xs, heads, width, label="query heads", color="#ff7f0e")
    ax.bar([x + width for x in xs], groups, width, label="KV groups", color="#2ca02c")
    protected = set(meta["pruning_config"].get("protected_layers") or [])
    for index in protected:
        if 0 <= index < n:
            ax.annotate("protected", (index, 1.0), ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs], fontsize=8 if n <= 40 else 6)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("kept fraction")
    ax.set_ylim(0, 1.15)
    ax.axhline(1.0, color="#999999", linewidth=0.8, linestyle="--")
    achieved = meta["parameters"].get("achieved_sparsity", meta["plan"].get("achieved_sparsity"))
    target = meta["pruning_config"].get("sparsity")
    ax.set_title(
        f"Kept width per layer (optimum-rku)\n{percent(achieved)} of prunable parameters removed, target {percent(target, 0)}",
        fontsize=9,
    )
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    fig.tight_layout()
    target_path = atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"), suffix=".png")
    return target_path
