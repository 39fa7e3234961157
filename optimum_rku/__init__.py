"""optimum-rku: structured pruning of reasoning LLMs with Relative Kinetic Utility (RKU)."""

__version__ = "0.1.0"

from optimum_rku.checkpoint import RKUModelForCausalLM  # noqa: E402
from optimum_rku.config import RKUConfig  # noqa: E402
from optimum_rku.importance import Importance, available_importances, register_importance  # noqa: E402
from optimum_rku.pruner import RKUPruner  # noqa: E402
from optimum_rku.scoring import PruningScores  # noqa: E402

__all__ = [
    "Importance",
    "PruningScores",
    "RKUConfig",
    "RKUModelForCausalLM",
    "RKUPruner",
    "available_importances",
    "register_importance",
    "__version__",
]
