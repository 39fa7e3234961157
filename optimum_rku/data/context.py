"""How long a calibration row may be: the model's context, and a warning when rows were cut at it.

Its own module so that calibration and self-generated calibration (which calibration dispatches to) both read it
without importing each other.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def context_length(model) -> int | None:
    """The longest sequence the model's positions cover (`max_position_embeddings`), or None if it does not say."""
    value = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def calibration_length(model, seq_len: int) -> int:
    """`seq_len` capped at the model's context (rows are cut there; `report_context_cut` says when one was)."""
    context = context_length(model)
    return min(seq_len, context) if context is not None else seq_len


def report_context_cut(rows, length: int, seq_len: int) -> None:
    """Warn when `calibration_seq_len` was capped at the model's context and some row reached that cap."""
    if length >= seq_len:
        return
    cut = sum(len(ids) >= length for ids in rows["input_ids"])
    if cut:
        logger.warning(
            "%d calibration row(s) were cut at %d tokens, the model's context (max_position_embeddings), shorter than "
            "calibration_seq_len=%d.",
            cut,
            length,
            seq_len,
        )
