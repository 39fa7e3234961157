"""Importance methods: how to score a structure. Small, swappable classes kept apart from allocation and removal.

Each method turns one block's calibration statistics (`BlockStats`) and weights into a score per FFN channel and per
attention structure (KV group or query head). Scores are returned raw and normalized; allocation ranks normalized
scores across layers. `base` holds the interface, `registry` the names, `rku` and `baselines` the built-in methods
(imported here, so they are registered whenever the package is). Register new methods with
`@register_importance("name")`.
"""

from optimum_rku.importance import baselines, rku  # noqa: F401  (registers the built-in methods)
from optimum_rku.importance.base import BlockStats, Importance, StructureScores, centered_spread, group_slices
from optimum_rku.importance.registry import available_importances, get_importance, register_importance

__all__ = [
    "BlockStats",
    "Importance",
    "StructureScores",
    "available_importances",
    "centered_spread",
    "get_importance",
    "group_slices",
    "register_importance",
]
