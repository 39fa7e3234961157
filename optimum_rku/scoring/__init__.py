"""Scoring: calibration hooks and objectives collect statistics; an importance turns them into `PruningScores`.

`collect` (hooks, one calibration pass), `objectives` (Phi), `compute` (`compute_scores`), `scores`
(`PruningScores` and its JSON / safetensors I/O), `offload` (scoring accelerate-offloaded models in bounded memory).
"""

from optimum_rku.scoring.collect import NonFiniteError
from optimum_rku.scoring.compute import compute_scores
from optimum_rku.scoring.scores import PruningScores

__all__ = ["NonFiniteError", "PruningScores", "compute_scores"]
