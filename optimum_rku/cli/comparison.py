"""The comparison loop `benchmark` and `demo` share: score each method once, prune to each sparsity, evaluate."""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def compare_methods(
    dense,
    tokenizer,
    configs: Mapping[str, Any],
    sparsities: Sequence[float],
    evaluate: Callable[[Any], dict[str, Any]],
    *,
    calibration: Any = None,
    batch_size: int = 1,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Rows of a method x sparsity table, the dense model first; `evaluate(model)` adds each row's scores.

    Each method's `RKUConfig` is scored once on a copy of `dense` and every sparsity is pruned from those scores, so
    the rows of one method share one calibration pass. `prune_time_s` is that pass plus the row's own pruning.
    """
    from optimum_rku.pruner import RKUPruner

    dense_params = sum(p.numel() for p in dense.parameters())
    rows = [{"method": "dense", "sparsity": 0.0, "achieved_sparsity": 0.0, "params": dense_params, **evaluate(dense)}]
    for method, config in configs.items():
        start = time.perf_counter()
        scores = RKUPruner(copy.deepcopy(dense), tokenizer).compute_scores(config, calibration, batch_size, progress)
        scoring_time = time.perf_counter() - start
        for sparsity in sparsities:
            start = time.perf_counter()
            run = RKUPruner(copy.deepcopy(dense), tokenizer)
            model = run.prune(dataclasses.replace(config, sparsity=sparsity), scores=scores, progress=progress)
            rows.append(
                {
                    "method": method,
                    "sparsity": sparsity,
                    "achieved_sparsity": run.plan.achieved_sparsity,
                    "params": sum(p.numel() for p in model.parameters()),
                    "prune_time_s": scoring_time + time.perf_counter() - start,
                    "kept_widths": [
                        {"intermediate_size": lp.intermediate_size, "kv_heads": lp.num_kv_heads}
                        for lp in run.plan.layers
                    ],
                    **evaluate(model),
                }
            )
            del model, run
    return rows
