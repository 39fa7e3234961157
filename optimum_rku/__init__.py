"""optimum-rku: structured pruning of reasoning LLMs with Relative Kinetic Utility (RKU)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from optimum_rku.version import __version__

# Public names resolve on first access (PEP 562), so `import optimum_rku.cli` (and `optimum-rku --help`,
# `optimum-cli --help`) does not pay for importing torch and transformers.
_EXPORTS = {
    "Importance": "optimum_rku.importance",
    "PruningScores": "optimum_rku.scoring",
    "RKUConfig": "optimum_rku.config",
    "RKUModelForCausalLM": "optimum_rku.io.checkpoint",
    "RKUPruner": "optimum_rku.pruner",
    "available_importances": "optimum_rku.importance",
    "export_gguf": "optimum_rku.export.gguf",
    "load_adapter_model": "optimum_rku.io.adapter",
    "register_importance": "optimum_rku.importance",
}

if TYPE_CHECKING:
    from optimum_rku.config import RKUConfig
    from optimum_rku.export.gguf import export_gguf
    from optimum_rku.importance import Importance, available_importances, register_importance
    from optimum_rku.io.adapter import load_adapter_model
    from optimum_rku.io.checkpoint import RKUModelForCausalLM
    from optimum_rku.pruner import RKUPruner
    from optimum_rku.scoring import PruningScores


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'optimum_rku' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "Importance",
    "PruningScores",
    "RKUConfig",
    "RKUModelForCausalLM",
    "RKUPruner",
    "available_importances",
    "export_gguf",
    "load_adapter_model",
    "register_importance",
    "__version__",
]
